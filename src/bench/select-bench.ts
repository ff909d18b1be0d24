/**
 * The decode-step benchmark: append one key and select, per call, on an index of random
 * centroids and codes (select's cost does not depend on how the index was built).
 *
 * Wall-clock: host clock from the call to the result being ready (stream synchronized for CUDA,
 * arrays returned for the CPU), no events in that loop. GPU time: CUDA events around the same
 * call in a separate loop, with the stream kept busy ahead of it (busy-queue.ts) so the host's
 * enqueue stays outside; the events on an idle stream (host included) are recorded as well.
 * Inputs rotate over several query/key sets so no call hits a cache that a real decode step
 * would miss.
 */
import { randomFillSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CudaContext } from '../cuda/context.js';
import { GraphExec } from '../cuda/graph.js';
import { DeviceArena, copies } from '../cuda/memory.js';
import { residentTrace } from '../cuda/resident.js';
import { checkSelect } from '../pq/brute-force.js';
import { CpuPQCache } from '../pq/cache.js';
import { type Layout, type Metric, makeLayout } from '../pq/config.js';
import { appendCodesCpu } from '../pq/cpu-build.js';
import { deviceIndexStrides } from '../pq/cuda-build.js';
import { CudaPQCache, type CudaPQCacheOptions, STEP_PHASES } from '../pq/cuda-cache.js';
import { BUCKET_MAX_TAIL, type BucketPlan, type RowPlan, type StepKernelChoice } from '../pq/cuda-plan.js';
import { type PQIndexState, codeOffset, emptyIndexState } from '../pq/index-state.js';
import { SplitMix32 } from '../pq/rng.js';
import { encodeSafetensors } from '../pq/safetensors.js';
import { checkQuery, checkStepKey } from '../pq/validate.js';
import { type DeviceTensor, deviceTensor } from '../tensor/device-tensor.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { BUSY_QUEUE_NS, BusyQueue, eventTimes } from './busy-queue.js';
import { type RecordRow, latencyFields, latencyRow } from './record.js';
import { type LatencySummary, cpusAllowed, nowUs, round3, summarize } from './stats.js';

export interface SelectBenchConfig {
  readonly B: number;
  readonly H: number;
  readonly Hkv: number;
  readonly D: number;
  readonly sk: number;
  readonly S: number;
  readonly W: number;
  readonly K: number;
  readonly M: number;
  readonly pqBits: number;
  readonly O: number;
  readonly metric: Metric;
}

export const SEED_BENCH: SelectBenchConfig = { B: 1, H: 32, Hkv: 32, D: 128, sk: 32000, S: 128, W: 128, K: 128, M: 2, pqBits: 6, O: 128, metric: 'euclidean' };

export function benchLayout(c: SelectBenchConfig): Layout {
  return makeLayout(
    { batch: c.B, heads: c.H, kvHeads: c.Hkv, headDim: c.D },
    { sinkSize: c.S, windowSize: c.W, heavySize: c.K, pqGroupFactor: c.M, pqBits: c.pqBits, initOffset: c.O, metric: c.metric, kmeansIters: 10 },
  );
}

/** Random normal centroids and uniform codes for positions O … sk−1. */
export function randomState(layout: Layout, seqLen: number, capacity: number, seed: number): PQIndexState {
  const state = emptyIndexState(layout, capacity);
  const rng = new SplitMix32(seed);
  for (let i = 0; i < state.centroids.length; i++) state.centroids[i] = rng.normal();
  randomFillSync(state.codes);
  const mask = layout.numCentroids - 1;
  for (let i = 0; i < state.codes.length; i++) state.codes[i] &= mask;
  const { batch: B, kvHeads: Hkv } = layout.shape;
  for (let bh = 0; bh < B * Hkv; bh++) {
    // Positions at and past sk hold no codes yet; below O none are stored.
    state.codes.fill(0, codeOffset(layout, capacity, 0, bh, seqLen), codeOffset(layout, capacity, 0, bh, capacity));
    state.codes.fill(0, codeOffset(layout, capacity, 0, bh, 0), codeOffset(layout, capacity, 0, bh, layout.config.initOffset));
  }
  if (layout.config.metric === 'ip') state.phi.fill(100);
  state.seqLen = seqLen;
  return state;
}

function randomInputs(layout: Layout, sets: number, seed: number): { queries: Float32Array[]; keys: Float32Array[] } {
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  const rng = new SplitMix32(seed);
  const queries = Array.from({ length: sets }, () => new Float32Array(B * H * D).map(() => rng.normal()));
  const keys = Array.from({ length: sets }, () => new Float32Array(B * Hkv * D).map(() => rng.normal()));
  return { queries, keys };
}

export interface BenchOptions {
  readonly iters: number;
  readonly warmup: number;
  readonly seed: number;
  readonly sliceLen?: number;
  readonly cluster?: number;
  /** The pair path's step kernel (default 'auto'). */
  readonly stepKernel?: StepKernelChoice;
  /** Also run steps with in-kernel phase stamps and report where the GPU time goes (pair path). */
  readonly phases?: boolean;
  /** Write this config's inputs here (safetensors) for baselines measured on the same data. */
  readonly dumpDir?: string;
}

