//! What the mount's control socket answers: lease status and breaking a lease by hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::gate::Gate;
use crate::control::{ControlHandler, DaemonInfo, StatusReport};

pub struct OverlayControl {
    gate: Arc<Gate>,
    mount: PathBuf,
    started: Instant,
}

impl OverlayControl {
    pub fn new(gate: Arc<Gate>, mount: &Path) -> OverlayControl {
        OverlayControl {
            gate,
            mount: mount.to_path_buf(),
            started: Instant::now(),
        }
    }
}

impl ControlHandler for OverlayControl {
    fn status(&self) -> StatusReport {
        let (views, counters) = self.gate.status();
        let policy = self.gate.policy();
        let daemon = DaemonInfo {
            mount: &self.mount,
            started: self.started,
            passthrough: self.gate.passthrough(),
            policy: &policy,
        };
        let mut report =
            StatusReport::from_engine(views, &counters, |path: &String| path.clone(), daemon);
        let store = self.gate.inode_counts();
        for (name, value) in [
            ("inodes_known", store.inodes),
            ("fds_pinned", store.pinned_fds),
            ("fds_cached", store.cached_fds),
            ("fd_cache_size", store.fd_cache_capacity),
        ] {
            report.counters.insert(name.to_string(), value as u64);
        }
        report.cluster = self
            .gate
            .cluster_health()
            .map(|health| crate::control::ClusterReport {
                endpoints: health.endpoints,
                problem: health.problem,
                files_held: health.files_held,
                files_queued: health.files_queued,
            });
        report
    }

    fn break_lease(&self, path: &Path) -> Result<String, String> {
        self.gate.break_lease(&path.to_string_lossy())
    }
}
