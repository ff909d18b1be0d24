// Decode-step select for M <= 2 through a pair-count table (the fast path; select.cu is general).
//
// With M <= 2 a score takes one of at most P = C^M values: s(c0, c1) = LUT[0][c0] + LUT[1][c1].
// pair_count[b, kvh, c0 + C*c1] counts the eligible positions (max(O, S) <= p < sk - W) carrying
// that code combination; append.cu keeps it exact at every step. The K-th largest score is then a
// weighted select over P pair scores, independent of sk, and the pass over the positions only
// classifies each one by a table lookup (take / tie / skip) and compacts in position order.
//
// pq_select_pairs_m{M}: launch grid (num_slices, B*H), block NT = 256, static shared memory.
//   Every block of a row computes the row's LUT and threshold (the same, deterministically), then
//   scans its slice: thread t owns 16 consecutive positions of each 4096-position tile. It writes
//   its take positions and its first `need` tie positions, in order, to its slice list; the last
//   block of the row (atomic counter, reset by it) keeps every take and the ties of lowest position
//   (tie rank below need minus the ties of earlier slices), and writes the list and the weights.
// Invariants (src/pq/cuda-cache.ts): seq_state[0] = sk; pair_count exact for sk; C^M <= MAX_PAIRS;
//   K <= MAX_K; slice_len % 256 == 0; num_slices * slice_len covers [lo & ~15, sk - W);
//   slice_pos/slice_tag hold 2K entries per (row, slice); counters[row] == 0 before a launch.
//
// pq_pairs_count: pair_count[b, kvh, pair(p)] += 1 for p in [from, to). Launch: grid
//   (ceil((to - from) / 256), B*Hkv), block 256. Used after an upload (from a zeroed table) and after
//   multi-key appends.
#include "common.cuh"
#include "select_common.cuh"