/** Inputs of one bench config as safetensors: the index, the rotating query/key sets, the config. */
function dumpInputs(dir: string, c: SelectBenchConfig, state: PQIndexState, queries: Float32Array[], keys: Float32Array[]): void {
  const { layout } = state;
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  const M = layout.config.pqGroupFactor;
  const cat = (xs: Float32Array[]): Float32Array => {
    const out = new Float32Array(xs.reduce((n, x) => n + x.length, 0));
    xs.reduce((at, x) => (out.set(x, at), at + x.length), 0);
    return out;
  };
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, `select-B${c.B}-sk${c.sk}.safetensors`),
    encodeSafetensors(
      [
        ['centroids', new HostTensor('f32', [B, Hkv, M, layout.numCentroids, layout.centroidDim], state.centroids)],
        ['codes', new HostTensor('u8', [B, Hkv, state.capacity, M], state.codes)],
        ['queries', new HostTensor('f32', [queries.length, B, H, D], cat(queries))],
        ['keys', new HostTensor('f32', [keys.length, B, Hkv, D], cat(keys))],
      ],
      { config: JSON.stringify(c), seqLen: String(state.seqLen) },
    ),
  );
}

export function configRecord(c: SelectBenchConfig): Record<string, number | string> {
  return { ...c };
}

const BUCKET_MERGE_REPS = 10;

/**
 * GPU μs of the bucket merges steps launch: each after BUCKET_MAX_TAIL − 1 appending steps (one
 * short of the step's own trigger), so it merges that many positions into the buckets.
 */
function bucketMergeTimes(cache: CudaPQCache, step: (i: number) => void, busy: BusyQueue): number[] {
  const out: number[] = [];
  for (let r = 0; r < BUCKET_MERGE_REPS; r++) {
    cache.rebuildBuckets();
    for (let i = 0; i < BUCKET_MAX_TAIL - 1; i++) step(i);
    cache.synchronize();
    out.push(...eventTimes(cache.stream, 1, () => cache.rebuildBuckets(), busy));
  }
  return out;
}

function wallRow(impl: string, c: SelectBenchConfig, wall: LatencySummary, extra: Record<string, unknown>, gpu?: LatencySummary, matches?: boolean): RecordRow {
  return latencyRow(impl, configRecord(c), wall, extra, gpu, matches);
}

/** CPU backend: stepToHost per call (append + select + host arrays). */
export function benchSelectCpu(c: SelectBenchConfig, o: BenchOptions): RecordRow {
  const layout = benchLayout(c);
  const capacity = c.sk + o.warmup + o.iters + 8;
  const state = randomState(layout, c.sk - 1, capacity, o.seed);
  const check: PQIndexState = { ...state, codes: state.codes.slice() };
  const cache = CpuPQCache.fromState(state);
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  const { queries, keys } = randomInputs(layout, 4, o.seed + 1);
  const q = queries.map((x) => new HostTensor('f32', [B, H, 1, D], x));
  const k = keys.map((x) => new HostTensor('f32', [B, Hkv, 1, D], x));
  // Correctness on the first step, against the float64 brute force.
  const first = cache.stepToHost(q[0], k[0]);
  appendCodesCpu(check, keys[0], 1);
  const errors = checkSelect(check, queries[0], {
    sparseList: first.sparseList.data as Int32Array,
    sparseLen: first.sparseLen.data as Int32Array,
    weights: first.weights.data as Float32Array,
    weightsDType: 'f32',
  }, 'tolerant');
  for (let i = 0; i < o.warmup; i++) cache.stepToHost(q[i % 4], k[i % 4]);
  const wall: number[] = [];
  for (let i = 0; i < o.iters; i++) {
    const t0 = nowUs();
    cache.stepToHost(q[i % 4], k[i % 4]);
    wall.push(nowUs() - t0);
  }
  const selectOnly: number[] = [];
  for (let i = 0; i < Math.min(o.iters, 30); i++) {
    const t0 = nowUs();
    cache.selectToHost(q[i % 4]);
    selectOnly.push(nowUs() - t0);
  }
  cache.dispose();
  return wallRow('pqcache-cpu', c, summarize(wall), { select_only_wall_us_median: round3(summarize(selectOnly).median), mismatches: errors.slice(0, 3) }, undefined, errors.length === 0);
}

type BenchPlan = CudaBenchResult['plan'];

/** The step kernel a plan runs, for the record. */
function describePlan(plan: BenchPlan): string {
  if (plan.bucket) return `row, buckets (${plan.bucket.wordsPerThread} bitmap words/thread${plan.bucket.wide ? ', wide weights' : ''})`;
  return plan.row ? `row ×${plan.numSlices} (${plan.row.positionsPerThread} positions/thread)` : `pairs cluster ${plan.numSlices}`;
}

