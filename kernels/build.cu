// PQ build: batched k-means over every (b, kv-head, sub-space) group at once (SPEC §2 build), with
// the codes and centroids of the CPU oracle (src/pq/kmeans.ts): from the same initial draw both give
// identical codes and centroids on integer-valued data.
//
// Groups g = (b*Hkv + kvh)*M + m; the n = sk - O points of group g are the sub-vectors
// keys[b, kvh, O + p, m*dsub : (m+1)*dsub], augmented for ip with sqrt(max(phi_g - |x|^2, 0))
// where phi_g = max |x|^2 over the group. Centroids are [G, C, cstride].
//
// Keys are read where the caller keeps them, fp32, bf16 or f16 (every bf16 and f16 value is exact in
// fp32, so all give the oracle's result on the fp32 values); the kernels with the _bf16 suffix read
// bf16, those with _f16 read f16 (check, init, first sums and finalize only: f16 keys are read in
// place only by build_ws.cu's round kernel, and staged into fp32 where it does not apply).
// Row p of (b, kv-head) bkv = b*Hkv + kvh starts head_stride*bkv + row_stride*p elements into
// `keys` (contiguous keys: sk*D and D; a K cache with room for more positions: a larger
// head_stride). The host passes only layouts of that form whose rows start 16-byte aligned (fp32)
// or 8-byte aligned (bf16, f16), with row_stride a multiple of 4; it stages any other layout into
// contiguous fp32 (pq_build_stage_keys).
//
// Assignment without the canonical cost. The oracle's nearest centroid uses its own fp32 order
// (8 interleaved partial sums of (x_j - c_j)^2), 3 dependent ops per coordinate and centroid. Here
// the tensor cores compute the scores x.c - |c|^2/2 (the ip coordinate is one more k column) with x
// and c split into bf16 hi + lo (products hi*hi + hi*lo + lo*hi, fp32 accumulation), and a bound on
// their distance from the canonical order decides: when a single centroid scores within the band of
// the best, it is the canonical nearest centroid; otherwise ("flagged", ~1% of points) the centroids
// within the band are re-scored in the canonical order and the lowest index among the minimal
// canonical distances wins, exactly as the oracle. Non-finite values, or magnitudes at which a
// distance could overflow, make the band infinite: every centroid is then re-scored.
//
// Sums by moves or from the codes. Cluster sums (float64, rounded once to fp32 at the mean as the
// oracle) and counts persist across rounds: a moving round adds a point to its new cluster and takes
// it out of its old one only when its code changed (float64 atomics, 2*cdim a point), from the tile
// it just scored. Where many points change (round 0, where every point joins a cluster, and the
// first rounds after it: 32% of the points in round 1 of the seed build), forming the sums again
// from the codes in pq_build_first_sums (one atomic per run of equal codes) costs less; the host
// picks how many leading rounds do that. Both give the same float64 sums on data where they are
// exact, and the same rounding to fp32 at the mean.
//
// One round = pq_build_round (codes, sums) -> pq_build_finalize (means; an empty cluster takes the
// point drawn by pq_draw(seed, 2g+1, round*256 + c); then the packed operands of the next round);
// a recomputing round = pq_build_round (codes only) -> (zeroed sums and counts) ->
// pq_build_first_sums -> pq_build_finalize. After the last round, the final assignment
// (pq_build_round, codes only) -> pq_build_publish.
//
// NaN/Inf keys, without a pass of their own: the k-means works on the workspace's centroids and phi,
// so nothing reaches the caller's index until pq_build_publish, which writes it only if no kernel
// found a non-finite key (*first_bad: the lowest flat index of one, ~0 when none). The kernels that
// find them read those keys anyway: pq_build_first_sums (positions >= O, from its float64 run sums)
// and pq_build_init (positions < O, before its draw); a staged copy's pq_build_stage_keys, and
// pq_build_check_keys where no first sums run (0 rounds). On NaN or Inf the k-means still runs to
// the end (the band logic below takes any value; codes stay in [0, C)), its result unused.
//
// Launch shapes:
//   pq_build_stage_keys grid (ceil(sk/32), B*Hkv), block 256: device keys before a build (see there).
//   pq_build_check_keys grid (x, B*Hkv), block 256: the NaN/Inf check of keys read in place where
//                      no first sums run (see there).
//   pq_build_norms     grid (ceil(n/256), G), block 256: |x|^2 per point, phi_g by atomicMax.
//   pq_build_init      grid (G), block 256, dynamic smem max(C*cstride*4 when `staged`, 2 KB):
//                      the oracle's initial draw, centroid c of g = the point it drew; packs;
//                      checks positions < O.
//   pq_build_round_kN  grid (P, G), block 128, dynamic smem NT*KS*512 + ceil((NT*8 + 1)/4)*16
//                      (+ C*cstride*4 for the one-chunk _c1 kernels) bytes: warp w of block x of
//                      group g scores the 16-point tiles (one m16 MMA tile each) 4x + w,
//                      4x + w + 4P, ... on its own, streaming each straight from the keys into
//                      registers a k-step at a time (the general kernels also ask L2 for the next
//                      tile); no block barrier after the prologue. Static smem: a 256-byte
//                      list per warp for the canonical re-scoring (rescore_candidates).
//                      KS = ceil(cdim/16) (template N).
//   pq_build_first_sums grid (ceil(n/chunk), G), block 256, chunk <= 8192 points a block: a
//                      recomputing round's sums and counts (added to zeroed ones); checks
//                      positions >= O (see there).
//   pq_build_finalize  grid (NT/2, G), block 256, dynamic smem 16*cstride*4: block x of group g
//                      takes centroids 16x .. 16x+15: means (fp32 division) or the re-seed;
//                      packs them and their max |c|; block (0, 0) writes the rounds done to
//                      `progress` when given.
//   pq_build_publish   grid (ceil(n/256), B*Hkv), block 256: the index, when every key was finite.
// The host captures the whole k-means (the workspace's zeroing, norms, init, every round and
// finalize, the final assignment, publish) in one CUDA graph.
// Packed operands of group g (written by init/finalize, read by the round):
//   frag[g][nt][ks][lane] (uint4): the mma B fragments of centroids 8nt..8nt+7, coordinates
//     16ks..16ks+15 (zero past C and cdim) in the rounds' column order (chunk_scores: lane t's b0, b1
//     are columns 16ks + 4t, +1 and its b2, b3 columns +2, +3): {b0 hi, b1 hi, b0 lo, b1 lo} as
//     bf16 pairs;
//   info[g] (info_stride(NT) floats): |c|^2/2 for c < NT*8 (+inf past C), then for each block x of
//     pq_build_finalize max |c| over its centroids 16x .. 16x+15 (max |c| of the group: their max).
// Invariants: cdim = dsub + ip <= 129; dsub <= 128 and a multiple of 4 (16-byte rows);
// C <= 256; NT = ceil(C/8) rounded up to a multiple of 8 (whole chunks of 64 centroids; padding
// centroids have zero fragments and |c|^2/2 = +inf); cstride >= cdim; n >= 1.
#include <climits>
#include <type_traits>

#include "build_assign.cuh"
#include "common.cuh"

