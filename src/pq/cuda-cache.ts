/**
 * The CUDA backend of one layer's PQ cache: device-resident centroids and uint8 codes with
 * capacity reserved up front, and the decode step captured once per launch plan in a CUDA graph
 * and replayed. Nothing is allocated, copied or synchronized in the step unless the caller asks for
 * host results.
 *
 * Two paths (src/pq/cuda-plan.ts decides):
 *   M ≤ 2, C^M ≤ 16384: the pair path — one kernel per step that also appends the new key when
 *     W ≥ 1 (else pq_append runs first), driven by a per-kv-head table of code-pair counts kept
 *     exact on the device. Where C^M ≤ 4096 the row kernel runs (kernels/select_row.cu): scanning
 *     every code where that is 16 per thread, else in bucket mode where its bitmaps fit (any number
 *     of heads): the heavy hitters are gathered from per-kv-head position buckets
 *     (positions grouped by code pair: sorted by pq_bucket_rebuild for a new index, the positions
 *     appended since merged in by pq_bucket_merge before they outgrow the kernel's tail); else the
 *     pair clusters (kernels/select_pairs.cu);
 *   otherwise: pq_append (kernels/append.cu) then the general select (kernels/select.cu).
 *
 * Device layout (one arena):
 *   centroids [B, Hkv, M, C, cstride] f32, cstride = roundUp(cdim, 4) for 16-byte rows
 *   codes     [B, Hkv, capPad, M] u8, capPad = roundUp(capacity, 16)
 *   pairCount [B, Hkv, C^M] u32 and readers [B, Hkv] (pair path)
 *   bucketOffsets [B, Hkv, C^M + 4] i32 and buckets [B, Hkv, capPad] i32 (bucket mode)
 *   weights   [B, H, capPad] (f32 or 16-bit), rows updated incrementally by the kernel
 *   seqState  [sk, sk, bucketEnd, 0]: two slots alternating by step parity — a step reads slot
 *             `seqSlot` and writes sk + 1 to the other, so no block ever reads a slot being
 *             written — and where the buckets end (written by pq_bucket_rebuild)
 * The status word (non-finite device inputs) lives in pinned host memory that the kernels write
 * through unified addressing, so checking it after a sync costs no copy.
 *
 * Resident steps (option `resident`): where the row kernel runs, its resident form is launched once
 * on a stream of its own and serves each step on a doorbell ring (src/cuda/resident.ts), so a step
 * costs no launch; it is stopped before any other work on the index, and after `idleMs` without a step.
 */
import { CudaContext } from '../cuda/context.js';
import { CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_HOST, type DevicePtr, check, driver } from '../cuda/driver.js';
import { GraphCache, type GraphExec } from '../cuda/graph.js';
import { type ArgValues, LaunchArgs, type LaunchShape, launch } from '../cuda/launch.js';
import { DeviceArena, DeviceBuffer, PinnedBuffer, copies } from '../cuda/memory.js';
import type { Kernel } from '../cuda/module.js';
import { Owned } from '../cuda/owned.js';
import { ResidentLaunch, positiveMs } from '../cuda/resident.js';
import { StepChain } from '../cuda/step-chain.js';
import { CompletionSignal } from '../cuda/signal.js';
import { Event, Stream } from '../cuda/stream.js';
import koffi from 'koffi';
import { ConfigError, DeviceInputError, DisposedError, ShapeError, StateError } from '../errors.js';
import { type DeviceTensor, deviceTensor, isFrozenDeviceTensor } from '../tensor/device-tensor.js';
import { BYTES_PER_ELEMENT, type FloatDType } from '../tensor/dtype.js';
import { HostTensor, expectedShape } from '../tensor/host-tensor.js';
import { type BuildOptions, type PQCache, type PQCacheOptions, type SelectResult, hostSelectResult } from './cache.js';
import { type Layout, fullAttentionThreshold, makeLayout, sameLayout } from './config.js';
import { buildIndexCpu } from './cpu-build.js';
import { BuildWorkspace, type DeviceBuildTarget, buildOnDevice, deviceBuildSupported, deviceIndexStrides, deviceKeysToHost, readBuildTarget } from './cuda-build.js';
import {
  BUCKET_MAX_TAIL, BUCKET_MIN_SPAN_MANY_HEADS, type BucketPlan, type PairsPlan, ROW_MAX_PAIRS, ROW_THREADS, type RowPlan, type SelectPlan, SELECT_THREADS, type StepKernelChoice,
  cudaLayoutProblem, eligibleSpan, maxSlicesFor, pairTableSize, planBucket, planPairs, planRow, planSelect, residentCacheBytes, residentRowKernelName, selectKernelName, stepBucketKernelName,
  stepPairsKernelName, stepRowKernelName,
} from './cuda-plan.js';
import { type PQIndexState, codeOffset, emptyIndexState } from './index-state.js';
import { DTYPE_CODE, loadKernels, loadStepKernels, throwDeviceStatus } from './kernels.js';
import { encodeIndex } from './persist.js';
import { type StepKey, StepKeyReader, type StepKeyRows, sameStepKey, stepKeyBase } from './step-key.js';
import { type StepInput, StepRowsReader, type StepRows, sameStepInput } from './step-rows.js';
import { checkBuilt, checkCapacity, checkCapacityOption, checkDeviceKeys, checkKeys, checkQuery, checkStepKey } from './validate.js';


export interface CudaPQCacheOptions extends PQCacheOptions {
  /** Device ordinal (default 0). */
  readonly device?: number;
  /** Run on this stream instead of one the cache creates (integration with other GPU work). */
  readonly stream?: Stream;
  /** Slice length of the general select plan (tuning; default: planned from the SM count). */
  readonly sliceLen?: number;
  /** Blocks per query head on the pair path: 1, 2, 4 or 8 (tuning; default: planned). */
  readonly cluster?: number;
  /**
   * The pair path's step kernel: 'row' (one 1024-thread block per query head scanning every code,
   * where C^M ≤ 4096 and the eligible span fits 131,072 positions), 'bucket' (the row kernel
   * gathering from position buckets, span ≤ 262,144, or 2^22 − 1 on sm_90), 'cluster' (thread-block clusters), or 'auto'
   * (row at 16 positions per thread and B·H ≤ the SM count — with `resident`, at any positions per
   * thread where its grid fits on the device at once; else bucket, except the clusters when
   * B·H > the SM count and the span ≤ 16,384; else row, else cluster). Tuning and tests; default 'auto'.
   */
  readonly stepKernel?: StepKernelChoice;
  /**
   * Record per-phase clock64 stamps of the pair step kernel (profiling; see phaseClocks()). Runs the
   * step kernels' timing builds (kernels/dist/*_phases.fatbin): the stamps cost ≈ 0.3 μs a step, so
   * the shipped kernels carry none and times measured with this on run that much longer.
   */
  readonly phaseTiming?: boolean;
  /**
   * Bucket mode: rebuild the position buckets once this many positions were appended since the
   * last build (1 … 1024, the kernel's limit; default 1024). Tests use small values.
   */
  readonly bucketTail?: number;
  /**
   * Serve steps from a resident kernel where the row kernel runs (C^M ≤ 4096 with M ≤ 2, a window
   * W ≥ 1 when steps append, spans up to 131,072 positions): launched once, it occupies one
   * multiprocessor per block (B·H blocks, or 2·B·H in clusters of two, plus the append blocks)
   * while it waits for the next step, and a step then returns with its results ready. A step with
   * the same (frozen) device tensor objects as the last one rings without validating them again:
   * reuse the query and key tensors, writing new values into their memory. Elsewhere steps run as
   * CUDA graphs, as without this option. Default false.
   */
  readonly resident?: boolean | ResidentOptions;
  /**
   * Chained steps: appending steps on device inputs where the row kernel runs (as for `resident`,
   * and in bucket mode between bucket rebuilds) are captured `length` at a time into CUDA graphs, each step behind a wait on
   * a doorbell in pinned host memory and followed by a write the host reads (src/cuda/step-chain.ts).
   * Two such chains alternate, each launched behind the other by a worker thread; a step rings its
   * chain and returns with its results ready, with no driver call on its path and no multiprocessor
   * held between steps (seed config on the H100: 13.3–14.0 μs wall against 16.4 for graph steps in one
   * run; bench/NOTES.md, session 39). A chain waiting for its next step holds the cache's stream:
   * anything else the cache enqueues first skips the steps left (the kernels leave at once) and waits
   * for them. Needs the stream the cache makes (not `stream`); not with `resident`. Steps the chains
   * do not cover run as CUDA graphs. Default false.
   */
  readonly chained?: boolean | ChainOptions;
}

export interface ChainOptions {
  /** Steps per chain graph: an even number in [2, 1024] (default 64). */
  readonly length?: number;
  /** How long a step may take before it is reported as hung (ms; default 5000). */
  readonly requestMs?: number;
}

export interface ResidentOptions {
  /** Stop the resident kernel after this long without a step (ms; default 200). */
  readonly idleMs?: number;
  /** How long a step may take before it is reported as hung (ms; default 5000). */
  readonly requestMs?: number;
}

type Query = HostTensor | DeviceTensor;

/** What the chain graph was captured for: its steps' plan, inputs and the seq slot its first step reads. */
interface ChainBinding {
  readonly plan: StepPlan;
  readonly query: StepInput;
  readonly key: StepKey;
  readonly slot: number;
}

