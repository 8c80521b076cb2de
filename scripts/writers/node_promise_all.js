#!/usr/bin/env node
'use strict';
// S2: one process runs K load-modify-save cycles at once with Promise.all, R rounds.
// Keys ID-(r*K+k) for round r and task k.
const { fs, path, parseArgs, tmpName, run, parseStore } = require('./lib');

const usage = `usage: node_promise_all.js DIR STORE ID K ROUNDS [--tmp target|uuid|fs-safe|fixed]
Adds keys ID-0 .. ID-(K*ROUNDS-1) to the JSON object in DIR/STORE.`;
const a = parseArgs(['dir', 'store', 'id', 'k', 'rounds'], { tmp: 'target' }, usage);
const store = path.join(a.dir, a.store);

async function cycle(key) {
  const data = parseStore(await fs.promises.readFile(store, 'utf8'), store);
  data[key] = true;
  const tmp = tmpName(store, a.tmp);
  await fs.promises.writeFile(tmp, JSON.stringify(data, null, 2));
  await fs.promises.rename(tmp, store);
}

run(`node_promise_all ${a.id}`, async (at) => {
  for (let r = 0; r < a.rounds; r++) {
    at(`round ${r}`);
    const tasks = [];
    for (let k = 0; k < a.k; k++) tasks.push(cycle(`${a.id}-${r * a.k + k}`));
    await Promise.all(tasks);
  }
  return { writer: a.id, done: a.k * a.rounds };
});
