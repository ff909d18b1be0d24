// PQ build: batched k-means over every (b, kv-head, sub-space) group at once (SPEC §2 build), with
// the codes and centroids of the CPU oracle (src/pq/kmeans.ts): from the same initial draw both give
// identical codes and centroids on integer-valued data.
//
// Groups g = (b*Hkv + kvh)*M + m; the n = sk - O points of group g are the sub-vectors
// keys[b, kvh, O + p, m*dsub : (m+1)*dsub] (fp32), augmented for ip with
// sqrt(max(phi_g - |x|^2, 0)) where phi_g = max |x|^2 over the group. Centroids are [G, C, cstride].
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
// Sums without re-reading the keys. Cluster sums (float64, rounded once to fp32 at the mean as the
// oracle) and counts persist across rounds: a round after the first adds a point to its new cluster
// and takes it out of its old one only when its code changed (float64 atomics), from the tile it just
// scored. Round 0, where every point joins a cluster, forms them in pq_build_first_sums instead.
//
// One round = pq_build_round (codes, sums) -> pq_build_finalize (means; an empty cluster takes the
// point drawn by pq_draw(seed, 2g+1, round*256 + c); then the packed operands of the next round);
// round 0 = pq_build_round (codes only) -> pq_build_first_sums -> pq_build_finalize.
//
// Launch shapes:
//   pq_build_norms     grid (ceil(n/256), G), block 256: |x|^2 per point, phi_g by atomicMax.
//   pq_build_init      grid (G), block 256, dynamic smem C*cstride*4 bytes when `staged` (else 0):
//                      centroid c of g = point init_index[g, c]; packs.
//   pq_build_round_kN  grid (P, G), block 128, dynamic smem NT*KS*512 + ceil((NT*8 + 1)/4)*16 +
//                      4*stages*16*RS*4 bytes: warp w of block x of group g scores the 16-point
//                      tiles (one m16 MMA tile each) 4x + w, 4x + w + 4P, ... on its own, staged by
//                      cp.async into its own ring, `stages - 1` tiles ahead; no block barrier after
//                      the prologue. KS = ceil(cdim/16) (template N), RS = tile_stride(KS).
//   pq_build_first_sums grid (ceil(n/4096), G), block 256: round 0's sums and counts (see there).
//   pq_build_finalize  grid (G), block 256, dynamic smem as init: means (fp32 division) or the
//                      re-seed; packs.
// Packed operands of group g (written by init/finalize, read by the round):
//   frag[g][nt][ks][lane] (uint4): the mma B fragments of centroids 8nt..8nt+7, coordinates
//     16ks..16ks+15 (zero past C and cdim): {b0 hi, b1 hi, b0 lo, b1 lo} as bf16 pairs;
//   info[g]: |c|^2/2 for c < NT*8 (+inf past C), then max |c|.
// Invariants: cdim = dsub + ip <= 129; dsub <= 128 and a multiple of 4 (16-byte rows);
// C <= 256; NT = ceil(C/8) rounded up to a multiple of 8 (whole chunks of 64 centroids; padding
// centroids have zero fragments and |c|^2/2 = +inf); cstride >= cdim; n >= 1.
#include <climits>

#include "common.cuh"

namespace {

constexpr int kRoundThreads = 128;
constexpr int kWarpPoints = 16;  // one m16 MMA tile: the points a warp scores at once

__device__ __forceinline__ const float* point_row(const float* keys, int g, int p, int M, int sk, int D, int O) {
  const int bkv = g / M;
  const int m = g - bkv * M;
  return keys + (static_cast<int64_t>(bkv) * sk + O + p) * D + m * (D / M);
}

// Coordinate j of point p of group g (j == dsub: the ip augmentation).
__device__ __forceinline__ float point_coord(const float* keys, const float* norms, const float* phi, int g, int p, int j,
                                             int n, int M, int sk, int D, int O, int dsub) {
  if (j < dsub) return point_row(keys, g, p, M, sk, D, O)[j];
  return pq_ip_augment(phi[g], norms[static_cast<int64_t>(g) * n + p]);
}

// The oracle's distanceF32 over cdim coordinates, by one thread (x[dsub] is `xaug` for ip).
__device__ float canonical_distance(const float* x, float xaug, const float* c, int dsub, int cdim) {
  float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int j0 = 0; j0 < dsub; j0 += 8) {
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      if (j0 + r < dsub) {
        const float t = __fsub_rn(x[j0 + r], c[j0 + r]);
        part[r] = __fadd_rn(part[r], __fmul_rn(t, t));
      }
    }
  }
  if (cdim > dsub) {
    const float t = __fsub_rn(xaug, c[dsub]);
#pragma unroll
    for (int r = 0; r < 8; ++r)
      if (r == (dsub & 7)) part[r] = __fadd_rn(part[r], __fmul_rn(t, t));
  }
  return pq_tree8_sum(part);
}

