/**
 * Steps started by a doorbell. A chain is one CUDA graph of `length` × [wait until its doorbell word
 * (pinned host memory) reaches i, step i's work, write its done word = i]. The host rings a step with
 * one store and sees it complete by reading `done`, so no driver call sits between call and result:
 * a graph step pays cuGraphLaunch (≈ 2 μs of host time before the GPU starts) and
 * cuStreamSynchronize (the driver reports completion ≈ 2.5 μs after the last store). Nothing holds a
 * multiprocessor between steps, unlike a resident kernel (resident.ts).
 *
 * A chain's own cuGraphLaunch costs ≈ 3.7 μs of host time per step (238 μs for 64 on the H100), so
 * two chains alternate, each launched behind the other by a worker thread (ChainLauncher) while the
 * other is rung: the stepping thread makes no driver call. Seed config on the H100: 12.8 μs mean wall
 * against 17.8 for graph steps (bench/NOTES.md, session 39). The device pays for it: the wait and
 * write nodes cost ≈ 2.3–2.7 μs each there, so a chained step takes 12.4 μs of device time back to
 * back against 9.0 for a graph step (session 51, scripts/chain-node-costs.mjs).
 *
 * From the first ring on, the stream always has a chain waiting for its doorbell: nothing else may be
 * enqueued on it, and driver calls that may wait for the whole device drain the chains first
 * (resident-guard.ts). Draining makes the steps not yet rung no-ops (the owner's `skip`), rings both
 * chains to their ends, waits for them, and lets the owner `restore` what skip changed.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { ConfigError, StateError } from '../errors.js';
import { type Handle, check, driverLibraryPath } from './driver.js';
import { GraphExec } from './graph.js';
import { PinnedBuffer } from './memory.js';
import { registerWaitingChain } from './resident-guard.js';
import { spinUntilWord } from './spin.js';
import type { Stream } from './stream.js';

/** Chain k's doorbell at word 64k, its done at word 64k + 32 (128-byte lines of their own). */
const BELL = 0;
const DONE = 32;
const WORDS_BYTES = 512;

export interface StepChainHooks {
  /** Make the steps not yet rung no-ops (draining rings them all next). The stream is waiting: use another. */
  skip(): void;
  /** After a drain: undo what skip() changed (the chains' stream is free again). */
  restore(): void;
}

export class StepChain {
  readonly length: number;
  private readonly stream: Stream;
  private readonly hooks: StepChainHooks;
  private readonly requestMs: number;
  private readonly words: PinnedBuffer;
  private readonly u32: Uint32Array;
  private readonly launcher: ChainLauncher;
  private graphs: [GraphExec, GraphExec] | undefined;
  /** The chain being rung, and its steps rung. */
  private current = 0;
  private rung = 0;
  /** Whether the other chain was launched behind the current one (by the launcher). */
  private nextLaunched = false;
  /** Set while a chain waits for its doorbell: how to unregister the drain. */
  private unregister: (() => void) | undefined;

  constructor(context: Handle, stream: Stream, length: number, hooks: StepChainHooks, requestMs: number) {
    this.stream = stream;
    this.length = length;
    this.hooks = hooks;
    this.requestMs = requestMs;
    this.words = new PinnedBuffer(WORDS_BYTES);
    this.u32 = new Uint32Array(this.words.arrayBuffer, 0, WORDS_BYTES / 4);
    try {
      this.launcher = new ChainLauncher(context, requestMs);
    } catch (e) {
      this.words.dispose();
      throw e;
    }
  }

  /** A chain waits for its doorbell (the stream holds it until drained). */
  get waiting(): boolean {
    return this.unregister !== undefined;
  }

  /** The next ring starts a chain (the current one is rung to its end): the one launched behind it. */
  get atChainStart(): boolean {
    return this.waiting && this.rung === this.length;
  }

