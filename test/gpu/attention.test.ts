import assert from 'node:assert/strict';
import test from 'node:test';
import { type AttentionInputs, attendCpu, denseAttentionCpu } from '../../src/attention/cpu-attention.js';
import { AttendScratch, CudaAttention, KVCache, type SparseMerge } from '../../src/attention/cuda-attention.js';
import { CudaDecodeLayer } from '../../src/attention/cuda-decode-layer.js';
import { CpuDecodeLayer } from '../../src/attention/decode-layer.js';
import { CudaDecodeStack } from '../../src/attention/decode-stack.js';
import { CudaContext } from '../../src/cuda/context.js';
import { DeviceArena, PinnedBuffer, allocationStats, copies } from '../../src/cuda/memory.js';
import { Stream } from '../../src/cuda/stream.js';
import { ConfigError, DeviceInputError, ShapeError } from '../../src/errors.js';
import type { CacheShape } from '../../src/pq/config.js';
import { SplitMix32 } from '../../src/pq/rng.js';
import { contiguousRows } from '../../src/pq/step-rows.js';
import { type DeviceTensor, deviceTensor } from '../../src/tensor/device-tensor.js';
import { BYTES_PER_ELEMENT, type FloatDType } from '../../src/tensor/dtype.js';
import { HostTensor } from '../../src/tensor/host-tensor.js';
import { gpuSkip } from './gpu.js';

const skip = gpuSkip();
const TOLERANCE: Record<FloatDType, number> = { f32: 1e-5, f16: 1e-2, bf16: 1e-2 };
const POISON = 0x7fc0dead; // an f32 NaN pattern: any element the kernel does not write stays NaN

function rounded(dtype: FloatDType, x: Float32Array): Float32Array {
  return dtype === 'f32' ? x : HostTensor.fromNumbers(dtype, [x.length], x).toFloat32();
}

/** Worst per-row ‖got − want‖ / ‖want‖ over [rows, D]. */
function worstRowError(got: Float32Array, want: Float32Array, D: number): number {
  let worst = 0;
  for (let r = 0; r < want.length / D; r++) {
    let num = 0;
    let den = 0;
    for (let d = 0; d < D; d++) {
      const g = got[r * D + d];
      if (Number.isNaN(g)) return Infinity;
      num += (g - want[r * D + d]) ** 2;
      den += want[r * D + d] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30));
  }
  return worst;
}

/** The lists the kernel should have used: row 0 without its first entry when that entry was corrupted. */
function withoutFirst(list: Int32Array, len: Int32Array, drop: boolean): { sparseList: Int32Array; sparseLen: Int32Array } {
  if (!drop) return { sparseList: list, sparseLen: len };
  const sparseList = list.slice();
  const sparseLen = len.slice();
  sparseList.copyWithin(0, 1, len[0]);
  sparseList[len[0] - 1] = -1;
  sparseLen[0] -= 1;
  return { sparseList, sparseLen };
}

interface KernelCase {
  shape: CacheShape;
  dtype: FloatDType;
  qdtype: FloatDType;
  wdtype: FloatDType;
  sk: number;
  capacity: number;
  listCapacity: number;
  /** The query read in place from a fused QKV buffer [B, H + 2·Hkv, D] (its key and value rows NaN), not from contiguous rows. */
  fusedQuery?: boolean;
}

/** The sparse merges this GPU runs: through global memory always, in a cluster on sm_90. */
function sparseMerges(): SparseMerge[] {
  return CudaContext.primary().device.computeCapability[0] >= 9 ? ['global', 'cluster'] : ['global'];
}

/**
 * Run the sparse or dense kernel directly on random inputs; returns the output and the f64 reference.
 * Sparse rows hold in-range positions past their length too (the cluster kernels read entries ahead
 * of the length): a kernel that used them would miss the reference.
 */