// bf16 hi + lo of two fp32 values, as the packed pairs an mma fragment register holds
// (first value in the low half). x - hi is exact in fp32.
__device__ __forceinline__ void split_pair(float v0, float v1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(__fsub_rn(v0, hf.x), __fsub_rn(v1, hf.y));
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Packs group g's centroids into its mma fragments and info. `gc` holds them ([C, cstride]): the
// block's shared copy, or global memory (written by this block before a barrier). All threads of
// the 256-thread block call it.
__device__ void pack_group(const float* gc, uint4* frag, float* info, int g, int C, int cdim, int cstride, int NT,
                           int KS) {
  uint4* gf = frag + static_cast<int64_t>(g) * NT * KS * 32;
  const int CP = NT * 8;
  float* gi = info + static_cast<int64_t>(g) * (CP + 1);
  __shared__ unsigned max_norm_bits;
  if (threadIdx.x == 0) max_norm_bits = 0u;
  __syncthreads();
  for (int e = threadIdx.x; e < NT * KS * 32; e += blockDim.x) {
    const int lane = e & 31;
    const int ks = (e >> 5) % KS;
    const int nt = (e >> 5) / KS;
    const int c = nt * 8 + (lane >> 2);
    const int k = ks * 16 + 2 * (lane & 3);
    auto v = [&](int j) { return (c < C && j < cdim) ? gc[c * cstride + j] : 0.0f; };
    uint4 f;
    split_pair(v(k), v(k + 1), f.x, f.z);
    split_pair(v(k + 8), v(k + 9), f.y, f.w);
    gf[e] = f;
  }
  // |c|^2 in float64, four threads per centroid (CP is a multiple of 64 = 256 / 4, so every thread
  // takes part in each step's shuffles). A serial loop per centroid waited on each coordinate's load
  // in turn: ~20 us of the finalize's 21 (ncu).
  for (int c0 = 0; c0 < CP; c0 += 64) {
    const int c = c0 + (threadIdx.x >> 2);
    double s = 0.0;
    if (c < C) {
      for (int j = threadIdx.x & 3; j < cdim; j += 4) s += static_cast<double>(gc[c * cstride + j]) * gc[c * cstride + j];
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
  __syncthreads();
  if (threadIdx.x == 0) gi[CP] = __uint_as_float(max_norm_bits);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) pq_build_norms(const float* keys, float* norms, float* phi, int n, int M,
                                                                 int sk, int D, int O) {
  const int g = blockIdx.y;
  const int p = blockIdx.x * 256 + threadIdx.x;
  if (p >= n) return;
  const int dsub = D / M;
  const float* x = point_row(keys, g, p, M, sk, D, O);
  float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int j0 = 0; j0 < dsub; j0 += 8) {
#pragma unroll
    for (int r = 0; r < 8; ++r)
      if (j0 + r < dsub) part[r] = __fadd_rn(part[r], __fmul_rn(x[j0 + r], x[j0 + r]));
  }
  const float s = pq_tree8_sum(part);
  norms[static_cast<int64_t>(g) * n + p] = s;
  atomicMax(reinterpret_cast<int*>(phi) + g, __float_as_int(s));  // s >= 0: int order = float order
}

extern "C" __global__ void __launch_bounds__(256) pq_build_init(const float* keys, const float* norms, const float* phi,
                                                                const int* init_index, float* centroids, uint4* frag,
                                                                float* info, int n, int M, int sk, int D, int O, int C,
                                                                int cdim, int cstride, int NT, int KS, int staged) {
  extern __shared__ float4 staged_centroids[];  // [C, cstride] when staged (see pq_build_finalize)
  float* sc = reinterpret_cast<float*>(staged_centroids);
  const int g = blockIdx.x;
  const int dsub = D / M;
  float* gc = centroids + static_cast<int64_t>(g) * C * cstride;
  for (int e = threadIdx.x; e < C * cdim; e += 256) {
    const int c = e / cdim;
    const int j = e - c * cdim;
    const int p = init_index[g * C + c];
    const float v = point_coord(keys, norms, phi, g, p, j, n, M, sk, D, O, dsub);
    gc[c * cstride + j] = v;
    if (staged) sc[c * cstride + j] = v;
  }
  __syncthreads();  // the centroids written above are read back by pack_group
  pack_group(staged ? sc : gc, frag, info, g, C, cdim, cstride, NT, KS);
}

// Modes of a round: the first round has no previous codes; the final assignment writes the index.
enum BuildRoundMode : int { ROUND_FIRST = 0, ROUND_NEXT = 1, ROUND_FINAL = 2 };

// Half the bound on the distance of the tensor-core estimate from the canonical order, in score
// units (score = x.c - |c|^2/2 = (|x|^2 - D)/2; see the header): split and accumulation error of
// x.c <= ~2^-13.3 |x||c| (taken twice in the comparison), the canonical order's own error
// <= 2^-18 (|x| + |c|)^2, an absolute floor for flushed subnormal products; every term with a
// margin >= 2x. The canonical bound holds only while no distance can overflow: (|x| + |c|)^2
// must stay below 2^126, else the band is infinite (every centroid re-scored).
__device__ __forceinline__ float score_band(float xnorm, float cmax) {
  const float s = xnorm + cmax;
  if (!(s < 0x1p63f)) return INFINITY;
  return 0x1p-11f * xnorm * cmax + 0x1p-17f * s * s + 0x1p-101f;
}

// Scores x.c - |c|^2/2 of a warp's 16 points with the 64 centroids of n-tiles nt0 .. nt0+7.
// NT is a multiple of 8 (the host pads it; padding centroids have zero fragments and |c|^2/2 = +inf,
// so they score -inf): a chunk is always whole, so no mma sits behind a guard (a guarded mma.sync
// costs a WARPSYNC and scheduling NOPs each, and the compiler cannot interleave them).
template <int KS>
__device__ __forceinline__ void chunk_scores(float (&acc)[8][4], const uint32_t (&ah)[KS][4], const uint32_t (&al)[KS][4],
                                             const uint4* frag, const float* half_norm2, int nt0, int lane) {
  const uint4* chunk_frag = frag + nt0 * KS * 32 + lane;
  const float* chunk_h = half_norm2 + nt0 * 8 + 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint4 b = chunk_frag[(j * KS + ks) * 32];
      mma_bf16(acc[j], ah[ks], b.x, b.y);
      mma_bf16(acc[j], ah[ks], b.z, b.w);
      mma_bf16(acc[j], al[ks], b.x, b.y);
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

// What one round's assignment needs of group g.
struct GroupView {
  const uint4* frag;        // smem: packed centroid fragments
  const float* half_norm2;  // smem: |c|^2 / 2
  float cmax;               // max |c|
  const float* cent;        // global: the group's fp32 centroids (canonical re-scoring)
  const float* norms;
  float phi;
  int g, n, C, cdim, cstride, dsub, NT;
};

// Row stride (floats) of a staged tile: >= KS*16 and = 8 (mod 32), so that the A-fragment loads
// (8-byte, rows q and q + 8) hit 16 distinct 8-byte bank pairs per half-warp.
__host__ __device__ constexpr int tile_stride(int KS) { return ((KS * 16 - 8 + 31) / 32) * 32 + 8; }

// The mma A fragments (bf16 hi and lo) of the warp's 16 staged rows (rows q and q + 8 of the lane),
// with the ip coordinate at column ip_col (< 0: none), and this lane's share of each row's |x|^2.
template <int KS>
__device__ __forceinline__ void split_rows(const float* rows, int q, int t, int ip_col, const float (&xaug)[2],
                                           uint32_t (&ah)[KS][4], uint32_t (&al)[KS][4], float (&sq)[2]) {
  constexpr int RS = tile_stride(KS);
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    const float* x = rows + (q + 8 * rs) * RS;
    sq[rs] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int col = ks * 16 + half * 8 + 2 * t;
        float2 p = *reinterpret_cast<const float2*>(x + col);  // zero past dsub
        if (col == ip_col) p.x = xaug[rs];                     // dsub is even: the ip slot is a .x
        split_pair(p.x, p.y, ah[ks][half * 2 + rs], al[ks][half * 2 + rs]);
        sq[rs] = fmaf(p.x, p.x, fmaf(p.y, p.y, sq[rs]));
      }
    }
  }
}

