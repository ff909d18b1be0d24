import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import { mergeIntoRecord, newRecord } from '../src/bench/record.js';
import { runFuzz } from '../src/pq/fuzz.js';

test('CPU fuzz: oracle against the brute force over every value mode, invalid inputs answered typed', () => {
  const r = runFuzz({ backend: 'cpu', cases: 1200, seed: 77 });
  assert.deepEqual(r.firstMismatches, []);
  assert.equal(r.mismatches, 0);
  assert.ok(r.cases.select >= 1200);
  for (const mode of ['integer', 'real', 'huge', 'subnormal', 'negzero', 'all-equal', 'one-eligible', 'k-over-eligible']) assert.ok((r.byMode[mode] ?? 0) > 0, mode);
  const tried = r.invalid.filter((i) => i.tries > 0);
  assert.ok(tried.length >= 9, `${tried.length} invalid kinds tried`);
  for (const i of tried) assert.ok(i.correct && i.usableAfter, `${i.input}: ${i.answered}`);
});

test('records merge: rows of other producers stay (with their commit), the producer\'s own rows are replaced', () => {
  const path = join(mkdtempSync(join(tmpdir(), 'pqcache-')), 'r.json');
  const a = newRecord('reliability', 'GPU', '1', 'pqcache fuzz');
  a.rows.push({ impl: 'fuzz-cuda', config: { cases: 1 } });
  mergeIntoRecord(path, { ...a, commit: 'c1' }, ['fuzz-cuda']);
  const b = newRecord('reliability', 'GPU', '1', 'pqcache soak');
  b.rows.push({ impl: 'soak-1-index', config: { steps: 2 } });
  mergeIntoRecord(path, { ...b, commit: 'c2' }, ['soak-']);
  const c = newRecord('reliability', 'GPU', '1', 'pqcache fuzz');
  c.rows.push({ impl: 'fuzz-cuda', config: { cases: 3 } });
  const merged = mergeIntoRecord(path, { ...c, commit: 'c3' }, ['fuzz-cuda']);
  const onDisk = JSON.parse(readFileSync(path, 'utf8'));
  assert.deepEqual(onDisk, merged);
  assert.deepEqual(merged.rows.map((r) => [r.impl, r.extra?.commit]), [['soak-1-index', 'c2'], ['fuzz-cuda', 'c3']]);
  assert.equal(merged.command, 'pqcache fuzz && pqcache soak');
});