  /**
   * Capture both chains: `enqueueStep()` enqueues one step on the stream, called 2·length times (the
   * first chain's steps, then the second's: the same steps, as `length` is even). Not while waiting.
   */
  capture(enqueueStep: () => void): void {
    if (this.waiting) throw new StateError('StepChain.capture', 'no chain waiting for its doorbell', 'one waiting');
    this.graphs?.forEach((g) => g.dispose());
    this.graphs = undefined;
    const first = this.captureOne(0, enqueueStep);
    try {
      this.graphs = [first, this.captureOne(1, enqueueStep)];
    } catch (e) {
      first.dispose();
      throw e;
    }
  }

  /**
   * Ring the next step (launching a chain first when none waits); wait() for it before the next ring.
   * `count` > 1 rings that many steps of one chain at once (a benchmark's back-to-back steps): they
   * must fit in what is left of the current chain, or of the next one when the current one is rung
   * to its end.
   */
  ring(count = 1): void {
    const graphs = this.graphs;
    if (graphs === undefined) throw new StateError('StepChain.ring', 'captured chains', 'none');
    const left = this.waiting && this.rung < this.length ? this.length - this.rung : this.length;
    if (!Number.isInteger(count) || count < 1 || count > left) throw new ConfigError('count', `an integer in [1, ${left}] (the steps left in the chain)`, count);
    if (!this.waiting) {
      this.current = 0;
      this.resetWords(0);
      graphs[0].launch(this.stream);
      this.rung = 0;
      this.nextLaunched = false;
      this.unregister = registerWaitingChain(() => this.drain());
    } else if (this.rung === this.length) {
      this.launcher.awaitIdle(); // the chain launched behind this one is enqueued
      this.current ^= 1;
      this.rung = 0;
      this.nextLaunched = false;
    }
    const first = this.rung === 0;
    this.rung += count;
    Atomics.store(this.u32, 64 * this.current + BELL, this.rung);
    if (first) {
      // The other chain's last launch is complete (its last done was seen): launch it again behind this one.
      const other = this.current ^ 1;
      this.resetWords(other);
      this.launcher.launch(graphs[other], this.stream);
      this.nextLaunched = true;
    }
  }

  /** Wait until the step last rung completed (StateError after requestMs; CudaError if the stream faulted). */
  wait(): void {
    this.spinUntil(this.current, this.rung);
  }

  /** End the waiting chains: skip the steps not yet rung, ring both chains to their ends, wait, restore. */
  drain(): void {
    if (!this.waiting) return;
    this.unregister?.();
    this.unregister = undefined;
    this.launcher.awaitIdle(); // every launch is enqueued before the steps are rung
    this.hooks.skip();
    Atomics.store(this.u32, 64 * this.current + BELL, this.length);
    this.spinUntil(this.current, this.length);
    if (this.nextLaunched) {
      const other = this.current ^ 1;
      Atomics.store(this.u32, 64 * other + BELL, this.length);
      this.spinUntil(other, this.length);
    }
    this.nextLaunched = false;
    this.rung = this.length;
    this.hooks.restore();
  }

  dispose(): void {
    try {
      this.drain();
    } finally {
      this.launcher.dispose();
      this.graphs?.forEach((g) => g.dispose());
      this.graphs = undefined;
      this.words.dispose();
    }
  }

  private captureOne(k: number, enqueueStep: () => void): GraphExec {
    const bell = this.words.ptr + BigInt(4 * (64 * k + BELL));
    const done = this.words.ptr + BigInt(4 * (64 * k + DONE));
    return GraphExec.capture(this.stream, () => {
      for (let i = 1; i <= this.length; i++) {
        this.stream.waitValue32(bell, i);
        enqueueStep();
        this.stream.writeValue32(done, i); // with a memory barrier: the step's writes are visible before `done` is
      }
    });
  }

  private resetWords(k: number): void {
    Atomics.store(this.u32, 64 * k + BELL, 0);
    Atomics.store(this.u32, 64 * k + DONE, 0);
  }

