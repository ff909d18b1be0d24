/**
 * Waiting for a word that a kernel publishes in pinned host memory (a release at system scope):
 * the host spins on it with Atomics.load (a plain typed-array read in a loop may be hoisted by the
 * JIT). Seeing the word costs a read of local memory, where a driver call that waits for a stream
 * reports the kernel's end ≈ 2.6 μs after the kernel's own store is visible (runtime record).
 */

/** Spins between clock reads (a clock read costs more than a spin). */
const SPINS_PER_CHECK = 1024;
/** A wait this long asks whether the publisher ended (a driver call costs ≈ 1 μs). */
const ENDED_CHECK_AFTER_MS = 1;

/**
 * Spin until `u32[index] === value` (or, `atLeast`, until it has reached `value` counting modulo
 * 2^32: a sequence number that may have moved past it). False after `ms`, or once `ended()` (asked
 * after 1 ms, between spins) says the publisher has ended without the value. `ended` may throw (a
 * fault in the kernel).
 */
export function spinForWord(u32: Uint32Array, index: number, value: number, ms: number, ended: () => boolean, atLeast = false): boolean {
  const seen = (): boolean => {
    const w = Atomics.load(u32, index);
    return atLeast ? ((w - value) | 0) >= 0 : w === value;
  };
  if (seen()) return true;
  const start = performance.now();
  for (;;) {
    for (let i = 0; i < SPINS_PER_CHECK; i++) if (seen()) return true;
    const waited = performance.now() - start;
    if (waited > ms) return false;
    if (waited > ENDED_CHECK_AFTER_MS && ended()) return seen();
  }
}
