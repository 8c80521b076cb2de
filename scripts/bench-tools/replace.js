#!/usr/bin/env node
'use strict';
// S13 benchmark writer: for SECONDS, replace DIR/STORE with a fresh complete JSON version
// via temp + rename (no read), as scripts/writers/node_replace.js does for a count.
//
//   node replace.js DIR STORE SECONDS [--pad N]
//
// Prints {"replaces", "seconds", "per_second", "max_us"} (max_us: slowest replace).
const path = require('path');
const { fs, parseArgs, tmpName, run } = require('../writers/lib');

const usage = `usage: replace.js DIR STORE SECONDS [--pad N]`;
const a = parseArgs(['dir', 'store', 'seconds'], { pad: 4096 }, usage);
const store = path.join(a.dir, a.store);
const pad = 'y'.repeat(a.pad);

run('bench replace', async () => {
  const limit = BigInt(Math.round(Number(a.seconds) * 1e9));
  const start = process.hrtime.bigint();
  let n = 0;
  let maxUs = 0;
  while (process.hrtime.bigint() - start < limit) {
    const c0 = process.hrtime.bigint();
    const tmp = tmpName(store, 'target');
    await fs.promises.writeFile(tmp, JSON.stringify({ version: n, pad }));
    await fs.promises.rename(tmp, store);
    maxUs = Math.max(maxUs, Number(process.hrtime.bigint() - c0) / 1000);
    n++;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { replaces: n, seconds, per_second: n / seconds, max_us: maxUs };
});
