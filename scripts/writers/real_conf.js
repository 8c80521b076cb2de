#!/usr/bin/env node
'use strict';
// S14: npm `conf` 15 (the core of electron-store), unmodified. One Conf instance per
// process (cwd DIR, configName from STORE), then CYCLES `conf.set(ID-i, i)`; each set
// reads the file and saves it through `atomically` (temp + rename).
// Needs NODE_PATH="$(scripts/npm-deps.sh)".
const { path } = require('./lib');
const { importPackage, realLoop, realMain } = require('./real_lib');

const usage = `usage: real_conf.js DIR STORE ID CYCLES
Adds keys ID-0 .. ID-(CYCLES-1) to DIR/STORE (a .json name) with conf.set().`;

realMain('real_conf', usage, {}, async (a) => {
  const { default: Conf } = await importPackage('conf');
  const configName = path.basename(a.store, '.json');
  const conf = new Conf({ cwd: a.dir, configName, projectName: 'lockfs-race' });
  await realLoop(`real_conf ${a.id}`, a, async (i, key) => {
    conf.set(key, i);
  });
});
