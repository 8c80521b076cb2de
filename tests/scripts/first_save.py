#!/usr/bin/env python3
"""Two processes find a store missing; the first saves it. Through lockfs the second one's
load waits for that save and reads it (natively it finds nothing).

first_save.py first STORE SIGNALS   load (missing), wait until the second loads, save "first"
first_save.py second STORE SIGNALS  load once the first has, print what it read or "missing"
The two signal through files in SIGNALS, a directory outside the mount.
"""
import os
import sys
import time


def wait_for(path, limit=30.0):
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            sys.exit(f"gave up waiting for {path}")
        time.sleep(0.005)


def signal(path):
    with open(path, "w"):
        pass


def load(store):
    try:
        with open(store) as f:
            return f.read()
    except FileNotFoundError:
        return None


def main():
    role, store, signals = sys.argv[1:4]
    if role == "first":
        if load(store) is not None:
            sys.exit("the store existed before the first load")
        signal(os.path.join(signals, "first-loaded"))
        wait_for(os.path.join(signals, "second-loading"))
        # Long enough for the second one's open to have been answered, had it not waited.
        time.sleep(0.2)
        with open(store, "w") as f:
            f.write("first")
    else:
        wait_for(os.path.join(signals, "first-loaded"))
        signal(os.path.join(signals, "second-loading"))
        content = load(store)
        print("missing" if content is None else content)


main()
