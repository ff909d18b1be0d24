// One-kernel graphs of the runtime family's empty kernels (kernels/runtime.cu), timed by CUDA events
// with the stream kept busy ahead (as the select bench's GPU column): the device's floor under any
// one-step graph. Shared by the diagnostics carveout-ab.mjs and cluster-launch-floor.mjs.
import { join } from 'node:path';

/**
 * Median μs by events of each case's graph and of the events alone, the cases alternating over
 * `rounds` (a drift of the device's clocks reads on all of them alike). A case: [label, kernel name,
 * launch shape, LaunchArgs (or none)]. `app` is the built library's src/ folder.
 */
export async function emptyGraphFloors(app, cases, { iters = 3000, warmup = 300, rounds = 3 } = {}) {
  const { CudaContext } = await import(join(app, 'cuda/context.js'));
  const { loadKernels } = await import(join(app, 'pq/kernels.js'));
  const { GraphExec } = await import(join(app, 'cuda/graph.js'));
  const { LaunchArgs, launch } = await import(join(app, 'cuda/launch.js'));
  const { Stream } = await import(join(app, 'cuda/stream.js'));
  const { BusyQueue, eventTimes } = await import(join(app, 'bench/busy-queue.js'));
  const { summarize } = await import(join(app, 'bench/stats.js'));
  CudaContext.primary(); // current on this thread before the module loads
  const mod = loadKernels('runtime');
  const stream = new Stream();
  const none = new LaunchArgs([]);
  const busy = new BusyQueue();
  const graphs = cases.map(([label, name, shape, args]) => {
    const k = mod.kernel(name);
    return { label, g: GraphExec.capture(stream, () => launch(k, shape, args ?? none, stream)), times: [] };
  });
  const alone = [];
  try {
    for (let r = 0; r < rounds; r++) {
      alone.push(...eventTimes(stream, iters, () => {}, busy).slice(warmup));
      for (const c of graphs) c.times.push(...eventTimes(stream, iters, () => c.g.launch(stream), busy).slice(warmup));
    }
  } finally {
    for (const c of graphs) c.g.dispose();
    busy.dispose();
    none.dispose();
    stream.dispose();
  }
  const us = (xs) => Math.round(summarize(xs).median * 1000) / 1000;
  return Object.fromEntries([['events alone', us(alone)], ...graphs.map((c) => [c.label, us(c.times)])]);
}
