#!/usr/bin/env node
'use strict';
// S6: readFile -> add a key -> writeFile(store) directly (O_TRUNC, no temp file).
// Reading an empty or torn store is an error (exit 1) unless --on-torn retry, which
// re-reads after 1 ms and counts the torn reads in its summary (for native demos).
const { fs, path, parseArgs, sleep, run, parseStore } = require('./lib');

const usage = `usage: node_inplace.js DIR STORE ID CYCLES [--on-torn crash|retry]
Adds keys ID-0 .. ID-(CYCLES-1) to DIR/STORE, writing the store in place.`;
const a = parseArgs(['dir', 'store', 'id', 'cycles'], { on_torn: 'crash' }, usage);
const store = path.join(a.dir, a.store);

run(`node_inplace ${a.id}`, async (at) => {
  let torn = 0;
  for (let i = 0; i < a.cycles; i++) {
    at(`cycle ${i} read`);
    let data;
    for (;;) {
      try {
        data = parseStore(await fs.promises.readFile(store, 'utf8'), store);
        break;
      } catch (err) {
        if (a.on_torn !== 'retry' || !['EMPTYREAD', 'TORNREAD'].includes(err.code)) throw err;
        torn++;
        if (torn > 500) throw err; // a store torn for good (overlapping in-place writes)
        await sleep(1);
      }
    }
    data[`${a.id}-${i}`] = i;
    at(`cycle ${i} write`);
    await fs.promises.writeFile(store, JSON.stringify(data, null, 2));
  }
  if (torn > 0) process.stderr.write(`node_inplace ${a.id}: ${torn} torn or empty reads (retried)\n`);
  return { writer: a.id, done: a.cycles, torn };
});
