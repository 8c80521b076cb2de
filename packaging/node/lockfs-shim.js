'use strict';
// lockfs preload shim: makes unmodified Node code take lockfs leases on the files under
// LOCKFS_ROOT through the `lockfs serve` daemon at LOCKFS_ENDPOINT.
//
// Loaded with NODE_OPTIONS=--require <this file> (what `lockfs run` sets up). It patches
// the `fs` and `fs/promises` module objects before user code runs, then syncs the ESM
// named exports, so `import { readFile } from 'node:fs/promises'` is patched as well.
//
// A cycle is: a read of a managed file (read lease, released after the read; the daemon
// keeps it a short linger), then a save by the same process (writeFile onto the file, or
// rename of a temp file onto it) which commits that cycle. A second read of the same file
// by this process while its cycle is open waits behind it. Appends share the file with
// other appends and wait for cycles. The socket lives on a worker thread, so synchronous
// calls (readFileSync, renameSync, ...) can wait for the daemon with Atomics.wait.

const SHIM_FLAG = Symbol.for('lockfs.shim.loaded');
const threads = require('worker_threads');

if (threads.workerData && threads.workerData.lockfsShimTransport) return;
if (globalThis[SHIM_FLAG]) return;
globalThis[SHIM_FLAG] = true;

const ENDPOINT = process.env.LOCKFS_ENDPOINT;
const ROOT_ENV = process.env.LOCKFS_ROOT;
if (!ENDPOINT || !ROOT_ENV) return;

const fs = require('fs');
const pathModule = require('path');
const { fileURLToPath } = require('url');

const ROOT = (() => {
  try {
    return fs.realpathSync(ROOT_ENV);
  } catch {
    return pathModule.resolve(ROOT_ENV);
  }
})();
const PROTOCOL_VERSION = 1;
const SYNC_TIMEOUT_MS = 24 * 3600 * 1000;
const REPLY_BYTES = 64 * 1024;

const orig = {};
for (const name of ['readFile', 'readFileSync', 'writeFile', 'writeFileSync', 'appendFile',
  'appendFileSync', 'rename', 'renameSync', 'open', 'openSync', 'close', 'closeSync']) {
  orig[name] = fs[name];
}
const promises = fs.promises;
const origP = {};
for (const name of ['readFile', 'writeFile', 'appendFile', 'rename', 'open']) {
  origP[name] = promises[name];
}

// ---- transport: a worker thread owns the socket --------------------------------------

const TRANSPORT_SOURCE = `
const { parentPort, workerData } = require('worker_threads');
const net = require('net');
const control = new Int32Array(workerData.shared, 0, 2);
const bytes = new Uint8Array(workerData.shared, 8);
const syncIds = new Set();
const inFlight = new Set();
let socket = null;
let ready = false;
let dead = false;
const queued = [];
let rest = '';

function answer(reply) {
  inFlight.delete(reply.id);
  if (syncIds.has(reply.id)) {
    syncIds.delete(reply.id);
    const encoded = Buffer.from(JSON.stringify(reply));
    bytes.set(encoded.subarray(0, bytes.length));
    Atomics.store(control, 1, Math.min(encoded.length, bytes.length));
    Atomics.store(control, 0, 1);
    Atomics.notify(control, 0);
  } else {
    parentPort.postMessage(reply);
  }
}

function fail(message) {
  if (dead) return;
  dead = true;
  ready = false;
  parentPort.postMessage({ transportDown: message });
  for (const item of queued.splice(0)) inFlight.add(item.id);
  for (const id of [...inFlight]) answer({ id, ok: false, error: 'unavailable', message });
}

socket = net.connect(workerData.endpoint);
socket.setEncoding('utf8');
socket.on('connect', () => {
  socket.write(JSON.stringify({ op: 'hello', id: 0, version: ${PROTOCOL_VERSION} }) + '\\n');
});
socket.on('data', (chunk) => {
  rest += chunk;
  let newline;
  while ((newline = rest.indexOf('\\n')) >= 0) {
    const line = rest.slice(0, newline);
    rest = rest.slice(newline + 1);
    if (!line.trim()) continue;
    let message;
    try { message = JSON.parse(line); } catch { continue; }
    if (message.event) continue;
    if (message.id === 0 && !ready) {
      if (!message.ok) { fail(message.message || 'hello refused'); socket.destroy(); return; }
      ready = true;
      for (const item of queued.splice(0)) socket.write(item.line);
      continue;
    }
    answer(message);
  }
});
socket.on('error', (err) => fail(err.message));
socket.on('close', () => fail('the lockfs daemon closed the connection'));

parentPort.on('message', (item) => {
  if (item.sync) syncIds.add(item.id);
  if (dead) { answer({ id: item.id, ok: false, error: 'unavailable', message: 'no daemon' }); return; }
  inFlight.add(item.id);
  if (ready) socket.write(item.line); else queued.push(item);
});
`;

