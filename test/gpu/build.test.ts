import assert from 'node:assert/strict';
import test from 'node:test';
import { makeLayout } from '../../src/pq/config.js';
import { appendCodesCpu, buildIndexCpu } from '../../src/pq/cpu-build.js';
import { CudaContext } from '../../src/cuda/context.js';
import { DeviceBuffer, copies } from '../../src/cuda/memory.js';
import { ConfigError, DeviceInputError, NonFiniteError, ShapeError } from '../../src/errors.js';
import { Stream } from '../../src/cuda/stream.js';
import { type BuildTuning, DEFAULT_RECOMPUTE_ROUNDS, type DeviceBuildTarget, allocateBuildTarget, buildOnDevice, readBuildTarget } from '../../src/pq/cuda-build.js';
import { CudaPQCache } from '../../src/pq/cuda-cache.js';
import { type PQIndexState, centroidOffset, codeOffset, groupId } from '../../src/pq/index-state.js';
import { assignAll, ipAugment, squaredNormF32 } from '../../src/pq/kmeans.js';
import { SplitMix32 } from '../../src/pq/rng.js';
import { deviceTensor } from '../../src/tensor/device-tensor.js';
import type { FloatDType } from '../../src/tensor/dtype.js';
import { HostTensor } from '../../src/tensor/host-tensor.js';
import { gpuSkip } from './gpu.js';

const skip = gpuSkip();

interface Case { B: number; H: number; Hkv: number; D: number; M: number; bits: number; sk: number; O: number; ip: boolean; iters: number }

function keysFor(c: Case, integer: boolean, seed: number): Float32Array {
  const rng = new SplitMix32(seed);
  return new Float32Array(c.B * c.Hkv * c.sk * c.D).map(() => (integer ? rng.int(-6, 6) : rng.normal() * 3));
}

function layoutOf(c: Case): ReturnType<typeof makeLayout> {
  const shape = { batch: c.B, heads: c.H, kvHeads: c.Hkv, headDim: c.D };
  const config = { pqGroupFactor: c.M, pqBits: c.bits, initOffset: c.O, kmeansIters: c.iters, metric: c.ip ? ('ip' as const) : ('euclidean' as const), sinkSize: 4, windowSize: 4, heavySize: 8, seed: 77 };
  return makeLayout(shape, config);
}

function build(c: Case, keys: Float32Array): { cpu: PQIndexState; gpu: PQIndexState } {
  const layout = layoutOf(c);
  const { shape, config } = layout;
  const cpu = buildIndexCpu(layout, keys, c.sk, c.sk + 4);
  const cache = new CudaPQCache({ shape, config, capacity: c.sk + 4 });
  try {
    cache.build(new HostTensor('f32', [c.B, c.Hkv, c.sk, c.D], keys));
    return { cpu, gpu: cache.exportState() };
  } finally {
    cache.dispose();
  }
}

/** phi, centroids and codes of the GPU's index identical to the oracle's. */
function assertSameIndex(gpu: PQIndexState, cpu: PQIndexState, what: string): void {
  assert.deepEqual(gpu.phi, cpu.phi, `phi ${what}`);
  assert.deepEqual(gpu.centroids, cpu.centroids, `centroids ${what}`);
  assert.deepEqual(gpu.codes, cpu.codes, `codes ${what}`);
}

const CASES: Case[] = [
  { B: 1, H: 4, Hkv: 2, D: 64, M: 2, bits: 6, sk: 3000, O: 16, ip: false, iters: 6 },
  { B: 2, H: 2, Hkv: 2, D: 32, M: 1, bits: 8, sk: 1500, O: 0, ip: false, iters: 4 },
  { B: 1, H: 8, Hkv: 2, D: 64, M: 4, bits: 3, sk: 2000, O: 5, ip: true, iters: 5 },
  { B: 1, H: 2, Hkv: 1, D: 128, M: 8, bits: 1, sk: 800, O: 100, ip: false, iters: 3 },
  { B: 2, H: 4, Hkv: 4, D: 128, M: 2, bits: 5, sk: 1200, O: 7, ip: true, iters: 10 },
  // dsub 128 + the ip coordinate (8 k-steps), and dsub 12 / 20 (part-filled k-steps)
  { B: 1, H: 2, Hkv: 1, D: 128, M: 1, bits: 7, sk: 900, O: 3, ip: true, iters: 4 },
  { B: 1, H: 3, Hkv: 3, D: 96, M: 8, bits: 4, sk: 700, O: 0, ip: false, iters: 5 },
  { B: 1, H: 2, Hkv: 2, D: 80, M: 4, bits: 2, sk: 600, O: 9, ip: true, iters: 3 },
  // the largest tables: float64 atomics on the global sums, 4 centroid chunks (passes B and C reload the tile)
  { B: 1, H: 1, Hkv: 1, D: 128, M: 1, bits: 8, sk: 700, O: 0, ip: true, iters: 2 },
  // centroids of exactly 48 KB per group (C = 128, cstride 96): packed from global memory
  { B: 1, H: 1, Hkv: 1, D: 96, M: 1, bits: 7, sk: 600, O: 0, ip: false, iters: 2 },
  // more than one first-sums block per group (8192 points each), the last one part-filled
  { B: 1, H: 2, Hkv: 1, D: 16, M: 2, bits: 4, sk: 9000, O: 5, ip: true, iters: 3 },
  { B: 1, H: 1, Hkv: 1, D: 64, M: 1, bits: 6, sk: 8300, O: 0, ip: false, iters: 3 },
  // fewer points than centroids: the initial draw goes on with replacement
  { B: 1, H: 2, Hkv: 2, D: 32, M: 2, bits: 7, sk: 100, O: 10, ip: false, iters: 3 },
];

