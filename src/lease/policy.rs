use std::time::Duration;

/// The timing rules of the engine. The defaults are argued for in the README.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Shortest linger after a cycle's last handle closed without a write.
    pub linger: Duration,
    /// The linger adapts up to this, from the read-to-commit gaps a file has shown.
    pub max_linger: Duration,
    /// How many times the largest recent gap the adaptive linger allows.
    pub linger_gap_factor: u32,
    /// A lease held longer than this is revoked.
    pub max_hold: Duration,
    /// A waiter queued longer than this is answered with a timeout.
    pub max_wait: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            linger: Duration::from_millis(100),
            max_linger: Duration::from_millis(1000),
            linger_gap_factor: 4,
            max_hold: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// The last few read-to-commit gaps of one file, for the adaptive linger.
#[derive(Clone, Debug, Default)]
pub(crate) struct GapHistory {
    recent: [Duration; 8],
    next: usize,
}

impl GapHistory {
    pub(crate) fn record(&mut self, gap: Duration) {
        self.recent[self.next] = gap;
        self.next = (self.next + 1) % self.recent.len();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.recent.iter().all(Duration::is_zero)
    }

    pub(crate) fn linger(&self, policy: &Policy) -> Duration {
        let largest = self.recent.iter().max().copied().unwrap_or_default();
        (largest * policy.linger_gap_factor)
            .clamp(policy.linger, policy.max_linger.max(policy.linger))
    }
}
