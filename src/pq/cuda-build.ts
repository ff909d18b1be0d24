/**
 * PQ build on the GPU (kernels/build.cu): batched k-means over all B·Hkv·M groups at once, from the
 * oracle's seeded initial draw (rng.ts), with the oracle's nearest centroid (tensor-core estimates,
 * near ties re-scored in its canonical order), means and re-seeding, so that integer-valued data
 * gives identical centroids and codes on both backends. One pass over the keys per round: the
 * cluster sums follow the points whose code changed, except in the first rounds, where so many
 * points change that a second pass forming the sums in code order costs less (round 0, where every
 * point joins a cluster, and round 1: `BuildTuning.recomputeRounds`). The k-means is one CUDA graph (norms,
 * init with the oracle's initial draw, every round and finalize, the final assignment, and the
 * publication of the index), launched once. Keys come from the host (uploaded) or from device
 * memory in any float dtype (read in place when fp32 or bf16 in a layout the kernels address, and f16
 * where the wgmma rounds take them: see `keysInPlace`). Device keys are checked for NaN/Inf by kernels
 * that read them anyway, and the k-means works in the workspace: the index is written only when every
 * key was finite. On compute capability 9.0, bf16 and f16 keys with dsub 64 and C ≤ 64 take the
 * warp-specialized wgmma round kernels (kernels/build_ws.cu) instead of build.cu's mma.sync ones
 * (`BuildTuning.roundFamily`; f16 keys are staged into fp32 for those).
 */
import { GraphCache, type GraphExec } from '../cuda/graph.js';
import { type ArgKind, LaunchArgs, launch } from '../cuda/launch.js';
import { ARENA_ALIGNMENT, DeviceArena, PinnedBuffer, copies, type DeviceRange } from '../cuda/memory.js';
import { CudaContext } from '../cuda/context.js';
import type { Module } from '../cuda/module.js';
import { CompletionSignal } from '../cuda/signal.js';
import type { Event, Stream } from '../cuda/stream.js';
import { ConfigError, DeviceInputError, ShapeError } from '../errors.js';
import type { DeviceTensor } from '../tensor/device-tensor.js';
import { BYTES_PER_ELEMENT, type FloatDType, allocStorage, readFloat } from '../tensor/dtype.js';
import { HostTensor } from '../tensor/host-tensor.js';
import type { Layout } from './config.js';
import { roundUp } from './cuda-plan.js';
import { DTYPE_CODE, loadKernels } from './kernels.js';
import { checkCapacity, checkFinite } from './validate.js';

const ROUND_THREADS = 128;
/** Points a round block scores at once (4 warps × one 16-point tile each). */
const BLOCK_POINTS = (ROUND_THREADS / 32) * 16;
/** Round modes of kernels/build.cu (BuildRoundMode). */
const ROUND_FIRST = 0;
const ROUND_NEXT = 1;
const ROUND_FINAL = 2;
const ROUND_RECOMPUTE = 3;

export interface DeviceBuildTarget {
  /** [G, C, cstride] f32 (G = B·Hkv·M) */
  readonly centroids: DeviceRange;
  readonly centroidStride: number;
  /** [B, Hkv, capPad, M] u8: the codes of positions O … sk−1 are written */
  readonly codes: DeviceRange;
  readonly capPad: number;
  /** [G] f32: φ for ip (left 0 for euclidean) */
  readonly phi: DeviceRange;
}

/** Row strides of the index's device buffers: 16-byte centroid rows, code rows of a multiple of 16 positions. */
export function deviceIndexStrides(layout: Layout, capacity: number): { readonly centroidStride: number; readonly capPad: number } {
  return { centroidStride: roundUp(layout.centroidDim, 4), capPad: roundUp(capacity, 16) };
}

/** A build target of its own (benchmarks, tests): centroids, codes and φ for `capacity` positions. */
export function allocateBuildTarget(layout: Layout, capacity: number): { readonly target: DeviceBuildTarget; readonly arena: DeviceArena<'centroids' | 'codes' | 'phi'> } {
  const { centroidStride, capPad } = deviceIndexStrides(layout, capacity);
  const G = layout.shape.batch * layout.shape.kvHeads * layout.config.pqGroupFactor;
  const arena = DeviceArena.allocate({ centroids: G * layout.numCentroids * centroidStride * 4, codes: G * capPad, phi: G * 4 });
  const s = arena.slices;
  return { arena, target: { centroids: s.centroids, centroidStride, codes: s.codes, capPad, phi: s.phi } };
}

/**
 * A build target's buffers copied to the host as laid out on the device: centroid rows of
 * `centroidStride` floats, code rows of `capPad` positions. Waits for the copies.
 */
export function readBuildTarget(t: DeviceBuildTarget): { readonly centroids: Float32Array; readonly codes: Uint8Array; readonly phi: Float32Array } {
  const out = { centroids: new Float32Array(t.centroids.bytes / 4), codes: new Uint8Array(t.codes.bytes), phi: new Float32Array(t.phi.bytes / 4) };
  copies.toHost(out.centroids, t.centroids);
  copies.toHost(out.codes, t.codes);
  copies.toHost(out.phi, t.phi);
  return out;
}

