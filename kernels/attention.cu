// Decode attention (SPEC §2 attend) with split-K (flash-decoding), and the K/V cache append.
//
//   out[b,h] = sum_p w_p e^{s_p - m} v_p / sum_p w_p e^{s_p - m},  s_p = <q[b,h], k[b,kvh,p]> / sqrt(D)
//
// The positions of a row are split across blocks. Each block keeps an online softmax per query head
// (running max m, sum l, accumulator acc[D], all fp32, scores in the log2 domain) and writes it as a
// partial; the last block of the row to finish (atomic counter) merges the partials with
// log-sum-exp weights and writes the output. The sparse cluster kernels (sm_90) merge inside the
// row's thread-block cluster instead, through rank 0's shared memory.
//
// pq_attend_sparse_<T>_d<DMAX>: row = (b, h) of B*H. Positions list[row][i] for i < len[row]
//   (ascending or not; -1 padding beyond len is never read); w_p = weights[row*w_stride + p] in
//   wdtype. Positions with w_p == 0 are skipped (no load). A position outside [0, sk) sets
//   PQ_STATUS_LIST_RANGE and is skipped. Each query head gathers its own rows: the G heads of a
//   kv-head select different positions, and the rows they share (sink, window) come from L2.
// pq_attend_sparse_<T>_d<DMAX>_c<CL> (sm_90): the same rows and semantics, one thread-block cluster
//   of CL ∈ {1, 2, 4, 8} blocks a row, merged in rank 0's shared memory (attend_sparse_cluster below:
//   launch shape, gather and invariants). Reads list entries up to min(CL*chunk, list_stride)
//   together with len and drops those at i >= len. A decode layer launches it behind its select
//   step with programmatic dependent launch: it loads its query, then waits for the step
//   (pq_wait_for_previous, common.cuh) before reading sk, the list, the weights or K/V; it lets the
//   next layer's K/V append be placed at once (that one waits for it before anything else).
// pq_attend_dense_<T>_d<DMAX>_g<GH>: row = (b, kvh, head group) of B*Hkv*ceil(G/GH); positions
//   0 .. sk-1 with w = 1; each K/V row is loaded once for the GH query heads of the group.
//   Launch: grid (splits, rows), block NT = 128 (4 warps). Block x covers [x*chunk, (x+1)*chunk) of
//   the row's positions. In a warp, groups of LP lanes take one position each (lane_per_position),
//   a lane holding DPL = DMAX/LP dims of q, k, v and acc; a warp loads U sub-steps of 32/LP
//   positions (all K and V rows) before using them.
// Layout: q [B,H,1,D] (qdtype) with row (b, h) at b*q_batch_stride + h*q_head_stride (PqStepRows,
//   common.cuh: contiguous, or a fused QKV output's query part); k/v caches (T) in rows of D elements,
//   row p of (b, kvh) being row b*kv_batch_rows + kvh*kv_head_rows + p*kv_pos_rows (PqKVRows: [B,Hkv,cap,D]
//   as our KVCache lays them, or e.g. [B,cap,Hkv,D]); out [B,H,D] (T),
//   partial [rows, splits, GH, D+4] f32 (m, l, -, -, acc), counters [rows] u32; splits <= MAX_SPLITS.
// sk = *seq_len + seq_add (seq_len == nullptr: sk = seq_add).
// Invariants (src/attention/cuda-attention.ts): D <= DMAX, D % 8 == 0, k/v base pointers 16-byte
//   aligned (so full packets are aligned vector loads; a lane past D % DPL loads element-wise); every
//   K/V row index below 2^31 and distinct rows not overlapping (src/attention/kv-layout.ts checks both);
//   counters zero before a launch (the merging block re-zeroes its row); splits * chunk covers
//   the longest row.
//
// pq_kv_append_<T>: key and value rows [B,Hkv,1,D] (any float dtype; each at its own row strides,
//   PqStepRows) written at position sk = *seq_len of the caches (PqKVRows), converted to T; seq_write
//   (optional, a different slot) gets sk + 1.
//   Non-finite values set PQ_STATUS_VALUE_NONFINITE (keys are checked by the PQ append, or here
//   when no PQ index runs). Launch: grid B*Hkv, block 128. Programmatic dependent launch (a decode
//   layer): it first waits for the kernel before it (the previous layer's attention), then lets the
//   kernel launched behind it start (this layer's select step).
#include <cooperative_groups.h>
#include <type_traits>

#include "common.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int NT = 128;
constexpr int NWARPS = NT / 32;
constexpr float LOG2E = 1.4426950408889634f;
constexpr int MAX_SPLITS = 256;  // splits per row (the merge keeps one weight per split and head)

