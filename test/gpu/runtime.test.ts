import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { CudaContext } from '../../src/cuda/context.js';
import { GraphExec } from '../../src/cuda/graph.js';
import { LaunchArgs, launch } from '../../src/cuda/launch.js';
import { DeviceArena, DeviceBuffer, PinnedBuffer, allocationStats, copies } from '../../src/cuda/memory.js';
import { ResidentLaunch } from '../../src/cuda/resident.js';
import { CompletionSignal } from '../../src/cuda/signal.js';
import { Event, Stream } from '../../src/cuda/stream.js';
import { CudaError, CudaOutOfMemoryError, StateError } from '../../src/errors.js';
import { loadKernels } from '../../src/pq/kernels.js';
import { gpuSkip } from './gpu.js';

const skip = gpuSkip();
const rand = (n: number, seed: number): Float32Array => new Float32Array(n).map((_, i) => Math.sin(seed + i * 1.618) * 1000);

test('copies round-trip exactly: sync, device-to-device, pinned async, odd sizes', { skip }, () => {
  CudaContext.primary();
  const stream = new Stream();
  for (const n of [1, 3, 1000, 262147]) {
    const src = rand(n, n);
    const a = new DeviceBuffer(n * 4);
    const b = new DeviceBuffer(n * 4);
    const pin = new PinnedBuffer(n * 4);
    try {
      copies.fromHost(a, src);
      copies.deviceToDevice(b, a, n * 4);
      const back = new Float32Array(n).fill(NaN);
      copies.toHost(back, b);
      assert.deepEqual(back, src);
      new Float32Array(pin.arrayBuffer).fill(-1);
      pin.copyFromDeviceAsync(b, n * 4, stream);
      stream.synchronize();
      assert.deepEqual(new Float32Array(pin.arrayBuffer, 0, n), src);
      new Float32Array(pin.arrayBuffer).set(rand(n, 7));
      pin.copyToDeviceAsync(a, n * 4, stream);
      stream.synchronize();
      copies.toHost(back, a);
      assert.deepEqual(back, rand(n, 7));
    } finally {
      a.dispose();
      b.dispose();
      pin.dispose();
    }
  }
  stream.dispose();
});

test('copies.fromHost: the bytes are there for the next work of a non-blocking stream, with the host-to-device copies busy', { skip }, () => {
  // A pageable cuMemcpyHtoD returns before its DMA lands, on the legacy stream, which non-blocking
  // streams do not wait for; fromHost waits for it. A large pinned copy on another stream keeps the
  // host-to-device DMA busy, so that a copy that did not wait would still be in flight here.
  CudaContext.primary();
  const stream = new Stream();
  const busy = new Stream();
  const bulkBytes = 256 << 20;
  const bulkHost = new PinnedBuffer(bulkBytes);
  const bulkDevice = new DeviceBuffer(bulkBytes);
  const n = 16384;
  const dev = new DeviceBuffer(n * 4);
  const pin = new PinnedBuffer(n * 4);
  try {
    for (let trial = 0; trial < 6; trial++) {
      copies.fill32Async(dev, 0x7fc00000, n, stream); // NaN: a stale read cannot pass for the data
      stream.synchronize();
      bulkHost.copyToDeviceAsync(bulkDevice, bulkBytes, busy);
      const src = rand(n, trial);
      copies.fromHost(dev, src);
      pin.copyFromDeviceAsync(dev, n * 4, stream);
      stream.synchronize();
      assert.deepEqual(new Float32Array(pin.arrayBuffer, 0, n), src, `trial ${trial}`);
      busy.synchronize();
    }
  } finally {
    for (const r of [bulkHost, bulkDevice, dev, pin, stream, busy]) r.dispose();
  }
});

test('a vector kernel writes every element (output poisoned first); graph replay equals eager launches', { skip }, () => {
  CudaContext.primary();
  const add = loadKernels('runtime').kernel('pq_vector_add');
  const stream = new Stream();
  const n = 100003;
  const arena = DeviceArena.allocate({ a: n * 4, b: n * 4, c: n * 4 });
  const s = arena.slices;
  const args = new LaunchArgs(['ptr', 'ptr', 'ptr', 'i32'] as const).setAll([s.a.ptr, s.b.ptr, s.c.ptr, n]);
  const shape = { grid: [Math.ceil(n / 256), 1, 1] as const, block: [256, 1, 1] as const };
  try {
    const a = rand(n, 1);
    const b = rand(n, 2);
    copies.fromHost(s.a, a);
    copies.fromHost(s.b, b);
    copies.fill32Async(s.c, 0x7fc00001, n, stream); // NaN poison
    launch(add, shape, args, stream);
    stream.synchronize();
    const c = new Float32Array(n);
    copies.toHost(c, s.c);
    for (let i = 0; i < n; i++) assert.equal(c[i], Math.fround(a[i] + b[i]), `element ${i}`);
    const graph = GraphExec.capture(stream, () => launch(add, shape, args, stream));
    copies.fill32Async(s.c, 0x7fc00001, n, stream);
    graph.launch(stream);
    graph.launch(stream);
    stream.synchronize();
    const g = new Float32Array(n);
    copies.toHost(g, s.c);
    assert.deepEqual(g, c);
    graph.dispose();
  } finally {
    args.dispose();
    arena.dispose();
    stream.dispose();
  }
});

