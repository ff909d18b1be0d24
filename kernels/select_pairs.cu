// Decode step for M <= 2 through a pair-count table (the fast path; select.cu is the general path).
//
// With M <= 2 a score takes one of at most P = C^M values: s(c0, c1) = LUT[0][c0] + LUT[1][c1].
// pair_count[b, kvh, c0 + C*c1] counts the positions of the eligible range [lo, sk - W)
// (lo = max(O, S)) that carry the code pair. The K-th largest score is then a weighted select over
// the pair scores, independent of sk, and the pass over the positions only classifies each one by
// a table lookup (take / tie / skip) and compacts in position order.
//
// pq_step_pairs_m{M}_p{CL} (short slices, ≤ 3 tiles of 4096 positions) and
// pq_step_pairs_long_m{M}_p{CL} (longer: the next code tile in flight during the scan, and
// per-(tile, warp) count prefixes instead of a block scan per tile in the write pass): one launch per
// decode step.
//   Grid (CL, rows + append_rows), block NT = 256, thread-block clusters of CL blocks along x
//   (CL = 1 on GPUs before sm_90); dynamic shared memory (bits_tiles * 2 * NT + tiles * 2 * NT/32) * 4
//   bytes, tiles = ceil(slice_len / 4096): the take and tie bits of the slice's first bits_tiles
//   tiles, kept from the scan for the write pass (tiles beyond are loaded and classified again), and
//   per-(tile, warp) count prefixes. Cluster y < rows selects for query head `row = y`; its block of
//   rank r owns slice r of the positions and 1/CL of the pairs. The blocks exchange partial weight
//   histograms, boundary-bin members and pair classes through distributed shared memory, so every
//   block derives the same threshold; each block then writes its heavy hitters straight into the
//   row of sparseList at the offset given by the cluster prefix of (take, tie) counts.
//   Rows y >= rows are append blocks (only when `appended`): block a = (y - rows)*CL + x codes the
//   new key of kv-head a at position sk_old (append_block.cuh; its row from PqStepKey); block 0
//   writes *seq_write.
//   Programmatic dependent launch (a decode layer): every block first lets the kernel launched
//   behind this one start (pq_allow_dependents: the attention, which waits for this grid) and last
//   waits for the kernel before it (pq_wait_for_previous: the K/V append, not read here).
// Step semantics: sk_old = *seq_read; sk = sk_old + appended. With appended, W >= 1 (the host
//   uses pq_append + appended = 0 when W == 0), so the new key lies in the window: no select block
//   reads its code. The position q = sk_old - W enters the eligible range: its pair is counted
//   virtually by this step's readers, and added to pair_count by the last of the G query heads of
//   its kv-head to finish reading the table (readers[b, kvh] counter, reset by that head).
// Invariants (src/pq/cuda-cache.ts): pair_count exact for [lo, sk_old - W); C^M <= MAX_PAIRS and C a
//   power of two; K <= 2048; slice_len % 256 == 0; CL * slice_len covers [lo & ~15, sk - W);
//   readers[] == 0 before a launch; sparse_len/sparse_list/weights hold the previous output.
//   phase_clock (optional, for `bench --phases`): clock64 stamps of each phase, 16 per block.
//
// pq_pairs_count: pair_count[b, kvh, pair(p)] += 1 for p in [from, to). Launch: grid
//   (ceil((to - from) / 256), B*Hkv), block 256. After an upload (on a zeroed table) and after
//   multi-key appends.
#include <cooperative_groups.h>

#include "append_block.cuh"
#include "select_common.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int NT = 256;
constexpr int E = 16;  // consecutive positions per thread per tile
constexpr int TILE = NT * E;
constexpr int MAX_D = PQ_APPEND_MAX_D;
constexpr int MAX_PAIRS = 16384;
constexpr int GATHERED_MEMBERS = 1024;  // boundary-bin members listed (more: recomputed per pass)
constexpr int SMEM_WEIGHTS = 4096;      // pair counts staged in shared memory (the rest read from L2)
constexpr int NW = NT / 32;

