/** `pqcache bench`: latency tables and result records (SPEC §5). */
import { CudaContext } from '../cuda/context.js';
import { Stream } from '../cuda/stream.js';
import { type BenchRecord, type RecordRow, cpuDeviceName, defaultRecordPath, newRecord, writeRecord } from '../bench/record.js';
import { benchRuntime, measureCopyBandwidth } from '../bench/runtime-bench.js';
import { SEED_BENCH, type SelectBenchConfig, benchSelectCpu, benchSelectCuda } from '../bench/select-bench.js';
import { SEED_BUILD, benchBuildCuda } from '../bench/build-bench.js';
import type { BuildTuning } from '../pq/cuda-build.js';
import type { StepKernelChoice } from '../pq/cuda-plan.js';
import { attendMatrix, benchAttendCuda, benchStepCuda, stepMatrix } from '../bench/attend-bench.js';
import { decideBackend } from '../pq/backend.js';
import { ConfigError } from '../errors.js';
import { table } from './format.js';

export interface BenchCliOptions {
  readonly backend: 'cpu' | 'cuda';
  readonly kind: 'select' | 'runtime' | 'build' | 'attend' | 'step';
  readonly config: 'seed' | 'matrix';
  /** With config 'seed' (select): that config with another batch size and/or key count. */
  readonly batch?: number;
  readonly sk?: number;
  readonly json?: string;
  readonly iters: number;
  readonly warmup: number;
  readonly sliceLen?: number;
  readonly cluster?: number;
  readonly stepKernel?: StepKernelChoice;
  readonly phases?: boolean;
  readonly dumpDir?: string;
  readonly layers?: number;
  readonly command: string;
}

/** Timed builds per key source and config (each a whole build: 2–12 ms from device keys, 0.08–0.33 s from host keys). */
const BUILD_REPS = 15;

/** The issue-4 matrix: the seed config, then sk ∈ {8192, 32768, 131072, 524288} × B ∈ {1, 8}. */
export function selectMatrix(): SelectBenchConfig[] {
  const out: SelectBenchConfig[] = [SEED_BENCH];
  for (const B of [1, 8]) for (const sk of [8192, 32768, 131072, 524288]) out.push({ ...SEED_BENCH, B, sk });
  return out;
}

function printSelect(rows: readonly RecordRow[]): void {
  console.log(
    table(
      ['impl', 'B', 'sk', 'wall med', 'p90', 'p99', 'gpu med', 'gpu idle-q', 'enqueue', 'GB/s', 'of copy', 'host-in wall', 'kcache-key wall', 'oracle'],
      rows.map((r) => {
        const e = (r.extra ?? {}) as Record<string, number | undefined>;
        const idle = (r.extra ?? {}).gpu_idle_queue_us as { median?: number } | undefined;
        const fromCache = (r.extra ?? {}).kcache_key_wall_us as { median?: number } | undefined;
        return [
          r.impl, String(r.config.B), String(r.config.sk), r.wall_us?.median ?? NaN, r.wall_us?.p90 ?? NaN, r.wall_us?.p99 ?? NaN,
          r.gpu_us?.median ?? NaN, idle?.median ?? NaN, e.host_enqueue_us_median ?? NaN, e.effective_GBs ?? NaN, e.fraction_of_copy_bandwidth ?? NaN, e.host_inputs_wall_us_median ?? NaN,
          fromCache?.median ?? NaN, r.matches_oracle === undefined ? '-' : r.matches_oracle ? 'yes' : 'NO',
        ];
      }),
    ),
  );
  console.log('(times in μs; wall = call → result ready on the host clock; gpu = CUDA events with the stream kept busy ahead, the device alone');
  console.log(' (resident rows: the kernel\'s global timer; chained rows: chains of 32 steps rung at once, host clock ÷ 32: the extra\'s gpu_method);');
  console.log(' gpu idle-q = the same events on an idle stream, host enqueue included; enqueue = step() call → return;');
  console.log(' kcache-key wall = graph steps whose key is a new slice of a K cache at the step\'s position each call)');
}

