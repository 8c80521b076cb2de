#!/usr/bin/env node
'use strict';
// S7: load-modify-save through npm write-file-atomic (temp <target>.<uint32>, fsync,
// rename), or with --tmp custom through a hand-written atomic write whose temp name does
// not contain the target's name (.swap-<pid>-<hex>, fsync, rename).
// Needs NODE_PATH to hold write-file-atomic: NODE_PATH="$(scripts/npm-deps.sh)".
const { fs, path, crypto, parseArgs, run, parseStore } = require('./lib');

const usage = `usage: node_wfa.js DIR STORE ID CYCLES [--tmp wfa|custom]
Adds keys ID-0 .. ID-(CYCLES-1) to the JSON object in DIR/STORE.`;
const a = parseArgs(['dir', 'store', 'id', 'cycles'], { tmp: 'wfa' }, usage);
const store = path.join(a.dir, a.store);

async function customAtomicWrite(target, text) {
  const tmp = path.join(path.dirname(target), `.swap-${process.pid}-${crypto.randomBytes(6).toString('hex')}`);
  const fh = await fs.promises.open(tmp, 'wx', 0o644);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, target);
}

run(`node_wfa ${a.id}`, async (at) => {
  let write;
  if (a.tmp === 'wfa') {
    const wfa = require('write-file-atomic');
    write = (target, text) => wfa(target, text);
  } else if (a.tmp === 'custom') {
    write = customAtomicWrite;
  } else {
    throw new Error(`unknown --tmp ${a.tmp} (wfa, custom)`);
  }
  for (let i = 0; i < a.cycles; i++) {
    at(`cycle ${i} read`);
    const data = parseStore(await fs.promises.readFile(store, 'utf8'), store);
    data[`${a.id}-${i}`] = i;
    at(`cycle ${i} write`);
    await write(store, JSON.stringify(data, null, 2));
  }
  return { writer: a.id, done: a.cycles };
});