enum : uint8_t { CLS_SKIP = 0, CLS_TIE = 1, CLS_TAKE = 2 };

struct StepShared {
  float x[MAX_D + PQ_APPEND_MAX_M];  // query (select blocks) or key (append blocks)
  float lut[512];
  union {
    uint8_t cls[MAX_PAIRS];             // pair classes (written last)
    unsigned weights[SMEM_WEIGHTS];     // the pair table's first 4096 counts (read before that)
    float dist[PQ_APPEND_MAX_ENTRIES];  // append blocks
  };
  int hist[256];
  uint32_t short_bits[2 * 2 * NT];  // short slices: [tile < 2][take, tie][NT] class bits (no dynamic memory)
  uint32_t all_key[GATHERED_MEMBERS];  // boundary-bin members
  uint32_t all_w[GATHERED_MEMBERS];
  uint32_t reduce[4 * NW];
  int scan[NW];
  float bounds[4];
  int n_members;
  uint32_t found_key;
  int counts[2];   // this block's (take, tie) positions (read by the cluster)
  int best_code[PQ_APPEND_MAX_M];
  int found_bin, found_need, found_count;
};

// ---- cluster helpers (a cluster of one block before sm_90) ----
__device__ __forceinline__ void cluster_sync() {
#if __CUDA_ARCH__ >= 900
  cg::this_cluster().sync();
#else
  __syncthreads();
#endif
}

template <typename T>
__device__ __forceinline__ T* peer(T* local, int rank) {
#if __CUDA_ARCH__ >= 900
  return cg::this_cluster().map_shared_rank(local, rank);
#else
  return local;
#endif
}

// bin d* of the 256 weighted bins in `hist` holding the need-th largest.
__device__ __forceinline__ void find_bin(StepShared& sm, const int* hist, int need) {
  const int v = hist[255 - threadIdx.x];
  int total;
  const int excl = pq_block_exclusive_scan<NT>(v, sm.scan, &total);
  if (excl < need && excl + v >= need) {
    sm.found_bin = 255 - threadIdx.x;
    sm.found_need = need - excl;
    sm.found_count = v;
  }
  __syncthreads();
}

struct Threshold {
  int bstar;        // linear bin of the K-th largest
  bool whole_bin;   // every position of bin d* is taken
  int shift;        // else: keys with (key >> shift) > prefix are taken, == prefix tie or taken
  uint32_t prefix;
  bool partial;     // == prefix: ties, of which `quota` (lowest positions) are taken
  int quota;
};

