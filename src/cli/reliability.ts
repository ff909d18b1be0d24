/**
 * Reliability commands: `pqcache fuzz` (valid and invalid inputs against the oracles, plus the
 * fault paths on CUDA) and `pqcache soak` (long runs watching memory and latency). Both merge
 * their rows into bench/results/reliability-<device>.json.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { type BenchRecord, type RecordRow, cpuDeviceName, defaultRecordPath, mergeIntoRecord, newRecord } from '../bench/record.js';
import { runSoak } from '../bench/soak.js';
import { CudaContext } from '../cuda/context.js';
import { DeviceBuffer } from '../cuda/memory.js';
import { launchWith } from '../cuda/launch.js';
import { CompletionSignal } from '../cuda/signal.js';
import { Stream } from '../cuda/stream.js';
import { CudaError, CudaOutOfMemoryError, CudaUnavailableError } from '../errors.js';
import { createPQCache, decideBackend } from '../pq/backend.js';
import { runFuzz } from '../pq/fuzz.js';
import { loadKernels } from '../pq/kernels.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { table } from './format.js';
import { progress } from './progress.js';

const CLI = fileURLToPath(new URL('./main.js', import.meta.url));

function recordFor(backend: 'cpu' | 'cuda', command: string): BenchRecord {
  const dev = backend === 'cuda' ? CudaContext.primary().device : undefined;
  return newRecord('reliability', dev?.name ?? cpuDeviceName(), dev?.driverVersion ?? 'n/a', command);
}

function save(record: BenchRecord, json: string | undefined, replace: readonly string[]): void {
  const path = json ?? defaultRecordPath('reliability', record.device);
  mergeIntoRecord(path, record, replace);
  console.log(`wrote ${path}`);
}

export interface FuzzCliOptions {
  readonly backend: 'cpu' | 'cuda';
  readonly cases: number;
  readonly seed: number;
  readonly json?: string;
  readonly command: string;
}

export function runFuzzCli(o: FuzzCliOptions): number {
  decideBackend(o.backend);
  const bar = progress(`fuzz ${o.backend}`);
  const r = runFuzz({ backend: o.backend, cases: o.cases, seed: o.seed, onProgress: (d, t) => bar.update(d, t) });
  bar.stop();
  const total = r.cases.select + r.cases.attend + r.cases.build;
  console.log(`${total} cases (select ${r.cases.select}, decode layers ${r.cases.attend}, builds ${r.cases.build}) in ${r.seconds.toFixed(1)} s: ${r.mismatches} mismatches`);
  console.log(`by value mode: ${Object.entries(r.byMode).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  for (const m of r.firstMismatches) console.log(`MISMATCH ${m}`);
  console.log(table(['invalid input', 'expected', 'tries', 'answered', 'ok', 'usable after'], r.invalid.map((i) => [i.input, i.expected, i.tries, i.answered.slice(0, 70), i.correct ? 'yes' : 'NO', i.usableAfter ? 'yes' : 'NO'])));
  const faults = o.backend === 'cuda' ? runFaults() : [];
  if (faults.length > 0) console.log(table(['fault', 'surfaced as', 'recovered'], faults.map((f) => [String(f.config.fault), String((f.extra as { surfaced: string }).surfaced).slice(0, 90), (f.extra as { ok: boolean }).ok ? 'yes' : 'NO'])));
  const record = recordFor(o.backend, o.command);
  record.rows.push({
    impl: `fuzz-${o.backend}`,
    config: { cases: total, seed: o.seed, backend: o.backend },
    extra: { cases: r.cases, by_mode: r.byMode, mismatches: r.mismatches, first_mismatches: r.firstMismatches, seconds: r.seconds },
  });
  for (const i of r.invalid) {
    record.rows.push({ impl: `invalid-input-${o.backend}`, config: { input: i.input }, extra: { expected: i.expected, tries: i.tries, answered: i.answered, correct: i.correct, usable_after: i.usableAfter } });
  }
  record.rows.push(...faults);
  save(record, o.json, [`fuzz-${o.backend}`, `invalid-input-${o.backend}`, ...(o.backend === 'cuda' ? ['fault-'] : [])]);
  const bad = r.mismatches > 0 || r.invalid.some((i) => !i.correct || !i.usableAfter) || faults.some((f) => !(f.extra as { ok: boolean }).ok);
  return bad ? 1 : 0;
}

/**
 * The fault paths: no driver (a child process pointed at a missing libcuda), device memory
 * exhausted during a build (in process: the build fails typed, leaves no index, and works once
 * memory is back), a kernel fault (a child process: the trap surfaces at the next sync).
 */