test('event timing is positive and consistent with the host clock', { skip }, () => {
  CudaContext.primary();
  const fill = loadKernels('runtime').kernel('pq_fill_u32');
  const stream = new Stream();
  const bytes = 1 << 30;
  const buf = new DeviceBuffer(bytes);
  const args = new LaunchArgs(['ptr', 'u32', 'u64'] as const).setAll([buf.ptr, 1, BigInt(bytes / 4)]);
  const e0 = new Event();
  const e1 = new Event();
  try {
    launch(fill, { grid: [1024, 1, 1], block: [256, 1, 1] }, args, stream);
    stream.synchronize();
    const t0 = performance.now();
    e0.record(stream);
    for (let i = 0; i < 20; i++) launch(fill, { grid: [1024, 1, 1], block: [256, 1, 1] }, args, stream);
    e1.record(stream);
    e1.synchronize();
    const host = performance.now() - t0;
    const gpu = e1.elapsedSince(e0);
    assert.ok(gpu > 0, `gpu ${gpu} ms`);
    assert.ok(gpu <= host * 1.05 + 0.05 && gpu >= host * 0.5, `gpu ${gpu} ms vs host ${host} ms`);
  } finally {
    e0.dispose();
    e1.dispose();
    args.dispose();
    buf.dispose();
    stream.dispose();
  }
});

test('an invalid launch configuration raises CudaError naming cuLaunchKernel and the error', { skip }, () => {
  CudaContext.primary();
  const empty = loadKernels('runtime').kernel('pq_empty');
  const stream = new Stream();
  const args = new LaunchArgs([] as const);
  try {
    assert.throws(() => launch(empty, { grid: [1, 1, 1], block: [4096, 1, 1] }, args, stream), (e: unknown) => e instanceof CudaError && /^cuLaunchKernel\(pq_empty\): expected CUDA_SUCCESS, got CUDA_ERROR_INVALID_VALUE/.test((e as Error).message));
    launch(empty, { grid: [1, 1, 1], block: [32, 1, 1] }, args, stream); // the context is still usable
    stream.synchronize();
  } finally {
    args.dispose();
    stream.dispose();
  }
});

test('an allocation larger than the device raises CudaOutOfMemoryError and leaks nothing', { skip }, () => {
  const ctx = CudaContext.primary();
  const tooBig = ctx.device.totalMemoryBytes * 2;
  const isOom = (e: unknown): boolean => e instanceof CudaOutOfMemoryError && /cuMemAlloc_v2: expected CUDA_SUCCESS, got CUDA_ERROR_OUT_OF_MEMORY/.test((e as Error).message);
  // The driver may set up internal state on its first failed allocation: warm up once, then check
  // that repeated failures neither keep device memory nor leave our own allocations behind.
  assert.throws(() => new DeviceBuffer(tooBig), isOom);
  ctx.synchronize();
  const before = ctx.memInfo().free;
  const stats = allocationStats();
  for (let i = 0; i < 5; i++) assert.throws(() => new DeviceBuffer(tooBig), isOom);
  assert.deepEqual(allocationStats(), stats);
  // The driver may release earlier frees meanwhile, so free memory can only grow.
  assert.ok(ctx.memInfo().free >= before, `free ${ctx.memInfo().free} < ${before}`);
  const ok = new DeviceBuffer(1 << 20); // and the device still allocates
  ok.dispose();
});

