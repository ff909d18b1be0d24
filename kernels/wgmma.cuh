// Hopper wgmma (sm_90a) helpers: bf16 or f16 operands in shared memory as K-major rows of 128 bytes
// (64 elements) in the 128-byte swizzle, and the m64n64k16 product with fp32 accumulators. Used by
// kernels/build_ws.cu and by the accumulation probe scripts/wgmma-accum-probe.cu.
#pragma once
#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace {

constexpr int kSwizzleRowBytes = 128;  // one operand row: 64 bf16 or f16

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a swizzled operand: chunk c of row r
// sits at c ^ (r & 7), so the 8 rows of a 1024-byte atom spread each chunk over all banks.
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * kSwizzleRowBytes + ((chunk ^ (row & 7)) << 4); }

// Generic-proxy writes to shared memory (st.shared, cp.async) visible to the async proxy (wgmma).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// wgmma's shared-memory matrix descriptor for K-major rows of 128 bytes in the 128-byte swizzle:
// start address >> 4, leading offset 1 (unused in this mode), stride 1024 bytes (8 rows) >> 4,
// swizzle mode 1 (128B). The operand must start 1024-byte aligned. A k-step of 16 elements (32 bytes)
// further along a row: + 2.
__device__ __forceinline__ uint64_t swizzled_desc(const void* p) {
  const uint32_t a = pq_smem_addr(p);
  return static_cast<uint64_t>((a & 0x3FFFF) >> 4) | (1ull << 16) | (static_cast<uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

// The instruction of one k-step, by operand type (bf16 or f16; fp32 accumulators either way).
#define PQ_WGMMA_M64N64K16(NAME, TYPE)                                                                                       \
  __device__ __forceinline__ void NAME(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {                             \
    asm volatile(                                                                                                            \
        "{\n.reg .pred acc;\nsetp.ne.b32 acc, %34, 0;\n"                                                                      \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " "                                                      \
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, " \
        "%32, %33, acc, 1, 1, 0, 0;\n}\n"                                                                                     \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),         \
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), \
          "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),             \
          "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                       \
        : "l"(a), "l"(b), "r"(accumulate));                                                                                  \
  }
PQ_WGMMA_M64N64K16(wgmma_m64n64k16_bf16, "bf16")
PQ_WGMMA_M64N64K16(wgmma_m64n64k16_f16, "f16")
#undef PQ_WGMMA_M64N64K16

// d (+)= A B^T over one k-step, issued by a whole warpgroup: A = 64 rows (points), B = 64 rows
// (centroids), both of element type T (__nv_bfloat16 or __half), fp32 accumulators in mma.sync's
// layout per warp (warp w, lane 4q + t: d[4j + i] is B row 8j + 2t + (i & 1) of A row 16w + q + 8 (i >> 1)).
// accumulate == 0 ignores d's input. Products into one accumulator run in issue order (each reads the
// last one's d).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t a, uint64_t b, int accumulate) {
  static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value, "bf16 or f16 operands");
  if constexpr (std::is_same<T, __half>::value) wgmma_m64n64k16_f16(d, a, b, accumulate);
  else wgmma_m64n64k16_bf16(d, a, b, accumulate);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

}  // namespace