// Nearest centroid of the warp's 16 staged points (tile rows q and q + 8 of the lane; point index
// pbase + row). Returns the number of rows flagged for canonical re-scoring.
template <int KS>
__device__ __forceinline__ unsigned nearest_rows(const GroupView& v, const float* rows, int pbase, int (&code)[2],
                                                 bool (&valid)[2], float (&xaug)[2]) {
  constexpr int RS = tile_stride(KS);
  const int lane = threadIdx.x & 31;
  const int q = lane >> 2;  // mma row group: rows q and q + 8
  const int t = lane & 3;   // mma column pair
  const bool ip = v.cdim > v.dsub;
  const int ip_col = ip ? v.dsub : -1;
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    valid[rs] = pbase + q + 8 * rs < v.n;
    xaug[rs] = (ip && valid[rs]) ? pq_ip_augment(v.phi, v.norms[static_cast<int64_t>(v.g) * v.n + pbase + q + 8 * rs]) : 0.0f;
  }
  // The fragments live through pass A only: with more than one chunk of centroids, passes B and C
  // split the rows again (C >= 128 only), so the common case holds 32 fewer registers after pass A.
  uint32_t ah[KS][4];
  uint32_t al[KS][4];
  float sq[2];
  split_rows<KS>(rows, q, t, ip_col, xaug, ah, al, sq);
  float half_band[2];
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    sq[rs] += __shfl_xor_sync(0xffffffffu, sq[rs], 1);
    sq[rs] += __shfl_xor_sync(0xffffffffu, sq[rs], 2);
    half_band[rs] = score_band(__fsqrt_ru(sq[rs]), v.cmax);
  }
  // Scores of chunk nt0 (passes B and C, more than one chunk): the fragments split again.
  auto rescore_chunk = [&](float (&acc)[8][4], int nt0) {
    uint32_t bh[KS][4];
    uint32_t bl[KS][4];
    float unused[2];
    split_rows<KS>(rows, q, t, ip_col, xaug, bh, bl, unused);
    chunk_scores<KS>(acc, bh, bl, v.frag, v.half_norm2, nt0, lane);
  };

  // Pass A: the best score per row.
  float acc[8][4];
  float best[2] = {-INFINITY, -INFINITY};
  for (int nt0 = 0; nt0 < v.NT; nt0 += 8) {
    chunk_scores<KS>(acc, ah, al, v.frag, v.half_norm2, nt0, lane);
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) best[i >> 1] = fmaxf(best[i >> 1], acc[j][i]);
  }
  float threshold[2];
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    best[rs] = fmaxf(best[rs], __shfl_xor_sync(0xffffffffu, best[rs], 1));
    best[rs] = fmaxf(best[rs], __shfl_xor_sync(0xffffffffu, best[rs], 2));
    threshold[rs] = best[rs] - half_band[rs];  // NaN / -inf when the band is infinite: every centroid
  }
  // Pass B: how many centroids score within the band of the best (one, unless a near tie), and which.
  // Packed per row as count << 16 | the sum of their indices less 2t (the index itself when there is
  // one): one compare and one add per score (a count and a running minimum took 6; ncu). Padding
  // centroids score -inf, so they count only when the band is infinite, which flags the row anyway.
  // The low half holds at most 2*NT indices below NT*8 <= 256 per lane: < 2^16.
  int packed[2] = {0, 0};
  for (int nt0 = 0; nt0 < v.NT; nt0 += 8) {
    if (v.NT > 8) rescore_chunk(acc, nt0);  // one chunk: acc holds it
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (!(acc[j][i] < threshold[i >> 1])) packed[i >> 1] += 0x10000 + (nt0 + j) * 8 + (i & 1);
    }
  }
  bool flagged[2];
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    int within = packed[rs] >> 16;
    int index_sum = (packed[rs] & 0xffff) + 2 * t * within;
    within += __shfl_xor_sync(0xffffffffu, within, 1);
    within += __shfl_xor_sync(0xffffffffu, within, 2);
    index_sum += __shfl_xor_sync(0xffffffffu, index_sum, 1);
    index_sum += __shfl_xor_sync(0xffffffffu, index_sum, 2);
    flagged[rs] = valid[rs] && (within != 1 || !(half_band[rs] < INFINITY));
    code[rs] = index_sum;  // the nearest centroid unless flagged (re-scored below)
  }
  const unsigned flagged_rows = __ballot_sync(0xffffffffu, t == 0 && flagged[0]) | (__ballot_sync(0xffffffffu, t == 0 && flagged[1]) << 1);
  if (flagged_rows == 0u) return 0u;

  // Pass C (flagged rows): canonical distances of the centroids within the band; the lowest index
  // among the minimal ones, as the oracle.
  // The candidates of a chunk go into a bit mask (bit 4j + i: accumulator acc[j][i]) walked by one
  // rolled loop, so the kernel holds a single copy of the canonical distance: unrolled over the 32
  // accumulators it was 8,000 of the kernel's 11,600 instructions, and a flagged tile evicted the
  // hot loop from the instruction cache (ncu: stall_no_instruction 30-40% of the samples).
  float cd[2] = {INFINITY, INFINITY};
  int cc[2] = {INT_MAX, INT_MAX};
  for (int nt0 = 0; nt0 < v.NT; nt0 += 8) {
    if (v.NT > 8) rescore_chunk(acc, nt0);
    uint32_t candidates = 0u;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int rs = i >> 1;
        const int c = (nt0 + j) * 8 + 2 * t + (i & 1);
        if (flagged[rs] && c < v.C && !(acc[j][i] < threshold[rs])) candidates |= 1u << (4 * j + i);
      }
    }
    while (candidates != 0u) {  // ascending bits: for each row, c ascends, so ties keep the lower index
      const int bit = __ffs(candidates) - 1;
      candidates &= candidates - 1u;
      const bool second = (bit & 2) != 0;  // row q + 8 (accumulators 2, 3) or row q (0, 1)
      const int c = (nt0 + (bit >> 2)) * 8 + 2 * t + (bit & 1);
      const float d = canonical_distance(rows + (q + (second ? 8 : 0)) * RS, second ? xaug[1] : xaug[0],
                                         v.cent + c * v.cstride, v.dsub, v.cdim);
      if (!second && d < cd[0]) {
        cd[0] = d;
        cc[0] = c;
      }
      if (second && d < cd[1]) {
        cd[1] = d;
        cc[1] = c;
      }
    }
  }
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      const float od = __shfl_xor_sync(0xffffffffu, cd[rs], o);
      const int oc = __shfl_xor_sync(0xffffffffu, cc[rs], o);
      if (od < cd[rs] || (od == cd[rs] && oc < cc[rs])) {
        cd[rs] = od;
        cc[rs] = oc;
      }
    }
    if (flagged[rs]) code[rs] = cc[rs] == INT_MAX ? 0 : cc[rs];  // no finite distance: centroid 0
  }
  return static_cast<unsigned>(__popc(flagged_rows));
}

