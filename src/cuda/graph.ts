/**
 * CUDA graphs by stream capture: record what a function enqueues on a stream once, then replay
 * it with one cuGraphLaunch. When shapes change, capture again (the old graph is destroyed).
 */
import { DisposedError } from '../errors.js';
import { type Handle, check, driver, outHandle } from './driver.js';
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
 * Captured graphs by key (a launch plan and its input binding): capture on first use, replay after.
 * With a limit, reaching it drops every graph first (bindings rarely change, so a full cache means
 * the caller is cycling through inputs and old graphs are unlikely to come back).
 */
export class GraphCache {
  private readonly graphs = new Map<string, GraphExec>();

  constructor(private readonly limit = Infinity) {}

  /** The graph for `key`, captured from `enqueue` on `stream` if there is none yet. */
  get(key: string, stream: Stream, enqueue: () => void): GraphExec {
    let graph = this.graphs.get(key);
    if (graph === undefined) {
      if (this.graphs.size >= this.limit) this.clear();
      graph = GraphExec.capture(stream, enqueue);
      this.graphs.set(key, graph);
    }
    return graph;
  }

  /** Destroy every graph (their plan, dtype or buffers changed). */
  clear(): void {
    for (const g of this.graphs.values()) g.dispose();
    this.graphs.clear();
  }
  /** Free every graph (the cache stays usable). */
  dispose(): void {
    this.clear();
  }

}
