/**
 * Waiting for work in flight on a stream sooner than cuStreamSynchronize: a fresh number written
 * into pinned host memory behind the work (cuStreamWriteValue32, whose default memory barrier makes
 * the work's writes visible first), and a spin on that word. The driver reports a stream complete
 * ≈ 2.6 μs after its last kernel's own store is visible (bench/NOTES.md, session 11: a graph seen
 * done by a flag in 5.2–5.6 μs, through cuStreamSynchronize in 8.2), and the spin sees the word as
 * soon as it lands. Only for work in flight: on an idle stream the write's round trip through the
 * GPU costs more than a synchronize. The work is done and its writes visible when a wait returns;
 * the driver's own view (cuStreamQuery, events) may catch up ≈ 2 μs later, which changes nothing for
 * work enqueued afterwards (stream order) or for copies.
 */
import { PinnedBuffer } from './memory.js';
import { spinUntilWord } from './spin.js';
import type { Stream } from './stream.js';

/** How long a wait spins on the word before it hands over to cuStreamSynchronize (long work: a build). */
const SPIN_MS = 5;

export class CompletionSignal {
  /** Allocated at the first wait: a decode layer's or cache's own signal goes unused inside a stack. */
  private word: { readonly buffer: PinnedBuffer; readonly u32: Uint32Array } | undefined;
  private sequence = 0;
  private inFlight = false;

  /**
   * Returns once everything enqueued on `stream` so far has finished; CudaError if the stream
   * faulted (spinUntilWord asks the driver after 1 ms; cuStreamSynchronize after SPIN_MS).
   */
  wait(stream: Stream): void {
    if (this.word === undefined) {
      const buffer = new PinnedBuffer(4);
      const u32 = new Uint32Array(buffer.arrayBuffer);
      Atomics.store(u32, 0, 0);
      this.word = { buffer, u32 };
    }
    this.sequence = this.sequence === 0xffffffff ? 1 : this.sequence + 1; // never 0, the word's first value
    stream.writeValue32(this.word.buffer.ptr, this.sequence);
    if (!spinUntilWord(this.word.u32, 0, this.sequence, SPIN_MS, stream)) stream.synchronize();
  }

  /** Work was enqueued (a graph launch) that the next synchronize() should wait for by the signal. */
  launched(): void {
    this.inFlight = true;
  }

  /** The stream was synchronized some other way: nothing is in flight. */
  settled(): void {
    this.inFlight = false;
  }

  /**
   * Wait for `stream`: by the signal when work was launched() since the last wait, else by
   * cuStreamSynchronize (an idle or nearly idle stream, where the signal's round trip costs more).
   */
  synchronize(stream: Stream): void {
    if (this.inFlight) this.wait(stream);
    else stream.synchronize();
    this.inFlight = false;
  }

  dispose(): void {
    this.word?.buffer.dispose();
    this.word = undefined;
  }
}
