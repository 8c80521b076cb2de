"""S10: readers racing a writer that replaces DIR/store.json via temp + rename.

`reader DIR SIGNALS SECONDS` reads the store in a loop (alternating a read to EOF and a
read of exactly st_size bytes, as Node's readFile does) and exits non-zero on ENOENT or
content that does not parse. It prints how many reads it made while the writer ran.

`writer DIR SIGNALS N READERS` waits until READERS readers run, replaces the store N
times with JSON of varying size, then goes on replacing until every reader has read
while it wrote (so the race happens however the machine schedules us).

SIGNALS is a directory outside the mount where the two sides signal each other."""
import json
import os
import sys
import time

mode, directory, signals = sys.argv[1], sys.argv[2], sys.argv[3]
store = os.path.join(directory, "store.json")
started = os.path.join(signals, "writer.started")
done = os.path.join(signals, "writer.done")
ENOUGH_READS = 5
PATIENCE = 60.0


def signal(name, text=""):
    tmp = os.path.join(signals, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(signals, name))


def readers_with(prefix):
    return [n for n in os.listdir(signals) if n.startswith(prefix)]


if mode == "writer":
    count, readers = int(sys.argv[4]), int(sys.argv[5])
    deadline = time.time() + PATIENCE
    while len(readers_with("alive.")) < readers and time.time() < deadline:
        time.sleep(0.01)
    signal("writer.started")
    i = 0
    while True:
        if i >= count and len(readers_with("busy.")) >= readers:
            break
        if i >= count and time.time() > deadline:
            break
        doc = {"version": i, "pad": "x" * ((i * 7919) % 5000)}
        tmp = f"{store}.{os.getpid()}.{i}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, store)
        i += 1
    signal("writer.done")
    sys.exit(0)

deadline = time.time() + float(sys.argv[4])
signal(f"alive.{os.getpid()}")
during_writes = 0
reads = 0
while time.time() < deadline and not os.path.exists(done):
    writing = os.path.exists(started)
    try:
        fd = os.open(store, os.O_RDONLY)
    except FileNotFoundError:
        print("ENOENT on open", file=sys.stderr)
        sys.exit(1)
    try:
        if reads % 2 == 0:
            size = os.fstat(fd).st_size
            data = os.read(fd, size)
            if len(data) != size:
                print(f"short read {len(data)} of st_size {size}", file=sys.stderr)
                sys.exit(1)
        else:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    try:
        json.loads(data)
    except ValueError:
        print(f"torn content ({len(data)} bytes): {data[:80]!r}", file=sys.stderr)
        sys.exit(1)
    reads += 1
    if writing and not os.path.exists(done):
        during_writes += 1
        if during_writes == ENOUGH_READS:
            signal(f"busy.{os.getpid()}")
print(during_writes)
