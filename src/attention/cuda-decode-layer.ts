/**
 * The decode step on the GPU: one layer's K/V append → PQ select → sparse attention (or K/V append
 * → dense attention), captured as one CUDA graph per launch plan and input binding, and replayed.
 * sk lives on the device (the PQ cache's two-slot state, or the layer's own for dense layers), so a
 * step needs no argument updates, no copies and no sync. CudaDecodeStack captures many layers in
 * one graph.
 *
 * Kernels per step: pq_kv_append_<T>, the PQ step (src/pq/cuda-cache.ts, one kernel on the pair
 * path), pq_attend_sparse_<T>; dense layers: pq_kv_append_<T>, pq_attend_dense_<T>. On sm_90 a
 * sparse step's kernels are launched behind one another by programmatic dependent launch
 * (`overlapLaunches`; bench/NOTES.md session 41).
 */
import { CudaContext } from '../cuda/context.js';
import type { DevicePtr } from '../cuda/driver.js';
import { GraphCache } from '../cuda/graph.js';
import { Owned } from '../cuda/owned.js';
import { CompletionSignal } from '../cuda/signal.js';
import { DeviceArena, PinnedBuffer, copies } from '../cuda/memory.js';
import { Event, Stream } from '../cuda/stream.js';
import { ConfigError, DisposedError, StateError } from '../errors.js';
import { DTYPE_CODE, throwDeviceStatus } from '../pq/kernels.js';
import type { BuildOptions } from '../pq/cache.js';
import { type Layout, makeLayout } from '../pq/config.js';
import { CudaPQCache, type StepBinding } from '../pq/cuda-cache.js';
import type { PQIndexState } from '../pq/index-state.js';
import { fixedStepKey } from '../pq/step-key.js';
import { type StepInput, StepRowsReader } from '../pq/step-rows.js';
import { checkBuilt, checkCapacity, checkQuery, checkStepKey } from '../pq/validate.js';
import { type DeviceTensor, deviceTensor } from '../tensor/device-tensor.js';
import { BYTES_PER_ELEMENT, type FloatDType } from '../tensor/dtype.js';
import { HostTensor, expectedShape } from '../tensor/host-tensor.js';
import { kvRowsOf } from './kv-layout.js';
import {
  type AttendPlan, AttendScratch, CudaAttention, KVCache, type KVCacheView, kvRowsToHost, uploadKVRows,
} from './cuda-attention.js';
import {
  type AttentionMode, type DecodeLayer, type DecodeLayerOptions, type StepInputs, checkPrefill, resolveLayerOptions,
} from './decode-layer.js';

export interface CudaDecodeLayerOptions extends DecodeLayerOptions {
  /** Device ordinal (default 0). */
  readonly device?: number;
  /** Run on this stream (CudaDecodeStack passes one stream to all its layers). */
  readonly stream?: Stream;
  /** A K/V cache in the caller's device memory (dtype = kvDType, stride ≥ capacity); default: the layer allocates one. */
  readonly kv?: KVCacheView;
  /** Blocks per query head of the PQ pair path (tuning; see CudaPQCacheOptions). */
  readonly cluster?: number;
  /**
   * Sparse layers on sm_90: a step's kernels start behind one another by programmatic dependent
   * launch: the select step while the K/V append runs (it reads nothing the append writes, and waits
   * for it before it ends), the attention while the step runs (its blocks are placed and load the
   * query, then wait for the step), and in a stack the next layer's K/V append while this attention
   * runs (placed only: it waits for the attention before anything else). False launches each after
   * the one before ends, as before sm_90 (for comparisons). Default true.
   */
  readonly overlapLaunches?: boolean;
}

type Input = HostTensor | DeviceTensor;
/** A step's inputs as the kernels read them: device tensors by their rows, host ones from the pinned staging buffers. */
export interface BoundInputs {
  readonly query: StepInput;
  readonly key: StepInput;
  readonly value: StepInput;
  /** Some input came from the host through the staging buffers. */
  readonly staged: boolean;
}
/** One prepared step: its graph key (signature, and the input pointers with their rows' graph keys) and the launches that make it. */
export interface PreparedStep {
  readonly signature: string;
  readonly pointers: readonly DevicePtr[];
  /** Enqueues the step's kernels (inside a capture); a function value, so it can be passed as is. */
  readonly record: () => void;
}