// The row's threshold over the pair scores and the class of every pair in sm.cls; every block of
// the cluster computes the same, with no exchange. Loops are kept rolled on purpose: each block
// runs this once, so instruction fetch, not arithmetic, is the cost of unrolled code.
template <int M, typename Stamp>
__device__ void select_row(StepShared& sm, const unsigned* __restrict__ table, int virtual_pair, int C, int log2c, int K,
                           Threshold& th, bool take_all, Stamp stamp) {
  const int tid = threadIdx.x;
  const int pairs = M == 1 ? C : C << log2c;
  auto score_of = [&](int i) -> float {
    return M == 1 ? sm.lut[i] : sm.lut[i & (C - 1)] + sm.lut[C + (i >> log2c)];
  };
  auto weight_of = [&](int i) -> unsigned {
    return (i < SMEM_WEIGHTS ? sm.weights[i] : __ldg(table + i)) + (i == virtual_pair ? 1u : 0u);
  };
  th = Threshold{0, true, 32, 0u, false, 0};
  if (take_all) {
    for (int i = tid; i < pairs; i += NT) sm.cls[i] = CLS_TAKE;
    __syncthreads();
    return;
  }
  // Score bounds from the LUT alone (s = l0 + l1 is monotone in each term): linear bins.
  if (tid < 32 * M) {
    const int m = tid >> 5;
    float mn, mx;
    pq_lut_row_range(sm.lut + m * C, C, mn, mx);
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

  // 1. Weighted histogram and the bin d* of the K-th largest.
#pragma unroll 4
  for (int i = tid; i < pairs; i += NT) {
    const unsigned w = weight_of(i);
    if (w != 0u) atomicAdd(&sm.hist[bin_of(score_of(i))], static_cast<int>(w));
  }
  __syncthreads();
  find_bin(sm, sm.hist, K);
  stamp(2);  // PH_HIST
  th.bstar = sm.found_bin;
  int need = sm.found_need;
  th.whole_bin = sm.found_count == need;

  if (!th.whole_bin) {
    // 2. Members of bin d*.
    auto add_member = [&](float s, unsigned w) {
      const int slot = atomicAdd(&sm.n_members, 1);
      if (slot < GATHERED_MEMBERS) {
        sm.all_key[slot] = pq_score_key(s);
        sm.all_w[slot] = w;
      }
    };
#pragma unroll 4
    for (int i = tid; i < pairs; i += NT) {
      const float s = score_of(i);
      if (bin_of(s) != th.bstar) continue;
      const unsigned w = weight_of(i);
      if (w != 0u) add_member(s, w);
    }
    __syncthreads();
    stamp(3);  // PH_MEMBERS
    const int gathered = sm.n_members;
    const bool overflow = gathered > GATHERED_MEMBERS;
    if (!overflow && gathered <= NT) {
      // 3a. Few members: rank them all at once.
      pq_rank_members(sm.all_key, sm.all_w, gathered, need, &sm.found_key, &sm.found_need, &sm.found_count);
      __syncthreads();
      th.shift = 0;
      th.prefix = sm.found_key;
      need = sm.found_need;
      th.partial = sm.found_count > need;
    } else {
      // 3b. Many members: weighted radix select on their score keys from the highest differing bit.
      auto for_members = [&](auto&& f) {
        if (!overflow) {
          for (int j = tid; j < gathered; j += NT) f(sm.all_key[j], sm.all_w[j]);
        } else {
          for (int i = tid; i < pairs; i += NT) {
            const unsigned w = weight_of(i);
            if (w == 0u) continue;
            const float s = score_of(i);
            if (bin_of(s) == th.bstar) f(pq_score_key(s), w);
          }
        }
      };
      uint32_t kmin = 0xffffffffu, kmax = 0u, u0 = 0u, u1 = 0u;
      for_members([&](uint32_t k, uint32_t) { kmin = min(kmin, k); kmax = max(kmax, k); });
      pq_block_minmax_u32<NT>(kmin, kmax, u0, u1, sm.reduce);
      if (kmin == kmax) {
        th.shift = 0;
        th.prefix = kmin;
        th.partial = true;
      } else {
        int top = 31 - __clz(kmin ^ kmax);
        uint32_t prefix = top >= 31 ? 0u : (kmin >> (top + 1));
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
          find_bin(sm, sm.hist, need);
          prefix = (prefix << width) | static_cast<uint32_t>(sm.found_bin);
          need = sm.found_need;
          th.shift = sh;
          top = sh - 1;
          if (sm.found_count == need) break;
          if (top < 0) {
            th.partial = true;
            break;
          }
        }
        th.prefix = prefix;
      }
    }
    th.quota = th.partial ? need : 0;
    stamp(4);  // PH_REFINE
  }

  // 4. The class of every pair.
  auto class_of = [&](float s, int bin) -> uint8_t {
    if (bin > th.bstar) return CLS_TAKE;
    if (bin < th.bstar) return CLS_SKIP;
    if (th.whole_bin) return CLS_TAKE;
    const uint32_t k = pq_score_key(s) >> th.shift;
    if (k > th.prefix || (k == th.prefix && !th.partial)) return CLS_TAKE;
    return k == th.prefix ? CLS_TIE : CLS_SKIP;
  };
#pragma unroll 4
  for (int i = tid; i < pairs; i += NT) {
    const float s = score_of(i);
    sm.cls[i] = class_of(s, bin_of(s));
  }
  __syncthreads();
}