function runKernel(c: KernelCase, rng: SplitMix32, kind: 'sparse' | 'dense', corrupt?: 'list', merge?: SparseMerge): { got: Float32Array; want: Float32Array } {
  const ctx = CudaContext.primary();
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = c.shape;
  const rows = B * H;
  const rand = (n: number, s: number): Float32Array => Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) * s);
  const q = rounded(c.qdtype, rand(rows * D, 2));
  const keys = rounded(c.dtype, rand(B * Hkv * c.capacity * D, 1));
  const values = rounded(c.dtype, rand(B * Hkv * c.capacity * D, 1));
  // Lists: random distinct positions (unsorted), some rows short (−1 padding), weights 0, 1 or 0.5.
  const L = c.listCapacity;
  const list = new Int32Array(rows * L).fill(-1);
  const len = new Int32Array(rows);
  const weights = new Float32Array(rows * c.sk);
  for (let r = 0; r < rows; r++) {
    len[r] = r % 5 === 4 ? 0 : Math.min(c.sk, 1 + Math.floor(rng.next() * L));
    const chosen = new Set<number>();
    while (chosen.size < len[r]) chosen.add(Math.floor(rng.next() * c.sk));
    [...chosen].forEach((p, i) => {
      list[r * L + i] = p;
      const u = rng.next();
      weights[r * c.sk + p] = u < 0.1 ? 0 : u < 0.2 ? 0.5 : 1;
    });
    for (let i = len[r]; i < L; i++) if (r % 2 === 1) list[r * L + i] = Math.floor(rng.next() * c.sk); // ignored entries
  }
  if (corrupt === 'list') list[0] = c.sk + 3;
  const kv = new KVCache(c.shape, c.capacity, c.dtype);
  const stream = new Stream();
  const status = new PinnedBuffer(16);
  new Int32Array(status.arrayBuffer, 0, 1)[0] = 0;
  // The query's rows: contiguous, or the query part of a fused QKV buffer whose other rows are NaN (read by mistake, they would show).
  const qHeads = c.fusedQuery === true ? H + 2 * Hkv : H;
  const qRows = new Float32Array(B * qHeads * D).fill(NaN);
  for (let b = 0; b < B; b++) qRows.set(q.subarray(b * H * D, (b + 1) * H * D), b * qHeads * D);
  const arena = DeviceArena.allocate({ q: qRows.byteLength, list: list.byteLength, len: len.byteLength, w: weights.byteLength, out: rows * D * 4 });
  const attention = new CudaAttention(ctx, c.shape);
  const plan = kind === 'sparse' ? attention.sparsePlan(c.dtype, L, merge) : attention.densePlan(c.dtype, c.sk);
  const scratch = new AttendScratch(plan, D, stream);
  try {
    kv.upload(new HostTensor('f32', [B, Hkv, c.capacity, D], keys), new HostTensor('f32', [B, Hkv, c.capacity, D], values));
    const enc = (dtype: FloatDType, x: Float32Array): Float32Array | Uint16Array => HostTensor.fromNumbers(dtype, [x.length], x).data as Float32Array | Uint16Array;
    copies.fromHost(arena.slices.q, enc(c.qdtype, qRows));
    copies.fromHost(arena.slices.list, list);
    copies.fromHost(arena.slices.len, len);
    copies.fromHost(arena.slices.w, enc(c.wdtype, weights));
    copies.fill32Async(arena.slices.out, POISON, rows * D, stream);
    const io = { query: { ptr: arena.slices.q.ptr, dtype: c.qdtype, rows: contiguousRows(qHeads, D) }, kv, out: arena.slices.out.ptr, seqLen: { ptr: 0n, add: c.sk }, status: status.ptr };
    const sparseIO = { ...io, sparseList: arena.slices.list.ptr, sparseLen: arena.slices.len.ptr, listStride: L, weights: arena.slices.w.ptr, weightsDType: c.wdtype, weightsStride: c.sk };
    // The split kernels do not wait for the kernel before them: no programmatic dependent launch.
    if (kind === 'sparse' && plan.merge === 'global') {
      assert.throws(() => attention.launchSparse(plan, scratch, sparseIO, stream, true), (e: unknown) => e instanceof ConfigError && /^overlapPrevious/.test((e as Error).message));
    }
    // Twice: the merge counters must be back at zero after a launch. A cluster plan's second launch
    // starts behind the first by programmatic dependent launch (it waits for it before reading).
    for (let rep = 0; rep < 2; rep++) {
      if (kind === 'sparse') {
        attention.launchSparse(plan, scratch, sparseIO, stream, rep === 1 && plan.merge === 'cluster');
      } else {
        attention.launchDense(plan, scratch, io, stream);
      }
    }
    stream.synchronize();
    const st = new Int32Array(status.arrayBuffer, 0, 1)[0];
    if (corrupt === 'list') {
      assert.equal(st & 4, 4, 'an out-of-range list position must set PQ_STATUS_LIST_RANGE');
    } else {
      assert.equal(st, 0, `status ${st}`);
    }
    const raw = c.dtype === 'f32' ? new Float32Array(rows * D) : new Uint16Array(rows * D);
    copies.toHost(raw, { ptr: arena.slices.out.ptr, bytes: raw.byteLength });
    const got = new HostTensor(c.dtype, [rows * D], raw).toFloat32();
    const inputs: AttentionInputs = { shape: c.shape, query: q, keys, values, seqStride: c.capacity, seqLen: c.sk };
    const wq = rounded(c.wdtype, weights);
    const want = kind === 'sparse'
      ? attendCpu(inputs, { ...withoutFirst(list, len, corrupt === 'list'), listCapacity: L, weight: (r, p) => wq[r * c.sk + p] })
      : denseAttentionCpu(inputs);
    return { got, want };
  } finally {
    scratch.dispose();
    arena.dispose();
    status.dispose();
    kv.dispose();
    stream.dispose();
  }
}

test('sparse attention kernels (global and cluster merges) match the CPU oracle (GQA, padding, zero and fractional weights, all dtypes, contiguous and fused QKV queries)', { skip }, () => {
  const rng = new SplitMix32(7);
  const failures: string[] = [];
  const shapes: CacheShape[] = [
    { batch: 1, heads: 4, kvHeads: 4, headDim: 128 },
    { batch: 2, heads: 8, kvHeads: 2, headDim: 64 },
    { batch: 3, heads: 6, kvHeads: 3, headDim: 96 },
    { batch: 1, heads: 4, kvHeads: 1, headDim: 256 },
    { batch: 2, heads: 2, kvHeads: 1, headDim: 160 },
  ];
  let n = 0;
  for (const shape of shapes) {
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      for (const listCapacity of [1, 37, 384, 1500]) {
        const sk = 50 + Math.floor(rng.next() * 3000);
        const c: KernelCase = {
          shape, dtype, qdtype: (['f32', 'bf16', 'f16'] as const)[n % 3], wdtype: (['f32', 'f16', 'bf16'] as const)[(n + 1) % 3], sk, capacity: sk + 5, listCapacity,
          fusedQuery: n % 2 === 1,
        };
        n++;
        for (const merge of sparseMerges()) {
          // Remove the (rare) list wider than sk: distinct positions need listCapacity ≤ sk.
          const { got, want } = runKernel({ ...c, listCapacity: Math.min(listCapacity, sk) }, rng, 'sparse', undefined, merge);
          const err = worstRowError(got, want, shape.headDim);
          if (!(err <= TOLERANCE[dtype])) failures.push(`${merge} ${JSON.stringify(c)}: worst row rel. error ${err}`);
        }
      }
    }
  }
  assert.deepEqual(failures, []);
});

