// Output side of the select kernels (select.cu, select_pairs.cu): the sparse list row, its
// length and the incremental weights update.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void store_weight(void* weights, int wdtype, int64_t i, bool one) {
  if (wdtype == PQ_F32) {
    static_cast<uint32_t*>(weights)[i] = one ? 0x3f800000u : 0u;
  } else {
    static_cast<uint16_t*>(weights)[i] = one ? (wdtype == PQ_F16 ? 0x3c00u : 0x3f80u) : 0u;
  }
}

// A load through the read-only cache (ld.global.nc) where the data stays fixed while the kernel
// runs; a plain, coherent load in resident kernels (resident.cuh), whose data changes between the
// requests they serve.
template <bool READ_ONLY, typename T>
__device__ __forceinline__ T pq_load(const T* p) {
  if constexpr (READ_ONLY) return __ldg(p);
  else return *p;
}

struct OutputArgs {
  int* sparse_list;
  int* sparse_len;
  void* weights;
  int wdtype;
  int64_t wstride;
  int L;
};

// Write one row's list (sink, heavy[0 .. n_heavy) ascending, window), its length and the
// weights, clearing the previous list's weights first. `full`: the list is 0 .. sk-1.
template <int NT>
__device__ void write_row(const int* heavy, const OutputArgs& o, int row, int sk, int S, int W, int n_heavy, bool full) {
  const int tid = threadIdx.x;
  int* list = o.sparse_list + static_cast<int64_t>(row) * o.L;
  const int64_t wrow = static_cast<int64_t>(row) * o.wstride;
  const int old_len = o.sparse_len[row];
  for (int i = tid; i < old_len && i < o.L; i += NT) {
    const int p = list[i];
    if (p >= 0) store_weight(o.weights, o.wdtype, wrow + p, false);
  }
  __syncthreads();
  int sink_end = 0, win_start = 0, len = sk;
  if (!full) {
    sink_end = min(S, sk);
    win_start = max(sk - min(W, sk), sink_end);
    len = sink_end + n_heavy + (sk - win_start);
  }
  for (int i = tid; i < o.L; i += NT) {
    int p = -1;
    if (full) {
      p = i < sk ? i : -1;
    } else if (i < sink_end) {
      p = i;
    } else if (i < sink_end + n_heavy) {
      p = heavy[i - sink_end];
    } else if (i < len) {
      p = win_start + (i - sink_end - n_heavy);
    }
    list[i] = p;
    if (p >= 0) store_weight(o.weights, o.wdtype, wrow + p, true);
  }
  if (tid == 0) o.sparse_len[row] = len;
}

