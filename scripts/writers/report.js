#!/usr/bin/env node
'use strict';
// race.sh's bookkeeping: turns one scenario's logs into a result row, and prints rows
// as a table or as JSON.
//   report.js add RESULTS.jsonl --scenario S --writers N --logs DIR --seconds S
//             [--count COUNT_JSON] [--note TEXT]...
//   report.js print RESULTS.jsonl table|json [--dir DIR] [--quick 0|1]
// In DIR each process left ROLE.out (stdout), ROLE.err (stderr) and ROLE.rc (exit code).
// Rows of writers that keep going after a failed update (the real-program rows) also get
// "acknowledged" and "ack_lost" (from COUNT_JSON, see count.js --acked), "refused" (sum
// of the writers' refused updates) and "max_cycle_ms" (the longest single cycle of any
// writer), taken from the writers' summary lines.
const fs = require('fs');
const path = require('path');

function opts(argv) {
  const o = { note: [] };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '');
    if (k === 'note') o.note.push(argv[i + 1]);
    else o[k] = argv[i + 1];
  }
  return o;
}

function add(file, o) {
  const count = o.count ? JSON.parse(o.count) : { expected: 0, present: 0, lost: 0, torn: 0 };
  let errors = 0;
  let tornReads = 0;
  let refused;
  let maxCycleMs;
  const notes = [...o.note];
  const roles = fs
    .readdirSync(o.logs)
    .filter((f) => f.endsWith('.rc'))
    .map((f) => f.slice(0, -3))
    .sort();
  for (const role of roles) {
    const rc = fs.readFileSync(path.join(o.logs, `${role}.rc`), 'utf8').trim();
    const out = fs.existsSync(path.join(o.logs, `${role}.out`))
      ? fs.readFileSync(path.join(o.logs, `${role}.out`), 'utf8')
      : '';
    for (const line of out.split('\n')) {
      try {
        const s = JSON.parse(line);
        if (typeof s.torn === 'number') tornReads += s.torn;
        if (typeof s.refused === 'number') refused = (refused || 0) + s.refused;
        if (typeof s.max_cycle_ms === 'number') maxCycleMs = Math.max(maxCycleMs || 0, s.max_cycle_ms);
      } catch {
        // not a summary line
      }
    }
    if (rc !== '0') {
      errors++;
      const err = fs.existsSync(path.join(o.logs, `${role}.err`))
        ? fs.readFileSync(path.join(o.logs, `${role}.err`), 'utf8')
        : '';
      const lines = err.split('\n').filter((l) => l.trim().length > 0);
      const first = lines.find((l) => / failed|rror|timeout/i.test(l)) || lines[0] || '';
      const why = rc === '124' || rc === '137' ? 'timed out (killed by race.sh)' : `exit ${rc}`;
      notes.push(`${role}: ${why}${first ? ': ' + first.trim().slice(0, 300) : ''}`);
    }
  }
  if (tornReads > 0) notes.push(`writers retried ${tornReads} torn or empty reads`);
  const row = {
    scenario: o.scenario,
    description: o.description || '',
    writers: Number(o.writers),
    expected: count.expected,
    present: count.present,
    lost: count.lost,
    torn: (count.torn || 0) + tornReads,
    errors,
    seconds: Number(o.seconds),
    notes,
  };
  if (typeof count.acknowledged === 'number') {
    row.acknowledged = count.acknowledged;
    row.ack_lost = count.ack_lost;
    if (count.ack_lost > 0) {
      notes.push(`${count.ack_lost} acknowledged updates lost silently, e.g. ${count.ack_lost_sample.join(' ')}`);
    }
  }
  if (refused !== undefined) {
    row.refused = refused;
    if (refused > 0) notes.push(`${refused} updates refused with an error`);
  }
  if (maxCycleMs !== undefined) {
    row.max_cycle_ms = maxCycleMs;
    notes.push(`longest cycle ${maxCycleMs} ms`);
  }
  fs.appendFileSync(file, JSON.stringify(row) + '\n');
}

function print(file, mode, o) {
  const rows = fs.existsSync(file)
    ? fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l))
    : [];
  if (mode === 'json') {
    const lost = rows.reduce((n, r) => n + r.lost, 0);
    process.stdout.write(
      JSON.stringify({ dir: o.dir, quick: o.quick === '1', lost, results: rows }, null, 2) + '\n',
    );
    return;
  }
  const head = ['scenario', 'writers', 'expected', 'acked', 'present', 'lost', 'ack-lost', 'torn', 'errors', 'secs'];
  const acked = (r, field) => (typeof r.acknowledged === 'number' ? String(r[field]) : '-');
  const body = rows.map((r) => [
    r.scenario,
    String(r.writers),
    r.expected ? String(r.expected) : '-',
    acked(r, 'acknowledged'),
    r.expected ? String(r.present) : '-',
    r.expected ? String(r.lost) : '-',
    acked(r, 'ack_lost'),
    String(r.torn),
    String(r.errors),
    r.seconds.toFixed(1),
  ]);
  const width = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const fmt = (cells) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(width[i]) : c.padStart(width[i]))).join('  ');
  const lines = [fmt(head), fmt(width.map((w) => '-'.repeat(w))), ...body.map(fmt)];
  const notes = rows.flatMap((r) => r.notes.map((n) => `  ${r.scenario}: ${n}`));
  if (notes.length) lines.push('', 'notes:', ...notes);
  process.stdout.write(lines.join('\n') + '\n');
}

const [cmd, file, ...rest] = process.argv.slice(2);
if (cmd === 'add') add(file, opts(rest));
else if (cmd === 'print') print(file, rest[0], opts(rest.slice(1)));
else {
  process.stderr.write('usage: report.js add|print RESULTS ...\n');
  process.exit(2);
}