test('dense attention kernel matches the CPU oracle (G = 1, 2, 4, 8, 16; all dtypes, contiguous and fused QKV queries)', { skip }, () => {
  const rng = new SplitMix32(11);
  const failures: string[] = [];
  for (const [H, Hkv, D] of [[4, 4, 128], [8, 4, 64], [16, 4, 128], [16, 2, 128], [32, 2, 64], [8, 1, 256], [6, 2, 200]] as const) {
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const sk = 1 + Math.floor(rng.next() * 5000);
      const c: KernelCase = { shape: { batch: 2, heads: H, kvHeads: Hkv, headDim: D }, dtype, qdtype: 'f32', wdtype: 'f32', sk, capacity: sk + 17, listCapacity: 1, fusedQuery: dtype !== 'f16' };
      const { got, want } = runKernel(c, rng, 'dense');
      const err = worstRowError(got, want, D);
      if (!(err <= TOLERANCE[dtype])) failures.push(`H=${H} Hkv=${Hkv} D=${D} ${dtype} sk=${sk}: worst row rel. error ${err}`);
    }
  }
  assert.deepEqual(failures, []);
});

test('a list position outside [0, sk) is flagged and skipped, not read', { skip }, () => {
  const c: KernelCase = { shape: { batch: 1, heads: 2, kvHeads: 1, headDim: 64 }, dtype: 'f32', qdtype: 'f32', wdtype: 'f32', sk: 500, capacity: 500, listCapacity: 64 };
  for (const merge of sparseMerges()) {
    const { got, want } = runKernel(c, new SplitMix32(3), 'sparse', 'list', merge);
    assert.ok(worstRowError(got, want, 64) <= 1e-5, merge);
  }
});

/** Integer-valued inputs: PQ scores are exact, so CPU and GPU select the same lists. */
function intTensor(rng: SplitMix32, dtype: FloatDType, shape: number[], lo: number, hi: number): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return HostTensor.fromNumbers(dtype, shape, Array.from({ length: n }, () => rng.int(lo, hi)));
}

/** The decode-layer tests' shape (B = 2, GQA 4:1) and a config with no k-means rounds (quick builds). */
const SMALL_LAYER = {
  shape: { batch: 2, heads: 8, kvHeads: 2, headDim: 64 },
  config: { sinkSize: 8, windowSize: 16, heavySize: 32, pqGroupFactor: 2, pqBits: 4, initOffset: 8, kmeansIters: 0 },
};

/** Prefill the layers with the same integer keys and values [2, 2, sk, 64] (SMALL_LAYER's shape). */
function prefillAlike(rng: SplitMix32, sk: number, ...layers: { prefill(keys: HostTensor, values: HostTensor): void }[]): void {
  const keys = intTensor(rng, 'f32', [2, 2, sk, 64], -2, 2);
  const values = intTensor(rng, 'f32', [2, 2, sk, 64], -3, 3);
  for (const layer of layers) layer.prefill(keys, values);
}