/**
 * Selects that bring the step's host path to V8's optimized code without appending (select runs all
 * of it but the key's checks): a decode loop calls step() once per layer and token, so its host code
 * runs optimized, and the timed loops must not time the interpreter (bench/NOTES.md, session 37). sk
 * stays put, so the timed loops keep their plan.
 */
const HOST_WARMUP_SELECTS = 2000;
function warmHostPath(cache: CudaPQCache, queries: readonly DeviceTensor[]): void {
  for (let i = 0; i < HOST_WARMUP_SELECTS; i++) {
    cache.select(queries[i % queries.length] as DeviceTensor);
    cache.synchronize();
  }
}

export interface CudaBenchResult {
  readonly rows: RecordRow[];
  readonly plan: { numSlices: number; sliceLen: number; row?: Pick<RowPlan, 'positionsPerThread'>; bucket?: Pick<BucketPlan, 'wordsPerThread' | 'wide'> };
}

/**
 * CUDA backend: step(query, key) on device inputs + synchronize, per call; then the same with
 * host inputs (pinned staging copied inside the graph). `copyGBs`: the device's measured copy
 * bandwidth (bytes read + written per second), for the bandwidth ratio.
 */
export function benchSelectCuda(c: SelectBenchConfig, o: BenchOptions, copyGBs: number): CudaBenchResult {
  const layout = benchLayout(c);
  const sets = 8;
  const hostInputCalls = Math.min(o.iters, 100);
  // Every call appends one key: the first checked step, warm-up, six timed loops (two of them with
  // the key from a K cache), two host-input loops, and in bucket mode the steps between the timed
  // bucket merges.
  const capacity = c.sk + 1 + o.warmup + 6 * o.iters + 2 * hostInputCalls + BUCKET_MERGE_REPS * BUCKET_MAX_TAIL + 64;
  const state = randomState(layout, c.sk - 1, capacity, o.seed);
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, sliceLen: o.sliceLen, cluster: o.cluster, stepKernel: o.stepKernel });
  const inputs = randomInputs(layout, sets, o.seed + 1);
  if (o.dumpDir) dumpInputs(o.dumpDir, c, state, inputs.queries, inputs.keys);
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  const qBytes = B * H * D * 4;
  const kBytes = B * Hkv * D * 4;
  const arena = DeviceArena.allocate({ q: qBytes * sets, k: kBytes * sets });
  const busy = new BusyQueue();
  try {
    cache.uploadState(state);
    for (let i = 0; i < sets; i++) {
      copies.fromHost(arena.slices.q, inputs.queries[i], i * qBytes);
      copies.fromHost(arena.slices.k, inputs.keys[i], i * kBytes);
    }
    const qDev = Array.from({ length: sets }, (_, i) => deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr + BigInt(i * qBytes)));
    const kDev = Array.from({ length: sets }, (_, i) => deviceTensor('f32', [B, Hkv, 1, D], arena.slices.k.ptr + BigInt(i * kBytes)));
    const errors = checkFirstStep(cache, state, inputs);
    for (let i = 0; i < o.warmup; i++) {
      cache.step(qDev[i % sets], kDev[i % sets]);
      cache.synchronize();
    }
    warmHostPath(cache, qDev);
    // The plan of the timed loops (sk grows by one per call, so a long run can end on another one).
    const plan = cache.planFor(cache.seqLen + 1);
    const wall: number[] = [];
    for (let i = 0; i < o.iters; i++) {
      const t0 = nowUs();
      cache.step(qDev[i % sets], kDev[i % sets]);
      cache.synchronize();
      wall.push(nowUs() - t0);
    }
    const step = (i: number): void => void cache.step(qDev[i % sets], kDev[i % sets]);
    const gpu = eventTimes(cache.stream, o.iters, step, busy);
    // The same events on an idle stream: the first completes at once, so the host's enqueue is in.
    const gpuIdle = eventTimes(cache.stream, o.iters, step);
    // The host's share: step() from call to return (checks, graph lookup, cuGraphLaunch), no wait.
    const enqueue: number[] = [];
    for (let i = 0; i < o.iters; i++) {
      const t0 = nowUs();
      cache.step(qDev[i % sets], kDev[i % sets]);
      enqueue.push(nowUs() - t0);
      cache.synchronize();
    }
    const hostQ = inputs.queries.map((x) => new HostTensor('f32', [B, H, 1, D], x));
    const hostK = inputs.keys.map((x) => new HostTensor('f32', [B, Hkv, 1, D], x));
    const wallHost: number[] = [];
    for (let i = 0; i < hostInputCalls; i++) {
      const t0 = nowUs();
      cache.step(hostQ[i % sets], hostK[i % sets]);
      cache.synchronize();
      wallHost.push(nowUs() - t0);
    }
    // Where host inputs add time: the validation step() does (shape, dtype, every value finite),
    // timed alone, and step()'s call → return without the wait.
    const hostChecks: number[] = [];
    const hostEnqueue: number[] = [];
    for (let i = 0; i < hostInputCalls; i++) {
      const c0 = nowUs();
      checkQuery(layout, hostQ[i % sets] as HostTensor);
      checkStepKey(layout, hostK[i % sets] as HostTensor);
      hostChecks.push(nowUs() - c0);
      const t0 = nowUs();
      cache.step(hostQ[i % sets], hostK[i % sets]);
      hostEnqueue.push(nowUs() - t0);
      cache.synchronize();
    }
    const fromCache = benchKeyFromCache(cache, layout, inputs.keys, qDev, o.iters, busy);
    const backToBack = graphBackToBack(layout, state, capacity, o, qDev[0] as DeviceTensor, kDev[0] as DeviceTensor, busy);
    const resident = plan.row !== undefined ? benchResident(c, o, layout, state, capacity, inputs, qDev[0] as DeviceTensor, kDev[0] as DeviceTensor) : undefined;
    const chained = plan.row !== undefined || plan.bucket !== undefined ? benchChained(c, o, layout, state, capacity, inputs, qDev[0] as DeviceTensor, kDev[0] as DeviceTensor) : undefined;
    const g = summarize(gpu);
    const gi = summarize(gpuIdle);
    const idle = latencyFields(gi);
    const planAtEnd = cache.planFor(cache.seqLen);
    const M = c.M;
    const span = Math.max(0, cache.seqLen - c.W - Math.max(c.O, c.S));
    const bytes =
      B * Hkv * span * M + // codes
      B * Hkv * M * layout.numCentroids * deviceIndexStrides(layout, capacity).centroidStride * 4 + // centroids
      B * H * layout.listCapacity * 4 * 2 + // list read + write
      B * H * (c.S + c.K + c.W) * 4 * 2; // weights cleared + set
    const gbs = bytes / (g.median * 1e-6) / 1e9;
    const phases = o.phases ? measurePhases(layout, state, capacity, o, qDev, kDev) : undefined;
    const extra = {
      ...(phases ? { phases_us: phases } : {}),
      step_kernel: describePlan(plan),
      // Bucket mode: sorting every position again (a new index: GPU μs, median), and the merge a step
      // launches first once bucketTail positions were appended (measured after as many steps).
      ...(plan.bucket
        ? {
            bucket_rebuild_gpu_us: round3(summarize(eventTimes(cache.stream, 30, () => cache.rebuildBuckets({ full: true }), busy)).median),
            bucket_merge_gpu_us: round3(summarize(bucketMergeTimes(cache, (i) => void cache.step(qDev[i % sets], kDev[i % sets]), busy)).median),
          }
        : {}),
      ...(describePlan(planAtEnd) !== describePlan(plan) ? { step_kernel_at_end: describePlan(planAtEnd) } : {}),
      slices: plan.numSlices,
      slice_len: plan.sliceLen,
      bytes_per_call: bytes,
      effective_GBs: round3(gbs),
      copy_GBs: round3(copyGBs),
      fraction_of_copy_bandwidth: round3(gbs / copyGBs),
      host_inputs_wall_us_median: round3(summarize(wallHost).median),
      host_inputs_checks_us_median: round3(summarize(hostChecks).median),
      host_inputs_enqueue_us_median: round3(summarize(hostEnqueue).median),
      host_enqueue_us_median: round3(summarize(enqueue).median),
      ...fromCache,
      gpu_method: `CUDA events, stream kept busy ${BUSY_QUEUE_NS / 1000} μs ahead (host enqueue outside)`,
      gpu_idle_queue_us: idle,
      // Back to back (graphBackToBack): step() × 32 then one synchronize, host clock ÷ 32; and a step
      // as a node of a graph of 32 steps, events ÷ 32 (the gap to gpu_us is the graph launch of its own).
      graph_burst_us_per_step: backToBack.burst.length === 0 ? null : latencyFields(summarize(backToBack.burst)),
      in_graph_gpu_us: backToBack.inGraph.length === 0 ? null : latencyFields(summarize(backToBack.inGraph)),
      device: CudaContext.primary().device.name,
      // Host placement and the driver's wait mode both move the wall-clock (bench/NOTES.md).
      cpus_allowed: cpusAllowed(),
      host_wait: CudaContext.primary().hostWait(),
      mismatches: errors.slice(0, 3),
    };
    const rows = [wallRow('pqcache-cuda', c, summarize(wall), extra, g, errors.length === 0)];
    if (resident !== undefined) rows.push(resident);
    if (chained !== undefined) rows.push(chained);
    return { rows, plan };
  } finally {
    busy.dispose();
    arena.dispose();
    cache.dispose();
  }
}

