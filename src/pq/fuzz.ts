/**
 * `pqcache fuzz`: random valid configurations and inputs checked against the oracles, and random
 * invalid inputs that must raise the documented typed error and leave the object usable.
 *
 * Valid cases come in groups: one index (one layout, one value mode), then a run of decode steps
 * on it, each step one case checked against the float64 brute force (exact for the value modes
 * whose fp32 scores are exact, tolerant for real values). Value modes reach the corners: huge and
 * subnormal magnitudes (exact), −0.0 against +0.0, all-equal scores, exactly one eligible
 * position, K larger than the eligible count. On the CUDA backend some groups instead run decode
 * layers (append → select → attend) against the CPU layers, or GPU builds against the CPU build.
 */
import { CpuDecodeLayer } from '../attention/decode-layer.js';
import { CudaDecodeLayer } from '../attention/cuda-decode-layer.js';
import {
  CapacityError, ConfigError, DTypeError, DeviceInputError, DisposedError, NonFiniteError, type PQCacheError, ShapeError, StateError,
} from '../errors.js';
import { DeviceArena, copies } from '../cuda/memory.js';
import { deviceTensor } from '../tensor/device-tensor.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { cacheFromState, createPQCache } from './backend.js';
import { type CheckMode, checkSelect } from './brute-force.js';
import type { PQCache } from './cache.js';
import { type Layout, fullAttentionThreshold, makeLayout } from './config.js';
import { appendCodesCpu } from './cpu-build.js';
import { CudaPQCache } from './cuda-cache.js';
import { type PQIndexState, codeOffset, emptyIndexState } from './index-state.js';
import { SplitMix32 } from './rng.js';

export type ValueMode = 'integer' | 'real' | 'huge' | 'subnormal' | 'negzero' | 'all-equal' | 'one-eligible' | 'k-over-eligible';
const VALUE_MODES: readonly ValueMode[] = ['integer', 'real', 'huge', 'subnormal', 'negzero', 'all-equal', 'one-eligible', 'k-over-eligible'];
const STEPS_PER_GROUP = 20;

export interface InvalidOutcome {
  readonly input: string;
  readonly expected: string;
  readonly tries: number;
  /** How the last try was answered ("ShapeError: query: expected …"). */
  readonly answered: string;
  /** Every try raised the expected error class. */
  readonly correct: boolean;
  /** A valid step after every try matched the oracle. */
  readonly usableAfter: boolean;
}

export interface FuzzReport {
  readonly cases: { select: number; attend: number; build: number };
  readonly byMode: Record<string, number>;
  readonly mismatches: number;
  readonly firstMismatches: string[];
  readonly invalid: InvalidOutcome[];
  readonly seconds: number;
}

function pick<T>(rng: SplitMix32, xs: readonly T[]): T {
  return xs[rng.int(0, xs.length - 1)];
}

/** A value generator for a mode: exact modes give values whose fp32 products and sums are exact. */
function valueOf(mode: ValueMode, rng: SplitMix32, kind: 'centroid' | 'query' | 'key'): number {
  switch (mode) {
    case 'real':
      return rng.normal();
    case 'huge':
      return rng.int(-8, 8) * 2 ** (kind === 'query' ? 60 : 50);
    case 'subnormal':
      return kind === 'query' ? rng.int(-8, 8) : rng.int(-8, 8) * 2 ** -140;
    case 'negzero':
      return pick(rng, [-0, -0, 0, 1, -1, 2, -2]);
    case 'all-equal':
      return kind === 'centroid' ? 3 : rng.int(-4, 4);
    default:
      return rng.int(-8, 8);
  }
}