/** What the assignment passes did, per round (the last entry is the final assignment). */
export interface BuildStats {
  /** Points whose tensor-core estimate left a near tie, re-scored in the canonical order. */
  readonly flaggedPerRound: readonly number[];
  /** Points whose code changed (moved between cluster sums); all of them in round 0. */
  readonly changedPerRound: readonly number[];
  /** Points per round (all groups). */
  readonly points: number;
  /** The round kernel. */
  readonly roundKernel: string;
  /** Leading rounds whose sums were formed from their codes (the rest moved their changed points). */
  readonly recomputedRounds: number;
  /** Points a pq_build_first_sums block took. */
  readonly firstSumsChunk: number;
  /** How the kernels read the keys: uploaded from the host, staged (a contiguous fp32 copy of device keys), or in place. */
  readonly keysRead: 'uploaded' | 'staged' | 'in place';
}

/** Benchmark overrides of the build's choices (defaults: DEFAULT_ROUND_BLOCKS, DEFAULT_RECOMPUTE_ROUNDS). */
export interface BuildTuning {
  /**
   * Round-kernel blocks (of 4 warps) per SM, by its register limit: 2 (any KS), 3 or 4 (KS ≤ 4:
   * at most 168 or 128 registers).
   */
  readonly blocksPerSM?: 2 | 3 | 4;
  /**
   * Leading rounds (≥ 1) whose cluster sums are formed again from their codes by a pass of
   * pq_build_first_sums instead of following the points that moved. Round 0 always is.
   */
  readonly recomputeRounds?: number;
  /** Points a pq_build_first_sums block takes (≤ 8192; default by key dtype: FIRST_SUMS_CHUNK). */
  readonly firstSumsChunk?: number;
  /**
   * The round kernel's family: 'wgmma' (kernels/build_ws.cu, warp-specialized: bf16 or f16 keys read
   * in place with 16-byte aligned rows, dsub = 64, euclidean, C ≤ 64, compute capability 9.0; a
   * ConfigError names what does not hold) or 'mma' (kernels/build.cu, any layout and GPU; f16 keys
   * staged into fp32). Default: 'wgmma' where it applies, else 'mma'.
   */
  readonly roundFamily?: 'wgmma' | 'mma';
}

/**
 * Rounds 0 and 1 form their sums from the codes. A moved point costs 2·cdim float64 atomics, ≈ 9 μs
 * of the seed build's bf16 round per percent of points moved (≈ 280 μs in round 1, 32% moved); a
 * pass of pq_build_first_sums costs 114 μs from bf16 keys, 196 from fp32 (ncu). Seed build, same
 * run (session 32): 1, 2, 3 rounds took 2798, 2629, 2683 μs from bf16 keys and 3294, 3228, 3365
 * from fp32 (round 2 moves 14% of the points, 73 μs of moves). The wgmma rounds' cheaper moves
 * (from shared memory, session 35) keep 2: 2484, 2282, 2340 μs from bf16 keys.
 */
export const DEFAULT_RECOMPUTE_ROUNDS = 2;

/** Round-kernel blocks per SM where KS ≤ 4 allows a choice. */
const DEFAULT_ROUND_BLOCKS = 4;

/** n-tiles of 8 centroids in one chunk of the round kernel (64 centroids, scored without a guard). */
const CHUNK_NTILES = 8;

/**
 * The round kernel of kernels/build.cu for KS k-steps: `_c1` kernels score one chunk of 64
 * centroids (C ≤ 64), at 2 blocks per SM or, for KS ≤ 4, at 3 or 4; more chunks take the general
 * kernel (2 blocks per SM). `suffix`: the keys' kernels (KeyBinding).
 */
function roundKernelName(KS: number, oneChunk: boolean, tuning: BuildTuning, suffix: KeyBinding['suffix']): string {
  if (!oneChunk) return `pq_build_round_k${KS}${suffix}`;
  const blocks = KS <= 4 ? (tuning.blocksPerSM ?? DEFAULT_ROUND_BLOCKS) : 2;
  return `pq_build_round_k${KS}_c1_b${blocks}${suffix}`;
}

/** Threads of pq_build_round_ws_bf16/_f16 (kernels/build_ws.cu kWsThreads: two consumer warpgroups, two producer warps). */
const WS_ROUND_THREADS = 320;
/** Its tile stages (kWsStages). */
const WS_ROUND_STAGES = 4;
/** Its dynamic shared memory (kWsSmemBytes: alignment slack, the 8 KB stages, centroid operands, fp32 centroids, |c|²/2). */
const WS_ROUND_SMEM = 1024 + WS_ROUND_STAGES * 8192 + 2 * 8192 + 16384 + 272;

/**
 * Why kernels/build_ws.cu's round kernels do not apply to these keys and layout (undefined: they
 * do; `bound`: keys read in place, if they are). They read bf16 or f16 rows of dsub = 64 by 16-byte
 * copies in wgmma's layout (sm_90a code).
 */