let transport = null;
let transportDown = false;
let warned = false;
let nextId = 1;
let pendingAsync = 0;
const waiting = new Map();
let shared = null;
let control = null;
let replyBytes = null;

function warnOnce(message) {
  if (warned) return;
  warned = true;
  process.stderr.write(`lockfs: ${message}; file access continues without leases\n`);
}

function startTransport() {
  if (transport || transportDown) return !transportDown;
  shared = new SharedArrayBuffer(8 + REPLY_BYTES);
  control = new Int32Array(shared, 0, 2);
  replyBytes = new Uint8Array(shared, 8);
  try {
    transport = new threads.Worker(TRANSPORT_SOURCE, {
      eval: true,
      workerData: { lockfsShimTransport: true, endpoint: ENDPOINT, shared },
      stdout: false,
      stderr: false,
    });
  } catch (err) {
    transportDown = true;
    warnOnce(`cannot start the lockfs transport (${err.message})`);
    return false;
  }
  transport.on('message', (message) => {
    if (message.transportDown) {
      transportDown = true;
      warnOnce(`no lockfs daemon at ${ENDPOINT} (${message.transportDown})`);
      return;
    }
    const settle = waiting.get(message.id);
    if (!settle) return;
    waiting.delete(message.id);
    settle(message);
  });
  transport.on('error', (err) => {
    transportDown = true;
    warnOnce(`the lockfs transport failed (${err.message})`);
  });
  // After the listeners: adding one refs the worker again.
  transport.unref();
  return true;
}

function holdOpen(delta) {
  pendingAsync += delta;
  if (!transport) return;
  if (pendingAsync > 0) transport.ref(); else transport.unref();
}

function callAsync(request) {
  if (!startTransport()) return Promise.resolve(null);
  const id = nextId++;
  request.id = id;
  holdOpen(1);
  return new Promise((resolve) => {
    waiting.set(id, (reply) => {
      holdOpen(-1);
      resolve(reply);
    });
    transport.postMessage({ id, line: JSON.stringify(request) + '\n' });
  });
}

function callSync(request) {
  if (!startTransport()) return null;
  const id = nextId++;
  request.id = id;
  Atomics.store(control, 0, 0);
  transport.postMessage({ id, sync: true, line: JSON.stringify(request) + '\n' });
  const deadline = Date.now() + SYNC_TIMEOUT_MS;
  while (Atomics.load(control, 0) === 0) {
    if (Atomics.wait(control, 0, 0, Math.max(1, deadline - Date.now())) === 'timed-out') {
      return { id, ok: false, error: 'timeout', message: 'no answer from the lockfs daemon' };
    }
  }
  const length = Atomics.load(control, 1);
  return JSON.parse(Buffer.from(replyBytes.subarray(0, length)).toString('utf8'));
}

function send(request) {
  if (!startTransport()) return;
  request.id = nextId++;
  transport.postMessage({ id: request.id, line: JSON.stringify(request) + '\n' });
}

function usable(reply) {
  if (!reply) return null;
  if (reply.ok) return reply;
  if (reply.error === 'unavailable') {
    transportDown = true;
    warnOnce(`no lockfs daemon at ${ENDPOINT} (${reply.message})`);
    return null;
  }
  return reply;
}

// ---- which paths are managed ------------------------------------------------------------

const LEFT_ALONE = [
  /\.(sqlite3?|db)(-wal|-shm|-journal)?$/,
  /-(wal|shm|journal)$/,
  /\.lock$/,
  /\.lock\//,
  /\.lockfs-\d+-\d+\.tmp$/,
];

function toPathString(target) {
  if (typeof target === 'string') return target;
  if (target instanceof URL) return target.protocol === 'file:' ? fileURLToPath(target) : null;
  if (Buffer.isBuffer(target)) return target.toString('utf8');
  return null;
}

