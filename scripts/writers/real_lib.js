'use strict';
// Helpers for the writers that drive real npm libraries (S14: conf, configstore,
// write-json-file, keyv-file). Unlike the S1-S7 writers, these keep going after a failed
// update: each update is one library call, counted as acknowledged only when that call
// returned without error (and then appended to LOCKFS_COMMIT_LOG, if set), so a store
// that lacks an acknowledged key shows a silent loss. Every failure is printed to stderr
// (with its errno code); the process exits 1 at the end if any update failed.
//
// The summary line on stdout: {"writer", "done", "acknowledged", "refused", "torn",
// "max_cycle_ms"}.

const path = require('path');
const { createRequire } = require('module');
const { pathToFileURL } = require('url');
const { parseArgs, fail, logCommit } = require('./lib');

// Imports an npm package (ESM or CommonJS) from the NODE_PATH directories. ESM `import`
// ignores NODE_PATH, so the package's entry file is resolved by hand first.
async function importPackage(name) {
  const dirs = (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
  for (const dir of dirs) {
    let resolved;
    try {
      resolved = createRequire(path.join(dir, 'noop.js')).resolve(name);
    } catch {
      continue;
    }
    return import(pathToFileURL(resolved).href);
  }
  fail(`cannot find npm package ${name} in NODE_PATH (NODE_PATH="$(scripts/npm-deps.sh)")`);
  return undefined;
}

// Runs `update(i, key)` CYCLES times (key = ID-i) and prints the summary. `update` may
// call `tornRead()` when the library silently read an empty or unparsable store.
async function realLoop(label, a, update) {
  let acknowledged = 0;
  let refused = 0;
  let torn = 0;
  let maxMs = 0;
  let done = 0;
  let started;
  const tornRead = () => {
    torn++;
  };
  const summary = () =>
    process.stdout.write(
      JSON.stringify({
        writer: a.id,
        done,
        acknowledged,
        refused,
        torn,
        max_cycle_ms: Math.round(maxMs),
      }) + '\n',
    );
  // Killed by race.sh's timeout (SIGTERM): the cycle in progress counts toward the longest
  // cycle and the summary still goes out (once the event loop gets to run).
  process.on('SIGTERM', () => {
    if (started !== undefined) maxMs = Math.max(maxMs, Number(process.hrtime.bigint() - started) / 1e6);
    summary();
    process.stderr.write(`${label} (pid ${process.pid}) killed during update ${done} (SIGTERM)\n`);
    process.exit(143);
  });
  for (let i = 0; i < a.cycles; i++) {
    const key = `${a.id}-${i}`;
    started = process.hrtime.bigint();
    done = i;
    try {
      await update(i, key, tornRead);
      acknowledged++;
      logCommit(key);
    } catch (err) {
      refused++;
      const code = err && err.code ? ` [${err.code}]` : '';
      const errno = err && typeof err.errno === 'number' ? ` errno ${err.errno}` : '';
      process.stderr.write(
        `${label} (pid ${process.pid}) update ${key} failed${code}${errno}: ${err && err.message ? err.message : err}\n`,
      );
    }
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (ms > maxMs) maxMs = ms;
  }
  started = undefined;
  done = a.cycles;
  summary();
  if (refused > 0) {
    process.stderr.write(`${label} (pid ${process.pid}) failed: ${refused} of ${a.cycles} updates refused\n`);
    process.exitCode = 1;
  }
}

// Entry point: parses DIR STORE ID CYCLES [options], then runs main(a) and reports a
// crash outside the loop (an import, a constructor) as a failure.
function realMain(name, usage, defaults, main) {
  const a = parseArgs(['dir', 'store', 'id', 'cycles'], defaults, usage);
  a.path = path.join(a.dir, a.store);
  main(a).catch((err) => {
    const code = err && err.code ? ` [${err.code}]` : '';
    process.stderr.write(`${name} ${a.id} (pid ${process.pid}) failed${code}: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  });
}

module.exports = { importPackage, realLoop, realMain };
