// The assignment step of the PQ build's rounds, shared by the round kernels of kernels/build.cu
// (mma.sync, any GPU) and kernels/build_ws.cu (warp-specialized wgmma, sm_90a): given a warp's scores
// of 16 points against a chunk of 64 centroids, in mma.sync's accumulator layout, the nearest
// centroid by the oracle's canonical order (passes A-C of nearest_rows), and what a round does with
// the codes (commit_codes: write the changed ones, count them, move points between the cluster sums).
// See kernels/build.cu's header for the algorithm (bands, flagged rows, sums by moves or from codes).
// Accumulator layout of a warp's tile (acc[j][i]): centroid nt0*8 + 8j + 2t + (i & 1) of tile row
// q + 8 (i >> 1), for lane 4q + t: mma.sync m16n8 n-tile j, and warp w's rows of a wgmma m64n64.
#pragma once
#include <climits>
#include <type_traits>

#include "common.cuh"

namespace {

constexpr int kWarpPoints = 16;  // one m16 MMA tile: the points a warp scores at once
// Means and packing of a round: block x of group g takes n-tiles kFinalizeTiles*x .. (16 centroids),
// so a group spreads over NT / kFinalizeTiles blocks (4 on the seed config: 7.1 us a round against
// 12 for one block a group, ncu, session 31).
constexpr int kFinalizeTiles = 2;
constexpr int kFinalizeCentroids = 8 * kFinalizeTiles;

// Floats of info[g] (kernels/build.cu, "Packed operands"): |c|^2/2 of the NT*8 centroids, then max |c| over each
// finalize block's centroids.
__device__ __forceinline__ int info_stride(int NT) { return NT * 8 + NT / kFinalizeTiles; }

// max |c| of a group from its info (the largest of the blocks' maxima; float bits, as atomicMax).
__device__ __forceinline__ float group_max_norm(const float* gi, int NT) {
  unsigned bits = 0u;
  for (int x = 0; x < NT / kFinalizeTiles; ++x) bits = max(bits, __float_as_uint(gi[NT * 8 + x]));
  return __uint_as_float(bits);
}

// Point 0 of group g: row O of its (b, kv-head), at sub-space m's columns (kernels/build.cu, "Keys").
template <typename T>
__device__ __forceinline__ const T* group_points(const T* keys, int g, int M, int64_t head_stride, int row_stride, int O,
                                                 int dsub) {
  const int bkv = g / M;
  return keys + bkv * head_stride + static_cast<int64_t>(O) * row_stride + (g - bkv * M) * dsub;
}

// A pair of two fp32 values in an mma operand type (bf16 or f16), rounded to nearest, and back.
__device__ __forceinline__ __nv_bfloat162 operand_pair(float v0, float v1, __nv_bfloat16) { return __floats2bfloat162_rn(v0, v1); }
__device__ __forceinline__ __half2 operand_pair(float v0, float v1, __half) { return __floats2half2_rn(v0, v1); }
__device__ __forceinline__ float2 pair_floats(__nv_bfloat162 p) { return __bfloat1622float2(p); }
__device__ __forceinline__ float2 pair_floats(__half2 p) { return __half22float2(p); }

// hi + lo of two fp32 values in the operand type T (bf16 or f16), as the packed pairs an mma
// fragment register holds (first value in the low half). x - hi is exact in fp32. f16: a value
// beyond 65504 has an infinite hi (the callers' centroids are means of f16 keys, so never), and a lo
// below f16's normal range rounds to the subnormal step (score_band_f16_lo_first).
template <typename T>
__device__ __forceinline__ void split_pair(float v0, float v1, uint32_t& hi, uint32_t& lo) {
  const auto h = operand_pair(v0, v1, T{});
  const float2 hf = pair_floats(h);
  const auto l = operand_pair(__fsub_rn(v0, hf.x), __fsub_rn(v1, hf.y), T{});
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}

// The oracle's distanceF32 over cdim coordinates (x[dsub] is `xaug` for ip), by the eight lanes
// 8k .. 8k+7 of a warp together, in common.cuh's lane form: lane r sums the oracle's partial r
// (pq_partial_distance; the ip coordinate dsub comes last in partial dsub mod 8) and pq_tree8
// combines the partials. Every lane of the warp calls it (the shuffles); `live` lanes load, the
// others add zeros. Returns the distance in all eight lanes.
template <typename T>
__device__ __forceinline__ float canonical_distance_8(const T* x, float xaug, const float* c, int dsub, int cdim,
                                                      bool live) {
  const int r = threadIdx.x & 7;
  float part = live ? pq_partial_distance(x, c, dsub, r) : 0.0f;
  if (live && cdim > dsub && r == (dsub & 7)) {
    const float t = __fsub_rn(xaug, c[dsub]);
    part = __fadd_rn(part, __fmul_rn(t, t));
  }
  return pq_tree8(part);
}

// Modes of a round: the first round has no previous codes and moves nothing; the final assignment
// writes its codes for pq_build_publish.
// ROUND_FIRST: codes of every point (round 0). ROUND_NEXT: codes that changed, and their points
// moved between the cluster sums. ROUND_RECOMPUTE: codes that changed, no moves (the host zeroes
// the sums and pq_build_first_sums forms them again from the codes). ROUND_FINAL: every code.
enum BuildRoundMode : int { ROUND_FIRST = 0, ROUND_NEXT = 1, ROUND_FINAL = 2, ROUND_RECOMPUTE = 3 };

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

// The band of kernels/build_ws.cu's scores: bf16 keys (exact: x has no lo part), dsub = cdim = 64,
// the centroids' 64 lo products accumulated by wgmma before their 64 hi products. The model of the
// tensor cores' fp32 accumulation (Fasi, Higham, Mikaitis, Pranesh 2021 for V100/T4/A100; Khattak and
// Mikaitis 2025 for H100; checked on the device by scripts/wgmma-accum-probe.cu): a bf16 product is
// exact; an instruction adds its products to the accumulator in steps of m >= 1 of them, each step
// aligning its terms (its products and the running sum) to the largest exponent E among them and
// keeping >= 24 bits from 2^E down (a term loses < 2^(E-23)), then rounding the step's sum to fp32
// toward zero (< 2^-23 of it). A step whose terms and result are <= T errs < (m + 2) 2^-23 T, so N
// products err < 3N 2^-23 T for any m. Per centroid, with S = sum_j |x_j||c_j| <= |x||c|:
//   lo products (|c_lo| <= 2^-8 (1 + 2^-8) |c|, T <= 2^-8 (1 + 2^-7) S):  < 0.76 * 2^-23 S
//   hi products (|c_hi| <= (1 + 2^-8) |c|, T <= (1 + 2^-7) S):           < 193.5 * 2^-23 S
//   the split's residual c - hi - lo (<= 2^-17 |c_j|, split_pair):        <= 64 * 2^-23 S
//   |c|^2/2 rounded once from float64, the subtraction, the threshold:    < 2^-24 (|x||c| + |c|^2) each
// so a score errs e_s < 259.8 * 2^-23 |x||c| + 1.5 * 2^-23 |c|^2 = 2^-14.98 |x||c| + 2^-22.4 |c|^2. The
// canonical distance (64 squares in 8 partials of 8, then a tree of depth 3; terms >= 0) errs
// < 13 * 2^-24 D <= 2^-20.3 (|x| + |c|)^2. A comparison needs 2 e_s plus that: 2^-13.98 |x||c| +
// 2^-19.7 (|x| + |c|)^2. The band below keeps a margin >= 2x on both terms (2.1x, 2.4x), and
// score_band's floor and overflow rule. (Interleaving hi and lo, as before session 36, gives the lo
// products the running sum's truncation: 2^-14.4 instead of 2^-15.4 for the accumulation;
// score_band's 2^-11 was derived for fp32 keys split into hi + lo.)
__device__ __forceinline__ float score_band_lo_first(float xnorm, float cmax) {
  const float s = xnorm + cmax;
  if (!(s < 0x1p63f)) return INFINITY;
  return 0x1.1p-13f * xnorm * cmax + 0x1.8p-19f * s * s + 0x1p-101f;
}

// The band of kernels/build_ws.cu's scores from f16 keys: as score_band_lo_first, with the centroids
// split into f16 hi + lo (the same order of products). Every term of that derivation is smaller for
// f16 (a product of two f16 is exact in fp32; |c_hi| <= (1 + 2^-11) |c|, |c_lo| <= 2^-11 (1 + 2^-11) |c|,
// the residual c - hi - lo <= 2^-22 |c_j|) but one: a lo part below f16's normal range (2^-14) is
// rounded to the subnormal step 2^-24, so the residual is also <= 2^-25 a coordinate, and a score errs
// by up to 2^-25 sum_j |x_j| <= 2^-22 |x| more (64 coordinates). The comparison takes that twice, 2^-21
// |x|; kept with a margin of 2x. (It assumes the tensor cores keep f16 subnormals, operands and
// products alike: scripts/wgmma-accum-probe.cu checks it, class "f16 subnormal".)
__device__ __forceinline__ float score_band_f16_lo_first(float xnorm, float cmax) {
  return score_band_lo_first(xnorm, cmax) + 0x1p-20f * xnorm;
}

// |x| as the bands take it, from the four lanes' shares of a row's |x|^2 (lanes 4q .. 4q+3; every
// lane of the warp calls it): the shares summed by two xor shuffles, the root rounded up (an upper
// bound of |x| but for the sum's own rounding, which the bands' margins cover). Every lane gets it.
__device__ __forceinline__ float band_row_norm(float share) {
  share += __shfl_xor_sync(0xffffffffu, share, 1);
  share += __shfl_xor_sync(0xffffffffu, share, 2);
  return __fsqrt_ru(share);
}

// Which bound a round kernel's scores take (nearest_rows).
enum ScoreBand : int { BAND_SPLIT = 0, BAND_BF16_LO_FIRST = 1, BAND_F16_LO_FIRST = 2 };

template <ScoreBand kBand>
__device__ __forceinline__ float score_band_of(float xnorm, float cmax) {
  if constexpr (kBand == BAND_BF16_LO_FIRST) return score_band_lo_first(xnorm, cmax);
  else if constexpr (kBand == BAND_F16_LO_FIRST) return score_band_f16_lo_first(xnorm, cmax);
  else return score_band(xnorm, cmax);
}

// What one round's assignment needs of group g (the kernels build it by aggregate initialization,
// in this field order).
template <typename T>
struct GroupView {
  float cmax;               // max |c|
  const float* cent;        // the group's fp32 centroids (canonical re-scoring): smem with one chunk, else global
  const T* keys;            // global: point 0 of the group (canonical re-scoring, moves)
  const float* norms;
  uint16_t* rescore_list;   // smem: the warp's (row << 8 | centroid) candidates of pass C (C <= 256)
  float phi;
  int g, n, C, cdim, cstride, dsub, row_stride, NT;
};

// Candidates a lane adds to its warp's pass-C list at a time: 32 * 4 = kRescoreList entries.
constexpr int kRescoreTake = 4;
constexpr int kRescoreList = 32 * kRescoreTake;

// Pass C's canonical re-scoring of one chunk's candidates (bit 4j + i of a lane: centroid
// (nt0 + j) * 8 + 2t + (i & 1) for row q + 8 (i >> 1)) of the tile at tile_keys, into row `lane`'s
// best (distance, centroid) held by lanes 0..15. Returns {best distance, best centroid's bits}.
// Out of line: inlined, its state made the four-block seed kernel spill (48 bytes, 3.54 ms against
// 3.33 out of line; session 25), while only flagged tiles come here (≈ 1 - (1 - 0.0074)^16, one
// tile in nine, at the seed config's mean flagged share).
template <typename T>
__device__ __noinline__ float2 rescore_candidates(uint32_t candidates, int nt0, const T* tile_keys, const float* cent,
                                                  uint16_t* list, float xaug0, float xaug1, int row_stride, int dsub,
                                                  int cdim, int cstride, float best_d, int best_c) {
  const int lane = threadIdx.x & 31;
  const int q = lane >> 2;
  const int t = lane & 3;
  while (__any_sync(0xffffffffu, candidates != 0u)) {
    const int take = min(__popc(candidates), kRescoreTake);
    const int end = pq_warp_inclusive_scan(take);
    const int total = __shfl_sync(0xffffffffu, end, 31);
    for (int k = end - take; k < end; ++k) {
      const int bit = __ffs(candidates) - 1;
      candidates &= candidates - 1u;
      const int row = q + ((bit & 2) != 0 ? 8 : 0);  // accumulators 2, 3: row q + 8
      const int c = (nt0 + (bit >> 2)) * 8 + 2 * t + (bit & 1);
      list[k] = static_cast<uint16_t>(row << 8 | c);
    }
    __syncwarp();
    for (int e0 = 0; e0 < total; e0 += 4) {
      const int e = e0 + (lane >> 3);
      const int entry = e < total ? list[e] : 0;
      const int row = entry >> 8;
      const int c = entry & 255;
      // The row's ip coordinate, from its owner lane 4(row mod 8) (xaug0: rows 0..7, xaug1: 8..15).
      const float aug0 = __shfl_sync(0xffffffffu, xaug0, (row & 7) * 4);
      const float aug1 = __shfl_sync(0xffffffffu, xaug1, (row & 7) * 4);
      const float d = canonical_distance_8(tile_keys + static_cast<int64_t>(row) * row_stride, row < 8 ? aug0 : aug1,
                                           cent + c * cstride, dsub, cdim, e < total);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int erow = __shfl_sync(0xffffffffu, row, 8 * k);
        const int ec = __shfl_sync(0xffffffffu, c, 8 * k);
        const float ed = __shfl_sync(0xffffffffu, d, 8 * k);
        // Only finite distances win (none: centroid 0, below); ties keep the lower index.
        if (e0 + k < total && lane == erow && ed < INFINITY && (ed < best_d || (ed == best_d && ec < best_c))) {
          best_d = ed;
          best_c = ec;
        }
      }
    }
    __syncwarp();  // the next segment rewrites the list
  }
  return make_float2(best_d, __int_as_float(best_c));
}

