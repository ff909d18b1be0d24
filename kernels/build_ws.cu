// PQ build, the round kernels for Hopper (sm_90a only): the assignment pass of kernels/build.cu's
// rounds, warp-specialized, for bf16 (pq_build_round_ws_bf16) or f16 keys (pq_build_round_ws_f16)
// with dsub = 64 (cdim = 64: euclidean), C <= 64. Same arguments, modes, codes, sums and stats as
// pq_build_round_* (build.cu); the host picks them for those layouts on compute capability 9.0 when
// the key rows are 16-byte aligned (src/pq/cuda-build.ts), and build.cu's mma.sync kernels
// everywhere else (f16 keys staged into fp32 there).
//
// Why another kernel: build.cu's warps each stream their own 16-point tile into registers and
// score it with mma.sync, so a warp waits on its loads and its dependent HMMA chains in turn and the
// tensor pipe is ~30% busy (session 33). Here producer warps stream 64-point tiles into shared
// memory ahead of two consumer warpgroups, which score a whole tile with 8 wgmma m64n64k16 and run
// the shared assignment step (build_assign.cuh) while the other warpgroup's products run.
// Measured (session 34, seed build from bf16 keys): rounds 201-322 us against 227-314 for the
// mma.sync kernel, the build 2568 against 2627 us. A warp re-scoring a near tie (pass C, ~1% of
// points) or moving points from the keys held its whole warpgroup at the next wgmma; since session
// 35 pass C waits in a per-warp queue (resolve_deferred), moves read the stage the warp still
// holds, and the later rounds read |x| from round 0: the build 2226 us against 2578 (bench/NOTES.md,
// session 35). Session 36: the band for this kernel's order of products (score_band_lo_first), 4x
// narrower, and fewer instructions a tile (bench/NOTES.md, session 36).
//
// Launch: grid (P, G), block kWsThreads = 128 * kWsConsumers + 32 * kWsProducers (320), dynamic
// shared memory kWsSmemBytes (the host's WS_ROUND_SMEM; a smaller launch traps).
//   Producer warps (the last two: wgmma needs warpgroups of warps 4k .. 4k+3): the block's tiles
//     x, x + P, x + 2P, ... of group g (64 points each; rows past n repeat row n - 1, never counted)
//     into kWsStages shared-memory stages by 16-byte cp.async, in wgmma's 128-byte swizzle (16-byte
//     chunk c of row r at c ^ (r & 7)); completion on full[s] (one arrival per producer lane).
//   Consumer warpgroup k takes the block's tiles i = k, k + kWsConsumers, ... (stage i mod
//     kWsStages; kWsStages is a multiple of kWsConsumers, so a stage has one consumer): 8 wgmma
//     (the 4 k-steps of the centroids' bf16 lo, then of their hi; A = the tile, B = the centroids,
//     both K-major), in round 0 and the final assignment |x| of its rows from the stage meanwhile.
//     Warp w then holds rows 16w .. 16w+15 of the tile
//     in mma.sync's accumulator layout and runs nearest_rows (passes A and B) and commit_codes on
//     them, as build.cu's warps do on their tiles, but for the flagged rows, which wait in the
//     warp's queue for pass C (resolve_deferred). A moving round (ROUND_NEXT) moves the changed
//     rows from the stage (move_rows_from_stage) before the warp releases it (empty[s], 128
//     arrivals); other rounds release it as soon as the products are done.
// Products: the keys are bf16 or f16 (their own hi part); centroids split into hi + lo of the same
// type (split_pair; bf16 as build.cu packs them), so x.c ~ x.c_lo + x.c_hi in fp32
// accumulation (lo first), within score_band_lo_first (bf16; build_assign.cuh: the bound, 4x
// narrower than build.cu's score_band) or score_band_f16_lo_first (f16: the same and a term for lo
// parts below f16's normal range) of the canonical order; near ties are re-scored canonically (pass
// C, deferred).
// Invariants (the host checks them): bf16 or f16 keys; dsub == cdim == 64; cstride a multiple of 4; C <= 64 (NT = 8,
// one chunk; info's |c|^2/2 is +inf past C); n >= 1; group rows 16-byte aligned (keys, head_stride
// and row_stride multiples of 8 elements); norms holds G * n floats, and a build's first launch of
// this kernel is round 0 (ROUND_FIRST) or the final assignment (ROUND_FINAL, no k-means rounds).
#include "build_assign.cuh"
#include "common.cuh"
#include "wgmma.cuh"