test('decode layers (sparse and dense) match the CPU layers step by step; the stack runs all layers in one graph', { skip }, () => {
  const { shape, config } = SMALL_LAYER;
  const rng = new SplitMix32(5);
  const sk = 1500;
  const steps = 40;
  for (const [mode, kvDType] of [['sparse', 'f32'], ['sparse', 'bf16'], ['dense', 'f16']] as const) {
    const options = { shape, config, capacity: sk + steps, kvDType, attention: mode };
    const cpu = new CpuDecodeLayer(options);
    const gpu = new CudaDecodeLayer(options);
    try {
      prefillAlike(rng, sk, cpu, gpu);
      for (let s = 0; s < steps; s++) {
        const inputs = {
          query: intTensor(rng, s % 2 ? 'bf16' : 'f32', [2, 8, 1, 64], -1, 1),
          key: intTensor(rng, 'f32', [2, 2, 1, 64], -2, 2),
          value: intTensor(rng, 'f32', [2, 2, 1, 64], -3, 3),
        };
        const want = cpu.stepToHost(inputs).toFloat32();
        const got = gpu.stepToHost(inputs).toFloat32();
        const err = worstRowError(got, want, 64);
        assert.ok(err <= TOLERANCE[kvDType], `${mode} ${kvDType} step ${s}: rel. error ${err}`);
        if (mode === 'sparse') assert.deepEqual(gpu.listsToHost().sparseList, cpu.listsToHost().sparseList, `step ${s} lists`);
      }
      const kvGot = gpu.kvToHost();
      const kvWant = cpu.kvToHost();
      assert.deepEqual(kvGot.keys, kvWant.keys, 'K cache');
      assert.deepEqual(kvGot.values, kvWant.values, 'V cache');
    } finally {
      gpu.dispose();
      cpu.dispose();
    }
  }

  // Three layers in one graph, host and device inputs, against three CPU layers.
  const L = 3;
  const stack = new CudaDecodeStack({ shape, config, capacity: sk + 10, kvDType: 'f32', numLayers: L });
  const cpus = Array.from({ length: L }, () => new CpuDecodeLayer({ shape, config, capacity: sk + 10, kvDType: 'f32' }));
  const arena = DeviceArena.allocate({ q: 2 * 8 * 64 * 4, k: 2 * 2 * 64 * 4, v: 2 * 2 * 64 * 4 });
  try {
    const keys = Array.from({ length: L }, () => intTensor(rng, 'f32', [2, 2, sk, 64], -2, 2));
    const values = Array.from({ length: L }, () => intTensor(rng, 'f32', [2, 2, sk, 64], -3, 3));
    stack.prefill(keys, values);
    cpus.forEach((c, i) => c.prefill(keys[i], values[i]));
    for (let s = 0; s < 6; s++) {
      const inputs = Array.from({ length: L }, () => ({
        query: intTensor(rng, 'f32', [2, 8, 1, 64], -1, 1),
        key: intTensor(rng, 'f32', [2, 2, 1, 64], -2, 2),
        value: intTensor(rng, 'f32', [2, 2, 1, 64], -3, 3),
      }));
      const want = cpus.map((c, i) => c.stepToHost(inputs[i]).toFloat32());
      let got: Float32Array[];
      if (s % 2 === 0) {
        got = stack.stepToHost(inputs).map((t) => t.toFloat32());
      } else {
        // Layer 0 from device tensors (same values), the others from the host.
        copies.fromHost(arena.slices.q, inputs[0].query.data);
        copies.fromHost(arena.slices.k, inputs[0].key.data);
        copies.fromHost(arena.slices.v, inputs[0].value.data);
        const dev = {
          query: deviceTensor('f32', [2, 8, 1, 64], arena.slices.q.ptr),
          key: deviceTensor('f32', [2, 2, 1, 64], arena.slices.k.ptr),
          value: deviceTensor('f32', [2, 2, 1, 64], arena.slices.v.ptr),
        };
        stack.step([dev, ...inputs.slice(1)]);
        got = stack.layers.map((l) => l.outputToHost().toFloat32());
      }
      for (let i = 0; i < L; i++) assert.ok(worstRowError(got[i], want[i], 64) <= 1e-5, `stack step ${s} layer ${i}`);
    }
  } finally {
    arena.dispose();
    stack.dispose();
    for (const c of cpus) c.dispose();
  }
});

test('a sparse layer whose attention starts behind the select step (programmatic dependent launch) writes what the sequential launch writes, bit for bit; stacks too', { skip }, () => {
  const clusters = CudaContext.primary().device.computeCapability[0] >= 9;
  const rng = new SplitMix32(23);
  const config = { sinkSize: 16, windowSize: 32, heavySize: 128, pqGroupFactor: 2, pqBits: 6, initOffset: 16, kmeansIters: 0 };
  // The seed-like shape (32 query heads, the row step kernel), B = 2, and M = 4 (no pair table: the
  // append and the selection are two kernels, launched without overlap; the attention still overlaps).
  const cases = [
    { shape: { batch: 1, heads: 32, kvHeads: 8, headDim: 128 }, sk: 8000, kvDType: 'bf16', config },
    { shape: { batch: 2, heads: 16, kvHeads: 4, headDim: 64 }, sk: 3000, kvDType: 'f32', config },
    { shape: { batch: 1, heads: 8, kvHeads: 2, headDim: 64 }, sk: 2000, kvDType: 'f16', config: { ...config, pqGroupFactor: 4, pqBits: 4 } },
  ] as const;
  for (const { shape, sk, kvDType, config } of cases) {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
    const steps = 24;
    const options = { shape, config, capacity: sk + steps, kvDType };
    const overlapped = new CudaDecodeLayer(options);
    const sequential = new CudaDecodeLayer({ ...options, overlapLaunches: false });
    try {
      assert.equal(overlapped.overlapsLaunches, clusters, 'overlapped on sm_90 (cluster plans)');
      assert.equal(sequential.overlapsLaunches, false);
      const keys = intTensor(rng, 'f32', [B, Hkv, sk, D], -2, 2);
      const values = intTensor(rng, 'f32', [B, Hkv, sk, D], -3, 3);
      overlapped.prefill(keys, values);
      sequential.prefill(keys, values);
      for (let s = 0; s < steps; s++) {
        const inputs = {
          query: intTensor(rng, 'f32', [B, H, 1, D], -1, 1),
          key: intTensor(rng, 'f32', [B, Hkv, 1, D], -2, 2),
          value: intTensor(rng, 'f32', [B, Hkv, 1, D], -3, 3),
        };
        const a = overlapped.stepToHost(inputs).toFloat32();
        const b = sequential.stepToHost(inputs).toFloat32();
        assert.deepEqual(a, b, `H=${H} sk=${sk} step ${s}: outputs`);
        assert.deepEqual(overlapped.listsToHost().sparseList, sequential.listsToHost().sparseList, `H=${H} step ${s}: lists`);
      }
    } finally {
      overlapped.dispose();
      sequential.dispose();
    }
  }
  // Two layers in one graph: each attention waits for its own step, the next layer's K/V append for it.
  const shape = { batch: 1, heads: 8, kvHeads: 2, headDim: 64 };
  const sk = 2500;
  const stacks = [true, false].map((overlapLaunches) => new CudaDecodeStack({ shape, config, capacity: sk + 8, kvDType: 'f16', numLayers: 2, overlapLaunches }));
  try {
    const keys = [0, 1].map(() => intTensor(rng, 'f32', [1, 2, sk, 64], -2, 2));
    const values = [0, 1].map(() => intTensor(rng, 'f32', [1, 2, sk, 64], -3, 3));
    for (const st of stacks) st.prefill(keys, values);
    for (let s = 0; s < 6; s++) {
      const inputs = [0, 1].map(() => ({
        query: intTensor(rng, 'f32', [1, 8, 1, 64], -1, 1),
        key: intTensor(rng, 'f32', [1, 2, 1, 64], -2, 2),
        value: intTensor(rng, 'f32', [1, 2, 1, 64], -3, 3),
      }));
      const [a, b] = stacks.map((st) => st.stepToHost(inputs).map((t) => t.toFloat32()));
      assert.deepEqual(a, b, `stack step ${s}`);
    }
  } finally {
    for (const st of stacks) st.dispose();
  }
});