// Where the K/V caches' rows lie, counted in rows of D elements (the same for keys and values): row p
// of (b, kvh) is row row0(b, kvh) + p*pos, at element (row0 + p*pos)*D. Row indices are 32-bit (the
// host keeps them below 2^31), and only the element offset is 64-bit: with 64-bit strides, ptxas laid
// out the cluster kernel's gather differently (+208 instructions, +0.56 us a layer in the 32-layer
// stack, bench/NOTES.md session 51).
struct PqKVRows {
  int batch;
  int head;
  int pos;
  __device__ __forceinline__ int row0(int b, int kvh) const { return b * batch + kvh * head; }
};

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
};
template <>
struct Elem<__half> {
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

// DPL consecutive elements of one row, loaded as 8- or 16-byte vectors and kept packed until used.
template <typename T, int DPL>
struct Packet {
  static constexpr int WORDS = DPL * static_cast<int>(sizeof(T)) / 4;
  uint32_t w[WORDS];

  __device__ __forceinline__ void load(const T* p) {
    if constexpr (WORDS == 2) {
      const uint2 a = __ldg(reinterpret_cast<const uint2*>(p));
      w[0] = a.x;
      w[1] = a.y;
    } else {
#pragma unroll
      for (int i = 0; i < WORDS / 4; ++i) {
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(p) + i);
        w[4 * i] = a.x;
        w[4 * i + 1] = a.y;
        w[4 * i + 2] = a.z;
        w[4 * i + 3] = a.w;
      }
    }
  }

  // The first `count` < DPL elements (the row's last lane when D % DPL != 0); the rest zero.
  __device__ __forceinline__ void load_partial(const T* p, int count) {
    zero();
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      if (j >= count) continue;
      if constexpr (sizeof(T) == 4) {
        w[j] = __float_as_uint(static_cast<const float*>(static_cast<const void*>(p))[j]);
      } else {
        const uint32_t bits = static_cast<const unsigned short*>(static_cast<const void*>(p))[j];
        w[j >> 1] |= bits << ((j & 1) * 16);
      }
    }
  }

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < WORDS; ++i) w[i] = 0u;
  }

  __device__ __forceinline__ float get(int j) const {
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(w[j]);
    } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      return __uint_as_float((j & 1) ? (w[j >> 1] & 0xffff0000u) : (w[j >> 1] << 16));  // bf16 = high half of f32
    } else {
      return __half2float(__ushort_as_half(static_cast<unsigned short>((w[j >> 1] >> ((j & 1) * 16)) & 0xffffu)));
    }
  }
};

// Work split of a warp (host mirror: src/attention/cuda-attention.ts attendGeometry):
//   LP lanes share one position, each holding DPL = DMAX / LP consecutive dims, so a score costs
//   log2(LP) shuffles for PW = 32 / LP positions at once; GH * DPL <= 32 keeps q and acc at 64
//   registers. U sub-steps (PW positions each) are loaded before use: 2U packets of <= 32 words.
template <int DMAX, int GH>
__host__ __device__ constexpr int lanes_per_position() {
  return GH * DMAX / 32 < 8 ? 8 : GH * DMAX / 32 > 32 ? 32 : GH * DMAX / 32;
}
template <typename T, int DMAX, int GH>
__host__ __device__ constexpr int substeps() {
  return 32 / (2 * (DMAX / lanes_per_position<DMAX, GH>()) * static_cast<int>(sizeof(T)) / 4) < 1
             ? 1
             : 32 / (2 * (DMAX / lanes_per_position<DMAX, GH>()) * static_cast<int>(sizeof(T)) / 4);
}

// Merge online-softmax states (m, l, acc) of two parts; m == -inf marks an empty part.
template <int GH, int DPL>
__device__ __forceinline__ void merge_state(float (&m)[GH], float (&l)[GH], float (&acc)[GH][DPL], int xor_mask) {
#pragma unroll
  for (int g = 0; g < GH; ++g) {
    const float mo = __shfl_xor_sync(0xffffffffu, m[g], xor_mask);
    const float lo = __shfl_xor_sync(0xffffffffu, l[g], xor_mask);
    const float mx = fmaxf(m[g], mo);
    const float fa = m[g] == -INFINITY ? 0.0f : exp2f(m[g] - mx);
    const float fb = mo == -INFINITY ? 0.0f : exp2f(mo - mx);
    l[g] = l[g] * fa + lo * fb;
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      const float ao = __shfl_xor_sync(0xffffffffu, acc[g][j], xor_mask);
      acc[g][j] = acc[g][j] * fa + ao * fb;
    }
    m[g] = mx;
  }
}

