// Decode step for short contexts through the pair-count table: one 1024-thread block per query
// head, or a cluster of two that splits the positions (_c2). The latency-bound
// fast path of select_pairs.cu (same semantics, same arguments): there, every block of a cluster
// re-reads its head's centroids and pair table and walks the pairs 16 per thread in three passes;
// here a block holds 4 pairs and E positions per thread in registers, so the step is a short
// chain of barriers:
//   query staged → LUT (and each LUT row's score range) → 4096-bin weighted histogram → boundary
//   bin → its members ranked → pair classes → positions classified and counted (one block scan) →
//   heavy hitters written.
//
// pq_step_row_m{M}_e{E}[_c2]: grid (CL, rows + append_rows), block NT = 1024, clusters (CL, 1, 1).
//   Blocks (r, y), y < rows = B*H, select for query head row = y; thread t owns pairs 4t … 4t+3
//   and positions s0 + r*NT*E + t*E … + E − 1 (s0 = lo & ~15), so thread order is position order.
//   Every rank computes all M·C LUT entries itself (exchanging halves through the cluster cost a
//   DSMEM round trip and a barrier on the critical path); the one word a block may lack, the pair of
//   the position entering the eligible range, it reads from global memory. Rank 1's list slots start
//   after rank 0's (takes, ties) counts, sent to it through a mailbox (below).
//   Blocks y >= rows append (only when `appended`): block a = (y − rows)*CL + r codes kv-head a's new key
//   at position sk_old (append_block.cuh; the key's row from PqStepKey: a fixed buffer, or a K cache's
//   row sk_old); block 0 writes *seq_write. Programmatic dependent launch
//   (a decode layer): every block first lets the kernel launched behind this one start
//   (pq_allow_dependents: the attention, which waits for this grid before reading its outputs), and
//   last waits for the kernel before it (pq_wait_for_previous: the K/V append, whose writes this
//   step does not read), so a grid waiting for this one waits for both.
// Invariants (src/pq/cuda-plan.ts planRow, src/pq/cuda-cache.ts): C^M ≤ 4096 (M ≤ 2; M = 2 needs
//   C ≤ 64); sk − W − s0 ≤ NT*E; K ≤ 2048; pair_count exact for [lo, sk_old − W); readers[] == 0
//   before a launch; sparse_len/sparse_list/weights hold the previous output. With `appended`,
//   W ≥ 1, so no select block reads the new key's code; the position q = sk_old − W entering the
//   eligible range is counted virtually here and added to pair_count by the last of its kv-head's
//   G query heads (readers counter), exactly as in select_pairs.cu.
// Bucket mode (pq_step_bucket_m{M}_w{WPT}, CL = 1, no codes in registers): the heavy hitters come
//   from the position buckets (pq_bucket_rebuild and pq_bucket_merge, at the end of this file)
//   instead of a pass over every position's codes. After the threshold, each candidate pair (taken
//   or tied) is listed with its bucket range; the block gathers those positions into two bitmaps in
//   dynamic shared memory (taken, tied) plus the tail [*bucket_end, hi) from its codes (≤ NT
//   positions, one per thread), and one scan of the bitmaps (past 8 words: of the words the gather
//   flagged) writes them in position order. So the step reads ≈ K positions instead of sk codes.
//   Invariants: the buckets list [lo, *bucket_end) exactly (the host rebuilds them before the tail
//   outgrows NT; PQ_STATUS_BUCKETS_STALE otherwise); hi − s0 ≤ NT*WPT*32 up to 8 words; past 8,
//   in chunks of NT*WPT*32 positions, hi − s0 < 2^20 (the histogram's packed weights), or < 2^31
//   for the _wide instances (weights alone; the host plans them to 2^22 − 1: BUCKET_MAX_SPAN).
// Resident form (pq_resident_row_m{M}_e{E}[_c2], at the end of this file; resident.cuh): the same
//   grid launched once, every block serving one step per doorbell ring (src/cuda/resident.ts), and
//   keeping its codes (M = 2: their class lookup keys, PackedClasses), pair counts and LUT rows in
//   dynamic shared memory from one step to the next ((E*M/16 + 3) * NT * 16 bytes; ResidentState).
// Exactness: the threshold is the K-th largest score key (weights = pair counts), ties to the
// lower position, as the CPU oracle ranks (src/pq/cpu-select.ts). Linear bins are monotone in the
// score, so bins above the boundary bin are taken and those below skipped; inside it the exact
// keys decide.
#include "append_block.cuh"
#include "resident.cuh"
#include "select_common.cuh"

namespace {

constexpr int NT = 1024;
constexpr int NW = NT / 32;
constexpr int PPT = 4;                   // pairs per thread
constexpr int MAX_ROW_PAIRS = NT * PPT;  // 4096
constexpr int NB = 4096;                 // linear score bins of the first pass
constexpr int MAX_MEMBERS = NT;          // boundary-bin members ranked directly (more: radix passes)
constexpr int CLS_STRIDE = 64;           // M = 2: class of (c0, c1) at c0 + 64*c1 (any C ≤ 64)

// 2-bit pair classes; positions pack them 16 to a word, so a take is an even bit, a tie an odd one.
enum : uint32_t { CLS_SKIP = 0, CLS_TAKE = 1, CLS_TIE = 2 };
constexpr uint32_t EVEN_BITS = 0x55555555u;

struct __align__(16) RowShared {
  float x[PQ_APPEND_MAX_D + PQ_APPEND_MAX_M];  // query (select blocks) or key (append blocks)
  float lut[MAX_ROW_PAIRS / 16];               // M*C ≤ 256 entries
  union {
    struct {
      union {
        int hist[NB];                          // weighted histogram, pair counts in the high bits (reversed bins: 0 = highest)
        float dist[PQ_APPEND_MAX_ENTRIES];     // append blocks
      };
      uint8_t cls[MAX_ROW_PAIRS];
      union {
        uint32_t bin_key[NB];  // scratch (bucket mode: each candidate pair's first gathered slot)
        struct {
          uint32_t member_key[MAX_MEMBERS];
          uint32_t member_w[MAX_MEMBERS];
        };
      };
    };
    // Resident kernels with M = 2: the pair classes 2 bits each, 16 pairs to a word, one copy of
    // every word per lane (word w, lane l at w*32 + l), so a warp's lookups hit 32 distinct banks.
    // Written after the threshold, when the arrays above are dead (see PackedClasses).
    uint32_t cls_lanes[MAX_ROW_PAIRS / 16 * 32];
  };
  int warp_total[2][NW];                       // block scans (two, so consecutive scans need no extra barrier)
  int n_members;
  int virtual_pair;  // the pair of the position entering the eligible range (from its slice's block)
  uint32_t vp_word;  // the code word holding it, copied from global memory (the cluster's other block)
  uint64_t counts_mail;            // mailbox (CL == 2): earlier ranks' counts
  uint32_t row_lo[2], row_hi[2];   // score keys of each LUT row's min and max
  int counts_from[2];              // earlier ranks' packed (takes, ties)
  int found_rbin, found_need, found_count;
  uint32_t found_key;
  int found_single;  // the boundary bin holds one pair (its key: found_key)
  int best_code[PQ_APPEND_MAX_M];
};

// The second level of the block scans: lane l holds warp l's total w (NW == 32). This warp's offset
// and the block total are two warp reductions (redux.sync, one instruction each), not a second
// shuffle scan.
__device__ __forceinline__ int warp_offset(int w, int* total) {
  *total = __reduce_add_sync(0xffffffffu, w);
  return __reduce_add_sync(0xffffffffu, (threadIdx.x & 31) < (threadIdx.x >> 5) ? w : 0);
}

// Exclusive scan of one int per thread over the NT-thread block, and the block total. One barrier;
// `scratch` (NW ints) must not be reused before another barrier has passed.
__device__ __forceinline__ int block_scan(int* scratch, int v, int* total) {
  const int lane = threadIdx.x & 31;
  const int inc = pq_warp_inclusive_scan(v);
  if (lane == 31) scratch[threadIdx.x >> 5] = inc;
  __syncthreads();
  return warp_offset(scratch[lane], total) + inc - v;
}

// Exclusive scans of two ints per thread at once (one barrier, both scratch halves: the caller
// makes sure a barrier has passed since either half was last read).
__device__ __forceinline__ int2 row_scan2(RowShared& sm, int a, int b, int2* total) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int ia = pq_warp_inclusive_scan(a);
  const int ib = pq_warp_inclusive_scan(b);
  if (lane == 31) {
    sm.warp_total[0][warp] = ia;
    sm.warp_total[1][warp] = ib;
  }
  __syncthreads();
  const int oa = warp_offset(sm.warp_total[0][lane], &total->x);
  const int ob = warp_offset(sm.warp_total[1][lane], &total->y);
  return make_int2(oa + ia - a, ob + ib - b);
}
// The row kernel's scans alternate between two scratch halves, so consecutive ones need no extra barrier.
__device__ __forceinline__ int row_scan(RowShared& sm, int parity, int v, int* total) { return block_scan(sm.warp_total[parity], v, total); }

