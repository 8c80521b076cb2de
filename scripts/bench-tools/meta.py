#!/usr/bin/env python3
"""Metadata benchmark: create, stat and unlink N small files in DIR (one directory).

    python3 meta.py DIR N

create = os.open(O_CREAT|O_WRONLY|O_EXCL) + write 64 bytes + close; stat = os.stat;
unlink = os.unlink. Prints {"create": s, "stat": s, "unlink": s} (seconds per phase).
"""
import json
import os
import sys
import time


def main():
    d, n = sys.argv[1], int(sys.argv[2])
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    data = b"x" * 63 + b"\n"
    out = {}
    t = time.monotonic()
    for p in names:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    out["create"] = time.monotonic() - t
    t = time.monotonic()
    for p in names:
        os.stat(p)
    out["stat"] = time.monotonic() - t
    t = time.monotonic()
    for p in names:
        os.unlink(p)
    out["unlink"] = time.monotonic() - t
    print(json.dumps(out))


if __name__ == "__main__":
    main()