/** The inputs' dtypes in a graph key (made once per binding and dtypes: prepare() keeps the keys). */
function dtypeText(io: BoundInputs): string {
  return `${io.query.dtype}/${io.key.dtype}/${io.value.dtype}`;
}

/** Bytes a staged input occupies: its size rounded up to 256 (each region 256-byte aligned). */
function stagingBytes(bytes: number): number {
  return Math.ceil(bytes / 256) * 256;
}

/** Graphs kept per layer before the cache is cleared (plans and bindings rarely change). */
const MAX_GRAPHS = 16;

export class CudaDecodeLayer implements DecodeLayer {
  readonly backend = 'cuda' as const;
  readonly mode: AttentionMode;
  readonly shape: DecodeLayerOptions['shape'];
  readonly capacity: number;
  readonly kvDType: FloatDType;
  /** The output's device view (a fixed buffer): made on first use. */
  private outputView: DeviceTensor | undefined;
  readonly context: CudaContext;
  readonly stream: Stream;
  /** The PQ index (sparse layers). */
  readonly pq: CudaPQCache | undefined;
  readonly kv: KVCacheView;
  /** The validated shape and config (checked once, used by every step's input checks). */
  private readonly layout: Layout;
  /** Every buffer, event, the PQ cache and (when it made them) the stream and K/V cache; not the scratch, replaced on re-plans. */
  private readonly owned = new Owned();
  private readonly attention: CudaAttention;
  private readonly arena: DeviceArena<'out' | 'seqState'>;
  private readonly status: PinnedBuffer;
  private readonly statusView: Int32Array;
  private readonly staging: PinnedBuffer;
  private readonly stagingConsumed: Event;
  /** synchronize() after a step's launch: sooner than cuStreamSynchronize (src/cuda/signal.ts). */
  private readonly completion: CompletionSignal;
  private stagingPending = false;
  private scratch: AttendScratch | undefined;
  /**
   * Programmatic dependent launch in a sparse step (overlapLaunches on sm_90, where the attention plan
   * merges in clusters): the K/V append is placed behind the kernel before it, the select step
   * starts behind the append, the attention behind the step.
   */
  readonly overlapsLaunches: boolean;
  private readonly graphs = new GraphCache(MAX_GRAPHS);
  /**
   * Per-step host work made once (a model steps every layer every token): device queries, and new
   * keys and values, checked with their rows once per frozen tensor (none of its fields can change);
   * prepare()'s graph keys by the inputs' dtypes, per PQ step binding (sparse) or per slot of the
   * dense plan (cleared with it).
   */
  private readonly queries: StepRowsReader;
  private readonly newKV: StepRowsReader;
  private readonly sparseKeys = new WeakMap<StepBinding, (string | undefined)[]>();
  private denseKeys: [(string | undefined)[], (string | undefined)[]] = [[], []];
  /** Dense layers: sk and the slot of the device state holding it. */
  private denseSeqLen = 0;
  private denseSlot = 0;
  private filled = false;
  private disposed = false;

