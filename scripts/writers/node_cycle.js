#!/usr/bin/env node
'use strict';
// S1: M cycles of readFile -> JSON.parse -> add a unique key -> writeFile(tmp) -> rename.
const { fs, path, parseArgs, tmpName, sleep, run, parseStore, logCommit } = require('./lib');

const usage = `usage: node_cycle.js DIR STORE ID CYCLES [--tmp target|uuid|fs-safe|fixed] [--work-ms N]
Adds keys ID-0 .. ID-(CYCLES-1) to the JSON object in DIR/STORE.`;
const a = parseArgs(['dir', 'store', 'id', 'cycles'], { tmp: 'target', work_ms: 0 }, usage);
const store = path.join(a.dir, a.store);

run(`node_cycle ${a.id}`, async (at) => {
  for (let i = 0; i < a.cycles; i++) {
    at(`cycle ${i} read`);
    const data = parseStore(await fs.promises.readFile(store, 'utf8'), store);
    data[`${a.id}-${i}`] = i;
    if (a.work_ms > 0) await sleep(a.work_ms);
    const tmp = tmpName(store, a.tmp);
    at(`cycle ${i} write ${path.basename(tmp)}`);
    await fs.promises.writeFile(tmp, JSON.stringify(data, null, 2));
    at(`cycle ${i} rename`);
    await fs.promises.rename(tmp, store);
    logCommit(`${a.id}-${i}`);
  }
  return { writer: a.id, done: a.cycles };
});