test('GPU build equals the CPU oracle exactly on integer data (both metrics, M 1–8, pqBits 1–8, GQA), from host fp32 keys and from device bf16 keys read in place', { skip }, () => {
  for (const c of CASES) {
    const keys = keysFor(c, true, 11); // integers in [−6, 6]: exact in bf16
    const { cpu, gpu } = build(c, keys);
    assertSameIndex(gpu, cpu, JSON.stringify(c));
    const layout = layoutOf(c);
    const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity: c.sk + 4 });
    const { tensor, buf } = halfDeviceKeys(c, keys);
    try {
      cache.build(tensor);
      assertSameIndex(cache.exportState(), cpu, `bf16 in place ${JSON.stringify(c)}`);
    } finally {
      cache.dispose();
      buf.dispose();
    }
  }
});

/** The φ, centroids and codes a build wrote into `t` identical to the oracle's index `cpu`. */
function assertTargetIsOracle(c: Case, t: DeviceBuildTarget, cpu: PQIndexState, what: string): void {
  const layout = layoutOf(c);
  const G = c.B * c.Hkv * c.M;
  const C = layout.numCentroids;
  const cdim = layout.centroidDim;
  const { centroidStride: cstride, capPad } = t;
  const { centroids: cent, codes, phi } = readBuildTarget(t);
  assert.deepEqual(phi, cpu.phi, `phi ${what}`);
  for (let g = 0; g < G; g++)
    for (let k = 0; k < C; k++)
      for (let j = 0; j < cdim; j++) assert.equal(cent[(g * C + k) * cstride + j], cpu.centroids[(g * C + k) * cdim + j], `centroid ${g}/${k}/${j} ${what}`);
  for (let bh = 0; bh < c.B * c.Hkv; bh++)
    for (let p = c.O; p < c.sk; p++)
      for (let m = 0; m < c.M; m++) assert.equal(codes[(bh * capPad + p) * c.M + m], cpu.codes[codeOffset(layout, cpu.capacity, 0, bh, p) + m], `code ${bh}/${p}/${m} ${what}`);
}

test('GPU build: every one-chunk round-kernel variant (2, 3 or 4 blocks per SM), sums moved or formed from the codes in 1 to all rounds, and first-sums blocks of other sizes, equal the oracle on integer data with the same changed codes per round', { skip }, () => {
  const seedLike: Case = { B: 1, H: 2, Hkv: 2, D: 128, M: 2, bits: 6, sk: 1500, O: 3, ip: false, iters: 4 }; // 4 k-steps, as the seed config
  for (const c of [CASES[0], CASES[2], seedLike]) {
    const layout = layoutOf(c);
    const keys = keysFor(c, true, 21);
    const cpu = buildIndexCpu(layout, keys, c.sk, c.sk);
    CudaContext.primary();
    const stream = new Stream();
    const { arena, target: t } = allocateBuildTarget(layout, c.sk);
    try {
      const tunings: BuildTuning[] = [
        { blocksPerSM: 2 }, { blocksPerSM: 3 }, { blocksPerSM: 4 },
        { blocksPerSM: 4, recomputeRounds: 1 }, { blocksPerSM: 4, recomputeRounds: 3 }, { blocksPerSM: 4, recomputeRounds: c.iters + 1 },
        { blocksPerSM: 4, recomputeRounds: c.iters, firstSumsChunk: 333 }, // blocks of 333 points, the last one part-filled
      ];
      let changed: readonly number[] | undefined;
      for (const tuning of tunings) {
        copies.fill32Async(t.codes, 0xffffffff, t.codes.bytes / 4, stream); // poison: every code is written
        const stats = buildOnDevice(layout, keys, c.sk, t, stream, undefined, undefined, tuning);
        const what = `${stats.roundKernel}, ${stats.recomputedRounds} recomputed rounds, ${JSON.stringify(c)}`;
        assert.equal(stats.roundKernel, `pq_build_round_k${Math.ceil(layout.centroidDim / 16)}_c1_b${tuning.blocksPerSM}`, what);
        assert.equal(stats.recomputedRounds, Math.min(tuning.recomputeRounds ?? DEFAULT_RECOMPUTE_ROUNDS, c.iters), what);
        assertTargetIsOracle(c, t, cpu, what);
        // Moving and recomputing rounds count their changed codes alike: round 0 all points, the final pass none.
        assert.equal(stats.changedPerRound[0], stats.points, what);
        assert.equal(stats.changedPerRound[c.iters], 0, what);
        if (changed) assert.deepEqual(stats.changedPerRound, changed, what);
        changed = stats.changedPerRound;
      }
      assert.throws(() => buildOnDevice(layout, keys, c.sk, t, stream, undefined, undefined, { recomputeRounds: 0 }), ConfigError);
      assert.throws(() => buildOnDevice(layout, keys, c.sk, t, stream, undefined, undefined, { firstSumsChunk: 8193 }), ConfigError);
    } finally {
      arena.dispose();
      stream.dispose();
    }
  }
});