// The query heads grid row blockIdx.y holds: sparse rows are (b, h), dense rows (b, kvh, head group).
struct AttendRow {
  int row, b, kvh, first_head, heads;
};
template <int GH, bool SPARSE>
__device__ __forceinline__ AttendRow attend_row(int row, int H, int Hkv) {
  AttendRow r;
  r.row = row;
  const int G = H / Hkv;
  if constexpr (SPARSE) {
    r.b = r.row / H;
    r.first_head = r.row - r.b * H;
    r.kvh = r.first_head / G;
    r.heads = 1;
  } else {
    const int groups = (G + GH - 1) / GH;
    const int bk = r.row / groups;
    const int grp = r.row - bk * groups;
    r.b = bk / Hkv;
    r.kvh = bk - r.b * Hkv;
    r.first_head = r.kvh * G + grp * GH;
    r.heads = min(GH, G - grp * GH);
  }
  return r;
}

// The block's state of head g merged over its NW warps' states (sm_m, sm_l, sm_acc): acc[d] for
// d < D, l for d == D; the block's running max in *mx.
template <int NW, int GH, int DMAX>
__device__ __forceinline__ float block_state(const float (&sm_m)[NW][GH], const float (&sm_l)[NW][GH], const float (&sm_acc)[NW][GH][DMAX],
                                             int g, int d, int D, float* mx) {
  float m = -INFINITY;
#pragma unroll
  for (int w = 0; w < NW; ++w) m = fmaxf(m, sm_m[w][g]);
  float sum = 0.0f;
#pragma unroll
  for (int w = 0; w < NW; ++w) {
    const float f = sm_m[w][g] == -INFINITY ? 0.0f : exp2f(sm_m[w][g] - m);
    sum += f * (d < D ? sm_acc[w][g][d] : sm_l[w][g]);
  }
  *mx = m;
  return sum;
}

// Split-K with a global merge (grid (splits, rows), NT threads, any architecture): each block writes
// its partial, and the last block of the row to finish (atomic counter) merges them.
template <typename T, int DMAX, int GH, bool SPARSE>
__device__ void attend_block(const PqStepRows q, const T* __restrict__ kcache, const T* __restrict__ vcache,
                             const int* __restrict__ list, const int* __restrict__ list_len, int list_stride,
                             const void* __restrict__ weights, int wdtype, int64_t w_stride, T* __restrict__ out,
                             float* __restrict__ partial, unsigned* __restrict__ counters, int* status, const int* seq_len,
                             int seq_add, int H, int Hkv, int D, const PqKVRows kv, int chunk) {
  constexpr int LP = lanes_per_position<DMAX, GH>();
  constexpr int DPL = DMAX / LP;
  constexpr int PW = 32 / LP;
  constexpr int U = substeps<T, DMAX, GH>();
  constexpr int PER_WARP = PW * U;  // positions per warp per batch
  __shared__ float sm_m[NWARPS][GH];
  __shared__ float sm_l[NWARPS][GH];
  __shared__ float sm_acc[NWARPS][GH][DMAX];
  __shared__ bool sm_last;

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int slot = lane / LP;  // which of the PW positions of a sub-step
  const int sub = lane % LP;   // which dim slice
  const int row = blockIdx.y;
  const int split = blockIdx.x;
  const int splits = gridDim.x;
  const int sk = (seq_len != nullptr ? *seq_len : 0) + seq_add;
  const AttendRow r = attend_row<GH, SPARSE>(row, H, Hkv);
  const int b = r.b, kvh = r.kvh, first_head = r.first_head, heads = r.heads;
  const int d0 = sub * DPL;
  const int lane_dims = max(0, min(DPL, D - d0));  // DPL, except on the last lane when D % DPL != 0
  const float scale = rsqrtf(static_cast<float>(D)) * LOG2E;

  float qf[GH][DPL];
#pragma unroll
  for (int g = 0; g < GH; ++g)
#pragma unroll
    for (int j = 0; j < DPL; ++j)
      qf[g][j] = (g < heads && d0 + j < D) ? q.load(b, first_head + g, d0 + j) * scale : 0.0f;

  // Online softmax per query head, per lane group (uniform across the LP lanes of a group).
  float m[GH], l[GH], acc[GH][DPL];
#pragma unroll
  for (int g = 0; g < GH; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) acc[g][j] = 0.0f;
  }

  const int n = SPARSE ? list_len[row] : sk;
  const int begin = split * chunk;
  const int end = min(n, begin + chunk);
  const int64_t kv_row0 = kv.row0(b, kvh);
  for (int base = begin + warp * PER_WARP; base < end; base += NWARPS * PER_WARP) {
    int pos[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = base + u * PW + slot;
      int p = -1;
      if (i < end) {
        if constexpr (SPARSE) {
          p = list[static_cast<int64_t>(row) * list_stride + i];
          if (p < 0 || p >= sk) {
            if (sub == 0) pq_flag_status(status, PQ_STATUS_LIST_RANGE);
            p = -1;
          }
        } else {
          p = i;
        }
      }
      pos[u] = p;
    }
    // K/V loads go out before the weights arrive (a zero weight only drops the position later).
    // Addresses are clamped in range for lanes that load nothing.
    Packet<T, DPL> kp[U], vp[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t at = (kv_row0 + max(pos[u], 0) * kv.pos) * D + (lane_dims > 0 ? d0 : 0);
      if (pos[u] >= 0 && lane_dims == DPL) {
        kp[u].load(kcache + at);
        vp[u].load(vcache + at);
      } else if (pos[u] >= 0 && lane_dims > 0) {
        kp[u].load_partial(kcache + at, lane_dims);
        vp[u].load_partial(vcache + at, lane_dims);
      } else {
        kp[u].zero();
        vp[u].zero();
      }
    }
    float w[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      w[u] = 0.0f;
      if (pos[u] >= 0) w[u] = SPARSE ? pq_load_float(weights, wdtype, row * w_stride + pos[u]) : 1.0f;
      if (!(w[u] > 0.0f)) pos[u] = -1;  // zero (or invalid) weight: contributes nothing
    }
    float s[GH][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int g = 0; g < GH; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < DPL; ++j) dot = fmaf(qf[g][j], kp[u].get(j), dot);
#pragma unroll
        for (int o = LP / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        s[g][u] = dot;
      }
    }