namespace {

constexpr int kRoundThreads = 128;
// Coordinate j of point p of group g (j == dsub: the ip augmentation).
template <typename T>
__device__ __forceinline__ float point_coord(const T* keys, const float* norms, const float* phi, int g, int p, int j, int n,
                                             int M, int64_t head_stride, int row_stride, int O, int dsub) {
  if (j < dsub) return pq_to_float(group_points(keys, g, M, head_stride, row_stride, O, dsub)[static_cast<int64_t>(p) * row_stride + j]);
  return pq_ip_augment(phi[g], norms[static_cast<int64_t>(g) * n + p]);
}

// Four consecutive key columns: 16 bytes of fp32, 8 of bf16 or f16 (the unit of every vector load of
// keys). f16 keys have their own type, so that overloads decode them as f16.
struct HalfQuad {
  uint2 bits;
};
template <typename T> struct KStep;
template <> struct KStep<float> { using type = float4; };
template <> struct KStep<__nv_bfloat16> { using type = uint2; };
template <> struct KStep<__half> { using type = HalfQuad; };
__device__ __forceinline__ void zero_four(float4& x) { x = make_float4(0.f, 0.f, 0.f, 0.f); }
__device__ __forceinline__ void zero_four(uint2& x) { x = make_uint2(0u, 0u); }
__device__ __forceinline__ void zero_four(HalfQuad& x) { x.bits = make_uint2(0u, 0u); }

// Four columns as fp32 (pairs: the first column in the low half).
__device__ __forceinline__ float4 four_floats(const float4& v) { return v; }
__device__ __forceinline__ float4 four_floats(const uint2& v) {
  return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xffff0000u), __uint_as_float(v.y << 16),
                     __uint_as_float(v.y & 0xffff0000u));
}
__device__ __forceinline__ float4 four_floats(const HalfQuad& v) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&v.bits.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&v.bits.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// Volatile: kept in program order with load_kstep's loads.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Packs n-tiles nt0 .. nt1-1 (centroids 8nt0 .. 8nt1-1) of group g into their mma fragments and
// |c|^2/2 (info[g][c]). `rows` holds those centroids' rows ([8(nt1-nt0), cstride], row 0 = centroid
// 8nt0; only rows below C are read): the block's shared copy, or global memory written by this block
// before a barrier. nt1 - nt0 is a multiple of 2. All threads of the 256-thread block call it;
// every thread gets max |c| over these centroids (as float bits, >= 0), which the caller writes.
__device__ unsigned pack_tiles(const float* rows, uint4* frag, float* info, int g, int C, int cdim, int cstride, int NT,
                               int KS, int nt0, int nt1) {
  uint4* gf = frag + static_cast<int64_t>(g) * NT * KS * 32;
  float* gi = info + static_cast<int64_t>(g) * info_stride(NT);
  const int c_first = nt0 * 8;
  const int c_end = nt1 * 8;
  __shared__ unsigned max_norm_bits;
  if (threadIdx.x == 0) max_norm_bits = 0u;
  __syncthreads();
  for (int e = nt0 * KS * 32 + threadIdx.x; e < nt1 * KS * 32; e += blockDim.x) {
    const int lane = e & 31;
    const int ks = (e >> 5) % KS;
    const int nt = (e >> 5) / KS;
    const int c = nt * 8 + (lane >> 2);
    const int k = ks * 16 + 4 * (lane & 3);  // the k-step's columns in the rounds' order (KPerm)
    auto v = [&](int j) { return (c < C && j < cdim) ? rows[(c - c_first) * cstride + j] : 0.0f; };
    uint4 f;
    split_pair<__nv_bfloat16>(v(k), v(k + 1), f.x, f.z);
    split_pair<__nv_bfloat16>(v(k + 2), v(k + 3), f.y, f.w);
    gf[e] = f;
  }
  // |c|^2 in float64, four threads per centroid. The range is a multiple of 16 centroids, so a warp's
  // 8 centroids are all in it or all past it and the shuffles see whole warps. A serial loop per
  // centroid waited on each coordinate's load in turn: ~20 us of the finalize's 21 (ncu).
  for (int cb = c_first; cb < c_end; cb += 64) {
    const int c = cb + (threadIdx.x >> 2);
    if (c < c_end) {  // warp-uniform
      double s = 0.0;
      if (c < C) {
        const float* row = rows + (c - c_first) * cstride;
        for (int j = threadIdx.x & 3; j < cdim; j += 4) s += static_cast<double>(row[j]) * row[j];
      }
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      if ((threadIdx.x & 3) == 0) {
        float half_norm2 = INFINITY;  // padding centroids never win
        if (c < C) {
          half_norm2 = static_cast<float>(0.5 * s);
          atomicMax(&max_norm_bits, __float_as_uint(__fsqrt_ru(static_cast<float>(s))));  // >= 0 (or inf, NaN): bit order
        }
        gi[c] = half_norm2;
      }
    }
  }
  __syncthreads();
  return max_norm_bits;
}

}  // namespace

// Device keys before a build (src/pq/cuda-build.ts): element (b, kvh, p, j) of the caller's
// [B, Hkv, sk, D] float tensor is src[b*s0 + kvh*s1 + p*s2 + j] in `dtype`. Every element is
// checked: the lowest flat index ((b*Hkv + kvh)*sk + p)*D + j of a NaN or Inf goes to *first_bad
// (set to ~0 by the host), which the host reads before the build touches the index. With `dst`, the
// keys are also written as contiguous fp32 [B, Hkv, sk, D], for layouts the build kernels cannot
// read in place (see "Keys" above).
// Warp w of block x takes rows p = 32x + w, +8, +16, +24; its lanes stride the row.
extern "C" __global__ void __launch_bounds__(256) pq_build_stage_keys(const void* src, int dtype, int64_t s0, int64_t s1,
                                                                      int64_t s2, float* dst,
                                                                      unsigned long long* first_bad, int Hkv, int sk,
                                                                      int D) {
  const int bkv = blockIdx.y;
  const int b = bkv / Hkv;
  const int64_t base = b * s0 + (bkv - b * Hkv) * s1;
  unsigned long long bad = ULLONG_MAX;
  for (int p = blockIdx.x * 32 + (threadIdx.x >> 5); p < min(sk, (blockIdx.x + 1) * 32); p += 8) {
    const int64_t row = (static_cast<int64_t>(bkv) * sk + p) * D;
    for (int j = threadIdx.x & 31; j < D; j += 32) {
      const float v = pq_load_float(src, dtype, base + p * s2 + j);
      if (!isfinite(v)) bad = min(bad, static_cast<unsigned long long>(row + j));
      if (dst != nullptr) dst[row + j] = v;
    }
  }
  if (bad != ULLONG_MAX) atomicMin(first_bad, bad);  // bad input only
}