// Packed pair classes (resident kernels with M = 2; RowShared::cls_lanes). The byte table's lookups
// cost ≈ 3.5 shared-memory wavefronts per warp (32 random banks; 0.7 μs of the positions pass,
// bench/NOTES.md session 15). Here a position's lookup key takes the place of its two codes in the
// resident cache (16 bits either way): bits 7–14 its pair's class word (pair >> 4), bits 0–4 the
// rotation (2·(pair & 15) − 2·(j & 15)) mod 32 that moves the pair's 2 class bits to field j & 15 of
// the position's class word. A lookup is then an AND-OR for the address (lane l reads copy l), one
// conflict-free load, a rotate and an AND-OR, as many instructions as the byte lookup. Measured
// (session 19): the positions pass 1.76 → 1.47 μs, the table's 32 KB of stores +0.12 μs.
struct PackedClasses {
  // The key of position j, whose codes make pair `pair`. Masked to the table: positions past sk
  // hold whatever their bytes hold, and are never counted.
  __device__ static __forceinline__ uint32_t key(int pair, int j) {
    const uint32_t i = static_cast<uint32_t>(pair) & (MAX_ROW_PAIRS - 1);
    return (i >> 4) << 7 | ((2u * (i & 15u) - 2u * static_cast<uint32_t>(j & 15)) & 31u);
  }
  // Thread t holds pairs 4t … 4t+3, so threads 4w … 4w+3 (one quad) hold class word w: the quad
  // assembles it, and each of its lanes r writes 8 of the 32 copies, as two 16-byte stores of copies
  // 4m … 4m+3, m = 2r + ((w ^ k) & 1) at step k: the 8 lanes of each quarter-warp hit 8 distinct
  // 16-byte bank groups. Needs only that every thread of the block calls it (words past the pairs
  // come out zero, and are never read).
  __device__ static __forceinline__ void write(uint32_t* cls_lanes, uint32_t classes4) {
    const int tid = threadIdx.x;
    uint32_t w = classes4 << (8 * (tid & 3));
    w |= __shfl_xor_sync(0xffffffffu, w, 1);
    w |= __shfl_xor_sync(0xffffffffu, w, 2);
    const int at = (tid >> 2) * 8 + 2 * (tid & 3);  // in uint4: word w's copies 8r … 8r+7
#pragma unroll
    for (int k = 0; k < 2; ++k) reinterpret_cast<uint4*>(cls_lanes)[at + (((tid >> 2) ^ k) & 1)] = make_uint4(w, w, w, w);
  }
  // The class of the position with key `key` (low 16 bits; higher ignored), in field j & 15 of the result.
  __device__ static __forceinline__ uint32_t lookup(const uint32_t* cls_lanes, uint32_t key, uint32_t lane_bytes, int j) {
    const uint32_t word = *reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(cls_lanes) + ((key & 0x7f80u) | lane_bytes));
    return __funnelshift_r(word, word, key) & (3u << (2 * (j & 15)));
  }
};