// Nearest centroid of the warp's 16 points (tile rows q and q + 8 of the lane; point index
// pbase + row). Returns the number of rows flagged for canonical re-scoring. The scores come from
// chunk_scores_of(acc, nt0, sq): chunk nt0's accumulators, and with sq (the first chunk) the
// lane's share of each row's |x|^2 (the shares of lanes t = 0..3 sum to it); kNormGiven: |x| itself,
// as band_row_norm of those shares, in each of the row's lanes.
// kDeferRescore (one chunk only): no pass C here; a flagged row gets code -1 and its candidates
// (bit c: centroid c scores within the band) in (*candidates)[rs], the same in the row's four lanes
// (0 for rows not flagged), for the caller to re-score later (build_ws.cu's deferred rows).
template <bool kOneChunk, bool kDeferRescore = false, ScoreBand kBand = BAND_SPLIT, bool kNormGiven = false, typename T,
          typename ChunkScores>
__device__ __forceinline__ unsigned nearest_rows(const GroupView<T>& v, int pbase, int (&code)[2], bool (&valid)[2],
                                                 float (&xaug)[2], ChunkScores&& chunk_scores_of,
                                                 uint64_t (*candidates)[2] = nullptr) {
  static_assert(!kDeferRescore || kOneChunk, "deferred re-scoring takes one chunk of <= 64 centroids");
  const int lane = threadIdx.x & 31;
  const int q = lane >> 2;  // mma row group: rows q and q + 8
  const int t = lane & 3;   // mma column pair
  const bool ip = v.cdim > v.dsub;
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    valid[rs] = pbase + q + 8 * rs < v.n;
    xaug[rs] = (ip && valid[rs]) ? pq_ip_augment(v.phi, v.norms[static_cast<int64_t>(v.g) * v.n + pbase + q + 8 * rs]) : 0.0f;
  }
  // kOneChunk (C <= 64): one chunk, whose scores stay in the accumulators from pass A to C; its own
  // kernels, as the chunk loops kept more registers live (the four-block kernel spilled).
  const int NT = kOneChunk ? 8 : v.NT;

  // Pass A: the best score per row.
  float acc[8][4];
  float best[2] = {-INFINITY, -INFINITY};
  float sq[2];
  for (int nt0 = 0; nt0 < NT; nt0 += 8) {
    chunk_scores_of(acc, nt0, nt0 == 0 ? &sq : nullptr);
    // The row maxima from fp32 keys by a tree (depth 4 a row, not a chain of 16; the same value in
    // any order, NaN included): the seed build from fp32 keys 3116 against 3218 us, from bf16 keys
    // 2658 against 2608, so bf16 keeps the chain (same run, session 33; a tree of pass B's sums was
    // slower for bf16 keys, and less of a gain for fp32).
    if constexpr (std::is_same<T, float>::value) {
#pragma unroll
      for (int rs = 0; rs < 2; ++rs) {
        float m[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) m[j] = fmaxf(acc[j][2 * rs], acc[j][2 * rs + 1]);
#pragma unroll
        for (int w = 4; w > 0; w >>= 1)
#pragma unroll
          for (int j = 0; j < w; ++j) m[j] = fmaxf(m[j], m[j + w]);
        best[rs] = fmaxf(best[rs], m[0]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) best[i >> 1] = fmaxf(best[i >> 1], acc[j][i]);
    }
  }
  float half_band[2];
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    const float xnorm = kNormGiven ? sq[rs] : band_row_norm(sq[rs]);
    half_band[rs] = score_band_of<kBand>(xnorm, v.cmax);
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
  for (int nt0 = 0; nt0 < NT; nt0 += 8) {
    if (!kOneChunk) chunk_scores_of(acc, nt0, nullptr);  // one chunk: acc holds it
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
  if constexpr (kDeferRescore) {
    (*candidates)[0] = (*candidates)[1] = 0ull;
    if (flagged_rows == 0u) return 0u;
#pragma unroll
    for (int rs = 0; rs < 2; ++rs) {
      uint64_t mask = 0ull;
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const int c = 8 * j + 2 * t + b;
          if (flagged[rs] && c < v.C && !(acc[j][2 * rs + b] < threshold[rs])) mask |= 1ull << c;
        }
      mask |= __shfl_xor_sync(0xffffffffu, mask, 1);
      mask |= __shfl_xor_sync(0xffffffffu, mask, 2);
      (*candidates)[rs] = mask;
      if (flagged[rs]) code[rs] = -1;
    }
    return static_cast<unsigned>(__popc(flagged_rows));
  }
  if (flagged_rows == 0u) return 0u;
#ifdef PQ_DIAG_NO_RESCORE  // diagnostic builds only: flagged rows keep pass B's sum (wrong codes), to time pass C
  return static_cast<unsigned>(__popc(flagged_rows));
#endif

  // Pass C (flagged rows): canonical distances of the centroids within the band; the lowest index
  // among the minimal ones, as the oracle. The warp's candidates (row, centroid) of a chunk go into
  // its list in shared memory (up to kRescoreTake per lane at a time, so a segment holds <= 128),
  // and eight lanes compute each canonical distance together (canonical_distance_8). A lane walking
  // its own candidates through the whole distance cost ~370 warp instructions a flagged row, and
  // pass C ~0.15 ms of the seed build (3.42 ms; 3.27 with the band at 0, a diagnostic); this way the
  // seed build takes 3.33 ms (session 25). Lanes 0..15 keep row `lane`'s best (distance, centroid)
  // across segments and chunks.
  float best_d = INFINITY;
  int best_c = INT_MAX;
  for (int nt0 = 0; nt0 < NT; nt0 += 8) {
    if (!kOneChunk) chunk_scores_of(acc, nt0, nullptr);
    uint32_t candidates = 0u;  // bit 4j + i: accumulator acc[j][i]
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int rs = i >> 1;
        const int c = (nt0 + j) * 8 + 2 * t + (i & 1);
        if (flagged[rs] && c < v.C && !(acc[j][i] < threshold[rs])) candidates |= 1u << (4 * j + i);
      }
    }
    const float2 best = rescore_candidates(candidates, nt0, v.keys + static_cast<int64_t>(pbase) * v.row_stride, v.cent,
                                           v.rescore_list, xaug[0], xaug[1], v.row_stride, v.dsub, v.cdim, v.cstride, best_d,
                                           best_c);
    best_d = best.x;
    best_c = __float_as_int(best.y);
  }
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    const int bc = __shfl_sync(0xffffffffu, best_c, q + 8 * rs);
    if (flagged[rs]) code[rs] = bc == INT_MAX ? 0 : bc;  // no finite distance: centroid 0
  }
  return static_cast<unsigned>(__popc(flagged_rows));
}

