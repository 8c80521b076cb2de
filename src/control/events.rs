//! The three log lines an operator must be able to find: a revocation, a fenced commit, and
//! a holder that died mid-cycle. Each names the path, the holder (pid, start time, command)
//! and the reason as tracing fields, so `--log-format json` carries them as JSON fields.
//!
//! Pass `cmd` when you captured it earlier (a dead process has no command line left);
//! `None` looks it up now.

use crate::lease::EndReason;
use crate::platform::{ProcessId, command_line};

/// The `reason` field for a revocation the engine reported.
pub fn revocation_reason(reason: EndReason) -> &'static str {
    match reason {
        EndReason::MaxHold => "held past max_hold",
        EndReason::Manual => "lockfs break",
    }
}

/// One event line: the fields every event carries, and its words for people.
fn log_event(
    event: &'static str,
    path: &str,
    holder: ProcessId,
    cmd: Option<&str>,
    reason: &str,
    what: &str,
) {
    let cmd = cmd
        .map(str::to_string)
        .unwrap_or_else(|| command_line(holder.pid));
    tracing::warn!(
        event,
        path,
        holder_pid = holder.pid,
        holder_start_time = holder.start_time,
        holder_cmd = %cmd,
        reason,
        "{what} {path}, pid {} ({cmd}): {reason}",
        holder.pid
    );
}

/// A lease taken away from its holder (at the maximum hold, or by `lockfs break`).
pub fn revocation(path: &str, holder: ProcessId, cmd: Option<&str>, reason: &str) {
    log_event(
        "revocation",
        path,
        holder,
        cmd,
        reason,
        "revoked the lease on",
    );
}

/// A save refused because the file changed since the holder last saw it.
pub fn fenced_commit(path: &str, holder: ProcessId, cmd: Option<&str>, reason: &str) {
    log_event(
        "fenced_commit",
        path,
        holder,
        cmd,
        reason,
        "refused a commit on",
    );
}

/// A write that held a kernel lock (rename, create, unlink, link, truncate) and so could
/// not wait: it went ahead while another process's cycle held the file, and that cycle's
/// save will be refused.
pub fn out_of_turn(path: &str, holder: ProcessId, cmd: Option<&str>) {
    log_event(
        "out_of_turn",
        path,
        holder,
        cmd,
        "it held a kernel lock and could not wait; the current cycle's save will be refused",
        "a write went ahead out of turn on",
    );
}

/// A holder that exited while holding a lease, before its commit.
pub fn holder_died_mid_cycle(path: &str, holder: ProcessId, cmd: Option<&str>, reason: &str) {
    log_event(
        "holder_died_mid_cycle",
        path,
        holder,
        cmd,
        reason,
        "a holder exited mid-cycle on",
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_carry_path_holder_and_reason() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let holder = ProcessId {
            pid: 4242,
            start_time: 99,
        };
        tracing::subscriber::with_default(subscriber, || {
            revocation("a.json", holder, Some("node app.js"), "max_hold");
            fenced_commit("b.json", holder, Some("node app.js"), "lease revoked");
            holder_died_mid_cycle("c.json", holder, Some("python3 x.py"), "exited");
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let events = ["revocation", "fenced_commit", "holder_died_mid_cycle"];
        for (line, event) in lines.iter().zip(events) {
            let fields = &line["fields"];
            assert_eq!(fields["event"], event);
            assert_eq!(fields["holder_pid"], 4242);
            assert_eq!(fields["holder_start_time"], 99);
            assert!(fields["holder_cmd"].is_string());
            assert!(fields["path"].is_string());
            assert!(fields["reason"].is_string());
        }
        assert_eq!(lines[2]["fields"]["holder_cmd"], "python3 x.py");
    }
}