  constructor(options: CudaDecodeLayerOptions) {
    const o = resolveLayerOptions(options);
    this.mode = o.mode;
    this.kvDType = o.kvDType;
    this.capacity = o.capacity;
    const layout = makeLayout(options.shape, options.config);
    this.layout = layout;
    this.shape = layout.shape;
    this.context = CudaContext.primary(options.device ?? 0);
    this.attention = new CudaAttention(this.context, this.shape);
    if (options.kv !== undefined) {
      if (options.kv.dtype !== this.kvDType) throw new ConfigError('kv.dtype', `the layer's kvDType ${this.kvDType}`, options.kv.dtype);
      if (!Number.isSafeInteger(options.kv.positions) || options.kv.positions < this.capacity) throw new ConfigError('kv.positions', `an integer of at least capacity = ${this.capacity}`, options.kv.positions);
      kvRowsOf(options.kv, this.shape); // its strides, checked here rather than at the first step
      const misaligned = [options.kv.keys, options.kv.values].find((p) => p % 16n !== 0n);
      if (misaligned !== undefined) throw new ConfigError('kv.keys / kv.values', '16-byte aligned device pointers', `0x${misaligned.toString(16)}`);
    }
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = this.shape;
    this.queries = new StepRowsReader(B, H, D, expectedShape([B, H, 1, D], `[B=${B}, ${H}, 1, D=${D}]`));
    this.newKV = new StepRowsReader(B, Hkv, D, expectedShape([B, Hkv, 1, D], `[B=${B}, ${Hkv}, 1, D=${D}]`));
    const owned = this.owned;
    try {
      this.stream = options.stream ?? owned.add(new Stream());
      this.kv = options.kv ?? owned.add(new KVCache(this.shape, this.capacity, this.kvDType));
      this.arena = owned.add(DeviceArena.allocate({ out: B * H * D * BYTES_PER_ELEMENT[this.kvDType], seqState: 16 }));
      this.status = owned.add(new PinnedBuffer(16));
      this.statusView = new Int32Array(this.status.arrayBuffer, 0, 1);
      this.statusView[0] = 0;
      // Staging for host inputs: query, key and value regions of 4 bytes per element at most,
      // each starting on a 256-byte boundary (bind() lays them out the same way).
      this.staging = owned.add(new PinnedBuffer(stagingBytes(4 * D * B * H) + 2 * stagingBytes(4 * D * B * Hkv)));
      this.stagingConsumed = owned.add(new Event({ timing: false }));
      this.completion = owned.add(new CompletionSignal());
      this.pq = this.mode === 'sparse'
        ? owned.add(new CudaPQCache({ shape: options.shape, config: options.config, capacity: this.capacity, device: options.device, stream: this.stream, cluster: options.cluster }))
        : undefined;
      if (this.pq) this.scratch = new AttendScratch(this.attention.sparsePlan(this.kvDType, this.pq.layout.listCapacity), D, this.stream);
      this.overlapsLaunches = (options.overlapLaunches ?? true) && this.scratch?.plan.merge === 'cluster';
      copies.fill8Async(this.arena.buffer, 0, this.arena.bytes, this.stream);
      this.stream.synchronize();
    } catch (e) {
      this.scratch?.dispose();
      owned.dispose();
      throw e;
    }
  }

  get seqLen(): number {
    return this.pq ? this.pq.seqLen : this.denseSeqLen;
  }

  private live(): void {
    if (this.disposed) throw new DisposedError('CudaDecodeLayer');
  }

  /** Fill the K/V cache (positions 0 … sk−1) and, for sparse layers, build the index on the keys. */
  prefill(keys: HostTensor, values: HostTensor, options?: BuildOptions): void {
    this.live();
    const sk = checkPrefill(this.layout, this.capacity, keys, values);
    this.stream.synchronize();
    this.filled = false; // a failure below leaves no half-filled layer behind
    uploadKVRows(this.kv, this.shape, keys, values);
    if (this.pq) {
      this.pq.build(keys, options);
    } else {
      copies.fromHost(this.arena.slices.seqState, new Int32Array([sk, sk, 0, 0]));
      this.denseSeqLen = sk;
      this.denseSlot = 0;
    }
    this.filled = true;
  }

  /**
   * Use K/V rows 0 … seqLen−1 that are already in the cache (written by the caller, e.g. an
   * engine's own prefill into an external cache). Sparse layers take `index` (built elsewhere or
   * loaded; its seqLen must be seqLen) or, without one, build it on the GPU from the cached keys
   * where they lie (`options`: progress).
   */
  adoptPrefilled(seqLen: number, index?: PQIndexState, options?: BuildOptions): void {
    this.live();
    checkCapacity('seqLen', this.capacity, seqLen);
    if (this.pq) {
      if (index === undefined) {
        this.stream.synchronize();
        this.pq.build(this.cachedKeys(seqLen), options);
      } else {
        if (index.seqLen !== seqLen) throw new StateError('adoptPrefilled', `an index of ${seqLen} positions`, `${index.seqLen} positions`);
        this.pq.uploadState(index);
      }
    } else {
      this.stream.synchronize();
      copies.fromHost(this.arena.slices.seqState, new Int32Array([seqLen, seqLen, 0, 0]));
      this.denseSeqLen = seqLen;
      this.denseSlot = 0;
    }
    this.filled = true;
  }

  /** Positions 0 … seqLen−1 of the K cache as a device tensor [B, Hkv, seqLen, D] at the cache's strides. */
  private cachedKeys(seqLen: number): DeviceTensor {
    const { batch: B, kvHeads: Hkv, headDim: D } = this.shape;
    const rows = kvRowsOf(this.kv, this.shape);
    return deviceTensor(this.kv.dtype, [B, Hkv, seqLen, D], this.kv.keys, [rows.batch, rows.head, rows.position, 1]);
  }

