#!/usr/bin/env node
'use strict';
// S6/S10/S13 reader: reads DIR/STORE in a tight loop and parses every read. Counts
// ENOENT, empty reads and unparsable (partial) reads; exits 1 if it saw any.
// Stops after --reads N, after --seconds S, or when --stop-file exists.
const { fs, path, parseArgs, run } = require('./lib');

const usage = `usage: node_reader.js DIR STORE [--format json|jsonl|lines] [--reads N] [--seconds S] [--stop-file PATH]
Reads DIR/STORE in a loop; prints {"reads":..,"enoent":..,"empty":..,"partial":..}.`;
const a = parseArgs(
  ['dir', 'store'],
  { format: 'json', reads: 0, seconds: 0, stop_file: '', id: 'reader' },
  usage,
);
const store = path.join(a.dir, a.store);

function complete(text) {
  if (a.format === 'json') {
    try {
      JSON.parse(text);
      return true;
    } catch {
      return false;
    }
  }
  if (!text.endsWith('\n')) return false;
  if (a.format === 'lines') return true;
  return text
    .split('\n')
    .filter((l) => l.length > 0)
    .every((l) => {
      try {
        JSON.parse(l);
        return true;
      } catch {
        return false;
      }
    });
}

run(`node_reader ${a.id}`, async (at) => {
  const c = { reader: a.id, reads: 0, enoent: 0, empty: 0, partial: 0, other: 0 };
  const start = Date.now();
  let firstProblem = null;
  const done = () =>
    (a.reads > 0 && c.reads >= a.reads) ||
    (a.seconds > 0 && Date.now() - start >= a.seconds * 1000) ||
    (a.stop_file !== '' && c.reads % 16 === 0 && fs.existsSync(a.stop_file));
  while (!done()) {
    at(`read ${c.reads}`);
    c.reads++;
    let text;
    try {
      text = await fs.promises.readFile(store, 'utf8');
    } catch (err) {
      if (err.code === 'ENOENT') c.enoent++;
      else c.other++;
      firstProblem = firstProblem || `${err.code || 'error'}: ${err.message}`;
      if (err.code !== 'ENOENT') throw err;
      continue;
    }
    if (text.length === 0) {
      c.empty++;
      firstProblem = firstProblem || 'empty read';
    } else if (!complete(text)) {
      c.partial++;
      firstProblem = firstProblem || `partial read of ${text.length} bytes`;
    }
  }
  c.seconds = (Date.now() - start) / 1000;
  if (c.enoent + c.empty + c.partial + c.other > 0) {
    process.stdout.write(JSON.stringify(c) + '\n');
    const e = new Error(
      `${c.enoent} ENOENT, ${c.empty} empty, ${c.partial} partial in ${c.reads} reads; first: ${firstProblem}`,
    );
    e.code = 'BADREADS';
    throw e;
  }
  return c;
});
