//! The etcd client (`src/cluster/etcd.rs`) against real etcd members on loopback.

#[path = "common/etcd.rs"]
mod etcd;
// The client's own source, compiled into this test: the crate keeps `cluster` private.
#[path = "../src/cluster/etcd.rs"]
#[allow(dead_code)]
mod etcd_client;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use etcd::{EtcdCluster, EtcdMember};
use etcd_client::{Etcd, EtcdError, Kv, WatchEvent};

const TIMEOUT: Duration = Duration::from_secs(5);

fn client(urls: &[String]) -> Etcd {
    Etcd::new(urls, TIMEOUT).expect("client")
}

fn single() -> (EtcdMember, Etcd) {
    let member = EtcdMember::start();
    let etcd = client(&[member.url().to_string()]);
    (member, etcd)
}

/// Polls `f` every 50 ms until it holds; panics after `limit` (only to catch a hang).
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "not within {limit:?}: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn keys(kvs: &[Kv]) -> Vec<&[u8]> {
    kvs.iter().map(|kv| kv.key.as_slice()).collect()
}

#[test]
fn new_rejects_bad_endpoints() {
    let none: Vec<String> = Vec::new();
    assert!(Etcd::new(&none, TIMEOUT).is_err());
    let tls =
        Etcd::new(&["https://127.0.0.1:2379".to_string()], TIMEOUT).expect_err("https refused");
    assert!(tls.to_string().contains("TLS"), "{tls}");
    for bad in [
        "127.0.0.1",
        "http://127.0.0.1:notaport",
        "http://h:1/path",
        "ftp://h:1",
    ] {
        assert!(
            Etcd::new(&[bad.to_string()], TIMEOUT).is_err(),
            "{bad} accepted"
        );
    }
    let ok = Etcd::new(
        &[
            "127.0.0.1:2379".to_string(),
            "http://localhost:2380/".to_string(),
        ],
        TIMEOUT,
    )
    .expect("valid endpoints");
    assert_eq!(
        ok.endpoints(),
        ["http://127.0.0.1:2379", "http://localhost:2380"]
    );
}

#[test]
fn unreachable_when_no_member_answers() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let etcd = client(&[format!("http://127.0.0.1:{port}")]);
    let started = Instant::now();
    match etcd.get(b"k") {
        Err(EtcdError::Unreachable(msg)) => assert!(msg.contains(&port.to_string()), "{msg}"),
        other => panic!("expected Unreachable, got {:?}", other.map(|_| ())),
    }
    assert!(started.elapsed() < Duration::from_secs(30), "hung");
}

/// A loopback port that accepts connections and never answers; the listener lives as
/// long as the returned guard.
fn silent_endpoint() -> (String, std::net::TcpListener) {
    // The kernel completes handshakes into the backlog without any accept().
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, listener)
}

#[test]
fn a_silent_endpoint_times_out_and_the_next_one_answers() {
    let member = EtcdMember::start();
    let (silent, _guard) = silent_endpoint();
    let etcd = Etcd::new(
        &[silent.clone(), member.url().to_string()],
        Duration::from_millis(500),
    )
    .unwrap();
    let started = Instant::now();
    etcd.put(b"k", b"v", 0).unwrap();
    assert_eq!(etcd.current_endpoint(), member.url());
    assert_eq!(etcd.get(b"k").unwrap().0.unwrap().value, b"v");
    assert!(started.elapsed() < Duration::from_secs(30), "hung");

    // Alone, the silent endpoint is Unreachable after the request timeout.
    let alone = Etcd::new(&[silent], Duration::from_millis(300)).unwrap();
    assert!(matches!(alone.get(b"k"), Err(EtcdError::Unreachable(_))));
    // A watch there returns at its deadline, before the request timeout.
    let alone = Etcd::new(alone.endpoints(), Duration::from_secs(60)).unwrap();
    let started = Instant::now();
    alone
        .watch_prefix(b"k", 0, started + Duration::from_millis(300), |_| true)
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "hung");
}

#[test]
fn put_get_delete() {
    let (_member, etcd) = single();
    let (none, rev0) = etcd.get(b"missing").unwrap();
    assert_eq!(none, None);
    assert!(rev0 >= 1);

    // Binary key and value, not UTF-8.
    let key = b"bin/\xff\x00k".to_vec();
    let r1 = etcd.put(&key, b"\x00\xfe v1", 0).unwrap();
    assert!(r1 > rev0);
    let (kv, rev) = etcd.get(&key).unwrap();
    assert_eq!(rev, r1);
    assert_eq!(
        kv,
        Some(Kv {
            key: key.clone(),
            value: b"\x00\xfe v1".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            lease: 0,
        })
    );

    let r2 = etcd.put(&key, b"", 0).unwrap();
    assert!(r2 > r1);
    let kv = etcd.get(&key).unwrap().0.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b""[..], r1, r2)
    );

    let r3 = etcd.delete(&key).unwrap();
    assert!(r3 > r2);
    assert_eq!(etcd.get(&key).unwrap(), (None, r3));
    // Deleting what is not there changes nothing.
    assert_eq!(etcd.delete(&key).unwrap(), r3);
}

