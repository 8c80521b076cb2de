#!/usr/bin/env node
'use strict';
// S14: npm `write-json-file` 7, unmodified: read and parse the JSON store, add a key,
// `await writeJsonFile(store, data)` (which reads the file again for its trailing
// newline, then saves through write-file-atomic: temp, fsync, rename).
// Needs NODE_PATH="$(scripts/npm-deps.sh)".
const { fs } = require('./lib');
const { importPackage, realLoop, realMain } = require('./real_lib');

const usage = `usage: real_write_json_file.js DIR STORE ID CYCLES
Adds keys ID-0 .. ID-(CYCLES-1) to the JSON object in DIR/STORE.`;

realMain('real_write_json_file', usage, {}, async (a) => {
  const { writeJsonFile } = await importPackage('write-json-file');
  await realLoop(`real_write_json_file ${a.id}`, a, async (i, key) => {
    const text = await fs.promises.readFile(a.path, 'utf8');
    const data = JSON.parse(text);
    data[key] = i;
    await writeJsonFile(a.path, data);
  });
});