namespace {

// Whether any of four key values is NaN or Inf (exponent all ones), from their bits.
__device__ __forceinline__ bool any_nonfinite(const float4& v) {
  const uint32_t e = 0x7f800000u;
  return (__float_as_uint(v.x) & e) == e || (__float_as_uint(v.y) & e) == e || (__float_as_uint(v.z) & e) == e ||
         (__float_as_uint(v.w) & e) == e;
}
__device__ __forceinline__ bool any_nonfinite(const uint2& v) {  // four bf16
  const uint32_t e = 0x7f80u;
  return (v.x & e) == e || ((v.x >> 16) & e) == e || (v.y & e) == e || ((v.y >> 16) & e) == e;
}
__device__ __forceinline__ bool any_nonfinite(const HalfQuad& v) {  // four f16
  const uint32_t e = 0x7c00u;
  return (v.bits.x & e) == e || ((v.bits.x >> 16) & e) == e || (v.bits.y & e) == e || ((v.bits.y >> 16) & e) == e;
}

// The first of four values that is NaN or Inf (3 when none before the last is).
__device__ __forceinline__ int first_nonfinite_column(const float4& x) {
  return !isfinite(x.x) ? 0 : !isfinite(x.y) ? 1 : !isfinite(x.z) ? 2 : 3;
}

// The lowest flat index of a NaN or Inf among the quads q = q0 + 256u (u < kQuadBatch) for
// q0 = first, first + step, … below `quads` of keys read in place (see "Keys"): quad q is row
// p = q / row_quads, columns 4(q - p*row_quads) .. +3, at rows + p*row_stride, and element (p, j)
// has flat index flat0 + p*D + j; ~0 if none. One vector load a quad (16 bytes of fp32, 8 of bf16 or f16),
// kQuadBatch loads issued before any is tested (a test at each load waited on it in turn). Called
// by every thread of a 256-thread block with first = (its block's offset) + threadIdx.x.
constexpr int kQuadBatch = 8;
template <typename T>
__device__ unsigned long long lowest_nonfinite_quads(const T* rows, int row_stride, int row_quads, int quads, int first, int step,
                                                     int64_t flat0, int D) {
  using Quad = typename KStep<T>::type;
  unsigned long long bad = ULLONG_MAX;
  for (int q0 = first; q0 < quads; q0 += step) {
    Quad v[kQuadBatch];
#pragma unroll
    for (int u = 0; u < kQuadBatch; ++u) {
      const int q = q0 + 256 * u;
      if (q < quads) {
        const int p = q / row_quads;
        v[u] = *reinterpret_cast<const Quad*>(rows + static_cast<int64_t>(p) * row_stride + (q - p * row_quads) * 4);
      } else {
        zero_four(v[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kQuadBatch; ++u) {
      if (!any_nonfinite(v[u])) continue;  // bad input only below
      const int q = q0 + 256 * u;
      const int p = q / row_quads;
      const int j = 4 * (q - p * row_quads) + first_nonfinite_column(four_floats(v[u]));
      bad = min(bad, static_cast<unsigned long long>(flat0 + static_cast<int64_t>(p) * D + j));
    }
  }
  return bad;
}

// Keys read in place (see "Keys"): every element of rows 0 .. sk-1 checked, four at a time by one
// vector load (16 bytes of fp32, 8 of bf16 or f16; the host passes only layouts whose rows allow it), kQuadBatch
// loads in flight per thread. The lowest flat index ((b*Hkv + kvh)*sk + p)*D + j of a NaN or Inf goes
// to *first_bad, as pq_build_stage_keys. Grid (x, B*Hkv), block 256: block x of head bkv takes the
// head's quads x*256*kQuadBatch + threadIdx.x + 256*u, then strides by the grid.
template <typename T>
__device__ void check_keys(const T* keys, int64_t head_stride, int row_stride, unsigned long long* first_bad, int sk, int D) {
  const int bkv = blockIdx.y;
  const unsigned long long bad =
      lowest_nonfinite_quads(keys + bkv * head_stride, row_stride, D / 4, sk * (D / 4), blockIdx.x * 256 * kQuadBatch + threadIdx.x,
                             gridDim.x * 256 * kQuadBatch, static_cast<int64_t>(bkv) * sk * D, D);  // sk*D/4 < 2^31 (the host checks)
  if (bad != ULLONG_MAX) atomicMin(first_bad, bad);
}

}  // namespace

#define PQ_BUILD_CHECK_KEYS(T, NAME)                                                                                  \
  extern "C" __global__ void __launch_bounds__(256) NAME(const T* keys, int64_t head_stride, int row_stride,          \
                                                         unsigned long long* first_bad, int sk, int D) {              \
    check_keys(keys, head_stride, row_stride, first_bad, sk, D);                                                      \
  }
PQ_BUILD_CHECK_KEYS(float, pq_build_check_keys)
PQ_BUILD_CHECK_KEYS(__nv_bfloat16, pq_build_check_keys_bf16)
PQ_BUILD_CHECK_KEYS(__half, pq_build_check_keys_f16)

namespace {

template <typename T>
__device__ void build_norms(const T* keys, float* norms, float* phi, int n, int M, int64_t head_stride, int row_stride, int D,
                            int O) {
  const int g = blockIdx.y;
  const int p = blockIdx.x * 256 + threadIdx.x;
  if (p >= n) return;
  const int dsub = D / M;
  const T* x = group_points(keys, g, M, head_stride, row_stride, O, dsub) + static_cast<int64_t>(p) * row_stride;
  float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int j0 = 0; j0 < dsub; j0 += 8) {
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      if (j0 + r < dsub) {
        const float v = pq_to_float(x[j0 + r]);
        part[r] = __fadd_rn(part[r], __fmul_rn(v, v));
      }
    }
  }
  const float s = pq_tree8_sum(part);
  norms[static_cast<int64_t>(g) * n + p] = s;
  atomicMax(reinterpret_cast<int*>(phi) + g, __float_as_int(s));  // s >= 0: int order = float order
}

}  // namespace

#define PQ_BUILD_NORMS(T, NAME)                                                                                       \
  extern "C" __global__ void __launch_bounds__(256) NAME(const T* keys, float* norms, float* phi, int n, int M,        \
                                                         int64_t head_stride, int row_stride, int D, int O) {        \
    build_norms(keys, norms, phi, n, M, head_stride, row_stride, D, O);                                              \
  }
PQ_BUILD_NORMS(float, pq_build_norms)
PQ_BUILD_NORMS(__nv_bfloat16, pq_build_norms_bf16)

namespace {

// The oracle's initial draw (src/pq/rng.ts initialSampleIndices), bit for bit, by the whole block:
// a partial Fisher–Yates shuffle of [0, n) by draws of stream 2g, then draws with replacement where
// n < C. The shuffle's draws do not depend on the array: swap i exchanges positions i and
// j_i = i + draw(i) mod (n - i) >= i, so thread i draws j_i and the values follow from the j alone.
// Before swap i, a position p >= i holds what the last swap k < i with j_k == p moved there (no such
// k: p itself); swap k moved what position k held before swap k, which came the same way from the
// last k' < k with j_k' == k, and so on: the chain ends at a position no earlier swap wrote, its
// "root". Draw i is thus root(i) when j_i == i, else root(k) for the last k < i with j_k == j_i, or
// j_i when there is none. Chains are as long as the collisions among min(C, n) draws over n
// positions. (One warp swapping in turn: pq_build_init took ~45 us on the seed config, ncu session 30.)
// Writes idx[0, C); scratch: 2 * 256 ints. All threads of the 256-thread block call it (C <= 256).
__device__ void initial_sample_indices(uint32_t seed, int g, int n, int C, int* idx, int* scratch) {
  int* jdraw = scratch;         // j_i, i < distinct
  int* writer = scratch + 256;  // writer[k]: the last swap before k that wrote position k, or -1
  const int distinct = min(C, n);
  const uint32_t stream = 2u * static_cast<uint32_t>(g);
  const int i = threadIdx.x;
  if (i < distinct) jdraw[i] = i + static_cast<int>(pq_draw(seed, stream, i) % static_cast<uint32_t>(n - i));
  __syncthreads();
  // The last swap k < before whose j_k is p, or -1 (a full scan: no early exit, loads independent).
  auto last_swap_to = [&](int p, int before) {
    int last = -1;
    for (int k = 0; k < before; ++k) last = jdraw[k] == p ? k : last;
    return last;
  };
  if (i < distinct) writer[i] = last_swap_to(i, i);
  __syncthreads();
  auto root = [&](int k) {
    while (writer[k] >= 0) k = writer[k];
    return k;
  };
  // What position p holds before swap `before` (p >= before).
  auto held = [&](int p, int before) {
    const int k = last_swap_to(p, before);
    return k < 0 ? p : root(k);
  };
  auto drawn = [&](int d) { return jdraw[d] == d ? root(d) : held(jdraw[d], d); };  // draw d < distinct
  if (i < distinct) {
    idx[i] = drawn(i);
  } else if (i < C) {  // with replacement: position p of the shuffled array (final below distinct)
    const int p = static_cast<int>(pq_draw(seed, stream, i) % static_cast<uint32_t>(n));
    idx[i] = p < distinct ? drawn(p) : held(p, distinct);
  }
}

// It also checks the group's columns of positions 0 .. O-1 for NaN/Inf (the positions
// pq_build_first_sums does not read): the lowest flat index ((b*Hkv + kvh)*sk + p)*D + j of one goes
// to *first_bad, as pq_build_stage_keys.
template <typename T>
__device__ void build_init(const T* keys, const float* norms, const float* phi, uint32_t seed, float* centroids, uint4* frag,
                           float* info, unsigned long long* first_bad, int n, int M, int64_t head_stride, int row_stride,
                           int D, int O, int C, int cdim, int cstride, int NT, int KS, int staged) {
  extern __shared__ float4 staged_centroids[];  // [C, cstride] when staged (see pq_build_finalize)
  __shared__ int init_index[256];
  float* sc = reinterpret_cast<float*>(staged_centroids);
  const int g = blockIdx.x;
  const int dsub = D / M;
  {
    // The NaN/Inf check of positions < O (rows are aligned as for the rounds).
    const int bkv = g / M;
    const int m = g - bkv * M;
    const unsigned long long bad = lowest_nonfinite_quads(keys + bkv * head_stride + m * dsub, row_stride, dsub / 4, O * (dsub / 4), threadIdx.x,
                                                          256 * kQuadBatch, static_cast<int64_t>(bkv) * (O + n) * D + m * dsub, D);
    if (bad != ULLONG_MAX) atomicMin(first_bad, bad);
  }
  initial_sample_indices(seed, g, n, C, init_index, reinterpret_cast<int*>(staged_centroids));
  __syncthreads();  // the indices; the scratch is free for the staged centroids
  float* gc = centroids + static_cast<int64_t>(g) * C * cstride;
  // kInitBatch coordinates a thread loaded before any is stored (a store before the next load, which
  // may alias it, waited on each load in turn: one DRAM latency per coordinate); the loads return
  // raw key words, converted after the batch's loads are issued (as first sums).
  constexpr int kInitBatch = 8;
  const T* points = group_points(keys, g, M, head_stride, row_stride, O, dsub);
  for (int e0 = threadIdx.x; e0 < C * cdim; e0 += 256 * kInitBatch) {
    T raw[kInitBatch];
#pragma unroll
    for (int k = 0; k < kInitBatch; ++k) {
      const int e = e0 + 256 * k;
      const int c = e / cdim;
      const int j = e - c * cdim;
      raw[k] = T(0.0f);
      if (e < C * cdim && j < dsub) raw[k] = points[static_cast<int64_t>(init_index[c]) * row_stride + j];
    }
#pragma unroll
    for (int k = 0; k < kInitBatch; ++k) {
      const int e = e0 + 256 * k;
      if (e >= C * cdim) break;
      const int c = e / cdim;
      const int j = e - c * cdim;
      const float v = j < dsub ? pq_to_float(raw[k]) : pq_ip_augment(phi[g], norms[static_cast<int64_t>(g) * n + init_index[c]]);
      gc[c * cstride + j] = v;
      if (staged) sc[c * cstride + j] = v;
    }
  }
  __syncthreads();  // the centroids written above are read back by pack_tiles
  const unsigned max_norm = pack_tiles(staged ? sc : gc, frag, info, g, C, cdim, cstride, NT, KS, 0, NT);
  // The group's max in the first block slot, zero in the others (group_max_norm takes their max).
  if (threadIdx.x < NT / kFinalizeTiles) info[static_cast<int64_t>(g) * info_stride(NT) + NT * 8 + threadIdx.x] = threadIdx.x == 0 ? __uint_as_float(max_norm) : 0.0f;
}

}  // namespace

#define PQ_BUILD_INIT(T, NAME)                                                                                        \
  extern "C" __global__ void __launch_bounds__(256) NAME(                                                             \
      const T* keys, const float* norms, const float* phi, uint32_t seed, float* centroids, uint4* frag, float* info, \
      unsigned long long* first_bad, int n, int M, int64_t head_stride, int row_stride, int D, int O, int C,          \
      int cdim, int cstride, int NT, int KS, int staged) {                                                            \
    build_init(keys, norms, phi, seed, centroids, frag, info, first_bad, n, M, head_stride, row_stride, D, O, C, cdim, \
               cstride, NT, KS, staged);                                                                              \
  }
PQ_BUILD_INIT(float, pq_build_init)
PQ_BUILD_INIT(__nv_bfloat16, pq_build_init_bf16)
PQ_BUILD_INIT(__half, pq_build_init_f16)

namespace {

// A warp's 16-point tile, streamed: lane 4q + t holds columns 16ks + 4t .. 16ks + 4t + 3 of tile rows
// q and q + 8 for one k-step at a time (KStep<T>: 16 bytes of fp32 or 8 of bf16). The mma's A fragment gives lane t the columns 2t, 2t+1,
// 2t+8, 2t+9 of a k-step; any order of a k-step's columns gives the same products when the A and B
// fragments share it, so the rounds use 4t .. 4t+3 (pack_tiles packs the centroids so): one 16-byte
// load per row and k-step, straight from the keys, with no staging in shared memory (a staged tile
// cost ~150 instructions of cp.async addressing and its waits, ncu session 13).
// Rows past n repeat row n - 1 (loaded, never counted). Only the last k-step can reach past dsub
// (cdim > 16(KS - 1), so dsub >= 16(KS - 1)): its lanes past dsub load nothing (`last_in`) and hold
// zeros.
template <typename T>
struct TileRows {
  const typename KStep<T>::type* row[2];  // this lane's first four columns of rows q and q + 8
};

template <typename T>
__device__ __forceinline__ TileRows<T> tile_rows(const T* group_keys, int row_stride, int pbase, int n) {
  const int lane = threadIdx.x & 31;
  TileRows<T> r;
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    const int p = min(pbase + (lane >> 2) + 8 * rs, n - 1);
    r.row[rs] = reinterpret_cast<const typename KStep<T>::type*>(group_keys + static_cast<int64_t>(p) * row_stride) + (lane & 3);
  }
  return r;
}

__device__ __forceinline__ void load_four(const float4* a, float4& x) {
  asm volatile("ld.global.nc.v4.f32 {%0,%1,%2,%3}, [%4];\n" : "=f"(x.x), "=f"(x.y), "=f"(x.z), "=f"(x.w) : "l"(a));
}
__device__ __forceinline__ void load_four(const uint2* a, uint2& x) {
  asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];\n" : "=r"(x.x), "=r"(x.y) : "l"(a));
}