/** bf16 or f16 device keys of `keys` (contiguous [B, Hkv, sk, D]) in a buffer of their own. */
function halfDeviceKeys(c: Case, keys: Float32Array, dtype: 'bf16' | 'f16' = 'bf16'): { readonly tensor: ReturnType<typeof deviceTensor>; readonly buf: DeviceBuffer } {
  const half = new HostTensor('f32', [c.B, c.Hkv, c.sk, c.D], keys).toDType(dtype);
  const buf = new DeviceBuffer(half.data.byteLength);
  copies.fromHost(buf, half.data);
  return { tensor: deviceTensor(dtype, half.shape, buf.ptr), buf };
}

/** Layouts of kernels/build_ws.cu (dsub 64, euclidean, C ≤ 64): part-filled and single tiles, fewer points than centroids, many blocks a group. */
const WS_CASES: Case[] = [
  { B: 1, H: 4, Hkv: 2, D: 128, M: 2, bits: 6, sk: 1500, O: 3, ip: false, iters: 4 }, // the seed config's shape, smaller
  { B: 2, H: 2, Hkv: 2, D: 64, M: 1, bits: 5, sk: 8300, O: 0, ip: false, iters: 3 },
  { B: 1, H: 1, Hkv: 1, D: 64, M: 1, bits: 1, sk: 70, O: 10, ip: false, iters: 3 }, // n = 60: one part-filled tile, C = 2
  { B: 1, H: 4, Hkv: 1, D: 256, M: 4, bits: 4, sk: 129, O: 1, ip: false, iters: 5 }, // n = 128: two whole tiles
  { B: 1, H: 2, Hkv: 2, D: 128, M: 2, bits: 6, sk: 45, O: 5, ip: false, iters: 2 }, // n = 40 < C = 64
  { B: 1, H: 2, Hkv: 2, D: 128, M: 2, bits: 6, sk: 900, O: 2, ip: false, iters: 0 }, // the final assignment alone sums |x|²
];

test('GPU build: the warp-specialized round kernels (sm_90a: bf16 and f16 device keys, dsub 64, C ≤ 64) equal the oracle exactly on integer data, with the mma kernel\'s changed codes per round, sums moved or formed from the codes; where they do not apply, asking for them is a ConfigError', { skip }, () => {
  const hopper = isHopper();
  const stream = new Stream();
  try {
    for (const [c, dtype] of WS_CASES.flatMap((c) => [[c, 'bf16'], [c, 'f16']] as const)) {
      const layout = layoutOf(c);
      const keys = keysFor(c, true, 41); // integers in [−6, 6]: exact in f16 and bf16
      const cpu = buildIndexCpu(layout, keys, c.sk, c.sk);
      const { tensor, buf } = halfDeviceKeys(c, keys, dtype);
      const { arena, target: t } = allocateBuildTarget(layout, c.sk);
      try {
        if (!hopper) {
          assert.throws(() => buildOnDevice(layout, tensor, c.sk, t, stream, undefined, undefined, { roundFamily: 'wgmma' }), ConfigError);
          continue;
        }
        const run = (tuning: BuildTuning): ReturnType<typeof buildOnDevice> => {
          copies.fill32Async(t.codes, 0xffffffff, t.codes.bytes / 4, stream); // poison: every code is written
          return buildOnDevice(layout, tensor, c.sk, t, stream, undefined, undefined, tuning);
        };
        const mma = run({ roundFamily: 'mma' }); // f16: staged into fp32 (build.cu has no f16 rounds)
        assert.match(mma.roundKernel, dtype === 'bf16' ? /^pq_build_round_k4_c1_b\d_bf16$/ : /^pq_build_round_k4_c1_b\d$/);
        assert.equal(mma.keysRead, dtype === 'bf16' ? 'in place' : 'staged');
        assertTargetIsOracle(c, t, cpu, `mma ${dtype} ${JSON.stringify(c)}`);
        for (const tuning of [{}, { recomputeRounds: 1 }, { recomputeRounds: c.iters + 1 }] as BuildTuning[]) {
          const stats = run(tuning); // the default family here
          const what = `${stats.roundKernel}, ${stats.recomputedRounds} recomputed rounds, ${JSON.stringify(c)}`;
          assert.equal(stats.roundKernel, `pq_build_round_ws_${dtype}`, what);
          assert.equal(stats.keysRead, 'in place', what);
          assertTargetIsOracle(c, t, cpu, what);
          assert.deepEqual(stats.changedPerRound, mma.changedPerRound, what);
          assert.ok(stats.flaggedPerRound.every((f) => f >= 0 && f <= stats.points), what);
        }
      } finally {
        arena.dispose();
        buf.dispose();
      }
    }
    // Where they do not apply: host keys, ip, C > 64, dsub ≠ 64 (bf16 and f16 device keys alike).
    const ws0 = WS_CASES[0] as Case;
    const refused: Array<[Case, 'bf16' | 'f16' | undefined]> = [
      [ws0, undefined],
      ...(['bf16', 'f16'] as const).flatMap((dtype) => [[{ ...ws0, ip: true }, dtype], [{ ...ws0, bits: 7 }, dtype], [{ ...ws0, M: 4 }, dtype]] as Array<[Case, 'bf16' | 'f16']>),
    ];
    for (const [c, dtype] of refused) {
      const layout = layoutOf(c);
      const keys = keysFor(c, true, 43);
      const { arena, target: t } = allocateBuildTarget(layout, c.sk);
      const dev = dtype ? halfDeviceKeys(c, keys, dtype) : undefined;
      try {
        assert.throws(() => buildOnDevice(layout, dev?.tensor ?? keys, c.sk, t, stream, undefined, undefined, { roundFamily: 'wgmma' }),
          (e: unknown) => e instanceof ConfigError && /tuning\.roundFamily/.test((e as Error).message), JSON.stringify(c));
      } finally {
        dev?.buf.dispose();
        arena.dispose();
      }
    }
    // Rows only 8-byte aligned (row stride D + 4): the mma rounds read bf16 there, f16 is staged, and
    // asking for 'wgmma' names the alignment for either dtype.
    if (hopper) {
      for (const dtype of ['bf16', 'f16'] as const) {
        const layout = layoutOf(ws0);
        const keys = keysFor(ws0, true, 45);
        const { data, shape, strides } = paddedDeviceKeys(ws0, keys, dtype, PADDINGS['wide rows']);
        const buf = new DeviceBuffer(data.data.byteLength);
        const { arena, target: t } = allocateBuildTarget(layout, ws0.sk);
        try {
          copies.fromHost(buf, data.data);
          const tensor = deviceTensor(dtype, shape, buf.ptr, strides);
          assert.throws(() => buildOnDevice(layout, tensor, ws0.sk, t, stream, undefined, undefined, { roundFamily: 'wgmma' }),
            (e: unknown) => e instanceof ConfigError && /16-byte aligned/.test((e as Error).message), dtype);
          const stats = buildOnDevice(layout, tensor, ws0.sk, t, stream);
          assert.equal(stats.keysRead, dtype === 'bf16' ? 'in place' : 'staged', dtype);
          assertTargetIsOracle(ws0, t, buildIndexCpu(layout, keys, ws0.sk, ws0.sk), `${dtype} wide rows`);
        } finally {
          buf.dispose();
          arena.dispose();
        }
      }
    }
  } finally {
    stream.dispose();
  }
});