/**
 * A fused QKV projection output [B, 1, H + 2·Hkv, D] in device memory, its query, key and value parts
 * as the step inputs a decode layer reads in place (row strides (H + 2·Hkv)·D and D).
 */
class FusedQKV {
  readonly arena: DeviceArena<'qkv'>;
  readonly views: { query: DeviceTensor; key: DeviceTensor; value: DeviceTensor };

  constructor(private readonly shape: CacheShape, private readonly dtype: FloatDType) {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
    const Htot = H + 2 * Hkv;
    const bytes = BYTES_PER_ELEMENT[dtype];
    this.arena = DeviceArena.allocate({ qkv: B * Htot * D * bytes });
    const ptr = this.arena.slices.qkv.ptr;
    const strides = [Htot * D, D, Htot * D, 1];
    this.views = {
      query: deviceTensor(dtype, [B, H, 1, D], ptr, strides),
      key: deviceTensor(dtype, [B, Hkv, 1, D], ptr + BigInt(H * D * bytes), strides),
      value: deviceTensor(dtype, [B, Hkv, 1, D], ptr + BigInt((H + Hkv) * D * bytes), strides),
    };
  }

  /** Write one step's inputs (host tensors of this dtype, [B, heads, 1, D]) into the buffer. */
  write(inputs: { query: HostTensor; key: HostTensor; value: HostTensor }): void {
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = this.shape;
    const Htot = H + 2 * Hkv;
    const out = this.dtype === 'f32' ? new Float32Array(B * Htot * D) : new Uint16Array(B * Htot * D);
    for (let b = 0; b < B; b++) {
      const put = (t: HostTensor, heads: number, first: number): void =>
        out.set((t.data as typeof out).subarray(b * heads * D, (b + 1) * heads * D), (b * Htot + first) * D);
      put(inputs.query, H, 0);
      put(inputs.key, Hkv, H);
      put(inputs.value, Hkv, H + Hkv);
    }
    copies.fromHost(this.arena.slices.qkv, out);
  }

  dispose(): void {
    this.arena.dispose();
  }
}

