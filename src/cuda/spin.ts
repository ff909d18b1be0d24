/**
 * Waiting on a word in pinned host memory that the GPU writes (a resident launch's done, a step
 * chain's done): spin on it, reading the clock only every SPINS_PER_CHECK spins, and once past
 * FAULT_CHECK_AFTER_MS ask the driver about the stream, which reports a fault (isIdle throws) or
 * that the work ended without writing the word.
 */
import type { Stream } from './stream.js';

/** Spins between clock reads while waiting (a clock read costs more than a spin). */
const SPINS_PER_CHECK = 1024;
/** A wait this long asks the driver whether the stream ended or faulted (a driver call costs ≈ 1 μs). */
const FAULT_CHECK_AFTER_MS = 1;

/**
 * Spin until u32[index] == value: true when it is; false after `ms`, or when `stream` went idle
 * without it. CudaError if the stream faulted.
 */
export function spinUntilWord(u32: Uint32Array, index: number, value: number, ms: number, stream: Stream): boolean {
  if (Atomics.load(u32, index) === value) return true;
  const start = performance.now();
  for (;;) {
    for (let i = 0; i < SPINS_PER_CHECK; i++) if (Atomics.load(u32, index) === value) return true;
    const waited = performance.now() - start;
    if (waited > ms) return false;
    if (waited > FAULT_CHECK_AFTER_MS && stream.isIdle()) return Atomics.load(u32, index) === value;
  }
}