function randomGroupLayout(rng: SplitMix32, mode: ValueMode, cuda: boolean): { layout: Layout; seqLen: number } {
  const kvHeads = pick(rng, [1, 1, 2]);
  const heads = kvHeads * pick(rng, [1, 2, 4]);
  const headDim = pick(rng, cuda ? [32, 64] : [16, 32, 64]);
  const M = Math.min(pick(rng, [1, 2, 4, 8]), headDim / 4);
  const config = {
    sinkSize: pick(rng, [0, rng.int(0, 8), rng.int(0, 64)]),
    windowSize: pick(rng, [0, rng.int(1, 8), rng.int(0, 64)]),
    heavySize: rng.next() < 0.1 ? rng.int(257, 600) : rng.int(1, 128),
    pqGroupFactor: M,
    pqBits: rng.int(1, 8),
    kmeansIters: 0,
    initOffset: pick(rng, [0, rng.int(0, 8), rng.int(0, 64)]),
    metric: rng.next() < 0.25 ? ('ip' as const) : ('euclidean' as const),
  };
  const shape = { batch: rng.int(1, 3), heads, kvHeads, headDim };
  let layout = makeLayout(shape, config);
  const thr = fullAttentionThreshold(layout.config, layout.numCentroids);
  let seqLen = rng.next() < 0.2 ? Math.max(config.initOffset + 1, thr + rng.int(-3, 3)) : thr + rng.int(1, 3000);
  const lo = Math.max(config.initOffset, config.sinkSize);
  if (mode === 'one-eligible' || mode === 'k-over-eligible') {
    // Steps append, so the window grows with them: size it for the middle of the run.
    seqLen = Math.max(seqLen, lo + 2);
    const eligible = mode === 'one-eligible' ? 1 : rng.int(1, Math.max(1, config.heavySize - 1));
    const W = Math.max(0, seqLen + STEPS_PER_GROUP / 2 - lo - eligible);
    layout = makeLayout(shape, { ...config, windowSize: W });
  }
  // Keep the brute force quick: B·H·sk bounded.
  seqLen = Math.min(seqLen, Math.floor(60000 / (shape.batch * heads)));
  return { layout, seqLen: Math.max(config.initOffset + 1, seqLen) };
}

function randomState(rng: SplitMix32, mode: ValueMode, layout: Layout, seqLen: number, capacity: number): PQIndexState {
  const state = emptyIndexState(layout, capacity);
  for (let i = 0; i < state.centroids.length; i++) state.centroids[i] = valueOf(mode, rng, 'centroid');
  if (layout.config.metric === 'ip') for (let i = 0; i < state.phi.length; i++) state.phi[i] = mode === 'real' ? 50 * rng.next() : rng.int(0, 300);
  const { batch: B, kvHeads: Hkv } = layout.shape;
  const M = layout.config.pqGroupFactor;
  for (let bh = 0; bh < B * Hkv; bh++) {
    for (let p = layout.config.initOffset; p < seqLen; p++) {
      const off = codeOffset(layout, capacity, 0, bh, p);
      for (let m = 0; m < M; m++) state.codes[off + m] = rng.int(0, layout.numCentroids - 1);
    }
  }
  state.seqLen = seqLen;
  return state;
}

function tensorOf(rng: SplitMix32, mode: ValueMode, kind: 'query' | 'key', shape: number[]): HostTensor<'f32'> {
  const n = shape.reduce((a, b) => a * b, 1);
  return new HostTensor('f32', shape, Float32Array.from({ length: n }, () => valueOf(mode, rng, kind)));
}

interface Tally {
  cases: { select: number; attend: number; build: number };
  byMode: Record<string, number>;
  mismatches: number;
  firstMismatches: string[];
}

function mismatch(t: Tally, what: string): void {
  t.mismatches++;
  if (t.firstMismatches.length < 20) t.firstMismatches.push(what);
}

/** One step on the cache and the oracle; returns the brute-force errors. */
function checkedStep(cache: PQCache, oracle: PQIndexState, query: HostTensor, key: HostTensor<'f32'>, mode: CheckMode): string[] {
  const res = cache.stepToHost(query, key);
  appendCodesCpu(oracle, key.data, 1);
  return checkSelect(oracle, query.toFloat32(), {
    sparseList: res.sparseList.data as Int32Array,
    sparseLen: res.sparseLen.data as Int32Array,
    weights: res.weights.data as Float32Array | Uint16Array,
    weightsDType: res.weights.dtype as 'f32',
  }, mode, 3);
}

