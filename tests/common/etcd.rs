//! Real etcd members for tests: one member or a 3-member cluster on loopback, each in a
//! fresh temp data dir, killed (SIGKILL) and reaped on drop.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const ETCD: &str = "/usr/bin/etcd";

/// How long a member (or cluster) gets to answer /health after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports are tried this many times when a member cannot bind its own.
const START_TRIES: usize = 5;

static CLUSTER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// One etcd member on loopback; killed and reaped on drop.
pub struct EtcdMember {
    name: String,
    client_url: String,
    peer_url: String,
    child: Option<Child>,
    log: PathBuf,
    // Dropped after the member is killed (fields drop after `Drop::drop`).
    _dir: TempDir,
}

impl EtcdMember {
    /// A single-member cluster, answering once this returns.
    pub fn start() -> EtcdMember {
        let mut cluster = EtcdCluster::start_n(1);
        cluster.members.pop().expect("one member")
    }

    /// The client URL, "http://127.0.0.1:PORT".
    pub fn url(&self) -> &str {
        &self.client_url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's log (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the member (SIGKILL, as a crash) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the member answers /health with a leader known.
    pub fn healthy(&self) -> bool {
        http(&self.client_url, "GET", "/health", "")
            .is_some_and(|(status, body)| status == 200 && body.contains("\"true\""))
    }

    /// This member's id and the id of the leader it knows, from /v3/maintenance/status.
    pub fn status(&self) -> Option<(String, String)> {
        let (status, body) = http(&self.client_url, "POST", "/v3/maintenance/status", "{}")?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let member = v["header"]["member_id"].as_str()?.to_string();
        let leader = v["leader"].as_str()?.to_string();
        Some((member, leader))
    }

    pub fn is_leader(&self) -> bool {
        self.status()
            .is_some_and(|(member, leader)| member == leader)
    }

    /// Compacts the store's history up to `revision` (through the gateway).
    pub fn compact(&self, revision: i64) {
        let body = format!("{{\"revision\":\"{revision}\",\"physical\":true}}");
        let reply = http(&self.client_url, "POST", "/v3/kv/compaction", &body);
        assert!(
            matches!(reply, Some((200, _))),
            "compaction to {revision} failed: {reply:?}"
        );
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of etcd members on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// Three members in one cluster, all answering /health (a leader elected) once this
    /// returns.
    pub fn start3() -> EtcdCluster {
        Self::start_n(3)
    }

    /// `n` members in one cluster, all answering /health.
    pub fn start_n(n: usize) -> EtcdCluster {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: run scripts/setup.sh to install etcd (the etcd-server package)"
        );
        let mut last_failure = String::new();
        for _ in 0..START_TRIES {
            match Self::try_start(n) {
                Ok(cluster) => return cluster,
                // Another process took one of the free ports found: try fresh ones.
                Err((failure, retry)) if retry => last_failure = failure,
                Err((failure, _)) => panic!("{failure}"),
            }
        }
        panic!("etcd would not start after {START_TRIES} tries: {last_failure}");
    }

    /// The client URLs, in member order.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url().to_string()).collect()
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// The index of the member that is the leader, as the first live member answering
    /// sees it; waits up to `timeout` for one.
    pub fn leader(&mut self, timeout: Duration) -> Option<usize> {
        let until = Instant::now() + timeout;
        loop {
            for i in 0..self.members.len() {
                if self.members[i].is_running() && self.members[i].is_leader() {
                    return Some(i);
                }
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_start(n: usize) -> Result<EtcdCluster, (String, bool)> {
        // Held together so the 2n ports differ; released just before etcd binds them.
        let listeners: Vec<TcpListener> = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("local addr").port())
            .collect();
        drop(listeners);

        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        let token = format!("lockfs-test-{}-{seq}", std::process::id());
        let peers: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}={}", peers[i]))
            .collect::<Vec<_>>()
            .join(",");

        let mut members = Vec::with_capacity(n);
        for (i, peer_url) in peers.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix("lockfs-etcd-")
                .tempdir()
                .expect("temp dir for etcd");
            let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
            let name = format!("m{i}");
            let log = dir.path().join("etcd.log");
            let log_file = File::create(&log).expect("create etcd log");
            let mut command = Command::new(ETCD);
            command
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url)
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg(&token)
                .arg("--logger")
                .arg("zap")
                .arg("--log-outputs")
                .arg("stderr")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup etcd log"))
                .stderr(log_file);
            // Settings from the environment would override the flags' intent.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ETCD_") {
                    command.env_remove(key);
                }
            }
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {ETCD}: {e}"));
            members.push(EtcdMember {
                name,
                client_url,
                peer_url: peer_url.clone(),
                child: Some(child),
                log,
                _dir: dir,
            });
        }

        let until = Instant::now() + START_TIMEOUT;
        let mut cluster = EtcdCluster { members };
        loop {
            let mut all_healthy = true;
            for member in &mut cluster.members {
                if !member.is_running() {
                    let log = member.log();
                    let retry = log.contains("address already in use");
                    return Err((
                        format!(
                            "etcd member {} exited at start; its log:\n{}",
                            member.name,
                            tail(&log)
                        ),
                        retry,
                    ));
                }
                all_healthy &= member.healthy();
            }
            if all_healthy {
                return Ok(cluster);
            }
            if Instant::now() >= until {
                let logs: Vec<String> = cluster
                    .members
                    .iter()
                    .map(|m| format!("--- {} ---\n{}", m.name, tail(&m.log())))
                    .collect();
                return Err((
                    format!(
                        "etcd not healthy within {START_TIMEOUT:?}; logs:\n{}",
                        logs.join("\n")
                    ),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One HTTP/1.0 request to `url` ("http://host:port"); the status and body, or `None`
/// when the member does not answer within a second.
pub fn http(url: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let authority = url.strip_prefix("http://").unwrap_or(url);
    let addr = authority.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
