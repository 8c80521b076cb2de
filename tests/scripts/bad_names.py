"""Awkward names and file types in DIR (argv[1]); one line per step, so a native run and a
run through a lockfs mount can be compared. Prints no inode numbers or times."""
import errno
import os
import socket
import stat
import sys

os.chdir(sys.argv[1])
os.umask(0o022)
steps = 0


def step(label, fn):
    global steps
    steps += 1
    try:
        result = fn()
        print(f"{label}: ok {'' if result is None else result}", flush=True)
    except OSError as e:
        print(f"{label}: {errno.errorcode.get(e.errno, e.errno)}", flush=True)


def write(path, data=b"data\n", flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, flags, 0o644)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def kind(path, follow=False):
    s = os.stat(path, follow_symlinks=follow)
    return f"{stat.filemode(s.st_mode)} size={s.st_size if stat.S_ISREG(s.st_mode) else '-'} nlink={s.st_nlink}"


def cycle(store, text):
    """A load-modify-save cycle on STORE (bytes path)."""
    old = read(store) if os.path.exists(store) else b""
    tmp = store + b".tmp"
    write(tmp, old + text)
    os.rename(tmp, store)
    return len(read(store))


# Non-UTF-8 and odd bytes in names.
odd = [b"caf\xe9.json", b"\xff\xfe\xfd", b"a\x01b", b"new\nline", b" lead", b"trail ", b"-dash", b"\xc3\x28"]
for name in odd:
    step(f"create {name!r}", lambda n=name: write(n))
    step(f"stat {name!r}", lambda n=name: kind(n))
    step(f"cycle {name!r}", lambda n=name: cycle(n, b"more\n"))
    step(f"read {name!r}", lambda n=name: read(n))
step("listdir bytes", lambda: sorted(os.listdir(b".")))
for a, b in zip(odd, odd[1:] + odd[:1]):
    step(f"rename {a!r} -> {b!r}.x", lambda a=a, b=b: os.rename(a, b + b".x"))
step("listdir after renames", lambda: sorted(os.listdir(b".")))
for name in odd:
    step(f"unlink {name!r}.x", lambda n=name: os.unlink(n + b".x"))

# Name length limits.
for n in (254, 255, 256):
    name = b"n" * n
    step(f"create name of {n}", lambda name=name: write(name))
    step(f"cycle name of {n}", lambda name=name[: n - 4]: cycle(name, b"x"))
    step(f"mkdir name of {n}", lambda name=name: os.mkdir(name + b"d"[: 255 - n] if n < 255 else name))
step("listdir lengths", lambda: sorted(len(x) for x in os.listdir(b".")))

# Long paths: nested dirs up to about 4,000 bytes, then past PATH_MAX.
os.mkdir(b"deep")
parts = [b"deep"]
while len(b"/".join(parts)) < 3800:
    parts.append(b"d" * 200)
    step_path = b"/".join(parts)
    try:
        os.mkdir(step_path)
    except OSError as e:
        print(f"mkdir at {len(step_path)}: {errno.errorcode.get(e.errno, e.errno)}")
        break
deep = b"/".join(parts)
step(f"depth {len(parts)} path {len(deep)}", lambda: None)
step("create at ~4000", lambda: write(deep + b"/" + b"f" * (4000 - len(deep) - 1)))
step("stat at ~4000", lambda: kind(deep + b"/" + b"f" * (4000 - len(deep) - 1)))
step("cycle at ~4000", lambda: cycle(deep + b"/" + b"s" * (4000 - len(deep) - 6), b"{}"))
step("create past 4096", lambda: write(deep + b"/" + b"g" * (4100 - len(deep))))
step("stat past 4096", lambda: kind(deep + b"/" + b"g" * (4100 - len(deep))))
step("chdir deep and stat .", lambda: (os.chdir(deep), kind("."))[1])
step("create in deep cwd", lambda: write(b"rel"))
step("listdir deep cwd", lambda: sorted(len(x) for x in os.listdir(b".")))
os.chdir(sys.argv[1])

