/**
 * A resident kernel (kernels/resident.cuh): launched once on a stream of its own, then driven
 * through a doorbell in pinned host memory — one request per ring, its completion seen by reading
 * pinned memory. A request costs neither a launch (cuGraphLaunch is 2.6–4.7 μs of host time from
 * Node, an empty graph ≈ 2.9 μs of device time) nor a driver call to wait: the host writes one
 * word and spins on another.
 *
 * The price: the launch's blocks occupy their multiprocessors (spinning) until stop(). Callers stop
 * it before other work on the same data, and when idle. One launch runs per process at a time:
 * starting one stops the other (two could hold every multiprocessor between them, and a grid that
 * is not resident at once cannot drain while another holds the rest), and so does every driver call
 * of this layer that may wait for all work of the context (src/cuda/resident-guard.ts).
 *
 * Block 0 polls the bell and relays it through device memory to the other blocks (kernels/resident.cuh).
 *
 * Memory ordering: the request's inputs are written to pinned memory with plain stores, then the
 * bell with Atomics.store (sequentially consistent: on x86 a locked store, so the inputs are visible
 * first); the kernel reads the bell with an acquire at system scope. The last block to finish a
 * request publishes `done` once every block's results are complete in device memory (for later
 * device work and copies) and any status flag raised is visible to the host (kernels/resident.cuh);
 * Atomics.load reads it (a plain typed-array read in a loop may be hoisted by the JIT).
 */
import { ConfigError, StateError } from '../errors.js';
import { LaunchArgs, type ArgKind, type ArgValues, type LaunchShape, launch } from './launch.js';
import { DeviceBuffer, type DeviceRange, PinnedBuffer, copies } from './memory.js';
import type { Kernel } from './module.js';
import { Owned } from './owned.js';
import { quiesceDevice, registerResidentStop } from './resident-guard.js';
import { spinUntilWord } from './spin.js';
import { Stream } from './stream.js';

/** kernels/resident.cuh: PQ_RESIDENT_STOP, PQ_RESIDENT_TICKET_MASK, PqResidentWords (three 64-byte lines; u32 indices). */
const STOP = 4;
const TICKET_MASK = 0x1fffffff;
const WORDS_BYTES = 192;
const BELL = 0;
const READY = 18;
const DONE = 34;
const SEEN_NS_BYTE = 64;
const DONE_NS_BYTE = 128;
/** No launch has reported ready (not a ticket: tickets are 29 bits). */
const NOT_READY = 0xffffffff;

/** No request in flight (tickets are 29 bits). */
const NONE = -1;

/**
 * Host-side timestamps of the last request (performance.now(), ms), for the select bench's
 * breakdown of a step's wall-clock time; recorded only while `enabled` (the bench turns it on for
 * a separate loop, so its timed steps pay nothing).
 */
export const residentTrace = { enabled: false, ringMs: 0, doneMs: 0 };

/** How long stop() waits for the launch to drain before it reports it as hung (ms). */
const DRAIN_MS = 10000;
/** The arguments a resident kernel takes after its own (resident.cuh). */
const PROTOCOL_ARGS = ['ptr', 'ptr', 'u32'] as const;

export interface ResidentTimeouts {
  /** How long start() waits for every block to be running (ms; default 2000). */
  readonly readyMs?: number;
  /** How long serve() waits for a request (ms; default 5000). */
  readonly requestMs?: number;
}

export class ResidentLaunch {
  readonly stream: Stream;
  private readonly owned = new Owned();
  private readonly words: PinnedBuffer;
  private readonly u32: Uint32Array;
  private readonly seenNs: BigInt64Array;
  private readonly doneNs: BigInt64Array;
  /** PqResidentCounters: arrivals at byte 0, relay at byte 128, in device memory. */
  private readonly counters: DeviceBuffer;
  /** For the stop word into the relay while the launch runs (its own stream is busy with it). */
  private readonly side: Stream;
  private readonly readyMs: number;
  private readonly requestMs: number;
  /** The last ticket served (or, before the first request, the one before the first). */
  private ticket = 0;
  /** The ticket rung and not yet waited for (NONE: no request in flight). */
  private inFlight = NONE;
  private running = false;

  constructor(timeouts: ResidentTimeouts = {}) {
    this.readyMs = positiveMs('readyMs', timeouts.readyMs ?? 2000);
    this.requestMs = positiveMs('requestMs', timeouts.requestMs ?? 5000);
    try {
      this.stream = this.owned.add(new Stream());
      this.words = this.owned.add(new PinnedBuffer(WORDS_BYTES));
      this.u32 = new Uint32Array(this.words.arrayBuffer, 0, WORDS_BYTES / 4);
      this.seenNs = new BigInt64Array(this.words.arrayBuffer, SEEN_NS_BYTE, 1);
      this.doneNs = new BigInt64Array(this.words.arrayBuffer, DONE_NS_BYTE, 1);
      this.counters = this.owned.add(new DeviceBuffer(256));
      this.side = this.owned.add(new Stream());
    } catch (e) {
      this.owned.dispose();
      throw e;
    }
  }

  /** A launch is running and serving requests. */
  get active(): boolean {
    return this.running;
  }

