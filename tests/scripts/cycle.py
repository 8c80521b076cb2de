"""One scripted load-modify-save cycle, step by step, for the fault tests.

    cycle.py STORE STEP...

Steps (run in order; each prints one line "STEP ok TIME" or "STEP ERRNO TIME", flushed,
TIME being time.time()):
  open          open STORE read-only and keep the handle
  read          read STORE (through the kept handle, or open + read + close)
  close         close the kept handle
  temp:TEXT     write TEXT to STORE.<pid>.tmp (create, write, close)
  big:BYTES     write BYTES zero bytes to STORE.<pid>.tmp (for disk-full tests)
  unlinktemp    remove STORE.<pid>.tmp
  rename        rename STORE.<pid>.tmp onto STORE
  blind:TEXT    temp:TEXT then rename, without reading first
  inplace:TEXT  write TEXT over STORE in place (O_WRONLY | O_TRUNC, no O_CREAT)
  pause         print "pause ok", then wait for a line on stdin
  sleep:SECS    sleep
  pid           print "pid PID"
  try:STEP      run STEP; if it fails, print its errno and go on
A failing step prints its errno name and the script exits 3 (after "exit 3")."""
import errno
import os
import sys
import time

store = sys.argv[1]
tmp = f"{store}.{os.getpid()}.tmp"
handle = None


def say(text):
    sys.stdout.write(f"{text} {time.time():.6f}\n")
    sys.stdout.flush()


def write_file(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


for step in sys.argv[2:]:
    tolerate = step.startswith("try:")
    if tolerate:
        step = step[4:]
    name, _, arg = step.partition(":")
    try:
        if name == "open":
            handle = os.open(store, os.O_RDONLY)
        elif name == "read":
            if handle is None:
                with open(store, "rb") as f:
                    data = f.read()
            else:
                os.lseek(handle, 0, 0)
                data = os.read(handle, 1 << 20)
            sys.stdout.write(f"content {data.decode(errors='replace')!r}\n")
        elif name == "close":
            os.close(handle)
            handle = None
        elif name == "temp":
            write_file(tmp, arg.encode())
        elif name == "big":
            write_file(tmp, bytes(int(arg)))
        elif name == "unlinktemp":
            os.unlink(tmp)
        elif name == "rename":
            os.rename(tmp, store)
        elif name == "blind":
            write_file(tmp, arg.encode())
            os.rename(tmp, store)
        elif name == "inplace":
            fd = os.open(store, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, arg.encode())
            finally:
                os.close(fd)
        elif name == "pause":
            say("pause ok")
            sys.stdin.readline()
            continue
        elif name == "sleep":
            time.sleep(float(arg))
        elif name == "pid":
            print(f"pid {os.getpid()}", flush=True)
            continue
        else:
            raise SystemExit(f"unknown step {step}")
        say(f"{name} ok")
    except OSError as e:
        say(f"{name} {errno.errorcode.get(e.errno, e.errno)}")
        if tolerate:
            continue
        say("exit 3")
        sys.exit(3)
say("exit 0")