/**
 * Graph steps whose key is a slice of a K cache at the step's position (src/pq/step-key.ts), as a
 * decode engine passes it: a new frozen view every step (made and validated inside the timed call),
 * over a cache [B, positions, Hkv, D] holding the key sets in turn. The cache covers only the
 * positions these steps append (the slice's base lies before it: the kernels add sk·row back). Wall
 * and GPU time as the main row's loops, and the graphs captured after the first round over the
 * query sets (one per set, its seq slot alternating with it): 0 when every step's slice replays them.
 */
function benchKeyFromCache(cache: CudaPQCache, layout: Layout, keys: readonly Float32Array[], qDev: readonly DeviceTensor[], iters: number,
  busy: BusyQueue): Record<string, unknown> {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const positions = 2 * iters;
  const rowBytes = Hkv * D * 4; // one position of one batch entry
  const arena = DeviceArena.allocate({ k: B * positions * rowBytes });
  try {
    const k = arena.slices.k;
    for (let b = 0; b < B; b++) {
      const at = b * positions * rowBytes;
      const first = Math.min(keys.length, positions);
      for (let p = 0; p < first; p++) copies.fromHost(k, keys[p].subarray(b * Hkv * D, (b + 1) * Hkv * D), at + p * rowBytes);
      // The rest by doubling what is filled (device to device).
      for (let filled = first; filled < positions; filled += Math.min(filled, positions - filled)) {
        const n = Math.min(filled, positions - filled);
        copies.deviceToDevice({ ptr: k.ptr + BigInt(at + filled * rowBytes), bytes: n * rowBytes }, { ptr: k.ptr + BigInt(at), bytes: n * rowBytes }, n * rowBytes);
      }
    }
    // Frozen once, so deviceTensor() takes them without a copy (as an engine making a view per step would).
    const shape = Object.freeze([B, Hkv, 1, D]);
    const strides = Object.freeze([positions * Hkv * D, D, Hkv * D, 1]);
    const p0 = cache.seqLen;
    // sk grows by one a step, so the loops may cross into new plans (two graphs each, one per seq slot).
    const plans = new Set<string>();
    const planKey = (): string => {
      const plan = cache.planFor(cache.seqLen + 1);
      return `${describePlan(plan)} to ${plan.maxSeqLen}`;
    };
    const step = (i: number): void =>
      void cache.step(qDev[i % qDev.length], deviceTensor('f32', shape, k.ptr + BigInt((cache.seqLen - p0) * rowBytes), strides));
    const wall: number[] = [];
    let captures = 0;
    for (let i = 0; i < iters; i++) {
      // The first round over the query sets captures their graphs (the keys' base is new).
      if (i === qDev.length) captures = cache.stepCaptureCount;
      if (i >= qDev.length) plans.add(planKey());
      const t0 = nowUs();
      step(i);
      cache.synchronize();
      wall.push(nowUs() - t0);
    }
    const gpu = summarize(eventTimes(cache.stream, iters, (i) => {
      plans.add(planKey()); // host side: the busy queue keeps it outside the events
      step(iters + i);
    }, busy));
    const w = summarize(wall);
    return {
      kcache_key_wall_us: latencyFields(w),
      kcache_key_gpu_us_median: round3(gpu.median),
      // 0 while one plan holds (a new plan: one graph per query set) when no step's slice needed a capture of its own.
      kcache_key_captures_after_first_round: cache.stepCaptureCount - captures,
      kcache_key_plans_after_first_round: plans.size,
    };
  } finally {
    arena.dispose();
  }
}