function wgmmaRoundRefusal(layout: Layout, bound: KeyBinding | undefined): string | undefined {
  const refusal = wgmmaLayoutRefusal(layout);
  if (refusal !== undefined) return refusal;
  if (bound?.suffix !== '_bf16' && bound?.suffix !== '_f16') return 'bf16 or f16 device keys read in place (not host, staged or fp32 keys)';
  return wsRowsRefusal(bound);
}

/** The 16-byte rows build_ws.cu's producers copy (2-byte keys). */
function wsRowsRefusal(bound: Pick<KeyBinding, 'ptr' | 'headStride' | 'rowStride'>): string | undefined {
  return bound.ptr % 16n !== 0n || bound.headStride % 8 !== 0 || bound.rowStride % 8 !== 0 ? 'key rows 16-byte aligned' : undefined;
}

/** The device's and the layout's part of wgmmaRoundRefusal (what a workspace can know before the keys). */
function wgmmaLayoutRefusal(layout: Layout): string | undefined {
  const [major, minor] = CudaContext.primary().device.computeCapability;
  if (major !== 9 || minor !== 0) return `compute capability 9.0 (sm_90a code), not ${major}.${minor}`;
  if (layout.subDim !== 64 || layout.centroidDim !== 64) return `dsub = 64 without the ip coordinate, not a centroid dimension of ${layout.centroidDim}`;
  if (layout.numCentroids > 64) return `C ≤ 64, not ${layout.numCentroids}`;
  return undefined;
}

/** Whether kernels/build.cu handles this layout (else the CPU oracle builds). */
export function deviceBuildSupported(layout: Layout): boolean {
  return layout.subDim <= 128 && layout.subDim % 4 === 0 && layout.numCentroids <= 256;
}

// Every kernel that reads keys takes (…, n, M, head_stride u64, row_stride, D, O, …): see KeyBinding.
const NORMS_ARGS = ['ptr', 'ptr', 'ptr', 'i32', 'i32', 'u64', 'i32', 'i32', 'i32'] as const;
const INIT_ARGS = ['ptr', 'ptr', 'ptr', 'u32', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'u64', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const ROUND_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'u64', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const FIRST_SUMS_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'u64', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
/** Bytes of pq_build_init's draw scratch (initial_sample_indices). */
const INIT_DRAW_SCRATCH = 2 * 256 * 4;
/** Most points a pq_build_first_sums block takes (kSumChunk). */
const FIRST_SUMS_MAX_CHUNK = 8192;
/**
 * Points a pq_build_first_sums block takes, by key dtype. fp32: 8192, one wave on the seed config
 * (256 blocks at 3 a multiprocessor; 4096 made 1.3 waves, 201 against 223 μs, ncu, session 26).
 * bf16 (64 registers, 4 blocks a multiprocessor): 4096, 114 against 125 μs for 8192 and 121 for
 * 2048 (ncu, session 32); f16 as bf16 (the same loads).
 */
const FIRST_SUMS_CHUNK = { '': 8192, _bf16: 4096, _f16: 4096 } as const;
const STAGE_ARGS = ['ptr', 'i32', 'u64', 'u64', 'u64', 'ptr', 'ptr', 'i32', 'i32', 'i32'] as const;
const CHECK_ARGS = ['ptr', 'u64', 'i32', 'ptr', 'i32', 'i32'] as const;
const FINALIZE_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'u64', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'u32', 'i32', 'ptr'] as const;
/** n-tiles of 8 centroids a pq_build_finalize block takes (kFinalizeTiles). */
const FINALIZE_TILES = 2;
/** Floats of a group's info (kernels/build.cu info_stride): |c|²/2 per centroid slot, then each finalize block's max |c|. */
function infoStride(NT: number): number {
  return NT * 8 + NT / FINALIZE_TILES;
}
const PUBLISH_ARGS = ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;

/**
 * pq_build_stage_keys: device keys the kernels cannot read in place into the contiguous fp32 copy
 * `staged`, checking every element for NaN/Inf on the way (into `firstBad`). Keys read in place are
 * checked inside the build graph by kernels that read them anyway (kernels/build.cu, "NaN/Inf
 * keys"). No wait: the host reads `firstBad` after the graph.
 */
function launchStageKeys(mod: Module, keys: DeviceTensor, staged: DeviceRange, firstBad: DeviceRange, layout: Layout, seqLen: number,
  stream: Stream, args: <K extends readonly ArgKind[]>(kinds: K) => LaunchArgs<K>): void {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const [s0, s1, s2] = keys.strides;
  const a = args(STAGE_ARGS).setAll([keys.ptr, DTYPE_CODE[keys.dtype as FloatDType], BigInt(s0), BigInt(s1), BigInt(s2), staged.ptr, firstBad.ptr, Hkv, seqLen, D]);
  launch(mod.kernel('pq_build_stage_keys'), { grid: [Math.ceil(seqLen / 32), B * Hkv, 1], block: [256, 1, 1] }, a, stream);
}

