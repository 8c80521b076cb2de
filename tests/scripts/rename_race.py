"""S10: `writer DIR N` replaces DIR/store.json N times via temp + rename with JSON of
varying size; `reader DIR SECONDS` reads it in a loop (alternating a read to EOF and a
read of exactly st_size bytes, as Node's readFile does) and exits non-zero on ENOENT or
content that does not parse."""
import json
import os
import sys
import time

mode, directory = sys.argv[1], sys.argv[2]
store = os.path.join(directory, "store.json")

if mode == "writer":
    for i in range(int(sys.argv[3])):
        doc = {"version": i, "pad": "x" * ((i * 7919) % 5000)}
        tmp = f"{store}.{os.getpid()}.{i}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, store)
    with open(os.path.join(directory, "writer.done"), "w") as f:
        f.write("done")
    sys.exit(0)

deadline = time.time() + float(sys.argv[3])
reads = 0
done = os.path.join(directory, "writer.done")
while time.time() < deadline and not os.path.exists(done):
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
print(reads)
