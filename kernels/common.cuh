// Shared device helpers for the pqcache kernels: dtype loads, the score key, the seeded draws,
// warp/block reductions and scans. Header-only; every kernel family includes it.
#pragma once
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Element types of float tensors, as passed from the host (src/pq/cuda-cache.ts).
enum PqDType : int { PQ_F32 = 0, PQ_F16 = 1, PQ_BF16 = 2 };

// Bits of the device status word: set by kernels, read by the host at its next sync.
enum PqStatus : int {
  PQ_STATUS_QUERY_NONFINITE = 1,
  PQ_STATUS_KEY_NONFINITE = 2,
  PQ_STATUS_LIST_RANGE = 4,       // attend: a sparse-list position outside [0, sk)
  PQ_STATUS_VALUE_NONFINITE = 8,  // K/V append: a non-finite value
  PQ_STATUS_BUCKETS_STALE = 16,   // select (bucket mode): the position buckets do not match sk or the pair table (a bug)
};

// Flag `bit` in the pinned status word (src/pq/cuda-cache.ts checkStatus), visible to the host
// before anything this thread does next: a resident request's `done` is a relaxed store
// (resident.cuh), ordered after the flag only through this fence and the block's barrier before
// its arrival. Only on bad input, so the fence's cost does not matter.
__device__ __forceinline__ void pq_flag_status(int* status, int bit) {
  atomicOr(status, bit);
  __threadfence_system();
}

// Thread-block cluster dims (CL, 1, 1) of a kernel, on sm_90 and newer (before: one block a group;
// the host plans clusters only there).
#if __CUDA_ARCH__ >= 900
#define PQ_CLUSTER_DIMS(CL) __cluster_dims__(CL, 1, 1)
#else
#define PQ_CLUSTER_DIMS(CL)
#endif

// Programmatic dependent launch (sm_90; src/cuda/launch.ts `overlapPrevious`). A kernel launched
// that way behind this one may start its blocks once every block of this one has called
// pq_allow_dependents (or exited); it calls pq_wait_for_previous before reading anything the kernels
// before it write (it returns once they are complete and their writes visible). Both are no-ops
// where no such launch was made, and before sm_90.
__device__ __forceinline__ void pq_allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}
__device__ __forceinline__ void pq_wait_for_previous() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ float pq_load_float(const void* p, int dtype, int64_t i) {
  if (dtype == PQ_F32) return static_cast<const float*>(p)[i];
  if (dtype == PQ_F16) return __half2float(static_cast<const __half*>(p)[i]);
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

// A decode step's input [B, heads, 1, D] read in place by rows: row (b, h) at element b*batch + h*head
// of `ptr`, its D elements contiguous (contiguous rows: heads*D and D; a fused QKV projection output's
// query, key or value part: (H + 2*Hkv)*D and D). The host keeps every element's offset below 2^31
// (src/pq/step-rows.ts), so the offset is 32-bit arithmetic on the b and h a block computes anyway.
// The select kernels read the query so, the K/V append and attention kernels a decode layer's q, k, v.
struct PqStepRows {
  const void* ptr;
  int dtype;
  int batch, head;
  __device__ __forceinline__ int row_offset(int b, int h) const { return b * batch + h * head; }
  __device__ __forceinline__ float load(int b, int h, int d) const { return pq_load_float(ptr, dtype, row_offset(b, h) + d); }
};

// A float element as fp32 (exact for f16 and bf16).
__device__ __forceinline__ float pq_to_float(float v) { return v; }
__device__ __forceinline__ float pq_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float pq_to_float(__half v) { return __half2float(v); }

// Order-preserving uint32 key of an fp32 score: larger score -> larger key, NaN -> 0, -0 -> +0.
// The CPU oracle (src/pq/cpu-select.ts scoreKey) defines the same map.
__device__ __forceinline__ uint32_t pq_score_key(float s) {
  if (s != s) return 0u;
  if (s == 0.0f) s = 0.0f;
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The "lowbias32" hash and seeded draws of src/pq/rng.ts, bit for bit.
__device__ __forceinline__ uint32_t pq_mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__device__ __forceinline__ uint32_t pq_draw(uint32_t seed, uint32_t stream, uint32_t counter) {
  return pq_mix32(pq_mix32(pq_mix32(seed) ^ stream) ^ counter);
}

// Squared L2 distance in the canonical order of src/pq/kmeans.ts: 8 interleaved partial sums
// P_r = sum over j = r, r+8, ... of (x_j - c_j)^2 (each op rounded to fp32, no FMA contraction),
// combined as ((P0 + P1) + (P2 + P3)) + ((P4 + P5) + (P6 + P7)).
//
// Lane form: the 8 lanes of an aligned group of 8 (lane8 = lane & 7) each compute one partial;
// pq_tree8 combines them with xor shuffles (fp32 addition is commutative, so every lane ends
// with the canonical value). All 32 lanes of the warp must call pq_tree8.
// x: fp32, or bf16 or f16 keys read where they are (build.cu; their values are exact in fp32).
template <typename T>
__device__ __forceinline__ float pq_partial_distance(const T* x, const float* c, int dim, int lane8) {
  float p = 0.0f;
#pragma unroll 8
  for (int j = lane8; j < dim; j += 8) {
    const float t = __fsub_rn(pq_to_float(x[j]), c[j]);
    p = __fadd_rn(p, __fmul_rn(t, t));
  }
  return p;
}

__device__ __forceinline__ float pq_partial_squared_norm(const float* x, int dim, int lane8) {
  float p = 0.0f;
  for (int j = lane8; j < dim; j += 8) p = __fadd_rn(p, __fmul_rn(x[j], x[j]));
  return p;
}

__device__ __forceinline__ float pq_tree8(float p) {
  p = __fadd_rn(p, __shfl_xor_sync(0xffffffffu, p, 1));
  p = __fadd_rn(p, __shfl_xor_sync(0xffffffffu, p, 2));
  p = __fadd_rn(p, __shfl_xor_sync(0xffffffffu, p, 4));
  return p;
}

// The canonical combination of the 8 partial sums, for kernels that give a point to each thread
// (the partials then live in one thread's registers, indexed by j & 7 with unrolled j).
__device__ __forceinline__ float pq_tree8_sum(const float (&p)[8]) {
  return __fadd_rn(__fadd_rn(__fadd_rn(p[0], p[1]), __fadd_rn(p[2], p[3])), __fadd_rn(__fadd_rn(p[4], p[5]), __fadd_rn(p[6], p[7])));
}

// sqrt(max(phi - |x|^2, 0)) in fp32, as ipAugment() on the CPU.
__device__ __forceinline__ float pq_ip_augment(float phi, float sq_norm) {
  const float v = __fsub_rn(phi, sq_norm);
  return v > 0.0f ? __fsqrt_rn(v) : 0.0f;
}

// ---- warp and block collectives (blockDim.x == NT, a multiple of 32) ----

template <typename T>
__device__ __forceinline__ T pq_warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Inclusive scan within a warp. The shuffle's own predicate (source lane in range) guards each add:
// two instructions a step instead of three (shuffle, select, add). The row kernels are issue-bound,
// so every instruction that every warp runs counts (bench/NOTES.md session 21).
__device__ __forceinline__ int pq_warp_inclusive_scan(int v) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1)
    asm("{\n .reg .s32 n;\n .reg .pred p;\n shfl.sync.up.b32 n|p, %0, %1, 0, -1;\n @p add.s32 %0, %0, n;\n}" : "+r"(v) : "r"(o));
  return v;
}

