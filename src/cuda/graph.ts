/**
 * CUDA graphs by stream capture: record what a function enqueues on a stream once, then replay
 * it with one cuGraphLaunch. When shapes change, capture again (the old graph is destroyed).
 */
import { DisposedError } from '../errors.js';
import { type DevicePtr, type Handle, check, driver, outHandle } from './driver.js';
import type { Stream } from './stream.js';

const CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;

export class GraphExec {
  private exec: Handle | undefined;
  private graph: Handle | undefined;

  private constructor(graph: Handle, exec: Handle) {
    this.graph = graph;
    this.exec = exec;
  }

  /** Capture everything `enqueue` puts on `stream` into an instantiated graph. */
  static capture(stream: Stream, enqueue: () => void): GraphExec {
    const d = driver();
    check('cuStreamBeginCapture_v2', d.cuStreamBeginCapture_v2(stream.handle, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    try {
      enqueue();
    } catch (e) {
      // End the capture so the stream is usable again, and drop the partial graph.
      const slot: [Handle | null] = [null];
      d.cuStreamEndCapture(stream.handle, slot);
      if (slot[0] !== null) d.cuGraphDestroy(slot[0]);
      throw e;
    }
    const graph = outHandle('cuStreamEndCapture', (s) => d.cuStreamEndCapture(stream.handle, s));
    let exec: Handle;
    try {
      exec = outHandle('cuGraphInstantiateWithFlags', (s) => d.cuGraphInstantiateWithFlags(s, graph, 0));
    } catch (e) {
      d.cuGraphDestroy(graph);
      throw e;
    }
    check('cuGraphUpload', d.cuGraphUpload(exec, stream.handle));
    return new GraphExec(graph, exec);
  }

  get handle(): Handle {
    if (this.exec === undefined) throw new DisposedError('GraphExec');
    return this.exec;
  }

  launch(stream: Stream): void {
    const rc = driver().cuGraphLaunch(this.handle, stream.handle);
    if (rc !== 0) check('cuGraphLaunch', rc);
  }

  dispose(): void {
    if (this.exec === undefined) return;
    const d = driver();
    const exec = this.exec;
    const graph = this.graph;
    this.exec = undefined;
    this.graph = undefined;
    check('cuGraphExecDestroy', d.cuGraphExecDestroy(exec));
    if (graph !== undefined) check('cuGraphDestroy', d.cuGraphDestroy(graph));
  }
}

/**
 * Captured graphs by key: a signature (the launch plan, dtypes, flags) and the device pointers the
 * kernels were captured with. Capture on first use, replay after. Pointers are compared as they
 * are (no string conversion: this lookup sits on every decode step). With a limit, reaching it
 * drops every graph first (bindings rarely change, so a full cache means the caller is cycling
 * through inputs and old graphs are unlikely to come back).
 */
export class GraphCache {
  private readonly graphs = new Map<string, { readonly pointers: readonly DevicePtr[]; readonly graph: GraphExec }[]>();
  private count = 0;

  constructor(private readonly limit = Infinity) {}

  /** The graph for (`signature`, `pointers`), captured from `enqueue` on `stream` if there is none yet. */
  get(signature: string, pointers: readonly DevicePtr[], stream: Stream, enqueue: () => void): GraphExec {
    return this.find(signature, pointers) ?? this.capture(signature, pointers, stream, enqueue);
  }

  /** The graph held for (`signature`, `pointers`), if any (decode steps: no capture callback made per step). */
  find(signature: string, pointers: readonly DevicePtr[]): GraphExec | undefined {
    const bound = this.graphs.get(signature);
    if (bound !== undefined) {
      for (const entry of bound) if (sameElements(entry.pointers, pointers)) return entry.graph;
    }
    return undefined;
  }

  /** Capture what `enqueue` puts on `stream` as the graph for (`signature`, `pointers`) (none held yet: find()). */
  capture(signature: string, pointers: readonly DevicePtr[], stream: Stream, enqueue: () => void): GraphExec {
    if (this.count >= this.limit) this.clear();
    const graph = GraphExec.capture(stream, enqueue);
    const entry = { pointers: [...pointers], graph };
    const list = this.graphs.get(signature);
    if (list === undefined) this.graphs.set(signature, [entry]);
    else list.push(entry);
    this.count += 1;
    return graph;
  }

  /** How many graphs are held. */
  get size(): number {
    return this.count;
  }

  /** Destroy every graph (their plan, dtype or buffers changed). */
  clear(): void {
    for (const list of this.graphs.values()) for (const e of list) e.graph.dispose();
    this.graphs.clear();
    this.count = 0;
  }

  /** Free every graph (the cache stays usable). */
  dispose(): void {
    this.clear();
  }
}

/** Equal lengths and elements (===): graph-key pointers, tensor shapes and strides. */
export function sameElements<T>(a: readonly T[], b: readonly T[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