/**
 * The first step of a cache holding `state` (query and key set 0, host inputs) against the brute
 * force: tolerant (real-valued inputs), 8 rows — a sanity check; verify and the GPU tests cover the rest.
 */
function checkFirstStep(cache: CudaPQCache, state: PQIndexState, inputs: { queries: Float32Array[]; keys: Float32Array[] }): string[] {
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = state.layout.shape;
  const oracle: PQIndexState = { ...state, codes: state.codes.slice() };
  const first = cache.stepToHost(new HostTensor('f32', [B, H, 1, D], inputs.queries[0] as Float32Array), new HostTensor('f32', [B, Hkv, 1, D], inputs.keys[0] as Float32Array));
  appendCodesCpu(oracle, inputs.keys[0] as Float32Array, 1);
  return checkSelect(oracle, inputs.queries[0] as Float32Array, {
    sparseList: first.sparseList.data as Int32Array,
    sparseLen: first.sparseLen.data as Int32Array,
    weights: first.weights.data as Float32Array,
    weightsDType: 'f32',
  }, 'tolerant', 10, 8);
}

/**
 * Chained steps (option `chained`) on a second cache with the same index: step(query, key) +
 * synchronize per call, as the graph row, with one device query and key (the chains are captured for
 * their inputs' addresses). Warmed with 300 steps (sk stays within the plan at the seed config). No
 * events can sit between a chain's steps (event nodes cost ≈ 8.5 μs a step, bench/NOTES.md session
 * 41), so the row's GPU time is chainBurstTimes', on a third cache.
 */
