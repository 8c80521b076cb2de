#!/usr/bin/env node
'use strict';
// S3 compactor: readFile the JSONL, rewrite it via temp + rename keeping every line
// (a real compactor would drop or merge some; this one keeps all so survivors can be
// counted). Runs ROUNDS times, or with --stop-file until that file exists.
const { fs, path, parseArgs, tmpName, sleep, run } = require('./lib');

const usage = `usage: node_compact.js DIR STORE ROUNDS [--stop-file PATH] [--pause-ms N] [--tmp STYLE]
Rewrites DIR/STORE via temp + rename ROUNDS times (or until --stop-file exists).`;
const a = parseArgs(['dir', 'store', 'rounds'], { stop_file: '', pause_ms: 1, tmp: 'target' }, usage);
const store = path.join(a.dir, a.store);

function stopRequested() {
  return a.stop_file !== '' && fs.existsSync(a.stop_file);
}

run('node_compact', async (at) => {
  let rounds = 0;
  while (a.stop_file !== '' ? !stopRequested() || rounds === 0 : rounds < a.rounds) {
    at(`round ${rounds} read`);
    const text = await fs.promises.readFile(store, 'utf8');
    const lines = text.split('\n').filter((l) => l.length > 0);
    const tmp = tmpName(store, a.tmp);
    at(`round ${rounds} write`);
    await fs.promises.writeFile(tmp, lines.length ? lines.join('\n') + '\n' : '');
    at(`round ${rounds} rename`);
    await fs.promises.rename(tmp, store);
    rounds++;
    if (a.pause_ms > 0) await sleep(a.pause_ms);
  }
  return { writer: 'compactor', done: rounds };
});