// K-step ks of the lane's two rows. Volatile, like mma_bf16: the loads stay one k-step ahead of the
// mma instructions instead of all being hoisted to the tile's start, where the whole tile (32
// registers) sat beside the accumulators (the seed kernel's spills at four blocks per SM: 48 -> 32
// bytes; the seed build 3.52 -> 3.45 ms, session 23).
template <int KS, typename T>
__device__ __forceinline__ void load_kstep(const TileRows<T>& r, int ks, bool last_in, typename KStep<T>::type (&x)[2]) {
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    if (ks + 1 < KS || last_in) {
      load_four(r.row[rs] + 4 * ks, x[rs]);
    } else {
      zero_four(x[rs]);
    }
  }
}

// Asks L2 for the rows of warp tile `tile` (their 128-byte lines, a line per lane and step), so that
// its loads one tile later find them there. A per-lane prefetch: the bulk prefetch takes one address
// per warp (a prefetch per row cost a loop of 16 uniform rounds; one over the tile's whole span,
// other sub-spaces' columns included, read 1.6x the bytes from DRAM: ncu, session 22).
// Only the general kernels (C > 64) still prefetch: since the tile is streamed a k-step ahead, the
// one-chunk seed kernel is faster without it (3.47 -> 3.41 ms; 2 or 3 tiles ahead: 4.33, 4.91 ms;
// session 24). The general kernels were not measured without it.
template <typename T>
__device__ __forceinline__ void prefetch_tile_l2(const T* group_keys, int row_stride, int dsub, int tile, int n) {
  constexpr int kLine = 128 / sizeof(T);  // elements a 128-byte line
  const int lane = threadIdx.x & 31;
  const int lines = (dsub + kLine - 1) / kLine;  // per row (rows line-aligned when the strides and dsub are multiples of kLine)
  for (int i = lane; i < kWarpPoints * lines; i += 32) {
    const int row = i / lines;
    const int p = tile * kWarpPoints + row;
    if (p < n) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(group_keys + static_cast<int64_t>(p) * row_stride + kLine * (i - row * lines)));
  }
}

