"""Exercise every file operation in the directory given as argv[1] and print one line per
step. The output depends only on file-system semantics, so a native directory and a lockfs
mount of an identical directory must print the same lines."""
import ctypes
import errno
import os
import stat
import sys

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

os.chdir(sys.argv[1])
os.umask(0o022)
lines = []


def step(label, fn):
    try:
        result = fn()
        lines.append(f"{label}: ok {'' if result is None else result}")
    except OSError as e:
        lines.append(f"{label}: {errno.errorcode.get(e.errno, e.errno)}")


def st(path, follow=False):
    s = os.stat(path, follow_symlinks=follow)
    return (f"mode={oct(s.st_mode)} size={s.st_size} nlink={s.st_nlink} "
            f"uid={s.st_uid} gid={s.st_gid}")


def write(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644):
    fd = os.open(path, flags, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def renameat2(old, new, flags):
    ret = libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime, mtime):
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# files, create, O_EXCL, O_APPEND
step("preexisting", lambda: read("pre.txt"))
step("write a", lambda: write("a", b"hello world"))
step("stat a", lambda: st("a"))
step("create excl existing", lambda: write("a", b"x", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
step("create excl new", lambda: write("b", b"bee", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
step("stat b", lambda: st("b"))
step("append 1", lambda: write("a", b"+one", os.O_WRONLY | os.O_APPEND))
step("append 2", lambda: write("a", b"+two", os.O_WRONLY | os.O_APPEND))
step("read a", lambda: read("a"))
step("open missing", lambda: read("missing"))
step("unlink missing", lambda: os.unlink("missing"))
step("open dir for write", lambda: os.open(".", os.O_WRONLY))
step("file as dir", lambda: os.listdir("a"))
step("ino stable", lambda: os.stat("a").st_ino == os.stat("a").st_ino)

# setattr: chmod, chown, times, truncate (by path and by fd)
step("chmod", lambda: os.chmod("a", 0o640))
step("stat chmod", lambda: st("a"))
step("chown", lambda: os.chown("a", 1234, 2345))
step("stat chown", lambda: st("a"))
step("utime set", lambda: os.utime("a", ns=(1_000_000_000, 2_000_000_000)))
step("times", lambda: (os.stat("a").st_atime_ns, os.stat("a").st_mtime_ns))
step("utime omit atime", lambda: utimensat("a", (0, UTIME_OMIT), (5, 0)))
step("times omit", lambda: (os.stat("a").st_atime_ns, os.stat("a").st_mtime_ns))
step("utime now", lambda: utimensat("a", (0, UTIME_NOW), (0, UTIME_OMIT)))
step("atime now", lambda: os.stat("a").st_atime_ns > 1_000_000_000 and os.stat("a").st_mtime_ns == 5_000_000_000)
step("truncate", lambda: os.truncate("a", 3))
step("stat truncate", lambda: st("a"))


def ftruncate_fd():
    fd = os.open("a", os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        return os.fstat(fd).st_size, os.read(fd, 100)
    finally:
        os.close(fd)


step("ftruncate", ftruncate_fd)

# directories
step("mkdir", lambda: os.mkdir("d1", 0o750))
step("stat d1", lambda: st("d1"))
step("mkdir again", lambda: os.mkdir("d1"))
step("file in d1", lambda: write("d1/f", b"in dir"))
step("rmdir nonempty", lambda: os.rmdir("d1"))
step("mkdir d2", lambda: os.mkdir("d2"))
step("rmdir d2", lambda: os.rmdir("d2"))
step("rmdir missing", lambda: os.rmdir("d2"))
step("unlink dir", lambda: os.unlink("d1"))
step("rmdir file", lambda: os.rmdir("a"))

# symlinks
step("symlink", lambda: os.symlink("a", "sl"))
step("readlink", lambda: os.readlink("sl"))
step("lstat sl", lambda: st("sl"))
step("stat through sl", lambda: st("sl", follow=True))
step("symlink exists", lambda: os.symlink("x", "sl"))
step("dangling", lambda: (os.symlink("nowhere", "dl"), read("dl")))
step("read dangling", lambda: read("dl"))

# hard links
step("link", lambda: os.link("b", "b2"))
step("link nlink", lambda: (os.stat("b").st_nlink, os.stat("b2").st_nlink))
step("link same ino", lambda: os.stat("b").st_ino == os.stat("b2").st_ino)
step("write via link", lambda: write("b2", b"shared"))
step("read other link", lambda: read("b"))
step("unlink one link", lambda: os.unlink("b2"))
step("nlink after", lambda: os.stat("b").st_nlink)
step("link exists", lambda: os.link("b", "a"))

# rename, renameat2
step("rename", lambda: os.rename("b", "c"))
step("old gone", lambda: os.stat("b"))
step("rename keeps ino", lambda: os.stat("c").st_ino == os.lstat("c").st_ino)
step("write r1", lambda: write("r1", b"one"))
step("write r2", lambda: write("r2", b"two-two"))
step("noreplace existing", lambda: renameat2("r1", "r2", RENAME_NOREPLACE))
step("noreplace new", lambda: renameat2("r1", "r3", RENAME_NOREPLACE))
step("exchange", lambda: renameat2("r2", "r3", RENAME_EXCHANGE))
step("after exchange", lambda: (read("r2"), read("r3")))
step("exchange missing", lambda: renameat2("r2", "nope", RENAME_EXCHANGE))
step("rename over", lambda: os.replace("r2", "r3"))
step("after over", lambda: (read("r3"), os.stat("r3").st_size))
step("mkdir e1", lambda: (os.mkdir("e1"), os.mkdir("e2"), write("e2/x", b"x")))
step("rename dir over nonempty", lambda: os.rename("e1", "e2"))
step("rename file over dir", lambda: os.rename("r3", "e1"))
step("rename dir over file", lambda: os.rename("e1", "r3"))
step("rename into subdir", lambda: os.rename("r3", "e2/r3"))
step("stat moved", lambda: st("e2/r3"))

# special files
step("mkfifo", lambda: os.mkfifo("fifo", 0o620))
step("stat fifo", lambda: st("fifo"))
step("mknod chr", lambda: os.mknod("null", 0o600 | stat.S_IFCHR, os.makedev(1, 3)))
step("rdev", lambda: (os.major(os.lstat("null").st_rdev), os.minor(os.lstat("null").st_rdev)))
step("write dev null", lambda: write("null", b"gone", os.O_WRONLY))

# xattrs
step("setxattr", lambda: os.setxattr("a", "user.key", b"value"))
step("getxattr", lambda: os.getxattr("a", "user.key"))
step("setxattr create existing", lambda: os.setxattr("a", "user.key", b"v2", os.XATTR_CREATE))
step("setxattr replace missing", lambda: os.setxattr("a", "user.nokey", b"v2", os.XATTR_REPLACE))
step("listxattr", lambda: sorted(x for x in os.listxattr("a") if x.startswith("user.")))
step("removexattr", lambda: os.removexattr("a", "user.key"))
step("getxattr removed", lambda: os.getxattr("a", "user.key"))
step("xattr on dir", lambda: (os.setxattr("e2", "user.d", b"1"), os.getxattr("e2", "user.d")))


# fallocate, lseek, copy_file_range, fsync
def data_ops():
    fd = os.open("big", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 8192)
        size1 = os.fstat(fd).st_size
        os.pwrite(fd, b"X" * 100, 100_000)
        size2 = os.fstat(fd).st_size
        data = os.lseek(fd, 0, os.SEEK_DATA)
        end = os.lseek(fd, 0, os.SEEK_END)
        os.fsync(fd)
        os.fdatasync(fd)
        return size1, size2, data, end
    finally:
        os.close(fd)


step("fallocate lseek fsync", data_ops)


def copy_range():
    src = os.open("a", os.O_RDONLY)
    dst = os.open("copy", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        n = os.copy_file_range(src, dst, 1000)
        return n
    finally:
        os.close(src)
        os.close(dst)


step("copy_file_range", copy_range)
step("copied", lambda: read("copy"))


def fsync_dir():
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


step("fsync dir", fsync_dir)


def unlinked_open():
    fd = os.open("tmpfile", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.unlink("tmpfile")
        os.write(fd, b"still here")
        os.lseek(fd, 0, 0)
        return os.fstat(fd).st_nlink, os.read(fd, 100)
    finally:
        os.close(fd)


step("unlinked but open", unlinked_open)

# names
odd = b"odd\xff\xfename"
step("odd name", lambda: write(odd, b"odd"))
step("odd listed", lambda: odd in os.listdir(b"."))
step("odd read", lambda: read(odd))
step("255 name", lambda: write("n" * 255, b"long"))
step("256 name", lambda: write("n" * 256, b"long"))
step("255 read", lambda: read("n" * 255))

# directory listing
step("listdir", lambda: sorted(os.listdir(b".")))
step("listdir e2", lambda: sorted(os.listdir("e2")))
step("scandir inos", lambda: all(
    e.inode() == os.lstat(e.path).st_ino for e in os.scandir(".")))
step("statvfs namemax", lambda: os.statvfs(".").f_namemax)
step("access", lambda: (os.access("a", os.R_OK), os.access("missing", os.F_OK)))

print("\n".join(lines))