// Moves each point in `moved` (owner lanes of rows rs: lane 4p holds row p + 8*rs of the tile at
// point pbase) from the sums of its old cluster to those of its new one. The whole warp takes up to
// kMoveBatch points at a time, one coordinate per lane, read again from the keys (the tile's rows
// were just loaded, so from L1 or L2): a batch's loads are in flight together (one point at a time
// waited on each point's loads, ncu session 22). In ROUND_NEXT every valid row has an old code
// (round 0 wrote them all).
constexpr int kMoveBatch = 4;

template <int KS, typename T>
__device__ __forceinline__ void move_points(unsigned moved, int rs, const int (&code)[2], const int (&old)[2],
                                            const float (&xaug)[2], const T* tile_keys, int row_stride, double* group_sums,
                                            int cdim, int dsub) {
  constexpr int kPerLane = (KS + 1) / 2;  // cdim <= 16*KS coordinates over 32 lanes
  const int lane = threadIdx.x & 31;
  while (moved != 0u) {
    int src[kMoveBatch];
    bool live[kMoveBatch];
#pragma unroll
    for (int k = 0; k < kMoveBatch; ++k) {
      live[k] = moved != 0u;
      src[k] = live[k] ? __ffs(moved) - 1 : 0;
      moved &= moved - 1u;
    }
    float x[kMoveBatch][kPerLane];
#pragma unroll
    for (int k = 0; k < kMoveBatch; ++k) {
      const float aug = __shfl_sync(0xffffffffu, xaug[rs], src[k]);
      const T* xr = tile_keys + ((src[k] >> 2) + 8 * rs) * row_stride;
#pragma unroll
      for (int it = 0; it < kPerLane; ++it) {
        const int j = lane + 32 * it;
        x[k][it] = !live[k] || j >= cdim ? 0.0f : j < dsub ? pq_to_float(xr[j]) : aug;
      }
    }
#pragma unroll
    for (int k = 0; k < kMoveBatch; ++k) {
      const int to = __shfl_sync(0xffffffffu, code[rs], src[k]);
      const int from = __shfl_sync(0xffffffffu, old[rs], src[k]);
      if (!live[k]) break;  // uniform: the batch's live points come first
      double* to_sum = group_sums + to * cdim;
      double* from_sum = group_sums + from * cdim;
      // cdim > 16*(KS - 1): the lanes of the first 16*(KS - 1) + 1 coordinates need no guard.
#pragma unroll
      for (int it = 0; it < kPerLane; ++it) {
        const int j = lane + 32 * it;
        if (32 * it + 31 < 16 * (KS - 1) + 1 || j < cdim) {
          atomicAdd(to_sum + j, static_cast<double>(x[k][it]));
          atomicAdd(from_sum + j, -static_cast<double>(x[k][it]));
        }
      }
    }
  }
}