export function runBench(o: BenchCliOptions): number {
  if ((o.batch !== undefined || o.sk !== undefined) && (o.kind !== 'select' || o.config !== 'seed')) {
    throw new ConfigError('--batch / --sk', 'with --kind select --config seed', `--kind ${o.kind} --config ${o.config}`);
  }
  const decision = decideBackend(o.backend);
  let record: BenchRecord;
  if (decision.backend === 'cpu') {
    if (o.kind !== 'select') throw new Error(`bench --kind ${o.kind} needs --backend cuda`);
    record = newRecord('select', cpuDeviceName(), 'n/a', o.command);
    const configs = o.config === 'seed' ? [SEED_BENCH] : selectMatrix().slice(0, 2);
    for (const c of configs) record.rows.push(benchSelectCpu(c, { iters: o.iters, warmup: o.warmup, seed: 1 }));
    printSelect(record.rows);
  } else {
    const dev = CudaContext.primary().device;
    record = newRecord(o.kind, dev.name, dev.driverVersion, o.command);
    if (o.kind === 'build') {
      const configs = o.config === 'seed' ? [SEED_BUILD] : [SEED_BUILD, { ...SEED_BUILD, sk: 131072 }];
      for (const c of configs) record.rows.push(...benchBuildCuda(c, BUILD_REPS, buildTuningFromEnv()));
      console.log(table(['impl', 'sk', 'wall med μs', 'gpu med μs', 'quantization error'], record.rows.map((r) => [r.impl, String(r.config.sk), r.wall_us?.median ?? NaN, r.gpu_us?.median ?? NaN, Number((r.extra as { quantization_error: number }).quantization_error).toExponential(4)])));
    } else if (o.kind === 'attend' || o.kind === 'step') {
      const stream = new Stream();
      const copyGBs = measureCopyBandwidth(stream, 1 << 30);
      stream.dispose();
      const all = o.kind === 'attend' ? attendMatrix() : stepMatrix(o.layers ?? 32);
      const configs = o.config === 'seed' ? all.slice(0, 1) : all;
      for (const c of configs) {
        const rows = o.kind === 'attend' ? benchAttendCuda(c, { iters: o.iters, warmup: o.warmup, seed: 1 }, copyGBs) : benchStepCuda(c, { iters: o.iters, warmup: o.warmup, seed: 1 });
        record.rows.push(...rows);
        console.error(`bench: B=${c.B} sk=${c.sk} layers=${c.layers}: ${rows.map((r) => `${r.impl} ${r.wall_us?.median} μs`).join(', ')}`);
      }
      console.log(
        table(
          ['impl', 'B', 'sk', 'layers', 'wall med', 'p99', 'gpu med', 'select', 'attend', 'speed-up', 'of copy', 'oracle'],
          record.rows.map((r) => {
            const e = (r.extra ?? {}) as Record<string, number | undefined>;
            return [
              r.impl, String(r.config.B), String(r.config.sk), String(r.config.layers), r.wall_us?.median ?? NaN, r.wall_us?.p99 ?? NaN, r.gpu_us?.median ?? NaN,
              e.select_step_only_gpu_us ?? NaN, e.sparse_attend_only_gpu_us ?? NaN, e.speedup_vs_dense_gpu ?? NaN, e.fraction_of_copy_bandwidth ?? NaN, r.matches_oracle === undefined ? '-' : r.matches_oracle ? 'yes' : 'NO',
            ];
          }),
        ),
      );
      console.log('(times in μs; select / attend: the PQ step and the sparse attention alone, GPU; speed-up = dense GPU time / sparse GPU time;');
      console.log(' of copy = dense K/V read rate / device copy bandwidth)');
    } else if (o.kind === 'runtime') {
      record.rows.push(...benchRuntime({ iters: o.iters, bandwidthBytes: 1 << 30 }));
      console.log(table(['what', 'wall med', 'p90', 'p99', 'gpu med', 'extra'], record.rows.map((r) => [String(r.config.what), r.wall_us?.median ?? NaN, r.wall_us?.p90 ?? NaN, r.wall_us?.p99 ?? NaN, r.gpu_us?.median ?? NaN, JSON.stringify(r.extra ?? {})])));
    } else {
      const stream = new Stream();
      const copyGBs = measureCopyBandwidth(stream, 1 << 30);
      stream.dispose();
      const reshaped: SelectBenchConfig = { ...SEED_BENCH, ...(o.batch !== undefined ? { B: o.batch } : {}), ...(o.sk !== undefined ? { sk: o.sk } : {}) };
      const configs = o.config === 'seed' ? [reshaped] : selectMatrix();
      for (const c of configs) {
        const r = benchSelectCuda(c, { iters: o.iters, warmup: o.warmup, seed: 1, sliceLen: o.sliceLen, cluster: o.cluster, stepKernel: o.stepKernel, phases: o.phases, dumpDir: o.dumpDir }, copyGBs);
        record.rows.push(...r.rows);
        console.error(`bench: B=${c.B} sk=${c.sk}: wall ${r.rows[0].wall_us?.median} μs, gpu ${r.rows[0].gpu_us?.median} μs (${r.plan.numSlices} slices of ${r.plan.sliceLen})`);
        for (const row of r.rows) {
          // Graph and resident rows (the resident one adds the protocol's stamps).
          const phases = (row.extra as { phases_us?: Record<string, Record<string, number>> } | undefined)?.phases_us;
          if (!phases) continue;
          const names = [...new Set(Object.values(phases).flatMap((p) => Object.keys(p)))];
          console.log(`phases of ${row.impl} (μs from block start, median), B=${c.B} sk=${c.sk}:`);
          console.log(table(['block', ...names], Object.entries(phases).sort().map(([g, p]) => [g, ...names.map((n) => p[n] ?? NaN)])));
        }
      }
      printSelect(record.rows);
    }
  }
  const path = o.json ?? (decision.backend === 'cuda' ? defaultRecordPath(record.kind, record.device) : undefined);
  if (path) {
    writeRecord(path, record);
    console.log(`wrote ${path}`);
  }
  return record.rows.every((r) => r.matches_oracle !== false) ? 0 : 1;
}

