import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import { latencySpec, recallSpec, renderSvg } from '../src/report/charts.js';
import { latencyPoints, loadRecord, recallPoints, writeReport } from '../src/report/report.js';

/** Text of every <text> element of an SVG document. */
function texts(svg: string): string[] {
  return [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);
}

const record = {
  kind: 'attend', device: 'Test GPU', driver: '1', commit: 'abc', date: '2026-01-01T00:00:00Z', command: 'x',
  rows: [32768, 131072].flatMap((sk) => [
    { impl: 'pqcache-cuda-sparse-step', config: { B: 1, sk }, gpu_us: { median: 50 + sk / 10000 } },
    { impl: 'pqcache-cuda-dense-step', config: { B: 1, sk }, gpu_us: { median: sk / 100 } },
    { impl: 'torch-sdpa-graph', config: { B: 1, sk }, gpu_us: { median: sk / 200 } },
  ]),
};

test('the latency chart renders axes, a log scale and one line per implementation', async () => {
  const points = latencyPoints(record as never);
  assert.equal(points.length, 6);
  const svg = await renderSvg(latencySpec(points, 'latency'));
  assert.match(svg, /^<svg[^>]*viewBox/);
  const t = texts(svg);
  assert.ok(t.includes('context length (tokens)'), 'x axis title');
  assert.ok(t.includes('GPU time per decode step (μs)'), 'y axis title');
  for (const s of ['pqcache: append + select + sparse attention', 'pqcache: dense attention', 'PyTorch SDPA (CUDA graph)']) assert.ok(t.includes(s), `legend ${s}`);
  assert.ok(t.includes('32,768') && t.includes('131,072'), 'x ticks at the measured context lengths');
  // One line mark per implementation (vega draws each series as its own path group).
  assert.equal((svg.match(/class="mark-line role-mark[^"]*"/g) ?? []).length, 3, 'line marks');
  assert.equal((svg.match(/class="mark-symbol role-mark[^"]*"/g) ?? []).length, 1, 'point layer');
});

test('the recall chart has a line per PQ setting and per baseline', async () => {
  const rows = [4, 6].flatMap((b) => [1, 2].map((M) => ({ impl: 'pqcache-cuda', sk: 8192, K: 128, pqBits: b, M, recall: 0.3 * M + 0.05 * b })));
  rows.push({ impl: 'exact-topk', sk: 8192, K: 128, recall: 1 } as never, { impl: 'random-k', sk: 8192, K: 128, recall: 0.01 } as never);
  const points = recallPoints(rows, 128, 8192);
  assert.equal(points.length, 4 + 2 * 2);
  const svg = await renderSvg(recallSpec(points, 'recall'));
  const t = texts(svg);
  for (const s of ['PQ, M = 1', 'PQ, M = 2', 'exact top-K (upper bound)', 'random K', 'recall@K vs exact top-K']) assert.ok(t.includes(s), s);
});

test('writeReport writes index.html that embeds its charts; loadRecord prefers the device', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pqcache-report-'));
  const files = await writeReport(dir, {
    title: 'T <&>',
    summary: [['a', 'b']],
    latency: { points: latencyPoints(record as never), source: 'x.json' },
  });
  assert.deepEqual(files.map((f) => f.split('/').pop()), ['index.html', 'latency.svg']);
  const html = readFileSync(join(dir, 'index.html'), 'utf8');
  assert.match(html, /<title>T &lt;&amp;&gt;<\/title>/);
  assert.match(html, /<img src="latency.svg"/);
  const results = join(dir, 'results');
  mkdirSync(results);
  writeFileSync(join(results, 'attend-a.json'), JSON.stringify({ ...record, device: 'A', date: '2026-02-01T00:00:00Z' }));
  writeFileSync(join(results, 'attend-b.json'), JSON.stringify({ ...record, device: 'B', date: '2026-01-01T00:00:00Z' }));
  assert.equal(loadRecord('attend', 'B', results)?.record.device, 'B');
  assert.equal(loadRecord('attend', 'C', results)?.record.device, 'A', 'newest when the device has none');
  assert.equal(loadRecord('quality', 'B', results), undefined);
});
