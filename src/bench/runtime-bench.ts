/**
 * Runtime-layer measurements (SPEC §5 anchors): empty-kernel launch + sync round trip, a graph
 * of 4 empty kernels launch + sync, host cost of cuLaunchKernel, and device memory bandwidth
 * (copy kernel, fill kernel, memset) and pinned host⇄device copies.
 */
import { BusyQueue, eventTimes } from './busy-queue.js';
import { CudaContext } from '../cuda/context.js';
import { GraphExec } from '../cuda/graph.js';
import { LaunchArgs, launch } from '../cuda/launch.js';
import { DeviceBuffer, PinnedBuffer, copies } from '../cuda/memory.js';
import { ResidentLaunch } from '../cuda/resident.js';
import { CompletionSignal } from '../cuda/signal.js';
import { Event, Stream } from '../cuda/stream.js';
import { loadKernels } from '../pq/kernels.js';
import { type RecordRow, latencyFields, latencyRow as recordRow } from './record.js';
import { nowUs, round3, summarize } from './stats.js';

export interface RuntimeBenchOptions {
  readonly iters: number;
  readonly bandwidthBytes: number;
}

function latencyRow(impl: string, what: string, samples: number[], extra: Record<string, unknown> = {}, gpuSamples?: number[]): RecordRow {
  return recordRow(impl, { what }, summarize(samples), extra, gpuSamples && summarize(gpuSamples));
}

/** Device-to-device copy bandwidth in GB/s (bytes read + written), by a 16-byte copy kernel. */
export function measureCopyBandwidth(stream: Stream, bytes: number, reps = 10): number {
  const mod = loadKernels('runtime');
  const copy = mod.kernel('pq_copy_u4');
  const src = new DeviceBuffer(bytes);
  const dst = new DeviceBuffer(bytes);
  const args = new LaunchArgs(['ptr', 'ptr', 'u64'] as const).setAll([src.ptr, dst.ptr, BigInt(bytes / 16)]);
  const e0 = new Event();
  const e1 = new Event();
  try {
    copies.fill32Async(src, 0x3f800000, bytes / 4, stream);
    const sms = CudaContext.primary().device.multiprocessorCount;
    const shape = { grid: [sms * 8, 1, 1] as const, block: [256, 1, 1] as const };
    launch(copy, shape, args, stream);
    const times: number[] = [];
    for (let i = 0; i < reps; i++) {
      e0.record(stream);
      launch(copy, shape, args, stream);
      e1.record(stream);
      e1.synchronize();
      times.push(e1.elapsedSince(e0) / 1000);
    }
    return (2 * bytes) / summarize(times).median / 1e9;
  } finally {
    e0.dispose();
    e1.dispose();
    args.dispose();
    src.dispose();
    dst.dispose();
  }
}

