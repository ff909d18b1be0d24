// PQ build: batched k-means over every (b, kv-head, sub-space) group at once (SPEC §2 build), in
// the operation order of the CPU oracle (src/pq/kmeans.ts), so that from the same initial draw both
// give identical codes and centroids on integer-valued data.
//
// Groups g = (b*Hkv + kvh)*M + m; the n = sk - O points of group g are the sub-vectors
// keys[b, kvh, O + p, m*dsub : (m+1)*dsub] (fp32), augmented for ip with
// sqrt(max(phi_g - |x|^2, 0)) where phi_g = max |x|^2 over the group. Centroids are [G, C, cstride].
//
// One round = pq_build_assign (codes) -> pq_build_accumulate (sums, counts) -> pq_build_finalize
// (means; an empty cluster takes the point drawn by pq_draw(seed, 2g+1, round*256 + c)).
//
// Launch shapes:
//   pq_build_norms       grid (ceil(n/256), G), block 256: |x|^2 per point, phi_g by atomicMax.
//   pq_build_init        grid (G), block 256: centroid c of g = point init_index[g, c].
//   pq_build_assign_dN   grid (ceil(n/128), G), block 128, dynamic smem C*cstride floats: one point
//                        per thread, held in registers (dsub <= N), canonical distance to every
//                        centroid, nearest (ties -> lower index) into codes_tmp and, when
//                        index_codes is given, into the index's code buffer.
//   pq_build_accumulate  grid (chunks, G), block 256, dynamic smem C*cdim doubles + C counts:
//                        per-cluster float64 sums in shared memory (or straight to global when too
//                        large), then added to the global sums; the mean rounds once, as the oracle.
//   pq_build_finalize    grid (G), block 256: means (fp32 division) or the re-seed.
// Invariants: cdim = dsub + ip <= 129; C <= 256; cstride % 4 == 0; n >= 1.
#include "common.cuh"

namespace {

__device__ __forceinline__ const float* point_row(const float* keys, int g, int p, int M, int sk, int D, int O) {
  const int bkv = g / M;
  const int m = g - bkv * M;
  return keys + (static_cast<int64_t>(bkv) * sk + O + p) * D + m * (D / M);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256) pq_build_norms(const float* keys, float* norms, float* phi, int n, int M,
                                                                 int sk, int D, int O) {
  const int g = blockIdx.y;
  const int p = blockIdx.x * 256 + threadIdx.x;
  if (p >= n) return;
  const int dsub = D / M;
  const float* x = point_row(keys, g, p, M, sk, D, O);
  float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int j0 = 0; j0 < dsub; j0 += 8) {
#pragma unroll
    for (int r = 0; r < 8; ++r)
      if (j0 + r < dsub) part[r] = __fadd_rn(part[r], __fmul_rn(x[j0 + r], x[j0 + r]));
  }
  const float s = pq_tree8_sum(part);
  norms[static_cast<int64_t>(g) * n + p] = s;
  atomicMax(reinterpret_cast<int*>(phi) + g, __float_as_int(s));  // s >= 0: int order = float order
}

// Coordinate j of point p of group g (j == dsub: the ip augmentation).
__device__ __forceinline__ float point_coord(const float* keys, const float* norms, const float* phi, int g, int p, int j,
                                             int n, int M, int sk, int D, int O, int dsub) {
  if (j < dsub) return point_row(keys, g, p, M, sk, D, O)[j];
  return pq_ip_augment(phi[g], norms[static_cast<int64_t>(g) * n + p]);
}

extern "C" __global__ void __launch_bounds__(256) pq_build_init(const float* keys, const float* norms, const float* phi,
                                                                const int* init_index, float* centroids, int n, int M,
                                                                int sk, int D, int O, int C, int cdim, int cstride) {
  const int g = blockIdx.x;
  const int dsub = D / M;
  for (int e = threadIdx.x; e < C * cdim; e += 256) {
    const int c = e / cdim;
    const int j = e - c * cdim;
    const int p = init_index[g * C + c];
    centroids[(static_cast<int64_t>(g) * C + c) * cstride + j] = point_coord(keys, norms, phi, g, p, j, n, M, sk, D, O, dsub);
  }
}

// One point per thread, coordinates in registers (DS = dsub rounded up to 8, plus the ip slot).
template <int DS>
__device__ void build_assign(const float* keys, const float* norms, const float* phi, const float* centroids,
                             uint8_t* codes_tmp, uint8_t* index_codes, int n, int M, int sk, int D, int O, int C, int cdim,
                             int cstride, int capacity) {
  extern __shared__ float cs[];  // C * cstride
  const int g = blockIdx.y;
  const float* gc = centroids + static_cast<int64_t>(g) * C * cstride;
  for (int e = threadIdx.x; e < C * cstride; e += blockDim.x) cs[e] = gc[e];
  __syncthreads();
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= n) return;
  const int dsub = D / M;
  float x[DS + 1];
  const float* row = point_row(keys, g, p, M, sk, D, O);
