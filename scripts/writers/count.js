#!/usr/bin/env node
'use strict';
// Counts the survivors in a store. SPEC names the expected keys: "w0:50,w1:50" means
// w0-0 .. w0-49 and w1-0 .. w1-49. FORMAT: json (keys of an object), jsonl (the "id" of
// each line), lines (each line is a key), keyv (a keyv-file store: {"cache": [[key,
// value], ...]} with keys "keyv:<key>"). Prints
// {"expected":..,"present":..,"lost":..,"torn":..,"duplicates":..,"missing_sample":[..]}.
// A missing store counts every key lost; an unparsable JSON store counts torn = 1.
// With --acked FILE (the writers' LOCKFS_COMMIT_LOG: one acknowledged key per line) it
// adds "acknowledged" (distinct acknowledged keys) and "ack_lost" (acknowledged keys
// missing from the store: silent losses), with a sample in "ack_lost_sample".
const fs = require('fs');

const [store, format, spec, ...rest] = process.argv.slice(2);
const ackedFile = rest[0] === '--acked' ? rest[1] : undefined;
if (
  !store ||
  !['json', 'jsonl', 'lines', 'keyv'].includes(format) ||
  spec === undefined ||
  (rest.length > 0 && ackedFile === undefined)
) {
  process.stderr.write('usage: count.js STORE json|jsonl|lines|keyv ID:N[,ID:N...] [--acked FILE]\n');
  process.exit(2);
}

const expected = [];
for (const part of spec.split(',').filter((p) => p.length > 0)) {
  const [id, n] = part.split(':');
  for (let i = 0; i < Number(n); i++) expected.push(`${id}-${i}`);
}

let text = '';
let torn = 0;
try {
  text = fs.readFileSync(store, 'utf8');
} catch (err) {
  if (err.code !== 'ENOENT') throw err;
}
const seen = new Map();
const note = (k) => seen.set(k, (seen.get(k) || 0) + 1);
if (format === 'json') {
  try {
    if (text.length > 0) Object.keys(JSON.parse(text)).forEach(note);
  } catch {
    torn = 1;
  }
} else if (format === 'keyv') {
  try {
    if (text.length > 0) {
      for (const [k] of JSON.parse(text).cache) note(String(k).replace(/^keyv:/, ''));
    }
  } catch {
    torn = 1;
  }
} else {
  for (const line of text.split('\n')) {
    if (line.length === 0) continue;
    if (format === 'lines') {
      note(line);
      continue;
    }
    try {
      const obj = JSON.parse(line);
      if (obj && typeof obj.id === 'string') note(obj.id);
      else torn++;
    } catch {
      torn++;
    }
  }
}
let present = 0;
let duplicates = 0;
const missing = [];
for (const k of expected) {
  const n = seen.get(k) || 0;
  if (n > 0) present++;
  else if (missing.length < 5) missing.push(k);
  if (n > 1) duplicates += n - 1;
}
const result = {
  expected: expected.length,
  present,
  lost: expected.length - present,
  torn,
  duplicates,
  missing_sample: missing,
};
if (ackedFile !== undefined) {
  let acked = '';
  try {
    acked = fs.readFileSync(ackedFile, 'utf8');
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  const ackedKeys = new Set(acked.split('\n').filter((l) => l.length > 0));
  const ackLost = [...ackedKeys].filter((k) => !seen.has(k));
  result.acknowledged = ackedKeys.size;
  result.ack_lost = ackLost.length;
  result.ack_lost_sample = ackLost.slice(0, 5);
}
process.stdout.write(JSON.stringify(result) + '\n');