template <int M, int CL, bool LONG>
__device__ void step_pairs(const PqStepRows& query, const PqStepKey& key,
                           const float* __restrict__ centroids, const float* __restrict__ phi, uint8_t* codes,
                           const int* seq_read, int* seq_write, int appended, unsigned* pair_count, unsigned* readers,
                           OutputArgs out, int* status, int B, int H, int Hkv, int D, int C, int log2c, int cstride,
                           int capacity, int S, int W, int K, int O, int ip, int full_threshold, int slice_len,
                           int bits_tiles, long long* phase_clock) {
  __shared__ StepShared sm;
  extern __shared__ uint32_t long_bits[];  // long slices: [bits_tiles][take, tie][NT], then the prefixes
  uint32_t* class_bits = LONG ? long_bits : sm.short_bits;
  const int tid = threadIdx.x;
  const PhaseStamps stamp(phase_clock);  // select_common.cuh
  auto finish = [&]() { stamp.finish(); };
  const int rows = B * H;
  const int sk_old = *seq_read;
  if (static_cast<int>(blockIdx.y) >= rows) {
    // Append blocks: the code of kv-head a's new key at position sk_old.
    const int a = (blockIdx.y - rows) * CL + blockIdx.x;
    if (a < B * Hkv) {
      pq_append_one_key<NT>(key.row_of(a, Hkv, sk_old), key.dtype, centroids, cstride, phi, codes, status, a, sk_old, D, M, C, capacity, O, ip,
                            sm.x, sm.dist, sm.best_code);
      if (a == 0 && tid == 0) *seq_write = sk_old + 1;
    }
    finish();
    return;
  }
  const int rank = CL == 1 ? 0 : static_cast<int>(blockIdx.x);  // cluster dims (CL, 1, 1): rank = x
  const int row = blockIdx.y;
  const int b = row / H;
  const int h = row - b * H;
  const int G = H / Hkv;
  const int kvh = h / G;
  const int bkv = b * Hkv + kvh;
  const int lo = max(O, S);
  const int pairs = M == 1 ? C : C << log2c;
  const unsigned* table = pair_count + static_cast<int64_t>(bkv) * pairs;
  const uint8_t* head_codes = codes + static_cast<int64_t>(bkv) * capacity * M;
  const float* head_centroids = centroids + static_cast<int64_t>(bkv) * M * C * cstride;
  const int dsub = D / M;
  const int s0 = (lo & ~15) + rank * slice_len;

  // ---- Everything that does not depend on sk goes in flight first. ----
  // The pair table's first 4096 counts into shared memory (16-byte loads, then the tail: a table
  // of 2 pairs has no full 16-byte word).
  const int staged = min(pairs, SMEM_WEIGHTS);
  for (int j = tid; j < staged / 4; j += NT) reinterpret_cast<uint4*>(sm.weights)[j] = __ldg(reinterpret_cast<const uint4*>(table) + j);
  for (int i = (staged & ~3) + tid; i < staged; i += NT) sm.weights[i] = __ldg(table + i);
  // This round of the LUT's centroid rows (entries (tid >> 2) + 64k, float4 (tid & 3) + 4jj).
  float4 crow[2][4];
  auto load_rows = [&](int e0) {
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int e = e0 + (tid >> 2) + k * (NT / 4);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int j4 = (tid & 3) + 4 * jj;
        crow[k][jj] = e < M * C && j4 < dsub / 4 ? __ldg(reinterpret_cast<const float4*>(head_centroids + static_cast<int64_t>(e) * cstride) + j4)
                                                 : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  };
  load_rows(0);
  // The previous list (speculatively: its length arrives with it).
  int* list = out.sparse_list + static_cast<int64_t>(row) * out.L;
  const int old_len = out.sparse_len[row];
  constexpr int OLD_PER_THREAD = 4;
  int old_entries[OLD_PER_THREAD];
#pragma unroll
  for (int k = 0; k < OLD_PER_THREAD; ++k) {
    const int i = rank * NT + tid + k * CL * NT;
    old_entries[k] = i < out.L ? list[i] : -1;
  }
  const int query_offset = query.row_offset(b, h);
  for (int d = tid; d < D; d += NT) {
    const float v = pq_load_float(query.ptr, query.dtype, query_offset + d);
    if (!isfinite(v)) pq_flag_status(status, PQ_STATUS_QUERY_NONFINITE);
    sm.x[d] = v;
  }

  const int sk = sk_old + appended;
  const int hi = sk - W;
  const int total = max(0, hi - lo);
  const int s1 = min(s0 + slice_len, hi);
  // The first code tile is loaded up front, bounded by the capacity (before sk arrives; codes past sk
  // are masked by the position check); later tiles when scanned.
  uint4 raw[M];  // 16 positions x M bytes
  auto load_tile = [&](int t0, int limit) {
    const int p0 = t0 + tid * E;
#pragma unroll
    for (int c = 0; c < M; ++c)
      raw[c] = p0 < limit ? __ldg(reinterpret_cast<const uint4*>(head_codes + static_cast<int64_t>(p0) * M) + c) : make_uint4(0, 0, 0, 0);
  };
  load_tile(s0, min(s0 + slice_len, capacity));
  // The position entering the eligible range with this step (already coded: W >= 1).
  const int q = sk_old - W;
  const bool q_enters = appended != 0 && q >= lo && q >= 0;
  int virtual_pair = -1;
  if (q_enters) {
    virtual_pair = pq_code_pair(head_codes + static_cast<int64_t>(q) * M, M, log2c);
  }

  if (sk <= full_threshold) {
    if (rank == 0) write_row<NT>(nullptr, out, row, sk, S, W, 0, true);
    if (rank == 0 && tid == 0 && atomicAdd(&readers[bkv], 1u) == static_cast<unsigned>(G - 1)) {
      readers[bkv] = 0u;
      if (q_enters) atomicAdd(&pair_count[static_cast<int64_t>(bkv) * pairs + virtual_pair], 1u);
    }
    cluster_sync();
    finish();
    return;
  }
  __syncthreads();  // the query row is in shared memory

  // LUT[m][c] = <q_m, centroid[b, kvh, m, c, :dsub]>: 4 lanes per entry, 2 entries per lane group
  // per round (the first round's rows were loaded with everything else).
#pragma unroll 1
  for (int e0 = 0; e0 < M * C; e0 += 2 * (NT / 4)) {
    if (e0 != 0) load_rows(e0);
    float acc[2] = {0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int e = e0 + (tid >> 2) + k * (NT / 4);
      const float4* qv = reinterpret_cast<const float4*>(sm.x + (min(e, M * C - 1) >> log2c) * dsub);
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int j4 = (tid & 3) + 4 * jj;
        if (j4 < dsub / 4) {
          const float4 xv = qv[j4];
          const float4 cv = crow[k][jj];
          acc[k] += xv.x * cv.x + xv.y * cv.y + xv.z * cv.z + xv.w * cv.w;
        }
      }
#pragma unroll 1
      for (int j4 = (tid & 3) + 16; j4 < dsub / 4 && e < M * C; j4 += 4) {  // dsub > 64
        const float4 cv = __ldg(reinterpret_cast<const float4*>(head_centroids + static_cast<int64_t>(e) * cstride) + j4);
        const float4 xv = qv[j4];
        acc[k] += xv.x * cv.x + xv.y * cv.y + xv.z * cv.z + xv.w * cv.w;
      }
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], 1);
      acc[k] += __shfl_xor_sync(0xffffffffu, acc[k], 2);
      const int e = e0 + (tid >> 2) + k * (NT / 4);
      if (e < M * C && (tid & 3) == 0) sm.lut[e] = acc[k];
    }
  }
  // Clear the previous list's weights (this block's share of it): before the counts barrier,
  // after which any block sets new ones.
