#!/usr/bin/env node
// Where the seed build's wall-clock goes beyond its GPU time (diagnostic; GPU machine). For each
// device key dtype (KEYS, default "bf16 f16 f32"), REPS builds of the seed config with a kept
// workspace, as the build bench's wall loop, each split on the host clock: call → cuGraphLaunch
// (GraphExec.launch wrapped), the launch itself, → stream synchronize returned, → return (with the
// read-back where the build still copies its outcome by copies.toHost, timed on its own:
// `readback_us`, 0 where it is not called). Then the same builds between events on an idle
// stream (the device from the graph's launch on, as the wall loop's device sees it) and with the
// stream kept busy ahead (the device alone, as the build record's GPU column). Medians per column.
//   bash scripts/device-run.sh node scripts/build-host-split.mjs
import { join } from 'node:path';
const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { CudaContext } = await import(join(app, 'cuda/context.js'));
const { DeviceBuffer, copies } = await import(join(app, 'cuda/memory.js'));
const { Event, Stream } = await import(join(app, 'cuda/stream.js'));
const { GraphExec } = await import(join(app, 'cuda/graph.js'));
const { BuildWorkspace, allocateBuildTarget, buildOnDevice } = await import(join(app, 'pq/cuda-build.js'));
const { BUILD_WARMUPS, SEED_BUILD, benchKeys, buildBenchLayout } = await import(join(app, 'bench/build-bench.js'));
const { BusyQueue } = await import(join(app, 'bench/busy-queue.js'));
const { summarize } = await import(join(app, 'bench/stats.js'));
const { deviceTensor } = await import(join(app, 'tensor/device-tensor.js'));
const { HostTensor } = await import(join(app, 'tensor/host-tensor.js'));
const { stampCalls } = await import('./stamp-calls.mjs');

const reps = Number(process.env.REPS ?? 30);
const dtypes = (process.env.KEYS ?? 'bf16 f16 f32').split(/\s+/).filter(Boolean);
const c = SEED_BUILD;
const layout = buildBenchLayout(c);
CudaContext.primary();
const stream = new Stream();
const e0 = new Event();
const e1 = new Event();
const busy = new BusyQueue(500_000);
const { arena, target } = allocateBuildTarget(layout, c.sk);
const host = new HostTensor('f32', [c.B, c.Hkv, c.sk, c.D], benchKeys(c.B * c.Hkv * c.sk * c.D));

const launch = { t0: 0, t1: 0 };
const sync = { t0: 0, t1: 0 };
const back = { t0: 0, t1: 0 };
stampCalls(GraphExec.prototype, 'launch', launch);
stampCalls(Stream.prototype, 'synchronize', sync);
stampCalls(copies, 'toHost', back);
const r2 = (x) => Math.round(x * 100) / 100;

for (const dtype of dtypes) {
  const keys = dtype === 'f32' ? host : host.toDType(dtype);
  const buf = new DeviceBuffer(keys.data.byteLength);
  copies.fromHost(buf, keys.data);
  const input = deviceTensor(keys.dtype, keys.shape, buf.ptr);
  const workspace = new BuildWorkspace(layout, c.sk);
  const build = (events) => buildOnDevice(layout, input, c.sk, target, stream, undefined, events, {}, workspace);
  for (let i = 0; i < BUILD_WARMUPS; i++) build(); // module load, capture, first touch, compiled JavaScript (as the bench)
  const cols = { call_to_launch: [], launch: [], launch_to_synced: [], synced_to_return: [], readback: [], wall: [] };
  for (let r = 0; r < reps; r++) {
    back.t0 = back.t1 = 0;
    const t0 = performance.now();
    build();
    const t1 = performance.now();
    cols.call_to_launch.push(launch.t0 - t0);
    cols.launch.push(launch.t1 - launch.t0);
    cols.launch_to_synced.push(sync.t1 - launch.t1);
    cols.synced_to_return.push(t1 - sync.t1);
    cols.readback.push(back.t1 - back.t0);
    cols.wall.push(t1 - t0);
  }
  const idle = [];
  for (let r = 0; r < reps; r++) {
    build({ start: e0, end: e1 });
    idle.push(e1.elapsedSince(e0));
  }
  const busyGpu = [];
  for (let r = 0; r < reps; r++) {
    build({ start: e0, end: e1, beforeStart: (s) => busy.fill(s) });
    busyGpu.push(e1.elapsedSince(e0));
  }
  const out = { keys: dtype };
  for (const [k, v] of Object.entries(cols)) out[`${k}_us`] = r2(summarize(v).median * 1000);
  out.gpu_idle_stream_us = r2(summarize(idle).median * 1000);
  out.gpu_busy_queue_us = r2(summarize(busyGpu).median * 1000);
  console.log(`BUILD ${JSON.stringify(out)}`);
  workspace.dispose();
  buf.dispose();
}
arena.dispose();