// 1/x by the hardware's approximate reciprocal (one instruction, flush-to-zero; relative error
// below 2^-22), where a full-precision division's subroutine is not needed.
__device__ __forceinline__ float pq_rcp_approx(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// a / d for 0 ≤ a < 2^20 and d ≥ 1 (grid indices), through one approximate reciprocal
// (≈ 5 instructions; an integer division is ≈ 25, and every warp of a 1024-thread block runs it).
// Exact: (a + 0.5) / d is at least 0.5 / d away from an integer, and the relative error ε of
// rcp.approx and the product (well below 2^-21) moves it by (a + 0.5) · ε / d < 0.5 / d.
__device__ __forceinline__ int pq_div_small(int a, int d) {
  return __float2int_rz((static_cast<float>(a) + 0.5f) * pq_rcp_approx(static_cast<float>(d)));
}

// The pair-table index of one position's M ≤ 2 codes (C = 2^log2c): c0 + c1·C.
__device__ __forceinline__ int pq_code_pair(const uint8_t* code, int M, int log2c) {
  return M == 1 ? code[0] : code[0] + (code[1] << log2c);
}

// Score keys (pq_score_key) back to scores: the inverse on every key of a non-NaN float.
__device__ __forceinline__ float pq_key_score(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Min and max of one LUT row of C entries, by one warp (every lane gets both).
__device__ __forceinline__ void pq_lut_row_range(const float* row, int C, float& mn, float& mx) {
  mn = INFINITY;
  mx = -INFINITY;
  for (int c = threadIdx.x & 31; c < C; c += 32) {
    mn = fminf(mn, row[c]);
    mx = fmaxf(mx, row[c]);
  }
  pq_warp_minmax(mn, mx);
}

// Phase stamps (clock64) of the step kernels for `bench --phases` (src/pq/cuda-cache.ts STEP_PHASES):
// slot k of block (x, y) at phase_clock[(y*gridDim.x + x)*16 + k]; slots 14 and 15 hold the block's
// start and end on the global timer (ns). Slots 9–11 (row kernel) split the first phase: loads
// issued, sk and the query element arrived, staged (barrier); slots 12–13 (row kernel) split the
// histogram: pairs scored (and the fixed list slots written), binned (the atomics' barrier).
// Phases a block skips stay 0.
// Compiled in only with PQ_PHASE_STAMPS: the timing builds <family>_phases.fatbin (kernels/build.mjs)
// that a cache created with phaseTiming loads. Elsewhere the stamps are empty and phase_clock is
// ignored. The step kernels are issue-bound (≈ 1,000 instructions per warp, 32 warps a block), and
// every stamp cost each warp a predicated clock read and store even with phase_clock null: compiled
// out, the seed step's resident device time fell 8.70 → 8.38 μs and the graph's 10.91 → 10.64 μs
// (same-run A/B on the H100, bench/NOTES.md session 20).
enum Phase { PH_START, PH_LUT, PH_HIST, PH_MEMBERS, PH_REFINE, PH_CLASSES, PH_COUNTS, PH_WRITE, PH_END, PH_ISSUED, PH_INPUTS, PH_STAGED, PH_SCORED, PH_BINNED };

struct PhaseStamps {
#ifdef PQ_PHASE_STAMPS
  long long* slots;  // this block's 16, or nullptr when not timing

  // Clears the block's slots and stamps its start (thread 0).
  __device__ __forceinline__ explicit PhaseStamps(long long* phase_clock)
      : slots(phase_clock != nullptr ? phase_clock + (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * 16 : nullptr) {
    if (slots != nullptr && threadIdx.x == 0) {
      for (int k = 0; k < 16; ++k) slots[k] = 0;
      slots[14] = pq_global_timer_ns();
    }
    (*this)(PH_START);
  }
#else
  __device__ __forceinline__ explicit PhaseStamps(long long*) { (*this)(PH_START); }
#endif
  __device__ __forceinline__ void operator()(int k) const {
#ifdef PQ_PHASE_STAMPS
    if (slots != nullptr && threadIdx.x == 0) slots[k] = clock64();
#endif
#ifdef PQ_DIAG_EXIT_PHASE
    // Diagnostic builds only (scripts/pack-device.sh DIAG_EXIT): every thread exits at this phase,
    // so the step's event time up to each phase can be measured. Never in a shipped fatbin.
    if (k == PQ_DIAG_EXIT_PHASE) asm volatile("exit;");
#endif
  }
  // The block's end: PH_END and the global timer.
  __device__ __forceinline__ void finish() const {
    (*this)(PH_END);
#ifdef PQ_PHASE_STAMPS
    if (slots != nullptr && threadIdx.x == 0) slots[15] = pq_global_timer_ns();
#endif
  }
};

// Weighted rank of the n ≤ blockDim.x members of a boundary bin: member t sums the weight above and
// equal to its key; the one whose key holds the need-th largest writes that key, the need left inside
// it and the weight equal to it (every member with the key agrees, so one value is written).
// The caller synchronizes before reading the results.
__device__ __forceinline__ void pq_rank_members(const uint32_t* keys, const uint32_t* weights, int n, int need,
                                                uint32_t* found_key, int* found_need, int* found_count) {
  const int t = threadIdx.x;
  if (t >= n) return;
  const uint32_t mine = keys[t];
  unsigned above = 0u, equal = 0u;
  for (int k = 0; k < n; ++k) {
    const uint32_t kk = keys[k];
    above += kk > mine ? weights[k] : 0u;
    equal += kk == mine ? weights[k] : 0u;
  }
  if (static_cast<int>(above) < need && static_cast<int>(above + equal) >= need) {
    *found_key = mine;
    *found_need = need - static_cast<int>(above);
    *found_count = static_cast<int>(equal);
  }
}

// The step kernels' parameter list (select_pairs.cu, select_row.cu): one argument layout for the host
// (src/pq/cuda-cache.ts STEP_PAIRS_ARGS) whichever family a plan launches; PQ_STEP_ARGS passes it on.
#define PQ_STEP_PARAMS                                                                                              \
  const void *query, int qdtype, int query_batch_stride, int query_head_stride, const void *keys, int kdtype,      \
      unsigned long long key_batch_stride, unsigned long long key_head_stride, unsigned long long key_row_stride,   \
      const float *centroids, const float *phi, uint8_t *codes, const int *seq_read, int *seq_write, int appended,  \
      unsigned *pair_count, unsigned *readers, int *sparse_list, int *sparse_len, void *weights, int wdtype, long long wstride, int L, int *status, int B,  \
      int H, int Hkv, int D, int C, int log2c, int cstride, int capacity, int S, int W, int K, int O, int ip,      \
      int full_threshold, int slice_len, int bits_tiles, long long *phase_clock, const int *bucket_end,        \
      const int *bucket_offsets, const int *buckets
#define PQ_STEP_ARGS                                                                                                \
  query, qdtype, query_batch_stride, query_head_stride, keys, kdtype, key_batch_stride, key_head_stride,            \
      key_row_stride, centroids, phi, codes, seq_read, seq_write, appended, pair_count, readers, sparse_list,        \
      sparse_len, weights, wdtype, wstride, L, status, B, H, Hkv, D, C, log2c, cstride, capacity, S, W, K, O, ip,   \
      full_threshold, slice_len, bits_tiles, phase_clock, bucket_end, bucket_offsets, buckets
// The step's query and key as the kernels read them, from PQ_STEP_PARAMS.
#define PQ_STEP_QUERY PqStepRows{query, qdtype, query_batch_stride, query_head_stride}
#define PQ_STEP_KEY PqStepKey{keys, kdtype, key_batch_stride, key_head_stride, key_row_stride}
