//! The cluster's two threads: one keeps the session lease alive, one watches the queues
//! for other hosts that wait for a file this host holds.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::etcd::WatchEvent;
use super::{Cluster, ClusterEvent, RETRY_PAUSE};

/// How long one watch request runs before it is renewed (and the thread checks for stop).
const WATCH_SPAN: Duration = Duration::from_secs(5);

pub(super) fn spawn_threads(cluster: &Arc<Cluster>) -> std::io::Result<()> {
    let weak = Arc::downgrade(cluster);
    std::thread::Builder::new()
        .name("etcd-session".into())
        .spawn(move || keep_alive(weak))?;
    let weak = Arc::downgrade(cluster);
    std::thread::Builder::new()
        .name("etcd-watch".into())
        .spawn(move || watch_queues(weak))?;
    Ok(())
}

fn alive(cluster: &Weak<Cluster>) -> Option<Arc<Cluster>> {
    let cluster = cluster.upgrade()?;
    (!cluster.stopped.load(std::sync::atomic::Ordering::Acquire)).then_some(cluster)
}

/// Renews the session a third of its TTL at a time; a renewal that finds it expired
/// reports every cluster lease of this host lost.
fn keep_alive(cluster: Weak<Cluster>) {
    loop {
        let Some(this) = alive(&cluster) else {
            return;
        };
        let pause = this.ttl / 3;
        let leftovers: Vec<Vec<u8>> = std::mem::take(&mut *this.leftovers.lock());
        for key in leftovers {
            if this.etcd.delete(&key).is_err() {
                this.leftovers.lock().push(key);
            }
        }
        let session = *this.session.lock();
        if let Some(id) = session {
            match this.etcd.lease_keepalive(id) {
                // Expired, or answered without a TTL during a leader change: the
                // session's own key tells which.
                Ok(0) => match this.session_alive(id) {
                    Some(false) => this.session_lost(id),
                    Some(true) => this.healthy(),
                    None => {}
                },
                Ok(_) => this.healthy(),
                Err(e) => this.unhealthy(&e),
            }
        }
        drop(this);
        std::thread::sleep(pause);
    }
}

/// Watches every queue key under the prefix; a key of another host on a file this host
/// holds or waits for means someone waits for this host.
fn watch_queues(cluster: Weak<Cluster>) {
    let mut next: Option<i64> = None;
    loop {
        let Some(this) = alive(&cluster) else {
            return;
        };
        let start = match next {
            Some(revision) => revision,
            None => match this.etcd.range_prefix(&this.queue_root()) {
                Ok((keys, read_at)) => {
                    for kv in keys {
                        this.note_waiter(&kv.key);
                    }
                    read_at + 1
                }
                Err(_) => {
                    drop(this);
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
            },
        };
        let mut last = start - 1;
        let result = this.etcd.watch_prefix(
            &this.queue_root(),
            start,
            Instant::now() + WATCH_SPAN,
            |event| {
                let kv = match &event {
                    WatchEvent::Put(kv) | WatchEvent::Delete(kv) => kv,
                };
                last = last.max(kv.mod_revision);
                if let WatchEvent::Put(kv) = &event {
                    this.note_waiter(&kv.key);
                }
                true
            },
        );
        match result {
            Ok(()) => next = Some(last + 1),
            Err(_) => {
                // Compacted past `start`, or etcd went away: read the queues afresh.
                next = None;
                drop(this);
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

impl Cluster {
    fn note_waiter(&self, key: &[u8]) {
        let Some((path, session)) = self.parse_queue_key(key) else {
            return;
        };
        if Some(session) == *self.session.lock() {
            return;
        }
        let ours = match self.files.lock().get_mut(&path) {
            Some(file) if file.held || file.queued.is_some() => {
                file.contended = true;
                true
            }
            _ => false,
        };
        if ours {
            self.emit(ClusterEvent::Contended);
        }
    }
}