  /** The attention output [B, H, D] of the last step (valid once the stream reaches it). */
  output(): DeviceTensor {
    if (this.outputView === undefined) {
      const { batch: B, heads: H, headDim: D } = this.shape;
      this.outputView = deviceTensor(this.kvDType, [B, H, D], this.arena.slices.out.ptr);
    }
    return this.outputView;
  }

  /** Enqueue one step (one graph launch); returns the output's device view. */
  step(inputs: StepInputs<Input>): DeviceTensor {
    const bound = this.bind(inputs);
    const prepared = this.prepare(bound);
    const graph = this.graphs.get(prepared.signature, prepared.pointers, this.stream, prepared.record);
    graph.launch(this.stream);
    this.completion.launched();
    this.launched(bound);
    return this.output();
  }

  stepToHost(inputs: StepInputs<HostTensor>): HostTensor {
    this.step(inputs);
    return this.outputToHost();
  }

  /** Copy the last output to the host (synchronizes). */
  outputToHost(): HostTensor {
    const { batch: B, heads: H, headDim: D } = this.shape;
    this.synchronize();
    const n = B * H * D;
    const data = this.kvDType === 'f32' ? new Float32Array(n) : new Uint16Array(n);
    copies.toHost(data, this.arena.slices.out);
    return new HostTensor(this.kvDType, [B, H, D], data);
  }

  listsToHost(): { sparseList: Int32Array; sparseLen: Int32Array; listCapacity: number } {
    this.live();
    if (this.pq === undefined) throw new StateError('listsToHost', 'a sparse layer', 'a dense layer');
    return { ...this.pq.listsToHost(), listCapacity: this.pq.layout.listCapacity };
  }

  /** The K/V cache rows 0 … sk−1 on the host (f32 [B, Hkv, sk, D]). Synchronizes. */
  kvToHost(): { keys: Float32Array; values: Float32Array } {
    this.synchronize();
    return kvRowsToHost(this.kv, this.shape, this.seqLen);
  }

  /** Wait for the stream; throw DeviceInputError if a kernel flagged bad device inputs. */
  synchronize(): void {
    this.live();
    this.completion.synchronize(this.stream);
    this.checkStatus();
  }

  /** Throw for what this layer's kernels flagged (the PQ cache's word, then the layer's own). After a sync. */
  checkStatus(): void {
    this.pq?.checkStatus();
    const st = this.statusView[0];
    if (st === 0) return;
    this.statusView[0] = 0;
    throwDeviceStatus(st, this.seqLen);
  }


  // ---- the pieces CudaDecodeStack composes ---------------------------------------------------

  /**
   * Validate the inputs and give each the pointer and rows the kernels read: device tensors where
   * they are, at their row strides (a fused QKV projection output's parts too: src/pq/step-rows.ts),
   * host tensors through the pinned staging buffers (mapped into the device's address space).
   */
  bind(inputs: StepInputs<Input>): BoundInputs {
    this.live();
    checkBuilt('step', this.filled);
    checkCapacity('key', this.capacity, this.seqLen + 1);
    const layout = this.layout;
    const staged = !('device' in inputs.query) || !('device' in inputs.key) || !('device' in inputs.value);
    // Host inputs: shape, dtype and finite values, before anything is staged.
    if (!('device' in inputs.query)) checkQuery(layout, inputs.query, 'query');
    if (!('device' in inputs.key)) checkStepKey(layout, inputs.key, 'key');
    if (!('device' in inputs.value)) checkStepKey(layout, inputs.value, 'value');
    if (staged && this.stagingPending) {
      this.stagingConsumed.synchronize(); // the previous step may still read the staging buffers
      this.stagingPending = false;
    }
    let offset = 0;
    const stage = (t: HostTensor, reader: StepRowsReader): StepInput => {
      const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      new Uint8Array(this.staging.arrayBuffer, offset, bytes.length).set(bytes);
      const ptr = this.staging.ptr + BigInt(offset);
      offset += stagingBytes(bytes.length);
      return { ptr, dtype: t.dtype as FloatDType, rows: reader.contiguous };
    };
    const bindOne = (t: Input, argument: string, reader: StepRowsReader): StepInput =>
      'device' in t ? { ptr: t.ptr, dtype: t.dtype as FloatDType, rows: reader.rowsOf(t, argument) } : stage(t, reader);
    return {
      query: bindOne(inputs.query, 'query', this.queries),
      key: bindOne(inputs.key, 'key', this.newKV),
      value: bindOne(inputs.value, 'value', this.newKV),
      staged,
    };
  }