#pragma unroll
    for (int g = 0; g < GH; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (pos[u] >= 0) mx = fmaxf(mx, s[g][u]);
      if (mx == -INFINITY) continue;  // nothing seen yet by this lane group
      const float corr = exp2f(m[g] - mx);  // m = -inf -> 0
      l[g] *= corr;
#pragma unroll
      for (int j = 0; j < DPL; ++j) acc[g][j] *= corr;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float e = pos[u] >= 0 ? w[u] * exp2f(s[g][u] - mx) : 0.0f;
        l[g] += e;
#pragma unroll
        for (int j = 0; j < DPL; ++j) acc[g][j] = fmaf(e, vp[u].get(j), acc[g][j]);
      }
      m[g] = mx;
    }
  }

  // Merge the PW lane groups of the warp, then the warps of the block, into one partial per head.
#pragma unroll
  for (int o = LP; o < 32; o <<= 1) merge_state<GH, DPL>(m, l, acc, o);
  if (slot == 0) {
#pragma unroll
    for (int g = 0; g < GH; ++g) {
      if (sub == 0) {
        sm_m[warp][g] = m[g];
        sm_l[warp][g] = l[g];
      }
#pragma unroll
      for (int j = 0; j < DPL; ++j)
        if (j < lane_dims) sm_acc[warp][g][d0 + j] = acc[g][j];
    }
  }
  __syncthreads();
  // Partial record per head: [m, l, -, -, acc[D]] (acc 16-byte aligned for the merge's float4 loads).
  const int rec = D + 4;
  float* my_partial = partial + (static_cast<int64_t>(row) * splits + split) * GH * rec;
  for (int t = threadIdx.x; t < heads * (D + 1); t += NT) {
    const int g = t / (D + 1);
    const int d = t - g * (D + 1);  // d == D: the (m, l) pair
    float mx;
    const float sum = block_state(sm_m, sm_l, sm_acc, g, d, D, &mx);
    if (d < D) {
      my_partial[g * rec + 4 + d] = sum;
    } else {
      my_partial[g * rec] = mx;
      my_partial[g * rec + 1] = sum;
    }
  }

  // The last block of the row merges every split's partial: the split weights f = 2^(m_x - M)
  // first (in shared memory), then each thread sums 4 consecutive dims over the splits with
  // independent float4 loads, 16 splits at a time.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) sm_last = atomicAdd(&counters[row], 1u) == static_cast<unsigned>(splits - 1);
  __syncthreads();
  if (!sm_last) return;
  __threadfence();
  // The warps' accumulators are written out: their shared memory holds the split weights now.
  static_assert(NWARPS * DMAX >= 2 * MAX_SPLITS, "sm_acc must hold sm_f and sm_sl");
  float(*sm_f)[GH] = reinterpret_cast<float(*)[GH]>(&sm_acc[0][0][0]);
  float(*sm_sl)[GH] = sm_f + MAX_SPLITS;
  __shared__ float sm_den[GH];
  const float* row_partial = partial + static_cast<int64_t>(row) * splits * GH * rec;
  for (int t = threadIdx.x; t < splits * heads; t += NT) {  // every (m, l) at once: one round trip
    const int x = t / heads;
    const int g = t - x * heads;
    const float2 ml = __ldcg(reinterpret_cast<const float2*>(row_partial + (x * GH + g) * rec));
    sm_f[x][g] = ml.x;  // m_x for now
    sm_sl[x][g] = ml.y;
  }
  __syncthreads();
  if (threadIdx.x < heads) {
    const int g = threadIdx.x;
    float mx = -INFINITY;
    for (int x = 0; x < splits; ++x) mx = fmaxf(mx, sm_f[x][g]);
    float den = 0.0f;
    for (int x = 0; x < splits; ++x) {
      const float f = sm_f[x][g] == -INFINITY ? 0.0f : exp2f(sm_f[x][g] - mx);
      den += f * sm_sl[x][g];
      sm_f[x][g] = f;
    }
    sm_den[g] = den;
  }
  __syncthreads();
  for (int t = threadIdx.x; t < heads * (D / 4); t += NT) {
    const int g = t / (D / 4);
    const int d = (t - g * (D / 4)) * 4;
    float4 num = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int x0 = 0; x0 < splits; x0 += 16) {
      float4 a[16];
#pragma unroll
      for (int k = 0; k < 16; ++k)
        a[k] = x0 + k < splits ? __ldcg(reinterpret_cast<const float4*>(row_partial + ((x0 + k) * GH + g) * rec + 4 + d))
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        const float f = x0 + k < splits ? sm_f[x0 + k][g] : 0.0f;
        num.x = fmaf(f, a[k].x, num.x);
        num.y = fmaf(f, a[k].y, num.y);
        num.z = fmaf(f, a[k].z, num.z);
        num.w = fmaf(f, a[k].w, num.w);
      }
    }
    const float den = sm_den[g];
    T* o = out + static_cast<int64_t>(b * H + first_head + g) * D + d;
    o[0] = Elem<T>::from_float(den > 0.0f ? num.x / den : 0.0f);
    o[1] = Elem<T>::from_float(den > 0.0f ? num.y / den : 0.0f);
    o[2] = Elem<T>::from_float(den > 0.0f ? num.z / den : 0.0f);
    o[3] = Elem<T>::from_float(den > 0.0f ? num.w / den : 0.0f);
  }
  if (threadIdx.x == 0) counters[row] = 0u;
}