#[test]
fn etcd_errors_are_protocol_errors() {
    let (_member, etcd) = single();
    match etcd.put(b"", b"v", 0) {
        Err(EtcdError::Protocol(msg)) => assert!(msg.contains("key is not provided"), "{msg}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
    match etcd.put(b"k", b"v", 12345) {
        Err(EtcdError::Protocol(msg)) => assert!(msg.contains("lease not found"), "{msg}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
    // The connection that carried the errors still serves.
    assert!(etcd.put(b"k", b"v", 0).is_ok());
}

#[test]
fn lease_grant_keepalive_and_expiry() {
    let (_member, etcd) = single();
    let lease = etcd.lease_grant(2).unwrap();
    assert_ne!(lease, 0);
    let ttl = etcd.lease_keepalive(lease).unwrap();
    assert!((1..=2).contains(&ttl), "ttl {ttl}");

    let rev = etcd.put(b"leased", b"v", lease).unwrap();
    let kv = etcd.get(b"leased").unwrap().0.expect("leased key");
    assert_eq!((kv.lease, kv.mod_revision), (lease, rev));

    // Kept alive past its TTL, it stays.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(etcd.lease_keepalive(lease).unwrap() > 0);
        thread::sleep(Duration::from_millis(300));
    }
    assert!(etcd.get(b"leased").unwrap().0.is_some());

    // Left alone, it expires and takes its key along.
    eventually(Duration::from_secs(20), "leased key deleted", || {
        etcd.get(b"leased").unwrap().0.is_none()
    });
    assert_eq!(etcd.lease_keepalive(lease).unwrap(), 0);
    assert!(matches!(
        etcd.lease_revoke(lease),
        Err(EtcdError::Protocol(_))
    ));
    // An id never granted reads as expired too.
    assert_eq!(etcd.lease_keepalive(lease ^ 0x5555).unwrap(), 0);
}

#[test]
fn lease_revoke_deletes_attached_keys() {
    let (_member, etcd) = single();
    let lease = etcd.lease_grant(60).unwrap();
    etcd.put(b"r/1", b"a", lease).unwrap();
    etcd.put(b"r/2", b"b", lease).unwrap();
    etcd.put(b"r/3", b"c", 0).unwrap();
    etcd.lease_revoke(lease).unwrap();
    let (kvs, _) = etcd.range_prefix(b"r/").unwrap();
    assert_eq!(keys(&kvs), [&b"r/3"[..]]);
    assert_eq!(etcd.lease_keepalive(lease).unwrap(), 0);
}

#[test]
fn range_prefix_is_sorted_by_create_revision() {
    let (_member, etcd) = single();
    for key in ["p/c", "p/a", "p/b", "p", "p0", "o/z", "p/\u{7f}"] {
        etcd.put(key.as_bytes(), key.as_bytes(), 0).unwrap();
    }
    // Rewriting p/c moves its mod_revision, not its place.
    let last = etcd.put(b"p/c", b"again", 0).unwrap();
    let (kvs, rev) = etcd.range_prefix(b"p/").unwrap();
    assert_eq!(rev, last);
    assert_eq!(keys(&kvs), [&b"p/c"[..], b"p/a", b"p/b", b"p/\x7f"]);
    assert!(
        kvs.windows(2)
            .all(|w| w[0].create_revision < w[1].create_revision)
    );
    assert_eq!(kvs[0].value, b"again");
    assert_eq!(kvs[0].mod_revision, last);

    let (none, _) = etcd.range_prefix(b"q/").unwrap();
    assert!(none.is_empty());
    let (all, _) = etcd.range_prefix(b"").unwrap();
    assert_eq!(all.len(), 7);

    // A prefix ending in 0xff.
    etcd.put(b"x\xff1", b"", 0).unwrap();
    etcd.put(b"x\xff\xff", b"", 0).unwrap();
    etcd.put(b"y", b"", 0).unwrap();
    let (kvs, _) = etcd.range_prefix(b"x\xff").unwrap();
    assert_eq!(keys(&kvs), [&b"x\xff1"[..], b"x\xff\xff"]);
}

#[test]
fn put_if_created_follows_the_guard() {
    let (_member, etcd) = single();
    let created = etcd.put(b"guard", b"holder", 0).unwrap();
    let rev = etcd
        .put_if_created(b"guard", created, b"data", b"one")
        .unwrap()
        .expect("guard as created");
    assert_eq!(etcd.get(b"data").unwrap().0.unwrap().value, b"one");
    assert_eq!(etcd.get(b"data").unwrap().1, rev);

    // Rewriting the guard keeps its create_revision.
    etcd.put(b"guard", b"holder2", 0).unwrap();
    assert!(
        etcd.put_if_created(b"guard", created, b"data", b"two")
            .unwrap()
            .is_some()
    );

    etcd.delete(b"guard").unwrap();
    assert_eq!(
        etcd.put_if_created(b"guard", created, b"data", b"three")
            .unwrap(),
        None
    );
    let recreated = etcd.put(b"guard", b"other", 0).unwrap();
    assert_ne!(recreated, created);
    assert_eq!(
        etcd.put_if_created(b"guard", created, b"data", b"four")
            .unwrap(),
        None
    );
    assert_eq!(etcd.get(b"data").unwrap().0.unwrap().value, b"two");
    assert!(
        etcd.put_if_created(b"guard", recreated, b"data", b"five")
            .unwrap()
            .is_some()
    );
    assert_eq!(etcd.get(b"data").unwrap().0.unwrap().value, b"five");
}

#[test]
fn watch_sees_a_delete_from_another_thread() {
    let (_member, etcd) = single();
    let etcd = Arc::new(etcd);
    etcd.put(b"w/a", b"1", 0).unwrap();
    let (_, rev) = etcd.get(b"w/").unwrap();

    let writer = {
        let etcd = Arc::clone(&etcd);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            etcd.put(b"other", b"x", 0).unwrap();
            etcd.put(b"w/b", b"2", 0).unwrap();
            etcd.delete(b"w/a").unwrap()
        })
    };
    let mut seen = Vec::new();
    etcd.watch_prefix(
        b"w/",
        rev + 1,
        Instant::now() + Duration::from_secs(30),
        |event| {
            let done = matches!(event, WatchEvent::Delete(_));
            seen.push(event);
            !done
        },
    )
    .unwrap();
    let delete_rev = writer.join().unwrap();

    assert_eq!(seen.len(), 2, "{seen:?}");
    match &seen[0] {
        WatchEvent::Put(kv) => assert_eq!(
            (kv.key.as_slice(), kv.value.as_slice()),
            (&b"w/b"[..], &b"2"[..])
        ),
        other => panic!("expected the put of w/b, got {other:?}"),
    }
    match &seen[1] {
        WatchEvent::Delete(kv) => assert_eq!(
            (kv.key.as_slice(), kv.mod_revision),
            (&b"w/a"[..], delete_rev)
        ),
        other => panic!("expected the delete of w/a, got {other:?}"),
    }
}

#[test]
fn watch_replays_history_in_order_and_stops_when_told() {
    let (_member, etcd) = single();
    let first = etcd.put(b"h/1", b"a", 0).unwrap();
    etcd.put(b"h/2", b"b", 0).unwrap();
    etcd.put(b"h/1", b"c", 0).unwrap();
    let last = etcd.delete(b"h/2").unwrap();

    let mut seen = Vec::new();
    etcd.watch_prefix(
        b"h/",
        first,
        Instant::now() + Duration::from_secs(30),
        |event| {
            seen.push(match event {
                WatchEvent::Put(kv) => (kv.key, kv.value, kv.mod_revision, true),
                WatchEvent::Delete(kv) => (kv.key, kv.value, kv.mod_revision, false),
            });
            seen.len() < 4
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        [
            (b"h/1".to_vec(), b"a".to_vec(), first, true),
            (b"h/2".to_vec(), b"b".to_vec(), first + 1, true),
            (b"h/1".to_vec(), b"c".to_vec(), first + 2, true),
            (b"h/2".to_vec(), Vec::new(), last, false),
        ]
    );

    // Stopping after the first event returns at once, with history left unread.
    let mut count = 0;
    etcd.watch_prefix(
        b"h/",
        first,
        Instant::now() + Duration::from_secs(30),
        |_| {
            count += 1;
            false
        },
    )
    .unwrap();
    assert_eq!(count, 1);
}

#[test]
fn watch_honours_its_deadline_without_events() {
    let (_member, etcd) = single();
    etcd.put(b"elsewhere", b"x", 0).unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(700);
    let mut events = 0;
    etcd.watch_prefix(b"quiet/", 0, deadline, |_| {
        events += 1;
        true
    })
    .unwrap();
    assert_eq!(events, 0);
    assert!(Instant::now() >= deadline, "returned before its deadline");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "missed its deadline"
    );

    // A deadline already past returns at once.
    etcd.watch_prefix(b"quiet/", 0, started, |_| true).unwrap();
}

#[test]
fn watch_from_a_compacted_revision_fails() {
    let (member, etcd) = single();
    let first = etcd.put(b"c/1", b"a", 0).unwrap();
    let last = etcd.put(b"c/1", b"b", 0).unwrap();
    member.compact(last);
    match etcd.watch_prefix(
        b"c/",
        first,
        Instant::now() + Duration::from_secs(30),
        |_| true,
    ) {
        Err(EtcdError::Protocol(msg)) => assert!(msg.contains("compacted"), "{msg}"),
        other => panic!("expected a canceled watch, got {other:?}"),
    }
}

#[test]
fn one_client_serves_several_threads() {
    let (_member, etcd) = single();
    let etcd = Arc::new(etcd);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let etcd = Arc::clone(&etcd);
            thread::spawn(move || {
                let mut revisions = Vec::new();
                for i in 0..50 {
                    let key = format!("t/{t}/{i}");
                    revisions.push(etcd.put(key.as_bytes(), b"v", 0).unwrap());
                    assert_eq!(etcd.get(key.as_bytes()).unwrap().0.unwrap().value, b"v");
                }
                revisions
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200);
    assert_eq!(etcd.range_prefix(b"t/").unwrap().0.len(), 200);
}

/// Index of a member that is not the leader.
fn follower(cluster: &mut EtcdCluster) -> usize {
    let leader = cluster
        .leader(Duration::from_secs(20))
        .expect("the cluster elects a leader");
    (leader + 1) % cluster.members.len()
}

/// Every call works on what is left of `cluster`, the data written before is there.
fn exercise(etcd: &Etcd, before: i64) {
    assert_eq!(etcd.get(b"before").unwrap().0.unwrap().mod_revision, before);
    let rev = etcd.put(b"f/after", b"v", 0).unwrap();
    assert!(rev > before);
    let (kvs, _) = etcd.range_prefix(b"f/").unwrap();
    assert_eq!(keys(&kvs), [&b"f/after"[..]]);
    assert!(
        etcd.put_if_created(b"f/after", rev, b"f/x", b"y")
            .unwrap()
            .is_some()
    );
    let lease = etcd.lease_grant(30).unwrap();
    assert!(etcd.lease_keepalive(lease).unwrap() > 0);
    etcd.lease_revoke(lease).unwrap();
    let deleted = etcd.delete(b"f/x").unwrap();
    let mut seen = None;
    etcd.watch_prefix(
        b"f/",
        deleted,
        Instant::now() + Duration::from_secs(30),
        |event| {
            seen = Some(event);
            false
        },
    )
    .unwrap();
    assert!(matches!(seen, Some(WatchEvent::Delete(kv)) if kv.key == b"f/x"));
}

#[test]
fn failover_when_the_first_listed_member_dies() {
    let mut cluster = EtcdCluster::start3();
    // The first listed member is a follower: no election follows its death, so every
    // request must succeed at its first try.
    let first = follower(&mut cluster);
    let urls = cluster.urls();
    let order: Vec<String> = (0..3).map(|i| urls[(first + i) % 3].clone()).collect();
    let etcd = Arc::new(client(&order));
    let before = etcd.put(b"before", b"v", 0).unwrap();
    assert_eq!(etcd.current_endpoint(), order[0]);

    // A watch on the member about to die breaks.
    let watch = {
        let etcd = Arc::clone(&etcd);
        thread::spawn(move || {
            etcd.watch_prefix(
                b"never/",
                0,
                Instant::now() + Duration::from_secs(60),
                |_| true,
            )
        })
    };
    thread::sleep(Duration::from_millis(500));

    cluster.kill(first);
    let started = Instant::now();
    exercise(&etcd, before);
    assert_ne!(etcd.current_endpoint(), order[0]);
    match watch.join().unwrap() {
        Err(EtcdError::Unreachable(_)) => {}
        other => panic!("expected the watch to break, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60), "hung");
}

#[test]
fn failover_when_the_first_listed_member_is_the_leader() {
    let mut cluster = EtcdCluster::start3();
    let leader = cluster
        .leader(Duration::from_secs(20))
        .expect("the cluster elects a leader");
    let urls = cluster.urls();
    let order: Vec<String> = (0..3).map(|i| urls[(leader + i) % 3].clone()).collect();
    let etcd = client(&order);
    let before = etcd.put(b"before", b"v", 0).unwrap();

    cluster.kill(leader);
    // While the others elect a new leader, etcd may answer errors; after that, calls work.
    eventually(
        Duration::from_secs(60),
        "a request succeeds after failover",
        || etcd.get(b"before").is_ok(),
    );
    assert_ne!(etcd.current_endpoint(), order[0]);
    exercise(&etcd, before);
}