/**
 * pq_build_check_keys over keys read in place (a node of the build graph where no first sums run, so
 * nothing else reads every key): about two waves of 256-thread blocks over all heads, each thread
 * 8 vector loads at a time.
 */
function launchKeyCheck(mod: Module, bound: KeyBinding, firstBad: DeviceRange, layout: Layout, seqLen: number, stream: Stream,
  args: <K extends readonly ArgKind[]>(kinds: K) => LaunchArgs<K>): void {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const quads = (seqLen * D) / 4;
  const perHead = Math.max(1, Math.min(Math.ceil(quads / (256 * 8)), Math.ceil((16 * CudaContext.primary().device.multiprocessorCount) / (B * Hkv))));
  const a = args(CHECK_ARGS).setAll([bound.ptr, BigInt(bound.headStride), bound.rowStride, firstBad.ptr, seqLen, D]);
  launch(mod.kernel(`pq_build_check_keys${bound.suffix}`), { grid: [perHead, B * Hkv, 1], block: [256, 1, 1] }, a, stream);
}

/** How often the host looks at the rounds done while the build graph runs (ms). */
const PROGRESS_POLL_MS = 1;

/**
 * Wait for the build graph on `stream`, calling `onRound` for each round that pq_build_finalize
 * reports done in `rounds` (mapped pinned memory) meanwhile. The last call, once the graph has
 * completed, counts the rounds the device wrote plus the final assignment: it reaches done = total
 * only if every finalize ran.
 */
function waitReportingRounds(stream: Stream, rounds: Uint32Array, total: number, onRound: (done: number, total: number) => void): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  let seen = 0;
  for (;;) {
    const idle = stream.isIdle(); // before the read: the last count written is then seen
    const done = Atomics.load(rounds, 0); // a plain read in a loop may be hoisted by the JIT
    if (idle) {
      onRound(done + 1, total);
      return;
    }
    if (done > seen) {
      seen = done;
      onRound(done, total);
    }
    Atomics.wait(nap, 0, 0, PROGRESS_POLL_MS);
  }
}

/**
 * Device keys ([B, Hkv, sk, D] with checkDeviceKeys' strides) as the host f32 array the CPU build
 * takes, where the build kernels do not apply (dsub > 128); NonFiniteError names the first bad
 * element. The caller's stream must have written them.
 */
export function deviceKeysToHost(t: DeviceTensor, layout: Layout, sk: number): Float32Array {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const dtype = t.dtype as FloatDType;
  const [s0, s1, s2] = t.strides;
  const bytes = BYTES_PER_ELEMENT[dtype];
  const span = (sk - 1) * s2 + D; // elements from a (b, kvh)'s first row to the end of its last
  const raw = allocStorage(dtype, span);
  const out = new Float32Array(B * Hkv * sk * D);
  for (let b = 0; b < B; b++) {
    for (let kvh = 0; kvh < Hkv; kvh++) {
      copies.toHost(raw, { ptr: t.ptr + BigInt((b * s0 + kvh * s1) * bytes), bytes: span * bytes });
      const o = (b * Hkv + kvh) * sk * D;
      for (let p = 0; p < sk; p++) {
        for (let j = 0; j < D; j++) out[o + p * D + j] = readFloat(dtype, raw as Float32Array | Uint16Array, p * s2 + j);
      }
    }
  }
  checkFinite('keys', new HostTensor('f32', [B, Hkv, sk, D], out));
  return out;
}

/**
 * Keys as the build kernels address them (kernels/build.cu, "Keys"): row p of (b, kv-head) bkv at
 * `ptr` + (bkv·headStride + p·rowStride) elements, read as fp32 or, with the `_bf16` and `_f16`
 * kernels, bf16 and f16.
 */
interface KeyBinding {
  readonly ptr: bigint;
  readonly suffix: '' | '_bf16' | '_f16';
  readonly headStride: number;
  readonly rowStride: number;
}

/**
 * Device keys in a layout the build kernels address where they are: fp32, bf16 or f16 whose
 * (b, kv-head) blocks step by one stride (B = 1, or s0 = Hkv·s1: contiguous keys, or a
 * [B, Hkv, capacity, D] K cache) and whose rows start 16-byte (fp32) or 8-byte (bf16, f16) aligned.
 * fp32 and bf16 in such a layout are read in place; f16 only by the wgmma rounds (kernels/build.cu
 * has no f16 round kernels: buildOnDevice stages it where they do not run). Anything else is
 * staged into contiguous fp32 first.
 */