// What one lane copies of every staged tile: 16-byte chunk k of row r for r*chunks + k = lane + 32*i
// (chunks = dsub/4 per row), walked by fixed steps. The same for every tile, so made once; offsets
// are 32-bit from the tile's base (the 64-bit address math per copy was ~30 instructions a chunk).
struct StagePlan {
  int r0, k0, r_step, k_step, chunks;
};

__device__ __forceinline__ StagePlan make_stage_plan(int lane, int chunks) {
  StagePlan s;
  s.chunks = chunks;
  s.r0 = lane / chunks;
  s.k0 = lane - s.r0 * chunks;
  s.r_step = 32 / chunks;
  s.k_step = 32 - s.r_step * chunks;
  return s;
}

// One 16-byte cp.async into shared address `dst`; zeros instead of `src` when !fill.
__device__ __forceinline__ void cp_async16(unsigned dst, const float* src, bool fill) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(fill ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(unsigned dst, const float* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}

// Stages the dsub coordinates of the points of warp tile `tile` into rows of RS floats (zeros past
// n), as one cp.async group of the calling warp (empty when tile >= tiles). `group_keys` points at
// point 0 of the group.
template <int RS>
__device__ __forceinline__ void stage_tile(float* rows, const StagePlan& s, const float* group_keys, int D, int tile,
                                           int tiles, int n) {
  if (tile < tiles) {
    const int valid_rows = min(kWarpPoints, n - tile * kWarpPoints);
    const float* src = group_keys + static_cast<int64_t>(tile) * kWarpPoints * D;
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(rows));
    if (s.k_step == 0 && valid_rows == kWarpPoints) {
      // A whole tile and chunks dividing 32 (dsub 4, 8, … 128): the lane copies one column of rows
      // r0, r0 + r_step, … (r_step divides 16, or is 32 with dsub = 4), unguarded at fixed steps
      // (ncu: the guarded walk was ~125 instructions a tile, a tenth of a round).
      const int copies = s.chunks >= 2 ? s.chunks >> 1 : (s.r0 < kWarpPoints ? 1 : 0);
      const float* lane_src = src + s.r0 * D + 4 * s.k0;
      const unsigned lane_dst = dst + 4 * (s.r0 * RS + 4 * s.k0);
      const int src_step = s.r_step * D;
      const unsigned dst_step = 4 * RS * s.r_step;
#pragma unroll 4
      for (int i = 0; i < copies; ++i) cp_async16(lane_dst + i * dst_step, lane_src + i * src_step);
    } else if (s.k_step == 0) {
      const float* col_src = src + 4 * s.k0;
      const unsigned col_dst = dst + 16 * s.k0;
      for (int r = s.r0; r < kWarpPoints; r += s.r_step)
        cp_async16(col_dst + 4 * RS * r, col_src + (r < valid_rows ? r * D : 0), r < valid_rows);
    } else {
      for (int r = s.r0, k = s.k0; r < kWarpPoints;) {
        cp_async16(dst + 4 * (r * RS + 4 * k), src + (r < valid_rows ? r * D + 4 * k : 0), r < valid_rows);
        r += s.r_step;
        k += s.k_step;
        if (k >= s.chunks) {
          k -= s.chunks;
          r += 1;
        }
      }
    }
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

// Moves each point in `moved` (owner lanes of rows rs: lane 4p holds row p + 8*rs) from the sums
// of its old cluster to those of its new one, from its staged coordinates. The whole warp takes one
// point at a time, one coordinate per lane. In ROUND_NEXT every valid row has an old code (round 0
// wrote them all).
template <int KS>
__device__ __forceinline__ void move_points(unsigned moved, int rs, const int (&code)[2], const int (&old)[2],
                                            const float (&xaug)[2], const float* rows, double* group_sums, int cdim,
                                            int dsub) {
  constexpr int RS = tile_stride(KS);
  const int lane = threadIdx.x & 31;
  while (moved != 0u) {
    const int src = __ffs(moved) - 1;
    moved &= moved - 1u;
    const int to = __shfl_sync(0xffffffffu, code[rs], src);
    const int from = __shfl_sync(0xffffffffu, old[rs], src);
    const float aug = __shfl_sync(0xffffffffu, xaug[rs], src);
    const float* xr = rows + ((src >> 2) + 8 * rs) * RS;
    double* to_sum = group_sums + to * cdim;
    double* from_sum = group_sums + from * cdim;
    // cdim <= 16*KS: a fixed number of coordinates per lane, unrolled; cdim > 16*(KS - 1), so the
    // lanes of the first 16*(KS - 1) + 1 coordinates need no guard.
#pragma unroll
    for (int it = 0; it < (KS + 1) / 2; ++it) {
      const int j = lane + 32 * it;
      if (32 * it + 31 < 16 * (KS - 1) + 1 || j < cdim) {
        const double x = j < dsub ? static_cast<double>(xr[j]) : static_cast<double>(aug);
        atomicAdd(to_sum + j, x);
        atomicAdd(from_sum + j, -x);
      }
    }
  }
}

template <int KS>
__device__ void build_round(const float* keys, const float* norms, const float* phi, const float* centroids,
                            const uint4* frag_g, const float* info_g, uint8_t* codes_tmp, uint8_t* index_codes,
                            double* sums, unsigned* counts, unsigned* stats, int n, int M, int sk, int D, int O, int C,
                            int cdim, int cstride, int capacity, int NT, int mode, int stages) {
  constexpr int RS = tile_stride(KS);
  extern __shared__ uint4 smem[];
  const int CP = NT * 8;
  uint4* frag = smem;
  float* info = reinterpret_cast<float*>(frag + NT * KS * 32);
  float* tiles_smem = info + ((CP + 1 + 3) / 4) * 4;  // per warp, a ring of `stages` buffers of kWarpPoints rows
  const bool accumulate = mode != ROUND_FINAL;
  const int g = blockIdx.y;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int dsub = D / M;
  // Warp tiles of the group: warp w of block x takes tiles 4x + w, 4x + w + 4P, … on its own (its
  // own staging ring, no block barrier in the loop: a warp re-scoring a near tie holds up no other).
  constexpr int kWarps = kRoundThreads / 32;
  const int tiles = (n + kWarpPoints - 1) / kWarpPoints;
  const int first_tile = blockIdx.x * kWarps + warp;
  const int tile_step = gridDim.x * kWarps;
  const int chunks = dsub / 4;
  const int bkv = g / M;
  const float* group_keys = keys + (static_cast<int64_t>(bkv) * sk + O) * D + (g - bkv * M) * dsub;
  const StagePlan plan = make_stage_plan(lane, chunks);
  double* group_sums = sums + static_cast<int64_t>(g) * C * cdim;
  unsigned* group_counts = counts + g * C;
  float* ring = tiles_smem + warp * stages * kWarpPoints * RS;
  {
    const uint4* src = frag_g + static_cast<int64_t>(g) * NT * KS * 32;
    for (int e = threadIdx.x; e < NT * KS * 32; e += kRoundThreads) frag[e] = src[e];
    const float* isrc = info_g + static_cast<int64_t>(g) * (CP + 1);
    for (int e = threadIdx.x; e < CP + 1; e += kRoundThreads) info[e] = isrc[e];
    // Columns dsub .. RS-1 of the buffers stay zero (the copies write columns < dsub only).
    for (int e = threadIdx.x; e < kWarps * stages * kWarpPoints * (RS - dsub); e += kRoundThreads) {
      const int r = e / (RS - dsub);
      tiles_smem[r * RS + dsub + (e - r * (RS - dsub))] = 0.0f;
    }
  }
  for (int s = 0; s + 1 < stages; ++s)
    stage_tile<RS>(ring + s * kWarpPoints * RS, plan, group_keys, D, first_tile + s * tile_step, tiles, n);
  __syncthreads();  // centroid fragments, info and the zero columns, once
  const float cmax = info[CP];
  GroupView view;
  view.frag = frag;
  view.half_norm2 = info;
  view.cent = centroids + static_cast<int64_t>(g) * C * cstride;
  view.norms = norms;
  view.dsub = dsub;
  view.phi = cdim > dsub ? phi[g] : 0.0f;
  view.g = g;
  view.n = n;
  view.C = C;
  view.cdim = cdim;
  view.cstride = cstride;
  view.NT = NT;
  const int q = lane >> 2;
  const int t = lane & 3;
  unsigned flagged_total = 0;
  unsigned changed_total = 0;

  view.cmax = cmax;
  int buffer = 0;  // ring slot of `tile`
  for (int tile = first_tile; tile < tiles; tile += tile_step, buffer = buffer + 1 == stages ? 0 : buffer + 1) {
    // Tile + (stages - 1) steps ahead streams in while this one is scored.
    const int ahead = buffer + stages - 1 >= stages ? buffer - 1 : buffer + stages - 1;
    stage_tile<RS>(ring + ahead * kWarpPoints * RS, plan, group_keys, D, tile + (stages - 1) * tile_step, tiles, n);
    if (stages >= 3) asm volatile("cp.async.wait_group 2;\n" ::);
    else if (stages == 2) asm volatile("cp.async.wait_group 1;\n" ::);
    else asm volatile("cp.async.wait_group 0;\n" ::);
    __syncwarp();  // every lane's copies of this tile are visible to the warp
    const float* rows = ring + buffer * kWarpPoints * RS;
    const int pbase = tile * kWarpPoints;
    // The previous codes are loaded before the scoring, which hides their latency.
    int old[2] = {-1, -1};
    if (mode == ROUND_NEXT) {
#pragma unroll
      for (int rs = 0; rs < 2; ++rs)
        if (pbase + q + 8 * rs < n) old[rs] = codes_tmp[static_cast<int64_t>(g) * n + pbase + q + 8 * rs];
    }
    int code[2] = {-1, -1};
    bool valid[2] = {false, false};
    float xaug[2] = {0.0f, 0.0f};
    flagged_total += nearest_rows<KS>(view, rows, pbase, code, valid, xaug);
    if (!accumulate) {
      if (index_codes != nullptr && t == 0) {
        const int m = g - bkv * M;
#pragma unroll
        for (int rs = 0; rs < 2; ++rs)
          if (valid[rs]) index_codes[(static_cast<int64_t>(bkv) * capacity + O + pbase + q + 8 * rs) * M + m] = static_cast<uint8_t>(code[rs]);
      }
      __syncwarp();  // this buffer is restaged next iteration
      continue;
    }
    if (mode == ROUND_FIRST) {  // codes only: pq_build_first_sums then adds every point to its cluster
#pragma unroll
      for (int rs = 0; rs < 2; ++rs)
        if (valid[rs] && t == 0) codes_tmp[static_cast<int64_t>(g) * n + pbase + q + 8 * rs] = static_cast<uint8_t>(code[rs]);
      changed_total += __popc(__ballot_sync(0xffffffffu, t == 0 && valid[0])) + __popc(__ballot_sync(0xffffffffu, t == 0 && valid[1]));
      __syncwarp();  // this buffer is restaged next iteration
      continue;
    }
    // Codes that changed move their point between the clusters' sums: the row's owner lane (t == 0)
    // writes the code and moves the counts; the warp moves the coordinates, one point at a time.
    bool changed[2] = {false, false};
#pragma unroll
    for (int rs = 0; rs < 2; ++rs) {
      changed[rs] = valid[rs] && code[rs] != old[rs];
      if (changed[rs] && t == 0) {
        codes_tmp[static_cast<int64_t>(g) * n + pbase + q + 8 * rs] = static_cast<uint8_t>(code[rs]);
        atomicAdd(group_counts + code[rs], 1u);
        atomicSub(group_counts + old[rs], 1u);
      }
    }
    const unsigned moved0 = __ballot_sync(0xffffffffu, t == 0 && changed[0]);
    const unsigned moved1 = __ballot_sync(0xffffffffu, t == 0 && changed[1]);
    changed_total += __popc(moved0) + __popc(moved1);
    move_points<KS>(moved0, 0, code, old, xaug, rows, group_sums, cdim, dsub);
    move_points<KS>(moved1, 1, code, old, xaug, rows, group_sums, cdim, dsub);
    __syncwarp();  // this buffer is restaged next iteration
  }
  if (lane == 0 && stats != nullptr) {
    if (flagged_total != 0u) atomicAdd(stats, flagged_total);
    if (changed_total != 0u) atomicAdd(stats + 1, changed_total);
  }
}

// pq_build_round_kN: register-limited to 3 blocks (12 warps) per SM; pq_build_round_kN_b4 (KS <= 4,
// at most 128 registers) fits 4 blocks with 2 staged tiles: the host's default there, as the round
// is latency bound (k4_b4 spills ~56 bytes and is still at least as fast on the seed build: 4.95 vs
// 5.12 ms in session 8, 4.65-4.66 vs 4.66-4.70 ms in session 13).
#define PQ_BUILD_ROUND(KS, MIN_BLOCKS, NAME)                                                                       \
  extern "C" __global__ void __launch_bounds__(kRoundThreads, MIN_BLOCKS) NAME(                                      \
      const float* keys, const float* norms, const float* phi, const float* centroids, const uint4* frag,          \
      const float* info, uint8_t* codes_tmp, uint8_t* index_codes, double* sums, unsigned* counts,                 \
      unsigned* stats, int n, int M, int sk, int D, int O, int C, int cdim, int cstride, int capacity, int NT,      \
      int mode, int stages) {                                                                                      \
    build_round<KS>(keys, norms, phi, centroids, frag, info, codes_tmp, index_codes, sums, counts, stats, n, M, sk, \
                    D, O, C, cdim, cstride, capacity, NT, mode, stages);                                           \
  }
PQ_BUILD_ROUND(1, 2, pq_build_round_k1)
PQ_BUILD_ROUND(2, 2, pq_build_round_k2)
PQ_BUILD_ROUND(3, 2, pq_build_round_k3)
PQ_BUILD_ROUND(4, 2, pq_build_round_k4)
PQ_BUILD_ROUND(5, 2, pq_build_round_k5)
PQ_BUILD_ROUND(6, 2, pq_build_round_k6)
PQ_BUILD_ROUND(7, 2, pq_build_round_k7)
PQ_BUILD_ROUND(8, 2, pq_build_round_k8)
PQ_BUILD_ROUND(9, 2, pq_build_round_k9)
PQ_BUILD_ROUND(1, 4, pq_build_round_k1_b4)
PQ_BUILD_ROUND(2, 4, pq_build_round_k2_b4)
PQ_BUILD_ROUND(3, 4, pq_build_round_k3_b4)
PQ_BUILD_ROUND(4, 4, pq_build_round_k4_b4)

// Round 0's cluster sums and counts, from the codes round 0 wrote. In round 0 every point joins a
// cluster, and adding each coordinate with a float64 atomic from the round kernel (131 M on the seed
// config) bound that round at ~2x a later one (ncu: it did not get faster with 30% fewer
// instructions). Here block x of group g takes points [x*kSumChunk, …) in code order (a counting
// sort in shared memory), so a thread adds its coordinate over each run of same-code points in a
// register and writes one atomic per run: ~16x fewer atomics, for one more read of the keys.
// Launch: grid (ceil(n / kSumChunk), G), block kSumThreads; sums and counts zeroed before round 0.
// Thread (slice, j): coordinate j < 32*ceil(cdim/32) of a slice of the sorted points (cdim <= 129).
constexpr int kSumThreads = 256;
constexpr int kSumChunk = 4096;

extern "C" __global__ void __launch_bounds__(kSumThreads) pq_build_first_sums(const float* keys, const float* norms, const float* phi,
                                                                            const uint8_t* codes_tmp, double* sums,
                                                                            unsigned* counts, int n, int M, int sk, int D,
                                                                            int O, int C, int cdim) {
  __shared__ uint8_t code_of[kSumChunk];
  __shared__ uint16_t order[kSumChunk];  // chunk points by code
  __shared__ int bin_next[256];
  __shared__ int scan_scratch[kSumThreads / 32];
  const int g = blockIdx.y;
  const int p0 = blockIdx.x * kSumChunk;
  const int len = min(kSumChunk, n - p0);
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

  const int lanes = 32 * ((cdim + 31) / 32);
  const int slices = kSumThreads / lanes;
  const int slice = threadIdx.x / lanes;
  const int j = threadIdx.x - slice * lanes;
  if (slice >= slices) return;  // no barrier follows
  const int begin = len * slice / slices;
  const int end = len * (slice + 1) / slices;
  // The chunk's coordinates from hoisted bases (point_coord per load recomputes the 64-bit address:
  // 4.63-4.65 against 4.44-4.49 ms for the seed build in a same-run A/B, session 14).
  const int bkv = g / M;
  const float* chunk_keys = keys + (static_cast<int64_t>(bkv) * sk + O + p0) * D + (g - bkv * M) * dsub;
  const float phi_g = cdim > dsub ? phi[g] : 0.0f;
  const float* chunk_norms = norms + static_cast<int64_t>(g) * n + p0;
  double* group_sums = sums + static_cast<int64_t>(g) * C * cdim;
  double run = 0.0;
  int run_code = -1;
  for (int k0 = begin; k0 < end; k0 += 8) {
    float x[8];  // eight points' coordinate j loaded before any is added
    int code[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      code[k] = -1;
      x[k] = 0.0f;
      if (k0 + k < end) {
        const int i = order[k0 + k];
        code[k] = code_of[i];
        if (j < dsub) x[k] = chunk_keys[static_cast<int64_t>(i) * D + j];
        else if (j == dsub && cdim > dsub) x[k] = pq_ip_augment(phi_g, chunk_norms[i]);
      }
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (code[k] < 0) break;
      if (code[k] != run_code) {
        if (run_code >= 0 && j < cdim) atomicAdd(group_sums + run_code * cdim + j, run);
        run_code = code[k];
        run = 0.0;
      }
      run += static_cast<double>(x[k]);
    }
  }
  if (run_code >= 0 && j < cdim) atomicAdd(group_sums + run_code * cdim + j, run);
}

extern "C" __global__ void __launch_bounds__(256) pq_build_finalize(const float* keys, const float* norms, const float* phi,
                                                                    const double* sums, const unsigned* counts, float* centroids,
                                                                    uint4* frag, float* info, int n, int M, int sk, int D,
                                                                    int O, int C, int cdim, int cstride, int NT, int KS,
                                                                    unsigned seed, int round, int staged) {
  // staged: the block keeps a copy of the group's new centroids in dynamic shared memory ([C, cstride],
  // when it fits) for pack_group, which then reads no global memory.
  extern __shared__ float4 staged_centroids[];
  float* sc = reinterpret_cast<float*>(staged_centroids);
  const int g = blockIdx.x;
  const int dsub = D / M;
  // Eight elements per thread per step, their sums and counts loaded before any is used (one at a
  // time, each step waited on its loads: ~16 round trips to L2 per block).
  constexpr int kBatch = 8;
  for (int e0 = threadIdx.x; e0 < C * cdim; e0 += 256 * kBatch) {
    unsigned count[kBatch];
    double sum[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int e = e0 + 256 * k;
      count[k] = e < C * cdim ? counts[g * C + e / cdim] : 1u;
      sum[k] = e < C * cdim ? sums[static_cast<int64_t>(g) * C * cdim + e] : 0.0;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int e = e0 + 256 * k;
      if (e >= C * cdim) break;
      const int c = e / cdim;
      const int j = e - c * cdim;
      float v;
      if (count[k] == 0u) {
        const int s = static_cast<int>(pq_draw(seed, 2u * g + 1u, static_cast<unsigned>(round) * 256u + c) % static_cast<unsigned>(n));
        v = point_coord(keys, norms, phi, g, s, j, n, M, sk, D, O, dsub);
      } else {
        v = __fdiv_rn(__double2float_rn(sum[k]), static_cast<float>(count[k]));
      }
      centroids[(static_cast<int64_t>(g) * C + c) * cstride + j] = v;
      if (staged) sc[c * cstride + j] = v;
    }
  }
  __syncthreads();
  pack_group(staged ? sc : centroids + static_cast<int64_t>(g) * C * cstride, frag, info, g, C, cdim, cstride, NT, KS);
}