// Split-K merged inside a thread-block cluster (sm_90; grid (CL, rows), clusters (CL, 1, 1), block
// CLUSTER_NT): rank x gathers positions [x*chunk, (x+1)*chunk) of its row, pushes its block state
// into rank 0's shared memory (DSMEM), and after one cluster barrier rank 0 merges the CL states
// and writes the output. No partials in global memory, no fence, no counter.
// The gather is shaped for short lists rather than long rows: a warp's 32 lanes share one position
// at a time, lane l holding dims [l*DPL, (l+1)*DPL) (DPL = DMAX/32), so the warp's softmax state is
// uniform and needs no merge across lane groups; warp w takes CLUSTER_PB consecutive positions of
// each pass, lane k < CLUSTER_PB reads the k-th one's list entry and weight, and every K/V row of
// the pass is in flight before the first score. (attend_block's lane groups, made for dense rows,
// cost ≈ 1,000 instructions a warp for 8 positions: bench/NOTES.md session 40.) Entries of the
// list up to the chunk's end (at most list_stride) are read with its length, not after it; those at
// i ≥ len are dropped.
constexpr int CLUSTER_NT = 256;
constexpr int CLUSTER_PB = 8;  // positions a warp has in flight (src/attention/cuda-attention.ts ATTEND_CLUSTER_POSITIONS_PER_WARP)
static_assert(CLUSTER_PB <= 32, "lane k < CLUSTER_PB reads the k-th position's list entry and weight");
template <typename T, int DMAX, int CL>
__device__ void attend_sparse_cluster(const PqStepRows q, const T* __restrict__ kcache, const T* __restrict__ vcache,
                                      const int* __restrict__ list, const int* __restrict__ list_len, int list_stride,
                                      const void* __restrict__ weights, int wdtype, int64_t w_stride, T* __restrict__ out, int* status,
                                      const int* seq_len, int seq_add, int H, int Hkv, int D, const PqKVRows kv, int chunk) {
#if __CUDA_ARCH__ >= 900
  constexpr int NW = CLUSTER_NT / 32;
  constexpr int DPL = DMAX / 32;
  constexpr int PB = CLUSTER_PB;
  __shared__ float sm_m[NW][1];
  __shared__ float sm_l[NW][1];
  __shared__ float sm_acc[NW][1][DMAX];
  __shared__ float cl_m[CL], cl_l[CL];
  __shared__ float cl_acc[CL][DMAX];
  const int row = blockIdx.y;
  const AttendRow r = attend_row<1, true>(row, H, Hkv);
  const int rank = blockIdx.x;  // cluster dims (CL, 1, 1) over a grid CL wide
  // Rank 0's shared memory may be written only once rank 0 runs: every block says it has started
  // here and waits for the others just before its pushes, long after (racecheck flagged the pushes
  // without it: "a block that might not have entered yet").
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  pq_allow_dependents();  // the next layer's K/V append may be placed (it waits for this grid first)
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int d0 = lane * DPL;
  const bool has_dims = d0 < D;  // D % 8 == 0 and DPL ∈ {4, 8}: a lane holds all DPL dims or none
  const float scale = rsqrtf(static_cast<float>(D)) * LOG2E;
  float qf[DPL];
#pragma unroll
  for (int j = 0; j < DPL; ++j) qf[j] = has_dims ? q.load(r.b, r.first_head, d0 + j) * scale : 0.0f;
  // Launched behind the decode layer's select step (overlapPrevious): the query is the caller's, so
  // it loads before the step ends; sk, the list, its weights and the K/V rows only after.
  pq_wait_for_previous();
  const int sk = (seq_len != nullptr ? *seq_len : 0) + seq_add;
  const int n = list_len[row];
  const int begin = rank * chunk;
  const int end = min(begin + chunk, list_stride);  // not min(n, …): the list loads do not wait for n
  const int64_t kv_row0 = kv.row0(r.b, r.kvh);
  const int* row_list = list + static_cast<int64_t>(row) * list_stride;

  float m = -INFINITY, l = 0.0f, acc[DPL];
#pragma unroll
  for (int j = 0; j < DPL; ++j) acc[j] = 0.0f;
  for (int base = begin + warp * PB; base < end; base += NW * PB) {
    // Lane k < PB: the k-th position of this warp's pass, its weight (0: skipped).
    const int i = base + lane;
    int p = -1;
    if (lane < PB && i < end) {
      p = row_list[i];
      if (i >= n) {
        p = -1;  // past the row's length: read ahead, never used
      } else if (p < 0 || p >= sk) {
        pq_flag_status(status, PQ_STATUS_LIST_RANGE);
        p = -1;
      }
    }
    float w = p >= 0 ? pq_load_float(weights, wdtype, row * w_stride + p) : 0.0f;
    Packet<T, DPL> kp[PB], vp[PB];
    int pos[PB];
#pragma unroll
    for (int k = 0; k < PB; ++k) {
      pos[k] = __shfl_sync(0xffffffffu, p, k);
      const int64_t at = (kv_row0 + max(pos[k], 0) * kv.pos) * D + d0;
      if (pos[k] >= 0 && has_dims) {
        kp[k].load(kcache + at);
        vp[k].load(vcache + at);
      } else {
        kp[k].zero();
        vp[k].zero();
      }
    }
    float s[PB], wk[PB];
#pragma unroll
    for (int k = 0; k < PB; ++k) {
      wk[k] = __shfl_sync(0xffffffffu, w, k);
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < DPL; ++j) dot = fmaf(qf[j], kp[k].get(j), dot);
      s[k] = dot;
    }
    // Every lane's partial dots summed over the warp: log2(32) butterfly steps per position.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int k = 0; k < PB; ++k) s[k] += __shfl_xor_sync(0xffffffffu, s[k], o);
    float mx = m;
#pragma unroll
    for (int k = 0; k < PB; ++k)
      if (wk[k] > 0.0f) mx = fmaxf(mx, s[k]);
    if (mx == -INFINITY) continue;  // nothing in this pass, nor before it (uniform over the warp)
    const float corr = exp2f(m - mx);  // m = -inf -> 0
    l *= corr;
#pragma unroll
    for (int j = 0; j < DPL; ++j) acc[j] *= corr;
#pragma unroll
    for (int k = 0; k < PB; ++k) {
      const float e = wk[k] > 0.0f ? wk[k] * exp2f(s[k] - mx) : 0.0f;
      l += e;
#pragma unroll
      for (int j = 0; j < DPL; ++j) acc[j] = fmaf(e, vp[k].get(j), acc[j]);
    }
    m = mx;
  }
  if (lane == 0) {
    sm_m[warp][0] = m;
    sm_l[warp][0] = l;
  }
  if (has_dims) {
#pragma unroll
    for (int j = 0; j < DPL; ++j) sm_acc[warp][0][d0 + j] = acc[j];
  }
  __syncthreads();
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");  // every block of the cluster has started
  cg::cluster_group cluster = cg::this_cluster();
  float* to_acc = cluster.map_shared_rank(&cl_acc[rank][0], 0);
  for (int d = threadIdx.x; d <= D; d += CLUSTER_NT) {
    float mx;
    const float sum = block_state(sm_m, sm_l, sm_acc, 0, d, D, &mx);
    if (d < D) {
      to_acc[d] = sum;
    } else {
      *cluster.map_shared_rank(&cl_m[rank], 0) = mx;
      *cluster.map_shared_rank(&cl_l[rank], 0) = sum;
    }
  }
  cluster.sync();  // every rank's state is in rank 0's shared memory (release / acquire)
  if (rank != 0) return;
  float mx = -INFINITY;
