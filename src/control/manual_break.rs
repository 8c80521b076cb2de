//! `lockfs break` on the daemon side: revoke through the engine, say what happened.

use std::hash::Hash;
use std::time::Duration;

use crate::lease::{Action, Engine};
use crate::platform::command_line;

/// Revokes the lease on `key` (shown to the user as `path`). Returns the message for
/// [`super::ControlHandler::break_lease`] and the engine's actions, which the front end
/// carries out like any others (answer the granted waiters, log each `Revoked` with
/// [`super::events::revocation`]).
pub fn revoke_by_hand<K: Clone + Eq + Hash>(
    engine: &mut Engine<K>,
    now: Duration,
    key: &K,
    path: &str,
) -> (String, Vec<Action<K>>) {
    let actions = engine.revoke(now, key);
    let holders: Vec<String> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Revoked { holder, .. } => {
                Some(format!("pid {} ({})", holder.pid, command_line(holder.pid)))
            }
            _ => None,
        })
        .collect();
    let message = if holders.is_empty() {
        format!("no lease on {path}")
    } else {
        format!("revoked lease on {path} held by {}", holders.join(", "))
    };
    (message, actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Admission, Intent, Policy};
    use crate::platform::ProcessId;

    #[test]
    fn revokes_and_names_the_holder() {
        let mut engine: Engine<&str> = Engine::new(Policy::default());
        let me = ProcessId {
            pid: std::process::id(),
            start_time: 1,
        };
        let now = Duration::from_secs(1);
        assert!(matches!(
            engine.acquire(now, &"a.json", me, Intent::Read, None),
            Admission::Granted(_)
        ));
        let (message, actions) = revoke_by_hand(&mut engine, now, &"a.json", "a.json");
        assert!(
            message.starts_with(&format!("revoked lease on a.json held by pid {} (", me.pid)),
            "{message}"
        );
        assert!(matches!(actions[0], Action::Revoked { .. }));
        let (message, actions) = revoke_by_hand(&mut engine, now, &"a.json", "a.json");
        assert_eq!(message, "no lease on a.json");
        assert!(actions.is_empty());
    }
}