export function benchRuntime(o: RuntimeBenchOptions): RecordRow[] {
  const ctx = CudaContext.primary();
  const mod = loadKernels('runtime');
  const empty = mod.kernel('pq_empty');
  const fill = mod.kernel('pq_fill_u32');
  const stream = new Stream();
  const noArgs = new LaunchArgs([] as const);
  const one = { grid: [1, 1, 1] as const, block: [1, 1, 1] as const };
  const rows: RecordRow[] = [];
  try {
    for (let i = 0; i < 200; i++) {
      launch(empty, one, noArgs, stream);
      stream.synchronize();
    }
    const rt: number[] = [];
    for (let i = 0; i < o.iters; i++) {
      const t0 = nowUs();
      launch(empty, one, noArgs, stream);
      stream.synchronize();
      rt.push(nowUs() - t0);
    }
    rows.push(latencyRow('pqcache-cuda', 'empty kernel launch + sync', rt, { spec_anchor_us: 8.4 }));

    const graph = GraphExec.capture(stream, () => {
      for (let i = 0; i < 4; i++) launch(empty, one, noArgs, stream);
    });
    try {
      for (let i = 0; i < 200; i++) {
        graph.launch(stream);
        stream.synchronize();
      }
      const gt: number[] = [];
      for (let i = 0; i < o.iters; i++) {
        const t0 = nowUs();
        graph.launch(stream);
        stream.synchronize();
        gt.push(nowUs() - t0);
      }
      rows.push(latencyRow('pqcache-cuda', 'graph of 4 empty kernels launch + sync', gt, { spec_anchor_us: 7.9 }));
    } finally {
      graph.dispose();
    }

    // The floor under any one-kernel step graph: what CUDA events read around an empty kernel.
    const single = GraphExec.capture(stream, () => launch(empty, one, noArgs, stream));
    const ev0 = new Event();
    const ev1 = new Event();
    try {
      const wall: number[] = [];
      const gpu: number[] = [];
      for (let i = 0; i < 200 + o.iters; i++) {
        const t0 = nowUs();
        ev0.record(stream);
        single.launch(stream);
        ev1.record(stream);
        stream.synchronize();
        if (i < 200) continue;
        wall.push(nowUs() - t0);
        gpu.push(ev1.elapsedSince(ev0) * 1000);
      }
      rows.push(latencyRow('pqcache-cuda', 'graph of 1 empty kernel between events, launch + sync', wall, {}, gpu));
      // The same graph with the stream kept busy ahead (busy-queue.ts): the device's share alone.
      const busy = new BusyQueue();
      let device: number[];
      try {
        device = eventTimes(stream, 200 + o.iters, () => single.launch(stream), busy).slice(200);
      } finally {
        busy.dispose();
      }
      const d = summarize(device);
      rows.push({ impl: 'pqcache-cuda', config: { what: 'graph of 1 empty kernel between events, stream kept busy ahead' }, gpu_us: latencyFields(d) });
    } finally {
      single.dispose();
      ev0.dispose();
      ev1.dispose();
    }

    rows.push(...residentFloors(o.iters, stream));

    const batch = 1000;
    const lt: number[] = [];
    for (let r = 0; r < 30; r++) {
      const t0 = nowUs();
      for (let i = 0; i < batch; i++) launch(empty, one, noArgs, stream);
      lt.push((nowUs() - t0) / batch);
      stream.synchronize();
    }
    rows.push(latencyRow('pqcache-cuda', 'cuLaunchKernel host cost per launch', lt, { spec_anchor_us: 3.4 }));

    const bytes = o.bandwidthBytes;
    const copyGBs = measureCopyBandwidth(stream, bytes);
    rows.push({ impl: 'pqcache-cuda', config: { what: 'device copy kernel (16 B/thread)', bytes }, extra: { GBs_read_plus_write: round3(copyGBs) } });

    const buf = new DeviceBuffer(bytes);
    const e0 = new Event();
    const e1 = new Event();
    const fillArgs = new LaunchArgs(['ptr', 'u32', 'u64'] as const).setAll([buf.ptr, 0x12345678, BigInt(bytes / 4)]);
    try {
      const timeIt = (f: () => void): number => {
        f();
        const ts: number[] = [];
        for (let i = 0; i < 10; i++) {
          e0.record(stream);
          f();
          e1.record(stream);
          e1.synchronize();
          ts.push(e1.elapsedSince(e0) / 1000);
        }
        return summarize(ts).median;
      };
      const sms = ctx.device.multiprocessorCount;
      const fillS = timeIt(() => launch(fill, { grid: [sms * 8, 1, 1], block: [256, 1, 1] }, fillArgs, stream));
      rows.push({ impl: 'pqcache-cuda', config: { what: 'fill kernel (device write)', bytes }, extra: { GBs_write: round3(bytes / fillS / 1e9), spec_anchor_TBs: 3.1 } });
      const memsetS = timeIt(() => copies.fill32Async(buf, 7, bytes / 4, stream));
      rows.push({ impl: 'pqcache-cuda', config: { what: 'cuMemsetD32Async', bytes }, extra: { GBs_write: round3(bytes / memsetS / 1e9) } });
      const hostBytes = Math.min(bytes, 256 << 20);
      const pinned = new PinnedBuffer(hostBytes);
      try {
        const h2d = timeIt(() => pinned.copyToDeviceAsync(buf, hostBytes, stream));
        const d2h = timeIt(() => pinned.copyFromDeviceAsync(buf, hostBytes, stream));
        rows.push({ impl: 'pqcache-cuda', config: { what: 'pinned host to device copy', bytes: hostBytes }, extra: { GBs: round3(hostBytes / h2d / 1e9) } });
        rows.push({ impl: 'pqcache-cuda', config: { what: 'device to pinned host copy', bytes: hostBytes }, extra: { GBs: round3(hostBytes / d2h / 1e9) } });
      } finally {
        pinned.dispose();
      }
    } finally {
      fillArgs.dispose();
      e0.dispose();
      e1.dispose();
      buf.dispose();
    }
  } finally {
    noArgs.dispose();
    stream.dispose();
  }
  return rows;
}

/**
 * The floors under a resident step (src/cuda/resident.ts): a graph launch whose completion the host
 * sees by polling a flag the kernel publishes in pinned memory (no cuStreamSynchronize), and the
 * resident protocol's round trip (ring → every block arrives → done) for one small block and for
 * the seed config's resident grid (48 clusters of two 1024-thread blocks).
 */