// The path relative to the root, or null when the file is not lockfs's business.
function managed(target) {
  if (transportDown) return null;
  const text = toPathString(target);
  if (text === null) return null;
  const absolute = pathModule.resolve(text);
  if (!absolute.startsWith(ROOT + pathModule.sep)) return null;
  const relative = absolute.slice(ROOT.length + 1).split(pathModule.sep).join('/');
  if (LEFT_ALONE.some((pattern) => pattern.test(relative))) return null;
  return relative;
}

// The newest granted, uncommitted cycle of this process per file: a save commits into it.
const heldCycles = new Map();
let tempCounter = 0;

function tempFor(relative) {
  const dir = pathModule.dirname(pathModule.join(ROOT, relative));
  const base = pathModule.basename(relative);
  return pathModule.join(dir, `.${base}.lockfs-${process.pid}-${tempCounter++}.tmp`);
}

function relativeOf(absolute) {
  return absolute.slice(ROOT.length + 1).split(pathModule.sep).join('/');
}

const ERRNO = { ESTALE: -116, ETIMEDOUT: -110, ENOENT: -2, EACCES: -13, EIO: -5, EINVAL: -22 };

function failure(reply, syscall, target) {
  const code = {
    fenced: 'ESTALE',
    timeout: 'ETIMEDOUT',
    not_found: 'ENOENT',
    path_escape: 'EACCES',
    bad_request: 'EINVAL',
  }[reply.error] || 'EIO';
  const err = new Error(`${code}: lockfs ${reply.error}: ${reply.message || ''}, ${syscall} '${target}'`);
  err.code = code;
  err.errno = ERRNO[code];
  err.syscall = syscall;
  err.path = String(target);
  return err;
}

function granted(relative, reply) {
  const ok = usable(reply);
  if (!ok) return null;
  if (!ok.ok) return ok;
  heldCycles.set(relative, ok.lease);
  return ok;
}

function acquireRequest(relative, intent) {
  return { op: 'acquire', path: relative, intent };
}

function commitRequest(relative, tempAbsolute) {
  const request = { op: 'commit', path: relative };
  const lease = heldCycles.get(relative);
  if (lease !== undefined) {
    request.lease = lease;
    heldCycles.delete(relative);
  }
  if (tempAbsolute) request.temp = relativeOf(tempAbsolute);
  return request;
}

function fileExists(absolute) {
  try {
    fs.statSync(absolute);
    return true;
  } catch {
    return false;
  }
}

// A write onto a file is a save when this process has a cycle open on it or the file
// exists; a write to a new file with no cycle is a temp file (or a new file) and passes.
function isSave(relative) {
  return heldCycles.has(relative) || fileExists(pathModule.join(ROOT, relative));
}

function flagOf(options) {
  return options && typeof options === 'object' && options.flag ? String(options.flag) : 'w';
}

function tempOptions(options) {
  if (options && typeof options === 'object') return { ...options, flag: 'w' };
  return options;
}

// ---- reads --------------------------------------------------------------------------------

async function readFileAsync(target, options) {
  const relative = managed(target);
  if (!relative) return origP.readFile(target, options);
  const reply = granted(relative, await callAsync(acquireRequest(relative, 'read')));
  if (reply && !reply.ok) throw failure(reply, 'open', target);
  try {
    return await origP.readFile(target, options);
  } finally {
    if (reply) send({ op: 'release', lease: reply.lease });
  }
}

function readFileSync(target, options) {
  const relative = managed(target);
  if (!relative) return orig.readFileSync(target, options);
  const reply = granted(relative, callSync(acquireRequest(relative, 'read')));
  if (reply && !reply.ok) throw failure(reply, 'open', target);
  try {
    return orig.readFileSync(target, options);
  } finally {
    if (reply) send({ op: 'release', lease: reply.lease });
  }
}

// ---- saves --------------------------------------------------------------------------------

async function writeFileAsync(target, data, options) {
  const relative = managed(target);
  if (!relative) return origP.writeFile(target, data, options);
  if (flagOf(options).startsWith('a')) return appendFileAsync(target, data, options);
  if (!isSave(relative)) return origP.writeFile(target, data, options);
  const temp = tempFor(relative);
  await origP.writeFile(temp, data, tempOptions(options));
  const reply = usable(await callAsync(commitRequest(relative, temp)));
  if (!reply) return fs.promises.rename(temp, pathModule.join(ROOT, relative));
  if (!reply.ok) throw failure(reply, 'open', target);
}

