//! The maps on the request path. Every FUSE request and every lease request hashes
//! (nodeid, name) keys, thread ids and process ids several times: foldhash (seeded per
//! map, so crafted file names cannot pile up in one bucket) instead of std's SipHash.

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
