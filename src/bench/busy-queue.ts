/**
 * Device time without the host's share: CUDA events recorded around a call on an idle stream also
 * time the host (the first event completes at once; the GPU then waits for the launch the host is
 * still preparing). A spinning kernel enqueued first keeps the stream busy until everything behind
 * it has been submitted, so the events time the device alone: its command processing, the kernels,
 * their drain. Benchmarks report this as GPU time (bench/NOTES.md, session 9).
 */
import { LaunchArgs, launch } from '../cuda/launch.js';
import type { Kernel } from '../cuda/module.js';
import { Event, type Stream } from '../cuda/stream.js';
import { loadKernels } from '../pq/kernels.js';

/** Long enough for a step's host path (median ≈ 3–8 μs) and most of its tail. */
export const BUSY_QUEUE_NS = 50_000;

export class BusyQueue {
  private readonly kernel: Kernel;
  private readonly args: LaunchArgs<readonly ['u64']>;

  constructor(readonly ns: number = BUSY_QUEUE_NS) {
    this.kernel = loadKernels('runtime').kernel('pq_spin_ns');
    this.args = new LaunchArgs(['u64'] as const).set(0, BigInt(ns));
  }

  /** Enqueue the spin on `stream`: work enqueued next starts after ≈ `ns`. */
  fill(stream: Stream): void {
    launch(this.kernel, { grid: [1, 1, 1], block: [1, 1, 1] }, this.args, stream);
  }

  dispose(): void {
    this.args.dispose();
  }
}

/**
 * CUDA-event time (μs) of `call(i)` on `stream` for i < `iters`, one sample per call. With `busy`,
 * the stream is kept busy ahead of each call (the device alone); without, the events run on an idle
 * stream and also time the host's enqueue.
 */
export function eventTimes(stream: Stream, iters: number, call: (i: number) => void, busy?: BusyQueue): number[] {
  const e0 = new Event();
  const e1 = new Event();
  try {
    const out: number[] = [];
    for (let i = 0; i < iters; i++) {
      busy?.fill(stream);
      e0.record(stream);
      call(i);
      e1.record(stream);
      e1.synchronize();
      out.push(e1.elapsedSince(e0) * 1000);
    }
    return out;
  } finally {
    e0.dispose();
    e1.dispose();
  }
}