#pragma unroll
  for (int k = 0; k < OLD_PER_THREAD; ++k) {
    const int i = rank * NT + tid + k * CL * NT;
    if (i < old_len && old_entries[k] >= 0) store_weight(out.weights, out.wdtype, static_cast<int64_t>(row) * out.wstride + old_entries[k], false);
  }
  for (int i = rank * NT + tid + OLD_PER_THREAD * CL * NT; i < old_len && i < out.L; i += CL * NT) {
    const int p = list[i];
    if (p >= 0) store_weight(out.weights, out.wdtype, static_cast<int64_t>(row) * out.wstride + p, false);
  }
  __syncthreads();
  stamp(PH_LUT);

  const bool take_all = total <= K;
  Threshold th;
  select_row<M>(sm, table, virtual_pair, C, log2c, K, th, take_all, stamp);
  stamp(PH_CLASSES);

  // Scan this block's slice: classes of 16 consecutive positions per thread per tile, the next
  // tile's codes in flight while this one is classified; the class bits of the first bits_tiles
  // tiles stay in shared memory for the write pass.
  const int tiles = s1 > s0 ? (s1 - s0 + TILE - 1) / TILE : 0;
  // Per (tile, warp): the warp's (take, tie) counts, turned into exclusive prefixes in position
  // order below, so the write pass needs no block-wide scan per tile.
  int* tile_prefix = reinterpret_cast<int*>(class_bits + bits_tiles * 2 * NT);  // [tiles][take, tie][NW]
  uint32_t take_bits = 0u, tie_bits = 0u;
  auto classify = [&](const uint4 (&tile)[M], int t0) {  // classes of this thread's 16 positions of the tile
    const int p0 = t0 + tid * E;
    take_bits = 0u;
    tie_bits = 0u;
#pragma unroll
    for (int j = 0; j < E; ++j) {
      const int p = p0 + j;
      uint32_t c0, c1 = 0u;
      if (M == 1) {
        c0 = ((&tile[0].x)[j >> 2] >> (8 * (j & 3))) & 0xffu;
      } else {
        const uint32_t w = (&tile[0].x)[j >> 1];
        c0 = (w >> (16 * (j & 1))) & 0xffu;
        c1 = (w >> (16 * (j & 1) + 8)) & 0xffu;
      }
      const uint8_t c = (p >= lo && p < s1) ? sm.cls[M == 1 ? c0 : c0 + (c1 << log2c)] : CLS_SKIP;
      take_bits |= (c == CLS_TAKE ? 1u : 0u) << j;
      tie_bits |= (c == CLS_TIE ? 1u : 0u) << j;
    }
  };
  int take_total = 0, tie_total = 0;  // short slices: the block's totals
