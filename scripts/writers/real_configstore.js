#!/usr/bin/env node
'use strict';
// S14: npm `configstore` 8, unmodified. Each process constructs one Configstore at start
// (with defaults, as programs do, so the constructor reads and saves the file, creating
// its directory when missing), then CYCLES `store.set(ID-i, i)`; each set reads the file
// and saves it through `atomically` (temp + rename). STORE may name a subdirectory that
// does not exist yet (the "file absent" row).
// Needs NODE_PATH="$(scripts/npm-deps.sh)".
const { importPackage, realLoop, realMain } = require('./real_lib');

const usage = `usage: real_configstore.js DIR STORE ID CYCLES
Adds keys ID-0 .. ID-(CYCLES-1) to DIR/STORE with Configstore#set().`;

realMain('real_configstore', usage, {}, async (a) => {
  const { default: Configstore } = await importPackage('configstore');
  const store = new Configstore('lockfs-race', {}, { configPath: a.path });
  await realLoop(`real_configstore ${a.id}`, a, async (i, key) => {
    store.set(key, i);
  });
});
