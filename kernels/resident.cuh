// Resident kernels: launched once and kept running, each block serving one request per ring of a
// doorbell in pinned host memory, instead of being launched per request. A request then costs no
// launch on the host (cuGraphLaunch, 2.6–4.7 μs from Node) nor on the device (≈ 2.9 μs for an empty
// graph, ≈ 1.6 μs to dispatch and drain 1024-thread blocks), only a PCIe round trip each way.
// src/cuda/resident.ts drives the protocol:
//   - the host writes the request's inputs (pinned staging), then `bell` = ticket << 3 | flags;
//   - thread 0 of block 0 spins on `bell` and relays it to a word in device memory, on which thread
//     0 of every other block spins (96 blocks polling host memory over PCIe took 140 μs to see a
//     ring: runtime record); each block serves the ticket it waits for, or stops on STOP;
//   - each block then arrives on a device counter; the last to arrive publishes the ticket in
//     `done`, on which the host spins (pq_resident_serve holds this loop).
// Invariants: every block of the grid is resident at once (a block that never starts would hold
// every request; the host checks `ready` before the first ring and stops the launch otherwise);
// one request in flight (the host rings ticket t + 1 only after `done` == t); the data a request
// reads that earlier requests wrote (codes, pair counts) is read with plain loads, never ld.global.nc,
// whose data must stay read-only for the kernel's lifetime.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.cuh"

// The protocol words, in pinned host memory that the kernel addresses through unified addressing
// (src/cuda/resident.ts reads them at these offsets). Three 64-byte lines, one per writer and
// reader pair: the host writes the bell's line, the GPU the others, so the host's bell store and
// its spin on `done` do not share a line with what the GPU writes at every request.
struct __align__(64) PqResidentWords {
  unsigned bell;      // ticket << 3 | PQ_RESIDENT_STOP | flag bits 0..1 (the request's own), by the host
  unsigned pad0[15];
  long long seen_ns;  // global timer when block (0, 0) saw the ring
  unsigned ready;     // the launch's first ticket, once every block has started
  unsigned pad1[13];
  long long done_ns;  // global timer when block 0 saw every block finish the request …
  unsigned done;      // … and the ticket served: both in one 16-byte store
  unsigned pad2[13];
};
static_assert(sizeof(PqResidentWords) == 192 && offsetof(PqResidentWords, seen_ns) == 64 && offsetof(PqResidentWords, ready) == 72 &&
                  offsetof(PqResidentWords, done_ns) == 128 && offsetof(PqResidentWords, done) == 136,
              "the offsets src/cuda/resident.ts reads");
constexpr unsigned PQ_RESIDENT_STOP = 4u;
constexpr unsigned PQ_RESIDENT_TICKET_MASK = 0x1fffffffu;