/**
 * A/B overrides of the build's choices: PQCACHE_BUILD_BLOCKS=2|3|4 (round-kernel blocks per SM),
 * PQCACHE_BUILD_RECOMPUTE=n (leading rounds whose sums are formed from their codes, n ≥ 1),
 * PQCACHE_BUILD_SUM_CHUNK=n (points a first-sums block takes, ≤ 8192), PQCACHE_BUILD_ROUND=mma|wgmma
 * (the round kernel's family; wgmma where it does not apply throws ConfigError).
 */
export function buildTuningFromEnv(): BuildTuning {
  const blocks = Number(process.env.PQCACHE_BUILD_BLOCKS);
  const recompute = process.env.PQCACHE_BUILD_RECOMPUTE;
  const chunk = process.env.PQCACHE_BUILD_SUM_CHUNK;
  const family = process.env.PQCACHE_BUILD_ROUND;
  if (family !== undefined && family !== '' && family !== 'mma' && family !== 'wgmma') throw new ConfigError('PQCACHE_BUILD_ROUND', "'mma' or 'wgmma'", family);
  return {
    ...(family === 'mma' || family === 'wgmma' ? { roundFamily: family } : {}),
    ...(chunk !== undefined && chunk !== '' ? { firstSumsChunk: Number(chunk) } : {}),
    ...(blocks === 2 || blocks === 3 || blocks === 4 ? { blocksPerSM: blocks } : {}),
    ...(recompute !== undefined && recompute !== '' ? { recomputeRounds: Number(recompute) } : {}),
  };
}
