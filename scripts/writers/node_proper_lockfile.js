#!/usr/bin/env node
'use strict';
// The S1 cycle wrapped in proper-lockfile, as its README shows: lock(store, {retries})
// -> readFile -> add a key -> writeFile(tmp) -> rename -> release. For benchmarks
// against lockfs. Needs NODE_PATH to hold proper-lockfile (scripts/npm-deps.sh).
const { fs, path, parseArgs, tmpName, run, parseStore } = require('./lib');

const usage = `usage: node_proper_lockfile.js DIR STORE ID CYCLES [--retries N] [--stale MS] [--tmp STYLE]
Adds keys ID-0 .. ID-(CYCLES-1) to DIR/STORE under a proper-lockfile lock.`;
const a = parseArgs(['dir', 'store', 'id', 'cycles'], { retries: 1000, stale: 10000, tmp: 'target' }, usage);
const store = path.join(a.dir, a.store);

run(`node_proper_lockfile ${a.id}`, async (at) => {
  const lockfile = require('proper-lockfile');
  for (let i = 0; i < a.cycles; i++) {
    at(`cycle ${i} lock`);
    const release = await lockfile.lock(store, {
      stale: a.stale,
      retries: { retries: a.retries, factor: 1.2, minTimeout: 5, maxTimeout: 100, randomize: true },
    });
    try {
      at(`cycle ${i} read`);
      const data = parseStore(await fs.promises.readFile(store, 'utf8'), store);
      data[`${a.id}-${i}`] = i;
      const tmp = tmpName(store, a.tmp);
      at(`cycle ${i} write`);
      await fs.promises.writeFile(tmp, JSON.stringify(data, null, 2));
      await fs.promises.rename(tmp, store);
    } finally {
      at(`cycle ${i} release`);
      await release();
    }
  }
  return { writer: a.id, done: a.cycles };
});