function runFaults(): RecordRow[] {
  const rows: RecordRow[] = [];
  const row = (fault: string, surfaced: string, ok: boolean): void => {
    rows.push({ impl: `fault-${fault.split(' ')[0]}`, config: { fault }, extra: { surfaced, ok } });
  };
  // 1. No driver: auto falls back to the CPU with the reason; an explicit cuda request is an error.
  const env = { ...process.env, PQCACHE_LIBCUDA: '/nonexistent/libcuda.so.1' };
  const info = spawnSync(process.execPath, [CLI, 'info'], { encoding: 'utf8', env });
  const asked = spawnSync(process.execPath, [CLI, 'verify', '--backend', 'cuda', '--cases', '1'], { encoding: 'utf8', env });
  const fellBack = spawnSync(process.execPath, [CLI, 'verify', '--cases', '3'], { encoding: 'utf8', env });
  row(
    'driver missing (PQCACHE_LIBCUDA=/nonexistent)',
    `info: ${(info.stdout.match(/cuda: .*/) ?? ['?'])[0]}; --backend cuda: exit ${asked.status}, ${asked.stderr.trim().split('\n').pop()}`,
    info.status === 0 && /cuda: unavailable/.test(info.stdout) && asked.status === 2 && new RegExp(CudaUnavailableError.name).test(asked.stderr) && fellBack.status === 0,
  );
  // 2. Out of device memory during a build.
  const ctx = CudaContext.primary();
  const shape = { batch: 1, heads: 8, kvHeads: 8, headDim: 128 };
  const sk = 20000;
  const keys = new HostTensor('f32', [1, 8, sk, 128], Float32Array.from({ length: 8 * sk * 128 }, (_, i) => ((i * 7919) % 17) - 8));
  const cache = createPQCache({ backend: 'cuda', shape, capacity: sk });
  let hog: DeviceBuffer | undefined;
  let surfaced = 'no error';
  let ok = false;
  try {
    hog = new DeviceBuffer(Math.max(1, ctx.memInfo().free - 4 * 1024 * 1024));
    try {
      cache.build(keys);
    } catch (e) {
      surfaced = `${(e as Error).name}: ${(e as Error).message}`;
      ok = e instanceof CudaOutOfMemoryError && !cache.built;
    }
    hog.dispose();
    hog = undefined;
    cache.build(keys); // memory is back: the same cache builds
    ok = ok && cache.built && cache.seqLen === sk;
  } catch (e) {
    surfaced += ` / then ${(e as Error).name}: ${(e as Error).message}`;
    ok = false;
  } finally {
    hog?.dispose();
    cache.dispose();
  }
  row('out of memory during build', surfaced, ok);
  // 3. A kernel fault, in a child: the context is lost for that process only.
  const trap = spawnSync(process.execPath, [CLI, '_fault', 'trap'], { encoding: 'utf8' });
  row('kernel fault (trap)', trap.stdout.trim() || trap.stderr.trim().split('\n').pop() || `exit ${trap.status}`, trap.status === 0 && /^CudaError/.test(trap.stdout.trim()));
  return rows;
}

/**
 * `pqcache _fault trap|trap-signal` (hidden): launch a trapping kernel and report how the fault
 * surfaced, to cuStreamSynchronize or (trap-signal) to a CompletionSignal's wait.
 */
export function runFaultProbe(kind: string): number {
  if (kind !== 'trap' && kind !== 'trap-signal') throw new Error(`unknown fault ${kind}`);
  CudaContext.primary();
  const stream = new Stream();
  const signal = kind === 'trap-signal' ? new CompletionSignal() : undefined;
  launchWith(loadKernels('runtime').kernel('pq_trap'), { grid: [1, 1, 1], block: [1, 1, 1] }, [] as const, [], stream);
  try {
    if (signal) signal.wait(stream);
    else stream.synchronize();
    console.log('no error');
    return 1;
  } catch (e) {
    console.log(e instanceof CudaError ? `CudaError ${e.message}` : `other ${String(e)}`);
    return 0;
  }
}

export interface SoakCliOptions {
  readonly steps: number;
  readonly requestLen: number;
  readonly indexes: number;
  readonly interleavedSteps: number;
  readonly json?: string;
  readonly command: string;
}

export function runSoakCli(o: SoakCliOptions): number {
  decideBackend('cuda');
  const bar = progress('soak');
  const rows = runSoak({ ...o, onProgress: (d, t) => bar.update(d, t) });
  bar.stop();
  console.log(table(
    ['run', 'steps', 'wall p50', 'p99', 'p99 early → late windows', 'drift', 'device free MiB', 'ours MiB', 'RSS MiB', 'RSS B/step (2nd half)', 'JS heap MiB'],
    rows.map((r) => {
      type Range = { start: number; end: number };
      const e = r.extra as { p99_us: { early_windows: number; late_windows: number }; p99_drift: number; device_free_mib: Range; our_device_mib: Range; rss_mib: Range; rss_bytes_per_step_second_half: number; heap_mib: Range };
      const range = (x: Range): string => `${x.start} → ${x.end}`;
      return [r.impl, String(r.config.steps), r.wall_us?.median ?? NaN, r.wall_us?.p99 ?? NaN, `${e.p99_us.early_windows} → ${e.p99_us.late_windows}`, `${(e.p99_drift * 100).toFixed(1)}%`,
        range(e.device_free_mib), range(e.our_device_mib), range(e.rss_mib), e.rss_bytes_per_step_second_half.toFixed(2), range(e.heap_mib)];
    }),
  ));
  const record = recordFor('cuda', o.command);
  record.rows.push(...rows);
  save(record, o.json, ['soak-']);
  return 0;
}
