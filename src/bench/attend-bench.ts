/**
 * Decode-step benchmarks of issue 6, on device-resident synthetic data (K/V caches too large to
 * make on the host are filled by a hash kernel; the index is random codes and centroids, since
 * neither the selection's nor the attention's cost depends on how the index was built):
 *   attend: one layer — the sparse step (K/V append → PQ select → sparse attention) against our
 *           dense step (K/V append → dense attention over every position) on the same K/V memory;
 *   step:   a stack of L layers per token, one graph launch, sparse against dense.
 * Inputs are device tensors (how an engine calls it) rotating over several sets. Wall-clock: host
 * clock around step() + stream sync; GPU: CUDA events around step() in a separate loop. Each
 * config checks sampled output rows against a float64 recomputation from the device's own lists,
 * weights and K/V rows before timing.
 */
import { BUSY_QUEUE_NS, BusyQueue, eventTimes } from './busy-queue.js';
import { type AttendPlan, AttendScratch, CudaAttention, KVCache, type SparseMerge } from '../attention/cuda-attention.js';
import { GraphExec } from '../cuda/graph.js';
import { CudaDecodeLayer } from '../attention/cuda-decode-layer.js';
import { kvRowsOf } from '../attention/kv-layout.js';
import type { StepInputs } from '../attention/decode-layer.js';
import { CudaDecodeStack } from '../attention/decode-stack.js';
import { CudaContext } from '../cuda/context.js';
import type { DevicePtr } from '../cuda/driver.js';
import { launchWith } from '../cuda/launch.js';
import { DeviceArena, PinnedBuffer, copies } from '../cuda/memory.js';
import type { Stream } from '../cuda/stream.js';
import type { CacheShape, Layout } from '../pq/config.js';
import { DTYPE_CODE, loadKernels } from '../pq/kernels.js';
import { contiguousRows } from '../pq/step-rows.js';
import { type DeviceTensor, deviceTensor } from '../tensor/device-tensor.js';
import { BYTES_PER_ELEMENT, type FloatDType } from '../tensor/dtype.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { type RecordRow, latencyRow } from './record.js';
import { benchLayout, randomState, type SelectBenchConfig, SEED_BENCH } from './select-bench.js';
import { type LatencySummary, nowUs, round3, summarize } from './stats.js';

export interface AttendBenchConfig extends SelectBenchConfig {
  readonly dtype: FloatDType;
  /** Layers per token (the step benchmark; 1 for attend). */
  readonly layers: number;
}

/** Issue 6: bf16, H=32, Hkv=8, D=128, the seed PQ settings; sk ∈ {32768, 131072, 524288} × B ∈ {1, 8}. */
export function attendMatrix(): AttendBenchConfig[] {
  const out: AttendBenchConfig[] = [];
  for (const B of [1, 8]) for (const sk of [32768, 131072, 524288]) out.push({ ...SEED_BENCH, H: 32, Hkv: 8, B, sk, dtype: 'bf16', layers: 1 });
  return out;
}

/** The 32-layer token: B = 1 at sk ∈ {32768, 131072} (32 layers of 131072-token bf16 K/V take 17 GB). */
export function stepMatrix(layers = 32): AttendBenchConfig[] {
  return [32768, 131072].map((sk) => ({ ...SEED_BENCH, H: 32, Hkv: 8, B: 1, sk, dtype: 'bf16' as const, layers }));
}

export interface AttendBenchOptions {
  readonly iters: number;
  readonly warmup: number;
  readonly seed: number;
}

const FILL_ARGS = ['ptr', 'i32', 'u64', 'u32', 'f32'] as const;
/** Fill n elements at ptr with seeded uniform values in [−scale, scale) (kernels/runtime.cu pq_fill_hash). */
export function fillHash(ptr: DevicePtr, dtype: FloatDType, n: number, seed: number, scale: number, stream: Stream): void {
  launchWith(loadKernels('runtime').kernel('pq_fill_hash'), { grid: [Math.min(65535, Math.ceil(n / 256)), 1, 1], block: [256, 1, 1] }, FILL_ARGS, [ptr, DTYPE_CODE[dtype], BigInt(n), seed >>> 0, scale], stream);
}

/** Rotating device input sets: query [B,H,1,D], key/value [B,Hkv,1,D] in dtype. */
export class DeviceInputs {
  readonly sets: StepInputs<DeviceTensor>[];
  private readonly arena: DeviceArena<'q' | 'k' | 'v'>;

