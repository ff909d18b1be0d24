/** `pqcache quality`: recall, softmax mass and attention error of PQ selection and three baselines. */
import { CudaContext } from '../cuda/context.js';
import { cpuDeviceName, defaultRecordPath, newRecord, writeRecord } from '../bench/record.js';
import { QUALITY_FULL, QUALITY_QUICK, type QualityRow, orderingProblems, qualityRecordRows, runQuality } from '../bench/quality-bench.js';
import { decideBackend } from '../pq/backend.js';
import { table } from './format.js';
import { progress } from './progress.js';

export interface QualityCliOptions {
  readonly backend: 'auto' | 'cpu' | 'cuda';
  readonly quick: boolean;
  readonly json?: string;
  readonly seed?: number;
  readonly command: string;
}

export function printQuality(rows: readonly QualityRow[]): void {
  const sorted = [...rows].sort((a, b) => a.sk - b.sk || a.K - b.K || (a.pqBits ?? 0) - (b.pqBits ?? 0) || (a.M ?? 0) - (b.M ?? 0));
  console.log(
    table(
      ['impl', 'sk', 'K', 'pqBits', 'M', 'recall@K', 'softmax mass', 'attend rel. err'],
      sorted.map((r) => [r.impl, String(r.sk), String(r.K), r.pqBits === undefined ? '-' : String(r.pqBits), r.M === undefined ? '-' : String(r.M), r.recall, r.softmaxMass, r.attendRelError]),
    ),
  );
}

export function runQualityCli(o: QualityCliOptions): number {
  const decision = decideBackend(o.backend);
  const base = o.quick ? QUALITY_QUICK : QUALITY_FULL;
  const grid = o.seed === undefined ? base : { ...base, seed: o.seed };
  console.error(`quality: ${decision.backend} backend (${decision.reason}); ${o.quick ? 'quick' : 'full'} grid`);
  const bar = progress('quality: indexes built');
  const rows = runQuality(grid, decision.backend, (done, total) => bar.update(done, total));
  bar.stop();
  printQuality(rows);
  const device = decision.backend === 'cuda' ? CudaContext.primary().device : undefined;
  const record = newRecord('quality', device?.name ?? cpuDeviceName(), device?.driverVersion ?? 'n/a', o.command);
  record.rows.push(...qualityRecordRows(grid, rows));
  const path = o.json ?? (decision.backend === 'cuda' && !o.quick ? defaultRecordPath('quality', record.device) : undefined);
  if (path) {
    writeRecord(path, record);
    console.log(`wrote ${path}`);
  }
  const problems = orderingProblems(rows);
  for (const p of problems) console.error(`quality: ordering: ${p}`);
  return problems.length === 0 ? 0 : 1;
}