namespace {

constexpr int kWsTilePoints = 64;                       // wgmma m64: the points a consumer warpgroup scores at once
constexpr int kWsDim = 64;                              // dsub = cdim: one 128-byte row of bf16 a point
constexpr int kWsRowBytes = kWsDim * 2;
static_assert(kWsRowBytes == kSwizzleRowBytes, "a point is one swizzled operand row");
constexpr int kWsTileBytes = kWsTilePoints * kWsRowBytes;  // 8 KB a stage
constexpr int kWsCentroids = 64;                        // C <= 64, padded
constexpr int kWsStages = 4;                            // 6 or 8: no faster (session 35)
constexpr int kWsMinBlocks = 2;                         // blocks a multiprocessor (96 registers; 3 at 64: slower, session 36)
constexpr int kWsConsumers = 2;                         // warpgroups
constexpr int kWsProducers = 2;                         // warps
constexpr int kWsThreads = 128 * kWsConsumers + 32 * kWsProducers;
constexpr int kWsKSteps = kWsDim / 16;
constexpr int kWsProducerRows = 32 * kWsProducers / 8;  // rows the producer lanes copy at once (8 chunks a row)
static_assert(kWsProducerRows % 8 == 0 && kWsTilePoints % kWsProducerRows == 0, "a producer lane keeps its swizzled column");
static_assert(kWsStages % kWsConsumers == 0, "a stage has one consumer warpgroup");
// Dynamic shared memory: 1024 bytes of alignment slack (the swizzle atom), the stages, the centroids'
// bf16 hi and lo (B operands), their fp32 rows (pass C), |c|^2/2 and max |c|.
constexpr int kWsCentBytes = kWsCentroids * kWsDim * 4;
constexpr int kWsInfoBytes = ((kWsCentroids + 1) * 4 + 15) / 16 * 16;
constexpr int kWsSmemBytes = 1024 + kWsStages * kWsTileBytes + 2 * kWsCentroids * kWsRowBytes + kWsCentBytes + kWsInfoBytes;

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(pq_smem_addr(bar)), "r"(count));
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("{ .reg .b64 state; mbarrier.arrive.shared::cta.b64 state, [%0]; }\n" ::"r"(pq_smem_addr(bar)) : "memory");
}
// Waits for the phase of `bar` with the given parity to complete (a fresh barrier counts its
// previous phase, parity 1, as complete: the producer's first pass over the stages does not wait).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{ .reg .pred done;\n"
      "WAIT: mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT; }\n" ::"r"(pq_smem_addr(bar)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(pq_smem_addr(dst)), "l"(src) : "memory");
}
// An arrival on `bar` once this thread's cp.async so far have landed (counted in the barrier's init count).
__device__ __forceinline__ void cp_async_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(pq_smem_addr(bar)) : "memory");
}
// Two keys of a stage word as fp32 (the first in the low half).
__device__ __forceinline__ float2 key_pair(uint32_t word, __nv_bfloat16) {
  return make_float2(__uint_as_float(word << 16), __uint_as_float(word & 0xffff0000u));
}
__device__ __forceinline__ float2 key_pair(uint32_t word, __half) { return __half22float2(*reinterpret_cast<const __half2*>(&word)); }