#pragma unroll
  for (int x = 0; x < CL; ++x) mx = fmaxf(mx, cl_m[x]);
  float f[CL];
  float den = 0.0f;
#pragma unroll
  for (int x = 0; x < CL; ++x) {
    f[x] = cl_m[x] == -INFINITY ? 0.0f : exp2f(cl_m[x] - mx);
    den += f[x] * cl_l[x];
  }
  T* o = out + static_cast<int64_t>(r.b * H + r.first_head) * D;
  for (int d = threadIdx.x; d < D; d += CLUSTER_NT) {
    float num = 0.0f;
#pragma unroll
    for (int x = 0; x < CL; ++x) num = fmaf(f[x], cl_acc[x][d], num);
    o[d] = Elem<T>::from_float(den > 0.0f ? num / den : 0.0f);
  }
#else
  __trap();  // the host plans cluster kernels only on sm_90 and newer
#endif
}

template <typename T>
__device__ void kv_append(const PqStepRows key, const PqStepRows value, T* kcache, T* vcache, const int* seq_len, int* seq_write,
                          const PqKVRows kv, int Hkv, int D, int* status) {
  // In a decode stack it is launched behind the previous layer's attention: placed early, it waits
  // for that grid, so nothing of this layer runs before the layer before has ended; then it lets
  // this layer's select step start (which waits for this grid before it ends).
  pq_wait_for_previous();
  pq_allow_dependents();
  const int bkv = blockIdx.x;
  const int b = bkv / Hkv;
  const int kvh = bkv - b * Hkv;
  const int p = *seq_len;
  if (seq_write != nullptr && bkv == 0 && threadIdx.x == 0) *seq_write = p + 1;
  const int64_t dst = static_cast<int64_t>(kv.row0(b, kvh) + p * kv.pos) * D;
  bool bad_key = false, bad_value = false;
  for (int d = threadIdx.x; d < D; d += NT) {
    const float k = key.load(b, kvh, d);
    const float v = value.load(b, kvh, d);
    bad_key |= !isfinite(k);
    bad_value |= !isfinite(v);
    kcache[dst + d] = Elem<T>::from_float(k);
    vcache[dst + d] = Elem<T>::from_float(v);
  }
  if (bad_value) pq_flag_status(status, PQ_STATUS_VALUE_NONFINITE);
  if (bad_key && seq_write != nullptr) pq_flag_status(status, PQ_STATUS_KEY_NONFINITE);  // no PQ append checks it
}

}  // namespace

