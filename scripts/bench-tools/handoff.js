#!/usr/bin/env node
'use strict';
// Lease hand-off benchmark: two (or more) of these run on one DIR/STORE at once, each doing
// CYCLES cycles: open(store) -> read -> close -> write tmp -> rename (the commit). With a
// FIFO lease the others' opens wait while one holds the file, so the cycles ping-pong.
// With --lock proper-lockfile the cycle is lock() ... release() on a native dir instead,
// and "open returns" / "commit" mean "lock() returns" / "release() returns".
//
//   node handoff.js DIR STORE ID CYCLES [--lock none|proper-lockfile] [--start-at NS]
//
// Prints one JSON line {"id", "events": [[open_start_ns, open_done_ns, commit_ns], ...]}
// with nanosecond values of CLOCK_MONOTONIC (process.hrtime.bigint()) as strings; the
// bench pairs each open that was waiting with the other process's commit just before it.
const path = require('path');
const { fs, parseArgs, tmpName, run, sleep } = require('../writers/lib');

const usage = `usage: handoff.js DIR STORE ID CYCLES [--lock none|proper-lockfile] [--start-at NS]`;
const a = parseArgs(['dir', 'store', 'id', 'cycles'], { lock: 'none', start_at: '0' }, usage);
const store = path.join(a.dir, a.store);
const now = () => process.hrtime.bigint();

run(`bench handoff ${a.id}`, async () => {
  const lockfile = a.lock === 'proper-lockfile' ? require('proper-lockfile') : null;
  const startAt = BigInt(a.start_at);
  while (now() < startAt) await sleep(1);
  const events = [];
  for (let i = 0; i < a.cycles; i++) {
    const t0 = now();
    let release = null;
    let t1;
    if (lockfile) {
      release = await lockfile.lock(store, {
        retries: { retries: 10000, factor: 1.2, minTimeout: 1, maxTimeout: 50, randomize: true },
      });
      t1 = now();
    }
    const fh = await fs.promises.open(store, 'r');
    if (!lockfile) t1 = now();
    const text = await fh.readFile('utf8');
    await fh.close();
    const data = JSON.parse(text);
    data[`${a.id}-${i}`] = i;
    const tmp = tmpName(store, 'target');
    await fs.promises.writeFile(tmp, JSON.stringify(data));
    await fs.promises.rename(tmp, store);
    let t2 = now();
    if (release) {
      await release();
      t2 = now();
    }
    events.push([String(t0), String(t1), String(t2)]);
  }
  return { id: a.id, events };
});