// A lane's share of |x|^2 for its rows q and q + 8 of warp w's 16 (chunks 2t, 2t + 1: 16 of the 64
// coordinates; the lanes t = 0..3 of a row sum to the whole, as band_row_norm expects).
template <typename T>
__device__ __forceinline__ void stage_row_norms(const uint8_t* stage, int w, int lane, float (&sq)[2]) {
  const int q = lane >> 2;
  const int t = lane & 3;
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    const int row = 16 * w + q + 8 * rs;
    float s = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 v = *reinterpret_cast<const uint4*>(stage + swizzled(row, 2 * t + h));
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 x = key_pair(words[k], T{});
        s = fmaf(x.x, x.x, fmaf(x.y, x.y, s));
      }
    }
    sq[rs] = s;
  }
}

// Deferred rows. Pass C (a flagged row's candidates re-scored in the canonical order) waits in a
// queue of the consumer warp in shared memory and runs for the queued rows together when it is
// full and after the warp's last tile, not in the tile's epilogue, where one warp re-scoring a near
// tie held its warpgroup at the next wgmma. The codes of a round do not depend on each other, so
// resolving a row later changes nothing but when its code, counts and sums are written.
constexpr int kWsDeferCap = 32;  // rows a warp's queue holds (>= 16: one tile's rows)
static_assert(kWsDeferCap >= 16, "a queue takes any tile's rows at once");
struct DeferredRow {
  uint64_t candidates;  // the centroids within the band (bit c)
  int point;            // in the group
  int old_code;         // -1: none
};

// Resolves a warp's `count` queued rows (all 32 lanes; count warp-uniform): eight lanes a row, four
// rows at a time, re-score the row's candidates in ascending order by canonical_distance_8, so the
// first of equal minimal finite distances wins (none finite: centroid 0). Then what commit_codes
// does for a row: its code if changed, and in ROUND_NEXT the counts and the move (by the row's
// lanes, from the keys: the row's stage is long gone). Returns the rows whose code changed (every
// lane; the final round counts none).
// Out of line: it runs rarely, and inlined its state would sit beside the accumulators.
template <typename T>
__device__ __noinline__ unsigned resolve_deferred(const DeferredRow* queue, int count, int mode, const T* group_keys,
                                              int row_stride, const float* cent, uint8_t* group_codes, double* group_sums,
                                              unsigned* group_counts) {
  const int r = threadIdx.x & 7;
  unsigned changed_count = 0u;
  for (int e0 = 0; e0 < count; e0 += 4) {
    const int e = e0 + ((threadIdx.x & 31) >> 3);
    const bool live = e < count;
    const DeferredRow row = live ? queue[e] : DeferredRow{0ull, 0, -1};
    const T* xr = group_keys + static_cast<int64_t>(row.point) * row_stride;
    uint64_t candidates = row.candidates;
    float best_d = INFINITY;
    int best_c = -1;
    while (__any_sync(0xffffffffu, candidates != 0ull)) {
      const bool has = candidates != 0ull;
      const int c = has ? __ffsll(static_cast<long long>(candidates)) - 1 : 0;
      candidates &= candidates - 1ull;
      const float d = canonical_distance_8(xr, 0.0f, cent + c * kWsDim, kWsDim, kWsDim, has);
      if (has && d < INFINITY && d < best_d) {
        best_d = d;
        best_c = c;
      }
    }
    const int code = best_c < 0 ? 0 : best_c;
    const bool changed = live && code != row.old_code;
    if (changed && r == 0) {
      group_codes[row.point] = static_cast<uint8_t>(code);
      if (mode == ROUND_NEXT) {
        atomicAdd(group_counts + code, 1u);
        atomicSub(group_counts + row.old_code, 1u);
      }
    }
    if (mode != ROUND_FINAL) changed_count += __popc(__ballot_sync(0xffffffffu, changed && r == 0));
    if (mode == ROUND_NEXT && changed) {
#pragma unroll
      for (int j = r; j < kWsDim; j += 8) {
        const double x = pq_to_float(xr[j]);
        atomicAdd(group_sums + code * kWsDim + j, x);
        atomicAdd(group_sums + row.old_code * kWsDim + j, -x);
      }
    }
  }
  return changed_count;
}