// ---- cluster mailboxes (CL == 2, sm_90) ----
// A block's peers push words into its shared memory with st.async; each push completes its bytes
// on the receiving block's mbarrier, on which the receiver waits. Unlike a cluster barrier (whose
// release half fences all of the block's global stores first, ≈ 1 μs here) this orders nothing but
// the pushed words. Ordering of global writes between the blocks of a cluster is never needed: a
// weight is cleared and set only by the block owning its position (weight_owner).
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t cluster_addr(const void* local, int rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(pq_smem_addr(local)), "r"(rank));
  return r;
}
// A one-shot mailbox (thread 0): initialised, made visible to the cluster before any push
// (mailboxes_ready_*), and told the bytes to expect (its one arrival) before anyone waits on it.
// Pushes may land before the expectation (the transaction count may go negative; the phase cannot
// complete without the arrival). The arrival comes after a block barrier that follows the init:
// right after it, compute-sanitizer racecheck flagged the pair (a false positive, seemingly from the
// init running on the uniform datapath; session 15).
__device__ __forceinline__ void mailbox_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(pq_smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mailbox_expect(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.relaxed.cta.shared::cta.b64 _, [%0], %1;" ::"r"(pq_smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mailbox_push(const void* local_slot, int rank, uint32_t value, uint64_t* bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(cluster_addr(local_slot, rank)),
               "r"(value), "r"(cluster_addr(bar, rank))
               : "memory");
}
__device__ __forceinline__ void mailbox_wait(uint64_t* bar) {
  asm volatile(
      "{\n .reg .pred done;\n"
      "WAIT_%=:\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 done, [%0], 0;\n"
      " @!done bra WAIT_%=;\n}" ::"r"(pq_smem_addr(bar))
      : "memory");
}
// The mailboxes' initialisation reaches the cluster (arrive, every thread) before any push (wait).
__device__ __forceinline__ void mailboxes_ready_arrive() {
  asm volatile("fence.mbarrier_init.release.cluster;\n barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void mailboxes_ready_wait() { asm volatile("barrier.cluster.wait.aligned;" ::: "memory"); }
// Before a location's mbarrier is initialised again (resident kernels, step after step).
__device__ __forceinline__ void mailbox_inval(uint64_t* bar) {
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];" ::"r"(pq_smem_addr(bar)) : "memory");
}
#else  // no clusters before sm_90: the host plans CL == 1 there, and these are never reached
__device__ __forceinline__ void mailbox_init(uint64_t*) { __trap(); }
__device__ __forceinline__ void mailbox_expect(uint64_t*, unsigned) { __trap(); }
__device__ __forceinline__ void mailbox_push(const void*, int, uint32_t, uint64_t*) { __trap(); }
__device__ __forceinline__ void mailbox_wait(uint64_t*) { __trap(); }
__device__ __forceinline__ void mailboxes_ready_arrive() { __trap(); }
__device__ __forceinline__ void mailboxes_ready_wait() { __trap(); }
__device__ __forceinline__ void mailbox_inval(uint64_t*) { __trap(); }
#endif

// Where a select block sits: its rank in the cluster, its query head (row = b*H + h), the query
// heads per kv-head (G), its kv-head (bkv = b*Hkv + h/G) and its query row's offset (PqStepRows).
// Three divisions (float reciprocals, ≈ 40 instructions a warp); the resident kernels compute it
// once per launch (ResidentState) instead of every step, since the step is issue-bound: resident
// device time 8.38 → 7.97 μs on the seed config (same-run A/B on the H100, bench/NOTES.md session 20).
struct RowPlace {
  int rank, row, G, bkv, query_offset;
};
template <int CL>
__device__ __forceinline__ RowPlace row_place(int H, int Hkv, const PqStepRows& query) {
  RowPlace p;
  p.rank = CL == 1 ? 0 : static_cast<int>(blockIdx.x);  // cluster dims (CL, 1, 1)
  p.row = blockIdx.y;
  const int b = pq_div_small(p.row, H);
  const int h = p.row - b * H;
  p.G = pq_div_small(H, Hkv);
  p.bkv = b * Hkv + pq_div_small(h, p.G);
  p.query_offset = query.row_offset(b, h);
  return p;
}

// Resident steps (RESIDENT): a launch's index stays fixed but for the one position an appending
// step makes eligible (anything else stops the kernel first, src/pq/cuda-cache.ts), so a select
// block keeps what it loads each step in dynamic shared memory instead of reading it from global
// memory again: its positions' codes (M = 2: as PackedClasses lookup keys), its pair counts (after
// the step, q's pair counted) and its LUT centroid rows, one uint4 per thread each (slot k of
// thread t at k*NT + t). A step then reads global memory only for the query, the previous list, sk
// and, in one thread, the code chunk that holds the position entering the eligible range
// (predicted from the previous step's sk, and checked).
// The first step of a launch, and one after a full-attention step or an sk other than predicted,
// loads everything from global memory (and fills the cache).
struct ResidentState {
  bool primed;     // the cache holds this block's codes, pair counts and LUT rows
  int sk_pred;     // sk as the next step will read it (this step's sk)
  RowPlace place;  // the block's place, fixed for the launch
};
// The resident row kernels' dynamic shared memory is that cache: (E*M/16 code chunks + the pair
// counts + two LUT rows) * NT * 16 bytes (src/pq/cuda-plan.ts residentCacheBytes).

template <int M, int E, int CL, int WPT, bool RESIDENT = false, bool WIDE = false>
__device__ void step_row(const PqStepRows& query, const PqStepKey& key,
                         const float* __restrict__ centroids, const float* __restrict__ phi, uint8_t* codes,
                         const int* seq_read, int* seq_write, int appended, unsigned* pair_count, unsigned* readers,
                         OutputArgs out, int* status, int B, int H, int Hkv, int D, int C, int log2c, int cstride,
                         int capacity, int S, int W, int K, int O, int ip, int full_threshold, long long* phase_clock,
                         const int* bucket_end, const int* bucket_offsets, const int* buckets,
                         ResidentState* resident = nullptr) {
  constexpr bool BUCKETS = WPT > 0;  // the heavy hitters from the position buckets (see the header)
  static_assert(E % 16 == 0 && E <= 64, "E: whole 16-position words, at most 4");
  static_assert(M <= 2, "C^M ≤ 4096 pairs: M ≤ 2 (row_lo and row_hi hold two rows)");
  static_assert(CL == 1 || CL == 2, "one block per head, or a cluster of two (the mailboxes have one peer)");
  static_assert(!BUCKETS || (CL == 1 && E == 0 && (WPT == 1 || WPT == 2 || WPT % 4 == 0) && WPT <= 20),
                "bucket mode: one block per head, no codes in registers, 1, 2 or 4k ≤ 20 bitmap words per thread");
  static_assert(!WIDE || WPT > 8, "wide weights (spans past 2^20): the chunked bucket instances only");
  constexpr int WORDS = E / 16;           // 2-bit class words per thread
  constexpr bool PACKED = RESIDENT && !BUCKETS && M == 2;  // classes by PackedClasses (cached lookup keys)
  constexpr int CHUNKS = E * M / 16;      // 16-byte code chunks per thread
  __shared__ RowShared sm;
  // Bucket mode: bitmaps of the taken and the tied positions, bit i = position s0 + i (dynamic).
  // Thread t scans words w = WPT*t … WPT*t + WPT − 1 (positions in order). With WPT ≤ 8 word w sits
  // at index w and a thread reads its words as vectors; past 8 (bit_word) word w sits at (w mod WPT)
  // * NT + w / WPT, so a warp's 32 threads read 32 consecutive words at once: at index w, 16 words a
  // thread put 16 of a warp's reads on each bank (a step 20.5 against 15.3 μs GPU with 20 words, on
  // the H100 at B = 1; bench/NOTES.md session 42).
  extern __shared__ uint4 row_dynamic_smem[];
  uint32_t* take_bits = reinterpret_cast<uint32_t*>(row_dynamic_smem);
  uint32_t* tie_bits = take_bits + NT * WPT;
  auto bit_word = [](unsigned w) -> unsigned { return WPT <= 8 ? w : (w % WPT) * NT + w / WPT; };
  // Past 8 words: bit wi of word_flags[t] says thread t's word wi is set in either bitmap (set by
  // the gather's atomicOr that finds the word empty), so step 7' reads, and clears, only those
  // words. It lives in the pair classes' byte table, which bucket mode does not use (NT words).
  uint32_t* const word_flags = reinterpret_cast<uint32_t*>(sm.cls);
  const int tid = threadIdx.x;
  const PhaseStamps stamp(phase_clock);  // select_common.cuh
  auto finish = [&]() { stamp.finish(); };
  const int rows = B * H;
  if (static_cast<int>(blockIdx.y) >= rows) {
    const int a = (blockIdx.y - rows) * CL + blockIdx.x;
    const int sk_old = *seq_read;
    if (a < B * Hkv && (RESIDENT || sk_old >= 0)) {  // sk < 0: a chain's skipped step (below)
      pq_append_one_key<NT>(key.row_of(a, Hkv, sk_old), key.dtype, centroids, cstride, phi, codes, status, a, sk_old, D, M, C, capacity, O, ip,
                            sm.x, sm.dist, sm.best_code);
      if (a == 0 && tid == 0) *seq_write = sk_old + 1;
    }
    finish();
    return;
  }
  const RowPlace pl = RESIDENT ? resident->place : row_place<CL>(H, Hkv, query);
  const int rank = pl.rank, row = pl.row, G = pl.G, bkv = pl.bkv;
  // G > 1, tested by every thread as H != Hkv: the resident kernels otherwise recompute G (a division
  // by a float reciprocal) in every warp rather than keep it in a register.
  const bool kv_shared = H != Hkv;
  const int lo = max(O, S);
  const int pairs = M == 1 ? C : C << log2c;
  const unsigned* table = pair_count + static_cast<int64_t>(bkv) * pairs;
  const uint8_t* head_codes = codes + static_cast<int64_t>(bkv) * capacity * M;
  const float* head_centroids = centroids + static_cast<int64_t>(bkv) * M * C * cstride;
  const int dsub = D / M;
  const int s0 = BUCKETS ? lo & ~31 : lo & ~15;

  // ---- Everything in flight at once, no load waiting for another: the query element, pair
  // counts, the LUT's first centroid rows, this thread's codes (bounded by the capacity; positions
  // past sk are masked below), the previous list, and sk last: the compiler moves sk to the uniform
  // registers right after its load, which waits for it (read first, it held back the other loads). ----
  const float query_value = tid < D ? pq_load_float(query.ptr, query.dtype, pl.query_offset + tid) : 0.0f;  // D ≤ NT
  // Resident steps read their cache instead, once primed (see ResidentState).
  const bool cached = RESIDENT && !BUCKETS && resident->primed;
  uint4* const rcache = row_dynamic_smem;  // resident row kernels: the cache (bucket mode: the bitmaps)
  uint32_t weight[PPT];
  auto load_weights = [&]() {
    if (pairs >= PPT) {
      const uint4 w4 = tid < pairs / PPT ? pq_load<!RESIDENT>(reinterpret_cast<const uint4*>(table) + tid) : make_uint4(0, 0, 0, 0);
      weight[0] = w4.x, weight[1] = w4.y, weight[2] = w4.z, weight[3] = w4.w;
    } else {
#pragma unroll
      for (int j = 0; j < PPT; ++j) weight[j] = PPT * tid + j < pairs ? pq_load<!RESIDENT>(table + PPT * tid + j) : 0u;
    }
  };
  if (cached) {
    const uint4 w4 = rcache[CHUNKS * NT + tid];
    weight[0] = w4.x, weight[1] = w4.y, weight[2] = w4.z, weight[3] = w4.w;
  } else {
    load_weights();
  }
  // LUT rows: 8 lanes per entry (e = e0 + tid/8), lane8 takes float4 chunks lane8, lane8 + 8, ….
  const int lane8 = tid & 7;
  float4 crow[2];
  const int entries = M * C;  // every LUT entry, in every block of a cluster
  auto load_rows = [&](int e0) {
    const int e = e0 + (tid >> 3);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int j4 = lane8 + 8 * k;
      crow[k] = e < entries && j4 < dsub / 4
                    ? __ldg(reinterpret_cast<const float4*>(head_centroids + static_cast<int64_t>(e) * cstride) + j4)
                    : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  if (cached) {
    crow[0] = reinterpret_cast<const float4*>(rcache)[(CHUNKS + 1) * NT + tid];
    crow[1] = reinterpret_cast<const float4*>(rcache)[(CHUNKS + 2) * NT + tid];
  } else {
    load_rows(0);
  }
  const int p0 = s0 + rank * NT * E + tid * E;
  uint4 raw[CHUNKS > 0 ? CHUNKS : 1];  // positions p0 … p0 + E − 1, M bytes each (row mode; PACKED: keys once converted)
  // Bucket mode: where the buckets end (the tail starts) and this thread's pairs' bucket offsets.
  int base_end = 0;
  int boff[PPT + 1];
  if constexpr (BUCKETS) {
    base_end = *bucket_end;
    const int* head_off = bucket_offsets + static_cast<int64_t>(bkv) * (pairs + 4);
    if (pairs >= PPT) {
      const bool mine = tid < pairs / PPT;
      const int4 o4 = mine ? __ldg(reinterpret_cast<const int4*>(head_off) + tid) : make_int4(0, 0, 0, 0);
      boff[0] = o4.x, boff[1] = o4.y, boff[2] = o4.z, boff[3] = o4.w;
      boff[PPT] = mine ? __ldg(head_off + PPT * tid + PPT) : 0;
    } else {
#pragma unroll
      for (int j = 0; j <= PPT; ++j) boff[j] = PPT * tid + j <= pairs ? __ldg(head_off + PPT * tid + j) : 0;
    }
  }
  auto load_code_chunk = [&](int c) {
    const int pc = p0 + c * (16 / M);
    return pc < capacity ? pq_load<!RESIDENT>(reinterpret_cast<const uint4*>(head_codes + static_cast<int64_t>(pc) * M)) : make_uint4(0, 0, 0, 0);
  };
  // Cached: only the chunk holding the position this step makes eligible, if it appends (the
  // position predicted from the previous step's sk; checked once sk is in).
  const int q_pred = cached && appended != 0 ? resident->sk_pred - W : -1;
  unsigned reloaded = 0u;  // chunks read from global memory while cached
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int pc = p0 + c * (16 / M);
    if (cached) {
      const bool enters = q_pred >= pc && q_pred < pc + 16 / M;
      raw[c] = enters ? load_code_chunk(c) : rcache[c * NT + tid];
      if (enters) reloaded |= 1u << c;
    } else {
      raw[c] = load_code_chunk(c);
    }
  }
  int* list = out.sparse_list + static_cast<int64_t>(row) * out.L;
  const int64_t wrow = static_cast<int64_t>(row) * out.wstride;
  const int old_len = out.sparse_len[row];
  const int old_first = tid < out.L ? list[tid] : -1;
  const int sk_old = *seq_read;
  // A negative sk marks the steps of a chain its host skipped (src/cuda/step-chain.ts): both seq slots
  // hold INT32_MIN, so every block leaves before writing anything (resident kernels never see it).
  if (!RESIDENT && sk_old < 0) {
    finish();
    return;
  }
  stamp(PH_ISSUED);
  if constexpr (RESIDENT && !BUCKETS) {
    if (cached && sk_old != resident->sk_pred) {  // not as predicted: the codes and counts from global memory
      load_weights();
#pragma unroll
      for (int c = 0; c < CHUNKS; ++c) raw[c] = load_code_chunk(c);
      reloaded = (1u << CHUNKS) - 1u;
    }
  }
  const int sk = sk_old + appended;
  const int hi = sk - W;
  const int total = max(0, hi - lo);
  const int q = sk_old - W;  // enters the eligible range with this step (already coded: W ≥ 1)
  const bool q_enters = appended != 0 && q >= lo && q >= 0;
  // q joins the pair table once every reader of this step is done with it: at once with one query
  // head per kv-head (no reply awaited), else by the last of the G heads to finish (readers counter).
  auto q_joins_table = [&](int pair) {
    if (kv_shared) {
      if (atomicAdd(&readers[bkv], 1u) != static_cast<unsigned>(G - 1)) return;
      readers[bkv] = 0u;
    }
    if (q_enters) atomicAdd(&pair_count[static_cast<int64_t>(bkv) * pairs + pair], 1u);
  };
  // Bucket mode: the tail [base_end, hi), classified from its codes (one position per thread: the
  // host rebuilds the buckets before the tail outgrows the block), and q's code. Loaded now, decoded
  // where used, so no thread waits for them before it has to.
  uint32_t tail_raw = 0u, q_raw = 0u;
  const int tail_p = base_end + tid;
  if constexpr (BUCKETS) {
    if (tail_p < hi) tail_raw = M == 1 ? head_codes[tail_p] : *reinterpret_cast<const uint16_t*>(head_codes + static_cast<int64_t>(tail_p) * M);
    if (tid == 0 && q_enters) q_raw = M == 1 ? head_codes[q] : *reinterpret_cast<const uint16_t*>(head_codes + static_cast<int64_t>(q) * M);
  }
  // The pair of the position whose M codes are the low bytes of v (higher bytes ignored).
  auto pair_of_raw = [&](uint32_t v) -> int {
    return static_cast<int>((v & 0xffu) + (M == 1 ? 0u : ((v >> 8) & 0xffu) << log2c));
  };

  if (sk <= full_threshold) {
    if (rank == 0) write_row<NT>(nullptr, out, row, sk, S, W, 0, true);
    if (rank == 0 && tid == 0) {
      q_joins_table(!q_enters ? 0 : pq_code_pair(head_codes + static_cast<int64_t>(q) * M, M, log2c));
    }
    if constexpr (RESIDENT && !BUCKETS) resident->primed = false;  // q joined the table, not the cache
    finish();
    return;
  }
  if (BUCKETS && tid == 0 && hi - base_end > NT) pq_flag_status(status, PQ_STATUS_BUCKETS_STALE);  // the host's rebuild was missed
  // The block whose slice holds position p clears and sets its weight (p outside every slice: the
  // nearest), so no write to a weight needs ordering across the cluster.
  auto weight_owner = [&](int p) { return CL == 1 ? 0 : min(max(p - s0, 0) / (NT * E), CL - 1); };
  const int q_owner = weight_owner(q);
  if (CL > 1) {
    if (tid == 0) mailbox_init(&sm.counts_mail);  // each earlier rank's counts (expected after the LUT's barrier)
    mailboxes_ready_arrive();                               // waited for just before the counts are sent
  }
  // q's pair: in the block whose slice holds q (q < hi ≤ s0 + CL*NT*E), from the registers of the
  // thread that holds it; in the cluster's other block, thread 0 copies the 4-byte word of codes
  // holding q's from global memory (written W ≥ 1 steps ago) to shared memory with cp.async, waited
  // for only at the LUT's barrier (a load into a register held across the LUT raised the resident
  // seed kernel's spills from 8/24 to 24/40 bytes). head_codes is 16-byte aligned (capacity·M is a
  // multiple of 16) and M ≤ 2 bytes at q·M never straddle a 4-byte word.
  const bool vp_elsewhere = CL > 1 && q_enters && q_owner != rank;
  if (vp_elsewhere && tid == 0) pq_cp_async4(&sm.vp_word, head_codes + (static_cast<int64_t>(q) * M & ~static_cast<int64_t>(3)));
  if (q_enters && q >= p0 && q < p0 + E) {
    const int j = q - p0;
    uint32_t v = 0u;  // the 32-bit code word holding q (selected, not indexed: raw stays in registers)
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const uint32_t w[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
#pragma unroll
      for (int k = 0; k < 4; ++k) v = (j * M) / 4 == 4 * c + k ? w[k] : v;
    }
    sm.virtual_pair = pair_of_raw(v >> (8 * ((j * M) % 4)));
  }
  // The previous list's weights (of this block's positions) cleared now; the barriers below order
  // them before any new one.
  if (tid < old_len && old_first >= 0 && weight_owner(old_first) == rank) store_weight(out.weights, out.wdtype, wrow + old_first, false);
  for (int i = tid + NT; i < old_len && i < out.L; i += NT) {
    const int p = list[i];
    if (p >= 0 && weight_owner(p) == rank) store_weight(out.weights, out.wdtype, wrow + p, false);
  }
  if (tid < D) {
    if (!isfinite(query_value)) pq_flag_status(status, PQ_STATUS_QUERY_NONFINITE);
    sm.x[tid] = query_value;
  }
  if (sk_old < 0) stamp(PH_INPUTS);  // never true here: makes the stamp wait for sk as well
  stamp(PH_INPUTS);
  reinterpret_cast<int4*>(sm.hist)[tid] = make_int4(0, 0, 0, 0);  // NB == 4 * NT
  if (tid == 0) sm.n_members = 0;
  if constexpr (BUCKETS) {
    for (int i = tid; i < NT * WPT / 2; i += NT) row_dynamic_smem[i] = make_uint4(0u, 0u, 0u, 0u);  // both bitmaps
    if constexpr (WPT > 8) word_flags[tid] = 0u;
    if constexpr (WIDE) reinterpret_cast<uint4*>(sm.bin_key)[tid] = make_uint4(0u, 0u, 0u, 0u);  // the bins' pair counts (NB == 4 * NT)
  }
  if (tid < M) {
    sm.row_lo[tid] = 0xffffffffu;
    sm.row_hi[tid] = 0u;
  }
  __syncthreads();  // query staged, histogram zeroed
  stamp(PH_STAGED);

  const int sink_end = min(S, sk);
  const int n_heavy = min(K, total);

  // LUT[m][c] = <q_m, centroid[b, kvh, m, c, :dsub]>, every entry.
  if constexpr (RESIDENT && !BUCKETS) {
    if (!cached) {  // the first pass's rows (later passes, M*C > NT/8 entries, load theirs each step)
      reinterpret_cast<float4*>(rcache)[(CHUNKS + 1) * NT + tid] = crow[0];
      reinterpret_cast<float4*>(rcache)[(CHUNKS + 2) * NT + tid] = crow[1];
    }
  }
#pragma unroll 1
  for (int e0 = 0; e0 < entries; e0 += NT / 8) {
    if (e0 != 0) load_rows(e0);
    const int e = e0 + (tid >> 3);
    const float4* qv = reinterpret_cast<const float4*>(sm.x + (min(e, M * C - 1) >> log2c) * dsub);
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int j4 = lane8 + 8 * k;
      if (j4 < dsub / 4) {
        const float4 xv = qv[j4];
        acc += xv.x * crow[k].x + xv.y * crow[k].y + xv.z * crow[k].z + xv.w * crow[k].w;
      }
    }
#pragma unroll 1
    for (int j4 = lane8 + 16; j4 < dsub / 4 && e < entries; j4 += 8) {  // dsub > 64
      const float4 cv = __ldg(reinterpret_cast<const float4*>(head_centroids + static_cast<int64_t>(e) * cstride) + j4);
      const float4 xv = qv[j4];
      acc += xv.x * cv.x + xv.y * cv.y + xv.z * cv.z + xv.w * cv.w;
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    acc += __shfl_xor_sync(0xffffffffu, acc, 4);
    if (e < entries && lane8 == 0) {
      sm.lut[e] = acc;
      // The row's score range, once per block (NaN entries left out, as fminf/fmaxf would).
      if (acc == acc) {
        const uint32_t u = __float_as_uint(acc);
        const uint32_t key = u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);  // pq_score_key order
        atomicMin(&sm.row_lo[e >> log2c], key);
        atomicMax(&sm.row_hi[e >> log2c], key);
      }
    }
  }
  if (BUCKETS && tid == 0 && q_enters) sm.virtual_pair = pair_of_raw(q_raw);
  if (vp_elsewhere && tid == 0) {
    pq_cp_async_wait_all();
    sm.virtual_pair = pair_of_raw(sm.vp_word >> (8 * ((q * M) & 3)));
  }
  __syncthreads();  // the LUT, its row ranges and q's pair
  if (CL > 1 && tid == 0) mailbox_expect(&sm.counts_mail, rank * 4);
  const int virtual_pair = q_enters ? sm.virtual_pair : -1;
  stamp(PH_LUT);

  // Sink, window, padding and the length (their slots do not depend on the threshold): the list by
  // rank 0, each weight by its owner.
  {
    const int win_start = max(sk - min(W, sk), sink_end);
    const int len = sink_end + n_heavy + (sk - win_start);
    for (int i = tid; i < out.L; i += NT) {
      int p = -2;  // heavy slots are written below
      if (i < sink_end) p = i;
      else if (i >= sink_end + n_heavy) p = i < len ? win_start + (i - sink_end - n_heavy) : -1;
      if (p != -2) {
        if (rank == 0) list[i] = p;
        if (p >= 0 && weight_owner(p) == rank) store_weight(out.weights, out.wdtype, wrow + p, true);
      }
    }
    if (rank == 0 && tid == 0) out.sparse_len[row] = len;
  }

  // This thread's pair scores and weights (q's pair counted virtually). One expression for every
  // pair score (bucket mode scores its tail with it too), so equal pairs get bit-equal scores.
  auto pair_score = [&](int i) { return M == 1 ? sm.lut[i] : sm.lut[i & (C - 1)] + sm.lut[C + (i >> log2c)]; };
  float score[PPT];
  if (C >= PPT) {
    // The 4 pairs share their second code: one 16-byte load of the first codes' entries (the same
    // additions as pair_score, so bit-equal scores). Threads past the pairs score the last 4 (weight 0).
    const int i0 = min(PPT * tid, pairs - PPT);
    const float4 a4 = *reinterpret_cast<const float4*>(sm.lut + (M == 1 ? i0 : (i0 & (C - 1))));
    const float a[PPT] = {a4.x, a4.y, a4.z, a4.w};
    const float b = M == 1 ? 0.0f : sm.lut[C + (i0 >> log2c)];
#pragma unroll
    for (int j = 0; j < PPT; ++j) score[j] = M == 1 ? a[j] : a[j] + b;
  } else {
#pragma unroll
    for (int j = 0; j < PPT; ++j) score[j] = pair_score(min(PPT * tid + j, pairs - 1));
  }
  {
    const int vj = virtual_pair - PPT * tid;  // weights past the pairs are 0 as loaded
#pragma unroll
    for (int j = 0; j < PPT; ++j) weight[j] += vj == j ? 1u : 0u;
  }
  if constexpr (RESIDENT && !BUCKETS) {  // the next step's cache: counts with q's pair, codes as read
    rcache[CHUNKS * NT + tid] = make_uint4(weight[0], weight[1], weight[2], weight[3]);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      if (!cached || (reloaded >> c) & 1u) {
        // PACKED: as lookup keys. Converted here, after the LUT, not where q's pair is taken from
        // them as codes: there the conversion made its warp wait for the load before the LUT.
        if constexpr (PACKED) {
          // A 32-bit code word holds positions j and j + 1 (M = 2): their two keys.
          auto keys = [&](uint32_t v, int j) {
            return PackedClasses::key(pair_of_raw(v), j) | PackedClasses::key(pair_of_raw(v >> 16), j + 1) << 16;
          };
          raw[c] = make_uint4(keys(raw[c].x, 8 * c), keys(raw[c].y, 8 * c + 2), keys(raw[c].z, 8 * c + 4), keys(raw[c].w, 8 * c + 6));
        }
        rcache[c * NT + tid] = raw[c];
      }
    }
    resident->primed = true;
    resident->sk_pred = sk;
  }
  stamp(PH_SCORED);
  const bool take_all = total <= K;
  bool whole_bin = true;       // every position of the boundary bin is taken
  int shift = 32;              // else: keys with (key >> shift) > prefix taken, == prefix tie or taken
  uint32_t prefix = 0u;
  bool partial = false;        // == prefix: ties, of which `quota` (lowest positions) are taken
  int quota = 0;
  int rb_star = NB;            // reversed boundary bin (take_all: every bin is above it)
  float lo_b = 0.0f, scale = 0.0f;  // linear bins over the LUT-bounded score range
  bool linear = false;
  auto rbin_of = [&](float s) -> int { return NB - 1 - (linear ? min(NB - 1, max(0, __float2int_rz((s - lo_b) * scale))) : 0); };
  // Each pair's reversed bin, computed once by the histogram (two 16-bit halves a word; unset when
  // take_all) and read again by the boundary-bin passes and the classes: recomputing it there cost
  // 0.34 μs of graph-step GPU time and 0.14 μs of resident device time (bench/NOTES.md, session 16).
  uint32_t rbins[PPT / 2] = {0u, 0u};
  auto rbin_at = [&](int j) -> int { return static_cast<int>((rbins[j >> 1] >> (16 * (j & 1))) & 0xffffu); };
  if (!take_all) {
    // The score range from the LUT rows' ranges.
    float bmin[M], bmax[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const uint32_t klo = sm.row_lo[m];
      const uint32_t khi = sm.row_hi[m];
      // No finite entry at all (every one NaN): an empty range, so the bins are not linear.
      bmin[m] = klo > khi ? INFINITY : pq_key_score(klo);
      bmax[m] = klo > khi ? -INFINITY : pq_key_score(khi);
    }
    lo_b = M == 1 ? bmin[0] : bmin[0] + bmin[M - 1];
    const float hi_b = M == 1 ? bmax[0] : bmax[0] + bmax[M - 1];
    const float range = hi_b - lo_b;
    // An approximate reciprocal: the bins only need to be monotone in the score, which any fixed
    // positive scale keeps; an infinite or zero one falls to one bin below.
    scale = static_cast<float>(NB) * pq_rcp_approx(range);
    linear = hi_b > lo_b && isfinite(range) && isfinite(scale) && scale > 0.0f;

    // 1. Weighted histogram; the reversed bin holding the K-th largest (4 bins per thread). One
    // atomic per pair adds its weight (low kWeightBits) and one to its bin's pair count (high bits):
    // a boundary bin of one pair needs no members gathered and ranked, only that pair's key (this
    // replaced a CAS per pair that kept each bin's "one key or more": bench/NOTES.md, session 13).
    // The weights of a head's pairs sum to at most its positions: NT*E*CL ≤ 131,072 and bucket mode's
    // NT*WPT*32 ≤ 262,144 < 2^19 up to 8 words; 20 bits past 8 (spans < 2^20, in chunks: a bin of
    // all 4,096 pairs reads a pair count of 0 mod 2^12, still not the single pair tested below).
    // WIDE (spans from 2^20): the bins hold weights alone, 32 bits, and a second atomic counts each
    // bin's pairs in bin_key (free until the members; zeroed with the histogram). It costs the
    // chunked step ≈ 1 μs at B = 1 (spills), so shorter spans keep the packed words.
    constexpr int kWeightBits = BUCKETS && WPT > 8 ? 20 : 19;
    constexpr uint32_t kWeightMask = WIDE ? 0xffffffffu : (1u << kWeightBits) - 1u;
#pragma unroll
    for (int j = 0; j < PPT; ++j) {
      const int rb = rbin_of(score[j]);
      rbins[j >> 1] |= static_cast<uint32_t>(rb) << (16 * (j & 1));
      if (weight[j] == 0u) continue;
      atomicAdd(reinterpret_cast<uint32_t*>(sm.hist) + rb, weight[j] + (WIDE ? 0u : 1u << kWeightBits));
      if constexpr (WIDE) atomicAdd(sm.bin_key + rb, 1u);
    }
    __syncthreads();
    stamp(PH_BINNED);
    const uint4 h4 = reinterpret_cast<const uint4*>(sm.hist)[tid];
    const uint32_t hraw[4] = {h4.x, h4.y, h4.z, h4.w};
    int hv[4];  // weighted counts
#pragma unroll
    for (int k = 0; k < 4; ++k) hv[k] = static_cast<int>(hraw[k] & kWeightMask);
    int bins_total;
    const int above = row_scan(sm, 0, hv[0] + hv[1] + hv[2] + hv[3], &bins_total);
    if (above < K && above + hv[0] + hv[1] + hv[2] + hv[3] >= K) {
      int acc = above;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (acc < K && acc + hv[k] >= K) {
          sm.found_rbin = PPT * tid + k;
          sm.found_need = K - acc;
          sm.found_count = hv[k];
          sm.found_single = (WIDE ? sm.bin_key[PPT * tid + k] : hraw[k] >> kWeightBits) == 1u;
        }
        acc += hv[k];
      }
    }
    __syncthreads();
    stamp(PH_HIST);
    rb_star = sm.found_rbin;
    int need = sm.found_need;
    whole_bin = sm.found_count == need;
    if (!whole_bin && sm.found_single) {
      // One pair in the boundary bin: its key is the threshold, with ties unless the bin is needed
      // whole. Its thread (the only one with a pair there) publishes the key.
#pragma unroll
      for (int j = 0; j < PPT; ++j)
        if (weight[j] != 0u && rbin_at(j) == rb_star) sm.found_key = pq_score_key(score[j]);
      __syncthreads();
      shift = 0;
      prefix = sm.found_key;
      partial = true;
      quota = need;
    } else if (!whole_bin) {
      // 2. Members of the boundary bin.
#pragma unroll
      for (int j = 0; j < PPT; ++j) {
        if (weight[j] != 0u && rbin_at(j) == rb_star) {
          const int slot = atomicAdd(&sm.n_members, 1);
          if (slot < MAX_MEMBERS) {
            sm.member_key[slot] = pq_score_key(score[j]);
            sm.member_w[slot] = weight[j];
          }
        }
      }
      __syncthreads();
      stamp(PH_MEMBERS);
      const int gathered = sm.n_members;
      if (gathered <= MAX_MEMBERS) {
        // 3a. Rank the members at once.
        pq_rank_members(sm.member_key, sm.member_w, gathered, need, &sm.found_key, &sm.found_need, &sm.found_count);
        __syncthreads();
        shift = 0;
        prefix = sm.found_key;
        need = sm.found_need;
        partial = sm.found_count > need;
      } else {
        // 3b. Too many members (repeated or non-finite scores): weighted radix select on their keys,
        // 8 bits at a time from the highest bit in which they differ.
        uint32_t kmin = 0xffffffffu, kmax = 0u;
#pragma unroll
        for (int j = 0; j < PPT; ++j) {
          if (weight[j] != 0u && rbin_at(j) == rb_star) {
            kmin = min(kmin, pq_score_key(score[j]));
            kmax = max(kmax, pq_score_key(score[j]));
          }
        }
        uint32_t u0 = 0u, u1 = 0u;
        pq_block_minmax_u32<NT>(kmin, kmax, u0, u1, sm.member_key);
        if (kmin == kmax) {
          shift = 0;
          prefix = kmin;
          partial = true;
        } else {
          int top = 31 - __clz(kmin ^ kmax);
          prefix = top >= 31 ? 0u : (kmin >> (top + 1));
          for (;;) {
            const int sh = max(top - 7, 0);
            const int width = top - sh + 1;
            const uint32_t mask = (1u << width) - 1u;
            if (tid < 256) sm.hist[tid] = 0;
            __syncthreads();
#pragma unroll
            for (int j = 0; j < PPT; ++j) {
              const uint32_t kj = pq_score_key(score[j]);
              if (weight[j] != 0u && rbin_at(j) == rb_star && (top >= 31 || (kj >> (top + 1)) == prefix))
                atomicAdd(&sm.hist[255 - ((kj >> sh) & mask)], static_cast<int>(weight[j]));
            }
            __syncthreads();
            // The 256 reversed digits: threads < 256 one each (the scan covers the whole block).
            const int v = tid < 256 ? sm.hist[tid] : 0;
            int digits_total;
            const int ex = row_scan(sm, 1, v, &digits_total);
            if (tid < 256 && ex < need && ex + v >= need) {
              sm.found_rbin = 255 - tid;
              sm.found_need = need - ex;
              sm.found_count = v;
            }
            __syncthreads();
            prefix = (prefix << width) | static_cast<uint32_t>(sm.found_rbin);
            need = sm.found_need;
            shift = sh;
            top = sh - 1;
            if (sm.found_count == need) break;
            if (top < 0) {
              partial = true;
              break;
            }
            __syncthreads();  // found_* read by all before the next pass rewrites them
          }
        }
      }
      quota = partial ? need : 0;
      stamp(PH_REFINE);
    }
  }

  // 4. The class of every pair (byte table, M = 2: at c0 + CLS_STRIDE*c1; PACKED: PackedClasses).
  auto class_of_bin = [&](int rb, float sc) -> uint32_t {
    if (take_all) return CLS_TAKE;
    if (rb < rb_star) return CLS_TAKE;
    if (rb > rb_star) return CLS_SKIP;
    if (whole_bin) return CLS_TAKE;
    const uint32_t k = pq_score_key(sc) >> shift;
    if (k > prefix || (k == prefix && !partial)) return CLS_TAKE;
    return k == prefix ? CLS_TIE : CLS_SKIP;
  };
  // class_of: this thread's pair j (its bin from the histogram); class_of_score: any score (bucket mode's tail).
  auto class_of_score = [&](float sc) -> uint32_t { return class_of_bin(take_all ? 0 : rbin_of(sc), sc); };
  auto class_of = [&](int j) -> uint32_t { return class_of_bin(take_all ? 0 : rbin_at(j), score[j]); };
  if constexpr (BUCKETS) {
    if (take_all) {
      // Every eligible position is heavy: [lo, hi) in order.
      for (int i = tid; i < n_heavy; i += NT) {
        list[sink_end + i] = lo + i;
        store_weight(out.weights, out.wdtype, wrow + lo + i, true);
      }
      if (!kv_shared && tid == 0) q_joins_table(virtual_pair);
    } else {
      // 5. The candidate pairs (taken or tied, with positions in the buckets) listed in pair order,
      // each with its first slot among the gathered positions: one scan of (pairs, positions).
      uint32_t cls[PPT];
      int cnt[PPT];
      int n_cand = 0, n_pos = 0;
#pragma unroll
      for (int j = 0; j < PPT; ++j) {
        cnt[j] = PPT * tid + j < pairs ? boff[j + 1] - boff[j] : 0;
        cls[j] = cnt[j] > 0 ? class_of(j) : CLS_SKIP;
        n_cand += cls[j] != CLS_SKIP ? 1 : 0;
        n_pos += cls[j] != CLS_SKIP ? cnt[j] : 0;
      }
      int2 totals;
      int2 before = row_scan2(sm, n_cand, n_pos, &totals);
      // The threshold's arrays are free now (every thread is past the scan's barrier).
      int* ent_off = sm.hist;  // bucket offset, bit 31: a tied pair
      int* ent_start = reinterpret_cast<int*>(sm.bin_key);
#pragma unroll
      for (int j = 0; j < PPT; ++j) {
        if (cls[j] != CLS_SKIP) {
          ent_off[before.x] = boff[j] | (cls[j] == CLS_TIE ? static_cast<int>(0x80000000u) : 0);
          ent_start[before.x] = before.y;
          before.x += 1;
          before.y += cnt[j];
        }
      }
      __syncthreads();
      stamp(PH_CLASSES);
      // 6. Gathered slot g → its entry (binary search) → its position's bit; the tail from its codes.
      // One chunk of NT*WPT*32 positions from s0 + base (past 8 words, spans longer than one chunk
      // take several: step 7').
      const int* head_buckets = buckets + static_cast<int64_t>(bkv) * capacity;
      // The tail position's class, once (a later chunk's gather then needs no threshold state).
      const uint32_t tail_cls = tail_p < hi && tail_p >= lo ? class_of_score(pair_score(pair_of_raw(tail_raw))) : CLS_SKIP;
      auto gather_chunk = [&](int base) {
        auto set_bit = [&](int p, bool tie) {
          const unsigned i = static_cast<unsigned>(p - s0 - base);
          if (i >= static_cast<unsigned>(NT * WPT * 32)) return;
          const unsigned w = i >> 5;
          const uint32_t old = atomicOr((tie ? tie_bits : take_bits) + bit_word(w), 1u << (i & 31));
          if (WPT > 8 && old == 0u) atomicOr(word_flags + w / WPT, 1u << (w % WPT));
        };
        for (int g = tid; g < totals.y; g += NT) {
          int a = 0, z = totals.x - 1;
          while (a < z) {
            const int mid = (a + z + 1) >> 1;
            if (ent_start[mid] <= g) a = mid;
            else z = mid - 1;
          }
          const int eo = ent_off[a];
          set_bit(__ldg(head_buckets + (eo & 0x7fffffff) + (g - ent_start[a])), eo < 0);
        }
        if (tail_cls != CLS_SKIP) set_bit(tail_p, tail_cls == CLS_TIE);
        __syncthreads();
      };
      gather_chunk(0);
      if constexpr (WPT <= 8) {
        // 7. Position-order prefix of (takes, ties) over this thread's WPT words: takes ≤ K ≤ 2048 in
        // bits 19 …, ties ≤ NT*WPT*32 ≤ 2^18 in bits 0 … 18.
        uint32_t tw[WPT], xw[WPT];
        if constexpr (WPT == 1) {
          tw[0] = take_bits[tid];
          xw[0] = tie_bits[tid];
        } else if constexpr (WPT == 2) {
          const uint2 t2 = reinterpret_cast<const uint2*>(take_bits)[tid];
          const uint2 x2 = reinterpret_cast<const uint2*>(tie_bits)[tid];
          tw[0] = t2.x, tw[1] = t2.y, xw[0] = x2.x, xw[1] = x2.y;
        } else {
#pragma unroll
          for (int k = 0; k < WPT / 4; ++k) {
            const uint4 t4 = reinterpret_cast<const uint4*>(take_bits)[tid * (WPT / 4) + k];
            const uint4 x4 = reinterpret_cast<const uint4*>(tie_bits)[tid * (WPT / 4) + k];
            tw[4 * k] = t4.x, tw[4 * k + 1] = t4.y, tw[4 * k + 2] = t4.z, tw[4 * k + 3] = t4.w;
            xw[4 * k] = x4.x, xw[4 * k + 1] = x4.y, xw[4 * k + 2] = x4.z, xw[4 * k + 3] = x4.w;
          }
        }
        int n_take = 0, n_tie = 0;
#pragma unroll
        for (int wi = 0; wi < WPT; ++wi) {
          n_take += __popc(tw[wi]);
          n_tie += __popc(xw[wi]);
        }
        int packed_total;
        const int packed = row_scan(sm, 0, n_take << 19 | n_tie, &packed_total);
        if (!kv_shared && tid == 0) q_joins_table(virtual_pair);
        stamp(PH_COUNTS);
        int take_before = packed >> 19;
        int tie_before = packed & 0x7ffff;
#pragma unroll
        for (int wi = 0; wi < WPT; ++wi) {
          uint32_t sel = tw[wi] | xw[wi];
          while (sel != 0u) {  // only the set bits: most threads have none
            const int bit = __ffs(sel) - 1;
            sel &= sel - 1u;
            const uint32_t below = (1u << bit) - 1u;
            const bool take = (tw[wi] >> bit) & 1u;
            const int tkb = take_before + __popc(tw[wi] & below);
            const int tib = tie_before + __popc(xw[wi] & below);
            if (take || tib < quota) {
              const int slot = tkb + min(tib, quota);
              const int p = s0 + 32 * (WPT * tid + wi) + bit;
              if (slot < n_heavy) {
                list[sink_end + slot] = p;
                store_weight(out.weights, out.wdtype, wrow + p, true);
              }
            }
          }
          take_before += __popc(tw[wi]);
          tie_before += __popc(xw[wi]);
        }
      } else {
        // 7'. 16 or 20 words a thread (spans past 2^18): the same prefixes and writes, but only the
        // words flagged by the gather, counted from shared memory and read again to write (two
        // arrays of WPT words in registers would spill under the 64-register bound; reading every
        // word twice took B = 1, sk = 524288 from 11.8 to 14.7 μs: bench/NOTES.md, session 43), and
        // two scans, since the ties and takes no longer pack into one word. Word wi of this
        // thread: [wi * NT + tid] (bit_word).
        // A span longer than the bitmaps (planned up to BUCKET_MAX_SPAN, src/pq/cuda-plan.ts) goes
        // chunk by chunk, each gathered again from the candidate list; the chunks before carry their
        // (takes, ties).
        constexpr int CHUNK = NT * WPT * 32;
        // The chunk at s0 + base, after the (takes, ties) of the chunks before (carry); returns them
        // with this chunk's.
        auto write_chunk = [&](int base, int2 carry, bool first) -> int2 {
          const uint32_t flags = word_flags[tid];  // this thread's words with a bit set (most have none)
          int n_take = 0, n_tie = 0;
          for (uint32_t f = flags; f != 0u; f &= f - 1u) {
            const int wi = __ffs(f) - 1;
            n_take += __popc(take_bits[wi * NT + tid]);
            n_tie += __popc(tie_bits[wi * NT + tid]);
          }
          int2 chunk_total;  // a barrier has passed since a scan last read either scratch half (step 5's, or the gather's)
          const int2 before = row_scan2(sm, n_take, n_tie, &chunk_total);
          if (first && !kv_shared && tid == 0) q_joins_table(virtual_pair);
          stamp(PH_COUNTS);
          int take_before = carry.x + before.x;
          int tie_before = carry.y + before.y;
          // In position order (the lowest flagged word first); each word cleared once read, and the
          // flags, so the next chunk's gather finds its bitmaps zero (this thread owns these words).
          for (uint32_t f = flags; f != 0u; f &= f - 1u) {
            const int wi = __ffs(f) - 1;
            const uint32_t tw = take_bits[wi * NT + tid];
            const uint32_t xw = tie_bits[wi * NT + tid];
            take_bits[wi * NT + tid] = 0u;
            tie_bits[wi * NT + tid] = 0u;
            for (uint32_t sel = tw | xw; sel != 0u; sel &= sel - 1u) {  // only the set bits
              const int bit = __ffs(sel) - 1;
              const uint32_t below = (1u << bit) - 1u;
              const int tib = tie_before + __popc(xw & below);
              if (((tw >> bit) & 1u) || tib < quota) {
                const int slot = take_before + __popc(tw & below) + min(tib, quota);
                const int p = s0 + base + 32 * (WPT * tid + wi) + bit;
                if (slot < n_heavy) {
                  list[sink_end + slot] = p;
                  store_weight(out.weights, out.wdtype, wrow + p, true);
                }
              }
            }
            take_before += __popc(tw);
            tie_before += __popc(xw);
          }
          if (flags != 0u) word_flags[tid] = 0u;
          return make_int2(carry.x + chunk_total.x, carry.y + chunk_total.y);
        };
        int2 carry = write_chunk(0, make_int2(0, 0), true);
        // Later chunks (block-uniform): while the span goes on and a slot is left (not every take
        // seen, or the quota of ties not met).
        for (int base = CHUNK; base < hi - s0 && carry.x + min(carry.y, quota) < n_heavy; base += CHUNK) {
          __syncthreads();  // every thread has read and cleared its words of the last chunk
          gather_chunk(base);
          carry = write_chunk(base, carry, false);
        }
      }
    }
  } else {
  if constexpr (PACKED) {
    PackedClasses::write(sm.cls_lanes, PPT * tid < pairs ? class_of(0) | class_of(1) << 2 | class_of(2) << 4 | class_of(3) << 6 : 0u);
  } else if (PPT * tid < pairs) {
    if (M == 1 || C >= PPT) {
      const int i = PPT * tid;
      const int at = M == 1 ? i : (i & (C - 1)) + CLS_STRIDE * (i >> log2c);
      *reinterpret_cast<uint32_t*>(sm.cls + at) = class_of(0) | class_of(1) << 8 | class_of(2) << 16 | class_of(3) << 24;
    } else {
#pragma unroll
      for (int j = 0; j < PPT; ++j) {
        const int i = PPT * tid + j;
        if (i < pairs) sm.cls[(i & (C - 1)) + CLS_STRIDE * (i >> log2c)] = static_cast<uint8_t>(class_of(j));
      }
    }
  }
  __syncthreads();
  stamp(PH_CLASSES);
  // 5. Classes of this thread's positions, 2 bits each, 16 to a word; outside [lo, hi) skipped.
  const uint32_t lane_bytes = 4u * static_cast<uint32_t>(tid & 31);  // PACKED: this lane's copy
  uint32_t word[WORDS];
#pragma unroll
  for (int wi = 0; wi < WORDS; ++wi) word[wi] = 0u;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const uint32_t v[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
#pragma unroll
      for (int u = 0; u < 4 / M; ++u) {  // positions in this 32-bit word
        const int j = c * (16 / M) + k * (4 / M) + u;
        if constexpr (PACKED) {
          word[j / 16] |= PackedClasses::lookup(sm.cls_lanes, v[k] >> (16 * u), lane_bytes, j);
        } else {
          uint32_t at;
          if (M == 1) {
            at = (v[k] >> (8 * u)) & 0xffu;
          } else {
            const uint32_t pw = v[k] >> (16 * u);  // c0 | c1 << 8 in the low 16 bits
            at = (pw & 0x3fu) | ((pw >> 2) & 0xfc0u);
          }
          word[j / 16] += static_cast<uint32_t>(sm.cls[at]) << (2 * (j % 16));
        }
      }
    }
  }
  int n_take = 0, n_tie = 0;