function residentFloors(iters: number, stream: Stream): RecordRow[] {
  const mod = loadKernels('runtime');
  const rows: RecordRow[] = [];
  const flag = new PinnedBuffer(16);
  const flagView = new Uint32Array(flag.arrayBuffer, 0, 1);
  const publish = mod.kernel('pq_publish_u32');
  const args = new LaunchArgs(['ptr', 'u32'] as const).setAll([flag.ptr, 0]);
  // Two graphs publishing 1 and 2, alternately: each launch's flag differs from the one before.
  const graphs = [1, 2].map((value) =>
    GraphExec.capture(stream, () => launch(publish, { grid: [1, 1, 1], block: [1, 1, 1] }, args.set(1, value), stream)),
  );
  const signal = new CompletionSignal();
  // The same kernel (publishing into word 2, unread) followed by a captured cuStreamWriteValue32 node
  // writing 1 or 2 into word 0: what a write inside the step's graph would cost instead.
  const nodeArgs = new LaunchArgs(['ptr', 'u32'] as const).setAll([flag.ptr + 8n, 0]);
  const nodeGraphs = [1, 2].map((value) =>
    GraphExec.capture(stream, () => {
      launch(publish, { grid: [1, 1, 1], block: [1, 1, 1] }, nodeArgs.set(1, value), stream);
      stream.writeValue32(flag.ptr, value);
    }),
  );
  try {
    // The same graph waited for by its own flag, and through the driver: its sync call, and polling
    // its stream query (the driver reports completion ≈ 2.6 μs after the flag is visible, either way).
    for (const [what, wait] of [
      ['graph of 1 kernel launch, host polls the flag it publishes (no sync call)', (value: number) => { while (Atomics.load(flagView, 0) !== value) { /* spin on pinned memory */ } }],
      ['graph of 1 kernel launch + cuStreamSynchronize', () => stream.synchronize()],
      // What a cache's synchronize() does after a graph step (src/cuda/signal.ts).
      ['graph of 1 kernel launch + CompletionSignal (cuStreamWriteValue32 behind it, host spins on the word)', () => signal.wait(stream)],
      ['graph of 1 kernel launch + cuStreamQuery polled until idle', () => { while (!stream.isIdle()) { /* poll */ } }],
    ] as const) {
      const t: number[] = [];
      for (let i = 0; i < 200 + iters; i++) {
        const t0 = nowUs();
        (graphs[i & 1] as GraphExec).launch(stream);
        wait(1 + (i & 1));
        if (i >= 200) t.push(nowUs() - t0);
      }
      stream.synchronize();
      rows.push(latencyRow('pqcache-cuda', what, t));
    }
    const t: number[] = [];
    for (let i = 0; i < 200 + iters; i++) {
      const t0 = nowUs();
      (nodeGraphs[i & 1] as GraphExec).launch(stream);
      const value = 1 + (i & 1);
      while (Atomics.load(flagView, 0) !== value) { /* spin on pinned memory */ }
      if (i >= 200) t.push(nowUs() - t0);
    }
    stream.synchronize();
    rows.push(latencyRow('pqcache-cuda', 'graph of 1 kernel launch + a cuStreamWriteValue32 node in the graph, host polls the word (no sync call)', t));
    // Their device time, the stream kept busy ahead: what the node adds to a graph between events.
    const busy = new BusyQueue();
    try {
      for (const [what, pair] of [['graph of 1 kernel', graphs], ['graph of 1 kernel + a cuStreamWriteValue32 node', nodeGraphs]] as const) {
        const d = summarize(eventTimes(stream, 200 + iters, (i) => (pair[i & 1] as GraphExec).launch(stream), busy).slice(200));
        rows.push({ impl: 'pqcache-cuda', config: { what: `${what} between events, stream kept busy ahead` }, gpu_us: latencyFields(d) });
      }
    } finally {
      busy.dispose();
    }
  } finally {
    for (const g of [...graphs, ...nodeGraphs]) g.dispose();
    nodeArgs.dispose();
    args.dispose();
    flag.dispose();
    signal.dispose();
  }
  const echo = mod.kernel('pq_resident_echo');
  for (const [what, grid, block] of [
    ['resident round trip: 1 block of 32 threads', [1, 1, 1], [32, 1, 1]],
    ['resident round trip: 96 blocks of 1024 threads', [96, 1, 1], [1024, 1, 1]],
  ] as const) {
    const resident = new ResidentLaunch();
    try {
      resident.start(echo, { grid, block }, [] as const, [] as const);
      const wall: number[] = [];
      const device: number[] = [];
      for (let i = 0; i < 200 + iters; i++) {
        const t0 = nowUs();
        resident.serve(0);
        if (i < 200) continue;
        wall.push(nowUs() - t0);
        device.push(resident.lastDeviceNs / 1000);
      }
      rows.push(latencyRow('pqcache-cuda', what, wall, { gpu_method: 'global timer: block 0 sees the ring → the last block to arrive publishes done' }, device));
    } finally {
      resident.dispose();
    }
  }
  return rows;
}