// A step's query as the kernel parameters give it (q_batch_stride, q_head_stride: PqStepRows).
#define PQ_ATTEND_QUERY PqStepRows{q, qdtype, q_batch_stride, q_head_stride}
// The K/V caches' rows as the kernel parameters give them (in rows of D elements).
#define PQ_KV_ROWS PqKVRows{kv_batch_rows, kv_head_rows, kv_pos_rows}
#define PQ_KV_ROWS_PARAMS int kv_batch_rows, int kv_head_rows, int kv_pos_rows

#define PQ_ATTEND_SPARSE(NAME, T, DPL, DMAX)                                                                            \
  extern "C" __global__ void __launch_bounds__(NT) pq_attend_sparse_##NAME##_d##DMAX(                                    \
      const void* q, int qdtype, int q_batch_stride, int q_head_stride, const T* kcache, const T* vcache,               \
      const int* list, const int* list_len, int list_stride, const void* weights, int wdtype, long long w_stride,       \
      T* out, float* partial, unsigned* counters, int* status, const int* seq_len, int seq_add, int H, int Hkv, int D,  \
      PQ_KV_ROWS_PARAMS, int chunk) {                                                                                   \
    attend_block<T, DMAX, 1, true>(PQ_ATTEND_QUERY, kcache, vcache, list, list_len, list_stride, weights, wdtype,        \
                                   w_stride, out, partial, counters, status, seq_len, seq_add, H, Hkv, D, PQ_KV_ROWS,   \
                                   chunk);                                                                              \
  }