#pragma unroll
  for (int wi = 0; wi < WORDS; ++wi) {
    // Eligible positions of this word: [lo, hi) ∩ [p0 + 16 wi, p0 + 16 wi + 16).
    const int first = min(max(lo - (p0 + 16 * wi), 0), 16);
    const int last = min(max(hi - (p0 + 16 * wi), 0), 16);
    const uint32_t upto_last = last >= 16 ? 0xffffffffu : (1u << (2 * last)) - 1u;
    const uint32_t from_first = first >= 16 ? 0u : 0xffffffffu << (2 * first);
    word[wi] &= upto_last & from_first;
    n_take += __popc(word[wi] & EVEN_BITS);
    n_tie += __popc(word[wi] & ~EVEN_BITS);
  }
  // 6. Position-order prefix of (takes, ties), packed: takes ≤ K ≤ 2048 in bits 17 …, ties ≤ NT*E
  // ≤ 2^16 in bits 0 … 16 (the sum stays below 2^31).
  int packed_total;
  int packed = row_scan(sm, 1, n_take << 17 | n_tie, &packed_total);
  if (CL > 1) {
    mailboxes_ready_wait();  // the peers' mailboxes are initialised (arrived long before)
    // The earlier ranks' positions come first: each block sends its totals to the later ranks.
    if (tid == 0) {
#pragma unroll
      for (int r = 0; r < CL; ++r)
        if (r > rank) mailbox_push(&sm.counts_from[rank], r, static_cast<uint32_t>(packed_total), &sm.counts_mail);
    }
    if (rank > 0) {
      mailbox_wait(&sm.counts_mail);
#pragma unroll
      for (int r = 0; r < CL - 1; ++r) packed += r < rank ? sm.counts_from[r] : 0;
    }
  }
  // Every rank is past its classes (the last one has the others' counts), which consumed the weights.
  // One query head per kv-head: q joins the table now; G of them: at the end (readers counter).
  if (!kv_shared && rank == CL - 1 && tid == 0) q_joins_table(virtual_pair);
  stamp(PH_COUNTS);
  int take_before = packed >> 17;
  int tie_before = packed & 0x1ffff;
