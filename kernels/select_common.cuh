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
