#!/usr/bin/env python3
"""S14: Python `shelve` on `dbm.dumb` (stdlib only), unmodified.

  py_shelve.py DIR NAME ID CYCLES    CYCLES times: open DIR/NAME, add ID-i, close
  py_shelve.py --keys DIR NAME OUT   open DIR/NAME read-only, write its keys to OUT

A cycle is `shelve.Shelf(dbm.dumb.open(path, "c"))`, `db[key] = i`, `db.close()`:
dbm.dumb reads NAME.dir at open, appends the value to NAME.dat, and at close renames
NAME.dir to NAME.bak and writes a new NAME.dir. An update counts as acknowledged when
close() returned (then it is appended to LOCKFS_COMMIT_LOG, if set). Failures are
printed and the writer goes on; it exits 1 at the end if any cycle failed.

--keys writes one line per key whose value unpickles to the integer the writer stored
(ID-i -> i) and prints {"keys": n, "torn": bad}; it exits 1 if the database cannot be
opened, which is what a user would see.
"""
import dbm.dumb
import json
import os
import shelve
import signal
import sys
import time


def cycles(directory: str, name: str, writer: str, count: int) -> int:
    path = os.path.join(directory, name)
    commit_log = os.environ.get("LOCKFS_COMMIT_LOG")
    acknowledged = refused = done = 0
    max_ms = 0.0
    started = None

    def summary() -> None:
        print(
            json.dumps(
                {
                    "writer": writer,
                    "done": done,
                    "acknowledged": acknowledged,
                    "refused": refused,
                    "torn": 0,
                    "max_cycle_ms": round(max_ms),
                }
            ),
            flush=True,
        )

    def on_term(_signum, _frame):
        # Killed by race.sh's timeout: the cycle in progress counts toward the longest
        # cycle, and the summary still goes out.
        nonlocal max_ms
        if started is not None:
            max_ms = max(max_ms, (time.monotonic() - started) * 1000)
        summary()
        print(f"py_shelve {writer} (pid {os.getpid()}) killed during cycle {done} (SIGTERM)",
              file=sys.stderr, flush=True)
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    for i in range(count):
        key = f"{writer}-{i}"
        done = i
        started = time.monotonic()
        try:
            db = shelve.Shelf(dbm.dumb.open(path, "c"))
            try:
                db[key] = i
            finally:
                db.close()
        except Exception as err:  # noqa: BLE001 - report everything, go on
            refused += 1
            code = getattr(err, "errno", None)
            print(
                f"py_shelve {writer} (pid {os.getpid()}) update {key} failed "
                f"[errno {code}]: {type(err).__name__}: {err}",
                file=sys.stderr,
            )
        else:
            acknowledged += 1
            if commit_log:
                with open(commit_log, "a", encoding="utf-8") as log:
                    log.write(f"{key}\n")
        max_ms = max(max_ms, (time.monotonic() - started) * 1000)
    started = None
    done = count
    summary()
    if refused:
        print(f"py_shelve {writer} failed: {refused} of {count} updates refused", file=sys.stderr)
        return 1
    return 0


def keys(directory: str, name: str, out: str) -> int:
    path = os.path.join(directory, name)
    try:
        db = shelve.Shelf(dbm.dumb.open(path, "r"))
    except Exception as err:  # noqa: BLE001
        print(f"py_shelve --keys: the database {path} cannot be opened: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 1
    good, torn = [], 0
    try:
        for key in list(db.keys()):
            try:
                value = db[key]
                ok = isinstance(value, int) and key.rsplit("-", 1)[1] == str(value)
            except Exception:  # noqa: BLE001 - a value that does not unpickle is torn
                ok = False
            if ok:
                good.append(key)
            else:
                torn += 1
    finally:
        db.close()
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(f"{k}\n" for k in good)
    print(json.dumps({"keys": len(good), "torn": torn}))
    return 0


def main() -> int:
    args = sys.argv[1:]
    if len(args) == 4 and args[0] == "--keys":
        return keys(args[1], args[2], args[3])
    if len(args) == 4 and not args[0].startswith("-"):
        return cycles(args[0], args[1], args[2], int(args[3]))
    print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
