#!/usr/bin/env python3
"""S4: json.load -> add a unique key -> tempfile.NamedTemporaryFile(dir=..., delete=False)
-> json.dump -> os.replace, CYCLES times. Any error is printed and exits 1."""
import json
import os
import sys
import tempfile
import traceback


def main() -> int:
    if len(sys.argv) != 5:
        print("usage: py_cycle.py DIR STORE ID CYCLES", file=sys.stderr)
        return 2
    directory, name, writer, cycles = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = os.path.join(directory, name)
    # LOCKFS_COMMIT_LOG: a file to append each committed key to, after os.replace returned.
    commit_log = os.environ.get("LOCKFS_COMMIT_LOG")
    step = "start"
    try:
        for i in range(cycles):
            step = f"cycle {i} load"
            with open(store, encoding="utf-8") as f:
                data = json.load(f)
            data[f"{writer}-{i}"] = i
            step = f"cycle {i} write temp"
            with tempfile.NamedTemporaryFile(
                "w", dir=directory, delete=False, encoding="utf-8"
            ) as tmp:
                json.dump(data, tmp, indent=2)
            step = f"cycle {i} replace"
            os.replace(tmp.name, store)
            if commit_log:
                with open(commit_log, "a", encoding="utf-8") as log:
                    log.write(f"{writer}-{i}\n")
    except Exception as err:  # noqa: BLE001 - report everything, then fail
        code = getattr(err, "errno", None)
        print(
            f"py_cycle {writer} (pid {os.getpid()}) failed at {step} [errno {code}]: {err}",
            file=sys.stderr,
        )
        traceback.print_exc()
        return 1
    print(json.dumps({"writer": writer, "done": cycles}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
