// Key append: the PQ codes of new keys (SPEC §2 append), for the general select path and for
// multi-key appends (the pair path fuses the one-key append into its step kernel when W >= 1).
//
// pq_append: codes of n new keys at positions sk .. sk+n-1 (sk = *seq_read), then *seq_write = sk + n.
//   Launch: grid B*Hkv*n blocks (block x = (b*Hkv + kvh)*n + i), block 256 threads.
//   Key i of row (b, kvh) starts at element b*batch_stride + kvh*head_stride + r*row_stride of `keys`
//   (its D elements contiguous), r = i, or sk + i with `rows_from_seq` (a decode step's key from a
//   K cache, `keys` its base: append_block.cuh PqStepKey), so a slice of a K cache [B, Hkv, capacity,
//   D] is read in place.
//   Codes as append_block.cuh. When pair_count is given (n == 1 only, M <= 2), the position that
//   becomes eligible with this append, q = sk - W (if q >= lo), adds one to its code pair's count
//   (select_pairs.cu). seq_read and seq_write are different slots (the host alternates them by step
//   parity), so every block reads the old sk and any block may write the new one.
// Invariants: D <= 1024, M*C <= 2048, cstride % 4 == 0, sk + n <= capacity; the key rows do not
//   overlap (the host checks the strides: src/pq/validate.ts checkDeviceKeys).
#include "append_block.cuh"

extern "C" __global__ void __launch_bounds__(256) pq_append(
    const void* keys, int kdtype, int n, int Hkv, uint64_t batch_stride, uint64_t head_stride, uint64_t row_stride,
    int rows_from_seq, const float* centroids, int cstride, const float* phi, uint8_t* codes,
    const int* seq_read, int* seq_write, int* status, unsigned* pair_count, int D, int M, int C, int capacity, int O,
    int ip, int lo_eligible, int W) {
  __shared__ float x[PQ_APPEND_MAX_D + PQ_APPEND_MAX_M];
  __shared__ float dist[PQ_APPEND_MAX_ENTRIES];
  __shared__ int best_code[PQ_APPEND_MAX_M];
  const int bkv = blockIdx.x / n;
  const int i = blockIdx.x - bkv * n;
  const int sk = *seq_read;
  const int p = sk + i;
  const int q = sk - W;  // enters the eligible range [lo, sk + 1 - W) with a one-key append
  const bool counts_q = pair_count != nullptr && q >= lo_eligible && q >= 0;
  auto count_pair = [&](auto code_of) {
    int idx = 0;
    for (int m = M - 1; m >= 0; --m) idx = idx * C + code_of(m);
    atomicAdd(&pair_count[static_cast<int64_t>(bkv) * (M == 1 ? C : C * C) + idx], 1u);
  };
  // When W > 0, q already has its code: count it now rather than on the block's tail.
  if (counts_q && q != p && threadIdx.x == 255)
    count_pair([&](int m) { return static_cast<int>(codes[(static_cast<int64_t>(bkv) * capacity + q) * M + m]); });
  const void* key = pq_key_row(keys, kdtype, bkv, Hkv, batch_stride, head_stride, row_stride,
                               static_cast<uint64_t>(i) + (rows_from_seq ? static_cast<uint64_t>(sk) : 0u));
  pq_append_one_key<256>(key, kdtype, centroids, cstride, phi, codes, status, bkv, p, D, M, C, capacity, O,
                         ip, x, dist, best_code);
  if (threadIdx.x == 0) {
    if (counts_q && q == p) count_pair([&](int m) { return best_code[m]; });  // W == 0: the new key itself
    if (blockIdx.x == 0) *seq_write = sk + n;
  }
}
