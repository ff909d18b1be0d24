/**
 * Benchmark result records (SPEC §5): bench/results/<kind>-<device-slug>.json, newest run
 * replacing the older one, with device, driver, commit, date and the reproducing command.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname } from 'node:path';
import { type LatencySummary, round3 } from './stats.js';

export type RecordKind = 'runtime' | 'select' | 'build' | 'attend' | 'step' | 'quality' | 'reliability';

export interface RecordRow {
  readonly impl: string;
  readonly config: Readonly<Record<string, number | string>>;
  readonly wall_us?: { readonly median: number; readonly p90: number; readonly p99: number };
  readonly gpu_us?: { readonly median: number; readonly p90?: number; readonly p99?: number };
  readonly matches_oracle?: boolean;
  readonly extra?: Readonly<Record<string, unknown>>;
}

export interface BenchRecord {
  readonly kind: RecordKind;
  readonly device: string;
  readonly driver: string;
  readonly commit: string;
  readonly date: string;
  readonly command: string;
  readonly rows: RecordRow[];
}

export function deviceSlug(device: string): string {
  return device.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

export function cpuDeviceName(): string {
  return `CPU ${cpus()[0]?.model.trim() ?? 'unknown'}`;
}

/** The commit the measured code came from: $PQCACHE_COMMIT (set by the device pack), else git. */
export function currentCommit(): string {
  if (process.env.PQCACHE_COMMIT) return process.env.PQCACHE_COMMIT;
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

export function newRecord(kind: RecordKind, device: string, driver: string, command: string): BenchRecord {
  return { kind, device, driver, commit: currentCommit(), date: new Date().toISOString(), command, rows: [] };
}

export function defaultRecordPath(kind: RecordKind, device: string): string {
  return `bench/results/${kind}-${deviceSlug(device)}.json`;
}

export function writeRecord(path: string, record: BenchRecord): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(record, null, 2) + '\n');
}

/** A latency summary as a record writes it: median, p90 and p99 rounded to 0.001 μs. */
export function latencyFields(s: LatencySummary): { median: number; p90: number; p99: number } {
  return { median: round3(s.median), p90: round3(s.p90), p99: round3(s.p99) };
}

/** A row of latency results: wall-clock (and GPU) median/p90/p99 in μs, rounded for the record. */
export function latencyRow(
  impl: string,
  config: Readonly<Record<string, number | string>>,
  wall: LatencySummary,
  extra: Record<string, unknown>,
  gpu?: LatencySummary,
  matches?: boolean,
): RecordRow {
  return {
    impl,
    config,
    wall_us: latencyFields(wall),
    ...(gpu ? { gpu_us: latencyFields(gpu) } : {}),
    ...(matches !== undefined ? { matches_oracle: matches } : {}),
    extra,
  };
}

/**
 * Merge rows into the record at `path` (kept rows: those of other producers), so several commands
 * (fuzz, soak, sanitizers) can fill one record; rows whose impl starts with (or, with `exact`, equals)
 * one of `replace` go.
 */
export function mergeIntoRecord(path: string, fresh: BenchRecord, replace: readonly string[], match: 'prefix' | 'exact' = 'prefix'): BenchRecord {
  let rows: RecordRow[] = [];
  let command = fresh.command;
  if (existsSync(path)) {
    const old = JSON.parse(readFileSync(path, 'utf8')) as BenchRecord;
    if (old.device === fresh.device && old.kind === fresh.kind) {
      // Kept rows remember the commit they were measured at.
      rows = old.rows.filter((r) => !replace.some((p) => (match === 'exact' ? r.impl === p : r.impl.startsWith(p)))).map((r) => ({ ...r, extra: { commit: old.commit, ...r.extra } }));
      if (rows.length > 0) command = old.command.includes(fresh.command) ? old.command : `${old.command} && ${fresh.command}`;
    }
  }
  const merged: BenchRecord = { ...fresh, command, rows: [...rows, ...fresh.rows.map((r) => ({ ...r, extra: { commit: fresh.commit, ...r.extra } }))] };
  writeRecord(path, merged);
  return merged;
}