#pragma unroll 1
  for (int t = 0; t < tiles; ++t) {
    uint4 cur[M];
    if (LONG) {  // the next tile in flight while this one is classified
#pragma unroll
      for (int c = 0; c < M; ++c) cur[c] = raw[c];
      if (t + 1 < tiles) load_tile(s0 + (t + 1) * TILE, s1);
    } else {
      if (t != 0) load_tile(s0 + t * TILE, s1);
#pragma unroll
      for (int c = 0; c < M; ++c) cur[c] = raw[c];
    }
    classify(cur, s0 + t * TILE);
    if (t < bits_tiles) {
      class_bits[(2 * t) * NT + tid] = take_bits;
      class_bits[(2 * t + 1) * NT + tid] = tie_bits;
    }
    if (LONG) {
      const int warp_take = __reduce_add_sync(0xffffffffu, static_cast<unsigned>(__popc(take_bits)));
      const int warp_tie = __reduce_add_sync(0xffffffffu, static_cast<unsigned>(__popc(tie_bits)));
      if ((tid & 31) == 0) {
        tile_prefix[(2 * t) * NW + (tid >> 5)] = warp_take;
        tile_prefix[(2 * t + 1) * NW + (tid >> 5)] = warp_tie;
      }
    } else {
      take_total += __popc(take_bits);
      tie_total += __popc(tie_bits);
    }
  }
  if (LONG) {
    // Exclusive prefixes over (tile, warp) in position order, and the block totals: warp 0, each lane
    // summing a run of consecutive entries, then one warp scan over the runs.
    __syncthreads();
    if (tid < 32) {
      const int n = tiles * NW;
      const int run = (n + 31) / 32;
  #pragma unroll
      for (int f = 0; f < 2; ++f) {  // f = 0: takes, 1: ties
        auto at = [&](int i) -> int& { return tile_prefix[(2 * (i / NW) + f) * NW + i % NW]; };
        int sum = 0;
        for (int i = tid * run; i < min(n, (tid + 1) * run); ++i) sum += at(i);
        const int incl = pq_warp_inclusive_scan(sum);
        int acc = incl - sum;
        for (int i = tid * run; i < min(n, (tid + 1) * run); ++i) {
          const int v = at(i);
          at(i) = acc;
          acc += v;
        }
        if (tid == 31) sm.counts[f] = incl;
      }
    }
  } else {
    // Short slices: both block totals in one reduction.
    int a = take_total, c = tie_total;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      a += __shfl_xor_sync(0xffffffffu, a, o);
      c += __shfl_xor_sync(0xffffffffu, c, o);
    }
    if ((tid & 31) == 0) {
      sm.reduce[tid >> 5] = static_cast<uint32_t>(a);
      sm.reduce[NW + (tid >> 5)] = static_cast<uint32_t>(c);
    }
    __syncthreads();
    if (tid == 0) {
      int ta = 0, tc = 0;
      for (int w = 0; w < NW; ++w) {
        ta += static_cast<int>(sm.reduce[w]);
        tc += static_cast<int>(sm.reduce[NW + w]);
      }
      sm.counts[0] = ta;
      sm.counts[1] = tc;
    }
  }
  cluster_sync();  // counts published; every block's old weights cleared; the table is no longer read
  stamp(PH_COUNTS);
  // The last of the kv-head's G query heads to be done with the table adds q to it.
  if (rank == 0 && tid == 0 && atomicAdd(&readers[bkv], 1u) == static_cast<unsigned>(G - 1)) {
    readers[bkv] = 0u;
    if (q_enters) atomicAdd(&pair_count[static_cast<int64_t>(bkv) * pairs + virtual_pair], 1u);
  }
  // Positions taken before this block: every take, and ties up to the quota, in rank order.
  int take_before = 0, tie_before = 0;
  {
    int tb[CL], ib[CL];
#pragma unroll
    for (int r = 0; r < CL; ++r) {
      tb[r] = r < rank ? peer(sm.counts, r)[0] : 0;
      ib[r] = r < rank ? peer(sm.counts, r)[1] : 0;
    }
#pragma unroll
    for (int r = 0; r < CL; ++r) {
      take_before += tb[r];
      tie_before += ib[r];
    }
  }
  const int quota = th.quota;
  const int sink_end = min(S, sk);
  const int n_heavy = min(K, total);
  // Write this block's heavy hitters at their final slots.