// Each row's previous code (-1 past n, and in modes that have none). Loaded before the scoring,
// which hides the load's latency.
__device__ __forceinline__ void load_old_codes(int mode, const uint8_t* group_codes, int pbase, int n, int (&old)[2]) {
  const int q = (threadIdx.x & 31) >> 2;
  old[0] = old[1] = -1;
  if (mode == ROUND_NEXT || mode == ROUND_RECOMPUTE) {
#pragma unroll
    for (int rs = 0; rs < 2; ++rs)
      if (pbase + q + 8 * rs < n) old[rs] = group_codes[pbase + q + 8 * rs];
  }
}

// The lane's index, read afresh: a volatile read the compiler cannot merge with an earlier one, so
// that it recomputes the rows' code addresses after the scoring instead of holding them live across
// it (held, the fp32 seed kernel at four blocks per SM spilled 32 bytes instead of 4 and took
// 3323 against 3133 us, session 34).
__device__ __forceinline__ int fresh_lane_id() {
  int lane;
  asm volatile("mov.u32 %0, %%laneid;\n" : "=r"(lane));
  return lane;
}

// What a round does with the warp's new codes (rows q and q + 8 of the tile at point pbase): the
// row's owner lane (t == 0) writes a code that changed (old = -1 where there is no previous code:
// every one in round 0 and the final assignment, whose codes go to the index through
// pq_build_publish); a moving round (ROUND_NEXT) also moves each changed point between the
// clusters: its owner lane the counts, the warp the coordinates (move_points). Other modes move
// nothing (after round 0 and recomputing rounds, pq_build_first_sums adds every point to its
// cluster). Every mode but the final one adds the warp's changed codes to changed_total (every lane).
// !kMoveCoords: the counts only; the caller moves the coordinates (build_ws.cu, from its stage).
template <int KS, bool kMoveCoords = true, typename T>
__device__ __forceinline__ void commit_codes(int mode, const int (&code)[2], const int (&old)[2], const bool (&valid)[2],
                                             const float (&xaug)[2], uint8_t* group_codes, int pbase, const T* group_keys,
                                             int row_stride, double* group_sums, unsigned* group_counts, int cdim, int dsub,
                                             unsigned& changed_total) {
  const int lane = fresh_lane_id();
  const int q = lane >> 2;
  const int t = lane & 3;
  bool changed[2];
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    changed[rs] = valid[rs] && code[rs] != old[rs];
    if (changed[rs] && t == 0) group_codes[pbase + q + 8 * rs] = static_cast<uint8_t>(code[rs]);
  }
  const unsigned moved0 = __ballot_sync(0xffffffffu, t == 0 && changed[0]);
  const unsigned moved1 = __ballot_sync(0xffffffffu, t == 0 && changed[1]);
  if (mode != ROUND_FINAL) changed_total += __popc(moved0) + __popc(moved1);
  if (mode != ROUND_NEXT) return;
#pragma unroll
  for (int rs = 0; rs < 2; ++rs) {
    if (changed[rs] && t == 0) {
      atomicAdd(group_counts + code[rs], 1u);
      atomicSub(group_counts + old[rs], 1u);
    }
  }
#ifdef PQ_DIAG_NO_MOVES  // diagnostic builds only: no coordinate moves (wrong sums), to time them
  return;
#endif
  if (kMoveCoords && (moved0 | moved1) != 0u) {
    const T* tile_keys = group_keys + static_cast<int64_t>(pbase) * row_stride;
    move_points<KS>(moved0, 0, code, old, xaug, tile_keys, row_stride, group_sums, cdim, dsub);
    move_points<KS>(moved1, 1, code, old, xaug, tile_keys, row_stride, group_sums, cdim, dsub);
  }
}

}  // namespace