#pragma unroll
  for (int j = 0; j < DS; ++j) x[j] = j < dsub ? row[j] : 0.0f;
  x[DS] = cdim > dsub ? pq_ip_augment(phi[g], norms[static_cast<int64_t>(g) * n + p]) : 0.0f;
  float best = INFINITY;
  int best_c = 0;
  for (int c = 0; c < C; ++c) {
    const float* cr = cs + c * cstride;
    float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < DS; ++j) {
      if (j < dsub) {
        const float t = __fsub_rn(x[j], cr[j]);
        part[j & 7] = __fadd_rn(part[j & 7], __fmul_rn(t, t));
      }
    }
    if (cdim > dsub) {  // the ip coordinate is dimension dsub: partial dsub % 8
      const float t = __fsub_rn(x[DS], cr[dsub]);
      const int r = dsub & 7;
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if (k == r) part[k] = __fadd_rn(part[k], __fmul_rn(t, t));
    }
    const float d = pq_tree8_sum(part);
    if (d < best) {
      best = d;
      best_c = c;
    }
  }
  codes_tmp[static_cast<int64_t>(g) * n + p] = static_cast<uint8_t>(best_c);
  if (index_codes != nullptr) {
    const int bkv = g / M;
    const int m = g - bkv * M;
    index_codes[(static_cast<int64_t>(bkv) * capacity + O + p) * M + m] = static_cast<uint8_t>(best_c);
  }
}

#define PQ_BUILD_ASSIGN(DS)                                                                                         \
  extern "C" __global__ void __launch_bounds__(128) pq_build_assign_d##DS(                                         \
      const float* keys, const float* norms, const float* phi, const float* centroids, uint8_t* codes_tmp,         \
      uint8_t* index_codes, int n, int M, int sk, int D, int O, int C, int cdim, int cstride, int capacity) {     \
    build_assign<DS>(keys, norms, phi, centroids, codes_tmp, index_codes, n, M, sk, D, O, C, cdim, cstride,       \
                     capacity);                                                                                    \
  }
PQ_BUILD_ASSIGN(8)
PQ_BUILD_ASSIGN(16)
PQ_BUILD_ASSIGN(32)
PQ_BUILD_ASSIGN(64)
PQ_BUILD_ASSIGN(128)

// Sums (float64, as the CPU oracle: one rounding to fp32 at the mean) and counts per cluster:
// shared-memory accumulation of a chunk of points, then global atomics; `direct` skips shared memory
// (tables over the shared-memory limit: C * cdim doubles).
extern "C" __global__ void __launch_bounds__(256) pq_build_accumulate(const float* keys, const float* norms, const float* phi,
                                                                      const uint8_t* codes_tmp, double* sums, unsigned* counts,
                                                                      int n, int M, int sk, int D, int O, int C, int cdim,
                                                                      int chunk, int direct) {
  extern __shared__ double acc[];  // C * cdim sums, then C counts
  unsigned* cnt = reinterpret_cast<unsigned*>(acc + C * cdim);
  const int g = blockIdx.y;
  const int dsub = D / M;
  double* gsums = sums + static_cast<int64_t>(g) * C * cdim;
  unsigned* gcounts = counts + static_cast<int64_t>(g) * C;
  if (!direct) {
    for (int e = threadIdx.x; e < C * cdim; e += 256) acc[e] = 0.0;
    for (int c = threadIdx.x; c < C; c += 256) cnt[c] = 0u;
    __syncthreads();
  }
  double* tsum = direct ? gsums : acc;
  unsigned* tcnt = direct ? gcounts : cnt;
  const int p0 = blockIdx.x * chunk;
  const int p1 = min(p0 + chunk, n);
  // Warp w takes a point at a time; its lanes stride over the coordinates.
  const int lane = threadIdx.x & 31;
  for (int p = p0 + (threadIdx.x >> 5); p < p1; p += 8) {
    const int c = codes_tmp[static_cast<int64_t>(g) * n + p];
    const float* row = point_row(keys, g, p, M, sk, D, O);
    for (int j = lane; j < dsub; j += 32) atomicAdd(&tsum[c * cdim + j], static_cast<double>(row[j]));
    if (lane == 0) {
      if (cdim > dsub) atomicAdd(&tsum[c * cdim + dsub], static_cast<double>(pq_ip_augment(phi[g], norms[static_cast<int64_t>(g) * n + p])));
      atomicAdd(&tcnt[c], 1u);
    }
  }
  if (direct) return;
  __syncthreads();
  for (int e = threadIdx.x; e < C * cdim; e += 256)
    if (acc[e] != 0.0) atomicAdd(&gsums[e], acc[e]);
  for (int c = threadIdx.x; c < C; c += 256)
    if (cnt[c] != 0u) atomicAdd(&gcounts[c], cnt[c]);
}

extern "C" __global__ void __launch_bounds__(256) pq_build_finalize(const float* keys, const float* norms, const float* phi,
                                                                    const double* sums, const unsigned* counts, float* centroids,
                                                                    int n, int M, int sk, int D, int O, int C, int cdim,
                                                                    int cstride, unsigned seed, int round) {
  const int g = blockIdx.x;
  const int dsub = D / M;
  for (int e = threadIdx.x; e < C * cdim; e += 256) {
    const int c = e / cdim;
    const int j = e - c * cdim;
    const unsigned count = counts[g * C + c];
    float v;
    if (count == 0u) {
      const int s = static_cast<int>(pq_draw(seed, 2u * g + 1u, static_cast<unsigned>(round) * 256u + c) % static_cast<unsigned>(n));
      v = point_coord(keys, norms, phi, g, s, j, n, M, sk, D, O, dsub);
    } else {
      v = __fdiv_rn(__double2float_rn(sums[(static_cast<int64_t>(g) * C + c) * cdim + j]), static_cast<float>(count));
    }
    centroids[(static_cast<int64_t>(g) * C + c) * cstride + j] = v;
  }
}
