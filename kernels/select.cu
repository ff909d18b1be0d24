// Decode-step selection for sq = 1 (SPEC §2 select) and the key append that precedes it.
//
// The general select, for any M (1, 2, 4, 8) and C: select_pairs.cu is the faster path for
// M <= 2 (src/pq/cuda-plan.ts picks). The key append runs before it (append.cu).
//
// pq_select_m{M}_c{CE}: one fused kernel, score -> exact top-K -> sparse list -> weights.
//   Launch: grid (num_slices, B*H), block NT = 256 threads (<= 128 registers: 2 blocks per SM),
//   static shared memory (< 48 KB).
//   Block (s, row) builds the LUT of query head `row` (M*C dot products) in shared memory, scores
//   the positions of slice s straight from the uint8 codes (16-byte loads), and keeps an exact
//   top-K of its slice: a radix select on the 64-bit key (score key << 32 | ~ordinal), where the
//   ordinal grows with the position, so every key is unique and ties go to the lower position.
//   With one slice the block writes the outputs itself; otherwise it publishes its K candidates
//   (ascending position) and the last block of the row to finish (atomic counter, reset by that
//   block) merges them with the same select and writes sparseList, sparseLen and the weights.
//   Weights are updated incrementally: the previous list's entries are cleared, the new set.
// Invariants the host guarantees (src/pq/cuda-cache.ts):
//   - query row (b, h) at element b*query_batch_stride + h*query_head_stride, below 2^31 (PqStepRows);
//   - seq_state[0] = sk (device-side, written by pq_append in append.cu); sk <= capacity;
//   - codes of (b, kvh) start 16-byte aligned (capacity*M % 16 == 0), centroid rows have a
//     stride cstride % 4 == 0 floats, dsub % 4 == 0, D <= MAX_D, M*C <= MAX_LUT, K <= CE*NT;
//   - slice_len % TILE_ALIGN == 0 and num_slices * slice_len covers the eligible span;
//   - counters[row] == 0 before a launch; sparse_len/sparse_list/weights hold the previous
//     step's consistent output (or zeros / -1 after the host's reset).
#include "common.cuh"
#include "select_common.cuh"