// Moves the warp's changed rows in `moved` (owner lanes of rows rs: lane 4p holds row p + 8*rs of
// warp w's 16) between the cluster sums, reading them from the stage the warp still holds: lane L
// adds coordinates L and L + 32, so each float64 RED instruction of the warp covers 32 consecutive
// sums (256 bytes; lanes on every other coordinate made round 2 of the seed build 16% slower). A row
// costs the warp two shared loads and four REDs a lane, without the global loads of move_points.
template <typename T>
__device__ __forceinline__ void move_rows_from_stage(unsigned moved, int rs, const int (&code)[2], const int (&old)[2],
                                                     const uint8_t* stage, int w, double* group_sums) {
  const int lane = threadIdx.x & 31;
  while (moved != 0u) {
    const int src = __ffs(moved) - 1;
    moved &= moved - 1u;
    const int to = __shfl_sync(0xffffffffu, code[rs], src);
    const int from = __shfl_sync(0xffffffffu, old[rs], src);
    const int row = 16 * w + (src >> 2) + 8 * rs;
    // coordinate j: byte 2 (j mod 8) of chunk j / 8
    const double x0 = pq_to_float(*reinterpret_cast<const T*>(stage + swizzled(row, lane >> 3) + 2 * (lane & 7)));
    const double x1 = pq_to_float(*reinterpret_cast<const T*>(stage + swizzled(row, 4 + (lane >> 3)) + 2 * (lane & 7)));
    atomicAdd(group_sums + to * kWsDim + lane, x0);
    atomicAdd(group_sums + to * kWsDim + 32 + lane, x1);
    atomicAdd(group_sums + from * kWsDim + lane, -x0);
    atomicAdd(group_sums + from * kWsDim + 32 + lane, -x1);
  }
}

