// Key append: the PQ codes of new keys (SPEC §2 append), and the pair-count table update.
//
// pq_append: codes of n new keys at positions sk .. sk+n-1, then sk += n.
//   Launch: grid B*Hkv*n blocks (block x = (b*Hkv + kvh)*n + i), block 256 threads (8 warps).
//   Each (m, c) distance is computed by an aligned group of 8 lanes in the canonical order of
//   common.cuh (bit-identical to the CPU oracle), ip keys augmented with the stored phi; the
//   nearest centroid (ties -> lower index) becomes the code when the position is >= O.
//   When pair_count is given (n == 1 only, M <= 2), the position that becomes eligible with this
//   append, q = sk - W (if q >= lo), adds one to its code pair's count (select_pairs.cu).
//   The last block to finish (atomic counter, reset by it) commits seq_state[0] = sk + n, so every
//   block reads the old sk.
// Invariants: D <= MAX_D, M*C <= MAX_ENTRIES, cstride % 4 == 0, sk + n <= capacity.
#include "common.cuh"

namespace {
constexpr int NT = 256;
constexpr int MAX_D = 1024;
constexpr int MAX_M = 8;
constexpr int MAX_ENTRIES = 2048;  // M * C
}  // namespace

extern "C" __global__ void __launch_bounds__(NT) pq_append(
    const void* keys, int kdtype, int n, const float* centroids, int cstride, const float* phi, uint8_t* codes,
    int* seq_state, unsigned* append_counter, int* status, unsigned* pair_count, int D, int M, int C, int capacity,
    int O, int ip, int lo_eligible, int W) {
  __shared__ float x[MAX_D + MAX_M];  // the key's sub-vectors, each followed by its ip coordinate
  __shared__ float dist[MAX_ENTRIES];
  __shared__ int best_code[MAX_M];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int bkv = blockIdx.x / n;
  const int i = blockIdx.x - bkv * n;
  const int sk = seq_state[0];
  const int p = sk + i;
  const int dsub = D / M;
  const int cdim = dsub + (ip ? 1 : 0);
  for (int d = tid; d < D; d += NT) {
    const float v = pq_load_float(keys, kdtype, static_cast<int64_t>(blockIdx.x) * D + d);
    if (!isfinite(v)) atomicOr(status, PQ_STATUS_KEY_NONFINITE);
    x[(d / dsub) * cdim + d % dsub] = v;
  }
  // The position entering the eligible range, q = sk - W, already has its code when W > 0: count
  // it now (a fire-and-forget atomic) instead of on the block's serial tail.
  const int q = sk - W;
  auto count_pair = [&](auto code_of) {
    int idx = 0;
    for (int m = M - 1; m >= 0; --m) idx = idx * C + code_of(m);
    atomicAdd(&pair_count[static_cast<int64_t>(bkv) * (M == 1 ? C : C * C) + idx], 1u);
  };
  const bool counts_q = pair_count != nullptr && q >= lo_eligible && q >= 0;
  if (counts_q && q != p && tid == NT - 1) {
    count_pair([&](int m) { return static_cast<int>(codes[(static_cast<int64_t>(bkv) * capacity + q) * M + m]); });
  }
  __syncthreads();
  if (ip) {
    // |x_m|^2 by the 8 lanes of group m (canonical order), then the augmented coordinate.
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
  if (tid == 0) {
    if (counts_q && q == p) count_pair([&](int m) { return best_code[m]; });  // W == 0: the new key itself
    __threadfence();
    if (atomicAdd(append_counter, 1u) == gridDim.x - 1) {
      seq_state[0] = sk + n;
      *append_counter = 0u;
      __threadfence();
    }
  }
}