/** A build target's contents as an index state (positions 0 … sk−1, capacity sk). */
function targetState(c: Case, t: DeviceBuildTarget): PQIndexState {
  const layout = layoutOf(c);
  const G = c.B * c.Hkv * c.M;
  const C = layout.numCentroids;
  const cdim = layout.centroidDim;
  const { centroids: cent, codes, phi } = readBuildTarget(t);
  const centroids = new Float32Array(G * C * cdim);
  for (let r = 0; r < G * C; r++) centroids.set(cent.subarray(r * t.centroidStride, r * t.centroidStride + cdim), r * cdim);
  const packed = new Uint8Array(c.B * c.Hkv * c.sk * c.M);
  for (let bh = 0; bh < c.B * c.Hkv; bh++) packed.set(codes.subarray(bh * t.capPad * c.M, (bh * t.capPad + c.sk) * c.M), bh * c.sk * c.M);
  return { layout, capacity: c.sk, seqLen: c.sk, centroids, codes: packed, phi };
}

test('GPU build, warp-specialized rounds on real data (bf16 and f16 normal keys at everyday and extreme magnitudes, f16 subnormals): codes nearest their centroids in the canonical order, quantization error within 0.1% of the oracle\'s', { skip: skip || (isHopper() ? false : 'kernels/build_ws.cu needs compute capability 9.0') }, () => {
  CudaContext.primary();
  const stream = new Stream();
  // f16: most keys subnormal at 2^-16 (|x| < 2^-14); at 2^11 the largest near 2^15 (f16 ends at 65504).
  const scales = [['bf16', 1], ['bf16', 1e-17], ['bf16', 1e18], ['f16', 1], ['f16', 2 ** -16], ['f16', 2 ** 11]] as const;
  try {
    for (const [dtype, scale] of scales) {
      for (const c of WS_CASES.slice(0, 2) as Case[]) {
        const layout = layoutOf(c);
        const keys = keysFor(c, false, 44).map((v) => v * scale);
        // The values the kernels read: the keys rounded to bf16 or f16.
        const exact = new HostTensor('f32', [c.B, c.Hkv, c.sk, c.D], keys).toDType(dtype).toDType('f32').data as Float32Array;
        const { tensor, buf } = halfDeviceKeys(c, keys, dtype);
        const { arena, target: t } = allocateBuildTarget(layout, c.sk);
        try {
          copies.fill32Async(t.codes, 0, t.codes.bytes / 4, stream); // positions below O are not the build's
          const stats = buildOnDevice(layout, tensor, c.sk, t, stream, undefined, undefined, { roundFamily: 'wgmma' });
          const what = `${dtype} scale ${scale}, ${stats.roundKernel}, ${JSON.stringify(c)}`;
          assert.equal(stats.roundKernel, `pq_build_round_ws_${dtype}`, what);
          const gpu = targetState(c, t);
          assertCodesNearest(c, gpu, exact);
          const eg = quantizationError(gpu, exact);
          const ec = quantizationError(buildIndexCpu(layout, exact, c.sk, c.sk), exact);
          assert.ok(Math.abs(eg - ec) <= 1e-3 * ec, `${what}: quantization error ${eg} vs the oracle's ${ec}`);
        } finally {
          arena.dispose();
          buf.dispose();
        }
      }
    }
  } finally {
    stream.dispose();
  }
});

