//! The driver's one timer thread: it sleeps until the next deadline the driver reports and
//! is woken early only when something falls due before that.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// How long the timer sleeps when nothing is due.
const IDLE_SLEEP: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Timer {
    /// When the timer thread plans to wake next (nanoseconds since the driver's epoch).
    planned_wake: AtomicU64,
    wake: Condvar,
    woken: Mutex<bool>,
}

/// What the timer thread drives: one pass, returning when the next is due.
pub trait Ticking: Send + Sync + 'static {
    fn timer(&self) -> &Timer;
    fn now(&self) -> Duration;
    /// Runs what is due; returns the time of the next pass, if any is planned.
    fn tick(&self) -> Option<Duration>;
}

impl Timer {
    /// Wakes the timer thread if `due` comes before it planned to wake.
    pub fn due_at(&self, due: Duration) {
        if (due.as_nanos() as u64) >= self.planned_wake.load(Ordering::Acquire) {
            return;
        }
        let mut woken = self.woken.lock();
        *woken = true;
        self.wake.notify_one();
    }

    /// Runs the timer of `owner` on a thread of its own until the owner is dropped.
    pub fn start<T: Ticking>(owner: Weak<T>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("lockfs-timer".into())
            .spawn(move || {
                while let Some(strong) = owner.upgrade() {
                    let next = strong.tick();
                    let now = strong.now();
                    let sleep = next.map_or(IDLE_SLEEP, |at| at.saturating_sub(now));
                    let timer = strong.timer();
                    timer
                        .planned_wake
                        .store((now + sleep).as_nanos() as u64, Ordering::Release);
                    let mut woken = timer.woken.lock();
                    if !*woken {
                        timer.wake.wait_for(&mut woken, sleep);
                    }
                    *woken = false;
                }
            })?;
        Ok(())
    }
}