namespace {

constexpr int NT = 256;         // threads per block
constexpr int E = 16;           // scored positions per thread per tile
constexpr int TILE = NT * E;    // positions per tile
constexpr int EM = 8;           // candidates per thread per merge tile
constexpr int MAX_D = 1024;
constexpr int MAX_LUT = 2048;   // M * C
constexpr int MAX_K = 2048;     // CE * NT for CE = 8
constexpr int MAX_BITMAP_WORDS = (MAX_K + TILE) / 32;
constexpr int NW = NT / 32;

struct SelectShared {
  float q[MAX_D];
  float lut[MAX_LUT];
  float cand_score[MAX_K];
  int cand_pos[MAX_K];
  int hist[256];
  uint32_t bitmap[MAX_BITMAP_WORDS];
  int word_prefix[MAX_BITMAP_WORDS];
  uint32_t reduce[4 * NW];
  int scan[NW];
  int cand_count;
  int is_last;
  int found_bin;
  int found_need;
  int found_count;
};

// Find, over 256 bins held in sm.hist, the bin d* holding the `need`-th largest element:
// above(d*) < need <= above(d*) + hist[d*]. Publishes d*, the remaining need and hist[d*].
__device__ __forceinline__ void find_bin_from_top(SelectShared& sm, int need) {
  static_assert(NT == 256, "one bin per thread");
  const int v = sm.hist[255 - threadIdx.x];
  int total;
  const int excl = pq_block_exclusive_scan<NT>(v, sm.scan, &total);  // sum of bins above
  if (excl < need && excl + v >= need) {
    sm.found_bin = 255 - threadIdx.x;
    sm.found_need = need - excl;
    sm.found_count = v;
  }
  __syncthreads();
}

__device__ __forceinline__ void clear_hist(SelectShared& sm) {
  sm.hist[threadIdx.x] = 0;  // NT == 256
  __syncthreads();
}

// Exact top-K among the running candidates (CE per thread, ordinals r*NT + tid < cand_count)
// and one tile of new elements (EN per thread, ordinals CE*NT + tile_ord(i)). Candidates always
// precede the tile in position, so ordinal order is position order. The K best, ascending by
// ordinal, replace sm.cand_score / sm.cand_pos; returns their count.
template <int CE, int EN, typename TileOrd, typename TilePos>
__device__ int select_top_k(SelectShared& sm, int K, int cand_count, const float (&cs)[CE], const int (&cp)[CE],
                            const float (&ts)[EN], uint32_t tvalid, TileOrd tile_ord, TilePos tile_pos) {
  const int tid = threadIdx.x;
  const int cand_base = CE * NT;

  int my_valid = __popc(tvalid);
#pragma unroll
  for (int r = 0; r < CE; ++r) my_valid += (r * NT + tid < cand_count) ? 1 : 0;
  const int total = pq_block_sum<NT>(my_valid, sm.scan);
  const bool take_all = total <= K;

  // Selection predicate state (uniform across the block).
  int bstar = 0;
  bool linear = false;
  float mn = 0.0f, scale = 0.0f;
  bool refine = false;
  int keep_shift = 0;
  uint64_t keep_prefix = 0;

  auto bin_of = [&](float s) -> int { return linear ? min(255, __float2int_rz((s - mn) * scale)) : 0; };
  auto key_of = [&](float s, int ord) -> uint64_t {
    return (static_cast<uint64_t>(pq_score_key(s)) << 32) | static_cast<uint32_t>(~ord);
  };

  if (!take_all) {
    // 1. Linear bins over [min, max] of the valid scores: a monotone map that spreads any
    //    distribution (even one straddling zero) over 256 bins.
    float lmn = INFINITY, lmx = -INFINITY;
#pragma unroll
    for (int r = 0; r < CE; ++r)
      if (r * NT + tid < cand_count) { lmn = fminf(lmn, cs[r]); lmx = fmaxf(lmx, cs[r]); }
#pragma unroll
    for (int i = 0; i < EN; ++i)
      if (tvalid >> i & 1u) { lmn = fminf(lmn, ts[i]); lmx = fmaxf(lmx, ts[i]); }
    pq_block_minmax<NT>(lmn, lmx, reinterpret_cast<float*>(sm.reduce));
    mn = lmn;
    const float range = lmx - lmn;
    scale = 256.0f / range;
    linear = lmx > lmn && isfinite(range) && isfinite(scale) && scale > 0.0f;

    clear_hist(sm);
#pragma unroll
    for (int r = 0; r < CE; ++r)
      if (r * NT + tid < cand_count) atomicAdd(&sm.hist[bin_of(cs[r])], 1);
#pragma unroll
    for (int i = 0; i < EN; ++i)
      if (tvalid >> i & 1u) atomicAdd(&sm.hist[bin_of(ts[i])], 1);
    __syncthreads();
    find_bin_from_top(sm, K);
    bstar = sm.found_bin;
    int need = sm.found_need;
    refine = sm.found_count != need;

    if (refine) {
      // 2. Radix passes over the unique 64-bit keys of the members of bin d*, starting at the
      //    highest bit where the members differ.
      uint32_t hmin = 0xffffffffu, hmax = 0u, omin = 0xffffffffu, omax = 0u;
#pragma unroll
      for (int r = 0; r < CE; ++r) {
        if (r * NT + tid < cand_count && bin_of(cs[r]) == bstar) {
          const uint32_t k = pq_score_key(cs[r]);
          const uint32_t o = r * NT + tid;
          hmin = min(hmin, k); hmax = max(hmax, k); omin = min(omin, o); omax = max(omax, o);
        }
      }
#pragma unroll
      for (int i = 0; i < EN; ++i) {
        if ((tvalid >> i & 1u) && bin_of(ts[i]) == bstar) {
          const uint32_t k = pq_score_key(ts[i]);
          const uint32_t o = cand_base + tile_ord(i);
          hmin = min(hmin, k); hmax = max(hmax, k); omin = min(omin, o); omax = max(omax, o);
        }
      }
      pq_block_minmax_u32<NT>(hmin, hmax, omin, omax, sm.reduce);
      const uint64_t lo_key = (static_cast<uint64_t>(hmin) << 32) | static_cast<uint32_t>(~omax);
      const uint64_t hi_key = (static_cast<uint64_t>(hmax) << 32) | static_cast<uint32_t>(~omin);
      int top = 63 - __clzll(static_cast<long long>(lo_key ^ hi_key));  // members differ at or below `top`
      uint64_t prefix = top >= 63 ? 0ull : (lo_key >> (top + 1));
      for (;;) {
        const int shift = max(top - 7, 0);
        const int width = top - shift + 1;
        const uint64_t mask = (1ull << width) - 1ull;
        clear_hist(sm);
        auto count = [&](uint64_t key) {
          if (top >= 63 || (key >> (top + 1)) == prefix) atomicAdd(&sm.hist[(key >> shift) & mask], 1);
        };
#pragma unroll
        for (int r = 0; r < CE; ++r)
          if (r * NT + tid < cand_count && bin_of(cs[r]) == bstar) count(key_of(cs[r], r * NT + tid));
#pragma unroll
        for (int i = 0; i < EN; ++i)
          if ((tvalid >> i & 1u) && bin_of(ts[i]) == bstar) count(key_of(ts[i], cand_base + tile_ord(i)));
        __syncthreads();
        find_bin_from_top(sm, need);
        prefix = (prefix << width) | static_cast<uint64_t>(sm.found_bin);
        need = sm.found_need;
        top = shift - 1;
        if (sm.found_count == need || top < 0) break;
      }
      keep_shift = top + 1;  // members with (key >> keep_shift) >= prefix are selected
      keep_prefix = prefix;
    }
  }

  auto selected = [&](float s, int ord) -> bool {
    if (take_all) return true;
    const int bin = bin_of(s);
    if (bin != bstar) return bin > bstar;
    return !refine || (key_of(s, ord) >> keep_shift) >= keep_prefix;
  };

  // 3. Ordered compaction through a bitmap over ordinals: slot = set bits below.
  const int words = (cand_base + EN * NT + 31) / 32;
  for (int w = tid; w < words; w += NT) sm.bitmap[w] = 0u;
  __syncthreads();
  uint32_t csel = 0u, tsel = 0u;
#pragma unroll
  for (int r = 0; r < CE; ++r) {
    const int o = r * NT + tid;
    if (o < cand_count && selected(cs[r], o)) {
      csel |= 1u << r;
      atomicOr(&sm.bitmap[o >> 5], 1u << (o & 31));
    }
  }
#pragma unroll
  for (int i = 0; i < EN; ++i) {
    const int o = cand_base + tile_ord(i);
    if ((tvalid >> i & 1u) && selected(ts[i], o)) {
      tsel |= 1u << i;
      atomicOr(&sm.bitmap[o >> 5], 1u << (o & 31));
    }
  }
  __syncthreads();
  constexpr int WPT = (MAX_BITMAP_WORDS + NT - 1) / NT;
  int local[WPT];
  int my_sum = 0;
#pragma unroll
  for (int k = 0; k < WPT; ++k) {
    const int w = tid * WPT + k;
    local[k] = w < words ? __popc(sm.bitmap[w]) : 0;
    my_sum += local[k];
  }
  int n_selected;
  int run = pq_block_exclusive_scan<NT>(my_sum, sm.scan, &n_selected);
#pragma unroll
  for (int k = 0; k < WPT; ++k) {
    const int w = tid * WPT + k;
    if (w < words) sm.word_prefix[w] = run;
    run += local[k];
  }
  __syncthreads();
  auto slot_of = [&](int o) { return sm.word_prefix[o >> 5] + __popc(sm.bitmap[o >> 5] & ((1u << (o & 31)) - 1u)); };
#pragma unroll
  for (int r = 0; r < CE; ++r) {
    if (csel >> r & 1u) {
      const int s = slot_of(r * NT + tid);
      sm.cand_score[s] = cs[r];
      sm.cand_pos[s] = cp[r];
    }
  }
#pragma unroll
  for (int i = 0; i < EN; ++i) {
    if (tsel >> i & 1u) {
      const int s = slot_of(cand_base + tile_ord(i));
      sm.cand_score[s] = ts[i];
      sm.cand_pos[s] = tile_pos(i);
    }
  }
  __syncthreads();
  return n_selected;
}

template <int CE>
__device__ __forceinline__ void load_candidates(const SelectShared& sm, int cand_count, float (&cs)[CE], int (&cp)[CE]) {
#pragma unroll
  for (int r = 0; r < CE; ++r) {
    const int o = r * NT + threadIdx.x;
    cs[r] = o < cand_count ? sm.cand_score[o] : 0.0f;
    cp[r] = o < cand_count ? sm.cand_pos[o] : 0;
  }
}

template <int M, int CE>
__device__ void select_impl(const PqStepRows& query, const float* __restrict__ centroids,
                            const uint8_t* __restrict__ codes, const int* __restrict__ seq_state, float* cand_score_g,
                            int* cand_pos_g, int* cand_count_g, unsigned* counters, OutputArgs out, int* status, int H,
                            int Hkv, int D, int C, int cstride, int capacity, int S, int W, int K, int O,
                            int full_threshold, int num_slices, int slice_len) {
  constexpr int PPC = 16 / M;      // positions per 16-byte code chunk
  constexpr int CH = E / PPC;      // chunks per thread per tile
  __shared__ SelectShared sm;
  const int tid = threadIdx.x;
  const int row = blockIdx.y;
  const int slice = blockIdx.x;
  const int b = row / H;
  const int h = row - b * H;
  const int kvh = h / (H / Hkv);
  const int sk = seq_state[0];

  if (sk <= full_threshold) {
    if (slice == 0) write_row<NT>(sm.cand_pos, out, row, sk, S, W, 0, true);
    return;
  }
  const int lo = max(O, S);
  const int hi = sk - W;
  const int span_start = (lo / PPC) * PPC;
  const int s0 = span_start + slice * slice_len;
  const int s1 = min(s0 + slice_len, hi);
  const uint8_t* head_codes = codes + static_cast<int64_t>(b * Hkv + kvh) * capacity * M;

  // Issue the first tile's code loads before building the LUT, so their latency overlaps it.
  uint4 raw[CH];
#pragma unroll
  for (int c = 0; c < CH; ++c) {
    const int p0 = s0 + (c * NT + tid) * PPC;
    raw[c] = p0 < s1 ? __ldg(reinterpret_cast<const uint4*>(head_codes + static_cast<int64_t>(p0) * M)) : make_uint4(0, 0, 0, 0);
  }

  // Query row and LUT[m][c] = <q_m, centroid[b, kvh, m, c, :dsub]> (4 lanes per entry).
  const int query_offset = query.row_offset(b, h);
  for (int d = tid; d < D; d += NT) {
    const float v = pq_load_float(query.ptr, query.dtype, query_offset + d);
    if (!isfinite(v)) pq_flag_status(status, PQ_STATUS_QUERY_NONFINITE);
    sm.q[d] = v;
  }
  __syncthreads();
  const int dsub = D / M;
  const int entries = M * C;
  const float* head_centroids = centroids + static_cast<int64_t>(b * Hkv + kvh) * M * C * cstride;
#pragma unroll 2
  for (int e0 = 0; e0 < entries; e0 += NT / 4) {
    const int e = e0 + (tid >> 2);
    const int lane4 = tid & 3;
    float acc = 0.0f;
    if (e < entries) {
      const int m = e / C;
      const float4* crow = reinterpret_cast<const float4*>(head_centroids + static_cast<int64_t>(e) * cstride);
      const float4* qv = reinterpret_cast<const float4*>(sm.q + m * dsub);
#pragma unroll 4
      for (int j4 = lane4; j4 < dsub / 4; j4 += 4) {
        const float4 cv = __ldg(crow + j4);
        const float4 x = qv[j4];
        acc += x.x * cv.x + x.y * cv.y + x.z * cv.z + x.w * cv.w;
      }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    if (e < entries && lane4 == 0) sm.lut[e] = acc;
  }
  __syncthreads();

  // Stream the slice through tiles, keeping the running top-K in sm.cand_*.
  int cand_count = 0;
  for (int t0 = s0; t0 < s1; t0 += TILE) {
    if (t0 != s0) {
#pragma unroll
      for (int c = 0; c < CH; ++c) {
        const int p0 = t0 + (c * NT + tid) * PPC;
        raw[c] = p0 < s1 ? __ldg(reinterpret_cast<const uint4*>(head_codes + static_cast<int64_t>(p0) * M)) : make_uint4(0, 0, 0, 0);
      }
    }
    float ts[E];
    uint32_t tvalid = 0u;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      const uint32_t w[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
#pragma unroll
      for (int j = 0; j < PPC; ++j) {
        const int p = t0 + (c * NT + tid) * PPC + j;
        float s = 0.0f;
#pragma unroll
        for (int m = 0; m < M; ++m) {
          const int byte = j * M + m;
          const uint32_t code = (w[byte >> 2] >> (8 * (byte & 3))) & 0xffu;
          s += sm.lut[m * C + code];
        }
        ts[c * PPC + j] = s;
        if (p >= lo && p < s1) tvalid |= 1u << (c * PPC + j);
      }
    }
    float cs[CE];
    int cp[CE];
    load_candidates<CE>(sm, cand_count, cs, cp);
    const int tile_pos0 = t0;
    cand_count = select_top_k<CE, E>(
        sm, K, cand_count, cs, cp, ts, tvalid,
        [&](int i) { return ((i / PPC) * NT + tid) * PPC + (i % PPC); },
        [&](int i) { return tile_pos0 + ((i / PPC) * NT + tid) * PPC + (i % PPC); });
  }

  if (num_slices == 1) {
    write_row<NT>(sm.cand_pos, out, row, sk, S, W, cand_count, false);
    return;
  }

  // Publish this slice's candidates; the last block of the row merges them.
  const int64_t g = (static_cast<int64_t>(row) * num_slices + slice) * K;
  for (int i = tid; i < cand_count; i += NT) {
    cand_score_g[g + i] = sm.cand_score[i];
    cand_pos_g[g + i] = sm.cand_pos[i];
  }
  if (tid == 0) cand_count_g[row * num_slices + slice] = cand_count;
  __threadfence();
  __syncthreads();
  if (tid == 0) sm.is_last = atomicAdd(&counters[row], 1u) == static_cast<unsigned>(num_slices - 1);
  __syncthreads();
  if (!sm.is_last) return;
  __threadfence();
  if (tid == 0) counters[row] = 0u;

  const int flat = num_slices * K;
  cand_count = 0;
  for (int f0 = 0; f0 < flat; f0 += EM * NT) {
    float ts[EM];
    int tp[EM];
    uint32_t tvalid = 0u;
#pragma unroll
    for (int i = 0; i < EM; ++i) {
      const int f = f0 + i * NT + tid;
      ts[i] = 0.0f;
      tp[i] = 0;
      if (f < flat) {
        const int sl = f / K;
        if (f - sl * K < __ldcg(cand_count_g + row * num_slices + sl)) {
          ts[i] = __ldcg(cand_score_g + static_cast<int64_t>(row) * flat + f);
          tp[i] = __ldcg(cand_pos_g + static_cast<int64_t>(row) * flat + f);
          tvalid |= 1u << i;
        }
      }
    }
    float cs[CE];
    int cp[CE];
    load_candidates<CE>(sm, cand_count, cs, cp);
    cand_count = select_top_k<CE, EM>(
        sm, K, cand_count, cs, cp, ts, tvalid, [&](int i) { return i * NT + tid; }, [&](int i) { return tp[i]; });
  }
  write_row<NT>(sm.cand_pos, out, row, sk, S, W, cand_count, false);
}

}  // namespace

#define PQ_SELECT_KERNEL(M, CE)                                                                                       \
  extern "C" __global__ void __launch_bounds__(NT, 2) pq_select_m##M##_c##CE(                                           \
      const void* query, int qdtype, int query_batch_stride, int query_head_stride, const float* centroids,        \
      const uint8_t* codes, const int* seq_state,                                                                  \
      float* cand_score, int* cand_pos, int* cand_count, unsigned* counters, int* sparse_list, int* sparse_len,      \
      void* weights, int wdtype, long long wstride, int L, int* status, int H, int Hkv, int D, int C, int cstride, \
      int capacity, int S, int W, int K, int O, int full_threshold, int num_slices, int slice_len) {                 \
    const OutputArgs out{sparse_list, sparse_len, weights, wdtype, wstride, L};                                     \
    select_impl<M, CE>(PQ_STEP_QUERY, centroids, codes, seq_state, cand_score, cand_pos, cand_count, counters, out,  \
                       status, H, Hkv, D, C, cstride, capacity, S, W, K, O, full_threshold, num_slices, slice_len);  \
  }

// CE = candidates per thread: K <= 256 uses CE = 1, K <= 2048 uses CE = 8.
#define PQ_SELECT_KERNELS_FOR_M(M) \
  PQ_SELECT_KERNEL(M, 1)           \
  PQ_SELECT_KERNEL(M, 8)

PQ_SELECT_KERNELS_FOR_M(1)
PQ_SELECT_KERNELS_FOR_M(2)
PQ_SELECT_KERNELS_FOR_M(4)
PQ_SELECT_KERNELS_FOR_M(8)