#pragma unroll 1
  for (int t = 0; t < tiles; ++t) {
    const int t0 = s0 + t * TILE;
    if (t < bits_tiles) {
      take_bits = class_bits[(2 * t) * NT + tid];
      tie_bits = class_bits[(2 * t + 1) * NT + tid];
    } else {
      load_tile(t0, s1);
      classify(raw, t0);
    }
    int tk_before, ti_before;
    if (LONG) {
      if (__ballot_sync(0xffffffffu, (take_bits | tie_bits) != 0u) == 0u) continue;  // nothing of this warp's
      const int nt = __popc(take_bits), ni = __popc(tie_bits);
      tk_before = take_before + tile_prefix[(2 * t) * NW + (tid >> 5)] + pq_warp_inclusive_scan(nt) - nt;
      ti_before = tie_before + tile_prefix[(2 * t + 1) * NW + (tid >> 5)] + pq_warp_inclusive_scan(ni) - ni;
    } else {  // one block scan per tile (≤ 4096 positions per field)
      int tile_total;
      const int packed = pq_block_exclusive_scan<NT>(__popc(take_bits) | (__popc(tie_bits) << 16), sm.scan, &tile_total);
      tk_before = take_before + (packed & 0xffff);
      ti_before = tie_before + (packed >> 16);
      take_before += tile_total & 0xffff;
      tie_before += tile_total >> 16;
    }
    const int p0 = t0 + tid * E;
    uint32_t selected = take_bits | tie_bits;
    while (selected != 0u) {  // only the set bits: most threads have none
      const int j = __ffs(selected) - 1;
      selected &= selected - 1u;
      const uint32_t below = (1u << j) - 1u;
      const bool take = take_bits >> j & 1u;
      const int tkb = tk_before + __popc(take_bits & below);
      const int tib = ti_before + __popc(tie_bits & below);
      if (take || tib < quota) {
        const int slot = tkb + min(tib, quota);
        if (slot < n_heavy) {
          list[sink_end + slot] = p0 + j;
          store_weight(out.weights, out.wdtype, static_cast<int64_t>(row) * out.wstride + p0 + j, true);
        }
      }
    }
  }
  stamp(PH_WRITE);
  if (rank == 0) {
    // Sink, window, padding and length.
    const int win_start = max(sk - min(W, sk), sink_end);
    const int len = sink_end + n_heavy + (sk - win_start);
    for (int i = tid; i < out.L; i += NT) {
      int p = -2;  // heavy slots are written by the slice owners
      if (i < sink_end) p = i;
      else if (i >= sink_end + n_heavy) p = i < len ? win_start + (i - sink_end - n_heavy) : -1;
      if (p != -2) {
        list[i] = p;
        if (p >= 0) store_weight(out.weights, out.wdtype, static_cast<int64_t>(row) * out.wstride + p, true);
      }
    }
    if (tid == 0) out.sparse_len[row] = len;
  }
  cluster_sync();  // keep this block's shared memory alive until the cluster has read it
  finish();
}

}  // namespace