/** Makes the invalid call (which must throw); returns 'n/a' when the input does not apply to the backend. */
type InvalidProbe = (ctx: { cache: PQCache; layout: Layout; backend: 'cpu' | 'cuda'; rng: SplitMix32 }) => 'n/a' | void;

/** The invalid inputs tried, each with the error class it must raise. */
const INVALID: ReadonlyArray<{ input: string; expected: new (...args: never[]) => PQCacheError; probe: InvalidProbe }> = [
  {
    input: 'query of the wrong shape', expected: ShapeError,
    probe: ({ cache, layout }) => {
      const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
      cache.stepToHost(new HostTensor('f32', [B, H, 1, D + 1]), new HostTensor('f32', [B, Hkv, 1, D]));
    },
  },
  {
    input: 'query of dtype i32', expected: DTypeError,
    probe: ({ cache, layout }) => cache.selectToHost(new HostTensor('i32', [layout.shape.batch, layout.shape.heads, 1, layout.shape.headDim])),
  },
  {
    input: 'query with NaN', expected: NonFiniteError,
    probe: ({ cache, layout }) => {
      const { batch: B, heads: H, headDim: D } = layout.shape;
      const q = new HostTensor('f32', [B, H, 1, D]);
      (q.data as Float32Array)[D - 1] = NaN;
      cache.selectToHost(q);
    },
  },
  {
    input: 'key with +Inf', expected: NonFiniteError,
    probe: ({ cache, layout }) => {
      const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
      const k = new HostTensor('f32', [B, Hkv, 1, D]);
      (k.data as Float32Array)[0] = Infinity;
      cache.stepToHost(new HostTensor('f32', [B, H, 1, D]), k);
    },
  },
  {
    input: 'key of the wrong kv-head count', expected: ShapeError,
    probe: ({ cache, layout }) => {
      const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
      cache.stepToHost(new HostTensor('f32', [B, H, 1, D]), new HostTensor('f32', [B, Hkv + 1, 1, D]));
    },
  },
  {
    input: 'append past the capacity', expected: CapacityError,
    probe: ({ cache, layout }) => {
      const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
      cache.append(new HostTensor('f32', [B, Hkv, cache.capacity - cache.seqLen + 1, D]));
    },
  },
  {
    input: 'pqBits = 9', expected: ConfigError,
    probe: ({ layout, backend }) => createPQCache({ backend, shape: layout.shape, config: { ...layout.config, pqBits: 9 }, capacity: 10 }).dispose(),
  },
  {
    input: 'H not a multiple of Hkv', expected: ConfigError,
    probe: ({ layout, backend }) => createPQCache({ backend, shape: { ...layout.shape, heads: 3, kvHeads: 2 }, config: layout.config, capacity: 10 }).dispose(),
  },
  {
    input: 'select before build', expected: StateError,
    probe: ({ layout, backend }) => {
      const c = createPQCache({ backend, shape: layout.shape, config: layout.config, capacity: 10 });
      try {
        c.selectToHost(new HostTensor('f32', [layout.shape.batch, layout.shape.heads, 1, layout.shape.headDim]));
      } finally {
        c.dispose();
      }
    },
  },
  {
    input: 'use after dispose', expected: DisposedError,
    probe: ({ layout, backend }) => {
      const c = createPQCache({ backend, shape: layout.shape, config: layout.config, capacity: 10 });
      c.dispose();
      c.selectToHost(new HostTensor('f32', [layout.shape.batch, layout.shape.heads, 1, layout.shape.headDim]));
    },
  },
  {
    input: 'NaN in a device query (reported at the next sync)', expected: DeviceInputError,
    probe: ({ cache, layout }) => {
      if (!(cache instanceof CudaPQCache)) return 'n/a'; // host tensors are checked before they are staged
      const { batch: B, heads: H, headDim: D } = layout.shape;
      const q = new Float32Array(B * H * D);
      q[1] = NaN;
      const arena = DeviceArena.allocate({ q: q.byteLength });
      try {
        copies.fromHost(arena.slices.q, q);
        cache.select(deviceTensor('f32', [B, H, 1, D], arena.slices.q.ptr));
        cache.synchronize();
      } finally {
        arena.dispose();
      }
    },
  },
];