  constructor(shape: CacheShape, dtype: FloatDType, count: number, seed: number, stream: Stream) {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
    const eb = BYTES_PER_ELEMENT[dtype];
    const qn = B * H * D;
    const kn = B * Hkv * D;
    const qBytes = Math.ceil((qn * eb) / 256) * 256;
    const kBytes = Math.ceil((kn * eb) / 256) * 256;
    this.arena = DeviceArena.allocate({ q: qBytes * count, k: kBytes * count, v: kBytes * count });
    const s = this.arena.slices;
    this.sets = Array.from({ length: count }, (_, i) => {
      const q = s.q.ptr + BigInt(i * qBytes);
      const k = s.k.ptr + BigInt(i * kBytes);
      const v = s.v.ptr + BigInt(i * kBytes);
      // Queries a few times larger than keys: peaked, LLM-like attention.
      fillHash(q, dtype, qn, seed * 7 + i, 2, stream);
      fillHash(k, dtype, kn, seed * 7 + i + 1000, 1, stream);
      fillHash(v, dtype, kn, seed * 7 + i + 2000, 1, stream);
      return {
        query: deviceTensor(dtype, [B, H, 1, D], q),
        key: deviceTensor(dtype, [B, Hkv, 1, D], k),
        value: deviceTensor(dtype, [B, Hkv, 1, D], v),
      };
    });
  }

  dispose(): void {
    this.arena.dispose();
  }
}

function readFloats(ptr: DevicePtr, dtype: FloatDType, n: number): Float32Array {
  const raw = dtype === 'f32' ? new Float32Array(n) : new Uint16Array(n);
  copies.toHost(raw, { ptr, bytes: raw.byteLength });
  return new HostTensor(dtype, [n], raw).toFloat32();
}

/**
 * Check sampled output rows of the last step against float64 attention recomputed from the
 * device's K/V rows and (sparse) its lists and weights. Returns the worst row relative error.
 */
function sampleRowError(layer: CudaDecodeLayer, inputs: StepInputs<DeviceTensor>, layout: Layout): number {
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  const G = H / Hkv;
  const sk = layer.seqLen;
  const out = layer.outputToHost().toFloat32();
  const q = readFloats(inputs.query.ptr, inputs.query.dtype as FloatDType, B * H * D);
  const lists = layer.pq ? layer.listsToHost() : undefined;
  const eb = BYTES_PER_ELEMENT[layer.kvDType];
  let worst = 0;
  // Sparse: three rows; dense: the first and last (each reads a whole kv-head's K/V to the host).
  const sample = lists ? [0, Math.floor((B * H) / 2) + 1, B * H - 1] : [0, B * H - 1];
  for (const row of [...new Set(sample)].filter((r) => r < B * H)) {
    const b = Math.floor(row / H);
    const kvh = Math.floor((row % H) / G);
    let positions: number[];
    let weights: Float32Array | undefined;
    if (lists) {
      const L = lists.listCapacity;
      positions = Array.from(lists.sparseList.subarray(row * L, row * L + lists.sparseLen[row]));
      const sel = (layer.pq as NonNullable<typeof layer.pq>).outputs();
      weights = readFloats(sel.weights.ptr + BigInt(row * sel.weights.strides[1] * BYTES_PER_ELEMENT[sel.weights.dtype]), sel.weights.dtype as FloatDType, sk);
    } else {
      positions = Array.from({ length: sk }, (_, p) => p);
    }
    // K/V rows of (b, kvh) for the positions, fetched in runs of consecutive positions where rows are adjacent.
    const rows = kvRowsOf(layer.kv, layout.shape);
    const k = new Float32Array(positions.length * D);
    const v = new Float32Array(positions.length * D);
    for (let i = 0; i < positions.length; ) {
      let j = i + 1;
      while (rows.position === D && j < positions.length && positions[j] === positions[j - 1] + 1) j++;
      const base = BigInt((b * rows.batch + kvh * rows.head + positions[i] * rows.position) * eb);
      k.set(readFloats(layer.kv.keys + base, layer.kvDType, (j - i) * D), i * D);
      v.set(readFloats(layer.kv.values + base, layer.kvDType, (j - i) * D), i * D);
      i = j;
    }
    const s = positions.map((_, i) => {
      let dot = 0;
      for (let d = 0; d < D; d++) dot += q[row * D + d] * k[i * D + d];
      return dot / Math.sqrt(D);
    });
    const w = positions.map((p) => (weights ? weights[p] : 1));
    const m = s.reduce((mx, si, i) => (w[i] > 0 && si > mx ? si : mx), -Infinity);
    const acc = new Float64Array(D);
    let den = 0;
    s.forEach((si, i) => {
      if (w[i] === 0) return;
      const e = w[i] * Math.exp(si - m);
      den += e;
      for (let d = 0; d < D; d++) acc[d] += e * v[i * D + d];
    });
    let num = 0;
    let nrm = 0;
    for (let d = 0; d < D; d++) {
      const want = acc[d] / den;
      num += (out[row * D + d] - want) ** 2;
      nrm += want ** 2;
    }
    worst = Math.max(worst, Number.isFinite(num) ? Math.sqrt(num / nrm) : Infinity);
  }
  return worst;
}