function writeFileSync(target, data, options) {
  const relative = managed(target);
  if (!relative) return orig.writeFileSync(target, data, options);
  if (flagOf(options).startsWith('a')) return appendFileSync(target, data, options);
  if (!isSave(relative)) return orig.writeFileSync(target, data, options);
  const temp = tempFor(relative);
  orig.writeFileSync(temp, data, tempOptions(options));
  const reply = usable(callSync(commitRequest(relative, temp)));
  if (!reply) return orig.renameSync(temp, pathModule.join(ROOT, relative));
  if (!reply.ok) throw failure(reply, 'open', target);
}

async function appendFileAsync(target, data, options) {
  const relative = managed(target);
  if (!relative) return origP.appendFile(target, data, options);
  const reply = usable(await callAsync(acquireRequest(relative, 'append')));
  if (reply && !reply.ok) throw failure(reply, 'open', target);
  try {
    await origP.appendFile(target, data, options);
  } catch (err) {
    if (reply) send({ op: 'release', lease: reply.lease });
    throw err;
  }
  if (reply) send({ op: 'commit', path: relative, lease: reply.lease });
}

function appendFileSync(target, data, options) {
  const relative = managed(target);
  if (!relative) return orig.appendFileSync(target, data, options);
  const reply = usable(callSync(acquireRequest(relative, 'append')));
  if (reply && !reply.ok) throw failure(reply, 'open', target);
  try {
    orig.appendFileSync(target, data, options);
  } catch (err) {
    if (reply) send({ op: 'release', lease: reply.lease });
    throw err;
  }
  if (reply) send({ op: 'commit', path: relative, lease: reply.lease });
}

// A rename of a file inside the root onto a managed file is the save of a cycle; the
// daemon does the rename itself, so a fenced save never lands.
function renameTargets(from, to) {
  const relative = managed(to);
  if (!relative) return null;
  const fromText = toPathString(from);
  if (fromText === null) return null;
  const fromAbsolute = pathModule.resolve(fromText);
  if (!fromAbsolute.startsWith(ROOT + pathModule.sep)) return null;
  return { relative, fromAbsolute };
}

async function renameAsync(from, to) {
  const targets = renameTargets(from, to);
  if (!targets) return origP.rename(from, to);
  const reply = usable(await callAsync(commitRequest(targets.relative, targets.fromAbsolute)));
  if (!reply) return origP.rename(from, to);
  if (!reply.ok) throw failure(reply, 'rename', from);
}

function renameSync(from, to) {
  const targets = renameTargets(from, to);
  if (!targets) return orig.renameSync(from, to);
  const reply = usable(callSync(commitRequest(targets.relative, targets.fromAbsolute)));
  if (!reply) return orig.renameSync(from, to);
  if (!reply.ok) throw failure(reply, 'rename', from);
}

// ---- descriptors ------------------------------------------------------------------------

// fd -> { relative, lease, kind: 'read' | 'write' | 'append' }
const openCycles = new Map();

function kindOfFlags(flags) {
  if (flags === undefined || flags === null) return 'read';
  if (typeof flags === 'number') {
    const access = flags & 3;
    if (flags & fs.constants.O_APPEND) return 'append';
    return access === fs.constants.O_RDONLY ? 'read' : 'write';
  }
  const text = String(flags);
  if (text.startsWith('a')) return 'append';
  if (text.startsWith('r') && !text.includes('+')) return 'read';
  return 'write';
}

function openPlan(target, flags) {
  const relative = managed(target);
  if (!relative) return null;
  const kind = kindOfFlags(flags);
  if (kind === 'write' && !isSave(relative)) return null;
  return { relative, kind };
}

function leaseFor(plan, reply) {
  if (plan.kind === 'read') return granted(plan.relative, reply);
  return usable(reply);
}

function endOpenCycle(cycle) {
  if (!cycle || !cycle.reply) return;
  if (cycle.kind === 'read') {
    send({ op: 'release', lease: cycle.reply.lease });
  } else {
    if (heldCycles.get(cycle.relative) === cycle.reply.lease) heldCycles.delete(cycle.relative);
    send({ op: 'commit', path: cycle.relative, lease: cycle.reply.lease });
  }
}

function intentOf(kind) {
  return kind === 'append' ? 'append' : kind === 'write' ? 'write' : 'read';
}