/** Whether the device runs kernels/build_ws.cu (compute capability 9.0). */
function isHopper(): boolean {
  if (skip) return false;
  const [major, minor] = CudaContext.primary().device.computeCapability;
  return major === 9 && minor === 0;
}

test('GPU build: one graph whose rounds are reported as they finish, ending at done = total (host keys and the mma rounds; on Hopper, bf16 device keys and the wgmma rounds)', { skip }, () => {
  CudaContext.primary();
  // C = 256 (four centroid chunks) over 4 × 65,536 points: a few ms of rounds, several poll intervals.
  const mma: Case = { B: 1, H: 4, Hkv: 4, D: 64, M: 1, bits: 8, sk: 65536, O: 0, ip: false, iters: 6 };
  // bf16 device keys in the wgmma rounds' layout (moving rounds 2 … 5).
  const wgmma: Case = { B: 1, H: 8, Hkv: 8, D: 128, M: 2, bits: 6, sk: 65536, O: 0, ip: false, iters: 6 };
  const stream = new Stream();
  try {
    for (const c of isHopper() ? [mma, wgmma] : [mma]) {
      const layout = layoutOf(c);
      const keys = keysFor(c, false, 31);
      const dev = c === wgmma ? halfDeviceKeys(c, keys) : undefined;
      const { arena, target } = allocateBuildTarget(layout, c.sk);
      try {
        const reports: Array<[number, number]> = [];
        const stats = buildOnDevice(layout, dev?.tensor ?? keys, c.sk, target, stream, (done, total) => reports.push([done, total]));
        const what = `${stats.roundKernel}: ${JSON.stringify(reports)}`;
        assert.equal(stats.roundKernel.startsWith('pq_build_round_ws'), c === wgmma, what);
        const total = c.iters + 1;
        // The last report counts the rounds the device wrote: it reaches total only if every finalize did.
        assert.deepEqual(reports.at(-1), [total, total], what);
        for (let i = 0; i < reports.length; i++) {
          const [done, t] = reports[i] as [number, number];
          assert.equal(t, total);
          assert.ok(done >= 1 && done <= total, `report ${i}: done ${done}; ${what}`);
          if (i > 0) assert.ok(done > (reports[i - 1] as [number, number])[0], `reports increase: ${what}`);
        }
      } finally {
        arena.dispose();
        dev?.buf.dispose();
      }
    }
  } finally {
    stream.dispose();
  }
});

/** Σ over groups and points of the distance to the assigned centroid (float64). */
function quantizationError(st: PQIndexState, keys: Float32Array): number {
  const { layout } = st;
  const { batch: B, kvHeads: Hkv, headDim: D } = layout.shape;
  const { pqGroupFactor: M, initOffset: O } = layout.config;
  const dsub = layout.subDim;
  const cdim = layout.centroidDim;
  const n = st.seqLen - O;
  let total = 0;
  const pts = new Float32Array(cdim);
  for (let b = 0; b < B; b++) {
    for (let kvh = 0; kvh < Hkv; kvh++) {
      for (let m = 0; m < M; m++) {
        const g = groupId(layout, b, kvh, m);
        const cb = centroidOffset(layout, b, kvh, m, 0);
        for (let p = 0; p < n; p++) {
          const src = ((b * Hkv + kvh) * st.seqLen + O + p) * D + m * dsub;
          pts.set(keys.subarray(src, src + dsub));
          if (cdim > dsub) pts[dsub] = ipAugment(st.phi[g], squaredNormF32(pts, 0, dsub));
          const code = st.codes[codeOffset(layout, st.capacity, b, kvh, O + p) + m];
          for (let j = 0; j < cdim; j++) total += (pts[j] - st.centroids[cb + code * cdim + j]) ** 2;
        }
      }
    }
  }
  return total;
}

test('GPU build on real data: quantization error within 0.1% of the oracle, codes nearest their centroids', { skip }, () => {
  for (const c of CASES.slice(0, 3)) {
    const keys = keysFor(c, false, 12);
    const { cpu, gpu } = build(c, keys);
    const ec = quantizationError(cpu, keys);
    const eg = quantizationError(gpu, keys);
    assert.ok(Math.abs(eg - ec) <= 1e-3 * ec, `quantization error ${eg} vs ${ec} (${JSON.stringify(c)})`);
    assertCodesNearest(c, gpu, keys);
  }
});

