#!/usr/bin/env node
'use strict';
// S10/S13 replace-writer: COUNT times, write a fresh complete JSON version to a temp
// file and rename it over DIR/STORE (no read). Prints the count and the replace rate.
const { fs, path, parseArgs, tmpName, run } = require('./lib');

const usage = `usage: node_replace.js DIR STORE ID COUNT [--tmp STYLE] [--pad N]
Replaces DIR/STORE COUNT times via temp + rename.`;
const a = parseArgs(['dir', 'store', 'id', 'count'], { tmp: 'target', pad: 4096 }, usage);
const store = path.join(a.dir, a.store);
const pad = 'y'.repeat(a.pad);

run(`node_replace ${a.id}`, async (at) => {
  const start = process.hrtime.bigint();
  for (let i = 0; i < a.count; i++) {
    const tmp = tmpName(store, a.tmp);
    at(`replace ${i} write`);
    await fs.promises.writeFile(tmp, JSON.stringify({ writer: a.id, version: i, pad }));
    at(`replace ${i} rename`);
    await fs.promises.rename(tmp, store);
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { writer: a.id, done: a.count, seconds, per_second: a.count / seconds };
});