interface Timing {
  readonly wall: LatencySummary;
  readonly gpu: LatencySummary;
}

/** Warm up, then time `step` (host clock to stream idle), then with events in a separate loop. */
function timeSteps(step: (i: number) => void, stream: Stream, o: AttendBenchOptions): Timing {
  for (let i = 0; i < o.warmup; i++) {
    step(i);
    stream.synchronize();
  }
  const wall: number[] = [];
  for (let i = 0; i < o.iters; i++) {
    const t0 = nowUs();
    step(i);
    stream.synchronize();
    wall.push(nowUs() - t0);
  }
  // The stream kept busy ahead of each timed step, longer than the whole call takes on the host.
  const busy = new BusyQueue(Math.max(BUSY_QUEUE_NS, Math.ceil(2000 * summarize(wall).median)));
  let gpu: number[];
  try {
    gpu = eventTimes(stream, o.iters, step, busy);
  } finally {
    busy.dispose();
  }
  return { wall: summarize(wall), gpu: summarize(gpu) };
}

/**
 * The sparse attention kernel alone, in a graph, over the layer's current lists and K/V, and the plan
 * it ran (`merge`: the plan's form, default the layer's).
 */
function timeAttendOnly(layer: CudaDecodeLayer, inputs: StepInputs<DeviceTensor>, o: AttendBenchOptions, merge?: SparseMerge): Timing & { plan: AttendPlan } {
  const pq = layer.pq as NonNullable<typeof layer.pq>;
  const attention = new CudaAttention(layer.context, layer.shape);
  const plan = attention.sparsePlan(layer.kvDType, pq.layout.listCapacity, merge);
  const scratch = new AttendScratch(plan, layer.shape.headDim, layer.stream);
  const status = new PinnedBuffer(16);
  const out = DeviceArena.allocate({ out: layer.shape.batch * layer.shape.heads * layer.shape.headDim * 4 });
  try {
    const sel = pq.outputs();
    const graph = GraphExec.capture(layer.stream, () =>
      attention.launchSparse(plan, scratch, {
        query: { ptr: inputs.query.ptr, dtype: inputs.query.dtype as FloatDType, rows: contiguousRows(layer.shape.heads, layer.shape.headDim) }, kv: layer.kv, out: out.slices.out.ptr,
        seqLen: { ptr: 0n, add: layer.seqLen }, status: status.ptr, sparseList: sel.sparseList.ptr, sparseLen: sel.sparseLen.ptr,
        listStride: sel.sparseList.strides[1], weights: sel.weights.ptr, weightsDType: sel.weights.dtype as FloatDType, weightsStride: sel.weights.strides[1],
      }, layer.stream),
    );
    try {
      return { ...timeSteps(() => graph.launch(layer.stream), layer.stream, o), plan };
    } finally {
      graph.dispose();
    }
  } finally {
    out.dispose();
    status.dispose();
    scratch.dispose();
  }
}

function configOf(c: AttendBenchConfig): Record<string, number | string> {
  return { ...c };
}

const SETS = 8;
/** Bytes of the K/V rows a dense step reads: every position of every (b, kv-head), keys and values. */
function denseBytes(c: AttendBenchConfig): number {
  return 2 * c.B * c.Hkv * (c.sk + 1) * c.D * BYTES_PER_ELEMENT[c.dtype];
}