/** Every GPU code is its point's nearest GPU centroid in the canonical order (the final assignment is exact). */
function assertCodesNearest(c: Case, gpu: PQIndexState, keys: Float32Array): void {
  const layout = gpu.layout;
  const { pqGroupFactor: M, initOffset: O } = layout.config;
  const n = gpu.seqLen - O;
  for (let bh = 0; bh < c.B * c.Hkv; bh++) {
    for (let m = 0; m < M; m++) {
      const dsub = layout.subDim;
      const cdim = layout.centroidDim;
      const pts = new Float32Array(n * cdim);
      for (let p = 0; p < n; p++) {
        const src = (bh * c.sk + O + p) * c.D + m * dsub;
        pts.set(keys.subarray(src, src + dsub), p * cdim);
        if (cdim > dsub) pts[p * cdim + dsub] = ipAugment(gpu.phi[bh * M + m], squaredNormF32(pts, p * cdim, dsub));
      }
      const want = new Uint8Array(n);
      const cb = centroidOffset(layout, 0, bh, m, 0);
      assignAll(pts, n, cdim, gpu.centroids.subarray(cb, cb + layout.numCentroids * cdim), layout.numCentroids, want);
      for (let p = 0; p < n; p++) assert.equal(gpu.codes[codeOffset(layout, gpu.capacity, 0, bh, O + p) + m], want[p], `point ${p} of ${JSON.stringify(c)}`);
    }
  }
}

test('GPU build at extreme magnitudes (squares that underflow or overflow fp32): codes still nearest in the canonical order', { skip }, () => {
  for (const scale of [1e-21, 1e-17, 1e18, 3e18]) {
    for (const c of [CASES[0], CASES[2]]) {
      const keys = keysFor(c, false, 13).map((v) => v * scale);
      const { gpu } = build(c, keys);
      assertCodesNearest(c, gpu, keys);
    }
  }
});

/** Padding around device keys: positions after each (b, kv-head) block, one block after each batch entry, elements after each row. */
interface KeyPadding { readonly positions: number; readonly batchGap: boolean; readonly row: number }

const PADDINGS = {
  contiguous: { positions: 0, batchGap: false, row: 0 },
  'K cache': { positions: 37, batchGap: false, row: 0 }, // [B, Hkv, capacity, D]
  'batch gap': { positions: 37, batchGap: true, row: 0 }, // s0 ≠ Hkv·s1
  'wide rows': { positions: 0, batchGap: false, row: 4 },
  'odd rows': { positions: 3, batchGap: false, row: 2 }, // rows not 4-element aligned
} as const satisfies Record<string, KeyPadding>;

/**
 * Whether the build kernels should read these keys in place (cuda-build.ts keysInPlace), else stage
 * them: f16 only where the wgmma rounds take it (Hopper, dsub 64, euclidean, C ≤ 64, 16-byte rows).
 */
function readInPlace(c: Case, dtype: FloatDType, pad: KeyPadding): boolean {
  const strided = pad.row % 4 === 0 && !(pad.batchGap && c.B > 1);
  if (dtype !== 'f16') return strided;
  const s2 = c.D + pad.row;
  return strided && isHopper() && c.D / c.M === 64 && !c.ip && c.bits <= 6 && s2 % 8 === 0 && ((c.sk + pad.positions) * s2) % 8 === 0;
}

/**
 * Integer-valued keys laid out for a device tensor of `dtype` with `pad`; the padding holds NaN, so
 * a kernel reading past the strides would make the build throw or differ.
 */
function paddedDeviceKeys(c: Case, keys: Float32Array, dtype: FloatDType, pad: KeyPadding): { data: HostTensor; shape: number[]; strides: number[] } {
  const s2 = c.D + pad.row;
  const s1 = (c.sk + pad.positions) * s2;
  const s0 = (c.Hkv + (pad.batchGap ? 1 : 0)) * s1;
  const flat = new Float32Array(c.B * s0).fill(NaN);
  for (let b = 0; b < c.B; b++)
    for (let h = 0; h < c.Hkv; h++)
      for (let p = 0; p < c.sk; p++)
        for (let j = 0; j < c.D; j++) flat[b * s0 + h * s1 + p * s2 + j] = keys[((b * c.Hkv + h) * c.sk + p) * c.D + j];
  return { data: HostTensor.fromNumbers(dtype, [flat.length], flat), shape: [c.B, c.Hkv, c.sk, c.D], strides: [s0, s1, s2, 1] };
}

const DEVICE_KEY_CASES: Case[] = [
  CASES[0],
  CASES[2],
  { B: 2, H: 2, Hkv: 2, D: 128, M: 2, bits: 6, sk: 1100, O: 3, ip: false, iters: 3 },
  // No round, so no first sums to check the keys read in place: pq_build_check_keys does.
  { B: 1, H: 2, Hkv: 2, D: 64, M: 2, bits: 5, sk: 700, O: 4, ip: true, iters: 0 },
];