#pragma unroll
  for (int wi = 0; wi < WORDS; ++wi) {
    uint32_t sel = (word[wi] | word[wi] >> 1) & EVEN_BITS;
    while (sel != 0u) {  // only the set fields: most threads have none
      const int bit = __ffs(sel) - 1;
      sel &= sel - 1u;
      const uint32_t below = word[wi] & ((1u << bit) - 1u);
      const bool take = (word[wi] >> bit) & 1u;
      const int tkb = take_before + __popc(below & EVEN_BITS);
      const int tib = tie_before + __popc(below & ~EVEN_BITS);
      if (take || tib < quota) {
        const int slot = tkb + min(tib, quota);
        const int p = p0 + 16 * wi + bit / 2;
        if (slot < n_heavy) {
          list[sink_end + slot] = p;
          store_weight(out.weights, out.wdtype, wrow + p, true);
        }
      }
    }
    take_before += __popc(word[wi] & EVEN_BITS);
    tie_before += __popc(word[wi] & ~EVEN_BITS);
  }
  }  // row mode
  stamp(PH_WRITE);
  if (kv_shared && rank == CL - 1 && tid == 0) q_joins_table(virtual_pair);
  if (RESIDENT && CL > 1) {
    // The next step initialises the mailboxes again: invalidate them once every wait is over.
    __syncthreads();
    if (tid == 0) mailbox_inval(&sm.counts_mail);
  }
  finish();
}

}  // namespace