// Arguments as build.cu's pq_build_round_* (src/pq/cuda-build.ts ROUND_ARGS); phi and frag are not
// read (no ip coordinate; the B operands are formed from the fp32 centroids here). norms ([G, n],
// the workspace's) keeps each point's |x| as the band takes it (band_row_norm): round 0
// (ROUND_FIRST) sums it from the stage and writes it, the later k-means rounds read it instead of
// summing it again and taking its square root (with the producers' copy addresses below: round 5 of
// the seed build 87.4 -> 74.6 M instructions, ncu session 36).
template <typename T>
__device__ __forceinline__ void build_round_ws(const T* keys, float* norms, const float* centroids, const float* info_g,
                                               uint8_t* codes_tmp, double* sums, unsigned* counts, unsigned* stats, int n,
                                               int M, int64_t head_stride, int row_stride, int D, int O, int C, int cdim,
                                               int cstride, int NT, int mode) {
  // The bands assume the products' order below (lo first).
  constexpr ScoreBand kBand = std::is_same<T, __half>::value ? BAND_F16_LO_FIRST : BAND_BF16_LO_FIRST;
  unsigned dynamic_bytes;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dynamic_bytes));
  if (dynamic_bytes < static_cast<unsigned>(kWsSmemBytes)) __trap();  // a host bug: fail the launch, never a wrong answer
  extern __shared__ __align__(1024) uint8_t ws_smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(ws_smem_raw) + 1023) & ~static_cast<uintptr_t>(1023));
  uint8_t* stages = smem;
  uint8_t* b_hi = stages + kWsStages * kWsTileBytes;
  uint8_t* b_lo = b_hi + kWsCentroids * kWsRowBytes;
  float* cent = reinterpret_cast<float*>(b_lo + kWsCentroids * kWsRowBytes);  // [C, 64] fp32
  float* half_norm2 = cent + kWsCentroids * kWsDim;                          // [64], then max |c|
  __shared__ uint64_t full[kWsStages], empty[kWsStages];
  __shared__ DeferredRow deferred[4 * kWsConsumers][kWsDeferCap];  // a queue a consumer warp

  const int g = blockIdx.y;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int dsub = D / M;
  const T* group_keys = group_points(keys, g, M, head_stride, row_stride, O, dsub);
  uint8_t* group_codes = codes_tmp + static_cast<int64_t>(g) * n;
  double* group_sums = sums + static_cast<int64_t>(g) * C * cdim;
  unsigned* group_counts = counts + g * C;
  {
    // The B operands (centroid c's row: its 64 coordinates split into bf16 hi and lo, zero past C),
    // the fp32 rows for pass C, |c|^2/2 and max |c|; the barriers.
    const float* gc = centroids + static_cast<int64_t>(g) * C * cstride;
    for (int e = tid; e < kWsCentroids * 8; e += kWsThreads) {
      const int c = e >> 3;
      const int chunk = e & 7;
      uint4 hi = make_uint4(0u, 0u, 0u, 0u);
      uint4 lo = hi;
      if (c < C) {
        const float4 a = *reinterpret_cast<const float4*>(gc + c * cstride + 8 * chunk);
        const float4 b = *reinterpret_cast<const float4*>(gc + c * cstride + 8 * chunk + 4);
        split_pair<T>(a.x, a.y, hi.x, lo.x);
        split_pair<T>(a.z, a.w, hi.y, lo.y);
        split_pair<T>(b.x, b.y, hi.z, lo.z);
        split_pair<T>(b.z, b.w, hi.w, lo.w);
        reinterpret_cast<float4*>(cent + c * kWsDim + 8 * chunk)[0] = a;
        reinterpret_cast<float4*>(cent + c * kWsDim + 8 * chunk)[1] = b;
      }
      *reinterpret_cast<uint4*>(b_hi + swizzled(c, chunk)) = hi;
      *reinterpret_cast<uint4*>(b_lo + swizzled(c, chunk)) = lo;
    }
    const float* gi = info_g + static_cast<int64_t>(g) * info_stride(NT);
    for (int c = tid; c < kWsCentroids; c += kWsThreads) half_norm2[c] = gi[c];
    if (tid == 0) half_norm2[kWsCentroids] = group_max_norm(gi, NT);
    if (tid == 0) {
      for (int s = 0; s < kWsStages; ++s) {
        mbarrier_init(&full[s], 32 * kWsProducers);
        mbarrier_init(&empty[s], 128);
      }
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    fence_proxy_async();  // the B operands, for wgmma
  }
  __syncthreads();  // the only block barrier

  const int P = gridDim.x;
  const int tiles = (n + kWsTilePoints - 1) / kWsTilePoints;
  const int my_tiles = blockIdx.x < tiles ? (tiles - blockIdx.x + P - 1) / P : 0;  // tiles x, x + P, ...
  if (tid >= 128 * kWsConsumers) {
    // Producer lane e (of the producer warps' 64) copies 16-byte chunk e mod 8 of the tile's rows
    // e / 8, e / 8 + 8, ...: its chunk, its swizzled column (rows 8 apart share row mod 8) and its row
    // step stay the same, so a copy costs the cp.async and two adds (per-copy index arithmetic was
    // ~10% of the round kernel's instructions, ncu session 36).
    const int e = tid - 128 * kWsConsumers;
    const int chunk = e & 7;
    const int r0 = e >> 3;
    const int dst0 = swizzled(r0, chunk);
    const int64_t src_step = static_cast<int64_t>(kWsProducerRows) * row_stride;
    for (int i = 0; i < my_tiles; ++i) {
      const int s = i % kWsStages;
      mbarrier_wait(&empty[s], ((i / kWsStages) + 1) & 1);
      const int first = (blockIdx.x + i * P) * kWsTilePoints;
      uint8_t* dst = stages + s * kWsTileBytes + dst0;
      const T* src = group_keys + static_cast<int64_t>(first + r0) * row_stride + 8 * chunk;
      if (first + kWsTilePoints <= n) {
#pragma unroll
        for (int k = 0; k < kWsTilePoints / kWsProducerRows; ++k)
          cp_async_16(dst + k * kWsProducerRows * kWsRowBytes, src + k * src_step);
      } else {  // the group's last tile: rows past n repeat row n - 1
        for (int k = 0; k < kWsTilePoints / kWsProducerRows; ++k) {
          const int p = min(first + r0 + k * kWsProducerRows, n - 1);
          cp_async_16(dst + k * kWsProducerRows * kWsRowBytes, group_keys + static_cast<int64_t>(p) * row_stride + 8 * chunk);
        }
      }
      cp_async_arrive(&full[s]);
    }
    pq_cp_async_wait_all();
    return;
  }

  const int wg = tid >> 7;
  const int warp = tid >> 5;
  const int w = warp & 3;  // warp in the warpgroup: tile rows 16w .. 16w+15
  const int t = lane & 3;
  const int q = lane >> 2;
  float* group_norms = norms + static_cast<int64_t>(g) * n;
  const GroupView<T> view{half_norm2[kWsCentroids], cent, group_keys, norms, nullptr /* pass C deferred */,
                                     0.0f /* no ip */, g, n, C, cdim, kWsDim, dsub, row_stride, NT};
  DeferredRow* queue = deferred[warp];
  int queued = 0;  // warp-uniform
  const uint64_t desc_hi = swizzled_desc(b_hi);
  const uint64_t desc_lo = swizzled_desc(b_lo);
  unsigned flagged_total = 0;
  unsigned changed_total = 0;
  for (int i = wg; i < my_tiles; i += kWsConsumers) {
    const int s = i % kWsStages;
    const int pbase = (blockIdx.x + i * P) * kWsTilePoints + 16 * w;
    int old[2];
    load_old_codes(mode, group_codes, pbase, n, old);
    // |x| of the lane's rows (rounded up, as the band takes it) as round 0 wrote it, loaded before the
    // wait like the old codes. Round 0 and the final assignment sum |x|^2 from the stage (with no
    // k-means rounds, the final assignment is the build's only pass).
    const bool sum_norms = mode == ROUND_FIRST || mode == ROUND_FINAL;
    float xnorm[2] = {0.0f, 0.0f};
    if (!sum_norms) {
#pragma unroll
      for (int rs = 0; rs < 2; ++rs)
        if (pbase + q + 8 * rs < n) xnorm[rs] = group_norms[pbase + q + 8 * rs];
    }
    const uint8_t* stage = stages + s * kWsTileBytes;
    mbarrier_wait(&full[s], (i / kWsStages) & 1);
    fence_proxy_async();  // the stage's cp.async writes, for wgmma
    float d[32];
#pragma unroll
    for (int k = 0; k < 32; ++k) d[k] = 0.0f;
    const uint64_t desc_a = swizzled_desc(stage);
    wgmma_fence();
    // The lo products first, while the sum is small: their truncation errors then scale with 2^-8 |x||c|,
    // and only the hi products' with |x||c| (score_band_lo_first).
#pragma unroll
    for (int ks = 0; ks < kWsKSteps; ++ks) wgmma_m64n64k16<T>(d, desc_a + 2 * ks, desc_lo + 2 * ks, ks > 0);
#pragma unroll
    for (int ks = 0; ks < kWsKSteps; ++ks) wgmma_m64n64k16<T>(d, desc_a + 2 * ks, desc_hi + 2 * ks, 1);
    wgmma_commit();
    if (sum_norms) {
      float sq[2];
      stage_row_norms<T>(stage, w, lane, sq);  // while the products run
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        xnorm[rs] = band_row_norm(sq[rs]);
        if (mode == ROUND_FIRST && t == 0 && pbase + q + 8 * rs < n) group_norms[pbase + q + 8 * rs] = xnorm[rs];
      }
    }
    wgmma_wait_all();
    if (mode != ROUND_NEXT) mbarrier_arrive(&empty[s]);  // this thread is done with the stage (a moving round: below)
    int code[2] = {-1, -1};
    bool valid[2] = {false, false};
    float xaug[2] = {0.0f, 0.0f};
    uint64_t candidates[2];
    flagged_total += nearest_rows<true, true, kBand, true>(view, pbase, code, valid, xaug, [&](float (&acc)[8][4], int nt0, float (*norm_out)[2]) {
      (void)nt0;  // one chunk: nt0 == 0
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 h = *reinterpret_cast<const float2*>(half_norm2 + 8 * j + 2 * t);
        acc[j][0] = d[4 * j] - h.x;
        acc[j][1] = d[4 * j + 1] - h.y;
        acc[j][2] = d[4 * j + 2] - h.x;
        acc[j][3] = d[4 * j + 3] - h.y;
      }
      if (norm_out != nullptr) {
        (*norm_out)[0] = xnorm[0];
        (*norm_out)[1] = xnorm[1];
      }
    }, &candidates);
    // Flagged rows (code -1) wait in the queue; the others are committed now.
    bool later[2];
    bool now[2];