namespace {

constexpr int NT = 256;
constexpr int E = 16;             // consecutive positions per thread per tile
constexpr int TILE = NT * E;
constexpr int MAX_D = 1024;
constexpr int MAX_PAIRS = 16384;
constexpr int MAX_K = 2048;
constexpr int MAX_MEMBERS = 1024;
constexpr int MAX_SLICES = 64;
constexpr int NW = NT / 32;

enum : uint8_t { CLS_SKIP = 0, CLS_TIE = 1, CLS_TAKE = 2 };

struct PairShared {
  float q[MAX_D];
  float lut[512];
  uint8_t cls[MAX_PAIRS];
  uint32_t member_key[MAX_MEMBERS];
  uint32_t member_w[MAX_MEMBERS];
  int heavy[MAX_K];
  int hist[256];
  uint32_t reduce[4 * NW];
  int scan[NW];
  float bounds[4];
  int slice_ties[MAX_SLICES];
  int slice_quota[MAX_SLICES];
  int slice_stored[MAX_SLICES];
  int n_members;
  int found_bin;
  int found_need;
  int found_count;
  int is_last;
};

__device__ __forceinline__ int pair_index(int M, int C, uint32_t c0, uint32_t c1) {
  return M == 1 ? static_cast<int>(c0) : static_cast<int>(c0 + C * c1);
}

__device__ __forceinline__ float pair_score(const float* lut, int M, int C, int i) {
  return M == 1 ? lut[i] : lut[i % C] + lut[C + i / C];
}

// bin d* of 256 (weighted) bins holding the need-th largest: above < need <= above + hist[d*].
__device__ __forceinline__ void find_bin(PairShared& sm, int need) {
  const int v = sm.hist[255 - threadIdx.x];
  int total;
  const int excl = pq_block_exclusive_scan<NT>(v, sm.scan, &total);
  if (excl < need && excl + v >= need) {
    sm.found_bin = 255 - threadIdx.x;
    sm.found_need = need - excl;
    sm.found_count = v;
  }
  __syncthreads();
}

// The row's classification of the P pair scores into sm.cls; returns the tie quota (positions
// with a tie-class score to take, lowest first), 0 when there are no ties to break.
template <int M>
__device__ int classify_pairs(PairShared& sm, const unsigned* __restrict__ table, int C, int K, int total) {
  const int tid = threadIdx.x;
  const int pairs = M == 1 ? C : C * C;
  if (total <= K) {
    for (int i = tid; i < pairs; i += NT) sm.cls[i] = CLS_TAKE;
    __syncthreads();
    return 0;
  }
  // Score bounds from the LUT alone: s = l0 + l1 is monotone in each term.
  if (tid < 32 * M) {
    const int m = tid >> 5;
    float mn = INFINITY, mx = -INFINITY;
    for (int c = tid & 31; c < C; c += 32) {
      mn = fminf(mn, sm.lut[m * C + c]);
      mx = fmaxf(mx, sm.lut[m * C + c]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
    if ((tid & 31) == 0) {
      sm.bounds[2 * m] = mn;
      sm.bounds[2 * m + 1] = mx;
    }
  }
  sm.hist[tid] = 0;
  if (tid == 0) sm.n_members = 0;
  __syncthreads();
  const float lo_b = M == 1 ? sm.bounds[0] : sm.bounds[0] + sm.bounds[2];
  const float hi_b = M == 1 ? sm.bounds[1] : sm.bounds[1] + sm.bounds[3];
  const float range = hi_b - lo_b;
  const float scale = 256.0f / range;
  const bool linear = hi_b > lo_b && isfinite(range) && isfinite(scale) && scale > 0.0f;
  auto bin_of = [&](float s) -> int { return linear ? min(255, max(0, __float2int_rz((s - lo_b) * scale))) : 0; };

#pragma unroll 16
  for (int i = tid; i < pairs; i += NT) {
    const unsigned w = __ldg(table + i);
    if (w != 0u) atomicAdd(&sm.hist[bin_of(pair_score(sm.lut, M, C, i))], static_cast<int>(w));
  }
  __syncthreads();
  find_bin(sm, K);
  const int bstar = sm.found_bin;
  int need = sm.found_need;
  const bool whole_bin = sm.found_count == need;

  // Refine inside bin d*: a weighted radix select on the members' score keys.
  int shift = 32;
  uint32_t prefix = 0u;
  bool partial = false;
  if (!whole_bin) {
#pragma unroll 16
    for (int i = tid; i < pairs; i += NT) {
      const unsigned w = __ldg(table + i);
      if (w == 0u) continue;
      const float s = pair_score(sm.lut, M, C, i);
      if (bin_of(s) != bstar) continue;
      const int slot = atomicAdd(&sm.n_members, 1);
      if (slot < MAX_MEMBERS) {
        sm.member_key[slot] = pq_score_key(s);
        sm.member_w[slot] = w;
      }
    }
    __syncthreads();
    const int n_members = sm.n_members;
    const bool listed = n_members <= MAX_MEMBERS;
    // Iterate over the members (the list, or all pairs again when the bin is too crowded).
    auto for_members = [&](auto&& f) {
      if (listed) {
        for (int j = tid; j < n_members; j += NT) f(sm.member_key[j], sm.member_w[j]);
      } else {
        for (int i = tid; i < pairs; i += NT) {
          const unsigned w = __ldg(table + i);
          if (w == 0u) continue;
          const float s = pair_score(sm.lut, M, C, i);
          if (bin_of(s) == bstar) f(pq_score_key(s), w);
        }
      }
    };
    uint32_t kmin = 0xffffffffu, kmax = 0u, unused0 = 0u, unused1 = 0u;
    for_members([&](uint32_t k, uint32_t) { kmin = min(kmin, k); kmax = max(kmax, k); });
    pq_block_minmax_u32<NT>(kmin, kmax, unused0, unused1, sm.reduce);
    if (kmin == kmax) {
      shift = 0;
      prefix = kmin;
      partial = true;  // one score value, more positions than needed: ties
    } else {
      int top = 31 - __clz(kmin ^ kmax);
      prefix = top >= 31 ? 0u : (kmin >> (top + 1));
      for (;;) {
        const int sh = max(top - 7, 0);
        const int width = top - sh + 1;
        const uint32_t mask = (1u << width) - 1u;
        sm.hist[tid] = 0;
        __syncthreads();
        for_members([&](uint32_t k, uint32_t w) {
          if (top >= 31 || (k >> (top + 1)) == prefix) atomicAdd(&sm.hist[(k >> sh) & mask], static_cast<int>(w));
        });
        __syncthreads();
        find_bin(sm, need);
        prefix = (prefix << width) | static_cast<uint32_t>(sm.found_bin);
        need = sm.found_need;
        shift = sh;
        top = sh - 1;
        if (sm.found_count == need) break;  // the whole group is taken
        if (top < 0) {
          partial = true;  // one exact score value with more positions than needed
          break;
        }
      }
    }
  }

  for (int i = tid; i < pairs; i += NT) {
    const float s = pair_score(sm.lut, M, C, i);
    const int bin = bin_of(s);
    uint8_t c = CLS_SKIP;
    if (bin > bstar) {
      c = CLS_TAKE;
    } else if (bin == bstar) {
      if (whole_bin) {
        c = CLS_TAKE;
      } else {
        const uint32_t k = pq_score_key(s) >> shift;
        if (k > prefix || (k == prefix && !partial)) c = CLS_TAKE;
        else if (k == prefix) c = CLS_TIE;
      }
    }
    sm.cls[i] = c;
  }
  __syncthreads();
  return partial ? need : 0;
}

template <int M>
__device__ void select_pairs_impl(const void* __restrict__ query, int qdtype, const float* __restrict__ centroids,
                                  const uint8_t* __restrict__ codes, const int* __restrict__ seq_state,
                                  const unsigned* __restrict__ pair_count, int* slice_pos, int* slice_tag,
                                  int* slice_meta, unsigned* counters, OutputArgs out, int* status, int H, int Hkv, int D,
                                  int C, int cstride, int capacity, int S, int W, int K, int O, int full_threshold,
                                  int num_slices, int slice_len) {
  __shared__ PairShared sm;
  const int tid = threadIdx.x;
  const int row = blockIdx.y;
  const int slice = blockIdx.x;
  const int b = row / H;
  const int h = row - b * H;
  const int kvh = h / (H / Hkv);
  const int bkv = b * Hkv + kvh;
  const int lo = max(O, S);
  const int s0 = (lo & ~15) + slice * slice_len;
  const uint8_t* head_codes = codes + static_cast<int64_t>(bkv) * capacity * M;
  constexpr int CHUNKS = M;  // 16 positions x M bytes = M uint4 per thread
  uint4 raw[CHUNKS];
  // Loads bounded by `limit`; the first tile is prefetched against the capacity, before sk arrives
  // (codes past sk are stale or zero and get masked by the position check).
  auto load_tile = [&](int t0, int limit) {
    const int p0 = t0 + tid * E;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
      raw[c] = p0 < limit ? __ldg(reinterpret_cast<const uint4*>(head_codes + static_cast<int64_t>(p0) * M) + c) : make_uint4(0, 0, 0, 0);
  };
  load_tile(s0, min(s0 + slice_len, capacity));
  const int sk = seq_state[0];
  if (sk <= full_threshold) {
    if (slice == 0) write_row<NT>(sm.heavy, out, row, sk, S, W, 0, true);
    return;
  }
  const int hi = sk - W;
  const int total = max(0, hi - lo);
  const int s1 = min(s0 + slice_len, hi);

  // LUT[m][c] = <q_m, centroid[b, kvh, m, c, :dsub]> (4 lanes per entry).
  for (int d = tid; d < D; d += NT) {
    const float v = pq_load_float(query, qdtype, static_cast<int64_t>(row) * D + d);
    if (!isfinite(v)) atomicOr(status, PQ_STATUS_QUERY_NONFINITE);
    sm.q[d] = v;
  }
  __syncthreads();
  const int dsub = D / M;
  const float* head_centroids = centroids + static_cast<int64_t>(bkv) * M * C * cstride;
#pragma unroll 2
  for (int e0 = 0; e0 < M * C; e0 += NT / 4) {
    const int e = e0 + (tid >> 2);
    float acc = 0.0f;
    if (e < M * C) {
      const float4* crow = reinterpret_cast<const float4*>(head_centroids + static_cast<int64_t>(e) * cstride);
      const float4* qv = reinterpret_cast<const float4*>(sm.q + (e / C) * dsub);
#pragma unroll 4
      for (int j4 = tid & 3; j4 < dsub / 4; j4 += 4) {
        const float4 cv = __ldg(crow + j4);
        const float4 x = qv[j4];
        acc += x.x * cv.x + x.y * cv.y + x.z * cv.z + x.w * cv.w;
      }
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    if (e < M * C && (tid & 3) == 0) sm.lut[e] = acc;
  }
  __syncthreads();

  const int pairs = M == 1 ? C : C * C;
  const int quota = classify_pairs<M>(sm, pair_count + static_cast<int64_t>(bkv) * pairs, C, K, total);

  // Scan the slice: classify, count, and write takes and the first `quota` ties in order.
  const int cap = 2 * K;
  int* my_pos = slice_pos + (static_cast<int64_t>(row) * num_slices + slice) * cap;
  int* my_tag = slice_tag + (static_cast<int64_t>(row) * num_slices + slice) * cap;
  int take_base = 0, tie_base = 0;
  for (int t0 = s0; t0 < s1; t0 += TILE) {
    if (t0 != s0) load_tile(t0, s1);
    const int p0 = t0 + tid * E;
    uint32_t take_bits = 0u, tie_bits = 0u;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int p = p0 + j;
      uint32_t c0, c1 = 0u;
      if (M == 1) {
        const uint32_t w = (&raw[0].x)[j >> 2];
        c0 = (w >> (8 * (j & 3))) & 0xffu;
      } else {
        const uint32_t w = (&raw[0].x)[j >> 1];  // 2 bytes per position
        c0 = (w >> (16 * (j & 1))) & 0xffu;
        c1 = (w >> (16 * (j & 1) + 8)) & 0xffu;
      }
      const uint8_t c = (p >= lo && p < s1) ? sm.cls[pair_index(M, C, c0, c1)] : CLS_SKIP;
      take_bits |= (c == CLS_TAKE ? 1u : 0u) << j;
      tie_bits |= (c == CLS_TIE ? 1u : 0u) << j;
    }
    int tile_total;
    const int packed = pq_block_exclusive_scan<NT>(__popc(take_bits) | (__popc(tie_bits) << 16), sm.scan, &tile_total);
    int take_before = take_base + (packed & 0xffff);
    int tie_before = tie_base + (packed >> 16);
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const bool take = take_bits >> j & 1u;
      const bool tie = tie_bits >> j & 1u;
      if (take || (tie && tie_before < quota)) {
        const int slot = take_before + min(tie_before, quota);
        if (slot < cap) {
          my_pos[slot] = p0 + j;
          my_tag[slot] = take ? -1 : tie_before;
        }
      }
      take_before += take ? 1 : 0;
      tie_before += tie ? 1 : 0;
    }
    take_base += tile_total & 0xffff;
    tie_base += tile_total >> 16;
  }
  const int stored = min(take_base + min(tie_base, quota), cap);

  // Publish; the last block of the row assembles the list.
  if (tid == 0) {
    slice_meta[(row * num_slices + slice) * 2] = stored;
    slice_meta[(row * num_slices + slice) * 2 + 1] = tie_base;
  }
  if (num_slices > 1) {
    __threadfence();
    __syncthreads();
    if (tid == 0) sm.is_last = atomicAdd(&counters[row], 1u) == static_cast<unsigned>(num_slices - 1);
    __syncthreads();
    if (!sm.is_last) return;
    __threadfence();
    if (tid == 0) counters[row] = 0u;
  } else {
    __syncthreads();
  }
  // One lane per slice loads its counts; a warp scan gives the ties of earlier slices.
  if (tid < 32) {
    int ties_before = 0;
    for (int s0w = 0; s0w < num_slices; s0w += 32) {
      const int s = s0w + tid;
      const int st = s < num_slices ? __ldcg(slice_meta + (row * num_slices + s) * 2) : 0;
      const int ti = s < num_slices ? __ldcg(slice_meta + (row * num_slices + s) * 2 + 1) : 0;
      const int inc = pq_warp_inclusive_scan(ti);
      if (s < num_slices) {
        sm.slice_stored[s] = st;
        sm.slice_quota[s] = max(0, min(ti, quota - (ties_before + inc - ti)));
      }
      ties_before += __shfl_sync(0xffffffffu, inc, 31);
    }
  }
  __syncthreads();
  const int flat = num_slices * cap;
  const int* row_pos = slice_pos + static_cast<int64_t>(row) * flat;
  const int* row_tag = slice_tag + static_cast<int64_t>(row) * flat;
  int base = 0;
  for (int f0 = 0; f0 < flat; f0 += NT * E) {
    // Thread t takes E consecutive entries, so the scan keeps the (position) order.
    uint32_t sel = 0u;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int f = f0 + tid * E + j;
      if (f < flat) {
        const int s = f / cap;
        const int idx = f - s * cap;
        if (idx < sm.slice_stored[s]) {
          const int tag = __ldcg(row_tag + f);
          if (tag < 0 || tag < sm.slice_quota[s]) sel |= 1u << j;
        }
      }
    }
    int chunk_total;
    int at = base + pq_block_exclusive_scan<NT>(__popc(sel), sm.scan, &chunk_total);
#pragma unroll
    for (int j = 0; j < E; ++j) {
      if (sel >> j & 1u) {
        if (at < MAX_K) sm.heavy[at] = __ldcg(row_pos + f0 + tid * E + j);
        ++at;
      }
    }
    base += chunk_total;
  }
  __syncthreads();
  write_row<NT>(sm.heavy, out, row, sk, S, W, min(base, K), false);
}

}  // namespace