function benchChained(c: SelectBenchConfig, o: BenchOptions, layout: Layout, state: PQIndexState, capacity: number,
  inputs: { queries: Float32Array[]; keys: Float32Array[] }, qDev: DeviceTensor, kDev: DeviceTensor): RecordRow {
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, sliceLen: o.sliceLen, cluster: o.cluster, stepKernel: o.stepKernel, chained: true });
  let errors: string[];
  let served: boolean;
  let stepKernel: string;
  const wall: number[] = [];
  try {
    cache.uploadState(state);
    errors = checkFirstStep(cache, state, inputs);
    for (let i = 0; i < Math.max(o.warmup, 300); i++) {
      cache.step(qDev, kDev);
      cache.synchronize();
    }
    const before = cache.chainedStepCount;
    for (let i = 0; i < o.iters; i++) {
      const t0 = nowUs();
      cache.step(qDev, kDev);
      cache.synchronize();
      wall.push(nowUs() - t0);
    }
    served = cache.chainedStepCount - before === o.iters;
    stepKernel = describePlan(cache.planFor(cache.seqLen));
  } finally {
    cache.dispose();
  }
  const burst = chainBurstTimes(layout, state, capacity, o, qDev, kDev);
  return wallRow('pqcache-cuda-chained', c, summarize(wall), {
    // Each chain's launch runs on the launcher thread: the mean shows whether any of it reached the steps.
    wall_mean_us: round3(wall.reduce((a, b) => a + b, 0) / wall.length),
    served_chained: served,
    step_kernel: stepKernel,
    gpu_method: burst.length === 0 ? 'none: no whole chain fitted in the plan (chainBurstTimes)' :
      `back to back: a chain of ${BURST_LENGTH} steps rung at once, host clock from the ring to its last step seen done ÷ ${BURST_LENGTH}, a chain a sample (${burst.length} chains); graph steps by the same method: the graph row's graph_burst_us_per_step`,
    mismatches: errors.slice(0, 3),
  }, burst.length === 0 ? undefined : summarize(burst), errors.length === 0);
}

/** Steps a burst (and a chain of the chained cache that runs them), and bursts timed (fewer where the plan ends first). */
const BURST_LENGTH = 32;
const BURSTS = 20;

/**
 * `use` on a fresh cache holding `state` (with `options`: chained, …), after two bursts' steps on
 * `query` and `key` (captures, warm-up); disposed after.
 */
function withWarmCache<T>(layout: Layout, state: PQIndexState, capacity: number, o: BenchOptions, options: Partial<CudaPQCacheOptions>,
  query: DeviceTensor, key: DeviceTensor, use: (cache: CudaPQCache) => T): T {
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, sliceLen: o.sliceLen, cluster: o.cluster, stepKernel: o.stepKernel, ...options });
  try {
    cache.uploadState(state);
    for (let i = 0; i < 2 * BURST_LENGTH; i++) {
      cache.step(query, key);
      cache.synchronize();
    }
    return use(cache);
  } finally {
    cache.dispose();
  }
}

/**
 * A step's time from steps run back to back, μs a step: BURSTS bursts of BURST_LENGTH appending
 * steps, each timed on the host clock from its start to its last step seen done and divided by its
 * length (one start and one completion seen spread over the steps: ≈ 2 μs a burst, ≤ 0.1 μs a
 * step). `burst` runs one; false (nothing run) ends the loop.
 */
function burstTimes(burst: () => boolean): number[] {
  const out: number[] = [];
  for (let i = 0; i < BURSTS; i++) {
    const t0 = nowUs();
    if (!burst()) break;
    out.push((nowUs() - t0) / BURST_LENGTH);
  }
  return out;
}

/** Chained steps back to back (the chained row's GPU time): each burst one chain of BURST_LENGTH rung at once (ringChainedBurst). */
function chainBurstTimes(layout: Layout, state: PQIndexState, capacity: number, o: BenchOptions, query: DeviceTensor, key: DeviceTensor): number[] {
  return withWarmCache(layout, state, capacity, o, { chained: { length: BURST_LENGTH } }, query, key, (cache) => burstTimes(() => cache.ringChainedBurst()));
}

/**
 * Graph steps back to back (the graph row): `burst`, BURST_LENGTH step() calls and one synchronize,
 * timed as chainBurstTimes times chains; `inGraph`, CUDA events (stream kept busy ahead) around a graph
 * of BURST_LENGTH appending steps captured together (prepareStep/recordStep, as a decode stack
 * captures its layers' steps), ÷ BURST_LENGTH: a step as a node of a larger graph, with no graph
 * launch of its own; one sample a replay. The captured steps advance sk on the device only (the
 * host's stops at the capture's end: the cache is disposed after), so `inGraph` is empty where the
 * replays would run past the plan or the capacity, or in bucket mode (rebuilds are the host's).
 */
function graphBackToBack(layout: Layout, state: PQIndexState, capacity: number, o: BenchOptions, query: DeviceTensor, key: DeviceTensor,
  busy: BusyQueue): { burst: number[]; inGraph: number[] } {
  const burst = withWarmCache(layout, state, capacity, o, {}, query, key, (cache) => burstTimes(() => {
    for (let i = 0; i < BURST_LENGTH; i++) cache.step(query, key);
    cache.synchronize();
    return true;
  }));
  const inGraph = withWarmCache(layout, state, capacity, o, {}, query, key, (cache) => {
    const plan = cache.planFor(cache.seqLen + 1);
    if (plan.bucket !== undefined || cache.seqLen + BURST_LENGTH * (BURSTS + 2) > Math.min(plan.maxSeqLen, cache.capacity)) return [];
    const q = cache.contiguousStepQuery(query.ptr, 'f32');
    const k = cache.contiguousStepKey(key.ptr, 'f32');
    const graph = GraphExec.capture(cache.stream, () => {
      for (let i = 0; i < BURST_LENGTH; i++) {
        cache.prepareStep('f32', true);
        cache.recordStep(q, k);
        cache.commitStep(true);
      }
    });
    try {
      graph.launch(cache.stream); // untimed: the first replay
      cache.stream.synchronize();
      const times = eventTimes(cache.stream, BURSTS, () => graph.launch(cache.stream), busy).map((t) => t / BURST_LENGTH);
      cache.checkStatus();
      return times;
    } finally {
      graph.dispose();
    }
  });
  return { burst, inGraph };
}

