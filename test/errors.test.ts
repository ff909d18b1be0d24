import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import test from 'node:test';
import { check } from '../src/cuda/driver.js';
import {
  CapacityError, ConfigError, CudaError, CudaOutOfMemoryError, CudaUnavailableError, DTypeError, DeviceInputError, DisposedError,
  FormatError, KernelsNotBuiltError, NonFiniteError, PQCacheError, ShapeError, StateError,
} from '../src/errors.js';
import { createPQCache } from '../src/pq/backend.js';
import { CpuPQCache } from '../src/pq/cache.js';
import { makeLayout } from '../src/pq/config.js';
import { checkFinite } from '../src/pq/validate.js';
import { deviceTensor } from '../src/tensor/device-tensor.js';
import { loadKernels, throwDeviceStatus } from '../src/pq/kernels.js';
import { decodeIndex } from '../src/pq/persist.js';
import { HostTensor } from '../src/tensor/host-tensor.js';

const shape = { batch: 1, heads: 2, kvHeads: 1, headDim: 8 };
const config = { pqGroupFactor: 2, pqBits: 2, heavySize: 2, sinkSize: 1, windowSize: 1, initOffset: 1, kmeansIters: 1 };
function built(): CpuPQCache {
  const c = new CpuPQCache({ shape, config, capacity: 20 });
  c.build(new HostTensor('f32', [1, 1, 10, 8], new Float32Array(80).map((_, i) => (i % 7) - 3)));
  return c;
}
const isA = (cls: new (...a: never[]) => Error, pattern: RegExp) => (e: unknown): boolean => e instanceof cls && e instanceof PQCacheError && pattern.test((e as Error).message);

test('ShapeError names the argument, the expected and the actual shape', () => {
  assert.throws(() => built().selectToHost(new HostTensor('f32', [1, 2, 1, 4])), isA(ShapeError, /^query: expected shape \[B=1, H=2, 1, D=8\], got \[1, 2, 1, 4\]$/));
});

test('DTypeError for an integer query', () => {
  assert.throws(() => built().selectToHost(new HostTensor('i32', [1, 2, 1, 8])), isA(DTypeError, /^query: expected dtype f32 \| f16 \| bf16, got i32$/));
});

test('ConfigError for out-of-range and inconsistent config', () => {
  assert.throws(() => makeLayout(shape, { pqBits: 9 }), isA(ConfigError, /^pqBits: expected an integer in \[1, 8\], got 9$/));
  assert.throws(() => makeLayout({ ...shape, kvHeads: 3 }), isA(ConfigError, /kvHeads: expected a divisor of heads \(2\), got 3/));
  assert.throws(() => makeLayout(shape, { pqGroupFactor: 3 }), isA(ConfigError, /pqGroupFactor: expected a divisor of headDim \(8\), got 3/));
  assert.throws(() => makeLayout(shape, { metric: 'cosine' as never }), isA(ConfigError, /metric/));
  assert.throws(() => new CpuPQCache({ shape, config, capacity: 0 }), isA(ConfigError, /capacity/));
});

test('NonFiniteError reports NaN/Inf in queries and keys with the index', () => {
  const q = new Float32Array(16);
  q[5] = Infinity;
  assert.throws(() => built().selectToHost(new HostTensor('f32', [1, 2, 1, 8], q)), isA(NonFiniteError, /^query: expected finite values, got Infinity at flat index 5$/));
  const k = new Float32Array(80);
  k[17] = NaN;
  assert.throws(() => new CpuPQCache({ shape, config, capacity: 20 }).build(new HostTensor('f32', [1, 1, 10, 8], k)), isA(NonFiniteError, /keys.*NaN at flat index 17/));
});

test('checkFinite finds every NaN and ±Infinity position (every lane of a SIMD vector and of a loop step, and the padded tail), passes extreme finite values', () => {
  for (const n of [1, 3, 4, 7, 8, 9, 15, 16, 17, 63, 4096, 4099]) {
    const ok = new Float32Array(n).map((_, i) => (i % 3 === 0 ? 3.4e38 : i % 3 === 1 ? -1e-45 : -3.4e38));
    checkFinite('x', new HostTensor('f32', [n], ok));
    for (const at of new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, n - 2, n - 1, n >> 1].filter((i) => i >= 0 && i < n))) {
      for (const bad of [NaN, Infinity, -Infinity]) {
        const x = ok.slice();
        x[at] = bad;
        assert.throws(() => checkFinite('x', new HostTensor('f32', [n], x)), isA(NonFiniteError, new RegExp(`at flat index ${at}$`)));
      }
    }
  }
});

