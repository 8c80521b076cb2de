//! Who made a FUSE request.

use fuser::Request;

/// Who made a request: the calling thread id (in the mount's pid namespace), uid and gid,
/// and the request's FUSE id (the kernel numbers requests in the order it queues them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub unique: u64,
}

impl Caller {
    pub fn of(req: &Request) -> Caller {
        Caller {
            pid: req.pid(),
            uid: req.uid(),
            gid: req.gid(),
            unique: req.unique().0,
        }
    }
}