test('GPU build from device keys: f32 and bf16 read in place (contiguous, K-cache strides, padded rows), f16 where the wgmma rounds take it, other layouts staged; each equals the oracle; non-finite keys (before O, after O, two at random) are named by their lowest flat index and leave the target as it was', { skip }, () => {
  CudaContext.primary();
  const stream = new Stream();
  const rng = new SplitMix32(57);
  for (const c of DEVICE_KEY_CASES) {
    const layout = layoutOf(c);
    const keys = keysFor(c, true, 31); // integers in [−6, 6]: exact in f16 and bf16
    const cpu = buildIndexCpu(layout, keys, c.sk, c.sk);
    const { arena, target: t } = allocateBuildTarget(layout, c.sk);
    try {
      for (const dtype of ['f32', 'f16', 'bf16'] as const) {
        for (const [name, pad] of Object.entries(PADDINGS)) {
          const { data, shape, strides } = paddedDeviceKeys(c, keys, dtype, pad);
          const buf = new DeviceBuffer(data.data.byteLength);
          try {
            copies.fromHost(buf, data.data);
            copies.fill32Async(t.codes, 0xffffffff, t.codes.bytes / 4, stream); // poison: every code is written
            const stats = buildOnDevice(layout, deviceTensor(dtype, shape, buf.ptr, strides), c.sk, t, stream);
            const what = `${dtype} ${name} ${JSON.stringify(c)}`;
            const inPlace = readInPlace(c, dtype, pad);
            assert.equal(stats.keysRead, inPlace ? 'in place' : 'staged', what);
            assert.equal(stats.roundKernel.endsWith(`_${dtype}`), inPlace && dtype !== 'f32', `${stats.roundKernel} ${what}`);
            assertTargetIsOracle(c, t, cpu, what);
            // Non-finite keys: the error names the lowest flat index, on either path, and the target
            // still holds the good build. One before O in the last head (pq_build_init's check where
            // keys are read in place), one after O in the first (first sums'), two at random.
            const flat = (bh: number, p: number, j: number): number => (bh * c.sk + p) * c.D + j;
            const lo = rng.int(0, keys.length - 2);
            const plants: Array<readonly number[]> = [[flat(c.B * c.Hkv - 1, c.O - 1, c.D - 1)], [flat(0, c.sk - 1, 0)], [lo, rng.int(lo + 1, keys.length - 1)]];
            for (const at of plants) {
              const bad = keys.slice();
              for (const i of at) bad[i] = rng.int(0, 2) === 0 ? NaN : rng.int(0, 1) === 0 ? Infinity : -Infinity;
              copies.fromHost(buf, paddedDeviceKeys(c, bad, dtype, pad).data.data);
              const lowest = Math.min(...at);
              assert.throws(() => buildOnDevice(layout, deviceTensor(dtype, shape, buf.ptr, strides), c.sk, t, stream),
                (e: unknown) => e instanceof DeviceInputError && new RegExp(`flat index ${lowest}\\b`).test((e as Error).message), `${what}: bad keys at ${at.join(', ')}`);
              assertTargetIsOracle(c, t, cpu, `${what}: after the build rejected for ${at.join(', ')}`);
            }
          } finally {
            buf.dispose();
          }
        }
      }
    } finally {
      arena.dispose();
    }
  }
  stream.dispose();
});

test('CudaPQCache.build from device keys (bf16 K cache) equals the oracle; non-finite device keys throw before the index changes; device appends, contiguous and from a K cache', { skip }, () => {
  for (const c of DEVICE_KEY_CASES) {
    const layout = layoutOf(c);
    const { shape, config } = layout;
    const keys = keysFor(c, true, 31);
    const capacity = c.sk + 20;
    const cpu = buildIndexCpu(layout, keys, c.sk, capacity);
    const cache = new CudaPQCache({ shape, config, capacity });
    const buffers: DeviceBuffer[] = [];
    try {
      for (const pad of [PADDINGS['K cache'], PADDINGS.contiguous]) {
        const { data, shape: ks, strides } = paddedDeviceKeys(c, keys, 'bf16', pad);
        const buf = new DeviceBuffer(data.data.byteLength);
        buffers.push(buf);
        copies.fromHost(buf, data.data);
        cache.build(deviceTensor('bf16', ks, buf.ptr, strides));
        assertSameIndex(cache.exportState(), cpu, `bf16 ${JSON.stringify(pad)} ${JSON.stringify(c)}`);
      }
      // One NaN at a known flat index: DeviceInputError naming it, and the built index stands.
      const bad = keys.slice();
      const at = ((c.B * c.Hkv - 1) * c.sk + c.sk - 2) * c.D + 5;
      bad[at] = NaN;
      const { data } = paddedDeviceKeys(c, bad, 'bf16', PADDINGS.contiguous);
      const buf = new DeviceBuffer(data.data.byteLength);
      buffers.push(buf);
      copies.fromHost(buf, data.data);
      assert.throws(() => cache.build(deviceTensor('bf16', [c.B, c.Hkv, c.sk, c.D], buf.ptr)),
        (e: unknown) => e instanceof DeviceInputError && new RegExp(`keys: .*flat index ${at}\\b`).test((e as Error).message));
      assertSameIndex(cache.exportState(), cpu, 'index after the rejected build');
      // Strides that overlap rows are refused by the host before any device work.
      assert.throws(() => cache.build(deviceTensor('f32', [c.B, c.Hkv, c.sk, c.D], buf.ptr, [c.Hkv * c.sk * c.D, c.sk * c.D, c.D - 1, 1])), ShapeError);

      // Appends of device keys (bf16, read in place) against the oracle's append of the same values.
      const n = 5;
      const rng = new SplitMix32(41);
      const added = new Float32Array(c.B * c.Hkv * n * c.D).map(() => rng.int(-6, 6));
      const addBuf = new DeviceBuffer(added.length * 2);
      buffers.push(addBuf);
      copies.fromHost(addBuf, HostTensor.fromNumbers('bf16', [added.length], added).data);
      cache.append(deviceTensor('bf16', [c.B, c.Hkv, n, c.D], addBuf.ptr));
      appendCodesCpu(cpu, added, n);
      const after = cache.exportState();
      assert.equal(after.seqLen, c.sk + n);
      assert.deepEqual(after.codes, cpu.codes, `codes after a device append ${JSON.stringify(c)}`);

      // A chunked prefill's keys appended from where they sit in a K cache [B, Hkv, cap, D]: the
      // slice at positions 4 .. 4 + n, rows padded (s2 = D + 2), a gap between batches (s0 > Hkv·s1),
      // NaN everywhere else, so a key read off its strides makes the append throw or differ.
      for (const dtype of ['f32', 'bf16', 'f16'] as const) {
        const at = 4;
        const chunk = new Float32Array(c.B * c.Hkv * n * c.D).map(() => rng.int(-6, 6));
        // The K cache's rows 0 .. at + n: NaN before the chunk, then the chunk (paddedDeviceKeys adds the rest).
        const rowsUpTo = new Float32Array(c.B * c.Hkv * (at + n) * c.D).fill(NaN);
        for (let bh = 0; bh < c.B * c.Hkv; bh++) rowsUpTo.set(chunk.subarray(bh * n * c.D, (bh + 1) * n * c.D), (bh * (at + n) + at) * c.D);
        const { data, strides } = paddedDeviceKeys({ ...c, sk: at + n }, rowsUpTo, dtype, { positions: 3, batchGap: true, row: 2 });
        const kvBuf = new DeviceBuffer(data.data.byteLength);
        buffers.push(kvBuf);
        copies.fromHost(kvBuf, data.data);
        const elementBytes = data.data.byteLength / data.shape[0];
        cache.append(deviceTensor(dtype, [c.B, c.Hkv, n, c.D], kvBuf.ptr + BigInt(at * strides[2] * elementBytes), strides));
        appendCodesCpu(cpu, chunk, n);
        const state = cache.exportState();
        assert.equal(state.seqLen, cpu.seqLen);
        assert.deepEqual(state.codes, cpu.codes, `codes after a ${dtype} append from a K cache ${JSON.stringify(c)}`);
      }
      // Strides whose rows overlap are refused before any device work.
      assert.throws(() => cache.append(deviceTensor('bf16', [c.B, c.Hkv, 2, c.D], addBuf.ptr, [c.Hkv * 2 * c.D, 2 * c.D, c.D - 1, 1])),
        (e: unknown) => e instanceof ShapeError && /^keys\.strides/.test((e as Error).message));
      assert.equal(cache.exportState().seqLen, cpu.seqLen);
    } finally {
      cache.dispose();
      for (const b of buffers) b.dispose();
    }
  }
});