  /** Plan the step for these inputs: the graph key and the kernel launches (recorded inside a capture). */
  prepare(io: BoundInputs): PreparedStep {
    const dtypeIndex = DTYPE_CODE[io.query.dtype] + 3 * DTYPE_CODE[io.key.dtype] + 9 * DTYPE_CODE[io.value.dtype];
    const pointers = [io.query.ptr, io.query.rows.graphKey, io.key.ptr, io.key.rows.graphKey, io.value.ptr, io.value.rows.graphKey];
    const s = this.arena.slices;
    const out = s.out.ptr;
    const status = this.status.ptr;
    if (this.pq) {
      const pq = this.pq;
      const binding = pq.prepareStep(io.query.dtype, true);
      const scratch = this.scratch as AttendScratch;
      let keys = this.sparseKeys.get(binding);
      if (keys === undefined) this.sparseKeys.set(binding, (keys = []));
      return {
        signature: (keys[dtypeIndex] ??= `sparse/${binding.signature}/${dtypeText(io)}`),
        pointers,
        record: () => {
          const sel = pq.outputs(); // views of fixed buffers: built only when capturing
          this.attention.launchKVAppend(this.kv, io.key, io.value, binding.seqRead, 0n, status, this.stream, this.overlapsLaunches);
          pq.recordStep(io.query, fixedStepKey(io.key), this.overlapsLaunches);
          this.attention.launchSparse(scratch.plan, scratch, {
            query: io.query, kv: this.kv, out, seqLen: { ptr: binding.seqWrite, add: 0 }, status,
            sparseList: sel.sparseList.ptr, sparseLen: sel.sparseLen.ptr, listStride: sel.sparseList.strides[1],
            weights: sel.weights.ptr, weightsDType: sel.weights.dtype as FloatDType, weightsStride: sel.weights.strides[1],
          }, this.stream, this.overlapsLaunches);
        },
      };
    }
    const plan = this.densePlanFor(this.denseSeqLen + 1);
    const scratch = this.scratch as AttendScratch;
    const slot = this.denseSlot;
    const seqRead = s.seqState.ptr + BigInt(4 * slot);
    const seqWrite = s.seqState.ptr + BigInt(4 * (slot ^ 1));
    return {
      signature: (this.denseKeys[slot as 0 | 1][dtypeIndex] ??= `dense/${slot}/${plan.splits}/${plan.chunk}/${scratch.partial}/${dtypeText(io)}`),
      pointers,
      record: () => {
        this.attention.launchKVAppend(this.kv, io.key, io.value, seqRead, seqWrite, status, this.stream);
        this.attention.launchDense(plan, scratch, { query: io.query, kv: this.kv, out, seqLen: { ptr: seqWrite, add: 0 }, status }, this.stream);
      },
    };
  }

  /** After the graph holding the step was launched: staging bookkeeping, sk + 1. */
  launched(io: BoundInputs): void {
    if (io.staged) {
      this.stagingConsumed.record(this.stream);
      this.stagingPending = true;
    }
    if (this.pq) {
      this.pq.commitStep(true);
    } else {
      this.denseSeqLen += 1;
      this.denseSlot ^= 1;
    }
  }

  /** The dense plan covering sk; re-planned (with new scratch) when sk outgrows it. */
  private densePlanFor(sk: number): AttendPlan {
    const current = this.scratch?.plan;
    if (current !== undefined && sk <= current.maxLen) return current;
    // Cover 1/8 more than sk, so that growth re-plans every sk/8 steps rather than every step.
    const maxLen = Math.min(this.capacity, Math.ceil((sk * 9) / 8 / 1024) * 1024);
    const plan = this.attention.densePlan(this.kvDType, Math.max(maxLen, sk));
    this.graphs.clear();
    this.denseKeys = [[], []];
    this.stream.synchronize();
    this.scratch?.dispose();
    this.scratch = new AttendScratch(plan, this.shape.headDim, this.stream);
    return plan;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.owned.disposeAfter(this.stream, this.graphs, this.scratch);
  }
}