#define PQ_SELECT_PAIRS_KERNEL(M)                                                                                    \
  extern "C" __global__ void __launch_bounds__(NT) pq_select_pairs_m##M(                                           \
      const void* query, int qdtype, const float* centroids, const uint8_t* codes, const int* seq_state,          \
      const unsigned* pair_count, int* slice_pos, int* slice_tag, int* slice_meta, unsigned* counters,             \
      int* sparse_list, int* sparse_len, void* weights, int wdtype, long long wstride, int L, int* status, int H,   \
      int Hkv, int D, int C, int cstride, int capacity, int S, int W, int K, int O, int full_threshold,            \
      int num_slices, int slice_len) {                                                                             \
    const OutputArgs out{sparse_list, sparse_len, weights, wdtype, wstride, L};                                    \
    select_pairs_impl<M>(query, qdtype, centroids, codes, seq_state, pair_count, slice_pos, slice_tag, slice_meta, \
                         counters, out, status, H, Hkv, D, C, cstride, capacity, S, W, K, O, full_threshold,         \
                         num_slices, slice_len);                                                                   \
  }

PQ_SELECT_PAIRS_KERNEL(1)
PQ_SELECT_PAIRS_KERNEL(2)

extern "C" __global__ void __launch_bounds__(256) pq_pairs_count(const uint8_t* codes, unsigned* pair_count, int from,
                                                                  int to, int capacity, int M, int C) {
  const int p = from + blockIdx.x * 256 + threadIdx.x;
  const int bkv = blockIdx.y;
  if (p >= to) return;
  const uint8_t* c = codes + (static_cast<int64_t>(bkv) * capacity + p) * M;
  const int idx = M == 1 ? c[0] : c[0] + C * c[1];
  atomicAdd(&pair_count[static_cast<int64_t>(bkv) * (M == 1 ? C : C * C) + idx], 1u);
}