/**
 * Resident steps (option `resident`) on a second cache with the same index: step(query, key) +
 * synchronize per call, as the graph row, with one device query and key (a resident launch is bound
 * to its inputs' addresses); the device time from the kernel's global timer (no launch to put events
 * around); and host inputs (8 sets, staged), as the graph row's host_inputs_wall_us_median.
 */
function benchResident(c: SelectBenchConfig, o: BenchOptions, layout: Layout, state: PQIndexState, capacity: number,
  inputs: { queries: Float32Array[]; keys: Float32Array[] }, qDev: DeviceTensor, kDev: DeviceTensor): RecordRow {
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, sliceLen: o.sliceLen, cluster: o.cluster, stepKernel: o.stepKernel, resident: true });
  try {
    cache.uploadState(state);
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
    const hostQ = inputs.queries.map((x) => new HostTensor('f32', [B, H, 1, D], x));
    const hostK = inputs.keys.map((x) => new HostTensor('f32', [B, Hkv, 1, D], x));
    const errors = checkFirstStep(cache, state, inputs);
    const served = cache.residentActive;
    for (let i = 0; i < o.warmup; i++) {
      cache.step(qDev, kDev);
      cache.synchronize();
    }
    warmHostPath(cache, [qDev]);
    const wall: number[] = [];
    const device: number[] = [];
    for (let i = 0; i < o.iters; i++) {
      const t0 = nowUs();
      cache.step(qDev, kDev);
      cache.synchronize();
      wall.push(nowUs() - t0);
      device.push(cache.residentDeviceMicros);
    }
    // Where a step's wall-clock time goes on the host's clock (a separate loop: the trace's clock
    // reads stay out of the timed one): call → ring, ring → completion seen, completion → return.
    const split = traceResidentSteps(cache, Math.min(o.iters, 200), () => cache.step(qDev, kDev));
    const hostCalls = Math.min(o.iters, 100);
    const wallHost: number[] = [];
    for (let i = 0; i < hostCalls; i++) {
      const t0 = nowUs();
      cache.step(hostQ[i % hostQ.length] as HostTensor, hostK[i % hostK.length] as HostTensor);
      cache.synchronize();
      wallHost.push(nowUs() - t0);
    }
    // The same split for host inputs (the kernel reads them from pinned host memory).
    const hostSplit = traceResidentSteps(cache, hostCalls, (i) => cache.step(hostQ[i % hostQ.length] as HostTensor, hostK[i % hostK.length] as HostTensor));
    const d = summarize(device);
    const servedThroughout = served && cache.residentActive;
    cache.stopResident(); // before another cache's resident kernel: one at a time
    const phases = o.phases ? measurePhases(layout, state, capacity, o, [qDev], [kDev], true) : undefined;
    return wallRow('pqcache-cuda-resident', c, summarize(wall), {
      ...(phases ? { phases_us: phases } : {}),
      served_resident: servedThroughout,
      // step() returns with the step done (call → return, traced loop); synchronize() then only checks the (idle) stream.
      step_call_us_median: split.stepCall,
      // Medians of a separate traced loop (host clock; device: the kernel's global timer).
      host_split_us_median: { ...split.split, clock_read: split.clockRead },
      step_kernel: describePlan(cache.planFor(cache.seqLen)),
      host_inputs_wall_us_median: round3(summarize(wallHost).median),
      host_inputs_split_us_median: hostSplit.split,
      gpu_method: 'global timer in the kernel: block (0, 0) sees the ring → the last block to finish publishes done (no launch: no events around it)',
      mismatches: errors.slice(0, 3),
    }, d, errors.length === 0);
  } finally {
    cache.dispose();
  }
}

/**
 * `calls` resident steps, each `step(i)` then synchronize(), traced on the host clock: medians of
 * call → ring, ring → done seen, the step's device time, done seen → return; of step()'s own call →
 * return; and of what one clock read adds to each interval.
 */