function keysInPlace(keys: DeviceTensor, Hkv: number): KeyBinding | undefined {
  if (keys.dtype !== 'f32' && keys.dtype !== 'bf16' && keys.dtype !== 'f16') return undefined;
  const [B, , sk, D] = keys.shape;
  const [s0, s1, s2] = keys.strides;
  const bytes = BYTES_PER_ELEMENT[keys.dtype];
  const aligned = keys.ptr % BigInt(4 * bytes) === 0n && s1 % 4 === 0 && s2 % 4 === 0;
  // rowStride < 2^26: the kernels offset a tile's 16 rows in int32; pq_build_check_keys counts a
  // head's sk·D/4 quads in int32.
  if (!aligned || (B > 1 && s0 !== Hkv * s1) || s2 >= 2 ** 26 || (sk * D) / 4 >= 2 ** 31) return undefined;
  return { ptr: keys.ptr, suffix: keys.dtype === 'f32' ? '' : `_${keys.dtype}`, headStride: s1, rowStride: s2 };
}

/** A contiguous fp32 [B, Hkv, sk, D] copy for keys the kernels cannot read in place (host keys too). */
function stagedKeys(layout: Layout, seqLen: number): { readonly bound: KeyBinding; readonly staging: DeviceArena<'keys'> } {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const staging = DeviceArena.allocate({ keys: B * Hkv * seqLen * D * 4 });
  return { bound: { ptr: staging.slices.keys.ptr, suffix: '', headStride: seqLen * D, rowStride: D }, staging };
}

// Declared in arena order: firstBad and stats are read back in one copy, stats … phi zeroed by one fill.
type WorkspaceSlice = 'firstBad' | 'stats' | 'sums' | 'counts' | 'centroids' | 'phi' | 'norms' | 'codes' | 'frag' | 'info';

/** The bytes from the start of `first` to the end of `last` (slices of one arena, in that order). */
function spanOf(first: DeviceRange, last: DeviceRange): DeviceRange {
  return { ptr: first.ptr, bytes: Number(last.ptr - first.ptr) + last.bytes };
}

/** Graphs a workspace keeps (a new sk or key binding captures another; past this all are dropped). */
const KEPT_BUILD_GRAPHS = 4;

/**
 * What the builds of one index keep between calls (CudaPQCache holds one): the k-means
 * temporaries for up to `capacity` positions, allocated at the first build; the progress word; and
 * the captured graphs by sk and key binding. A build then allocates and frees nothing but a key
 * staging copy (host keys, or device keys the kernels cannot read in place), and a repeated sk and key
 * binding replays its graph instead of capturing it again. Holds G·(capacity − O)·(1 + 4 for ip, or
 * where the wgmma rounds can apply: compute capability 9.0, dsub = 64, C ≤ 64) bytes plus the sums, counts, centroids and packed
 * centroids (14.4 MB on the seed config at capacity 32000).
 */
export class BuildWorkspace {
  private arena: DeviceArena<WorkspaceSlice> | undefined;
  private progressWord: PinnedBuffer | undefined;
  private outcomeCopy: PinnedBuffer | undefined;
  private completionSignal: CompletionSignal | undefined;
  private readonly graphs = new GraphCache(KEPT_BUILD_GRAPHS);

  constructor(private readonly layout: Layout, private readonly capacity: number) {}

  /** The temporaries for a build of `seqLen` positions (allocated on first use). */
  slices(seqLen: number): Readonly<Record<WorkspaceSlice, DeviceRange>> {
    checkCapacity('seqLen', this.capacity, seqLen);
    return this.allocated();
  }

  /** The arena's slices, allocated for `capacity` positions on first use. */
  private allocated(): Readonly<Record<WorkspaceSlice, DeviceRange>> {
    if (this.arena === undefined) {
      const { layout } = this;
      const G = layout.shape.batch * layout.shape.kvHeads * layout.config.pqGroupFactor;
      const n = this.capacity - layout.config.initOffset;
      const C = layout.numCentroids;
      const cdim = layout.centroidDim;
      const NT = roundUp(Math.ceil(C / 8), CHUNK_NTILES);
      const KS = Math.ceil(cdim / 16);
      this.arena = DeviceArena.allocate<WorkspaceSlice>({
        // The lowest flat index of a NaN/Inf key (8 bytes), its slice filled whole: the host reads it
        // and the stats in one copy, padding included.
        firstBad: ARENA_ALIGNMENT,
        stats: (layout.config.kmeansIters + 1) * 2 * 4,
        sums: G * C * cdim * 8,
        counts: G * C * 4,
        // The k-means' centroids and φ: the index gets them from pq_build_publish once the keys are known finite.
        centroids: G * C * deviceIndexStrides(layout, this.capacity).centroidStride * 4,
        phi: G * 4,
        // |x|²: the ip augmentation's; or |x| (rounded up), the wgmma rounds' band's (written by round 0, read by the later ones)
        norms: layout.config.metric === 'ip' || wgmmaLayoutRefusal(layout) === undefined ? G * n * 4 : 0,
        codes: G * n,
        frag: G * NT * KS * 32 * 16,
        info: G * infoStride(NT) * 4,
      });
    }
    return this.arena.slices;
  }

  /** Rounds done, written by pq_build_finalize into mapped pinned memory while the graph runs. */
  progress(): PinnedBuffer {
    this.progressWord ??= new PinnedBuffer(4);
    return this.progressWord;
  }