#define PQ_STEP_PAIRS_KERNEL(NAME, M, CL, LONG)                                                                        \
  extern "C" __global__ void PQ_CLUSTER_DIMS(CL) __launch_bounds__(NT, 3) NAME(PQ_STEP_PARAMS) {                        \
    pq_allow_dependents(); /* a decode layer's attention may start now (it waits for this grid) */                 \
    const OutputArgs out{sparse_list, sparse_len, weights, wdtype, wstride, L};                                      \
    step_pairs<M, CL, LONG>(PQ_STEP_QUERY, PQ_STEP_KEY, centroids, phi, codes, seq_read, seq_write, appended,        \
                            pair_count, readers, out, status, B, H, Hkv, D, C, log2c, cstride, capacity, S, W, K, O, \
                            ip, full_threshold, slice_len, bits_tiles, phase_clock);                                 \
    pq_wait_for_previous(); /* launched behind a decode layer's K/V append: it ends before this grid does */      \
  }

// Short slices (≤ 3 tiles, the latency-bound small contexts): block scans, as measured fastest there.
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m1_p1, 1, 1, false)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m1_p2, 1, 2, false)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m1_p4, 1, 4, false)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m1_p8, 1, 8, false)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m2_p1, 2, 1, false)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m2_p2, 2, 2, false)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m2_p4, 2, 4, false)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_m2_p8, 2, 8, false)
// Long slices: the next tile in flight, per-(tile, warp) prefixes, no block scan per tile.
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m1_p1, 1, 1, true)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m1_p2, 1, 2, true)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m1_p4, 1, 4, true)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m1_p8, 1, 8, true)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m2_p1, 2, 1, true)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m2_p2, 2, 2, true)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m2_p4, 2, 4, true)
PQ_STEP_PAIRS_KERNEL(pq_step_pairs_long_m2_p8, 2, 8, true)

extern "C" __global__ void __launch_bounds__(256) pq_pairs_count(const uint8_t* codes, unsigned* pair_count, int from,
                                                                  int to, int capacity, int M, int C) {
  const int p = from + blockIdx.x * 256 + threadIdx.x;
  const int bkv = blockIdx.y;
  if (p >= to) return;
  const uint8_t* c = codes + (static_cast<int64_t>(bkv) * capacity + p) * M;
  const int idx = M == 1 ? c[0] : c[0] + C * c[1];
  atomicAdd(&pair_count[static_cast<int64_t>(bkv) * (M == 1 ? C : C * C) + idx], 1u);
}