// Scores x.c - |c|^2/2 of a warp's 16 points (tile rows `r`) with the 64 centroids of n-tiles
// nt0 .. nt0+7, the tile streamed a k-step at a time (load_kstep). Each k-step is split into its
// bf16 hi and lo A fragments just before its mma instructions; bf16 keys are their own hi fragment
// with lo = 0 (no split, and two mma a k-step and n-tile instead of three), except in the last
// k-step, which may hold the fp32 ip coordinate and goes as fp32. The ip coordinate (column dsub, in
// the last k-step as cdim = dsub + 1 > 16(KS - 1)) is the .x of the lane with 16(KS - 1) + 4t ==
// dsub (`ip_lane`). sq, when given: this lane's share of each row's |x|^2, ip coordinate included.
// NT is a multiple of 8 (the host pads it; padding centroids have zero fragments and |c|^2/2 = +inf,
// so they score -inf): a chunk is always whole, so no mma sits behind a guard (a guarded mma.sync
// costs a WARPSYNC and scheduling NOPs each, and the compiler cannot interleave them).
template <int KS, typename T>
__device__ __forceinline__ void chunk_scores(float (&acc)[8][4], const TileRows<T>& r, bool last_in, bool ip_lane,
                                             const float (&xaug)[2], const uint4* frag, const float* half_norm2, int nt0,
                                             int lane, float (*sq)[2]) {
  const uint4* chunk_frag = frag + nt0 * KS * 32 + lane;
  const float* chunk_h = half_norm2 + nt0 * 8 + 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  if (sq != nullptr) (*sq)[0] = (*sq)[1] = 0.0f;
  typename KStep<T>::type x[2];
  typename KStep<T>::type next[2];
  load_kstep<KS>(r, 0, last_in, x);
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    if (ks + 1 < KS) load_kstep<KS>(r, ks + 1, last_in, next);
    const bool exact_hi = std::is_same<T, __nv_bfloat16>::value && ks + 1 < KS;  // lo = 0 (constant once unrolled)
    uint32_t ah[4];
    uint32_t al[4];
#pragma unroll
    for (int rs = 0; rs < 2; ++rs) {
      float4 v = four_floats(x[rs]);
      if (ks + 1 == KS && ip_lane) v.x = xaug[rs];
      if (sq != nullptr) (*sq)[rs] = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, (*sq)[rs]))));
      if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        if (exact_hi) {
          ah[rs] = x[rs].x;  // key columns 4t, 4t+1 as the bf16 pair they are
          ah[2 + rs] = x[rs].y;
          continue;
        }
      }
      split_pair<__nv_bfloat16>(v.x, v.y, ah[rs], al[rs]);          // the A fragment's slots 2t, 2t+1 of row q + 8rs: key columns 4t, 4t+1
      split_pair<__nv_bfloat16>(v.z, v.w, ah[2 + rs], al[2 + rs]);  // slots 2t+8, 2t+9: key columns 4t+2, 4t+3
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint4 b = chunk_frag[(j * KS + ks) * 32];
      mma_bf16(acc[j], ah, b.x, b.y);
      mma_bf16(acc[j], ah, b.z, b.w);
      if (!exact_hi) mma_bf16(acc[j], al, b.x, b.y);
    }
    if (ks + 1 < KS) {
      x[0] = next[0];
      x[1] = next[1];
    }
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 h = *reinterpret_cast<const float2*>(chunk_h + j * 8);
    acc[j][0] -= h.x;
    acc[j][1] -= h.y;
    acc[j][2] -= h.x;
    acc[j][3] -= h.y;
  }
}