function openSync(target, flags, mode) {
  const plan = openPlan(target, flags);
  if (!plan) return orig.openSync(target, flags, mode);
  const reply = plan.kind === 'write' && heldCycles.has(plan.relative)
    ? { ok: true, lease: heldCycles.get(plan.relative) }
    : leaseFor(plan, callSync(acquireRequest(plan.relative, intentOf(plan.kind))));
  if (reply && !reply.ok) throw failure(reply, 'open', target);
  const fd = orig.openSync(target, flags, mode);
  openCycles.set(fd, { ...plan, reply });
  return fd;
}

function open(target, flags, mode, callback) {
  if (typeof flags === 'function') { callback = flags; flags = 'r'; mode = undefined; }
  if (typeof mode === 'function') { callback = mode; mode = undefined; }
  const plan = openPlan(target, flags);
  if (!plan) return orig.open(target, flags, mode, callback);
  const leased = plan.kind === 'write' && heldCycles.has(plan.relative)
    ? Promise.resolve({ ok: true, lease: heldCycles.get(plan.relative) })
    : callAsync(acquireRequest(plan.relative, intentOf(plan.kind))).then((r) => leaseFor(plan, r));
  leased.then((reply) => {
    if (reply && !reply.ok) return callback(failure(reply, 'open', target));
    orig.open(target, flags, mode, (err, fd) => {
      if (err) {
        endOpenCycle({ ...plan, reply, kind: 'read' });
        return callback(err);
      }
      openCycles.set(fd, { ...plan, reply });
      callback(null, fd);
    });
  }, callback);
}

function closeSync(fd) {
  const cycle = openCycles.get(fd);
  openCycles.delete(fd);
  try {
    return orig.closeSync(fd);
  } finally {
    endOpenCycle(cycle);
  }
}

function close(fd, callback) {
  const cycle = openCycles.get(fd);
  openCycles.delete(fd);
  return orig.close(fd, (err) => {
    endOpenCycle(cycle);
    if (callback) callback(err);
  });
}

async function openAsync(target, flags, mode) {
  const plan = openPlan(target, flags);
  if (!plan) return origP.open(target, flags, mode);
  const reply = plan.kind === 'write' && heldCycles.has(plan.relative)
    ? { ok: true, lease: heldCycles.get(plan.relative) }
    : leaseFor(plan, await callAsync(acquireRequest(plan.relative, intentOf(plan.kind))));
  if (reply && !reply.ok) throw failure(reply, 'open', target);
  let handle;
  try {
    handle = await origP.open(target, flags, mode);
  } catch (err) {
    endOpenCycle({ ...plan, reply, kind: 'read' });
    throw err;
  }
  const closeHandle = handle.close.bind(handle);
  let ended = false;
  handle.close = async () => {
    try {
      return await closeHandle();
    } finally {
      if (!ended) {
        ended = true;
        endOpenCycle({ ...plan, reply });
      }
    }
  };
  return handle;
}

// ---- install ----------------------------------------------------------------------------

function callbackForm(asyncImpl, arity) {
  return function lockfsWrapped(...args) {
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : null;
    while (args.length < arity) args.push(undefined);
    const done = asyncImpl(...args.slice(0, arity));
    if (!callback) return done.catch(() => {});
    done.then((value) => callback(null, value), (err) => callback(err));
    return undefined;
  };
}

fs.readFile = callbackForm(readFileAsync, 2);
fs.readFileSync = readFileSync;
fs.writeFile = callbackForm(async (t, d, o) => { await writeFileAsync(t, d, o); }, 3);
fs.writeFileSync = writeFileSync;
fs.appendFile = callbackForm(async (t, d, o) => { await appendFileAsync(t, d, o); }, 3);
fs.appendFileSync = appendFileSync;
fs.rename = callbackForm(async (f, t) => { await renameAsync(f, t); }, 2);
fs.renameSync = renameSync;
fs.open = open;
fs.openSync = openSync;
fs.close = close;
fs.closeSync = closeSync;
promises.readFile = readFileAsync;
promises.writeFile = async (t, d, o) => { await writeFileAsync(t, d, o); };
promises.appendFile = async (t, d, o) => { await appendFileAsync(t, d, o); };
promises.rename = async (f, t) => { await renameAsync(f, t); };
promises.open = openAsync;

try {
  require('module').syncBuiltinESMExports();
} catch {
  // Older Node without it: ESM named imports keep the unpatched functions.
}
