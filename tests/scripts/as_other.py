"""Run as another (unprivileged) user in DIR (argv[1]); prints one line per step with its
result, so a native run and a run through a lockfs mount can be compared. Expects the
layout that tests/security.rs makes: secret (0600 root), pub (0644 root), open/ (0777),
closed/ (0700 root) holding x."""
import errno
import os
import sys

os.umask(0o022)
print(f"whoami: ok {os.getuid()}:{os.getgid()}", flush=True)
try:
    os.stat(sys.argv[1])
    os.chdir(sys.argv[1])
except OSError as e:
    print(f"enter dir: {errno.errorcode.get(e.errno, e.errno)}", flush=True)
    sys.exit(0)


def step(label, fn):
    try:
        result = fn()
        print(f"{label}: ok {'' if result is None else result}", flush=True)
    except OSError as e:
        print(f"{label}: {errno.errorcode.get(e.errno, e.errno)}", flush=True)


def read(path):
    with open(path, "rb") as f:
        return len(f.read())


def write(path, data=b"mine\n", flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, flags, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def owner(path):
    s = os.lstat(path)
    return f"{s.st_uid}:{s.st_gid} {oct(s.st_mode)}"


step("stat .", lambda: oct(os.stat(".").st_mode))
step("listdir .", lambda: sorted(os.listdir(".")))
step("read secret", lambda: read("secret"))
step("read pub", lambda: read("pub"))
step("write pub", lambda: write("pub", flags=os.O_WRONLY))
step("append pub", lambda: write("pub", flags=os.O_WRONLY | os.O_APPEND))
step("chmod pub", lambda: os.chmod("pub", 0o666))
step("chown pub", lambda: os.chown("pub", os.getuid(), -1))
step("utime pub", lambda: os.utime("pub", (1, 1)))
step("unlink pub", lambda: os.unlink("pub"))
step("rename pub", lambda: os.rename("pub", "open/stolen"))
step("create in root", lambda: write("mine"))
step("mkdir in root", lambda: os.mkdir("mydir"))
step("listdir closed", lambda: os.listdir("closed"))
step("read closed/x", lambda: read("closed/x"))
step("stat closed/x", lambda: os.stat("closed/x").st_size)
step("create open/mine", lambda: write("open/mine"))
step("owner open/mine", lambda: owner("open/mine"))
step("mkdir open/d", lambda: os.mkdir("open/d", 0o755))
step("owner open/d", lambda: owner("open/d"))
step("symlink open/l", lambda: os.symlink("../pub", "open/l"))
step("owner open/l", lambda: owner("open/l"))
step("read via open/l", lambda: read("open/l"))
step("temp+rename in open", lambda: (write("open/s.tmp", b"{}"), os.rename("open/s.tmp", "open/s.json")))
step("owner open/s.json", lambda: owner("open/s.json"))
step("chmod open/mine", lambda: os.chmod("open/mine", 0o600))
step("owner open/mine again", lambda: owner("open/mine"))
step("chown open/mine to root", lambda: os.chown("open/mine", 0, -1))
step("link pub into open", lambda: os.link("pub", "open/hard"))
step("unlink open/mine", lambda: os.unlink("open/mine"))