function traceResidentSteps(cache: CudaPQCache, calls: number, step: (i: number) => void): {
  split: { call_to_ring: number; ring_to_done_seen: number; of_which_device: number; done_seen_to_return: number };
  stepCall: number;
  clockRead: number;
} {
  const beforeRing: number[] = [];
  const ringToDone: number[] = [];
  const afterDone: number[] = [];
  const device: number[] = [];
  const stepCall: number[] = [];
  const clockRead: number[] = [];
  residentTrace.enabled = true;
  try {
    for (let i = 0; i < calls; i++) {
      const t0 = performance.now();
      step(i);
      const stepped = performance.now();
      cache.synchronize();
      const t1 = performance.now();
      stepCall.push((stepped - t0) * 1000);
      beforeRing.push((residentTrace.ringMs - t0) * 1000);
      ringToDone.push((residentTrace.doneMs - residentTrace.ringMs) * 1000);
      afterDone.push((t1 - residentTrace.doneMs) * 1000);
      device.push(cache.residentDeviceMicros);
      const c0 = performance.now();
      clockRead.push((performance.now() - c0) * 1000);
    }
  } finally {
    residentTrace.enabled = false;
  }
  const med = (xs: number[]): number => round3(summarize(xs).median);
  return {
    split: { call_to_ring: med(beforeRing), ring_to_done_seen: med(ringToDone), of_which_device: med(device), done_seen_to_return: med(afterDone) },
    stepCall: med(stepCall),
    clockRead: med(clockRead),
  };
}

/**
 * Where the step kernel's time goes: median over blocks and steps of the time from the block's
 * start to each phase (μs at the device clock), separately for select blocks (by rank) and append
 * blocks. Runs on a separate cache created with phase stamps so the timed loops stay clean.
 */
function measurePhases(
  layout: Layout,
  state: PQIndexState,
  capacity: number,
  o: BenchOptions,
  qDev: readonly DeviceTensor[],
  kDev: readonly DeviceTensor[],
  resident = false,
): Record<string, Record<string, number>> {
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity, cluster: o.cluster, stepKernel: o.stepKernel, phaseTiming: true, resident });
  const mhz = CudaContext.primary().device.clockRateKHz / 1000;
  const rows = layout.shape.batch * layout.shape.heads;
  const samples = new Map<string, number[]>();
  const add = (k: string, v: number): void => {
    const xs = samples.get(k) ?? [];
    xs.push(v);
    samples.set(k, xs);
  };
  try {
    cache.uploadState({ ...state, codes: state.codes.slice() });
    for (let i = 0; i < 120; i++) {
      cache.step(qDev[i % qDev.length], kDev[i % kDev.length]);
      if (i < 20) continue;
      const { grid, cycles, resident: stamps } = cache.phaseClocks();
      // Global-timer stamps (slots 14, 15): when blocks start relative to the first, the span, and
      // which blocks end last (select blocks: rows y < B·H; append blocks after them).
      let first = cycles[14];
      let lastSelect = cycles[15];
      let lastAppend = 0n; // stays 0 without append blocks (timer values are far above)
      for (let b = 0; b < grid[0] * grid[1]; b++) {
        if (cycles[b * 16 + 14] < first) first = cycles[b * 16 + 14];
        const end = cycles[b * 16 + 15];
        if (b < rows * grid[0]) {
          if (end > lastSelect) lastSelect = end;
        } else if (end > lastAppend) {
          lastAppend = end;
        }
      }
      const last = lastSelect > lastAppend ? lastSelect : lastAppend;
      add('kernel/first start to last end', Number(last - first) / 1000);
      add('kernel/first start to last select end', Number(lastSelect - first) / 1000);
      if (lastAppend > first) add('kernel/first start to last append end', Number(lastAppend - first) / 1000);
      let lastStart = first;
      for (let b = 0; b < grid[0] * grid[1]; b++) {
        add('kernel/block start after first', Number(cycles[b * 16 + 14] - first) / 1000);
        if (b < rows * grid[0]) add('kernel/select block end after first', Number(cycles[b * 16 + 15] - first) / 1000);
        if (cycles[b * 16 + 14] > lastStart) lastStart = cycles[b * 16 + 14];
      }
      add('kernel/last start after first', Number(lastStart - first) / 1000);
      if (stamps !== undefined) {
        // Where a resident step's device time (seen → done) goes outside the blocks' spans.
        add('protocol/seen to first start', Number(first - stamps.seenNs) / 1000);
        add('protocol/seen to block 0 start', Number(cycles[14] - stamps.seenNs) / 1000);
        add('protocol/last end to done', Number(stamps.doneNs - last) / 1000);
        add('protocol/seen to done', Number(stamps.doneNs - stamps.seenNs) / 1000);
      }
      for (let y = 0; y < grid[1]; y++) {
        for (let x = 0; x < grid[0]; x++) {
          const base = (y * grid[0] + x) * 16;
          const t0 = cycles[base];
          const group = y < rows ? `select rank ${x}` : 'append';
          STEP_PHASES.forEach((name, k) => {
            const t = cycles[base + 1 + k];
            if (t !== 0n) add(`${group}/${name}`, Number(t - t0) / mhz);
          });
        }
      }
    }
  } finally {
    cache.dispose();
  }
  const out: Record<string, Record<string, number>> = {};
  for (const [key, xs] of samples) {
    const [group, phase] = key.split('/');
    (out[group] ??= {})[phase] = round3(summarize(xs).median);
  }
  return out;
}