export interface FuzzOptions {
  readonly backend: 'cpu' | 'cuda';
  readonly cases: number;
  readonly seed: number;
  readonly onProgress?: (done: number, total: number) => void;
}

export function runFuzz(o: FuzzOptions): FuzzReport {
  const started = Date.now();
  const t: Tally = { cases: { select: 0, attend: 0, build: 0 }, byMode: {}, mismatches: 0, firstMismatches: [] };
  const invalid = INVALID.map((x) => ({ input: x.input, expected: x.expected.name, tries: 0, answered: '', correct: true, usableAfter: true }));
  const cuda = o.backend === 'cuda';
  let done = 0;
  for (let g = 0; done < o.cases; g++) {
    const rng = new SplitMix32((o.seed ^ Math.imul(g + 1, 0x9e3779b1)) >>> 0);
    if (cuda && g % 10 === 9) {
      done += fuzzDecodeLayers(rng, t, g);
    } else if (cuda && g % 25 === 12) {
      done += fuzzBuild(rng, t, g);
    } else {
      done += fuzzSelectGroup(rng, t, g, o.backend, g % 7 === 3 ? invalid[(g / 7) % invalid.length | 0] : undefined);
    }
    o.onProgress?.(Math.min(done, o.cases), o.cases);
  }
  return { ...t, invalid, seconds: (Date.now() - started) / 1000 };
}

function fuzzSelectGroup(rng: SplitMix32, t: Tally, g: number, backend: 'cpu' | 'cuda', invalid?: { input: string; tries: number; answered: string; correct: boolean; usableAfter: boolean }): number {
  const mode = VALUE_MODES[g % VALUE_MODES.length];
  const check: CheckMode = mode === 'real' ? 'tolerant' : 'exact';
  const { layout, seqLen } = randomGroupLayout(rng, mode, backend === 'cuda');
  const capacity = seqLen + STEPS_PER_GROUP + 2;
  const state = randomState(rng, mode, layout, seqLen, capacity);
  const oracle: PQIndexState = { ...state, codes: state.codes.slice() };
  const cache = cacheFromState(backend, { ...state, codes: state.codes.slice() });
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  const tag = (s: number): string =>
    `group ${g} step ${s} [${mode}] B=${B} H=${H} Hkv=${Hkv} D=${D} sk=${oracle.seqLen} S=${layout.config.sinkSize} W=${layout.config.windowSize} ` +
    `K=${layout.config.heavySize} O=${layout.config.initOffset} M=${layout.config.pqGroupFactor} bits=${layout.config.pqBits} ${layout.config.metric}`;
  let steps = 0;
  try {
    for (let s = 0; s < STEPS_PER_GROUP; s++) {
      const qdtype = mode === 'real' ? pick(rng, ['f32', 'f16', 'bf16'] as const) : 'f32';
      const q = tensorOf(rng, mode, 'query', [B, H, 1, D]);
      const query = qdtype === 'f32' ? q : HostTensor.fromNumbers(qdtype, q.shape, q.data);
      const key = tensorOf(rng, mode, 'key', [B, Hkv, 1, D]);
      const errors = checkedStep(cache, oracle, query, key, check);
      steps++;
      if (errors.length > 0) mismatch(t, `${tag(s)}: ${errors.slice(0, 2).join('; ')}`);
      if (invalid && s === STEPS_PER_GROUP / 2) tryInvalid(invalid, cache, layout, backend, rng, oracle, mode, check, t, tag(s));
    }
    const after = cache.exportState();
    for (let bh = 0; bh < B * Hkv; bh++) {
      const from = codeOffset(layout, capacity, 0, bh, Math.max(seqLen, layout.config.initOffset));
      const to = codeOffset(layout, capacity, 0, bh, oracle.seqLen);
      for (let i = from; i < to; i++) {
        if (after.codes[i] !== oracle.codes[i]) {
          mismatch(t, `${tag(STEPS_PER_GROUP)}: appended code ${i} = ${after.codes[i]}, oracle ${oracle.codes[i]}`);
          break;
        }
      }
    }
  } catch (e) {
    mismatch(t, `${tag(steps)}: threw ${(e as Error).name}: ${(e as Error).message}`);
  } finally {
    cache.dispose();
  }
  t.cases.select += steps;
  t.byMode[mode] = (t.byMode[mode] ?? 0) + steps;
  return Math.max(steps, 1);
}

