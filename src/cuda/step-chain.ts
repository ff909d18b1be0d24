/**
 * A chain of steps started by a doorbell: one CUDA graph of `length` × [wait until the doorbell word
 * (pinned host memory) reaches i, step i's work, write done = i], launched once per `length` steps.
 * The host rings a step with one store and sees it complete by reading `done`, so no driver call sits
 * between call and result: a graph step pays cuGraphLaunch (≈ 2 μs of host time before the GPU
 * starts) and cuStreamSynchronize (the driver reports completion ≈ 2.5 μs after the last store).
 * Between steps nothing holds a multiprocessor, unlike a resident kernel (resident.ts). Measured on the
 * seed config: 12.1 against 17.1 μs wall for graph steps (bench/NOTES.md, session 39).
 *
 * While a launch has steps left to ring, its stream waits for the doorbell: nothing else may be
 * enqueued on that stream, and driver calls that may wait for the whole device drain the chain first
 * (resident-guard.ts). Draining makes the remaining steps no-ops (the owner's `skip`), rings them all
 * and waits for the last; then the owner's `restore` undoes what `skip` changed.
 */
import { StateError } from '../errors.js';
import { check, driver } from './driver.js';
import { GraphExec } from './graph.js';
import { PinnedBuffer } from './memory.js';
import { registerWaitingChain } from './resident-guard.js';
import type { Stream } from './stream.js';

const CU_STREAM_WAIT_VALUE_GEQ = 0x0;
/** With a memory barrier: the step's writes are visible before `done` is. */
const CU_STREAM_WRITE_VALUE_DEFAULT = 0x0;
const BELL = 0;
const DONE = 32; // on its own 128-byte line
const WORDS_BYTES = 256;
/** Spins between clock reads while waiting (a clock read costs more than a spin). */
const SPINS_PER_CHECK = 1024;
/** A wait this long asks the driver whether the stream faulted (a driver call costs ≈ 1 μs). */
const FAULT_CHECK_AFTER_MS = 1;

export interface StepChainHooks {
  /** Make the steps not yet rung no-ops (draining rings them all next). The stream is waiting: use another. */
  skip(): void;
  /** After a drain: undo what skip() changed (the chain's stream is free again). */
  restore(): void;
}

export class StepChain {
  readonly length: number;
  private readonly stream: Stream;
  private readonly hooks: StepChainHooks;
  private readonly requestMs: number;
  private readonly words: PinnedBuffer;
  private readonly u32: Uint32Array;
  private graph: GraphExec | undefined;
  /** Steps rung in the current launch. */
  private rung = 0;
  /** Set while a launch has steps left to ring: how to unregister its drain. */
  private unregister: (() => void) | undefined;

  constructor(stream: Stream, length: number, hooks: StepChainHooks, requestMs: number) {
    this.stream = stream;
    this.length = length;
    this.hooks = hooks;
    this.requestMs = requestMs;
    this.words = new PinnedBuffer(WORDS_BYTES);
    this.u32 = new Uint32Array(this.words.arrayBuffer, 0, WORDS_BYTES / 4);
  }

  /** A launch has steps left to ring (its stream waits for the doorbell). */
  get waiting(): boolean {
    return this.unregister !== undefined;
  }

  get captured(): boolean {
    return this.graph !== undefined;
  }

  /** Capture the chain: `enqueueStep(i)` enqueues step i (0 … length − 1) on the stream. Not while waiting. */
  capture(enqueueStep: (i: number) => void): void {
    if (this.waiting) throw new StateError('StepChain.capture', 'no launch waiting for its doorbell', `${this.rung} of ${this.length} steps rung`);
    this.graph?.dispose();
    this.graph = undefined;
    const d = driver();
    const s = this.stream.handle;
    const bell = this.words.ptr + BigInt(BELL * 4);
    const done = this.words.ptr + BigInt(DONE * 4);
    this.graph = GraphExec.capture(this.stream, () => {
      for (let i = 0; i < this.length; i++) {
        check('cuStreamWaitValue32_v2', d.cuStreamWaitValue32_v2(s, bell, i + 1, CU_STREAM_WAIT_VALUE_GEQ));
        enqueueStep(i);
        check('cuStreamWriteValue32_v2', d.cuStreamWriteValue32_v2(s, done, i + 1, CU_STREAM_WRITE_VALUE_DEFAULT));
      }
    });
  }

  /** Ring the next step, launching the chain first when no launch waits; wait() for it before the next ring. */
  ring(): void {
    if (this.graph === undefined) throw new StateError('StepChain.ring', 'a captured chain', 'none');
    if (!this.waiting) {
      Atomics.store(this.u32, BELL, 0);
      Atomics.store(this.u32, DONE, 0);
      this.graph.launch(this.stream);
      this.rung = 0;
      this.unregister = registerWaitingChain(() => this.drain());
    }
    this.rung += 1;
    if (this.rung === this.length) this.release(); // the launch ends with this step
    Atomics.store(this.u32, BELL, this.rung);
  }

  /** Wait until the step last rung completed (StateError after requestMs; CudaError if the stream faulted). */
  wait(): void {
    this.spinUntil(this.rung);
  }

  /** End a launch that has steps left to ring: skip them, ring them all, wait for the last, restore. */
  drain(): void {
    if (!this.waiting) return;
    this.release();
    this.hooks.skip();
    Atomics.store(this.u32, BELL, this.length);
    this.spinUntil(this.length);
    this.rung = this.length;
    this.hooks.restore();
  }

  dispose(): void {
    this.drain();
    this.graph?.dispose();
    this.graph = undefined;
    this.words.dispose();
  }

  private release(): void {
    this.unregister?.();
    this.unregister = undefined;
  }

  private spinUntil(value: number): void {
    const u32 = this.u32;
    if (Atomics.load(u32, DONE) === value) return;
    const start = performance.now();
    for (;;) {
      for (let i = 0; i < SPINS_PER_CHECK; i++) if (Atomics.load(u32, DONE) === value) return;
      const waited = performance.now() - start;
      if (waited > FAULT_CHECK_AFTER_MS) this.stream.isIdle(); // throws CudaError if a step faulted
      if (waited > this.requestMs) {
        throw new StateError('StepChain.wait', `step ${value} done within ${this.requestMs} ms`, `done = ${Atomics.load(u32, DONE)}`);
      }
    }
  }
}