#define PQ_ATTEND_SPARSE_CLUSTER(NAME, T, DMAX, CL)                                                                      \
  extern "C" __global__ void PQ_CLUSTER_DIMS(CL) __launch_bounds__(CLUSTER_NT) pq_attend_sparse_##NAME##_d##DMAX##_c##CL( \
      const void* q, int qdtype, int q_batch_stride, int q_head_stride, const T* kcache, const T* vcache,               \
      const int* list, const int* list_len, int list_stride, const void* weights, int wdtype, long long w_stride,       \
      T* out, float*, unsigned*, int* status, const int* seq_len, int seq_add, int H, int Hkv, int D,                   \
      PQ_KV_ROWS_PARAMS, int chunk) {                                                                                   \
    attend_sparse_cluster<T, DMAX, CL>(PQ_ATTEND_QUERY, kcache, vcache, list, list_len, list_stride, weights, wdtype,    \
                                       w_stride, out, status, seq_len, seq_add, H, Hkv, D, PQ_KV_ROWS, chunk);          \
  }

#define PQ_ATTEND_DENSE(NAME, T, DPL, DMAX, GH)                                                                          \
  extern "C" __global__ void __launch_bounds__(NT) pq_attend_dense_##NAME##_d##DMAX##_g##GH(                             \
      const void* q, int qdtype, int q_batch_stride, int q_head_stride, const T* kcache, const T* vcache, T* out,       \
      float* partial, unsigned* counters, int* status, const int* seq_len, int seq_add, int H, int Hkv, int D,          \
      PQ_KV_ROWS_PARAMS, int chunk) {                                                                                   \
    attend_block<T, DMAX, GH, false>(PQ_ATTEND_QUERY, kcache, vcache, nullptr, nullptr, 0, nullptr, 0, 0, out, partial, \
                                     counters, status, seq_len, seq_add, H, Hkv, D, PQ_KV_ROWS, chunk);                 \
  }

#define PQ_ATTEND_FAMILY(NAME, T)                                                                                      \
  PQ_ATTEND_SPARSE(NAME, T, 4, 128)                                                                                         \
  PQ_ATTEND_SPARSE(NAME, T, 8, 256)                                                                                         \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 128, 1)                                                                                 \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 128, 2)                                                                                 \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 128, 4)                                                                                 \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 128, 8)                                                                                 \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 256, 1)                                                                                 \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 256, 2)                                                                                 \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 256, 4)                                                                                 \
  PQ_ATTEND_SPARSE_CLUSTER(NAME, T, 256, 8)                                                                                 \
  PQ_ATTEND_DENSE(NAME, T, 4, 128, 1)                                                                                       \
  PQ_ATTEND_DENSE(NAME, T, 4, 128, 2)                                                                                       \
  PQ_ATTEND_DENSE(NAME, T, 4, 128, 4)                                                                                       \
  PQ_ATTEND_DENSE(NAME, T, 4, 128, 8)                                                                                       \
  PQ_ATTEND_DENSE(NAME, T, 8, 256, 1)                                                                                       \
  PQ_ATTEND_DENSE(NAME, T, 8, 256, 2)                                                                                       \
  PQ_ATTEND_DENSE(NAME, T, 8, 256, 4)                                                                                       \
  PQ_ATTEND_DENSE(NAME, T, 8, 256, 8)                                                                                       \
  extern "C" __global__ void __launch_bounds__(NT) pq_kv_append_##NAME(                                               \
      const void* key, int kdtype, int key_batch_stride, int key_head_stride, const void* value, int vdtype,            \
      int value_batch_stride, int value_head_stride, T* kcache, T* vcache, const int* seq_len, int* seq_write,          \
      PQ_KV_ROWS_PARAMS, int Hkv, int D, int* status) {                                                                 \
    kv_append<T>(PqStepRows{key, kdtype, key_batch_stride, key_head_stride},                                           \
                 PqStepRows{value, vdtype, value_batch_stride, value_head_stride}, kcache, vcache, seq_len, seq_write,  \
                 PQ_KV_ROWS, Hkv, D, status);                                                                           \
  }

PQ_ATTEND_FAMILY(f32, float)
PQ_ATTEND_FAMILY(f16, __half)
PQ_ATTEND_FAMILY(bf16, __nv_bfloat16)