#pragma unroll
    for (int rs = 0; rs < 2; ++rs) {
      later[rs] = valid[rs] && code[rs] < 0;
      now[rs] = valid[rs] && !later[rs];
    }
    commit_codes<kWsKSteps, false>(mode, code, old, now, xaug, group_codes, pbase, group_keys, row_stride, group_sums,
                                   group_counts, cdim, dsub, changed_total);
    if (mode == ROUND_NEXT) {
      move_rows_from_stage<T>(__ballot_sync(0xffffffffu, t == 0 && now[0] && code[0] != old[0]), 0, code, old, stage, w, group_sums);
      move_rows_from_stage<T>(__ballot_sync(0xffffffffu, t == 0 && now[1] && code[1] != old[1]), 1, code, old, stage, w, group_sums);
      mbarrier_arrive(&empty[s]);
    }
    const unsigned later0 = __ballot_sync(0xffffffffu, t == 0 && later[0]);
    const unsigned later1 = __ballot_sync(0xffffffffu, t == 0 && later[1]);
    const int arriving = __popc(later0) + __popc(later1);
    if (arriving != 0) {
      if (queued + arriving > kWsDeferCap) {
        __syncwarp();
        changed_total += resolve_deferred(queue, queued, mode, group_keys, row_stride, cent, group_codes, group_sums, group_counts);
        __syncwarp();
        queued = 0;
      }
      const unsigned below = (1u << lane) - 1u;
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        if (t == 0 && later[rs]) {
          const int slot = queued + (rs == 0 ? __popc(later0 & below) : __popc(later0) + __popc(later1 & below));
          queue[slot] = DeferredRow{candidates[rs], pbase + q + 8 * rs, old[rs]};
        }
      }
      queued += arriving;
    }
  }
  __syncwarp();
  if (queued != 0)
    changed_total += resolve_deferred(queue, queued, mode, group_keys, row_stride, cent, group_codes, group_sums, group_counts);
  if (lane == 0 && stats != nullptr) {
    if (flagged_total != 0u) atomicAdd(stats, flagged_total);
    if (changed_total != 0u) atomicAdd(stats + 1, changed_total);
  }
}

}  // namespace

#define PQ_BUILD_ROUND_WS(T, NAME)                                                                                    \
  extern "C" __global__ void __launch_bounds__(kWsThreads, kWsMinBlocks) NAME(                                        \
      const T* keys, float* norms, const float* phi, const float* centroids, const uint4* frag, const float* info_g,  \
      uint8_t* codes_tmp, double* sums, unsigned* counts, unsigned* stats, int n, int M, int64_t head_stride,         \
      int row_stride, int D, int O, int C, int cdim, int cstride, int NT, int mode) {                                 \
    (void)phi;                                                                                                        \
    (void)frag;                                                                                                       \
    build_round_ws(keys, norms, centroids, info_g, codes_tmp, sums, counts, stats, n, M, head_stride, row_stride, D, O, \
                   C, cdim, cstride, NT, mode);                                                                       \
  }
PQ_BUILD_ROUND_WS(__nv_bfloat16, pq_build_round_ws_bf16)
PQ_BUILD_ROUND_WS(__half, pq_build_round_ws_f16)