// Under compute-sanitizer the deliberate fault would be reported as an error: PQCACHE_NO_FAULT_TEST=1.
const faultSkip = skip || (process.env.PQCACHE_NO_FAULT_TEST === '1' ? 'fault test disabled (PQCACHE_NO_FAULT_TEST=1)' : false);
test('a kernel fault surfaces as a CudaError at the next sync (child process)', { skip: faultSkip }, () => {
  // The CLI's fault probe (pqcache _fault trap) launches the trapping kernel and reports how it surfaced.
  const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
  const r = spawnSync(process.execPath, [cli, '_fault', 'trap'], { encoding: 'utf8', timeout: 60000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /CudaError cuStreamSynchronize: expected CUDA_SUCCESS, got CUDA_ERROR_/);
});

test('a kernel fault surfaces as a CudaError from a CompletionSignal wait too (child process)', { skip: faultSkip }, () => {
  const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
  const r = spawnSync(process.execPath, [cli, '_fault', 'trap-signal'], { encoding: 'utf8', timeout: 60000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^CudaError cu\w+: expected CUDA_SUCCESS, got CUDA_ERROR_/);
});

test('CompletionSignal.wait returns only once the work before it is done: short work (spun on) and long work (handed to cuStreamSynchronize)', { skip }, () => {
  CudaContext.primary();
  const stream = new Stream();
  const signal = new CompletionSignal();
  const flag = new PinnedBuffer(16);
  const word = new Uint32Array(flag.arrayBuffer, 0, 1);
  const mod = loadKernels('runtime');
  const spin = mod.kernel('pq_spin_ns');
  const publish = mod.kernel('pq_publish_u32');
  const spinArgs = new LaunchArgs(['u64'] as const);
  const publishArgs = new LaunchArgs(['ptr', 'u32'] as const);
  try {
    // 20 μs (spun on), 2 ms (spun on), 12 ms (past the spin: synchronize): the kernel behind the
    // spin publishes a new value, which must be there when wait() returns.
    let value = 0;
    for (const ns of [20_000, 2_000_000, 12_000_000]) {
      for (let rep = 0; rep < 3; rep++) {
        value += 1;
        Atomics.store(word, 0, 0);
        // From before the launches: the spin runs while the host enqueues the publish (≥ 10 μs on a
        // busy host), so a clock started after them could read less than the work without a defect.
        const t0 = performance.now();
        launch(spin, { grid: [1, 1, 1], block: [1, 1, 1] }, spinArgs.setAll([BigInt(ns)]), stream);
        launch(publish, { grid: [1, 1, 1], block: [1, 1, 1] }, publishArgs.setAll([flag.ptr, value]), stream);
        signal.wait(stream);
        const ms = performance.now() - t0;
        assert.equal(Atomics.load(word, 0), value, `${ns} ns: the work was done when wait() returned`);
        assert.ok(ms >= ns / 1e6 * 0.5, `${ns} ns: wait() took ${ms} ms, less than the work`);
      }
    }
    // On an idle stream it returns too.
    signal.wait(stream);
  } finally {
    spinArgs.dispose();
    publishArgs.dispose();
    flag.dispose();
    signal.dispose();
    stream.dispose();
  }
});

test('resident launch: serves rings in order, reports device time, stops; a grid that cannot be resident at once is a StateError', { skip }, () => {
  const ctx = CudaContext.primary();
  const echo = loadKernels('runtime').kernel('pq_resident_echo');
  const before = allocationStats();
  const resident = new ResidentLaunch({ readyMs: 500, requestMs: 2000 });
  try {
    assert.equal(resident.active, false);
    assert.throws(() => resident.serve(0), StateError);
    for (const blocks of [1, 40]) {
      resident.start(echo, { grid: [blocks, 1, 1], block: [256, 1, 1] }, [] as const, [] as const);
      assert.equal(resident.active, true);
      for (let i = 0; i < 2000; i++) resident.serve(i & 3);
      // Bounded by the request timeout only: sanitizers slow the kernel down by 1000×.
      assert.ok(resident.lastDeviceNs >= 0 && resident.lastDeviceNs < 2e9, `device time ${resident.lastDeviceNs} ns`);
      resident.stop();
      assert.equal(resident.active, false);
    }
    // More 1024-thread blocks than the device holds at once: the launch is stopped, nothing left spinning.
    const tooMany = ctx.device.multiprocessorCount * 3;
    assert.throws(() => resident.start(echo, { grid: [tooMany, 1, 1], block: [1024, 1, 1] }, [] as const, [] as const), (e: unknown) =>
      e instanceof StateError && /blocks running at once/.test(e.message));
    assert.equal(resident.active, false);
    // Still usable afterwards; a call that may wait for all work (a free) stops it instead of hanging.
    resident.start(echo, { grid: [2, 1, 1], block: [32, 1, 1] }, [] as const, [] as const);
    resident.serve(1);
    new DeviceBuffer(64).dispose();
    assert.equal(resident.active, false, 'stopped by the free');
    resident.start(echo, { grid: [2, 1, 1], block: [32, 1, 1] }, [] as const, [] as const);
    resident.serve(2);
    // ring() / wait(): one request in flight at a time; stop() serves a request rung and not
    // waited for before its STOP, and the next launch's tickets follow on.
    assert.throws(() => resident.wait(), (e: unknown) => e instanceof StateError && /ring\(\) first/.test(e.message));
    resident.ring(1);
    assert.throws(() => resident.ring(2), (e: unknown) => e instanceof StateError && /in flight/.test(e.message));
    resident.wait();
    resident.ring(3);
    resident.stop();
    assert.equal(resident.active, false);
    resident.start(echo, { grid: [2, 1, 1], block: [32, 1, 1] }, [] as const, [] as const);
    for (let i = 0; i < 10; i++) {
      resident.ring(i & 3);
      resident.wait();
    }
  } finally {
    resident.dispose();
  }
  assert.deepEqual(allocationStats(), before);
});
