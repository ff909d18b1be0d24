#!/usr/bin/env node
// Which cluster size the sparse attention should take (diagnostic, session 40): the cluster-merged
// kernel at every cluster size against the split kernel, GPU time (CUDA events, stream kept busy
// ahead) of one launch in a graph, bf16 K/V, H = 32, Hkv = 8, D = 128, lists of 384 random distinct
// positions of sk = 32768, B = 1 and 8. Prints a table; checks nothing (the GPU tests do).
//   bash scripts/device-run.sh node scripts/attend-cluster-sizes.mjs   (device; reads .device/app/dist)
import { dist } from './local-dist.mjs';
const { CudaContext } = await import(`${dist}/src/cuda/context.js`);
const { GraphExec } = await import(`${dist}/src/cuda/graph.js`);
const { DeviceArena, PinnedBuffer, copies } = await import(`${dist}/src/cuda/memory.js`);
const { Stream } = await import(`${dist}/src/cuda/stream.js`);
const { AttendScratch, CudaAttention, KVCache, planSparseAttendCluster } = await import(`${dist}/src/attention/cuda-attention.js`);
const { BusyQueue, eventTimes } = await import(`${dist}/src/bench/busy-queue.js`);
const { summarize } = await import(`${dist}/src/bench/stats.js`);

const ctx = CudaContext.primary();
const sms = ctx.device.multiprocessorCount;
const stream = new Stream();
const busy = new BusyQueue();
const sk = 32768;
const L = 384;
const f = (x) => x.toFixed(2).padStart(8);
console.log('B  plan'.padEnd(44), '  gpu med     p90');
for (const B of [1, 8]) {
  const shape = { batch: B, heads: 32, kvHeads: 8, headDim: 128 };
  const rows = B * 32;
  const kv = new KVCache(shape, sk, 'bf16');
  // K/V rows left as allocated: their values do not change the time.
  const list = new Int32Array(rows * L);
  for (let r = 0; r < rows; r++) {
    const chosen = new Set();
    while (chosen.size < L) chosen.add(Math.floor(Math.random() * sk));
    list.set([...chosen], r * L);
  }
  const arena = DeviceArena.allocate({ q: rows * 128 * 2, list: list.byteLength, len: rows * 4, w: rows * sk * 4, out: rows * 128 * 2 });
  copies.fromHost(arena.slices.list, list);
  copies.fromHost(arena.slices.len, new Int32Array(rows).fill(L));
  copies.fill32Async(arena.slices.w, 0x3f800000, rows * sk, stream); // every weight 1
  copies.fill8Async(arena.slices.q, 0, rows * 128 * 2, stream);
  const status = new PinnedBuffer(16);
  const attention = new CudaAttention(ctx, shape);
  const io = {
    query: arena.slices.q.ptr, queryDType: 'bf16', kv, out: arena.slices.out.ptr, seqLen: { ptr: 0n, add: sk }, status: status.ptr,
    sparseList: arena.slices.list.ptr, sparseLen: arena.slices.len.ptr, listStride: L, weights: arena.slices.w.ptr, weightsDType: 'f32', weightsStride: sk,
  };
  const auto = attention.sparsePlan('bf16', L, 'cluster');
  const plans = [attention.sparsePlan('bf16', L, 'global'), ...[1, 2, 4, 8].map((c) => forceCluster(shape, c))];
  for (const plan of plans) {
    const scratch = new AttendScratch(plan, 128, stream);
    const graph = GraphExec.capture(stream, () => attention.launchSparse(plan, scratch, io, stream));
    const gpu = summarize(eventTimes(stream, 2000, () => graph.launch(stream), busy).slice(300));
    const label = `${B}  ${plan.merge} ${plan.splits}×${plan.threads} chunk ${plan.chunk}${plan.kernel === auto.kernel ? ' (planned)' : ''}`;
    console.log(label.padEnd(44), f(gpu.median), f(gpu.p90));
    graph.dispose();
    scratch.dispose();
  }
  status.dispose();
  arena.dispose();
  kv.dispose();
}
busy.dispose();
stream.dispose();

/** The cluster plan at cluster size c (the planner's rule without its cap). */
function forceCluster(shape, c) {
  const p = planSparseAttendCluster(shape, 'bf16', L, sms, 1e9, 1);
  const chunk = Math.ceil(Math.ceil(L / c) / 8) * 8;
  return { ...p, splits: c, chunk, kernel: p.kernel.replace(/_c\d$/, `_c${c}`) };
}
