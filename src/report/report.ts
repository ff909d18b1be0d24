/**
 * The demo's report: report/index.html with SVG charts — latency against context length (from the
 * attend record in bench/results/) and recall against pqBits (from the quality record, or the
 * demo's own quick quality run) — and the demo's own measurements.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchRecord, RecordKind } from '../bench/record.js';
import { type LatencyPoint, type RecallPoint, latencySpec, recallSpec, renderSvg } from './charts.js';

/** bench/results of this package (dist/src/report → ../../../bench/results). */
export function resultsDir(): string {
  return fileURLToPath(new URL('../../../bench/results/', import.meta.url));
}

/** The record of a kind for this device if there is one, else the newest of that kind. */
export function loadRecord(kind: RecordKind, device?: string, dir = resultsDir()): { record: BenchRecord; file: string } | undefined {
  if (!existsSync(dir)) return undefined;
  const found = readdirSync(dir)
    .filter((f) => f.startsWith(`${kind}-`) && f.endsWith('.json'))
    .map((f) => ({ file: join(dir, f), record: JSON.parse(readFileSync(join(dir, f), 'utf8')) as BenchRecord }))
    .sort((a, b) => b.record.date.localeCompare(a.record.date));
  return found.find((r) => r.record.device === device) ?? found[0];
}

const SERIES: Readonly<Record<string, string>> = {
  'pqcache-cuda-sparse-step': 'pqcache: append + select + sparse attention',
  'pqcache-cuda-dense-step': 'pqcache: dense attention',
  'torch-sdpa-graph': 'PyTorch SDPA (CUDA graph)',
  'torch-sdpa-eager': 'PyTorch SDPA (eager)',
};

export function latencyPoints(record: BenchRecord): LatencyPoint[] {
  return record.rows
    .filter((r) => SERIES[r.impl] !== undefined && r.gpu_us !== undefined)
    .map((r) => ({ series: SERIES[r.impl], contextLength: Number(r.config.sk), batch: Number(r.config.B), microseconds: r.gpu_us?.median ?? NaN }));
}

/** Recall rows of a quality record (or run) at one K and sk: PQ per M, and the flat baselines. */
export function recallPoints(rows: ReadonlyArray<{ impl: string; sk: number; K: number; pqBits?: number; M?: number; recall: number }>, K: number, sk: number): RecallPoint[] {
  const at = rows.filter((r) => r.K === K && r.sk === sk);
  const bits = [...new Set(at.filter((r) => r.pqBits !== undefined).map((r) => r.pqBits as number))].sort((a, b) => a - b);
  const points: RecallPoint[] = at.filter((r) => r.pqBits !== undefined).map((r) => ({ series: `PQ, M = ${r.M}`, pqBits: r.pqBits as number, recall: r.recall }));
  const names: Readonly<Record<string, string>> = { 'exact-topk': 'exact top-K (upper bound)', 'random-k': 'random K', 'sink-window': 'sink + window only' };
  for (const r of at.filter((x) => names[x.impl] !== undefined)) for (const b of bits) points.push({ series: names[r.impl], pqBits: b, recall: r.recall });
  return points;
}

/** The quality rows of a quality record, in the shape recallPoints takes. */
export function qualityRowsOf(record: BenchRecord): Array<{ impl: string; sk: number; K: number; pqBits?: number; M?: number; recall: number }> {
  return record.rows.map((r) => ({
    impl: r.impl,
    sk: Number(r.config.sk),
    K: Number(r.config.K),
    pqBits: r.config.pqBits === undefined ? undefined : Number(r.config.pqBits),
    M: r.config.M === undefined ? undefined : Number(r.config.M),
    recall: Number((r.extra as { recall: number }).recall),
  }));
}

export interface ReportInput {
  readonly title: string;
  /** Key facts of the run, shown as a table (label → value). */
  readonly summary: ReadonlyArray<readonly [string, string]>;
  readonly latency?: { readonly points: readonly LatencyPoint[]; readonly source: string };
  readonly recall?: { readonly points: readonly RecallPoint[]; readonly source: string; readonly K: number; readonly sk: number };
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Write dir/index.html and its SVG charts; returns the files written. */
export async function writeReport(dir: string, input: ReportInput): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const files: string[] = [];
  const figures: string[] = [];
  if (input.latency && input.latency.points.length > 0) {
    writeFileSync(join(dir, 'latency.svg'), await renderSvg(latencySpec(input.latency.points, 'Decode step vs dense attention (bf16, H=32, Hkv=8, D=128)')));
    files.push(join(dir, 'latency.svg'));
    figures.push(`<figure><img src="latency.svg" alt="latency against context length"><figcaption>GPU time per decode step, one layer. Source: <code>${escapeHtml(input.latency.source)}</code></figcaption></figure>`);
  }
  if (input.recall && input.recall.points.length > 0) {
    writeFileSync(join(dir, 'recall.svg'), await renderSvg(recallSpec(input.recall.points, `Recall@${input.recall.K} at sk = ${input.recall.sk}`)));
    files.push(join(dir, 'recall.svg'));
    figures.push(`<figure><img src="recall.svg" alt="recall against pqBits"><figcaption>Share of the exact top-${input.recall.K} (by ⟨q, k⟩) that the selection keeps, synthetic LLM-like keys with planted heavy hitters. Source: <code>${escapeHtml(input.recall.source)}</code></figcaption></figure>`);
  }
  const rows = input.summary.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('\n');
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${escapeHtml(input.title)}</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; padding: 0 1rem; }
  h1 { font-size: 1.5rem; }
  table { border-collapse: collapse; margin: 1rem 0; }
  th, td { text-align: left; padding: 0.25rem 1rem 0.25rem 0; border-bottom: 1px solid #ddd; font-variant-numeric: tabular-nums; }
  th { font-weight: 600; }
  figure { margin: 2rem 0; }
  figure img { max-width: 100%; }
  figcaption { font-size: 0.9rem; color: #555; }
</style>
</head>
<body>
<h1>${escapeHtml(input.title)}</h1>
<table>
${rows}
</table>
${figures.join('\n')}
</body>
</html>
`;
  writeFileSync(join(dir, 'index.html'), html);
  files.unshift(join(dir, 'index.html'));
  return files;
}