function tryInvalid(
  outcome: { input: string; tries: number; answered: string; correct: boolean; usableAfter: boolean },
  cache: PQCache, layout: Layout, backend: 'cpu' | 'cuda', rng: SplitMix32, oracle: PQIndexState, mode: ValueMode, check: CheckMode, t: Tally, tag: string,
): void {
  const spec = INVALID.find((x) => x.input === outcome.input);
  if (!spec) return;
  try {
    if (spec.probe({ cache, layout, backend, rng }) === 'n/a') return;
    outcome.tries++;
    outcome.correct = false;
    outcome.answered = 'no error';
  } catch (e) {
    outcome.tries++;
    outcome.answered = `${(e as Error).name}: ${(e as Error).message}`;
    if (!(e instanceof spec.expected)) outcome.correct = false;
  }
  // Still usable, with nothing half-done: the next step matches the oracle.
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = layout.shape;
  if (cache.seqLen + 1 > cache.capacity) return;
  const errors = checkedStep(cache, oracle, tensorOf(rng, mode, 'query', [B, H, 1, D]), tensorOf(rng, mode, 'key', [B, Hkv, 1, D]), check);
  if (errors.length > 0) {
    outcome.usableAfter = false;
    mismatch(t, `${tag}: after '${outcome.input}': ${errors[0]}`);
  }
}

/** CUDA decode layers against the CPU layers on integer data (lists exact, outputs within tolerance); one case per step. */
function fuzzDecodeLayers(rng: SplitMix32, t: Tally, g: number): number {
  const kvHeads = pick(rng, [1, 2]);
  const shape = { batch: rng.int(1, 2), heads: kvHeads * pick(rng, [1, 2, 4]), kvHeads, headDim: pick(rng, [32, 64, 128]) };
  const config = { sinkSize: rng.int(0, 16), windowSize: rng.int(1, 32), heavySize: rng.int(1, 64), pqGroupFactor: pick(rng, [1, 2, 4]), pqBits: rng.int(2, 6), initOffset: rng.int(0, 16), kmeansIters: 0 };
  const sk = rng.int(config.initOffset + 1, 1500);
  const steps = 10;
  const kvDType = pick(rng, ['f32', 'f16', 'bf16'] as const);
  const attention = rng.next() < 0.8 ? ('sparse' as const) : ('dense' as const);
  const options = { shape, config, capacity: sk + steps, kvDType, attention };
  const ints = (n: number, lo: number, hi: number): Float32Array => Float32Array.from({ length: n }, () => rng.int(lo, hi));
  const { batch: B, heads: H, headDim: D } = shape;
  const keys = new HostTensor('f32', [B, kvHeads, sk, D], ints(B * kvHeads * sk * D, -2, 2));
  const values = new HostTensor('f32', [B, kvHeads, sk, D], ints(B * kvHeads * sk * D, -3, 3));
  const cpu = new CpuDecodeLayer(options);
  const gpu = new CudaDecodeLayer(options);
  const tol = kvDType === 'f32' ? 1e-5 : 1e-2;
  let done = 0;
  try {
    cpu.prefill(keys, values);
    gpu.prefill(keys, values);
    for (let s = 0; s < steps; s++) {
      const inputs = {
        query: new HostTensor('f32', [B, H, 1, D], ints(B * H * D, -1, 1)),
        key: new HostTensor('f32', [B, kvHeads, 1, D], ints(B * kvHeads * D, -2, 2)),
        value: new HostTensor('f32', [B, kvHeads, 1, D], ints(B * kvHeads * D, -3, 3)),
      };
      const want = cpu.stepToHost(inputs).toFloat32();
      const got = gpu.stepToHost(inputs).toFloat32();
      done++;
      let num = 0;
      let den = 0;
      for (let i = 0; i < want.length; i++) {
        num += (got[i] - want[i]) ** 2;
        den += want[i] ** 2;
      }
      const err = Math.sqrt(num / Math.max(den, 1e-30));
      const tagged = `decode group ${g} step ${s} [${attention} ${kvDType}] ${JSON.stringify(shape)} ${JSON.stringify(config)} sk=${sk + s}`;
      if (!(err <= tol)) mismatch(t, `${tagged}: output rel. error ${err}`);
      if (attention === 'sparse') {
        const a = gpu.listsToHost().sparseList;
        const b = cpu.listsToHost().sparseList;
        if (a.length !== b.length || a.some((x, i) => x !== b[i])) mismatch(t, `${tagged}: sparse lists differ`);
      }
    }
  } catch (e) {
    mismatch(t, `decode group ${g}: threw ${(e as Error).name}: ${(e as Error).message}`);
  } finally {
    gpu.dispose();
    cpu.dispose();
  }
  t.cases.attend += done;
  t.byMode[`decode-${attention}`] = (t.byMode[`decode-${attention}`] ?? 0) + done;
  return Math.max(done, 1);
}