  /**
   * firstBad and the stats (adjacent in the arena: `device`), and the pinned memory the build
   * graph's last node copies them into (`host`), read after the sync with no driver call.
   */
  outcome(): { readonly device: DeviceRange; readonly host: PinnedBuffer } {
    const s = this.allocated();
    const device = spanOf(s.firstBad, s.stats);
    this.outcomeCopy ??= new PinnedBuffer(device.bytes);
    return { device, host: this.outcomeCopy };
  }

  /** The wait for a build's graph: ≈ 2 μs sooner than cuStreamSynchronize (src/cuda/signal.ts). */
  completion(): CompletionSignal {
    this.completionSignal ??= new CompletionSignal();
    return this.completionSignal;
  }

  /** The build graph for this sk, kernel and binding, captured by `enqueue` if not kept. */
  graph(signature: string, pointers: readonly bigint[], stream: Stream, enqueue: () => void): GraphExec {
    return this.graphs.get(signature, pointers, stream, enqueue);
  }

  dispose(): void {
    this.graphs.dispose();
    this.progressWord?.dispose();
    this.progressWord = undefined;
    this.outcomeCopy?.dispose();
    this.outcomeCopy = undefined;
    this.completionSignal?.dispose();
    this.completionSignal = undefined;
    this.arena?.dispose();
    this.arena = undefined;
  }
}

/**
 * Run the k-means of `keys` ([B, Hkv, sk, D]: f32 on the host, or any float dtype on the device)
 * into `target`: one CUDA graph on `stream`, synchronized at the end. Device keys are read in place
 * where `keysInPlace` allows, else converted into a temporary fp32 copy; either way a NaN or Inf
 * among them throws DeviceInputError (naming the lowest flat index) with `target` as it was: the
 * graph writes it last, and only when every key was finite. `onRound(done, total)` reports
 * progress as rounds finish (the host polls a word the graph writes; the last call, done = total,
 * comes after the graph completed).
 */