#define PQ_STEP_ROW_KERNEL(NAME, M, E, CL, WPT) PQ_STEP_ROW_KERNEL_W(NAME, M, E, CL, WPT, false)
#define PQ_STEP_ROW_KERNEL_W(NAME, M, E, CL, WPT, WIDE)                                                                   \
  extern "C" __global__ void PQ_CLUSTER_DIMS(CL) __launch_bounds__(NT, 1) NAME(PQ_STEP_PARAMS) {                         \
    pq_allow_dependents(); /* a decode layer's attention may start now (it waits for this grid) */                    \
    const OutputArgs out{sparse_list, sparse_len, weights, wdtype, wstride, L};                                         \
    step_row<M, E, CL, WPT, false, WIDE>(PQ_STEP_QUERY, PQ_STEP_KEY, centroids, phi, codes, seq_read, seq_write, appended, pair_count, \
                            readers, out, status, B, H, Hkv, D, C, log2c, cstride, capacity, S, W, K, O, ip,             \
                            full_threshold, phase_clock, bucket_end, bucket_offsets, buckets);                           \
    pq_wait_for_previous(); /* launched behind a decode layer's K/V append: it ends before this grid does */         \
  }

// The argument list is select_pairs.cu's (slice_len and bits_tiles unused), so the host launches
// either family with one argument layout. _c2: clusters of two blocks per query head (sm_90; one
// block per head before).
// The scanning instances, (name suffix, M, E, CL): the step kernels here, their resident forms below.
#define PQ_ROW_INSTANCES(X)                                                                                    \
  X(m1_e16, 1, 16, 1) X(m1_e32, 1, 32, 1) X(m1_e64, 1, 64, 1) X(m2_e16, 2, 16, 1) X(m2_e32, 2, 32, 1)            \
  X(m2_e64, 2, 64, 1) X(m1_e16_c2, 1, 16, 2) X(m1_e32_c2, 1, 32, 2) X(m1_e64_c2, 1, 64, 2) X(m2_e16_c2, 2, 16, 2) \
  X(m2_e32_c2, 2, 32, 2) X(m2_e64_c2, 2, 64, 2)