/** A GPU build against the CPU build on integer keys: identical centroids and codes; one case. */
function fuzzBuild(rng: SplitMix32, t: Tally, g: number): number {
  const kvHeads = pick(rng, [1, 2]);
  const shape = { batch: rng.int(1, 2), heads: kvHeads, kvHeads, headDim: pick(rng, [16, 32, 64]) };
  const config = {
    pqGroupFactor: Math.min(pick(rng, [1, 2, 4, 8]), shape.headDim / 4), // the CUDA kernels need dsub % 4 == 0
    pqBits: rng.int(1, 8), kmeansIters: rng.int(0, 4), initOffset: rng.int(0, 16),
    metric: rng.next() < 0.3 ? ('ip' as const) : ('euclidean' as const), seed: rng.nextU32(),
  };
  const layout = makeLayout(shape, config);
  const sk = rng.int(config.initOffset + 1, 800);
  const keys = new HostTensor('f32', [shape.batch, kvHeads, sk, shape.headDim], Float32Array.from({ length: shape.batch * kvHeads * sk * shape.headDim }, () => rng.int(-4, 4)));
  const tag = `build group ${g} ${JSON.stringify(shape)} ${JSON.stringify(config)} sk=${sk}`;
  try {
    const gpu = createPQCache({ backend: 'cuda', shape, config, capacity: sk });
    const cpu = createPQCache({ backend: 'cpu', shape, config, capacity: sk });
    try {
      gpu.build(keys);
      cpu.build(keys);
      const a = gpu.exportState();
      const b = cpu.exportState();
      const firstDiff = (x: ArrayLike<number>, y: ArrayLike<number>): number => {
        for (let i = 0; i < x.length; i++) if (x[i] !== y[i] && !(Number.isNaN(x[i]) && Number.isNaN(y[i]))) return i;
        return -1;
      };
      const dc = firstDiff(a.centroids, b.centroids);
      const dk = firstDiff(a.codes, b.codes);
      if (dc >= 0) mismatch(t, `${tag}: centroid ${dc} = ${a.centroids[dc]}, CPU ${b.centroids[dc]}`);
      if (dk >= 0) mismatch(t, `${tag}: code ${dk} = ${a.codes[dk]}, CPU ${b.codes[dk]}`);
      if (layout.config.metric === 'ip' && firstDiff(a.phi, b.phi) >= 0) mismatch(t, `${tag}: phi differs`);
    } finally {
      gpu.dispose();
      cpu.dispose();
    }
  } catch (e) {
    mismatch(t, `${tag}: threw ${(e as Error).name}: ${(e as Error).message}`);
  }
  t.cases.build++;
  t.byMode.build = (t.byMode.build ?? 0) + 1;
  return 1;
}
