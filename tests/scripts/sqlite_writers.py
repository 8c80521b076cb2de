"""S11: `python3 sqlite_writers.py DB WRITER ROWS` inserts ROWS rows into DB (WAL mode),
one transaction per row, with a busy timeout; several run at once."""
import sqlite3
import sys

path, writer, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(path, timeout=30, isolation_level=None)
db.execute("PRAGMA busy_timeout = 30000")
db.execute("PRAGMA journal_mode = WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (writer INTEGER, n INTEGER, PRIMARY KEY (writer, n))")
for n in range(rows):
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t VALUES (?, ?)", (writer, n))
    db.execute("COMMIT")
db.close()