test('decode layers and stacks read q, k and v in place from a fused QKV output at B = 2: outputs, lists and K/V caches equal those from contiguous inputs, bit for bit', { skip }, () => {
  const { shape, config } = SMALL_LAYER;
  const rng = new SplitMix32(31);
  const sk = 1200;
  const steps = 12;
  const draw = (dtype: FloatDType) => ({
    query: intTensor(rng, dtype, [2, 8, 1, 64], -1, 1),
    key: intTensor(rng, dtype, [2, 2, 1, 64], -2, 2),
    value: intTensor(rng, dtype, [2, 2, 1, 64], -3, 3),
  });
  for (const [mode, kvDType, dtype] of [['sparse', 'f32', 'f32'], ['sparse', 'bf16', 'bf16'], ['dense', 'f16', 'f16'], ['dense', 'f32', 'bf16']] as const) {
    const options = { shape, config, capacity: sk + steps + 1, kvDType, attention: mode }; // + 1: room for the refused step below
    const contiguous = new CudaDecodeLayer(options);
    const fused = new CudaDecodeLayer(options);
    const qkv = new FusedQKV(shape, dtype);
    try {
      prefillAlike(rng, sk, contiguous, fused);
      for (let s = 0; s < steps; s++) {
        const inputs = draw(dtype);
        qkv.write(inputs);
        const want = contiguous.stepToHost(inputs).data;
        fused.step(qkv.views);
        assert.deepEqual(fused.outputToHost().data, want, `${mode} ${kvDType} ${dtype} step ${s}`);
        if (mode === 'sparse') assert.deepEqual(fused.listsToHost().sparseList, contiguous.listsToHost().sparseList, `step ${s} lists`);
      }
      assert.deepEqual(fused.kvToHost(), contiguous.kvToHost(), `${mode} ${kvDType} ${dtype}: K/V caches`);
      // A last dimension that is not contiguous is refused, naming the input.
      const { key } = qkv.views;
      assert.throws(() => fused.step({ ...qkv.views, key: { ...key, strides: [key.strides[0], key.strides[1], key.strides[2], 2] } }),
        (e: unknown) => e instanceof ShapeError && /^key\.strides/.test((e as Error).message));
    } finally {
      qkv.dispose();
      fused.dispose();
      contiguous.dispose();
    }
  }

  // Two layers in one graph, each from its own fused buffer, against a stack given the same inputs from the host.
  const L = 2;
  const stacks = [0, 1].map(() => new CudaDecodeStack({ shape, config, capacity: sk + steps, kvDType: 'bf16', numLayers: L }));
  const buffers = Array.from({ length: L }, () => new FusedQKV(shape, 'bf16'));
  try {
    const keys = Array.from({ length: L }, () => intTensor(rng, 'f32', [2, 2, sk, 64], -2, 2));
    const values = Array.from({ length: L }, () => intTensor(rng, 'f32', [2, 2, sk, 64], -3, 3));
    for (const st of stacks) st.prefill(keys, values);
    for (let s = 0; s < 4; s++) {
      const inputs = Array.from({ length: L }, () => draw('bf16'));
      inputs.forEach((x, i) => (buffers[i] as FusedQKV).write(x));
      const want = stacks[0].stepToHost(inputs).map((t) => t.data);
      stacks[1].step(buffers.map((b) => b.views));
      const got = stacks[1].layers.map((l) => l.outputToHost().data);
      assert.deepEqual(got, want, `stack step ${s}`);
    }
  } finally {
    for (const b of buffers) b.dispose();
    for (const st of stacks) st.dispose();
  }
});

test('a sparse layer over an external K/V cache builds its index from the cached keys (adoptPrefilled without an index)', { skip }, () => {
  const shape = { batch: 2, heads: 4, kvHeads: 2, headDim: 64 };
  const config = { sinkSize: 4, windowSize: 8, heavySize: 16, pqGroupFactor: 2, pqBits: 4, initOffset: 4, kmeansIters: 3 };
  const rng = new SplitMix32(17);
  const sk = 700;
  const capacity = 760;
  const keys = intTensor(rng, 'bf16', [2, 2, sk, 64], -2, 2);
  const values = intTensor(rng, 'bf16', [2, 2, sk, 64], -3, 3);
  const rowBytes = capacity * 64 * 2;
  CudaContext.primary();
  const arena = DeviceArena.allocate({ keys: 4 * rowBytes, values: 4 * rowBytes });
  const stream = new Stream();
  const cpu = new CpuDecodeLayer({ shape, config, capacity, kvDType: 'bf16' });
  let gpu: CudaDecodeLayer | undefined;
  try {
    // The engine's prefill: rows of `capacity` positions, the first sk of each written.
    copies.fromHost2D(arena.slices.keys, rowBytes, keys.data, sk * 64 * 2, sk * 64 * 2, 4, stream);
    copies.fromHost2D(arena.slices.values, rowBytes, values.data, sk * 64 * 2, sk * 64 * 2, 4, stream);
    gpu = new CudaDecodeLayer({ shape, config, capacity, kvDType: 'bf16', kv: { dtype: 'bf16', keys: arena.slices.keys.ptr, values: arena.slices.values.ptr, positions: capacity } });
    gpu.adoptPrefilled(sk);
    cpu.prefill(keys, values);
    for (let s = 0; s < 12; s++) {
      const inputs = { query: intTensor(rng, 'f32', [2, 4, 1, 64], -1, 1), key: intTensor(rng, 'f32', [2, 2, 1, 64], -2, 2), value: intTensor(rng, 'f32', [2, 2, 1, 64], -3, 3) };
      const want = cpu.stepToHost(inputs).toFloat32();
      const got = gpu.stepToHost(inputs).toFloat32();
      assert.deepEqual(gpu.listsToHost().sparseList, cpu.listsToHost().sparseList, `step ${s} lists`);
      assert.ok(worstRowError(got, want, 64) <= TOLERANCE.bf16, `step ${s}`);
    }
  } finally {
    gpu?.dispose();
    cpu.dispose();
    stream.dispose();
    arena.dispose();
  }
});

