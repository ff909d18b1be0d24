/**
 * One layer's decode step (SPEC §2 "decode step"): append the new key/value row to the K/V cache,
 * select with the PQ index, attend over the selection. Two backends behind one interface:
 *   CpuDecodeLayer  — the oracle's functions in sequence (float64 attention);
 *   CudaDecodeLayer — src/attention/cuda-decode-layer.ts, the step captured as one CUDA graph.
 * `attention: 'dense'` layers skip the index and attend to every position: the baseline the sparse
 * step is measured against.
 */
import { ConfigError, DisposedError, ShapeError, StateError } from '../errors.js';
import type { BuildOptions } from '../pq/cache.js';
import { CpuPQCache } from '../pq/cache.js';
import { type CacheShape, type Layout, type PQConfig, makeLayout } from '../pq/config.js';
import { checkBuilt, checkCapacity, checkCapacityOption, checkKeys, checkQuery, checkStepKey } from '../pq/validate.js';
import { type FloatDType, FLOAT_DTYPES, readFloat } from '../tensor/dtype.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { attendCpu, denseAttentionCpu } from './cpu-attention.js';

export type AttentionMode = 'sparse' | 'dense';

export interface DecodeLayerOptions {
  readonly shape: CacheShape;
  readonly config?: Partial<PQConfig>;
  /** Positions reserved per (b, kv-head) in the K/V cache and the index. */
  readonly capacity: number;
  /** Element type of the K/V cache and of the attention output (default f32). */
  readonly kvDType?: FloatDType;
  /** sparse (default): PQ selection then attention over the list; dense: every position. */
  readonly attention?: AttentionMode;
}

/** The inputs of one step: query [B, H, 1, D], key and value [B, Hkv, 1, D]. */
export interface StepInputs<T> {
  readonly query: T;
  readonly key: T;
  readonly value: T;
}

export interface DecodeLayer {
  readonly backend: 'cpu' | 'cuda';
  readonly mode: AttentionMode;
  readonly shape: CacheShape;
  readonly capacity: number;
  readonly kvDType: FloatDType;
  readonly seqLen: number;
  /** Fill the K/V cache with keys/values [B, Hkv, sk, D] and (sparse) build the index on the keys. */
  prefill(keys: HostTensor, values: HostTensor, options?: BuildOptions): void;
  /** One decode step; the attention output [B, H, D] on the host (the K/V dtype). */
  stepToHost(inputs: StepInputs<HostTensor>): HostTensor;
  /** The last step's sparse lists on the host (sparse layers). */
  listsToHost(): { sparseList: Int32Array; sparseLen: Int32Array; listCapacity: number };
  dispose(): void;
}

export function resolveLayerOptions(options: DecodeLayerOptions): { mode: AttentionMode; kvDType: FloatDType; capacity: number } {
  const mode = options.attention ?? 'sparse';
  if (mode !== 'sparse' && mode !== 'dense') throw new ConfigError('attention', "'sparse' or 'dense'", mode);
  const kvDType = options.kvDType ?? 'f32';
  if (!FLOAT_DTYPES.includes(kvDType)) throw new ConfigError('kvDType', FLOAT_DTYPES.join(', '), kvDType);
  return { mode, kvDType, capacity: checkCapacityOption(options.capacity) };
}

/** Keys and values of a prefill: [B, Hkv, sk, D] each, the same sk; returns sk. */
export function checkPrefill(layout: Layout, capacity: number, keys: HostTensor, values: HostTensor): number {
  const sk = checkKeys(layout, keys, 'keys', 1);
  const sv = checkKeys(layout, values, 'values', 1);
  if (sv !== sk) throw new ShapeError('values', `[B, Hkv, ${sk}, D] (as many positions as keys)`, values.shape);
  checkCapacity('keys', capacity, sk);
  return sk;
}

/** A step's host inputs: query [B,H,1,D], key and value [B,Hkv,1,D], float, finite. */
export function checkStepInputs(layout: Layout, inputs: StepInputs<HostTensor>): void {
  checkQuery(layout, inputs.query, 'query');
  checkStepKey(layout, inputs.key, 'key');
  checkStepKey(layout, inputs.value, 'value');
}

/** Round to a dtype and back to f32 (what storing in that dtype does). */
function roundedTo(dtype: FloatDType, data: Float32Array): Float32Array {
  if (dtype === 'f32') return data;
  return HostTensor.fromNumbers(dtype, [data.length], data).toFloat32();
}