# Symlink loops.
os.symlink("loop_b", "loop_a")
os.symlink("loop_a", "loop_b")
os.symlink("self", "self")
os.mkdir("ld")
os.symlink(".", "ld/dot")
for name in ("loop_a", "self", "ld/" + "dot/" * 45 + "x"):
    step(f"open {name[:20]}", lambda n=name: read(n))
    step(f"stat {name[:20]}", lambda n=name: kind(n, follow=True))
    step(f"lstat {name[:20]}", lambda n=name: kind(n))
    step(f"create via {name[:20]}", lambda n=name: write(n))
    step(f"rename onto {name[:20]}", lambda n=name: (write("t.tmp"), os.rename("t.tmp", n))[1])
step("readlink self", lambda: os.readlink("self"))
step("open O_NOFOLLOW loop_a", lambda: os.close(os.open("loop_a", os.O_RDONLY | os.O_NOFOLLOW)))

# A fifo.
os.mkfifo("fifo", 0o644)
step("stat fifo", lambda: kind("fifo"))
step("open fifo wronly nonblock, no reader", lambda: os.close(os.open("fifo", os.O_WRONLY | os.O_NONBLOCK)))


def fifo_roundtrip():
    r = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open("fifo", os.O_WRONLY | os.O_NONBLOCK)
    os.write(w, b"through the fifo")
    data = os.read(r, 100)
    os.close(w)
    os.close(r)
    return data


step("fifo roundtrip", fifo_roundtrip)
step("rename fifo", lambda: os.rename("fifo", "fifo2"))
step("unlink fifo2", lambda: os.unlink("fifo2"))

# A unix socket.


def socket_roundtrip():
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("sock")
    server.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect("sock")
    conn, _ = server.accept()
    client.sendall(b"through the socket")
    data = conn.recv(100)
    for s in (conn, client, server):
        s.close()
    return data


step("socket roundtrip", socket_roundtrip)
step("stat sock", lambda: kind("sock"))
step("open sock", lambda: read("sock"))
step("unlink sock", lambda: os.unlink("sock"))
step("mknod chr (root only)", lambda: os.mknod("chr", stat.S_IFCHR | 0o600, os.makedev(1, 3)))
step("stat chr", lambda: kind("chr"))

# Files that change type between calls.
write("morph", b"file\n")
step("stat morph file", lambda: kind("morph"))
fd = os.open("morph", os.O_RDONLY)
step("replace file by dir", lambda: (os.unlink("morph"), os.mkdir("morph"))[1])
step("stat morph dir", lambda: kind("morph"))
step("read old fd", lambda: os.pread(fd, 100, 0))
os.close(fd)
step("open morph wronly", lambda: write("morph", flags=os.O_WRONLY))
step("read morph", lambda: read("morph"))
step("rename file onto morph dir", lambda: (write("m.tmp"), os.rename("m.tmp", "morph"))[1])
step("replace dir by file", lambda: (os.rmdir("morph"), write("morph", b"file again\n"))[1])
step("read morph again", lambda: read("morph"))
step("replace file by symlink", lambda: (os.unlink("morph"), os.symlink("nowhere", "morph"))[1])
step("stat morph link", lambda: kind("morph"))
step("open morph dangling", lambda: read("morph"))
step("create through dangling", lambda: write("morph"))
step("nowhere now", lambda: kind("nowhere"))
step("replace link by fifo", lambda: (os.unlink("morph"), os.mkfifo("morph"))[1])
step("stat morph fifo", lambda: kind("morph"))
os.mkdir("gone")
dfd = os.open("gone", os.O_RDONLY | os.O_DIRECTORY)
step("replace dir by file under a dir fd", lambda: (os.rmdir("gone"), write("gone"))[1])
step("create in removed dir via fd", lambda: os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd)))
step("listdir removed dir via fd", lambda: os.listdir(dfd))
os.close(dfd)
step("final listdir", lambda: sorted(os.listdir(b".")))
print(f"steps {steps}")