#define PQ_STEP_ROW_INSTANCE(SUFFIX, M, E, CL) PQ_STEP_ROW_KERNEL(pq_step_row_##SUFFIX, M, E, CL, 0)
PQ_ROW_INSTANCES(PQ_STEP_ROW_INSTANCE)
// Bucket mode (pq_step_bucket_m{M}_w{WPT}): one block per query head, dynamic shared memory
// 2 * NT * WPT * 4 bytes (the take and tie bitmaps of positions s0 … s0 + NT*WPT*32 − 1).
PQ_STEP_ROW_KERNEL(pq_step_bucket_m1_w1, 1, 0, 1, 1)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m1_w2, 1, 0, 1, 2)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m1_w4, 1, 0, 1, 4)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m1_w8, 1, 0, 1, 8)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m1_w16, 1, 0, 1, 16)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m1_w20, 1, 0, 1, 20)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m2_w1, 2, 0, 1, 1)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m2_w2, 2, 0, 1, 2)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m2_w4, 2, 0, 1, 4)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m2_w8, 2, 0, 1, 8)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m2_w16, 2, 0, 1, 16)
PQ_STEP_ROW_KERNEL(pq_step_bucket_m2_w20, 2, 0, 1, 20)
// Spans from 2^20 (16 words in chunks): the histogram's weights unpacked (WIDE, above).
PQ_STEP_ROW_KERNEL_W(pq_step_bucket_m1_w16_wide, 1, 0, 1, 16, true)
PQ_STEP_ROW_KERNEL_W(pq_step_bucket_m2_w16_wide, 2, 0, 1, 16, true)

// Resident form of the row kernel (pq_resident_row_m{M}_e{E}[_c2]; resident.cuh): the same grid
// (every block co-resident: the host checks), launched once; every block serves one step per ring.
// The bell's flag bits are the step's: bit 0 the seqState slot holding sk (seq_write is the slot
// array; seq_read and appended are unused), bit 1 whether the step appends (else the append blocks
// idle). `first_ticket` is the first ticket the launch serves.
namespace {
template <int M, int E, int CL>
__device__ void resident_row(PQ_STEP_PARAMS, PqResidentWords* words, PqResidentCounters* counters, unsigned first_ticket) {
  const OutputArgs out{sparse_list, sparse_len, weights, wdtype, wstride, L};
  ResidentState state{false, -1, row_place<CL>(H, Hkv, PQ_STEP_QUERY)};  // per thread, the same in every thread of the block
  pq_resident_serve(words, counters, first_ticket, [&](unsigned bell) {
    const int slot = static_cast<int>(bell & 1u);
    const int step_appends = static_cast<int>((bell >> 1) & 1u);
    if (step_appends || static_cast<int>(blockIdx.y) < B * H) {
      step_row<M, E, CL, 0, true>(PQ_STEP_QUERY, PQ_STEP_KEY, centroids, phi, codes, seq_write + slot, seq_write + (slot ^ 1),
                                  step_appends, pair_count, readers, out, status, B, H, Hkv, D, C, log2c, cstride, capacity, S, W, K,
                                  O, ip, full_threshold, phase_clock, bucket_end, bucket_offsets, buckets, &state);
    }
  });
}
}  // namespace

#define PQ_RESIDENT_ROW_KERNEL(NAME, M, E, CL)                                                                         \
  extern "C" __global__ void PQ_CLUSTER_DIMS(CL) __launch_bounds__(NT, 1)                                              \
      NAME(PQ_STEP_PARAMS, PqResidentWords* words, PqResidentCounters* counters, unsigned first_ticket) {              \
    resident_row<M, E, CL>(PQ_STEP_ARGS, words, counters, first_ticket);                                              \
  }
#define PQ_RESIDENT_ROW_INSTANCE(SUFFIX, M, E, CL) PQ_RESIDENT_ROW_KERNEL(pq_resident_row_##SUFFIX, M, E, CL)
PQ_ROW_INSTANCES(PQ_RESIDENT_ROW_INSTANCE)

// The code pair of kv-head a's position p, as the bucket kernels read it.
struct HeadPairs {
  const uint8_t* codes;  // the kv-head's codes
  int M, log2c;
  __device__ int at(int p) const { return pq_code_pair(codes + static_cast<int64_t>(p) * M, M, log2c); }
};

