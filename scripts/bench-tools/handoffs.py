"""Hand-off latencies from two handoff.js event lists (scripts/bench, scripts/bench-cluster).

Each event is [open_start_ns, open_done_ns, commit_ns] (CLOCK_MONOTONIC). For every open
that started before the other process's latest commit and returned after it, the hand-off
is open return minus that commit."""


def handoffs(events):
    """Microseconds, one per hand-off, from `events` = [process 0's, process 1's]."""
    out = []
    for me, other in ((0, 1), (1, 0)):
        commits = sorted(e[2] for e in events[other])
        j = 0
        for t0, t1, _ in events[me]:
            while j + 1 < len(commits) and commits[j + 1] < t1:
                j += 1
            if commits and commits[j] < t1 and t0 < commits[j]:
                out.append((t1 - commits[j]) / 1000)
    return out