/** The CPU decode layer: the reference for CudaDecodeLayer. */
export class CpuDecodeLayer implements DecodeLayer {
  readonly backend = 'cpu' as const;
  readonly mode: AttentionMode;
  readonly shape: CacheShape;
  readonly capacity: number;
  readonly kvDType: FloatDType;
  /** The validated shape and config, checked once. */
  private readonly layout: Layout;
  private readonly pq: CpuPQCache | undefined;
  private readonly keys: Float32Array;
  private readonly values: Float32Array;
  private length = 0;
  private filled = false;
  private lastLists: { sparseList: Int32Array; sparseLen: Int32Array; listCapacity: number } | undefined;
  private disposed = false;

  constructor(options: DecodeLayerOptions) {
    const o = resolveLayerOptions(options);
    this.mode = o.mode;
    this.kvDType = o.kvDType;
    this.capacity = o.capacity;
    this.layout = makeLayout(options.shape, options.config);
    this.shape = this.layout.shape;
    this.pq = this.mode === 'sparse' ? new CpuPQCache({ shape: options.shape, config: options.config, capacity: this.capacity }) : undefined;
    const n = this.shape.batch * this.shape.kvHeads * this.capacity * this.shape.headDim;
    this.keys = new Float32Array(n);
    this.values = new Float32Array(n);
  }

  get seqLen(): number {
    return this.length;
  }

  private live(): void {
    if (this.disposed) throw new DisposedError('CpuDecodeLayer');
  }

  /** Write rows [B, Hkv, n, D] at positions from … from+n−1. */
  private writeRows(target: Float32Array, rows: Float32Array, from: number, n: number): void {
    const { batch: B, kvHeads: Hkv, headDim: D } = this.shape;
    const r = roundedTo(this.kvDType, rows);
    for (let bk = 0; bk < B * Hkv; bk++) target.set(r.subarray(bk * n * D, (bk + 1) * n * D), (bk * this.capacity + from) * D);
  }

  prefill(keys: HostTensor, values: HostTensor, options?: BuildOptions): void {
    this.live();
    const sk = checkPrefill(this.layout, this.capacity, keys, values);
    this.pq?.build(keys, options);
    this.writeRows(this.keys, keys.toFloat32(), 0, sk);
    this.writeRows(this.values, values.toFloat32(), 0, sk);
    this.length = sk;
    this.filled = true;
  }

  stepToHost(inputs: StepInputs<HostTensor>): HostTensor {
    this.live();
    checkBuilt('step', this.filled);
    checkStepInputs(this.layout, inputs);
    checkCapacity('key', this.capacity, this.length + 1);
    const selection = this.pq?.stepToHost(inputs.query, inputs.key);
    this.writeRows(this.keys, inputs.key.toFloat32(), this.length, 1);
    this.writeRows(this.values, inputs.value.toFloat32(), this.length, 1);
    this.length += 1;
    const attention = {
      shape: this.shape,
      query: inputs.query.toFloat32(),
      keys: this.keys,
      values: this.values,
      seqStride: this.capacity,
      seqLen: this.length,
    };
    const { batch: B, heads: H, headDim: D } = this.shape;
    let out: Float32Array;
    if (selection === undefined) {
      out = denseAttentionCpu(attention);
    } else {
      const sk = this.length;
      const wdtype = selection.weights.dtype as FloatDType;
      const wdata = selection.weights.data as Float32Array | Uint16Array;
      const listCapacity = selection.sparseList.shape[2];
      const sparseList = selection.sparseList.data as Int32Array;
      const sparseLen = selection.sparseLen.data as Int32Array;
      this.lastLists = { sparseList, sparseLen, listCapacity };
      out = attendCpu(attention, { sparseList, sparseLen, listCapacity, weight: (row, p) => readFloat(wdtype, wdata, row * sk + p) });
    }
    return HostTensor.fromNumbers(this.kvDType, [B, H, D], out);
  }

  listsToHost(): { sparseList: Int32Array; sparseLen: Int32Array; listCapacity: number } {
    this.live();
    if (this.lastLists === undefined) throw new StateError('listsToHost', 'a sparse layer after a step', `a ${this.mode} layer with ${this.length} positions`);
    return this.lastLists;
  }

  /** The K/V cache rows 0 … sk−1 (f32 [B, Hkv, sk, D]). */
  kvToHost(): { keys: Float32Array; values: Float32Array } {
    const { batch: B, kvHeads: Hkv, headDim: D } = this.shape;
    const n = this.length;
    const take = (src: Float32Array): Float32Array => {
      const out = new Float32Array(B * Hkv * n * D);
      for (let bk = 0; bk < B * Hkv; bk++) out.set(src.subarray(bk * this.capacity * D, (bk * this.capacity + n) * D), bk * n * D);
      return out;
    };
    return { keys: take(this.keys), values: take(this.values) };
  }

  dispose(): void {
    this.pq?.dispose();
    this.disposed = true;
  }
}