__device__ __forceinline__ HeadPairs head_pairs(const uint8_t* codes, int a, int capacity, int M, int log2c) {
  return {codes + static_cast<int64_t>(a) * capacity * M, M, log2c};
}

// Kv-head blockIdx.x as both bucket kernels see it: its code pairs, the number of pairs, where its
// eligible positions end before the next step (end = max(lo, sk − W)), and its rows of offsets and
// buckets.
struct HeadBuckets {
  HeadPairs head;
  int pairs, end;
  int* off;   // offsets[a*(pairs + 4) …]: where each pair's positions start, then the total
  int* list;  // buckets[a*capacity …]: the positions, grouped by pair
  const unsigned* expected;  // the pair table's row: each bucket's size between steps

  // A bucket of pair i holding n positions, other than the pair table says, flags the buckets stale.
  __device__ void check_size(int i, int n, int* status) const {
    if (static_cast<unsigned>(n) != expected[i]) pq_flag_status(status, PQ_STATUS_BUCKETS_STALE);
  }
};

__device__ __forceinline__ HeadBuckets head_buckets(const uint8_t* codes, const int* seq, int* offsets, int* buckets,
                                                    const unsigned* pair_count, int capacity, int M, int C, int log2c,
                                                    int lo, int W) {
  const int a = blockIdx.x;
  const int pairs = M == 1 ? C : C << log2c;
  return {head_pairs(codes, a, capacity, M, log2c), pairs, max(lo, *seq - W), offsets + static_cast<int64_t>(a) * (pairs + 4),
          buckets + static_cast<int64_t>(a) * capacity, pair_count + static_cast<int64_t>(a) * pairs};
}

// count[i] = the positions of [from, to) with pair i, for i < pairs (zeroed first; every thread of
// the NT-thread block calls it; both barriers inside).
__device__ __forceinline__ void count_positions(int* count, const HeadPairs& head, int pairs, int from, int to) {
  for (int i = threadIdx.x; i < pairs; i += NT) count[i] = 0;
  __syncthreads();
  for (int p = from + static_cast<int>(threadIdx.x); p < to; p += NT) atomicAdd(&count[head.at(p)], 1);
  __syncthreads();
}

// pq_bucket_rebuild: the position buckets of every (b, kv-head), for the bucket-mode step kernels.
// Launch: grid (B*Hkv), block NT = 1024. Reads sk from seq (the slot the next step reads), sets
// end = max(lo, sk − W) and, for kv-head a, lists the positions [lo, end) grouped by code pair:
// offsets[a*(pairs + 4) + i] is where pair i's positions start in buckets[a*capacity …] (order inside
// a bucket unspecified: the step sorts through its bitmap), offsets[… + pairs] = end − lo. Block 0
// writes *bucket_end = end. Each bucket's size must equal the pair table's count (exact for
// [lo, sk − W) between steps); a mismatch sets PQ_STATUS_BUCKETS_STALE.
extern "C" __global__ void __launch_bounds__(NT) pq_bucket_rebuild(const uint8_t* codes, const int* seq, int* bucket_end,
                                                                   int* offsets, int* buckets, const unsigned* pair_count,
                                                                   int* status, int capacity, int M, int C, int log2c, int lo,
                                                                   int W) {
  __shared__ int count[MAX_ROW_PAIRS];
  __shared__ int warp_total[NW];
  const int tid = threadIdx.x;
  const HeadBuckets hb = head_buckets(codes, seq, offsets, buckets, pair_count, capacity, M, C, log2c, lo, W);
  const int pairs = hb.pairs;
  count_positions(count, hb.head, pairs, lo, hb.end);
  // Exclusive scan of the counts, PPT consecutive pairs per thread.
  int c[PPT];
  int mine = 0;
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int i = PPT * tid + j;
    c[j] = i < pairs ? count[i] : 0;
    mine += c[j];
    if (i < pairs) hb.check_size(i, c[j], status);
  }
  int end_total;
  int start = block_scan(warp_total, mine, &end_total);
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int i = PPT * tid + j;
    if (i < pairs) {
      hb.off[i] = start;
      count[i] = start;  // now the pair's next free slot
    }
    start += c[j];
  }
  if (tid == 0) hb.off[pairs] = end_total;  // = end − lo
  __syncthreads();
  for (int p = lo + tid; p < hb.end; p += NT) hb.list[atomicAdd(&count[hb.head.at(p)], 1)] = p;
  if (blockIdx.x == 0 && tid == 0) *bucket_end = hb.end;
}

// Bucket merge: extends kv-head a's buckets from [lo, old_end) to [lo, end) (end = max(lo, *seq − W))
// in place, for the host's periodic update (src/pq/cuda-cache.ts rebuildBuckets) once the old
// buckets are current. pq_bucket_rebuild re-sorts every position (a shared atomic and a scattered
// store each: 1.88 ms at B = 8, sk = 131,072); here the old entries only move up by the tail
// positions of the pairs before theirs, and the tail (≈ bucketTail positions) is scattered.
// Launch: grid (B*Hkv), block NT, as the rebuild. Steps:
//   1. the tail's count per pair (shared atomics);
//   2. each pair's shift, the exclusive scan of those counts; its new offset = old + shift; the
//      counts checked against the pair table as the rebuild does (PQ_STATUS_BUCKETS_STALE);
//   3. the old entries moved to k + shift(pair of k), in chunks of NT*kMergeLoads from the top down:
//      a chunk's entries are all read (then a barrier) before any is written, a write lands at or
//      above its own k (shifts are ≥ 0) and so above every lower chunk's entries, and shifts grow
//      with k, so no two writes meet; an entry's pair is found by binary search over the old offsets;
//   4. the tail scattered after each pair's moved entries (its next slot: old end of the bucket + shift).
// Invariants: the old buckets list [lo, old_end) exactly (offsets[pairs] = old_end − lo);
// old_end ≤ end (the host rebuilds instead when sk went back).
constexpr int kMergeLoads = 8;  // entries a thread moves per chunk (loads in flight before the barrier)

extern "C" __global__ void __launch_bounds__(NT, 1) pq_bucket_merge(const uint8_t* codes, const int* seq, int* bucket_end,
                                                                 int* offsets, int* buckets, const unsigned* pair_count,
                                                                 int* status, int capacity, int M, int C, int log2c, int lo,
                                                                 int W, int old_end) {
  __shared__ int old_off[MAX_ROW_PAIRS + 1];
  __shared__ int shift[MAX_ROW_PAIRS];  // step 1: the tail's counts; step 2 on: each pair's shift (step 4: + taken slots)
  __shared__ int warp_total[NW];
  const int tid = threadIdx.x;
  const HeadBuckets hb = head_buckets(codes, seq, offsets, buckets, pair_count, capacity, M, C, log2c, lo, W);
  const int pairs = hb.pairs;
  const int end = hb.end;
  const HeadPairs head = hb.head;
  int* head_off = hb.off;
  int* head_buckets = hb.list;

  // 1. The tail's pairs.
  count_positions(shift, head, pairs, old_end, end);
  // 2. Shifts and new offsets of this thread's PPT consecutive pairs (read before any is rewritten).
  int tail[PPT], off[PPT + 1], first[PPT];  // first: the pair's shift (its new offset = off + first)
  int mine = 0;
#pragma unroll
  for (int j = 0; j <= PPT; ++j) off[j] = PPT * tid + j <= pairs ? head_off[PPT * tid + j] : 0;
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int i = PPT * tid + j;
    tail[j] = i < pairs ? shift[i] : 0;
    mine += tail[j];
    if (i < pairs) hb.check_size(i, off[j + 1] - off[j] + tail[j], status);
  }
  int tail_total;
  int sh = block_scan(warp_total, mine, &tail_total);  // its barrier: every count above read
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int i = PPT * tid + j;
    first[j] = sh;
    if (i < pairs) {
      old_off[i] = off[j];
      shift[i] = sh;
    }
    sh += tail[j];
  }
  if (tid == 0) old_off[pairs] = head_off[pairs];
  __syncthreads();
  // 3. The old entries, top chunk first. The pair of entry k: the last i < pairs with old_off[i] ≤ k
  // (old_off[0] = 0 ≤ k), by a fixed 12-step search (pairs ≤ 4096) the compiler interleaves over a
  // thread's entries.
  const int old_total = old_off[pairs];
  auto pair_of_entry = [&](int k) {
    int i = 0;
#pragma unroll
    for (int step = MAX_ROW_PAIRS / 2; step > 0; step >>= 1)
      if (i + step < pairs && old_off[i + step] <= k) i += step;
    return i;
  };
  if (tail_total > 0) {
    for (int top = old_total; top > 0; top -= NT * kMergeLoads) {
      const int base = max(0, top - NT * kMergeLoads);
      int value[kMergeLoads], dest[kMergeLoads];
      // Every load in flight before the searches (loaded after its search, each waited in turn).
#pragma unroll
      for (int r = 0; r < kMergeLoads; ++r) {
        const int k = base + r * NT + tid;
        value[r] = k < top ? head_buckets[k] : 0;
      }
#pragma unroll
      for (int r = 0; r < kMergeLoads; ++r) {
        const int k = base + r * NT + tid;
        const int s = k < top ? shift[pair_of_entry(k)] : 0;
        dest[r] = s != 0 ? k + s : -1;  // entries of pairs before the first tail pair stay where they are
      }
      __syncthreads();  // the chunk read before any of it is overwritten
#pragma unroll
      for (int r = 0; r < kMergeLoads; ++r)
        if (dest[r] >= 0) head_buckets[dest[r]] = value[r];
    }
  }
  // 4. The tail, after each pair's moved entries; then the new offsets.
  __syncthreads();  // every thread's step-3 reads of shift done before step 4 bumps it
  for (int p = old_end + tid; p < end; p += NT) {
    const int i = head.at(p);
    head_buckets[old_off[i + 1] + atomicAdd(&shift[i], 1)] = p;
  }
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int i = PPT * tid + j;
    if (i < pairs) head_off[i] = off[j] + first[j];
  }
  if (tid == 0) head_off[pairs] = old_total + tail_total;
  if (blockIdx.x == 0 && tid == 0) *bucket_end = end;
}