/** What the running resident launch was started with (the weights dtype is the query's). */
interface ResidentBinding {
  readonly plan: StepPlan;
  readonly query: StepInput;
  /** Undefined: a launch without append blocks' key (select-only steps). */
  readonly key: StepKey | undefined;
  /**
   * The tensors of the last step it served, when both are frozen device tensors: a step with these
   * very objects needs no validation (residentRepeat).
   */
  lastInputs: { readonly query: DeviceTensor; readonly key: DeviceTensor | undefined } | undefined;
}

// Argument lists of the kernels (kernels/*.cu signatures, in order).
const SELECT_ARGS = [
  'ptr', 'i32', 'i32', 'i32', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'u64', 'i32', 'ptr',
  'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32',
] as const;
const STEP_PAIRS_ARGS = [
  'ptr', 'i32', 'i32', 'i32', 'ptr', 'i32', 'u64', 'u64', 'u64', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'u64', 'i32',
  'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'ptr',
  'ptr', 'ptr', 'ptr',
] as const;
type StepPairsValues = ArgValues<typeof STEP_PAIRS_ARGS>;
/** Phases stamped by the pair step kernel (kernels/select_pairs.cu Phase), for `bench --phases`. */
export const STEP_PHASES = ['lut', 'histogram', 'members', 'refine', 'classes', 'counts', 'write', 'end', 'issued', 'inputs', 'staged', 'scored', 'binned'] as const;
const APPEND_ARGS = ['ptr', 'i32', 'i32', 'i32', 'u64', 'u64', 'u64', 'i32', 'ptr', 'i32', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const PAIRS_COUNT_ARGS = ['ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const BUCKET_REBUILD_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const NO_OPTIONS = {} as const;
/** pq_bucket_merge: the rebuild's arguments and the old end of the buckets. */
const BUCKET_MERGE_ARGS = [...BUCKET_REBUILD_ARGS, 'i32'] as const;

/** What a step's graph is keyed by and reads sk from (prepareStep()). */
export interface StepBinding {
  /** The kernels recordStep() launches follow from it (and the inputs' kinds: graphKeys). */
  readonly signature: string;
  /** seqState's slot holding sk before the step, and the one holding it after (the same without an append). */
  readonly seqRead: DevicePtr;
  readonly seqWrite: DevicePtr;
  /** enqueue()'s graph keys (signature plus the inputs' kinds), by kind, made on first use. */
  readonly graphKeys: (string | undefined)[];
}

/**
 * A launch plan of the step: the general path's SelectPlan, with the pair path's kernel choice and
 * shared memory (none there); `row` when the one-block-per-head kernel runs.
 */
type StepPlan = SelectPlan & Pick<PairsPlan, 'long' | 'bitsTiles' | 'sharedBytes'> & { readonly row?: RowPlan; readonly bucket?: BucketPlan };
/** Step graphs kept per index: (slot parity × dtype × host/device inputs) fits with room to spare. */
const MAX_STEP_GRAPHS = 32;
/** sk in both seq slots while a chain's skipped steps run: negative, so their kernels leave at once. */
const SEQ_SKIP = 0x80000000;

type ArenaSlice =
  | 'centroids' | 'codes' | 'phi' | 'seqState' | 'appendCounter' | 'selectCounters' | 'candScore' | 'candPos'
  | 'candCount' | 'pairCount' | 'readers' | 'bucketOffsets' | 'buckets' | 'sparseList' | 'sparseLen' | 'weights';

export class CudaPQCache implements PQCache {
  readonly backend = 'cuda' as const;
  readonly layout: Layout;
  readonly capacity: number;
  readonly context: CudaContext;
  readonly stream: Stream;
  /** The build's temporaries and graphs, kept from the first device build on (freed with the rest). */
  private buildWorkspace: BuildWorkspace | undefined;
  /** Every buffer, event and (when it made it) the stream: freed together by dispose(). */
  private readonly owned = new Owned();
  private readonly capPad: number;
  private readonly centroidStride: number;
  private readonly maxSlices: number;
  private readonly arena: DeviceArena<ArenaSlice>;
  private readonly status: PinnedBuffer;
  private readonly statusView: Int32Array;
  private readonly stagingQuery: PinnedBuffer;
  private readonly stagingKey: PinnedBuffer;
  /** Recorded after a graph that copies from the staging buffers: they may be rewritten once it completes. */
  private readonly stagingConsumed: Event;
  /** synchronize() after a graph step: the host sees it done ≈ 2 μs sooner than through cuStreamSynchronize. */
  private readonly completion: CompletionSignal;
  private stagingPending = false;
  private readonly appendKernel: Kernel;
  /** General path: the select kernel. Pair path: undefined (the step kernel is per cluster size). */
  private readonly selectKernel: Kernel | undefined;
  /** C^M when the pair-table fast path runs (M ≤ 2), else 0. */
  private readonly pairs: number;
  private readonly pairsCountKernel: Kernel | undefined;
  /** Bucket mode possible (C^M ≤ 4096, not forced off): the buckets are kept and these update them. */
  private readonly bucketRebuildKernel: Kernel | undefined;
  private readonly bucketMergeKernel: Kernel | undefined;
  private readonly bucketTail: number;
  /** Where the buckets end (host mirror of seqState[2]); −1 before the first rebuild of an index. */
  private bucketEnd = -1;
  private readonly sliceLenOverride: number | undefined;
  private readonly clusterOverride: number | undefined;
  /** The step kernels from their timing builds (phase stamps compiled in): options.phaseTiming. */
  private readonly phaseTiming: boolean;
  private readonly stepKernel: StepKernelChoice;
  /** Bounded: device inputs at ever-new addresses would otherwise capture a graph per address. */
  private readonly graphs = new GraphCache(MAX_STEP_GRAPHS);
  /** The launch plan the captured graphs use, valid for sk ≤ maxSeqLen. */
  private graphPlan: StepPlan | undefined;
  /** prepareStep()'s answers under graphPlan, by slot, append and query dtype: the same strings every step, whose hashes V8 keeps. */
  private stepBindings: (StepBinding | undefined)[] = [];
  /** Device step queries: checked once per frozen tensor, with the rows the kernels read (src/pq/step-rows.ts). */
  private readonly stepQueries: StepRowsReader;
  /** Device step keys: checked once per tensor or K cache layout, and how each step reads them (src/pq/step-key.ts). */
  private readonly stepKeys: StepKeyReader;
  /** The seqState slot holding the current sk (steps alternate slots). */
  private seqSlot = 0;
  private hostSeqLen = 0;
  private readonly phaseBuffer: DeviceBuffer | undefined;
  private lastStepGrid: readonly [number, number] = [0, 0];
  private isBuilt = false;
  private weightsDType: FloatDType | undefined;
  private disposed = false;
  // Per-step checks and results, made once: the step's host-side cost is part of its latency.
  private readonly listView: DeviceTensor<'i32'>;
  private readonly lenView: DeviceTensor<'i32'>;
  private readonly weightStrides: readonly number[];
  private lastOutputs: SelectResult<DeviceTensor> | undefined;
  // Made once and reused by every new request (uploadState, build) or step: nothing allocated per call.
  private readonly seqInit = new Int32Array(4);
  private readonly pairsCountArgs = new LaunchArgs(PAIRS_COUNT_ARGS);
  private readonly bucketRebuildArgs = new LaunchArgs(BUCKET_REBUILD_ARGS);
  private readonly bucketMergeArgs = new LaunchArgs(BUCKET_MERGE_ARGS);
  /** The step's graph binding (query pointer and rows, key base and rows), rewritten per call instead of allocated. */
  private readonly stepPointers: bigint[] = [0n, 0n, 0n, 0n, 0n, 0n];
  // Resident steps: the options, the launch (made at the first resident step) and what it was launched with.
  private readonly residentOptions: Required<ResidentOptions> | undefined;
  private resident: ResidentLaunch | undefined;
  /** What the running launch was started with; undefined when stopped. The weights dtype is its qdtype (a query of another dtype resets the outputs and restarts the launch). */
  private residentBinding: ResidentBinding | undefined;
  private residentIdleTimer: ReturnType<typeof setInterval> | undefined;
  private readonly ownsStream: boolean;
  /** Resident steps served so far (the idle check compares it across an interval). */
  private residentSteps = 0;
  // Chained steps: the options, the chain (made at the first chained step), what it was captured for,
  // and a second stream for the skip while the cache's waits for the doorbell.
  private readonly chainOptions: Required<ChainOptions> | undefined;
  private chain: StepChain | undefined;
  private chainBinding: ChainBinding | undefined;
  private chainSideStream: Stream | undefined;
  /** Steps served by the chain so far. */
  private chainedSteps = 0;
  /** Step graphs and chains captured, and resident launches started, so far (stepCaptureCount). */
  private stepCaptures = 0;
  private residentLaunches = 0;

  constructor(options: CudaPQCacheOptions) {
    this.layout = makeLayout(options.shape, options.config);
    const problem = cudaLayoutProblem(this.layout);
    if (problem) throw problem;
    this.capacity = checkCapacityOption(options.capacity);
    this.context = CudaContext.primary(options.device ?? 0);
    this.sliceLenOverride = options.sliceLen;
    this.clusterOverride = options.cluster;
    this.stepKernel = options.stepKernel ?? 'auto';
    this.pairs = pairTableSize(this.layout);
    this.phaseTiming = options.phaseTiming === true;
    this.selectKernel = this.pairs > 0 ? undefined : loadKernels('select').kernel(selectKernelName(this.layout));
    this.pairsCountKernel = this.pairs > 0 ? loadStepKernels('select_pairs', this.phaseTiming).kernel('pq_pairs_count') : undefined;
    const bucketCapable = this.pairs > 0 && this.pairs <= ROW_MAX_PAIRS && this.stepKernel !== 'row' && this.stepKernel !== 'cluster';
    this.bucketRebuildKernel = bucketCapable ? loadStepKernels('select_row', this.phaseTiming).kernel('pq_bucket_rebuild') : undefined;
    this.bucketMergeKernel = bucketCapable ? loadStepKernels('select_row', this.phaseTiming).kernel('pq_bucket_merge') : undefined;
    this.bucketTail = options.bucketTail ?? BUCKET_MAX_TAIL;
    if (!Number.isInteger(this.bucketTail) || this.bucketTail < 1 || this.bucketTail > BUCKET_MAX_TAIL) {
      throw new ConfigError('bucketTail', `an integer in [1, ${BUCKET_MAX_TAIL}]`, options.bucketTail);
    }
    this.appendKernel = loadKernels('append').kernel('pq_append');
    this.residentOptions = residentOptionsOf(options.resident);
    this.chainOptions = chainOptionsOf(options.chained);
    if (this.chainOptions !== undefined && this.residentOptions !== undefined) throw new ConfigError('chained', 'not with resident', true);
    if (this.chainOptions !== undefined && options.stream !== undefined) throw new ConfigError('chained', 'the stream the cache makes (no stream option)', 'a stream');

    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = this.layout.shape;
    const M = this.layout.config.pqGroupFactor;
    const C = this.layout.numCentroids;
    const K = this.layout.config.heavySize;
    const rows = B * H;
    ({ capPad: this.capPad, centroidStride: this.centroidStride } = deviceIndexStrides(this.layout, this.capacity));
    this.stepQueries = new StepRowsReader(B, H, D, expectedShape([B, H, 1, D], `[B=${B}, H=${H}, 1, D=${D}]`));
    this.stepKeys = new StepKeyReader(Hkv, D, expectedShape([B, Hkv, 1, D], `[B=${B}, Hkv=${Hkv}, 1, D=${D}]`));
    this.maxSlices = maxSlicesFor(this.layout, this.context.device.multiprocessorCount);
    const general = this.pairs === 0;
    const owned = this.owned;
    try {
      this.stream = options.stream ?? owned.add(new Stream());
      this.ownsStream = options.stream === undefined;
      this.arena = owned.add(DeviceArena.allocate<ArenaSlice>({
        centroids: B * Hkv * M * C * this.centroidStride * 4,
        codes: B * Hkv * this.capPad * M,
        phi: B * Hkv * M * 4,
        seqState: 16,
        appendCounter: 4,
        // General path: per-slice candidates (score, position) and the merge counters.
        selectCounters: general ? rows * 4 : 0,
        candScore: general ? rows * this.maxSlices * K * 4 : 0,
        candPos: general ? rows * this.maxSlices * K * 4 : 0,
        candCount: general ? rows * this.maxSlices * 4 : 0,
        // Pair path: the code-pair counts and the per-kv-head reader counters.
        pairCount: general ? 0 : B * Hkv * this.pairs * 4,
        readers: general ? 0 : B * Hkv * 4,
        // Bucket mode: each kv-head's positions grouped by code pair, and where each pair's start.
        bucketOffsets: bucketCapable ? B * Hkv * (this.pairs + 4) * 4 : 0,
        buckets: bucketCapable ? B * Hkv * this.capPad * 4 : 0,
        sparseList: rows * this.layout.listCapacity * 4,
        sparseLen: rows * 4,
        weights: rows * this.capPad * 4,
      }));
      this.status = owned.add(new PinnedBuffer(16));
      this.statusView = new Int32Array(this.status.arrayBuffer, 0, 1);
      this.statusView[0] = 0;
      this.stagingQuery = owned.add(new PinnedBuffer(rows * D * 4));
      this.stagingKey = owned.add(new PinnedBuffer(B * Hkv * D * 4));
      this.stagingConsumed = owned.add(new Event({ timing: false }));
      this.completion = owned.add(new CompletionSignal());
      this.listView = deviceTensor('i32', [B, H, this.layout.listCapacity], this.arena.slices.sparseList.ptr);
      this.lenView = deviceTensor('i32', [B, H], this.arena.slices.sparseLen.ptr);
      this.weightStrides = Object.freeze([H * this.capPad, this.capPad, 1]);
      if (this.phaseTiming && this.pairs > 0) this.phaseBuffer = owned.add(new DeviceBuffer(8 * (rows + B * Hkv) * 16 * 8));
      copies.fill8Async(this.arena.buffer, 0, this.arena.bytes, this.stream);
      this.stream.synchronize();
    } catch (e) {
      owned.dispose();
      throw e;
    }
  }

  get seqLen(): number {
    return this.hostSeqLen;
  }

  get built(): boolean {
    return this.isBuilt;
  }

  private live(): void {
    if (this.disposed) throw new DisposedError('CudaPQCache');
  }

  private requireBuilt(operation: string): void {
    this.live();
    checkBuilt(operation, this.isBuilt);
  }

  // ---- index state ------------------------------------------------------------------------

  /**
   * Build the index on the GPU (kernels/build.cu: the oracle's k-means, all groups at once), or on
   * the host for layouts those kernels do not cover (dsub > 128). Keys on the host, or on the
   * device in any float dtype (e.g. a K cache: see checkDeviceKeys for the strides it takes);
   * fp32 and bf16 device keys in the usual layouts are read where they are (f16 too where the wgmma
   * rounds take them), others through a temporary fp32 copy (cuda-build.ts keysInPlace). Non-finite device keys throw DeviceInputError
   * before the index is touched.
   */
  build(keys: HostTensor | DeviceTensor, options: BuildOptions = {}): void {
    this.live();
    this.stopResident();
    const minLen = this.layout.config.initOffset + 1;
    const onDevice = 'device' in keys;
    const sk = onDevice ? checkDeviceKeys(this.layout, keys, 'keys', minLen) : checkKeys(this.layout, keys, 'keys', minLen);
    checkCapacity('keys', this.capacity, sk);
    if (!deviceBuildSupported(this.layout)) {
      this.uploadState(buildIndexCpu(this.layout, onDevice ? deviceKeysToHost(keys, this.layout, sk) : keys.toFloat32(), sk, this.capacity, options.onProgress));
      return;
    }
    this.stream.synchronize();
    const s = this.arena.slices;
    const wasBuilt = this.isBuilt;
    this.isBuilt = false; // a failure below leaves no half-built index behind
    try {
      this.buildWorkspace ??= this.owned.add(new BuildWorkspace(this.layout, this.capacity));
      buildOnDevice(
        this.layout,
        onDevice ? keys : keys.toFloat32(),
        sk,
        this.buildTarget(),
        this.stream,
        options.onProgress ? (done, total) => options.onProgress?.({ done, total }) : undefined,
        undefined,
        {},
        this.buildWorkspace,
      );
    } catch (e) {
      // Non-finite device keys leave the index unwritten (the build publishes it only when all are finite): the old one stands.
      if (e instanceof DeviceInputError) this.isBuilt = wasBuilt;
      throw e;
    }
    this.resetSequence(sk);
  }

  /** Replace the device index with a host state (built elsewhere, loaded, or made by hand). */
  uploadState(state: PQIndexState): void {
    this.live();
    this.stopResident();
    if (!sameLayout(state.layout, this.layout)) {
      const describe = (l: Layout): string => JSON.stringify({ shape: l.shape, config: l.config });
      throw new ShapeError('state', `an index with ${describe(this.layout)}`, describe(state.layout));
    }
    checkCapacity('state.seqLen', this.capacity, state.seqLen);
    const { batch: B, kvHeads: Hkv } = this.layout.shape;
    const M = this.layout.config.pqGroupFactor;
    const cdim = this.layout.centroidDim;
    const s = this.arena.slices;
    this.stream.synchronize();
    // Straight from the state's arrays into the padded device rows: no host-side repacking, so a
    // serving process that uploads a prefill per request allocates nothing here.
    copies.fromHost2D(s.centroids, this.centroidStride * 4, state.centroids, cdim * 4, cdim * 4, state.centroids.length / cdim, this.stream);
    if (state.seqLen > 0) {
      const rowBytes = state.capacity * M;
      const codes = state.codes.subarray(codeOffset(state.layout, state.capacity, 0, 0, 0), B * Hkv * rowBytes);
      copies.fromHost2D(s.codes, this.capPad * M, codes, rowBytes, state.seqLen * M, B * Hkv, this.stream);
    }
    copies.fromHost(s.phi, state.phi);
    this.resetSequence(state.seqLen);
  }

  /** After a new index (built or uploaded): sk on the device, the pair table, a fresh output. */
  private resetSequence(seqLen: number): void {
    const s = this.arena.slices;
    this.seqInit.set([seqLen, seqLen, 0, 0]);
    copies.fromHost(s.seqState, this.seqInit);
    this.seqSlot = 0;
    if (this.pairs > 0) {
      copies.fill32Async(s.pairCount, 0, s.pairCount.bytes / 4, this.stream);
      copies.fill32Async(s.readers, 0, s.readers.bytes / 4, this.stream);
      this.countPairs(Math.max(this.layout.config.initOffset, this.layout.config.sinkSize), seqLen - this.layout.config.windowSize);
    }
    this.hostSeqLen = seqLen;
    this.bucketEnd = -1; // new codes: the buckets are sorted afresh, not merged
    this.rebuildBuckets();
    this.stream.synchronize();
    this.isBuilt = true;
    this.weightsDType = undefined; // forces a full output reset before the next select
  }

  /** The index's centroids, codes and φ as the build kernels write them. */
  private buildTarget(): DeviceBuildTarget {
    const s = this.arena.slices;
    return { centroids: s.centroids, centroidStride: this.centroidStride, codes: s.codes, capPad: this.capPad, phi: s.phi };
  }

  exportState(): PQIndexState {
    this.requireBuilt('exportState');
    this.stopResident();
    this.synchronize();
    const state = emptyIndexState(this.layout, this.capacity);
    const { batch: B, kvHeads: Hkv } = this.layout.shape;
    const M = this.layout.config.pqGroupFactor;
    const cdim = this.layout.centroidDim;
    const { centroids, codes, phi } = readBuildTarget(this.buildTarget());
    for (let r = 0; r < state.centroids.length / cdim; r++) {
      state.centroids.set(centroids.subarray(r * this.centroidStride, r * this.centroidStride + cdim), r * cdim);
    }
    for (let bh = 0; bh < B * Hkv; bh++) {
      state.codes.set(codes.subarray(bh * this.capPad * M, bh * this.capPad * M + this.hostSeqLen * M), codeOffset(this.layout, this.capacity, 0, bh, 0));
    }
    state.phi.set(phi);
    state.seqLen = this.hostSeqLen;
    return state;
  }

  serialize(): Uint8Array {
    return encodeIndex(this.exportState());
  }

  // ---- decode step ------------------------------------------------------------------------

  /**
   * Append keys [B, Hkv, n, D]: codes on the device, then sk += n. Synchronizes. Host keys are
   * checked first; device keys (any float dtype, with the strides checkDeviceKeys takes: e.g. the
   * slice [B, Hkv, sk .. sk + n, D] of a K cache, a chunked prefill) are read in place, and
   * non-finite ones throw DeviceInputError from the sync, after the append (as a step's device key does).
   */
  append(keys: HostTensor | DeviceTensor): void {
    this.requireBuilt('append');
    this.stopResident();
    const onDevice = 'device' in keys;
    const n = onDevice ? checkDeviceKeys(this.layout, keys, 'keys', 1) : checkKeys(this.layout, keys, 'keys', 1);
    checkCapacity('keys', this.capacity, this.hostSeqLen + n);
    let tmp: DeviceArena<'keys'> | undefined;
    try {
      // Host keys are uploaded in their own dtype (the kernel converts f16/bf16 as it reads), contiguous.
      const dtype = keys.dtype as FloatDType;
      let ptr: DevicePtr;
      const { kvHeads: Hkv, headDim: D } = this.layout.shape;
      const strides = onDevice ? keys.strides : [Hkv * n * D, n * D, D];
      if (onDevice) {
        ptr = keys.ptr;
      } else {
        tmp = DeviceArena.allocate({ keys: keys.data.byteLength });
        copies.fromHost(tmp.slices.keys, keys.data);
        ptr = tmp.slices.keys.ptr;
      }
      this.launchAppend(ptr, dtype, n, [BigInt(strides[0]), BigInt(strides[1]), BigInt(strides[2])], this.seqSlot);
      this.seqSlot ^= 1;
      const { initOffset: O, sinkSize: S, windowSize: W } = this.layout.config;
      // The kernel updates the pair table for one key only; count the newly eligible range here.
      if (n > 1) this.countPairs(Math.max(O, S, this.hostSeqLen - W), this.hostSeqLen + n - W);
      this.hostSeqLen += n;
      this.synchronize();
    } finally {
      tmp?.dispose();
    }
  }

  /**
   * Enqueue select for a query (host [B,H,1,D], or a device tensor whose rows may be strided, as the
   * query part of a fused QKV output: src/pq/step-rows.ts); returns device views.
   */
  select(query: Query): SelectResult<DeviceTensor> {
    if (!this.residentRepeat(query, undefined)) {
      this.requireBuilt('select');
      this.enqueue(query, undefined);
    }
    return this.outputs();
  }

  /**
   * Enqueue one decode step: append `key` [B,Hkv,1,D] (contiguous rows, or a K cache's slice at the
   * step's position: src/pq/step-key.ts), then select for `query` (as select()'s).
   */
  step(query: Query, key: HostTensor | DeviceTensor): SelectResult<DeviceTensor> {
    if (!this.residentRepeat(query, key)) {
      this.requireBuilt('step');
      this.enqueue(query, key);
    }
    return this.outputs();
  }

  selectToHost(query: HostTensor): SelectResult<HostTensor> {
    this.requireBuilt('select');
    const dtype = this.enqueue(query, undefined);
    return this.readOutputs(dtype);
  }

  stepToHost(query: HostTensor, key: HostTensor): SelectResult<HostTensor> {
    this.requireBuilt('step');
    const dtype = this.enqueue(query, key);
    return this.readOutputs(dtype);
  }

  /** Wait for the stream; throw DeviceInputError if a kernel saw non-finite device inputs. */
  synchronize(): void {
    this.live();
    // Resident steps return complete. A stream the cache made was synchronized when the kernel
    // started, and everything that enqueues on it since stops the kernel first (but readOutputs,
    // which waits for its own copies).
    // Chained steps return complete too, and a chain waiting for its next step holds the stream.
    if (!(this.ownsStream && (this.residentBinding !== undefined || this.chain?.waiting === true))) this.completion.synchronize(this.stream);
    else this.completion.settled();
    this.checkStatus();
  }

  /**
   * Throw DeviceInputError for what the kernels flagged (bits of the pinned status word), then
   * clear it. Only meaningful once the stream has reached the kernels: after a sync.
   */
  checkStatus(): void {
    const st = this.statusView[0];
    if (st === 0) return;
    this.statusView[0] = 0;
    throwDeviceStatus(st, this.hostSeqLen);
  }

  /** The last select's sparseList and sparseLen on the host (no weights copy). Synchronizes. */
  listsToHost(): { sparseList: Int32Array; sparseLen: Int32Array } {
    this.requireBuilt('listsToHost');
    const { batch: B, heads: H } = this.layout.shape;
    const sparseList = new Int32Array(B * H * this.layout.listCapacity);
    const sparseLen = new Int32Array(B * H);
    this.synchronize();
    copies.toHost(sparseList, this.arena.slices.sparseList);
    copies.toHost(sparseLen, this.arena.slices.sparseLen);
    return { sparseList, sparseLen };
  }

  /** Device views of the outputs of the last select (valid after the stream reaches it). */
  outputs(): SelectResult<DeviceTensor> {
    const dtype = this.weightsDType ?? 'f32';
    const last = this.lastOutputs;
    if (last !== undefined && last.weights.dtype === dtype && last.weights.shape[2] === this.hostSeqLen) return last;
    // Only the weights view changes with sk (frozen shape and strides: deviceTensor copies neither).
    const { batch: B, heads: H } = this.layout.shape;
    const weights = deviceTensor(dtype, Object.freeze([B, H, this.hostSeqLen]), this.arena.slices.weights.ptr, this.weightStrides);
    this.lastOutputs = Object.freeze({ sparseList: this.listView, sparseLen: this.lenView, weights });
    return this.lastOutputs;
  }

  /** Validate, stage host inputs, (re)capture if needed, launch the graph. Returns the weights dtype. */
  private enqueue(query: Query, key: HostTensor | DeviceTensor | undefined): FloatDType {
    // A host query is checked fully (shape, dtype, finite values) and staged with contiguous rows; a
    // device query by dtype, shape and strides, once per frozen tensor (src/pq/step-rows.ts).
    let queryRows = this.stepQueries.contiguous;
    if ('device' in query) queryRows = this.stepQueries.rowsOf(query, 'query');
    else checkQuery(this.layout, query, 'query');
    const qdtype = query.dtype as FloatDType;
    let kdtype: FloatDType = 'f32';
    let keyRows = this.stepKeys.contiguous;
    if (key !== undefined) {
      if ('device' in key) {
        // Contiguous rows, or a K cache's slice at the step's position (src/pq/step-key.ts).
        keyRows = this.stepKeys.rowsOf(key);
        kdtype = key.dtype as FloatDType;
      } else {
        checkStepKey(this.layout, key);
      }
      checkCapacity('key', this.capacity, this.hostSeqLen + 1);
    }

    // Host inputs go through pinned staging; the graph copies them to the device. A previous
    // graph may still be about to read the staging buffers: wait for it before rewriting them.
    const hostQ = !('device' in query);
    const hostK = key !== undefined && !('device' in key);
    if ((hostQ || hostK) && this.stagingPending) {
      this.stagingConsumed.synchronize();
      this.stagingPending = false;
    }
    let qptr: DevicePtr;
    // Host inputs are read by the kernels straight from the pinned staging buffers (mapped into the
    // device's address space): cheaper than memcpy nodes in the graph for a few kilobytes.
    if ('device' in query) {
      qptr = query.ptr;
    } else {
      new Uint8Array(this.stagingQuery.arrayBuffer, 0, query.data.byteLength).set(new Uint8Array(query.data.buffer, query.data.byteOffset, query.data.byteLength));
      qptr = this.stagingQuery.ptr;
    }
    // The key's base: its address, or for a K cache's slice its address − sk·row (one graph for every step's slice).
    let kptr: DevicePtr | undefined;
    if (key !== undefined) {
      if ('device' in key) {
        keyRows = this.stepKeys.placed(key, keyRows);
        kptr = stepKeyBase(key, keyRows, this.hostSeqLen);
      } else {
        const kd = key.dtype === 'f32' ? (key.data as Float32Array) : key.toFloat32();
        new Float32Array(this.stagingKey.arrayBuffer, 0, kd.length).set(kd);
        kptr = this.stagingKey.ptr;
        kdtype = 'f32';
      }
    }
    if (this.residentOptions !== undefined && this.residentStep(query, key, qptr, qdtype, queryRows, kptr, kdtype, keyRows)) return qdtype;
    if (this.chainOptions !== undefined && !hostQ && !hostK && kptr !== undefined && this.chainedStep(qptr, qdtype, queryRows, kptr, kdtype, keyRows)) return qdtype;
    const binding = this.prepareStep(qdtype, key !== undefined);
    const inputs = (hostQ ? 1 : 0) | (hostK ? 2 : 0) | (kptr === undefined ? 0 : (1 + DTYPE_CODE[kdtype]) << 2);
    const signature = (binding.graphKeys[inputs] ??= `${binding.signature}/${hostQ}/${kptr === undefined ? '-' : kdtype}/${hostK}`);
    const pointers = this.stepPointers; // reused: GraphCache copies what it keeps
    pointers[0] = qptr;
    pointers[1] = queryRows.graphKey;
    pointers[2] = kptr ?? 0n; // no key: the signature says so ('-')
    pointers[3] = keyRows.batch;
    pointers[4] = keyRows.head;
    pointers[5] = keyRows.row;
    const graph =
      this.graphs.find(signature, pointers) ??
      this.captureStep(signature, { ptr: qptr, dtype: qdtype, rows: queryRows }, kptr === undefined ? undefined : { base: kptr, dtype: kdtype, rows: keyRows });
    graph.launch(this.stream);
    this.completion.launched();
    if (hostQ || hostK) {
      this.stagingConsumed.record(this.stream);
      this.stagingPending = true;
    }
    this.commitStep(key !== undefined);
    return qdtype;
  }

  /** Capture the step's graph for these inputs (none held: enqueue()). */
  private captureStep(signature: string, query: StepInput, key: StepKey | undefined): GraphExec {
    this.stepCaptures++;
    return this.graphs.capture(signature, this.stepPointers, this.stream, () => this.recordStep(query, key));
  }

  /**
   * Diagnostics: how many step graphs and chains this cache has captured, and how many resident
   * launches it has started. A decode loop whose inputs keep their addresses (or whose key is a K
   * cache's slice at each step's position) captures once per plan and seq slot (steps alternate two).
   */
  get stepCaptureCount(): number {
    return this.stepCaptures;
  }

  get residentLaunchCount(): number {
    return this.residentLaunches;
  }

  // ---- the step for holders that capture it with other kernels (src/attention/decode-layer.ts) ----

  /**
   * Get ready for one step (select, or append + select when `appending`): checks the capacity,
   * resets the outputs when the weights dtype changes, plans for the new sk. The signature changes
   * whenever the kernels recordStep() launches would differ (graphs are keyed by it); seqRead holds
   * sk before the step, seqWrite sk after it (the same pointer without an append).
   */
  prepareStep(qdtype: FloatDType, appending: boolean): StepBinding {
    this.requireBuilt('step');
    this.stopResident();
    if (appending) checkCapacity('key', this.capacity, this.hostSeqLen + 1);
    if (this.weightsDType !== qdtype) this.resetOutputs(qdtype);
    const sk = this.hostSeqLen + (appending ? 1 : 0);
    const plan = this.currentPlan(sk);
    // Bucket mode classifies at most bucketTail positions past the buckets: rebuild them first (an
    // ordinary launch before the step's graph, every ≈ bucketTail steps).
    if (plan.bucket !== undefined && sk - this.layout.config.windowSize - this.bucketEnd > this.bucketTail) this.rebuildBuckets();
    const slot = this.seqSlot;
    const index = slot | (appending ? 2 : 0) | (DTYPE_CODE[qdtype] << 2);
    const known = this.stepBindings[index];
    if (known !== undefined) return known;
    const kernel = this.pairs > 0 ? this.stepKernelName(plan) : 'select';
    const binding: StepBinding = {
      // The rest of the plan follows from these.
      signature: `${slot}/${kernel}/${plan.numSlices}/${plan.sliceLen}/${DTYPE_CODE[qdtype]}/${appending}`,
      seqRead: this.seqPtr(slot),
      seqWrite: this.seqPtr(appending ? slot ^ 1 : slot),
      graphKeys: [],
    };
    this.stepBindings[index] = binding;
    return binding;
  }

  /**
   * Launch the step's kernels on the stream (no graph of its own: the caller captures). After prepareStep().
   * `overlapPrevious`: where the step is one kernel (the pair path with the fused append), it is
   * launched with programmatic dependent launch behind the caller's kernel before it (which must
   * allow it: a decode layer's K/V append). The step reads nothing that kernel writes, and waits for
   * it before it ends, so whatever waits for the step waits for both (src/cuda/launch.ts).
   */
  recordStep(query: StepInput, key: StepKey | undefined, overlapPrevious = false): void {
    const plan = this.currentPlan(this.hostSeqLen + (key !== undefined ? 1 : 0));
    const slot = this.seqSlot;
    const fused = key !== undefined && this.pairs > 0 && this.layout.config.windowSize > 0;
    if (fused) {
      // One launch: the append blocks ride along with the select clusters.
      this.launchStepPairs(query, key, plan, slot, overlapPrevious);
      return;
    }
    let readSlot = slot;
    if (key !== undefined) {
      const { batch, head, row } = key.rows;
      this.launchAppend(key.base, key.dtype, 1, [batch, head, row], slot, row !== 0n);
      readSlot ^= 1;
    }
    if (this.pairs > 0) this.launchStepPairs(query, undefined, plan, readSlot);
    else this.launchSelect(query, plan, readSlot);
  }

  /**
   * A step's query with contiguous rows [B, H, 1, D] at `ptr`, for recordStep by a holder whose query
   * is contiguous (the select bench's in-graph steps, scripts/launch-vs-graph.mjs, ring-graph-floor.mjs,
   * chain-node-costs.mjs; a decode layer passes the rows it checked: src/pq/step-rows.ts).
   */
  contiguousStepQuery(ptr: DevicePtr, dtype: FloatDType): StepInput {
    return { ptr, dtype, rows: this.stepQueries.contiguous };
  }

  /** A step's key with contiguous rows [B, Hkv, 1, D] at `ptr`, for recordStep (as contiguousStepQuery; a decode layer's: fixedStepKey). */
  contiguousStepKey(ptr: DevicePtr, dtype: FloatDType): StepKey {
    return { base: ptr, dtype, rows: this.stepKeys.contiguous };
  }

  /** The step was launched: advance sk and the slot parity when it appended. */
  commitStep(appended: boolean): void {
    if (!appended) return;
    this.hostSeqLen += 1;
    this.seqSlot ^= 1;
  }

  /** Undo an appending step's commitStep() (a resident step that did not complete). */
  private uncommitStep(): void {
    this.hostSeqLen -= 1;
    this.seqSlot ^= 1;
  }

  // ---- resident steps ----

  /**
   * Serve this step from the resident row kernel, (re)launching it when the plan, the inputs'
   * addresses or dtypes changed. False where the row kernel does not run (the caller takes the
   * graph path). Inputs are in place (staged or on the device); returns with the step complete.
   */
  private residentStep(query: Query, key: HostTensor | DeviceTensor | undefined, qptr: DevicePtr, qdtype: FloatDType, queryRows: StepRows,
    kptr: DevicePtr | undefined, kdtype: FloatDType, keyRows: StepKeyRows): boolean {
    const appending = kptr !== undefined;
    if (this.pairs === 0 || (appending && this.layout.config.windowSize === 0)) return false; // no fused append
    if (this.weightsDType !== qdtype) this.resetOutputs(qdtype);
    const plan = this.currentPlan(this.hostSeqLen + (appending ? 1 : 0));
    const b = this.residentBinding;
    // A launch with the append blocks serves select-only steps too (they idle). A running launch
    // bound to this plan passed the checks below when it started.
    const bound = this.resident?.active === true && b !== undefined && b.plan === plan && sameStepInput(b.query, qptr, qdtype, queryRows) &&
      (kptr === undefined || (b.key !== undefined && sameStepKey(b.key, kptr, kdtype, keyRows)));
    if (!bound) {
      if (plan.row === undefined || !this.residentFits(plan.row)) return false;
      this.startResident(plan, { ptr: qptr, dtype: qdtype, rows: queryRows }, kptr === undefined ? undefined : { base: kptr, dtype: kdtype, rows: keyRows });
    }
    this.serveResident(appending);
    // The same key object again is the same address again: repeated only where the launch reads the
    // key at a fixed address (one read at base + sk·row would read the next row instead).
    (this.residentBinding as ResidentBinding).lastInputs =
      isFrozenDeviceTensor(query) && (key === undefined || (isFrozenDeviceTensor(key) && keyRows.row === 0n)) ? { query, key } : undefined;
    return true;
  }

  /**
   * A resident step with the very tensor objects of the last one: served at once, without
   * validating them again (frozen, so unchanged since) — ≈ 1–2 μs of host time before the ring
   * on the H100 host (bench/NOTES.md, session 16). False when anything else may differ: the launch
   * stopped, sk outgrew the plan or the capacity, other tensors; the full path then takes the step.
   */
  private residentRepeat(query: Query, key: HostTensor | DeviceTensor | undefined): boolean {
    const b = this.residentBinding;
    const last = b?.lastInputs;
    if (b === undefined || last === undefined || query !== last.query || key !== last.key || this.resident?.active !== true) return false;
    const appending = key !== undefined;
    const sk = this.hostSeqLen + (appending ? 1 : 0);
    if (sk > this.capacity || this.currentPlan(sk) !== b.plan) return false;
    this.serveResident(appending);
    return true;
  }

  /** Ring the resident kernel for this step and wait for it; sk advances when it appends. */
  private serveResident(appending: boolean): void {
    const launch = this.resident as ResidentLaunch;
    launch.ring(this.seqSlot | (appending ? 2 : 0));
    this.residentSteps++;
    this.completeRungStep(appending, launch);
  }

  /**
   * After a step was rung (resident launch or chain): while the GPU serves it, advance sk and make the
   * outputs' views for it; then wait for it (an appending step not known to have happened is undone)
   * and report the inputs the kernels flagged.
   */
  private completeRungStep(appending: boolean, served: { wait(): void }, steps = 1): void {
    for (let i = 0; i < steps; i++) this.commitStep(appending);
    this.outputs();
    try {
      served.wait();
    } catch (e) {
      if (appending) for (let i = 0; i < steps; i++) this.uncommitStep();
      throw e;
    }
    this.checkStatus();
  }

  /** The resident row kernel's grid (select and append blocks, one per multiprocessor) fits on the device at once. */
  private residentFits(row: RowPlan): boolean {
    const { batch: B, heads: H, kvHeads: Hkv } = this.layout.shape;
    return row.cluster * (B * H) + row.cluster * Math.ceil((B * Hkv) / row.cluster) <= this.context.device.multiprocessorCount;
  }

  private startResident(plan: StepPlan, query: StepInput, key: StepKey | undefined): void {
    this.stopResident();
    const options = this.residentOptions as Required<ResidentOptions>;
    this.resident ??= this.owned.add(new ResidentLaunch({ requestMs: options.requestMs }));
    // Graph steps and output resets on the cache's stream are done before the kernel reads the index.
    this.stream.synchronize();
    this.stagingPending = false;
    const l = this.stepPairsLaunch(query, key, plan, 0, true);
    this.resident.start(l.kernel, l.shape, STEP_PAIRS_ARGS, l.values);
    this.residentLaunches++;
    this.lastStepGrid = [l.shape.grid[0], l.shape.grid[1]];
    this.residentBinding = { plan, query, key, lastInputs: undefined }; // one shape from the start
    // Idle: no step during a whole interval stops the kernel (its blocks spin on their multiprocessors).
    let seen = this.residentSteps;
    this.residentIdleTimer = setInterval(() => {
      if (this.residentSteps === seen) this.stopResident();
      seen = this.residentSteps;
    }, options.idleMs);
    this.residentIdleTimer.unref();
  }

  // ---- chained steps ----

  /**
   * Serve this appending step from the chains (options.chained), capturing them for these inputs
   * first when needed. False where they do not run (the caller takes the graph path): not the row
   * kernel (or bucket mode) with the fused append, or a plan, the capacity or a bucket rebuild due
   * within two chains' steps. Inputs are device tensors; returns with the step complete.
   */
  private chainedStep(qptr: DevicePtr, qdtype: FloatDType, queryRows: StepRows, kptr: DevicePtr, kdtype: FloatDType, keyRows: StepKeyRows): boolean {
    if (this.pairs === 0 || this.layout.config.windowSize === 0) return false; // no fused append
    const options = this.chainOptions as Required<ChainOptions>;
    let chain = this.chain;
    const b = this.chainBinding;
    const sameInputs = b !== undefined && sameStepInput(b.query, qptr, qdtype, queryRows) && sameStepKey(b.key, kptr, kdtype, keyRows);
    // A waiting chain for these inputs was captured with its plan and capacity holding for two
    // chains' steps from its start (and nothing ran on the index since, or it would have been
    // drained): ring its next step.
    if (!(chain?.waiting === true && sameInputs)) {
      if (chain?.waiting === true) this.stopResident(); // drains the chain before anything else is enqueued
      const plan = this.currentPlan(this.hostSeqLen + 1);
      if ((plan.row === undefined && plan.bucket === undefined) || !this.chainFits(plan, 2 * options.length)) return false;
      if (this.weightsDType !== qdtype) this.resetOutputs(qdtype);
      // Made at the first step the chains serve (its launcher is a worker thread).
      chain ??= this.chain = this.owned.add(new StepChain(this.context.handle, this.stream, options.length, {
        skip: () => this.skipChainSteps(),
        restore: () => this.restoreSeqSlots(),
      }, options.requestMs));
      if (!sameInputs || b.plan !== plan || b.slot !== this.seqSlot) this.captureChain(chain, plan, { ptr: qptr, dtype: qdtype, rows: queryRows }, { base: kptr, dtype: kdtype, rows: keyRows });
    } else if (chain.atChainStart && !this.chainFits(b.plan, 2 * options.length)) {
      // The chain launched behind this one would run past the plan or the capacity: end here (the
      // graph path takes this step and the next ones).
      this.stopResident();
      return false;
    }
    chain.ring();
    this.chainedSteps++;
    this.completeRungStep(true, chain);
    return true;
  }

  /**
   * Benchmarks: ring a whole chain of steps at once — the `chained.length` steps step() would run
   * next with the inputs the chains were captured for (a K cache's slice: each step's own row) — so
   * they follow one another on the GPU with no host between them; returns once the last is done (the
   * outputs are its). The host clock around the call, divided by the length, is a chained step's
   * device time, plus one ring and one completion seen spread over the steps (bench --kind select,
   * the chained row's gpu_us). False, with nothing run, where the chains cannot serve them: none
   * waits at the end of its steps (step() has not run a whole chain since the chains were captured or
   * drained), or the plan, the capacity or a bucket rebuild falls within two chains' steps.
   */
  ringChainedBurst(): boolean {
    this.live();
    const chain = this.chain;
    const b = this.chainBinding;
    const options = this.chainOptions;
    if (chain === undefined || b === undefined || options === undefined || !chain.atChainStart || !this.chainFits(b.plan, 2 * options.length)) return false;
    chain.ring(options.length);
    this.chainedSteps += options.length;
    this.completeRungStep(true, chain, options.length);
    return true;
  }

  /**
   * `steps` more appending steps stay within the plan and the capacity, and in bucket mode need no
   * rebuild of the buckets (an ordinary launch before the step that prepareStep makes, not a chain's).
   */
  private chainFits(plan: StepPlan, steps: number): boolean {
    const sk = this.hostSeqLen + steps;
    if (sk > Math.min(plan.maxSeqLen, this.capacity)) return false;
    return plan.bucket === undefined || (this.bucketEnd >= 0 && sk - this.layout.config.windowSize - this.bucketEnd <= this.bucketTail);
  }

  /** Capture the chains' steps from the current sk and slot on (the host's sk restored after). */
  private captureChain(chain: StepChain, plan: StepPlan, query: StepInput, key: StepKey): void {
    const sk = this.hostSeqLen;
    const slot = this.seqSlot;
    this.chainBinding = undefined;
    this.stepCaptures++;
    try {
      chain.capture(() => {
        this.prepareStep(query.dtype, true);
        this.recordStep(query, key);
        this.commitStep(true);
      });
    } finally {
      this.hostSeqLen = sk;
      this.seqSlot = slot;
    }
    this.chainBinding = { plan, query, key, slot };
  }

  /**
   * A drain's skip: both seq slots to INT32_MIN, on a second stream (the cache's waits for the
   * doorbell), so the chain's remaining steps leave at once (kernels/select_row.cu).
   */
  private skipChainSteps(): void {
    const side = this.chainSideStream ?? (this.chainSideStream = this.owned.add(new Stream()));
    check('cuMemsetD32Async', driver().cuMemsetD32Async(this.seqPtr(0), SEQ_SKIP, 2, side.handle));
    side.synchronize();
  }

  /** After a drain: both seq slots hold the host's sk again (the next step reads seqSlot's). */
  private restoreSeqSlots(): void {
    check('cuMemsetD32Async', driver().cuMemsetD32Async(this.seqPtr(0), this.hostSeqLen, 2, this.stream.handle));
  }

  /** Chained steps: how many steps the chain has served (the others ran as graph steps). */
  get chainedStepCount(): number {
    return this.chainedSteps;
  }

  /** Resident steps: whether the resident kernel is running now (it stops when idle, and before other work on the index). */
  get residentActive(): boolean {
    return this.resident?.active === true;
  }

  /** Resident steps: device time of the last step (μs, from block (0, 0) seeing the ring to the last block publishing `done`). */
  get residentDeviceMicros(): number {
    return this.resident === undefined ? Number.NaN : this.resident.lastDeviceNs / 1000;
  }

  /**
   * Stop the resident kernel, if it runs (freeing its multiprocessors), and drain a chain waiting for
   * its next step (options.chained: the steps left are skipped); the next step starts either again.
   */
  stopResident(): void {
    this.chain?.drain();
    if (this.residentIdleTimer !== undefined) {
      clearInterval(this.residentIdleTimer);
      this.residentIdleTimer = undefined;
    }
    this.residentBinding = undefined;
    this.resident?.stop();
  }

  /** The pinned status word the kernels flag bad device inputs in (PqStatus bits). */
  get statusPtr(): DevicePtr {
    return this.status.ptr;
  }

  private currentPlan(sk: number): StepPlan {
    if (this.graphPlan === undefined || sk > this.graphPlan.maxSeqLen) {
      this.graphs.clear();
      this.graphPlan = this.planFor(sk);
      this.stepBindings = [];
    }
    return this.graphPlan;
  }

  /** The launch plan for a sequence length (slices per head and their length). */
  planFor(seqLen: number): StepPlan {
    const dev = this.context.device;
    if (this.pairs > 0) {
      const row = planRow(this.layout, seqLen, dev.multiprocessorCount, this.stepKernel, dev.computeCapability[0] >= 9, this.clusterOverride);
      // Same-run A/Bs (bench/NOTES.md session 10): the row kernel scanning 16 codes per thread is
      // 0.5 μs faster than bucket mode on the seed config, and with more heads than SMs the pair
      // clusters are faster up to short spans (B = 8, sk = 8192: 22.5 against 28 μs); beyond, bucket
      // mode (B = 8, sk = 131072: 31.5 against 81 μs).
      const auto = this.stepKernel === 'auto';
      // Resident steps need the row kernel (bucket mode rebuilds between steps): it stays first while
      // its whole grid fits on the device at once, though at 32 or 64 positions per thread it is
      // slower than bucket mode (the launch it saves is more).
      const rowFirst = auto && row !== undefined && (row.positionsPerThread === 16 || (this.residentOptions !== undefined && this.residentFits(row)));
      const clustersFirst = auto && this.layout.shape.batch * this.layout.shape.heads > dev.multiprocessorCount && eligibleSpan(this.layout, seqLen) <= BUCKET_MIN_SPAN_MANY_HEADS;
      const bucket = this.bucketRebuildKernel === undefined || rowFirst || clustersFirst ? undefined : planBucket(this.layout, seqLen, this.stepKernel, this.bucketSharedLimit());
      if (bucket !== undefined) {
        return { numSlices: 1, sliceLen: bucket.wordsPerThread * ROW_THREADS * 32, maxSeqLen: bucket.maxSeqLen, long: false, bitsTiles: 0, sharedBytes: bucket.sharedBytes, bucket };
      }
      if (row !== undefined) {
        return { numSlices: row.cluster, sliceLen: row.positionsPerThread * ROW_THREADS, maxSeqLen: row.maxSeqLen, long: false, bitsTiles: 0, sharedBytes: 0, row };
      }
      const p = planPairs(this.layout, seqLen, dev.multiprocessorCount, dev.computeCapability[0] >= 9, this.clusterOverride);
      return { ...p, numSlices: p.cluster };
    }
    return { ...planSelect(this.layout, seqLen, dev.multiprocessorCount, this.maxSlices, this.sliceLenOverride), long: false, bitsTiles: 0, sharedBytes: 0 };
  }

  /** Dynamic shared memory a bucket-mode kernel may opt in to: the device's per-block limit less its static arrays. */
  private bucketSharedLimit(): number {
    // Every instance has the same static arrays (RowShared): the smallest one's stand for all.
    const statics = loadStepKernels('select_row', this.phaseTiming).kernel(stepBucketKernelName(this.layout, { wordsPerThread: 1, wide: false })).attributes().staticSharedBytes;
    return this.context.device.maxSharedPerBlockOptin - statics;
  }

  /**
   * Bucket mode: group every kv-head's eligible positions [lo, sk − W) by code pair (reading sk on
   * the device), so the step gathers heavy hitters from them. After a new index every position is
   * sorted (pq_bucket_rebuild); later, the positions appended since are merged into the buckets
   * in place (pq_bucket_merge: the old entries shifted, the new ones scattered). Steps call this
   * themselves once 1024 (bucketTail) positions were appended since the last update; a server may
   * call it at a moment of its choosing (between requests) to keep that launch out of a
   * latency-critical step. `full` sorts every position again instead (what a new index costs).
   * Enqueued on the stream; a no-op outside bucket mode.
   */
  rebuildBuckets(options: { readonly full?: boolean } = NO_OPTIONS): void {
    this.live();
    this.stopResident();
    const rebuild = this.bucketRebuildKernel;
    const merge = this.bucketMergeKernel;
    if (rebuild === undefined || merge === undefined) return;
    const s = this.arena.slices;
    const { batch: B, kvHeads: Hkv } = this.layout.shape;
    const c = this.layout.config;
    const lo = Math.max(c.initOffset, c.sinkSize);
    const end = Math.max(lo, this.hostSeqLen - c.windowSize);
    const args = [
      s.codes.ptr, this.seqPtr(this.seqSlot), this.bucketEndPtr, s.bucketOffsets.ptr, s.buckets.ptr, s.pairCount.ptr, this.status.ptr,
      this.capPad, c.pqGroupFactor, this.layout.numCentroids, c.pqBits, lo, c.windowSize,
    ] as const;
    const shape = { grid: [B * Hkv, 1, 1], block: [ROW_THREADS, 1, 1] } as const;
    // Merge while the buckets hold a prefix of the eligible range (sk may also have gone back: sort).
    if (options.full !== true && this.bucketEnd >= lo && this.bucketEnd <= end) {
      this.bucketMergeArgs.setAll([...args, this.bucketEnd]);
      launch(merge, shape, this.bucketMergeArgs, this.stream);
    } else {
      this.bucketRebuildArgs.setAll(args);
      launch(rebuild, shape, this.bucketRebuildArgs, this.stream);
    }
    this.bucketEnd = end;
  }

  private get bucketEndPtr(): DevicePtr {
    return this.arena.slices.seqState.ptr + 8n;
  }

  /** pair_count += 1 for the codes of positions [from, to) (pair path only). */
  private countPairs(from: number, to: number): void {
    if (this.pairsCountKernel === undefined || to <= from) return;
    const { batch: B, kvHeads: Hkv } = this.layout.shape;
    const args = this.pairsCountArgs;
    args.setAll([this.arena.slices.codes.ptr, this.arena.slices.pairCount.ptr, from, to, this.capPad, this.layout.config.pqGroupFactor, this.layout.numCentroids]);
    launch(this.pairsCountKernel, { grid: [Math.ceil((to - from) / 256), B * Hkv, 1], block: [256, 1, 1] }, args, this.stream);
  }

  /**
   * pq_append reading sk from `slot` and writing sk + n to the other slot; key i of row (b, kv-head)
   * at element b·strides[0] + kv-head·strides[1] + r·strides[2] of `keys`, r = i, or sk + i with
   * `rowsFromSeq` (a step's key from a K cache, `keys` its base: src/pq/step-key.ts).
   */
  private launchAppend(keys: DevicePtr, kdtype: FloatDType, n: number, strides: readonly [bigint, bigint, bigint], slot: number, rowsFromSeq = false): void {
    const s = this.arena.slices;
    const { headDim: D, kvHeads: Hkv } = this.layout.shape;
    const { pqGroupFactor: M, initOffset: O, sinkSize: S, windowSize: W, metric } = this.layout.config;
    const args = new LaunchArgs(APPEND_ARGS);
    try {
      args.setAll([
        keys, DTYPE_CODE[kdtype], n, Hkv, strides[0], strides[1], strides[2], rowsFromSeq ? 1 : 0, s.centroids.ptr, this.centroidStride, s.phi.ptr, s.codes.ptr, this.seqPtr(slot),
        this.seqPtr(slot ^ 1), this.status.ptr, this.pairs > 0 && n === 1 ? s.pairCount.ptr : 0n, D, M, this.layout.numCentroids,
        this.capPad, O, metric === 'ip' ? 1 : 0, Math.max(O, S), W,
      ]);
      launch(this.appendKernel, { grid: [this.layout.shape.batch * this.layout.shape.kvHeads * n, 1, 1], block: [256, 1, 1] }, args, this.stream);
    } finally {
      args.dispose(); // the captured node keeps its own copy of the arguments
    }
  }

  private seqPtr(slot: number): DevicePtr {
    return this.arena.slices.seqState.ptr + BigInt(4 * slot);
  }

  /** The general select kernel (M > 2 or large C), reading sk from `slot`. */
  private launchSelect(query: StepInput, plan: { numSlices: number; sliceLen: number }, slot: number): void {
    const s = this.arena.slices;
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = this.layout.shape;
    const c = this.layout.config;
    const args = new LaunchArgs(SELECT_ARGS);
    try {
      args.setAll([
        query.ptr, DTYPE_CODE[query.dtype], query.rows.batch, query.rows.head, s.centroids.ptr, s.codes.ptr, this.seqPtr(slot), s.candScore.ptr, s.candPos.ptr, s.candCount.ptr, s.selectCounters.ptr,
        s.sparseList.ptr, s.sparseLen.ptr, s.weights.ptr, DTYPE_CODE[this.weightsDType ?? 'f32'], BigInt(this.capPad), this.layout.listCapacity,
        this.status.ptr, H, Hkv, D, this.layout.numCentroids, this.centroidStride, this.capPad, c.sinkSize, c.windowSize, c.heavySize,
        c.initOffset, fullAttentionThreshold(c, this.layout.numCentroids), plan.numSlices, plan.sliceLen,
      ]);
      launch(this.selectKernel as Kernel, { grid: [plan.numSlices, B * H, 1], block: [SELECT_THREADS, 1, 1] }, args, this.stream);
    } finally {
      args.dispose();
    }
  }

  /**
   * The pair path's step kernel: select clusters for every query head, plus (when `keys` is given)
   * the append blocks of the new key. Reads sk from `slot`; with keys, writes sk + 1 to the other.
   */
  private launchStepPairs(query: StepInput, key: StepKey | undefined, plan: StepPlan, slot: number, overlapPrevious = false): void {
    const { kernel, shape, values } = this.stepPairsLaunch(query, key, plan, slot, false);
    const args = new LaunchArgs(STEP_PAIRS_ARGS);
    try {
      args.setAll(values);
      launch(kernel, { ...shape, overlapPrevious }, args, this.stream);
      this.lastStepGrid = [shape.grid[0], shape.grid[1]];
    } finally {
      args.dispose();
    }
  }

  /** The pair path's step kernel for `plan` (`resident`: the row kernel's resident form); graph keys name it too. */
  private stepKernelName(plan: StepPlan, resident = false): string {
    if (resident && plan.row !== undefined) return residentRowKernelName(this.layout, plan.row);
    if (plan.bucket !== undefined) return stepBucketKernelName(this.layout, plan.bucket);
    if (plan.row !== undefined) return stepRowKernelName(this.layout, plan.row);
    return stepPairsKernelName(this.layout, plan.numSlices, plan.long);
  }

  /**
   * Kernel, shape and arguments of the pair path's step. `resident`: the row kernel's resident form
   * (plan.row), which takes the slot and whether a step appends from each ring: seq_read and
   * seq_write are the slot array, `appended` unused.
   */
  private stepPairsLaunch(query: StepInput, key: StepKey | undefined, plan: StepPlan, slot: number, resident: boolean):
    { kernel: Kernel; shape: LaunchShape; values: StepPairsValues } {
    const s = this.arena.slices;
    const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = this.layout.shape;
    const c = this.layout.config;
    const cluster = plan.numSlices;
    const kernel = loadStepKernels(plan.row !== undefined || plan.bucket !== undefined ? 'select_row' : 'select_pairs', this.phaseTiming)
      .kernel(this.stepKernelName(plan, resident));
    const appendRows = key !== undefined ? Math.ceil((B * Hkv) / cluster) : 0;
    const threads = plan.row !== undefined || plan.bucket !== undefined ? ROW_THREADS : SELECT_THREADS;
    const buckets = plan.bucket !== undefined;
    const values: StepPairsValues = [
      query.ptr, DTYPE_CODE[query.dtype], query.rows.batch, query.rows.head, key?.base ?? 0n, DTYPE_CODE[key?.dtype ?? 'f32'], key?.rows.batch ?? 0n, key?.rows.head ?? 0n, key?.rows.row ?? 0n,
      s.centroids.ptr, s.phi.ptr, s.codes.ptr, this.seqPtr(resident ? 0 : slot), this.seqPtr(resident ? 0 : slot ^ 1), key !== undefined && !resident ? 1 : 0, s.pairCount.ptr, s.readers.ptr, s.sparseList.ptr,
      s.sparseLen.ptr, s.weights.ptr, DTYPE_CODE[this.weightsDType ?? 'f32'], BigInt(this.capPad), this.layout.listCapacity, this.status.ptr,
      B, H, Hkv, D, this.layout.numCentroids, c.pqBits, this.centroidStride, this.capPad, c.sinkSize, c.windowSize, c.heavySize, c.initOffset,
      c.metric === 'ip' ? 1 : 0, fullAttentionThreshold(c, this.layout.numCentroids), plan.sliceLen, plan.bitsTiles, this.phaseBuffer?.ptr ?? 0n,
      buckets ? this.bucketEndPtr : 0n, buckets ? s.bucketOffsets.ptr : 0n, buckets ? s.buckets.ptr : 0n,
    ];
    const sharedBytes = resident && plan.row !== undefined ? residentCacheBytes(this.layout, plan.row) : plan.sharedBytes;
    return { kernel, shape: { grid: [cluster, B * H + appendRows, 1], block: [threads, 1, 1], sharedBytes }, values };
  }

  /**
   * Per-block phase durations (SM cycles) of the last pair step kernel, when created with
   * phaseTiming: for each block (x, y), the cycles from the start to each of STEP_PHASES (0 when the
   * block skipped a phase). Synchronizes. After a resident step, also that step's protocol stamps
   * (global timer, as the blocks' slots 14 and 15: see ResidentLaunch.lastRequestStamps).
   */
  phaseClocks(): { grid: readonly [number, number]; cycles: BigInt64Array; resident?: { readonly seenNs: bigint; readonly doneNs: bigint } } {
    if (this.phaseBuffer === undefined) throw new StateError('phaseClocks', 'a cache created with phaseTiming on the pair path', 'none');
    this.synchronize();
    const [gx, gy] = this.lastStepGrid;
    const cycles = new BigInt64Array(gx * gy * 16);
    copies.toHost(cycles, this.phaseBuffer);
    // A resident step's protocol stamps are on the blocks' global timer (slots 14, 15).
    const resident = this.resident?.active === true ? this.resident.lastRequestStamps : undefined;
    return { grid: this.lastStepGrid, cycles, ...(resident === undefined ? {} : { resident }) };
  }

  /** Zero the weights, empty the lists: the kernel's incremental update starts from here. */
  private resetOutputs(dtype: FloatDType): void {
    const s = this.arena.slices;
    copies.fill32Async(s.weights, 0, s.weights.bytes / 4, this.stream);
    copies.fill32Async(s.sparseLen, 0, s.sparseLen.bytes / 4, this.stream);
    copies.fill32Async(s.sparseList, 0xffffffff, s.sparseList.bytes / 4, this.stream);
    this.weightsDType = dtype;
    // Graphs stay: their key carries the weights dtype, and the buffers they read and write are
    // the arena's, so a new request (uploadState) replays the graphs captured by the last one.
  }

  /** Copy the outputs to new host arrays and synchronize. */
  private readOutputs(dtype: FloatDType): SelectResult<HostTensor> {
    const { batch: B, heads: H } = this.layout.shape;
    const rows = B * H;
    const L = this.layout.listCapacity;
    const sk = this.hostSeqLen;
    const s = this.arena.slices;
    const d = driver();
    const sparseList = new Int32Array(rows * L);
    const sparseLen = new Int32Array(rows);
    const eb = BYTES_PER_ELEMENT[dtype];
    const weights = dtype === 'f32' ? new Float32Array(rows * sk) : new Uint16Array(rows * sk);
    check('cuMemcpyDtoHAsync_v2', d.cuMemcpyDtoHAsync_v2(sparseList, s.sparseList.ptr, sparseList.byteLength, this.stream.handle));
    check('cuMemcpyDtoHAsync_v2', d.cuMemcpyDtoHAsync_v2(sparseLen, s.sparseLen.ptr, sparseLen.byteLength, this.stream.handle));
    if (sk > 0) {
      check(
        'cuMemcpy2DAsync_v2',
        d.cuMemcpy2DAsync_v2(
          {
            srcXInBytes: 0, srcY: 0, srcMemoryType: CU_MEMORYTYPE_DEVICE, srcHost: null, srcDevice: s.weights.ptr, srcArray: null,
            srcPitch: this.capPad * eb, dstXInBytes: 0, dstY: 0, dstMemoryType: CU_MEMORYTYPE_HOST,
            dstHost: koffi.address(weights) as bigint, dstDevice: 0n, dstArray: null, dstPitch: sk * eb, WidthInBytes: sk * eb, Height: rows,
          },
          this.stream.handle,
        ),
      );
    }
    this.stream.synchronize(); // the copies above, also between resident steps
    this.completion.settled();
    this.checkStatus();
    return hostSelectResult(this.layout, sk, dtype, { sparseList, sparseLen, weights });
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.stopResident();
    this.owned.disposeAfter(this.stream, this.graphs);
  }
}

function chainOptionsOf(option: boolean | ChainOptions | undefined): Required<ChainOptions> | undefined {
  if (option === undefined || option === false) return undefined;
  const o = option === true ? {} : option;
  const length = o.length ?? 64;
  // Even: a full launch returns the seq slot to the one the graph's first step reads.
  if (!Number.isInteger(length) || length < 2 || length > 1024 || length % 2 !== 0) throw new ConfigError('chained.length', 'an even integer in [2, 1024]', o.length);
  return { length, requestMs: positiveMs('chained.requestMs', o.requestMs ?? 5000) };
}

function residentOptionsOf(option: boolean | ResidentOptions | undefined): Required<ResidentOptions> | undefined {
  if (option === undefined || option === false) return undefined;
  const o = option === true ? {} : option;
  return { idleMs: positiveMs('resident.idleMs', o.idleMs ?? 200), requestMs: positiveMs('resident.requestMs', o.requestMs ?? 5000) };
}
