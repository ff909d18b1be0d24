// Kernels that exercise and measure the runtime layer (src/cuda): tests and `bench --kind runtime`.
#include <cstdint>

#include "common.cuh"
#include "resident.cuh"

// Does nothing: the launch + sync round trip. Launch: any shape.
extern "C" __global__ void pq_empty() {}
// The same in thread-block clusters of 2 and 4 (sm_90; one block a cluster elsewhere): what a
// clustered launch, such as the seed step's row kernel (_c2), costs the device over a plain one
// (scripts/cluster-launch-floor.mjs). Launch: gridDim.x a multiple of the cluster size.
extern "C" __global__ void PQ_CLUSTER_DIMS(2) pq_empty_c2() {}
extern "C" __global__ void PQ_CLUSTER_DIMS(4) pq_empty_c4() {}
// Does nothing with 48 64-bit parameters (384 bytes, the seed step kernel's ≈ 280 and more): whether
// a launch's parameter block costs the device anything (scripts/cluster-launch-floor.mjs).
#define PQ_P8(i) unsigned long long p##i##0, unsigned long long p##i##1, unsigned long long p##i##2, unsigned long long p##i##3, \
                 unsigned long long p##i##4, unsigned long long p##i##5, unsigned long long p##i##6, unsigned long long p##i##7
extern "C" __global__ void pq_empty_params48(PQ_P8(0), PQ_P8(1), PQ_P8(2), PQ_P8(3), PQ_P8(4), PQ_P8(5)) {}
#undef PQ_P8

// c[i] = a[i] + b[i] for i < n. Launch: 1-D grid covering n, any block size.
extern "C" __global__ void pq_vector_add(const float* a, const float* b, float* c, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

// out[i] = value for i < n words, 16 bytes per thread per step (n % 4 == 0, out 16-byte aligned).
// Launch: grid-stride, any 1-D shape. Measures device-memory write bandwidth.
extern "C" __global__ void pq_fill_u32(uint32_t* out, uint32_t value, long long n) {
  const long long n4 = n / 4;
  uint4* o = reinterpret_cast<uint4*>(out);
  const uint4 v = make_uint4(value, value, value, value);
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    o[i] = v;
}

// dst[i] = src[i] for i < n16 16-byte words. Launch: grid-stride. Measures copy bandwidth.
extern "C" __global__ void pq_copy_u4(const uint4* __restrict__ src, uint4* __restrict__ dst, long long n16) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n16;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

// Traps: a test-only kernel fault, to prove faults surface as typed errors.
extern "C" __global__ void pq_trap() { __trap(); }

// out[i] = scale * u(i), u uniform in [-1, 1) from a hash of (seed, i), stored as f32 (dtype 0),
// f16 (1) or bf16 (2). Synthetic device-resident data for benchmarks too large to make on the host.
// Launch: grid-stride, any 1-D shape.
extern "C" __global__ void pq_fill_hash(void* out, int dtype, long long n, unsigned seed, float scale) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const uint32_t h = pq_mix32(static_cast<uint32_t>(i) ^ pq_mix32(static_cast<uint32_t>(i >> 32) ^ pq_mix32(seed)));
    const float v = scale * (static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
    if (dtype == 0) static_cast<float*>(out)[i] = v;
    else if (dtype == 1) static_cast<__half*>(out)[i] = __float2half_rn(v);
    else static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
  }
}

// Keeps the stream busy for `ns` nanoseconds (one thread spinning on the global timer), so that
// work enqueued behind it is already submitted when the GPU reaches it: CUDA events around that
// work then time the device alone, not the host's enqueue (src/bench/busy-queue.ts). Launch: 1×1.
extern "C" __global__ void pq_spin_ns(long long ns) {
  const long long start = pq_global_timer_ns();
  while (pq_global_timer_ns() - start < ns) __nanosleep(1000);
}

// The resident protocol's round trip alone (resident.cuh): every block waits for each ring and
// arrives, serving nothing. Launch: any grid whose blocks are all resident at once, any block size.
extern "C" __global__ void pq_resident_echo(PqResidentWords* words, PqResidentCounters* counters, unsigned first_ticket) {
  pq_resident_serve(words, counters, first_ticket, [](unsigned) {});
}

// *flag = value, published to the host (release, system scope): a launch whose completion the host
// sees by polling pinned memory instead of synchronizing the stream. Launch: 1×1.
extern "C" __global__ void pq_publish_u32(unsigned* flag, unsigned value) { pq_store_release_sys(flag, value); }