test('GPU builds of one cache reuse its workspace: new sk, then the first sk again over new keys at the same address, each equal to the oracle', { skip }, () => {
  const base: Case = { B: 1, H: 4, Hkv: 2, D: 64, M: 2, bits: 5, sk: 1600, O: 8, ip: true, iters: 3 };
  const layout = layoutOf(base);
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity: 2000 });
  const buf = new DeviceBuffer(base.B * base.Hkv * 2000 * base.D * 4);
  try {
    for (const [sk, seed, onDevice] of [[1600, 1, true], [1900, 2, true], [1600, 3, true], [1600, 4, false], [1600, 5, true]] as const) {
      const c = { ...base, sk };
      const keys = keysFor(c, true, seed);
      const cpu = buildIndexCpu(layout, keys, sk, 2000);
      if (onDevice) {
        copies.fromHost(buf, keys);
        cache.build(deviceTensor('f32', [c.B, c.Hkv, sk, c.D], buf.ptr));
      } else {
        cache.build(new HostTensor('f32', [c.B, c.Hkv, sk, c.D], keys));
      }
      assertSameIndex(cache.exportState(), cpu, `sk ${sk} seed ${seed}`);
    }
  } finally {
    cache.dispose();
    buf.dispose();
  }
});

test('device keys of a layout the build kernels do not cover (dsub > 128) are copied to the host and built by the oracle; a NaN there is a NonFiniteError', { skip }, () => {
  const c: Case = { B: 1, H: 2, Hkv: 2, D: 256, M: 1, bits: 3, sk: 300, O: 4, ip: false, iters: 2 };
  const layout = layoutOf(c);
  const keys = keysFor(c, true, 51);
  const cpu = buildIndexCpu(layout, keys, c.sk, c.sk);
  const cache = new CudaPQCache({ shape: layout.shape, config: layout.config, capacity: c.sk });
  const odd: KeyPadding = { positions: 9, batchGap: true, row: 0 };
  const { data, shape, strides } = paddedDeviceKeys(c, keys, 'f16', odd);
  const buf = new DeviceBuffer(data.data.byteLength);
  try {
    copies.fromHost(buf, data.data);
    cache.build(deviceTensor('f16', shape, buf.ptr, strides));
    const gpu = cache.exportState();
    assert.deepEqual(gpu.centroids, cpu.centroids);
    assert.deepEqual(gpu.codes, cpu.codes);
    const bad = keys.slice();
    bad[777] = Infinity;
    copies.fromHost(buf, paddedDeviceKeys(c, bad, 'f16', odd).data.data);
    assert.throws(() => cache.build(deviceTensor('f16', shape, buf.ptr, strides)), (e: unknown) => e instanceof NonFiniteError && e.index === 777);
  } finally {
    cache.dispose();
    buf.dispose();
  }
});