/** One layer: sparse step vs dense step on the same K/V memory. */
export function benchAttendCuda(c: AttendBenchConfig, o: AttendBenchOptions, copyGBs: number): RecordRow[] {
  const layout = benchLayout(c);
  const shape = layout.shape;
  // Steps append: one checked step, warm-up and two timed loops per layer kind, and the select-only loops.
  const capacity = c.sk + 4 * (1 + o.warmup + 2 * o.iters) + 16;
  const kv = new KVCache(shape, capacity, c.dtype);
  const made: Array<{ dispose(): void }> = [kv];
  try {
    const sparse = new CudaDecodeLayer({ shape, config: layout.config, capacity, kvDType: c.dtype, kv });
    made.push(sparse);
    const sequential = new CudaDecodeLayer({ shape, config: layout.config, capacity, kvDType: c.dtype, kv, stream: sparse.stream, overlapLaunches: false });
    made.push(sequential);
    const dense = new CudaDecodeLayer({ shape, config: layout.config, capacity, kvDType: c.dtype, kv, attention: 'dense', stream: sparse.stream });
    made.push(dense);
    const stream = sparse.stream;
    const n = shape.batch * shape.kvHeads * capacity * shape.headDim;
    fillHash(kv.keys, c.dtype, n, o.seed, 1, stream);
    fillHash(kv.values, c.dtype, n, o.seed + 1, 1, stream);
    const inputs = new DeviceInputs(shape, c.dtype, SETS, o.seed + 2, stream);
    made.push(inputs);
    stream.synchronize();
    sparse.adoptPrefilled(c.sk, randomState(layout, c.sk, capacity, o.seed));

    sparse.step(inputs.sets[0]);
    const sparseErr = sampleRowError(sparse, inputs.sets[0], layout);
    const ts = timeSteps((i) => sparse.step(inputs.sets[i % SETS]), stream, o);
    // Where the sparse step's time goes: the PQ step alone (its own graph), the attention alone.
    const pq = sparse.pq as NonNullable<typeof sparse.pq>;
    const tSelect = timeSteps((i) => pq.step(inputs.sets[i % SETS].query, inputs.sets[i % SETS].key), stream, o);
    const tAttend = timeAttendOnly(sparse, inputs.sets[0], o);
    // The layer's plan against the global-memory merge (the only form before sm_90), same run.
    const attendPlan = tAttend.plan;
    const tAttendGlobal = attendPlan.merge === 'global' ? tAttend : timeAttendOnly(sparse, inputs.sets[0], o, 'global');
    // Same run: every kernel launched after the one before ends (overlapLaunches: false), from the same sk.
    sequential.adoptPrefilled(c.sk, randomState(layout, c.sk, capacity, o.seed));
    sequential.step(inputs.sets[0]);
    const sequentialErr = sampleRowError(sequential, inputs.sets[0], layout);
    const tSequential = timeSteps((i) => sequential.step(inputs.sets[i % SETS]), stream, o);
    // The dense layer starts at the same sk (its appends overwrite rows the sparse steps wrote).
    dense.adoptPrefilled(c.sk);
    dense.step(inputs.sets[0]);
    const denseErr = sampleRowError(dense, inputs.sets[0], layout);
    const td = timeSteps((i) => dense.step(inputs.sets[i % SETS]), stream, o);
    const tol = c.dtype === 'f32' ? 1e-5 : 1e-2;
    const denseGBs = denseBytes(c) / (td.gpu.median * 1e-6) / 1e9;
    const device = CudaContext.primary().device.name;
    return [
      latencyRow('pqcache-cuda-sparse-step', configOf(c), ts.wall, {
        device, sample_row_rel_error: sparseErr, speedup_vs_dense_gpu: round3(td.gpu.median / ts.gpu.median),
        speedup_vs_dense_wall: round3(td.wall.median / ts.wall.median), list_capacity: layout.listCapacity,
        select_step_only_gpu_us: round3(tSelect.gpu.median), sparse_attend_only_gpu_us: round3(tAttend.gpu.median),
        sparse_attend_plan: `${attendPlan.merge} merge, ${attendPlan.splits} blocks a row × ${attendPlan.threads} threads, ${attendPlan.chunk} positions a block`,
        sparse_attend_global_merge_gpu_us: round3(tAttendGlobal.gpu.median),
        overlap_launches: sparse.overlapsLaunches,
        sequential_launch_gpu_us: round3(tSequential.gpu.median), sequential_launch_wall_us: round3(tSequential.wall.median),
        sequential_launch_sample_row_rel_error: sequentialErr,
      }, ts.gpu, sparseErr <= tol && sequentialErr <= tol),
      latencyRow('pqcache-cuda-dense-step', configOf(c), td.wall, {
        device, sample_row_rel_error: denseErr, kv_bytes: denseBytes(c), effective_GBs: round3(denseGBs), copy_GBs: round3(copyGBs),
        fraction_of_copy_bandwidth: round3(denseGBs / copyGBs),
      }, td.gpu, denseErr <= tol),
    ];
  } finally {
    for (const m of made.reverse()) m.dispose();
  }
}

