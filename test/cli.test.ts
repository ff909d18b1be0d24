import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';

const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

test('pqcache info names the backends', () => {
  const out = execFileSync(process.execPath, [cli, 'info'], { encoding: 'utf8' });
  assert.match(out, /backends: cpu/);
  assert.match(out, /cuda: (available|unavailable)/);
});

test('pqcache verify --backend cpu exits 0 and reports the counts', () => {
  const r = run('verify', '--backend', 'cpu', '--cases', '40', '--seed', '5');
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^40 passed, 0 failed$/m);
});

test('pqcache bench --backend cpu writes a record with wall_us.median', () => {
  const file = join(mkdtempSync(join(tmpdir(), 'pqcache-')), 'out.json');
  const r = run('bench', '--backend', 'cpu', '--config', 'seed', '--json', file, '--iters', '5', '--warmup', '1');
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const rec = JSON.parse(readFileSync(file, 'utf8'));
  assert.equal(rec.kind, 'select');
  assert.equal(rec.rows[0].impl, 'pqcache-cpu');
  assert.equal(rec.rows[0].config.sk, 32000);
  assert.ok(rec.rows[0].wall_us.median > 0);
  assert.equal(rec.rows[0].matches_oracle, true);
});

test('bad arguments are reported with the argument name', () => {
  const r = run('verify', '--cases', 'many');
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /cases must be an integer/);
});

test('pqcache quality --quick runs on the CPU, prints the baselines and writes a record', () => {
  const file = join(mkdtempSync(join(tmpdir(), 'pqcache-')), 'quality.json');
  const r = run('quality', '--quick', '--backend', 'cpu', '--json', file);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  for (const impl of ['exact-topk', 'sink-window', 'random-k', 'pqcache-cpu']) assert.match(r.stdout, new RegExp(impl));
  const rec = JSON.parse(readFileSync(file, 'utf8'));
  assert.equal(rec.kind, 'quality');
  assert.ok(rec.rows.every((row: { extra: { recall: number } }) => row.extra.recall >= 0 && row.extra.recall <= 1));
});

test('pqcache demo on the CPU decodes, checks quality and writes the report', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pqcache-report-'));
  const r = run('demo', '--backend', 'cpu', '--steps', '6', '--seq-len', '1024', '--heads', '4', '--kv-heads', '2', '--quality-every', '3', '--report', dir);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /recall@128 vs exact top-128\s+0\.\d+/);
  assert.match(r.stdout, /speed-up over dense\s+[\d.]+×/);
  const html = readFileSync(join(dir, 'index.html'), 'utf8');
  assert.match(html, /<img src="recall.svg"/);
  assert.match(readFileSync(join(dir, 'recall.svg'), 'utf8'), /^<svg/);
});