template <int KS, bool kOneChunk, typename T>
__device__ void build_round(const T* keys, const float* norms, const float* phi, const float* centroids,
                            const uint4* frag_g, const float* info_g, uint8_t* codes_tmp, double* sums,
                            unsigned* counts, unsigned* stats, int n, int M, int64_t head_stride, int row_stride, int D,
                            int O, int C, int cdim, int cstride, int NT, int mode) {
  extern __shared__ uint4 smem[];
  const int CP = NT * 8;
  uint4* frag = smem;
  float* info = reinterpret_cast<float*>(frag + NT * KS * 32);
  // One chunk (C <= 64): the fp32 centroids too, for the canonical re-scoring ([C, cstride], after info).
  float* cent_smem = info + ((CP + 1 + 3) / 4) * 4;
  const int g = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int dsub = D / M;
  // Warp tiles of the group: warp w of block x takes tiles 4x + w, 4x + w + 4P, … on its own (no
  // block barrier in the loop: a warp re-scoring a near tie holds up no other).
  constexpr int kWarps = kRoundThreads / 32;
  const int tiles = (n + kWarpPoints - 1) / kWarpPoints;
  const int first_tile = blockIdx.x * kWarps + warp;
  const int tile_step = gridDim.x * kWarps;
  const T* group_keys = group_points(keys, g, M, head_stride, row_stride, O, dsub);
  double* group_sums = sums + static_cast<int64_t>(g) * C * cdim;
  unsigned* group_counts = counts + g * C;
  uint8_t* group_codes = codes_tmp + static_cast<int64_t>(g) * n;
  {
    const uint4* src = frag_g + static_cast<int64_t>(g) * NT * KS * 32;
    for (int e = threadIdx.x; e < NT * KS * 32; e += kRoundThreads) frag[e] = src[e];
    // info in shared memory: |c|^2/2 of the CP centroid slots, then the group's max |c|.
    const float* isrc = info_g + static_cast<int64_t>(g) * info_stride(NT);
    for (int e = threadIdx.x; e < CP; e += kRoundThreads) info[e] = isrc[e];
    if (threadIdx.x == 0) info[CP] = group_max_norm(isrc, NT);
    if (kOneChunk) {
      const float4* csrc = reinterpret_cast<const float4*>(centroids + static_cast<int64_t>(g) * C * cstride);
      for (int e = threadIdx.x; e < C * cstride / 4; e += kRoundThreads) reinterpret_cast<float4*>(cent_smem)[e] = csrc[e];
    }
  }
  const int t = lane & 3;
  const bool last_in = 16 * (KS - 1) + 4 * t < dsub;
  const bool ip_lane = cdim > dsub && 16 * (KS - 1) + 4 * t == dsub;
  if (!kOneChunk && first_tile < tiles) prefetch_tile_l2(group_keys, row_stride, dsub, first_tile, n);
  __syncthreads();  // centroid fragments, info (and the one-chunk centroids), once
  __shared__ uint16_t rescore_lists[kRoundThreads / 32][kRescoreList];
  const GroupView<T> view{info[CP], kOneChunk ? cent_smem : centroids + static_cast<int64_t>(g) * C * cstride, group_keys, norms,
                          rescore_lists[warp], cdim > dsub ? phi[g] : 0.0f, g, n, C, cdim, cstride, dsub, row_stride, NT};
  unsigned flagged_total = 0;
  unsigned changed_total = 0;

  auto score_tile = [&](int tile) {
    const int pbase = tile * kWarpPoints;
    int old[2];
    load_old_codes(mode, group_codes, pbase, n, old);
    int code[2] = {-1, -1};
    bool valid[2] = {false, false};
    float xaug[2] = {0.0f, 0.0f};
    // Scores of chunk nt0, the tile streamed from the keys for it (chunk_scores): a tile held across
    // the chunk loop (or from one tile to the next) kept 32 more registers live beside the
    // accumulators, and the kernel spilled at four blocks per SM. Later chunks (passes B and C
    // re-score them when C >= 128) hit L1 or L2.
    flagged_total += nearest_rows<kOneChunk>(view, pbase, code, valid, xaug, [&](float (&acc)[8][4], int nt0, float (*sq)[2]) {
      chunk_scores<KS>(acc, tile_rows(group_keys, row_stride, pbase, n), last_in, ip_lane, xaug, frag, info, nt0, lane, sq);
    });
    commit_codes<KS>(mode, code, old, valid, xaug, group_codes, pbase, group_keys, row_stride, group_sums, group_counts, cdim,
                     dsub, changed_total);
  };
  for (int tile = first_tile; tile < tiles; tile += tile_step) {
    if (!kOneChunk && tile + tile_step < tiles) prefetch_tile_l2(group_keys, row_stride, dsub, tile + tile_step, n);  // streams in meanwhile
    score_tile(tile);
  }
  if (lane == 0 && stats != nullptr) {
    if (flagged_total != 0u) atomicAdd(stats, flagged_total);
    if (changed_total != 0u) atomicAdd(stats + 1, changed_total);
  }
}

}  // namespace

// pq_build_round_kN: any C, register-limited to 2 blocks (8 warps) per SM. pq_build_round_kN_c1_bB:
// C <= 64 (one chunk of centroids), B blocks per SM (2, and 3 or 4 for KS <= 4: at most 168 or 128
// registers). Each also as NAME_bf16, reading bf16 keys.
#define PQ_BUILD_ROUND_T(KS, ONE_CHUNK, MIN_BLOCKS, T, NAME)                                                        \
  extern "C" __global__ void __launch_bounds__(kRoundThreads, MIN_BLOCKS) NAME(                                      \
      const T* keys, const float* norms, const float* phi, const float* centroids, const uint4* frag,              \
      const float* info, uint8_t* codes_tmp, double* sums, unsigned* counts, unsigned* stats, int n, int M,        \
      int64_t head_stride, int row_stride, int D, int O, int C, int cdim, int cstride, int NT, int mode) {         \
    build_round<KS, ONE_CHUNK>(keys, norms, phi, centroids, frag, info, codes_tmp, sums, counts, stats, n, M,      \
                               head_stride, row_stride, D, O, C, cdim, cstride, NT, mode);                         \
  }