/** L layers per token, one graph: the sparse stack vs the dense stack on the same K/V memory. */
export function benchStepCuda(c: AttendBenchConfig, o: AttendBenchOptions): RecordRow[] {
  const layout = benchLayout(c);
  const shape = layout.shape;
  const capacity = c.sk + 3 * (1 + o.warmup + 2 * o.iters) + 16;
  const made: Array<{ dispose(): void }> = [];
  try {
    const sparse = new CudaDecodeStack({ shape, config: layout.config, capacity, kvDType: c.dtype, numLayers: c.layers });
    made.push(sparse);
    // The same-run baseline of programmatic dependent launch: every kernel launched after the one before ends.
    const sequential = new CudaDecodeStack({ shape, config: layout.config, capacity, kvDType: c.dtype, numLayers: c.layers, overlapLaunches: false, kvs: sparse.layers.map((l) => l.kv) });
    made.push(sequential);
    const dense = new CudaDecodeStack({ shape, config: layout.config, capacity, kvDType: c.dtype, numLayers: c.layers, attention: 'dense', kvs: sparse.layers.map((l) => l.kv) });
    made.push(dense);
    const n = shape.batch * shape.kvHeads * capacity * shape.headDim;
    sparse.layers.forEach((l, i) => {
      fillHash(l.kv.keys, c.dtype, n, o.seed + 10 * i, 1, sparse.stream);
      fillHash(l.kv.values, c.dtype, n, o.seed + 10 * i + 1, 1, sparse.stream);
    });
    // Two input sets per layer, alternating by token: a model writes a layer's q, k and v into the
    // same buffers every token, so a token's graph is one of two (the index's slot parity), captured
    // once. (Rotating 64 sets across the layers made every token's pointers new, so the stack captured
    // its 96-kernel graph again on every token: 32 layers, sk = 131072, 1.92 ms wall against 0.88 ms
    // now, the same 0.79 ms of GPU time; bench/NOTES.md session 37.)
    const inputs = new DeviceInputs(shape, c.dtype, c.layers * 2, o.seed + 2, sparse.stream);
    made.push(inputs);
    sparse.stream.synchronize();
    sparse.layers.forEach((l, i) => l.adoptPrefilled(c.sk, randomState(layout, c.sk, capacity, o.seed + i)));
    sequential.layers.forEach((l, i) => l.adoptPrefilled(c.sk, randomState(layout, c.sk, capacity, o.seed + i)));
    dense.layers.forEach((l) => l.adoptPrefilled(c.sk));
    const token = (i: number): StepInputs<DeviceTensor>[] => Array.from({ length: c.layers }, (_, l) => inputs.sets[2 * l + (i & 1)]);
    sparse.step(token(0));
    const last = c.layers - 1;
    const sparseErr = sampleRowError(sparse.layers[last], token(0)[last], layout);
    const ts = timeSteps((i) => sparse.step(token(i)), sparse.stream, o);
    // Its steps append the same K/V rows at the same positions as the sparse stack's.
    sequential.step(token(0));
    const sequentialErr = sampleRowError(sequential.layers[last], token(0)[last], layout);
    const tq = timeSteps((i) => sequential.step(token(i)), sequential.stream, o);
    dense.step(token(0));
    const denseErr = sampleRowError(dense.layers[last], token(0)[last], layout);
    const td = timeSteps((i) => dense.step(token(i)), dense.stream, o);
    const tol = c.dtype === 'f32' ? 1e-5 : 1e-2;
    const device = CudaContext.primary().device.name;
    return [
      latencyRow('pqcache-cuda-sparse-stack', configOf(c), ts.wall, {
        device, layers: c.layers, per_layer_gpu_us: round3(ts.gpu.median / c.layers), sample_row_rel_error: sparseErr,
        speedup_vs_dense_wall: round3(td.wall.median / ts.wall.median), speedup_vs_dense_gpu: round3(td.gpu.median / ts.gpu.median),
        overlap_launches: sparse.layers[0].overlapsLaunches,
        // Same run: every kernel launched after the one before ended (overlapLaunches: false).
        sequential_launch_gpu_us: round3(tq.gpu.median), sequential_launch_wall_us: round3(tq.wall.median),
        sequential_launch_sample_row_rel_error: sequentialErr,
      }, ts.gpu, sparseErr <= tol && sequentialErr <= tol),
      latencyRow('pqcache-cuda-dense-stack', configOf(c), td.wall, {
        device, layers: c.layers, per_layer_gpu_us: round3(td.gpu.median / c.layers), sample_row_rel_error: denseErr,
      }, td.gpu, denseErr <= tol),
    ];
  } finally {
    for (const m of made.reverse()) m.dispose();
  }
}