// Block-wide exclusive scan of one int per thread; returns the block total in *total.
// `scratch` holds NT/32 ints. Contains two __syncthreads().
template <int NT>
__device__ __forceinline__ int pq_block_exclusive_scan(int v, int* scratch, int* total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int inc = pq_warp_inclusive_scan(v);
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  int warp_prefix = 0;
  int sum = 0;
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) {
    const int s = scratch[w];
    if (w < warp) warp_prefix += s;
    sum += s;
  }
  *total = sum;
  __syncthreads();
  return warp_prefix + inc - v;
}

// Min and max over the warp (NaN ignored, as fminf/fmaxf do); every lane gets both.
__device__ __forceinline__ void pq_warp_minmax(float& mn, float& mx) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  }
}

// Block-wide reductions of a few values at once; `scratch` holds 4 * NT/32 words.
template <int NT>
__device__ __forceinline__ void pq_block_minmax(float& mn, float& mx, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  pq_warp_minmax(mn, mx);
  if (lane == 0) {
    scratch[warp] = mn;
    scratch[NT / 32 + warp] = mx;
  }
  __syncthreads();
  mn = scratch[0];
  mx = scratch[NT / 32];
#pragma unroll
  for (int w = 1; w < NT / 32; ++w) {
    mn = fminf(mn, scratch[w]);
    mx = fmaxf(mx, scratch[NT / 32 + w]);
  }
  __syncthreads();
}

template <int NT>
__device__ __forceinline__ void pq_block_minmax_u32(uint32_t& a_min, uint32_t& a_max, uint32_t& b_min, uint32_t& b_max,
                                                    uint32_t* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a_min = min(a_min, __shfl_xor_sync(0xffffffffu, a_min, o));
    a_max = max(a_max, __shfl_xor_sync(0xffffffffu, a_max, o));
    b_min = min(b_min, __shfl_xor_sync(0xffffffffu, b_min, o));
    b_max = max(b_max, __shfl_xor_sync(0xffffffffu, b_max, o));
  }
  constexpr int NW = NT / 32;
  if (lane == 0) {
    scratch[warp] = a_min;
    scratch[NW + warp] = a_max;
    scratch[2 * NW + warp] = b_min;
    scratch[3 * NW + warp] = b_max;
  }
  __syncthreads();
  a_min = scratch[0];
  a_max = scratch[NW];
  b_min = scratch[2 * NW];
  b_max = scratch[3 * NW];
#pragma unroll
  for (int w = 1; w < NW; ++w) {
    a_min = min(a_min, scratch[w]);
    a_max = max(a_max, scratch[NW + w]);
    b_min = min(b_min, scratch[2 * NW + w]);
    b_max = max(b_max, scratch[3 * NW + w]);
  }
  __syncthreads();
}

template <int NT>
__device__ __forceinline__ int pq_block_sum(int v, int* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = pq_warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int s = 0;
#pragma unroll
  for (int w = 0; w < NT / 32; ++w) s += scratch[w];
  __syncthreads();
  return s;
}

// Global timer (ns): the phase stamps of `bench --phases`, and pq_spin_ns.
__device__ __forceinline__ long long pq_global_timer_ns() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The 32-bit shared-window address of a shared-memory pointer, as PTX's shared-space operands take it.
__device__ __forceinline__ uint32_t pq_smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// One 4-byte asynchronous copy, global → shared (both 4-byte aligned): the caller goes on without a
// register waiting for the data, and waits (pq_cp_async_wait_all) only where it needs it. sm_80+.
__device__ __forceinline__ void pq_cp_async4(void* shared_dst, const void* global_src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(pq_smem_addr(shared_dst)), "l"(global_src)
               : "memory");
}
__device__ __forceinline__ void pq_cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
