#!/usr/bin/env node
'use strict';
// S14: npm `keyv` 5 with the `keyv-file` adapter, unmodified. keyv-file reads the whole
// file when constructed, keeps it in memory, and saves it (writeFile in place, O_TRUNC,
// no temp) writeDelay (100 ms) after a set. So that each update is a real
// read-modify-write, every update builds a new Keyv + KeyvFile (a fresh read), awaits
// `set` (which resolves when the delayed save has been written) and drops the instance.
// keyv-file swallows a failed load (logs it, starts empty): that is counted as a torn
// read, since the save that follows would drop every other key.
// Needs NODE_PATH="$(scripts/npm-deps.sh)".
const { importPackage, realLoop, realMain } = require('./real_lib');

const usage = `usage: real_keyv_file.js DIR STORE ID CYCLES
Adds keys ID-0 .. ID-(CYCLES-1) (namespace "keyv") to the keyv-file store DIR/STORE.`;

realMain('real_keyv_file', usage, {}, async (a) => {
  const keyv = await importPackage('keyv');
  const Keyv = keyv.Keyv || keyv.default.Keyv || keyv.default;
  const { KeyvFile } = await importPackage('keyv-file');
  let loadFailed = false;
  const consoleError = console.error;
  console.error = (...args) => {
    if (String(args[0]).startsWith('key:_loadDataSync')) loadFailed = true;
    consoleError(...args);
  };
  await realLoop(`real_keyv_file ${a.id}`, a, async (i, key, tornRead) => {
    loadFailed = false;
    const kv = new Keyv({ store: new KeyvFile({ filename: a.path }) });
    if (loadFailed) tornRead();
    let error;
    kv.on('error', (err) => {
      error = err;
    });
    const ok = await kv.set(key, i);
    if (error) throw error;
    if (ok !== true) throw new Error(`keyv set returned ${ok}`);
  });
});