#define PQ_BUILD_ROUND(KS, ONE_CHUNK, MIN_BLOCKS, NAME)           \
  PQ_BUILD_ROUND_T(KS, ONE_CHUNK, MIN_BLOCKS, float, NAME)        \
  PQ_BUILD_ROUND_T(KS, ONE_CHUNK, MIN_BLOCKS, __nv_bfloat16, NAME##_bf16)
#define PQ_BUILD_ROUND_KS(KS)                                  \
  PQ_BUILD_ROUND(KS, false, 2, pq_build_round_k##KS)          \
  PQ_BUILD_ROUND(KS, true, 2, pq_build_round_k##KS##_c1_b2)
#define PQ_BUILD_ROUND_KS_B34(KS)                              \
  PQ_BUILD_ROUND(KS, true, 3, pq_build_round_k##KS##_c1_b3)   \
  PQ_BUILD_ROUND(KS, true, 4, pq_build_round_k##KS##_c1_b4)
PQ_BUILD_ROUND_KS(1)
PQ_BUILD_ROUND_KS(2)
PQ_BUILD_ROUND_KS(3)
PQ_BUILD_ROUND_KS(4)
PQ_BUILD_ROUND_KS(5)
PQ_BUILD_ROUND_KS(6)
PQ_BUILD_ROUND_KS(7)
PQ_BUILD_ROUND_KS(8)
PQ_BUILD_ROUND_KS(9)
PQ_BUILD_ROUND_KS_B34(1)
PQ_BUILD_ROUND_KS_B34(2)
PQ_BUILD_ROUND_KS_B34(3)
PQ_BUILD_ROUND_KS_B34(4)

// Round 0's cluster sums and counts, from the codes round 0 wrote. In round 0 every point joins a
// cluster, and adding each coordinate with a float64 atomic from the round kernel (131 M on the seed
// config) bound that round at ~2x a later one (ncu: it did not get faster with 30% fewer
// instructions). Here block x of group g takes points [x*kSumChunk, …) in code order (a counting
// sort in shared memory), so a thread adds its four coordinates over each run of same-code points
// in registers and writes one atomic per coordinate and run (a slice's runs are ~100 points long
// on the seed config), for one more read of the keys. That read is also the NaN/Inf check of every
// clustered key (see flush).
// Launch: grid (ceil(n / chunk), G), block kSumThreads, chunk <= kSumChunk points a block (the host's
// choice); sums and counts zeroed before.
constexpr int kSumThreads = 256;
constexpr int kSumChunk = 8192;  // <= 65536 (uint16 order)
#ifndef PQ_SUM_BATCH_BF16
#define PQ_SUM_BATCH_BF16 8
#endif
// Points a thread loads before adding any.
template <typename T>
struct SumBatch {
  static constexpr int value = std::is_same<T, __nv_bfloat16>::value ? PQ_SUM_BATCH_BF16 : 8;
};

namespace {

// The lowest flat index of a non-finite value among the four columns at `keys` of the chunk's
// points order[0 .. count-1] (point i's first column has flat index chunk_flat + i*D); ~0 if none.
template <typename T>
__device__ unsigned long long lowest_nonfinite(const T* keys, int row_stride, const uint16_t* order, int count,
                                                            int64_t chunk_flat, int D) {
  using Quad = typename KStep<T>::type;
  unsigned long long bad = ULLONG_MAX;
  for (int k = 0; k < count; ++k) {
    const int i = order[k];
    const Quad v = *reinterpret_cast<const Quad*>(keys + static_cast<int64_t>(i) * row_stride);
    if (any_nonfinite(v)) bad = min(bad, static_cast<unsigned long long>(chunk_flat + static_cast<int64_t>(i) * D + first_nonfinite_column(four_floats(v))));
  }
  return bad;
}

template <typename T>
__device__ void build_first_sums(const T* keys, const float* norms, const float* phi, const uint8_t* codes_tmp, double* sums,
                                 unsigned* counts, unsigned long long* first_bad, int n, int M, int64_t head_stride,
                                 int row_stride, int D, int O, int C, int cdim, int chunk) {
  constexpr int kSumBatch = SumBatch<T>::value;
  __shared__ uint8_t code_of[kSumChunk];
  __shared__ uint16_t order[kSumChunk];  // chunk points by code
  __shared__ int bin_next[256];
  __shared__ int scan_scratch[kSumThreads / 32];
  const int g = blockIdx.y;
  const int p0 = blockIdx.x * chunk;
  const int len = min(chunk, n - p0);
  const int dsub = D / M;
  bin_next[threadIdx.x] = 0;  // kSumThreads == 256 bins
  __syncthreads();
  const uint8_t* chunk_codes = codes_tmp + static_cast<int64_t>(g) * n + p0;
  for (int i = threadIdx.x; i < len; i += kSumThreads) {
    const int c = chunk_codes[i];
    code_of[i] = static_cast<uint8_t>(c);
    atomicAdd(&bin_next[c], 1);
  }
  __syncthreads();
  {
    const int c = threadIdx.x;
    const int in_bin = bin_next[c];
    int total;
    const int first = pq_block_exclusive_scan<kSumThreads>(in_bin, scan_scratch, &total);
    bin_next[c] = first;  // every thread read its bin before the scan's barriers
    if (in_bin != 0) atomicAdd(counts + g * C + c, static_cast<unsigned>(in_bin));  // codes < C
  }
  __syncthreads();
  for (int i = threadIdx.x; i < len; i += kSumThreads) order[atomicAdd(&bin_next[code_of[i]], 1)] = static_cast<uint16_t>(i);
  __syncthreads();

  // Thread (slice, v) sums coordinates 4v .. 4v+3 (one 16-byte load a point; dsub is a multiple of
  // 4, so the ip coordinate dsub is the .x of the thread with 4v == dsub). A thread per coordinate
  // spent ~38 warp instructions a point and coordinate block of 32 on the order, code and address
  // (156 M for the seed config, ncu): four coordinates a thread share them.
  const int lanes = (cdim + 3) / 4;
  const int slices = kSumThreads / lanes;
  const int slice = threadIdx.x / lanes;
  const int v = threadIdx.x - slice * lanes;
  if (slice >= slices) return;  // no barrier follows
  const int begin = len * slice / slices;
  const int end = len * (slice + 1) / slices;
  // The chunk's coordinates from hoisted bases (point_coord per load recomputes the 64-bit address:
  // 4.63-4.65 against 4.44-4.49 ms for the seed build in a same-run A/B, session 14).
  const T* chunk_keys = group_points(keys, g, M, head_stride, row_stride, O, dsub) + static_cast<int64_t>(p0) * row_stride + 4 * v;
  const bool in_keys = 4 * v < dsub;
  const float phi_g = cdim > dsub ? phi[g] : 0.0f;
  const float* chunk_norms = norms + static_cast<int64_t>(g) * n + p0;
  double* thread_sums = sums + static_cast<int64_t>(g) * C * cdim + 4 * v;
  const int width = min(4, cdim - 4 * v);  // coordinates of this thread below cdim (1 for the ip one)
  double run[4] = {0.0, 0.0, 0.0, 0.0};
  int run_code = -1;
  // A run of key values sums to a non-finite float64 only if one of them is NaN or Inf (|x| < 2^128,
  // fewer than 2^16 of them): only then are the thread's keys scanned again, for the lowest flat index.
  bool nonfinite = false;
  auto flush = [&]() {
    bool finite = true;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (e < width) {
        atomicAdd(thread_sums + run_code * cdim + e, run[e]);
        finite = finite && isfinite(run[e]);
      }
    }
    nonfinite = nonfinite || !finite;
  };
  // Every load of a batch is issued before any value is used: the loads return raw words, converted
  // by `value` in the adding loop. (Converting bf16 inside the load's branch waited on each load in
  // turn: 8 serial DRAM latencies a batch, 324 against 198 us for fp32, ncu.) The key lanes and the
  // ip lane run separate copies of the loop, so no branch inside it merges two loads' registers.
  auto sum_runs = [&](auto raw_type, auto load, auto value) {
    using Raw = decltype(raw_type);
    for (int k0 = begin; k0 < end; k0 += kSumBatch) {
      Raw raw[kSumBatch];
      int code[kSumBatch];
#pragma unroll
      for (int k = 0; k < kSumBatch; ++k) {
        code[k] = -1;
        if (k0 + k < end) {
          const int i = order[k0 + k];
          code[k] = code_of[i];
          raw[k] = load(i);
        }
      }
#pragma unroll
      for (int k = 0; k < kSumBatch; ++k) {
        if (code[k] < 0) break;
        if (code[k] != run_code) {
          if (run_code >= 0) flush();
          run_code = code[k];
          run[0] = run[1] = run[2] = run[3] = 0.0;
        }
        const float4 x = value(raw[k]);
        run[0] += static_cast<double>(x.x);
        run[1] += static_cast<double>(x.y);
        run[2] += static_cast<double>(x.z);
        run[3] += static_cast<double>(x.w);
      }
    }
  };
  using Four = typename KStep<T>::type;
  if (in_keys) {
    sum_runs(Four{}, [&](int i) { return *reinterpret_cast<const Four*>(chunk_keys + static_cast<int64_t>(i) * row_stride); },
             [](const Four& r) { return four_floats(r); });
  } else {
    sum_runs(0.0f, [&](int i) { return chunk_norms[i]; },
             [&](float norm) { return make_float4(pq_ip_augment(phi_g, norm), 0.f, 0.f, 0.f); });
  }
  if (run_code >= 0) flush();
  if (nonfinite && in_keys) {  // bad input only
    const int64_t chunk_flat = (static_cast<int64_t>(g / M) * (O + n) + O + p0) * D + (g % M) * dsub + 4 * v;
    atomicMin(first_bad, lowest_nonfinite(chunk_keys, row_stride, order + begin, end - begin, chunk_flat, D));
  }
}

}  // namespace

#define PQ_BUILD_FIRST_SUMS(T, NAME)                                                                                  \
  extern "C" __global__ void __launch_bounds__(kSumThreads) NAME(                                                     \
      const T* keys, const float* norms, const float* phi, const uint8_t* codes_tmp, double* sums, unsigned* counts,  \
      unsigned long long* first_bad, int n, int M, int64_t head_stride, int row_stride, int D, int O, int C,          \
      int cdim, int chunk) {                                                                                          \
    build_first_sums(keys, norms, phi, codes_tmp, sums, counts, first_bad, n, M, head_stride, row_stride, D, O, C,    \
                     cdim, chunk);                                                                                    \
  }
PQ_BUILD_FIRST_SUMS(float, pq_build_first_sums)
PQ_BUILD_FIRST_SUMS(__nv_bfloat16, pq_build_first_sums_bf16)
PQ_BUILD_FIRST_SUMS(__half, pq_build_first_sums_f16)

namespace {

template <typename T>
__device__ void build_finalize(const T* keys, const float* norms, const float* phi, const double* sums, const unsigned* counts,
                               float* centroids, uint4* frag, float* info, int n, int M, int64_t head_stride, int row_stride,
                               int D, int O, int C, int cdim, int cstride, int NT, int KS, unsigned seed, int round,
                               unsigned* progress) {
  // The block's new centroids, c_first .. c_first + kFinalizeCentroids - 1 ([kFinalizeCentroids,
  // cstride]), kept for pack_tiles so that it reads no global memory.
  extern __shared__ float4 finalize_rows[];
  float* rows = reinterpret_cast<float*>(finalize_rows);
  const int g = blockIdx.y;
  const int nt0 = blockIdx.x * kFinalizeTiles;
  const int c_first = nt0 * 8;
  const int elems = max(min(kFinalizeCentroids, C - c_first), 0) * cdim;  // none in a block of padding centroids
  const int dsub = D / M;
  const double* block_sums = sums + (static_cast<int64_t>(g) * C + c_first) * cdim;
  const unsigned* block_counts = counts + g * C + c_first;
  // Eight elements per thread per step, their sums and counts loaded before any is used (one at a
  // time, each step waited on its loads: ~16 round trips to L2 per block).
  constexpr int kBatch = 8;
  for (int e0 = threadIdx.x; e0 < elems; e0 += 256 * kBatch) {
    unsigned count[kBatch];
    double sum[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int e = e0 + 256 * k;
      count[k] = e < elems ? block_counts[e / cdim] : 1u;
      sum[k] = e < elems ? block_sums[e] : 0.0;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int e = e0 + 256 * k;
      if (e >= elems) break;
      const int i = e / cdim;  // the block's centroid i: c_first + i
      const int j = e - i * cdim;
      const int c = c_first + i;
      float v;
      if (count[k] == 0u) {
        const int s = static_cast<int>(pq_draw(seed, 2u * g + 1u, static_cast<unsigned>(round) * 256u + c) % static_cast<unsigned>(n));
        v = point_coord(keys, norms, phi, g, s, j, n, M, head_stride, row_stride, O, dsub);
      } else {
        v = __fdiv_rn(__double2float_rn(sum[k]), static_cast<float>(count[k]));
      }
      centroids[(static_cast<int64_t>(g) * C + c) * cstride + j] = v;
      rows[i * cstride + j] = v;
    }
  }
  __syncthreads();
  const unsigned block_max = pack_tiles(rows, frag, info, g, C, cdim, cstride, NT, KS, nt0, nt0 + kFinalizeTiles);
  if (threadIdx.x == 0) info[static_cast<int64_t>(g) * info_stride(NT) + NT * 8 + blockIdx.x] = __uint_as_float(block_max);
  // Rounds done, for a host that reports progress while the build's graph runs (mapped pinned
  // memory; null when nobody watches). Block 0's word: a progress report, not a completion signal.
  if (progress != nullptr && g == 0 && blockIdx.x == 0 && threadIdx.x == 0) *reinterpret_cast<volatile unsigned*>(progress) = round + 1u;
}

}  // namespace

#define PQ_BUILD_FINALIZE(T, NAME)                                                                                    \
  extern "C" __global__ void __launch_bounds__(256) NAME(const T* keys, const float* norms, const float* phi,          \
                                                         const double* sums, const unsigned* counts, float* centroids, \
                                                         uint4* frag, float* info, int n, int M, int64_t head_stride,  \
                                                         int row_stride, int D, int O, int C, int cdim, int cstride,   \
                                                         int NT, int KS, unsigned seed, int round,                     \
                                                         unsigned* progress) {                                         \
    build_finalize(keys, norms, phi, sums, counts, centroids, frag, info, n, M, head_stride, row_stride, D, O, C, cdim,  \
                   cstride, NT, KS, seed, round, progress);                                                            \
  }
PQ_BUILD_FINALIZE(float, pq_build_finalize)
PQ_BUILD_FINALIZE(__nv_bfloat16, pq_build_finalize_bf16)
PQ_BUILD_FINALIZE(__half, pq_build_finalize_f16)

// The built index into the caller's buffers (the index of src/pq/cuda-cache.ts), unless a key was NaN
// or Inf: *first_bad was then set (by pq_build_stage_keys, pq_build_check_keys, pq_build_init or
// pq_build_first_sums) and the caller's buffers keep the index they held. The k-means itself works
// on the workspace's centroids and phi, and the final assignment leaves its codes in codes_tmp
// ([G, n]); the index's codes are [B*Hkv, capacity, M], positions O .. O+n-1 written here.
// Launch: grid (ceil(n / 256), B*Hkv), block 256: thread p of head bkv writes position O + p's M codes;
// the grid's threads in order copy the centroids (float4: cstride is a multiple of 4) and phi.
extern "C" __global__ void __launch_bounds__(256) pq_build_publish(const unsigned long long* first_bad, const uint8_t* codes_tmp,
                                                                   uint8_t* codes, const float4* centroids_ws, float4* centroids,
                                                                   const float* phi_ws, float* phi, int n, int M, int O,
                                                                   int capacity, int centroid_quads, int G) {
  if (*first_bad != ULLONG_MAX) return;
  const int bkv = blockIdx.y;
  const int p = blockIdx.x * 256 + threadIdx.x;
  if (p < n) {
    for (int m = 0; m < M; ++m)
      codes[(static_cast<int64_t>(bkv) * capacity + O + p) * M + m] = codes_tmp[(static_cast<int64_t>(bkv) * M + m) * n + p];
  }
  const int64_t threads = static_cast<int64_t>(gridDim.x) * gridDim.y * 256;  // >= B*Hkv*256 >= G
  const int64_t first = (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * 256 + threadIdx.x;
  for (int64_t i = first; i < centroid_quads; i += threads) centroids[i] = centroids_ws[i];
  if (first < G) phi[first] = phi_ws[first];
}
