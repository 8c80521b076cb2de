#!/usr/bin/env node
'use strict';
// Benchmark writer: CYCLES load-modify-save cycles on DIR/STORE (readFile -> JSON.parse ->
// add key ID-i -> writeFile(tmp) -> rename), the S1 cycle of scripts/writers/node_cycle.js,
// optionally under proper-lockfile (used as its README shows, with retries). Records the
// time of every cycle with process.hrtime.bigint() (CLOCK_MONOTONIC, system-wide).
//
//   node cycle.js DIR STORE ID CYCLES [--lock none|proper-lockfile] [--start-at NS]
//
// --start-at NS waits until CLOCK_MONOTONIC reaches NS (a start barrier for N writers).
// Prints one JSON line: {"id","cycles","start_ns","end_ns","enoent","lat_us":[..]} (start/end
// as strings of nanoseconds; enoent = reads that failed with ENOENT and were retried).
const path = require('path');
const { fs, parseArgs, tmpName, run, parseStore, sleep } = require('../writers/lib');

const usage = `usage: cycle.js DIR STORE ID CYCLES [--lock none|proper-lockfile] [--start-at NS]`;
const a = parseArgs(['dir', 'store', 'id', 'cycles'], { lock: 'none', start_at: '0' }, usage);
const store = path.join(a.dir, a.store);

run(`bench cycle ${a.id}`, async () => {
  const lockfile = a.lock === 'proper-lockfile' ? require('proper-lockfile') : null;
  const startAt = BigInt(a.start_at);
  while (process.hrtime.bigint() < startAt) {
    const left = Number(startAt - process.hrtime.bigint()) / 1e6;
    await sleep(left > 2 ? left - 1 : 0);
  }
  const lat = new Array(a.cycles);
  let enoent = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < a.cycles; i++) {
    const c0 = process.hrtime.bigint();
    let release = null;
    if (lockfile) {
      release = await lockfile.lock(store, {
        retries: { retries: 10000, factor: 1.2, minTimeout: 1, maxTimeout: 50, randomize: true },
      });
    }
    try {
      let text;
      try {
        text = await fs.promises.readFile(store, 'utf8');
      } catch (err) {
        // Through bindfs a reader racing a rename-over gets ENOENT: count it, redo the cycle.
        if (err.code !== 'ENOENT' || ++enoent > 100000) throw err;
        i--;
        continue;
      }
      const data = parseStore(text, store);
      data[`${a.id}-${i}`] = i;
      const tmp = tmpName(store, 'target');
      await fs.promises.writeFile(tmp, JSON.stringify(data));
      await fs.promises.rename(tmp, store);
    } finally {
      if (release) await release();
    }
    lat[i] = Number(process.hrtime.bigint() - c0) / 1000;
  }
  const t1 = process.hrtime.bigint();
  return { id: a.id, cycles: a.cycles, start_ns: String(t0), end_ns: String(t1), enoent, lat_us: lat };
});
