import { readFileSync } from 'node:fs';

/** Latency statistics over many samples: median and tail percentiles (nearest-rank). */
export interface LatencySummary {
  readonly median: number;
  readonly p90: number;
  readonly p99: number;
  readonly min: number;
  readonly samples: number;
}

export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

export function summarize(samples: readonly number[]): LatencySummary {
  const s = [...samples].sort((a, b) => a - b);
  return { median: percentile(s, 0.5), p90: percentile(s, 0.9), p99: percentile(s, 0.99), min: s[0], samples: s.length };
}

/** Round for records: 3 significant decimals are plenty for microseconds. */
export function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Host clock in microseconds (monotonic). */
export function nowUs(): number {
  return Number(process.hrtime.bigint()) / 1000;
}

/** The CPUs this process may run on (Linux), e.g. "2-3" under `taskset -c 2,3`: host placement moves p99. */
export function cpusAllowed(): string {
  try {
    return /^Cpus_allowed_list:\s*(.*)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}