  private spinUntil(k: number, value: number): void {
    const at = 64 * k + DONE;
    if (!spinUntilWord(this.u32, at, value, this.requestMs, this.stream)) {
      throw new StateError('StepChain.wait', `step ${value} of chain ${k} done within ${this.requestMs} ms`, `done = ${Atomics.load(this.u32, at)}`);
    }
  }

}

// The launcher's shared words: [0] command (0 idle, 1 launch, 2 quit), [1] the last driver result,
// [2] ready (the context is current on the worker's thread); then the graph and stream handles.
const CMD = 0;
const RC = 1;
const READY = 2;
const LAUNCHER_WORKER = `
const { workerData } = require('node:worker_threads');
const koffi = require(workerData.koffiPath);
const lib = koffi.load(workerData.libcuda);
const setCurrent = lib.func('int cuCtxSetCurrent(void *ctx)');
const graphLaunch = lib.func('int cuGraphLaunch(void *exec, void *stream)');
const words = new Int32Array(workerData.shared, 0, 4);
const handles = new BigInt64Array(workerData.shared, 16, 2);
Atomics.store(words, ${RC}, setCurrent(workerData.context));
Atomics.store(words, ${READY}, 1);
for (;;) {
  Atomics.wait(words, ${CMD}, 0);
  if (Atomics.load(words, ${CMD}) === 2) break;
  Atomics.store(words, ${RC}, graphLaunch(handles[0], handles[1]));
  Atomics.store(words, ${CMD}, 0);
}`;

/**
 * cuGraphLaunch on a worker thread holding the context: the chains' launches (≈ 240 μs of host time
 * each for 64 steps) run while the stepping thread rings the other chain.
 */
class ChainLauncher {
  private readonly worker: Worker;
  private readonly words: Int32Array;
  private readonly handles: BigInt64Array;
  private readonly requestMs: number;
  private failure: Error | undefined;

  constructor(context: Handle, requestMs: number) {
    const shared = new SharedArrayBuffer(32);
    this.words = new Int32Array(shared, 0, 4);
    this.handles = new BigInt64Array(shared, 16, 2);
    this.requestMs = requestMs;
    const koffiPath = createRequire(import.meta.url).resolve('koffi');
    this.worker = new Worker(LAUNCHER_WORKER, { eval: true, workerData: { koffiPath, libcuda: driverLibraryPath(), context, shared } });
    this.worker.on('error', (e) => (this.failure = e));
    this.worker.unref(); // a cache left undisposed does not keep the process alive
  }

  /** Launch `graph` on `stream` from the worker (after its previous launch); returns at once. */
  launch(graph: GraphExec, stream: Stream): void {
    this.awaitIdle();
    this.handles[0] = graph.handle;
    this.handles[1] = stream.handle;
    Atomics.store(this.words, CMD, 1);
    Atomics.notify(this.words, CMD);
  }

  /** Wait until the worker is ready and its last launch returned; CudaError if that launch failed. */
  awaitIdle(): void {
    const w = this.words;
    if (Atomics.load(w, CMD) !== 0 || Atomics.load(w, READY) !== 1) {
      const start = performance.now();
      while (Atomics.load(w, CMD) !== 0 || Atomics.load(w, READY) !== 1) {
        if (this.failure !== undefined) throw new StateError('StepChain launcher', 'a running worker thread', this.failure.message);
        if (performance.now() - start > this.requestMs) throw new StateError('StepChain launcher', `idle within ${this.requestMs} ms`, 'busy');
      }
    }
    const rc = Atomics.load(w, RC);
    if (rc !== 0) {
      Atomics.store(w, RC, 0);
      check('cuGraphLaunch (chain launcher thread)', rc);
    }
  }

  dispose(): void {
    Atomics.store(this.words, CMD, 2);
    Atomics.notify(this.words, CMD);
    void this.worker.terminate();
  }
}