export function buildOnDevice(
  layout: Layout,
  keys: Float32Array | DeviceTensor,
  seqLen: number,
  target: DeviceBuildTarget,
  stream: Stream,
  onRound?: (done: number, total: number) => void,
  /**
   * Recorded around the k-means graph's launch (after the key upload or staging) when given, for
   * benchmarks; `beforeStart` enqueues work ahead of the start event (a benchmark's busy queue, so
   * that the events time the device alone and not the host's launch).
   */
  events?: { readonly start: Event; readonly end: Event; readonly beforeStart?: (stream: Stream) => void },
  tuning: BuildTuning = {},
  /** Kept temporaries and graphs (sk − O ≤ its capacity − O); without one, the build makes and frees its own. */
  workspace?: BuildWorkspace,
): BuildStats {
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const { pqGroupFactor: M, initOffset: O, kmeansIters: iters, seed, metric } = layout.config;
  const C = layout.numCentroids;
  const cdim = layout.centroidDim;
  const cstride = target.centroidStride;
  const G = B * Hkv * M;
  const n = seqLen - O;
  // n-tiles of 8 centroids, padded to whole chunks of 8 n-tiles: the round kernel scores 64 centroids at
  // a time with no guard on its mma instructions (padding centroids never win).
  const NT = roundUp(Math.ceil(C / 8), CHUNK_NTILES);
  const oneChunk = NT === CHUNK_NTILES;
  const KS = Math.ceil(cdim / 16); // k-steps of 16 coordinates (the ip one included)
  const addressable = keys instanceof Float32Array ? undefined : keysInPlace(keys, Hkv);
  const wgmmaRefusal = wgmmaRoundRefusal(layout, addressable);
  // f16 keys are read in place only by the wgmma rounds, and only where the caller did not ask for 'mma'.
  const inPlace = addressable?.suffix === '_f16' && (wgmmaRefusal !== undefined || tuning.roundFamily === 'mma') ? undefined : addressable;
  const suffix = inPlace?.suffix ?? '';
  const mod = loadKernels('build');
  if (tuning.roundFamily === 'wgmma' && wgmmaRefusal !== undefined) {
    throw new ConfigError('tuning.roundFamily', `'wgmma' only where it applies: ${wgmmaRefusal}`, 'wgmma');
  }
  const warpSpecialized = wgmmaRefusal === undefined && tuning.roundFamily !== 'mma';
  const roundKernel = warpSpecialized ? `pq_build_round_ws${suffix}` : roundKernelName(KS, oneChunk, tuning, suffix);
  const round = (warpSpecialized ? loadKernels('build_ws') : mod).kernel(roundKernel);
  const recomputeRounds = tuning.recomputeRounds ?? DEFAULT_RECOMPUTE_ROUNDS;
  if (!Number.isInteger(recomputeRounds) || recomputeRounds < 1) throw new ConfigError('tuning.recomputeRounds', 'an integer ≥ 1', String(tuning.recomputeRounds));
  const sumsChunk = tuning.firstSumsChunk ?? FIRST_SUMS_CHUNK[suffix];
  if (!Number.isInteger(sumsChunk) || sumsChunk < 1 || sumsChunk > FIRST_SUMS_MAX_CHUNK) throw new ConfigError('tuning.firstSumsChunk', `an integer in [1, ${FIRST_SUMS_MAX_CHUNK}]`, String(tuning.firstSumsChunk));
  // Shared memory of the round: the group's centroid fragments and |c|²/2, max |c| (its own slot); with one chunk,
  // its fp32 centroids too.
  const roundSmem = NT * KS * 32 * 16 + Math.ceil((NT * 8 + 1) / 4) * 16 + (oneChunk ? C * cstride * 4 : 0);
  // pq_build_init keeps the group's centroids in shared memory for packing where they fit in the
  // default 48 KB beside its few static bytes (C·cstride·4 bytes: 16 KB on the seed config), else
  // packs from global memory. It also keeps its drawn indices (1 KB static), and draws them in
  // its dynamic shared memory before the centroids are staged there (2 × 256 ints).
  const stagedBytes = C * cstride * 4;
  const initStaged = stagedBytes <= 46 * 1024 ? 1 : 0;
  const initShape = { grid: [G, 1, 1] as const, block: [256, 1, 1] as const, sharedBytes: Math.max(initStaged ? stagedBytes : 0, INIT_DRAW_SCRATCH) };
  // pq_build_finalize: a block per FINALIZE_TILES n-tiles of each group, its centroids in shared memory.
  const finalizeShape = { grid: [NT / FINALIZE_TILES, G, 1] as const, block: [256, 1, 1] as const, sharedBytes: FINALIZE_TILES * 8 * cstride * 4 };
  // Blocks per group: one wave of the round kernel. Both families take BLOCK_POINTS = 64 points a block
  // at a time (build_ws.cu kWsTilePoints: one wgmma m64 tile).
  const [threads, smem] = warpSpecialized ? [WS_ROUND_THREADS, WS_ROUND_SMEM] : [ROUND_THREADS, roundSmem];
  const tiles = Math.ceil(n / BLOCK_POINTS);
  const resident = round.occupancy(threads, smem) * CudaContext.primary().device.multiprocessorCount;
  const perGroup = Math.min(tiles, Math.max(1, Math.floor(resident / G)));
  const roundShape = { grid: [perGroup, G, 1] as const, block: [threads, 1, 1] as const, sharedBytes: smem };

  const ws = workspace ?? new BuildWorkspace(layout, seqLen);
  const { bound, staging } = inPlace ? { bound: inPlace, staging: undefined } : stagedKeys(layout, seqLen);
  const argsList: LaunchArgs[] = [];
  const args = <K extends readonly ArgKind[]>(kinds: K): LaunchArgs<K> => {
    const a = new LaunchArgs(kinds);
    argsList.push(a);
    return a;
  };
  try {
    const s = ws.slices(seqLen);
    if (s.centroids.bytes !== target.centroids.bytes || s.phi.bytes !== target.phi.bytes) {
      throw new ShapeError('target', `centroids of ${s.centroids.bytes} bytes and φ of ${s.phi.bytes}`, `${target.centroids.bytes} and ${target.phi.bytes}`);
    }
    const { ptr: keysPtr, headStride, rowStride } = bound;
    const hs = BigInt(headStride);
    // firstBad starts at "no NaN/Inf key found yet": inside the graph where the graph's kernels are
    // the only ones to check the keys (in place), else before the staging kernel that checks them.
    const resetFirstBad = (): void => copies.fill32Async(s.firstBad, 0xffffffff, s.firstBad.bytes / 4, stream);
    if (!inPlace) resetFirstBad();
    if (keys instanceof Float32Array) copies.fromHost({ ptr: keysPtr, bytes: keys.byteLength }, keys); // checked on the host (checkKeys)
    else if (staging) launchStageKeys(mod, keys, staging.slices.keys, s.firstBad, layout, seqLen, stream, args);
    const outcome = ws.outcome();
    const progress = ws.progress();
    const rounds = new Uint32Array(progress.arrayBuffer).fill(0);
    const roundArgs = (r: number, mode: number): LaunchArgs =>
      args(ROUND_ARGS).setAll([
        keysPtr, s.norms.ptr, s.phi.ptr, s.centroids.ptr, s.frag.ptr, s.info.ptr, s.codes.ptr, s.sums.ptr, s.counts.ptr,
        s.stats.ptr + BigInt(r * 8), n, M, hs, rowStride, D, O, C, cdim, cstride, NT, mode,
      ]);
    const finalize = mod.kernel(`pq_build_finalize${suffix}`);
    const firstSums = mod.kernel(`pq_build_first_sums${suffix}`);
    // The whole k-means as one graph: a node per launch (the driver copies each launch's arguments
    // into its node, so finalize's argument block is rewritten from round to round). Everything it
    // bakes in besides sk, the kernels and the key strides: the key and target pointers (the
    // workspace's are fixed).
    const signature = `${seqLen}:${roundKernel}:${Math.min(recomputeRounds, iters)}:${sumsChunk}:${headStride}:${rowStride}:${inPlace ? 'in place' : 'staged'}`;
    const graph = ws.graph(signature, [keysPtr, target.centroids.ptr, target.codes.ptr, target.phi.ptr], stream, () => {
      if (inPlace) resetFirstBad();
      // stats, sums, counts, centroids (their padding columns too) and φ.
      const zeroed = spanOf(s.stats, s.phi);
      copies.fill32Async(zeroed, 0, zeroed.bytes / 4, stream);
      // Keys read in place are checked by first sums and init; with no round there are no first sums.
      if (iters === 0 && inPlace) launchKeyCheck(mod, bound, s.firstBad, layout, seqLen, stream, args);
      if (metric === 'ip') {
        launch(mod.kernel(`pq_build_norms${suffix}`), { grid: [Math.ceil(n / 256), G, 1], block: [256, 1, 1] }, args(NORMS_ARGS).setAll([keysPtr, s.norms.ptr, s.phi.ptr, n, M, hs, rowStride, D, O]), stream);
      }
      launch(
        mod.kernel(`pq_build_init${suffix}`),
        initShape,
        args(INIT_ARGS).setAll([keysPtr, s.norms.ptr, s.phi.ptr, seed, s.centroids.ptr, s.frag.ptr, s.info.ptr, s.firstBad.ptr, n, M, hs, rowStride, D, O, C, cdim, cstride, NT, KS, initStaged]),
        stream,
      );
      const finalizeArgs = args(FINALIZE_ARGS);
      const sumsAndCounts = spanOf(s.sums, s.counts);
      for (let r = 0; r < iters; r++) {
        const recompute = r < recomputeRounds;
        launch(round, roundShape, roundArgs(r, r === 0 ? ROUND_FIRST : recompute ? ROUND_RECOMPUTE : ROUND_NEXT), stream);
        if (recompute) {
          // Codes only; the sums and counts come from the codes, a block per sumsChunk points (round 0's
          // were zeroed with the workspace).
          if (r > 0) copies.fill32Async(sumsAndCounts, 0, sumsAndCounts.bytes / 4, stream);
          launch(
            firstSums,
            { grid: [Math.ceil(n / sumsChunk), G, 1], block: [256, 1, 1] },
            args(FIRST_SUMS_ARGS).setAll([keysPtr, s.norms.ptr, s.phi.ptr, s.codes.ptr, s.sums.ptr, s.counts.ptr, s.firstBad.ptr, n, M, hs, rowStride, D, O, C, cdim, sumsChunk]),
            stream,
          );
        }
        finalizeArgs.setAll([
          keysPtr, s.norms.ptr, s.phi.ptr, s.sums.ptr, s.counts.ptr, s.centroids.ptr, s.frag.ptr, s.info.ptr,
          n, M, hs, rowStride, D, O, C, cdim, cstride, NT, KS, seed, r, progress.ptr,
        ]);
        launch(finalize, finalizeShape, finalizeArgs, stream);
      }
      launch(round, roundShape, roundArgs(iters, ROUND_FINAL), stream);
      // The index from the workspace, unless a key was NaN or Inf.
      launch(
        mod.kernel('pq_build_publish'),
        { grid: [Math.ceil(n / 256), B * Hkv, 1], block: [256, 1, 1] },
        args(PUBLISH_ARGS).setAll([s.firstBad.ptr, s.codes.ptr, target.codes.ptr, s.centroids.ptr, target.centroids.ptr, s.phi.ptr, target.phi.ptr, n, M, O, target.capPad, s.centroids.bytes / 16, G]),
        stream,
      );
      outcome.host.copyFromDeviceAsync(outcome.device, outcome.device.bytes, stream);
    });
    events?.beforeStart?.(stream);
    events?.start.record(stream);
    graph.launch(stream);
    events?.end.record(stream);
    if (onRound) waitReportingRounds(stream, rounds, iters + 1, onRound); // returns with the stream idle
    else ws.completion().wait(stream);
    const firstBad = new BigUint64Array(outcome.host.arrayBuffer, 0, 1)[0];
    if (firstBad !== 0xffffffffffffffffn) throw new DeviceInputError('keys', 'finite values', `NaN or Inf at flat index ${firstBad}`);
    const stats = new Uint32Array(outcome.host.arrayBuffer, Number(s.stats.ptr - s.firstBad.ptr), (iters + 1) * 2);
    return {
      flaggedPerRound: Array.from({ length: iters + 1 }, (_, r) => stats[2 * r]),
      changedPerRound: Array.from({ length: iters + 1 }, (_, r) => stats[2 * r + 1]),
      points: G * n,
      roundKernel,
      recomputedRounds: Math.min(recomputeRounds, iters),
      firstSumsChunk: sumsChunk,
      keysRead: keys instanceof Float32Array ? 'uploaded' : inPlace ? 'in place' : 'staged',
    };
  } finally {
    for (const a of argsList) a.dispose();
    staging?.dispose();
    if (workspace === undefined) ws.dispose();
  }
}