__device__ __forceinline__ void pq_store_release_sys(unsigned* p, unsigned v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void pq_store_release_gpu(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned pq_load_acquire_sys(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned pq_load_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Device-memory words of a launch (zeroed, relay = the host's bell, before the launch), on separate
// 128-byte lines: the arrivals' atomics do not contend with the blocks polling the relay.
struct PqResidentCounters {
  unsigned arrivals;  // arrivals since the launch: round r complete at r·blocks (pq_resident_arrive)
  unsigned pad[31];
  unsigned relay;     // the bell, as block 0 last saw it
};

__device__ __forceinline__ bool pq_resident_rung(unsigned v, unsigned want) {
  return ((v >> 3) & PQ_RESIDENT_TICKET_MASK) == want || (v & PQ_RESIDENT_STOP) != 0u;
}

// Every block's thread 0 at its start, after a block barrier: arrive on the counter, a release.
// The counter only grows (the host zeroes it before a launch): after round r of arrivals (1: the
// blocks' start; then one per request) it holds r·blocks. No separate fence: in a same-run A/B of
// the same chain at the end of the graph step kernel, a fence before each arrival and a system
// fence before the publishing store cost 0.9 μs of device time (select-publish-ab record).
__device__ __forceinline__ void pq_resident_arrive(PqResidentCounters* counters) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(&counters->arrivals) : "memory");
}

// Every block's thread 0 after a request, after a block barrier that follows the block's work:
// arrive (acquire and release: the count it reads synchronizes with every earlier arrival, its own
// covers the block's results through the barrier) and learn whether it completed round `round`
// (exact equality: wrap-safe, the count passes r·blocks once).
__device__ __forceinline__ bool pq_resident_arrive_last(PqResidentCounters* counters, unsigned round) {
  unsigned before;
  asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(before) : "l"(&counters->arrivals) : "memory");
  return before + 1u == round * (gridDim.x * gridDim.y * gridDim.z);
}

// Block 0's thread 0: wait until arrival round `round` is complete. Its acquire that reads the full
// count synchronizes with every arrival, so every block's results are visible at device scope to
// block 0 and, through its release of the relay, to every block serving the next request.
__device__ __forceinline__ void pq_resident_round_complete(PqResidentCounters* counters, unsigned round) {
  const unsigned all = round * (gridDim.x * gridDim.y * gridDim.z);
  // Wrap-safe: the count never passes `all` unpublished.
  while (static_cast<int>(pq_load_acquire_gpu(&counters->arrivals) - all) < 0) {
  }
}

// Block 0's thread 0 at the start: wait for every block's first arrival, or for the host to give
// up waiting (STOP in the bell: a grid that cannot be resident at once). In that case block 0 goes
// on to relay the STOP, so the blocks that did start exit and free their multiprocessors for the
// ones still waiting, which then read the STOP too. (Waiting for the count alone hung a launch
// whose blocks filled every multiprocessor: the host's STOP into the relay is a memset that may
// need a multiprocessor itself.) True when every block started.
__device__ __forceinline__ bool pq_resident_started(PqResidentWords* words, PqResidentCounters* counters) {
  const unsigned all = gridDim.x * gridDim.y * gridDim.z;
  for (;;) {
    if (pq_load_acquire_gpu(&counters->arrivals) >= all) return true;
    if (pq_load_acquire_sys(&words->bell) & PQ_RESIDENT_STOP) return false;
  }
}

// The last block to arrive for a request (its thread 0): publish the ticket in `done` (with
// `done_ns`, one 16-byte store). A relaxed store, not a release at system scope, which cost 0.6 μs
// more per request in block 0 and 1.4–1.9 μs in any other block of a 96-block launch (session 14's
// echo variants). What the host may rely on once it reads `done`:
//   - the results in device memory are complete at device scope (every block's release arrival,
//     this thread's acquire in its own arrival): all later device work and copies, whichever
//     stream, read them;
//   - a status flag raised during the request is already visible: pq_flag_status fences at system
//     scope before the flagging block's barrier and arrival, which precede this store.
// `ready` keeps the release at system scope (once per launch).
// Why the last block and not block 0 after polling the count (which it still does, off the critical
// path, for the order above): one L2 round trip less. Same-run A/Bs on the H100, seed config
// (select-lastdone-ab record, session 17; session 16's runs 5 and 6): device time −0.15 to −0.20 μs,
// ring → done on the host −0.18 and −0.21 μs in two of three runs, unchanged in the third. Every
// block writing the protocol page once per request first, so its translation is warm wherever the
// last block runs, added nothing.
__device__ __forceinline__ void pq_resident_publish_done(PqResidentWords* words, unsigned ticket) {
  const long long t = pq_global_timer_ns();
  asm volatile("st.relaxed.sys.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(&words->done_ns), "r"(static_cast<unsigned>(t)),
               "r"(static_cast<unsigned>(static_cast<unsigned long long>(t) >> 32)), "r"(ticket), "r"(0u)
               : "memory");
}

// Every thread of the block: wait for the ring of `ticket` or STOP and return the bell word (in
// `slot`, a shared word the caller keeps for this). Block 0 first waits for arrival round
// `previous_round`, the previous request's (the host rings only after `done`, so this costs the
// next request nothing), or, before the first ticket, publishes `ready` once every block has
// started; then it reads the bell (acquire, system scope: the host's writes before the ring, such
// as inputs, are visible after it) and relays it (release, device scope); the others read the
// relay (acquire, device scope: by causality, the host's writes and every block's results of
// earlier requests too). Both acquires drop the SM's L1 lines, so loads see what other blocks
// wrote for earlier requests; the barrier extends the order to the block.
// Tried and reverted (runtime record, 96 blocks: 6.2 → 17 μs round trip): relaxed polling with one
// fence after it, and block 0 polling from four staggered warps.
__device__ __forceinline__ unsigned pq_resident_wait(PqResidentWords* words, PqResidentCounters* counters, unsigned ticket,
                                                     unsigned first_ticket, unsigned previous_round, unsigned* slot) {
  if (threadIdx.x == 0) {
    const unsigned want = ticket & PQ_RESIDENT_TICKET_MASK;
    unsigned v;
    if (blockIdx.x == 0 && blockIdx.y == 0) {
      if (ticket != first_ticket) {
        pq_resident_round_complete(counters, previous_round);
      } else if (pq_resident_started(words, counters)) {
        pq_store_release_sys(&words->ready, first_ticket);
      }
      do {
        v = pq_load_acquire_sys(&words->bell);
      } while (!pq_resident_rung(v, want));
      words->seen_ns = pq_global_timer_ns();
      pq_store_release_gpu(&counters->relay, v);
    } else {
      do {
        v = pq_load_acquire_gpu(&counters->relay);
      } while (!pq_resident_rung(v, want));
    }
    *slot = v;
  }
  __syncthreads();
  return *slot;
}

// A resident kernel's life, for every block: arrive once started (block 0 publishes `ready` when
// all have), then for each ring until STOP: serve(bell) with every thread, a barrier, arrive (the
// last block to arrive publishes the ticket in `done`). `first_ticket` is the first ticket the
// launch serves.
template <typename Serve>
__device__ __forceinline__ void pq_resident_serve(PqResidentWords* words, PqResidentCounters* counters, unsigned first_ticket,
                                                  Serve serve) {
  __shared__ unsigned bell_word;
  if (threadIdx.x == 0) pq_resident_arrive(counters);
  for (unsigned ticket = first_ticket, round = 2u;; ++ticket, ++round) {  // round 1: the start
    const unsigned bell = pq_resident_wait(words, counters, ticket, first_ticket, round - 1u, &bell_word);
    if (bell & PQ_RESIDENT_STOP) return;
    serve(bell);
    __syncthreads();  // the block's results, and bell_word read by every thread
    if (threadIdx.x == 0 && pq_resident_arrive_last(counters, round)) pq_resident_publish_done(words, ticket & PQ_RESIDENT_TICKET_MASK);
  }
}
