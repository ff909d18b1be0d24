// Diagnostic: the mma.sync m16n8k16 bf16 rate of this GPU, in clock64 cycles per HMMA per SM
// sub-partition, by independent accumulator chains a warp and warps a sub-partition (one block of
// 128*w threads per SM). The build's round kernel issues 64 of them a 16-point tile (session 33).
// nvcc is here, not on the GPU machine: build it into an untracked file of the repository root,
// which travels with the working tree, then run it there:
//   nvcc -O3 -arch=sm_90 -o mma-rate scripts/mma-rate.cu   then (device) ./mma-rate
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <int CHAINS>
__global__ void k(float* out, long long* cyc, int iters) {
  const int lane = threadIdx.x & 31;
  uint32_t a[4] = {0x3f803f80u + lane, 0x3f80u, 0x3f803f80u, 0x3f80u + lane};
  uint32_t b0 = 0x3c003c00u + lane, b1 = 0x3c00u;
  float acc[CHAINS][4];
  for (int c = 0; c < CHAINS; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
  __syncthreads();
  long long t0 = clock64();
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) mma(acc[c], a, b0, b1);
  }
  long long t1 = clock64();
  float s = 0.f;
  for (int c = 0; c < CHAINS; ++c) s += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (lane == 0) atomicMax((unsigned long long*)cyc, (unsigned long long)(t1 - t0));
}
template <int CHAINS>
void run(int sms, int warpsPerSmsp) {
  const int iters = 4096 / CHAINS * 4;
  int blocks = sms, threads = 128 * warpsPerSmsp;  // one block per SM: 4*warpsPerSmsp warps
  float* out; long long* cyc;
  cudaMalloc(&out, blocks * threads * 4); cudaMalloc(&cyc, 8);
  k<CHAINS><<<blocks, threads>>>(out, cyc, iters); cudaDeviceSynchronize();
  cudaMemset(cyc, 0, 8);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  cudaEventRecord(e0);
  k<CHAINS><<<blocks, threads>>>(out, cyc, iters);
  cudaEventRecord(e1); cudaEventSynchronize(e1);
  float ms; cudaEventElapsedTime(&ms, e0, e1);
  long long c; cudaMemcpy(&c, cyc, 8, cudaMemcpyDeviceToHost);
  double hmma_per_smsp = double(iters) * CHAINS * warpsPerSmsp;
  printf("chains %d warps/smsp %d: %.2f cycles per HMMA per SMSP (clock64), %.3f ms, %.0f MHz implied\n", CHAINS, warpsPerSmsp,
         c / hmma_per_smsp, ms, c / (ms * 1e3));
  cudaFree(out); cudaFree(cyc);
}
int main() {
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  for (int w : {1, 2, 4}) { run<1>(sms, w); run<2>(sms, w); run<4>(sms, w); run<8>(sms, w); run<16>(sms, w); }
  cudaError_t e = cudaGetLastError(); printf("%s\n", cudaGetErrorString(e));
}
