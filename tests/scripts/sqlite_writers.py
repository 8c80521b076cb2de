"""S11: `python3 sqlite_writers.py DB init` creates DB in WAL mode;
`python3 sqlite_writers.py DB WRITER ROWS` inserts ROWS rows, one transaction each, with a
busy timeout; several writers run at once.

The database is set to WAL once before the writers start: switching journal_mode while
other connections open the same new database can fail with "database is locked" without
the busy handler, natively too (measured: 1 in 150 runs on ext4)."""
import sqlite3
import sys

path = sys.argv[1]
db = sqlite3.connect(path, timeout=30, isolation_level=None)
db.execute("PRAGMA busy_timeout = 30000")
if sys.argv[2] == "init":
    assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    db.execute("CREATE TABLE t (writer INTEGER, n INTEGER, PRIMARY KEY (writer, n))")
    sys.exit(0)
writer, rows = int(sys.argv[2]), int(sys.argv[3])
for n in range(rows):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t VALUES (?, ?)", (writer, n))
    db.execute("COMMIT")
db.close()