test('CapacityError when appends would exceed the reserved capacity', () => {
  assert.throws(() => built().append(new HostTensor('f32', [1, 1, 11, 8])), isA(CapacityError, /^keys: expected at most 20 cached positions \(the capacity\), got 21$/));
});

test('StateError for select before build', () => {
  assert.throws(() => new CpuPQCache({ shape, config, capacity: 20 }).selectToHost(new HostTensor('f32', [1, 2, 1, 8])), isA(StateError, /^select: expected an index built/));
});

test('DisposedError after dispose', () => {
  const c = built();
  c.dispose();
  assert.throws(() => c.selectToHost(new HostTensor('f32', [1, 2, 1, 8])), isA(DisposedError, /CpuPQCache/));
});

test('FormatError for a file that is not an index', () => {
  assert.throws(() => decodeIndex(new Uint8Array(16), undefined, 'x.safetensors'), isA(FormatError, /^x\.safetensors: /));
});

test('CudaError and CudaOutOfMemoryError name the driver call and the error', () => {
  assert.doesNotThrow(() => check('cuNothing', 0));
  assert.throws(() => check('cuMemAlloc_v2', 2, 1 << 30), (e: unknown) => e instanceof CudaOutOfMemoryError && e instanceof CudaError && /^cuMemAlloc_v2: expected CUDA_SUCCESS, got /.test((e as Error).message) && /1073741824 bytes/.test((e as Error).message));
  assert.throws(() => check('cuLaunchKernel(k)', 1), (e: unknown) => e instanceof CudaError && !(e instanceof CudaOutOfMemoryError) && (e as CudaError).call === 'cuLaunchKernel(k)');
});

test('KernelsNotBuiltError when the kernel images are missing', () => {
  const saved = process.env.PQCACHE_KERNELS_DIR;
  process.env.PQCACHE_KERNELS_DIR = mkdtempSync(`${tmpdir()}/pqcache-empty-`);
  try {
    assert.throws(() => loadKernels('attention'), isA(KernelsNotBuiltError, /attention\.fatbin.*npm run build:kernels/));
  } finally {
    if (saved === undefined) delete process.env.PQCACHE_KERNELS_DIR;
    else process.env.PQCACHE_KERNELS_DIR = saved;
  }
});

test('CudaUnavailableError when cuda is asked for without a driver; auto falls back to the CPU and says so', { skip: process.env.PQCACHE_LIBCUDA === undefined && hasDriver() ? 'a driver is present' : false }, () => {
  assert.throws(() => createPQCache({ backend: 'cuda', shape, config, capacity: 8 }), isA(CudaUnavailableError, /^cuda backend: expected an NVIDIA driver/));
  const auto = createPQCache({ backend: 'auto', shape, config, capacity: 8 });
  assert.equal(auto.backend, 'cpu');
  assert.match(auto.backendReason, /CUDA unavailable/);
});

function hasDriver(): boolean {
  try {
    return createPQCache({ backend: 'auto', shape, config, capacity: 8 }).backend === 'cuda';
  } catch {
    return false;
  }
}

test('checkFinite finds NaN and ±Inf in every float dtype, and passes the largest finite values', () => {
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    const big = dtype === 'f16' ? 65504 : dtype === 'bf16' ? 3.3895313892515355e38 : 3.4028234663852886e38;
    checkFinite('x', HostTensor.fromNumbers(dtype, [4], [big, -big, 0, -0]));
    for (const bad of [NaN, Infinity, -Infinity]) {
      assert.throws(() => checkFinite('x', HostTensor.fromNumbers(dtype, [3], [1, bad, 2])), (e: unknown) => e instanceof NonFiniteError && /x: expected finite values/.test((e as Error).message) && /flat index 1/.test((e as Error).message), `${dtype} ${bad}`);
    }
  }
});

test('device status bits map to typed errors naming the input, and stale buckets to a StateError', () => {
  assert.throws(() => throwDeviceStatus(1, 10), (e: unknown) => e instanceof DeviceInputError && /query/.test(e.message));
  assert.throws(() => throwDeviceStatus(4, 10), (e: unknown) => e instanceof DeviceInputError && /\[0, 10\)/.test(e.message));
  assert.throws(() => throwDeviceStatus(16, 10), (e: unknown) => e instanceof StateError && /bucket/.test(e.message));
  assert.doesNotThrow(() => throwDeviceStatus(0, 10));
});
