#!/usr/bin/env node
'use strict';
// S3 appender: appendFile one complete JSON line per call, with a unique id ID-i.
const { fs, path, parseArgs, run, logCommit } = require('./lib');

const usage = `usage: node_append.js DIR STORE ID COUNT [--pad N]
Appends COUNT JSONL lines {"id":"ID-i",...} to DIR/STORE.`;
const a = parseArgs(['dir', 'store', 'id', 'count'], { pad: 64 }, usage);
const store = path.join(a.dir, a.store);
const pad = 'x'.repeat(a.pad);

run(`node_append ${a.id}`, async (at) => {
  for (let i = 0; i < a.count; i++) {
    at(`line ${i}`);
    const line = JSON.stringify({ id: `${a.id}-${i}`, pid: process.pid, t: Date.now(), pad });
    await fs.promises.appendFile(store, line + '\n');
    logCommit(`${a.id}-${i}`);
  }
  return { writer: a.id, done: a.count };
});