  /**
   * Launch `kernel` with its own arguments (`kinds`, `values`), the protocol's appended, and wait
   * until every block has started. Throws StateError when they cannot all be resident at once
   * (after stopping the launch, so no block is left spinning).
   */
  start<Kinds extends readonly ArgKind[]>(kernel: Kernel, shape: LaunchShape, kinds: Kinds, values: ArgValues<Kinds>): void {
    if (this.running) throw new StateError('ResidentLaunch.start', 'no launch running (stop() first)', 'one running');
    quiesceDevice(); // another running launch
    const first = (this.ticket + 1) & TICKET_MASK;
    const bell = (this.ticket << 3) >>> 0; // the ticket before the first: no request yet
    copies.fill32Async(this.counters, 0, 1, this.stream);
    copies.fill32Async(this.relay, bell, 1, this.stream);
    Atomics.store(this.u32, READY, NOT_READY);
    Atomics.store(this.u32, DONE, this.ticket);
    Atomics.store(this.u32, BELL, bell);
    const args = new LaunchArgs<readonly ArgKind[]>([...kinds, ...PROTOCOL_ARGS]);
    try {
      args.setAll([...(values as readonly (number | bigint)[]), this.words.ptr, this.counters.ptr, first]);
      launch(kernel, shape, args, this.stream);
    } finally {
      args.dispose(); // the driver copied the arguments at launch
    }
    this.running = true;
    registerResidentStop(() => this.stop());
    if (!this.spinUntil(READY, first, this.readyMs)) {
      const [gx, gy, gz] = shape.grid;
      this.stop();
      throw new StateError(`resident ${kernel.name}`, `all ${gx * gy * gz} blocks running at once within ${this.readyMs} ms`, 'fewer (the device is busy or too small for this grid)');
    }
  }

  /**
   * Serve one request: ring with the request's flag bits (0 … 3) and wait for it. The request's
   * inputs must be in place (pinned memory written before this call).
   */
  serve(flags: number): void {
    this.ring(flags);
    this.wait();
  }

  /**
   * Ring for one request (flag bits 0 … 3) without waiting: the caller does host work while the
   * kernel serves it, then wait(). Its inputs must be in place. Nothing that may stop the launch
   * (driver calls of src/cuda that wait for all work) belongs between the two.
   */
  ring(flags: number): void {
    if (!this.running) throw new StateError('ResidentLaunch.ring', 'a running launch (start() first)', 'none');
    if (this.inFlight !== NONE) throw new StateError('ResidentLaunch.ring', 'the previous request waited for (wait())', `ticket ${this.inFlight} in flight`);
    const t = (this.ticket + 1) & TICKET_MASK;
    if (residentTrace.enabled) residentTrace.ringMs = performance.now();
    Atomics.store(this.u32, BELL, ((t << 3) | (flags & 3)) >>> 0);
    this.inFlight = t;
  }

  /** Wait for the request ring() sent (StateError when it does not complete within requestMs). */
  wait(): void {
    const t = this.inFlight;
    if (t === NONE) throw new StateError('ResidentLaunch.wait', 'a request in flight (ring() first)', 'none');
    if (!this.spinUntil(DONE, t, this.requestMs)) {
      // Stopping cannot complete while blocks still serve the request; leave the launch marked
      // running so dispose() waits for the stream (and reports a fault, if that is what happened).
      throw new StateError('resident request', `completion within ${this.requestMs} ms`, 'none (the kernel is hung or was stopped)');
    }
    if (residentTrace.enabled) residentTrace.doneMs = performance.now();
    this.ticket = t;
    this.inFlight = NONE;
  }

  /** Device time of the last request (ns): from block (0, 0) seeing the ring to the last block publishing `done`. */
  get lastDeviceNs(): number {
    return Number(this.doneNs[0] - this.seenNs[0]);
  }

  /** Global-timer stamps of the last request (ns): block (0, 0) seeing the ring, and `done` published. */
  get lastRequestStamps(): { readonly seenNs: bigint; readonly doneNs: bigint } {
    return { seenNs: this.seenNs[0], doneNs: this.doneNs[0] };
  }

  /** Ring STOP and wait for the launch to end (a fault in it throws CudaError here). */
  stop(): void {
    if (!this.running) return;
    // A request rung but not waited for is served first (a STOP over its ring would drop it).
    if (this.inFlight !== NONE && this.spinUntil(DONE, this.inFlight, this.requestMs)) this.ticket = this.inFlight;
    this.inFlight = NONE;
    this.running = false;
    registerResidentStop(undefined); // this was the registered one: one runs at a time
    const word = (((this.ticket & TICKET_MASK) << 3) | STOP) >>> 0;
    Atomics.store(this.u32, BELL, word);
    // Also into the relay: blocks that started after block 0 ended (a grid that was never resident
    // at once) would otherwise wait for a relay no one writes.
    copies.fill32Async(this.relay, word, 1, this.side);
    this.side.synchronize();
    // Bounded: blocks that never started wait for multiprocessors that other work may hold.
    const start = performance.now();
    while (!this.stream.isIdle()) {
      if (performance.now() - start > DRAIN_MS) {
        throw new StateError('resident stop', `the launch drained within ${DRAIN_MS} ms`, 'blocks still waiting (other work holds the multiprocessors they need)');
      }
    }
  }

  private get relay(): DeviceRange {
    return { ptr: this.counters.ptr + 128n, bytes: 4 };
  }

  dispose(): void {
    try {
      this.stop();
    } finally {
      this.owned.dispose();
    }
  }

  /** Spin until u32[index] == value; false after `ms` or once the launch ended (CudaError on a fault). */
  private spinUntil(index: number, value: number, ms: number): boolean {
    return spinUntilWord(this.u32, index, value, ms, this.stream);
  }

}

/** `ms` when it is a positive, finite number of milliseconds; ConfigError naming `argument` otherwise. */
export function positiveMs(argument: string, ms: number): number {
  if (!(ms > 0) || !Number.isFinite(ms)) throw new ConfigError(argument, 'a positive number of milliseconds', ms);
  return ms;
}