test('layers over an external K/V cache laid out [B, cap, Hkv, D], or K and V interleaved [B, cap, 2, Hkv, D], step exactly as over their own cache; bad strides are refused', { skip }, () => {
  const { shape, config } = SMALL_LAYER;
  const { batch: B, kvHeads: Hkv, headDim: D } = shape;
  const rng = new SplitMix32(23);
  const sk = 300;
  const steps = 12;
  const cap = sk + steps + 4;
  for (const [mode, kvDType] of [['sparse', 'bf16'], ['sparse', 'f32'], ['dense', 'f16']] as const) {
    for (const order of ['positions-major', 'interleaved'] as const) {
      const eb = BYTES_PER_ELEMENT[kvDType];
      const perPosition = (order === 'interleaved' ? 2 : 1) * Hkv * D; // elements a position takes in one buffer
      const bytes = B * cap * perPosition * eb;
      const arena = DeviceArena.allocate(order === 'interleaved' ? { keys: bytes, values: 16 } : { keys: bytes, values: bytes });
      // NaN everywhere first: a row read that prefill and the steps did not write shows in the outputs.
      const fill = new Stream();
      copies.fill32Async(arena.buffer, kvDType === 'f32' ? 0x7fc00000 : kvDType === 'f16' ? 0x7e007e00 : 0x7fc07fc0, arena.bytes / 4, fill);
      fill.synchronize();
      fill.dispose();
      const keys = arena.slices.keys.ptr;
      const values = order === 'interleaved' ? keys + BigInt(Hkv * D * eb) : arena.slices.values.ptr;
      const strides = [cap * perPosition, D, perPosition] as const;
      const options = { shape, config, capacity: cap - 4, kvDType, attention: mode };
      const own = new CudaDecodeLayer(options);
      let ext: CudaDecodeLayer | undefined;
      try {
        ext = new CudaDecodeLayer({ ...options, kv: { dtype: kvDType, keys, values, positions: cap, strides } });
        prefillAlike(rng, sk, own, ext);
        const label = `${mode} ${kvDType} ${order}`;
        for (let s = 0; s < steps; s++) {
          const inputs = { query: intTensor(rng, 'f32', [B, 8, 1, D], -1, 1), key: intTensor(rng, 'f32', [B, Hkv, 1, D], -2, 2), value: intTensor(rng, 'f32', [B, Hkv, 1, D], -3, 3) };
          const want = own.stepToHost(inputs).toFloat32();
          const got = ext.stepToHost(inputs).toFloat32();
          assert.deepEqual(got, want, `${label} step ${s}: outputs`);
          if (mode === 'sparse') assert.deepEqual(ext.listsToHost().sparseList, own.listsToHost().sparseList, `${label} step ${s}: lists`);
        }
        assert.deepEqual(ext.kvToHost(), own.kvToHost(), `${label}: the caches`);
      } finally {
        ext?.dispose();
        own.dispose();
        arena.dispose();
      }
    }
  }
  const kv = (strides: readonly [number, number, number], positions = 64) => ({ dtype: 'bf16' as const, keys: 0n, values: 0n, positions, strides });
  const refuses = (strides: readonly [number, number, number], why: RegExp): void =>
    assert.throws(() => new CudaDecodeLayer({ shape, config, capacity: 60, kvDType: 'bf16', kv: kv(strides) }), (e: unknown) => e instanceof ConfigError && /^kv\.strides/.test((e as Error).message) && why.test((e as Error).message));
  refuses([64 * Hkv * D, D, D], /overlap/); // positions one row apart, heads too
  refuses([64 * Hkv * D, 2 * D, Hkv * D], /overlap/); // the heads' rows run into the next position's
  refuses([64 * Hkv * D, D + 8, 2 * Hkv * D], /multiples of D/); // the kernels count rows of D elements
  assert.throws(() => new CudaDecodeLayer({ shape, config, capacity: 60, kvDType: 'bf16', kv: kv([64 * Hkv * D, D, Hkv * D], 59) }), (e: unknown) => e instanceof ConfigError && /^kv\.positions/.test((e as Error).message));
});

test('host inputs of the smallest shapes fit the staging buffers (one head, D = 32)', { skip }, () => {
  const rng = new SplitMix32(21);
  const shape = { batch: 1, heads: 1, kvHeads: 1, headDim: 32 };
  const options = { shape, config: { sinkSize: 2, windowSize: 2, heavySize: 4, initOffset: 2, pqBits: 2, kmeansIters: 0 }, capacity: 120 };
  const cpu = new CpuDecodeLayer(options);
  const gpu = new CudaDecodeLayer(options);
  try {
    const keys = intTensor(rng, 'f32', [1, 1, 100, 32], -2, 2);
    const values = intTensor(rng, 'f32', [1, 1, 100, 32], -2, 2);
    cpu.prefill(keys, values);
    gpu.prefill(keys, values);
    for (let s = 0; s < 5; s++) {
      const inputs = { query: intTensor(rng, 'f32', [1, 1, 1, 32], -1, 1), key: intTensor(rng, 'f32', [1, 1, 1, 32], -2, 2), value: intTensor(rng, 'f32', [1, 1, 1, 32], -2, 2) };
      assert.ok(worstRowError(gpu.stepToHost(inputs).toFloat32(), cpu.stepToHost(inputs).toFloat32(), 32) <= 1e-5, `step ${s}`);
    }
  } finally {
    gpu.dispose();
    cpu.dispose();
  }
});

