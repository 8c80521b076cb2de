'use strict';
// Shared helpers for the race writers. The load-modify-save code itself lives in each
// writer and is written the way ordinary programs write it: no locks, no retries.
// A writer that hits an error prints it (with its errno code) and exits non-zero, so
// ESTALE, ETIMEDOUT and the like from lockfs are always visible.

const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

// parseArgs(['dir', 'store', 'id', 'cycles'], {tmp: 'target'}) reads positional args in
// order and `--name value` options; numbers stay strings unless the default is a number.
function parseArgs(positional, defaults, usage) {
  const argv = process.argv.slice(2);
  const out = Object.assign({}, defaults);
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      console.log(usage);
      process.exit(0);
    }
    if (a.startsWith('--')) {
      const key = a.slice(2).replace(/-/g, '_');
      if (!(key in defaults)) fail(`unknown option ${a}\n${usage}`);
      if (i + 1 >= argv.length) fail(`option ${a} needs a value\n${usage}`);
      const v = argv[++i];
      out[key] = typeof defaults[key] === 'number' ? Number(v) : v;
    } else {
      pos.push(a);
    }
  }
  if (pos.length < positional.length) fail(usage);
  positional.forEach((name, i) => {
    out[name] = pos[i];
  });
  for (const n of ['cycles', 'k', 'rounds', 'count']) {
    if (n in out && typeof out[n] === 'string') out[n] = Number(out[n]);
  }
  return out;
}

function fail(message) {
  process.stderr.write(`${path.basename(process.argv[1])}: ${message}\n`);
  process.exit(2);
}

// Temp file name styles seen in the wild (see FACTS.md).
function tmpName(store, style) {
  const dir = path.dirname(store);
  switch (style) {
    case 'target': // <target>.<pid>.<hex>.tmp
      return `${store}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
    case 'uuid': // <target>.<uuid>.tmp
      return `${store}.${crypto.randomUUID()}.tmp`;
    case 'fs-safe': // .fs-safe-replace.<pid>.<uuid>.tmp: no target name in it
      return path.join(dir, `.fs-safe-replace.${process.pid}.${crypto.randomUUID()}.tmp`);
    case 'fixed': // <target>.tmp
      return `${store}.tmp`;
    default:
      fail(`unknown temp style ${style} (target, uuid, fs-safe, fixed)`);
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Runs `body`; on any error prints who failed and where, and exits 1.
function run(label, body) {
  let progress = 'start';
  const setProgress = (p) => {
    progress = p;
  };
  body(setProgress).then(
    (summary) => {
      if (summary !== undefined) process.stdout.write(JSON.stringify(summary) + '\n');
    },
    (err) => {
      const code = err && err.code ? ` [${err.code}]` : '';
      process.stderr.write(
        `${label} (pid ${process.pid}) failed at ${progress}${code}: ${err && err.stack ? err.stack : err}\n`,
      );
      process.exit(1);
    },
  );
}

// Parses store text as JSON; throws a clear error for empty or torn content.
function parseStore(text, store) {
  if (text.length === 0) {
    const e = new Error(`read an empty ${store}`);
    e.code = 'EMPTYREAD';
    throw e;
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    const e = new Error(`read unparsable ${store} (${text.length} bytes): ${err.message}`);
    e.code = 'TORNREAD';
    throw e;
  }
}

// If LOCKFS_COMMIT_LOG names a file, appends `key` to it as one line, after the commit
// that added the key returned (the soak test counts these as committed updates). Unset:
// does nothing, so the writers behave as before.
function logCommit(key) {
  const log = process.env.LOCKFS_COMMIT_LOG;
  if (log) fs.appendFileSync(log, `${key}\n`);
}

module.exports = { fs, path, crypto, parseArgs, tmpName, sleep, run, parseStore, fail, logCommit };
