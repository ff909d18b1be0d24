// One block computes the PQ codes of one new key (used by append.cu and the fused step kernel in
// select_pairs.cu). Each (m, c) distance is computed by an aligned group of 8 lanes in the canonical
// order of common.cuh (bit-identical to the CPU oracle); ip keys are augmented with the stored phi;
// the nearest centroid (ties -> lower index) becomes the code, written when p >= O.
#pragma once
#include "common.cuh"

constexpr int PQ_APPEND_MAX_D = 1024;
constexpr int PQ_APPEND_MAX_M = 8;
constexpr int PQ_APPEND_MAX_ENTRIES = 2048;  // M * C

// Row r of kv-head row a = b*Hkv + kvh of keys whose element strides are (batch, head, row), its D
// elements contiguous. Unsigned arithmetic: a step key's base may lie below its allocation (below).
__device__ __forceinline__ const void* pq_key_row(const void* keys, int kdtype, int a, int Hkv, uint64_t batch_stride,
                                                  uint64_t head_stride, uint64_t row_stride, uint64_t r) {
  const int b = a / Hkv;
  const uint64_t element = b * batch_stride + static_cast<uint64_t>(a - b * Hkv) * head_stride + r * row_stride;
  return reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(keys) + element * (kdtype == PQ_F32 ? 4u : 2u));
}

// A decode step's new key [B, Hkv, 1, D] as the fused step kernels read it: row (b, kv-head) at
// element b*batch + kvh*head + sk*row of `base`, sk being the index's length before the step (read
// on the device). A key at a fixed address has row = 0; a slice of a K cache has its position
// stride there and base = its address − sk·row (the host's sk), so the graph captured for one step's
// slice reads each later step's slice too (src/pq/step-key.ts).
struct PqStepKey {
  const void* base;
  int dtype;
  uint64_t batch, head, row;
  __device__ __forceinline__ const void* row_of(int a, int Hkv, int sk) const {
    return pq_key_row(base, dtype, a, Hkv, batch, head, row, static_cast<uint64_t>(sk));
  }
};

// The codes of one key row (`key`: its D elements, contiguous; pq_key_row, PqStepKey::row_of).
// Shared scratch: x holds D + M floats, dist M*C floats, best_code M ints. All threads must call.
template <int NT>
__device__ void pq_append_one_key(const void* key, int kdtype, const float* __restrict__ centroids,
                                  int cstride, const float* __restrict__ phi, uint8_t* codes, int* status, int bkv, int p,
                                  int D, int M, int C, int capacity, int O, int ip, float* x, float* dist, int* best_code) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int dsub = D / M;
  const int cdim = dsub + (ip ? 1 : 0);
  for (int d = tid; d < D; d += NT) {
    const float v = pq_load_float(key, kdtype, d);
    if (!isfinite(v)) pq_flag_status(status, PQ_STATUS_KEY_NONFINITE);
    x[(d / dsub) * cdim + d % dsub] = v;
  }
  __syncthreads();
  if (ip) {
    for (int m0 = 0; m0 < M; m0 += NT / 8) {
      const int m = m0 + tid / 8;
      const float part = m < M ? pq_partial_squared_norm(x + m * cdim, dsub, tid & 7) : 0.0f;
      const float norm = pq_tree8(part);
      if (m < M && (tid & 7) == 0) x[m * cdim + dsub] = pq_ip_augment(phi[bkv * M + m], norm);
    }
    __syncthreads();
  }
  const int entries = M * C;
#pragma unroll 2
  for (int e0 = 0; e0 < entries; e0 += NT / 8) {
    const int e = e0 + tid / 8;
    float part = 0.0f;
    if (e < entries) {
      const float* crow = centroids + (static_cast<int64_t>(bkv) * entries + e) * cstride;
      part = pq_partial_distance(x + (e / C) * cdim, crow, cdim, tid & 7);
    }
    const float d = pq_tree8(part);
    if (e < entries && (tid & 7) == 0) dist[e] = d;
  }
  __syncthreads();
  for (int m = warp; m < M; m += NT / 32) {
    float best = INFINITY;
    int best_c = 0x7fffffff;
    for (int c = lane; c < C; c += 32) {
      const float d = dist[m * C + c];
      if (d < best) { best = d; best_c = c; }  // c ascends per lane: keeps the lower index on ties
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oc = __shfl_xor_sync(0xffffffffu, best_c, o);
      if (ob < best || (ob == best && oc < best_c)) { best = ob; best_c = oc; }
    }
    if (best_c == 0x7fffffff) best_c = 0;  // every distance non-finite: the CPU oracle also keeps 0
    if (lane == 0) {
      best_code[m] = best_c;
      if (p >= O) codes[(static_cast<int64_t>(bkv) * capacity + p) * M + m] = static_cast<uint8_t>(best_c);
    }
  }
  __syncthreads();
}