test('a non-finite value on the device is reported as DeviceInputError(value); the layer stays usable', { skip }, () => {
  const shape = { batch: 1, heads: 2, kvHeads: 1, headDim: 64 };
  const layer = new CudaDecodeLayer({ shape, config: { sinkSize: 4, windowSize: 4, heavySize: 8, initOffset: 4, pqBits: 3 }, capacity: 400, kvDType: 'bf16' });
  const arena = DeviceArena.allocate({ v: 64 * 4 });
  try {
    const rng = new SplitMix32(9);
    layer.prefill(intTensor(rng, 'f32', [1, 1, 300, 64], -2, 2), intTensor(rng, 'f32', [1, 1, 300, 64], -2, 2));
    const v = new Float32Array(64).fill(1);
    v[7] = Infinity;
    copies.fromHost(arena.slices.v, v);
    const query = intTensor(rng, 'f32', [1, 2, 1, 64], -1, 1);
    const key = intTensor(rng, 'f32', [1, 1, 1, 64], -1, 1);
    layer.step({ query, key, value: deviceTensor('f32', [1, 1, 1, 64], arena.slices.v.ptr) });
    assert.throws(() => layer.synchronize(), (e: unknown) => e instanceof DeviceInputError && /value/.test((e as Error).message));
    const out = layer.stepToHost({ query, key, value: intTensor(rng, 'f32', [1, 1, 1, 64], -1, 1) });
    assert.equal(out.shape.join(','), '1,2,64');
  } finally {
    arena.dispose();
    layer.dispose();
  }
});

test('a decode layer checks a frozen device input once and an unfrozen one on every call; exact either way', { skip }, () => {
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const config = { sinkSize: 8, windowSize: 16, heavySize: 32, pqGroupFactor: 2, pqBits: 4, initOffset: 8, kmeansIters: 0 };
  const options = { shape, config, capacity: 1300, kvDType: 'f32' as const };
  const cpu = new CpuDecodeLayer(options);
  const gpu = new CudaDecodeLayer(options);
  const arena = DeviceArena.allocate({ q: 4 * 64 * 4, k: 2 * 64 * 4, v: 2 * 64 * 4 });
  try {
    const rng = new SplitMix32(21);
    const keys = intTensor(rng, 'f32', [1, 2, 1200, 64], -2, 2);
    const values = intTensor(rng, 'f32', [1, 2, 1200, 64], -3, 3);
    cpu.prefill(keys, values);
    gpu.prefill(keys, values);
    const q = deviceTensor('f32', [1, 4, 1, 64], arena.slices.q.ptr);
    const k = deviceTensor('f32', [1, 2, 1, 64], arena.slices.k.ptr);
    const v = deviceTensor('f32', [1, 2, 1, 64], arena.slices.v.ptr);
    // One step on the device tensors given, with fresh values in their memory, against the CPU layer.
    const step = (s: number, inputs: { query: typeof q; key: typeof k; value: typeof v }): void => {
      const host = { query: intTensor(rng, 'f32', [1, 4, 1, 64], -1, 1), key: intTensor(rng, 'f32', [1, 2, 1, 64], -2, 2), value: intTensor(rng, 'f32', [1, 2, 1, 64], -3, 3) };
      copies.fromHost(arena.slices.q, host.query.data);
      copies.fromHost(arena.slices.k, host.key.data);
      copies.fromHost(arena.slices.v, host.value.data);
      const want = cpu.stepToHost(host).toFloat32();
      gpu.step(inputs);
      assert.ok(worstRowError(gpu.outputToHost().toFloat32(), want, 64) <= 1e-5, `step ${s}`);
      assert.deepEqual(gpu.listsToHost().sparseList, cpu.listsToHost().sparseList, `step ${s} lists`);
    };
    for (let s = 0; s < 4; s++) step(s, { query: q, key: k, value: v });
    // Known as a key or value, a tensor is still no query; a query is no key.
    assert.throws(() => gpu.step({ query: k, key: k, value: v }), (e: unknown) => e instanceof ShapeError && /^query/.test((e as Error).message));
    assert.throws(() => gpu.step({ query: q, key: q, value: v }), (e: unknown) => e instanceof ShapeError && /^key/.test((e as Error).message));
    // Not frozen: it can change between calls, so it is checked every time.
    const loose = { ...v, shape: [1, 2, 1, 64] };
    step(4, { query: q, key: k, value: loose });
    loose.shape[1] = 4;
    assert.throws(() => gpu.step({ query: q, key: k, value: loose }), (e: unknown) => e instanceof ShapeError && /^value/.test((e as Error).message));
    // The refused calls left nothing behind.
    for (let s = 5; s < 8; s++) step(s, { query: q, key: k, value: v });
  } finally {
    arena.dispose();
    gpu.dispose();
    cpu.dispose();
  }
});

test('creating, stepping and disposing decode layers and stacks leaks no device memory', { skip }, () => {
  const ctx = CudaContext.primary();
  ctx.synchronize();
  const before = allocationStats();
  const shape = { batch: 1, heads: 4, kvHeads: 2, headDim: 64 };
  const rng = new SplitMix32(1);
  for (let i = 0; i < 3; i++) {
    const stack = new CudaDecodeStack({ shape, config: { pqBits: 4 }, capacity: 1200, numLayers: 2, attention: i === 1 ? 'dense' : 'sparse' });
    const kv = () => intTensor(rng, 'f32', [1, 2, 1000, 64], -2, 2);
    stack.prefill([kv(), kv()], [kv(), kv()]);
    const inputs = () => ({ query: intTensor(rng, 'f32', [1, 4, 1, 64], -1, 1), key: intTensor(rng, 'f32', [1, 2, 1, 64], -1, 1), value: intTensor(rng, 'f32', [1, 2, 1, 64], -1, 1) });
    for (let s = 0; s < 5; s++) stack.step([inputs(), inputs()]);
    stack.synchronize();
    stack.dispose();
  }
  assert.deepEqual(allocationStats(), before);
});
