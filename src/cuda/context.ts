/**
 * Devices and their primary contexts. One CudaContext per device ordinal, retained once and
 * made current on the calling thread (Node runs our calls on one thread).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ConfigError, DisposedError } from '../errors.js';
import { type Handle, check, driver, out, outHandle } from './driver.js';
import { quiesceDevice } from './resident-guard.js';

const ATTR = {
  maxThreadsPerBlock: 1,
  clockRateKHz: 13,
  multiprocessorCount: 16,
  memoryClockRateKHz: 36,
  memoryBusWidthBits: 37,
  l2CacheBytes: 38,
  ccMajor: 75,
  ccMinor: 76,
  maxSharedPerMultiprocessor: 81,
  maxSharedPerBlockOptin: 97,
} as const;

export interface DeviceInfo {
  readonly ordinal: number;
  readonly name: string;
  readonly computeCapability: readonly [number, number];
  readonly multiprocessorCount: number;
  readonly totalMemoryBytes: number;
  readonly l2CacheBytes: number;
  readonly maxSharedPerBlockOptin: number;
  readonly maxSharedPerMultiprocessor: number;
  readonly maxThreadsPerBlock: number;
  readonly clockRateKHz: number;
  /** Peak DRAM bandwidth from clock and bus width (a datasheet-style lead, not a measurement). */
  readonly theoreticalBandwidthGBs: number;
  /** CUDA version the driver supports, e.g. "13.0". */
  readonly cudaDriverVersion: string;
  /** The NVIDIA kernel driver version, e.g. "580.159.04" (from /proc or nvidia-smi), or "unknown". */
  readonly driverVersion: string;
}

function nvidiaDriverVersion(): string {
  try {
    const m = /Kernel Module\s+([0-9.]+)/.exec(readFileSync('/proc/driver/nvidia/version', 'utf8'));
    if (m) return m[1];
  } catch {
    // fall through to nvidia-smi
  }
  try {
    return execFileSync('nvidia-smi', ['--query-gpu=driver_version', '--format=csv,noheader'], { encoding: 'utf8', timeout: 5000 })
      .split('\n')[0]
      .trim();
  } catch {
    return 'unknown';
  }
}

export function deviceCount(): number {
  const d = driver();
  return out('cuDeviceGetCount', 0, (s) => d.cuDeviceGetCount(s));
}

export function queryDevice(ordinal: number): DeviceInfo {
  const d = driver();
  const dev = out('cuDeviceGet', 0, (s) => d.cuDeviceGet(s, ordinal));
  const attr = (a: number): number => out('cuDeviceGetAttribute', 0, (s) => d.cuDeviceGetAttribute(s, a, dev));
  const nameBuf = new Uint8Array(256);
  check('cuDeviceGetName', d.cuDeviceGetName(nameBuf, nameBuf.length, dev));
  const name = Buffer.from(nameBuf).toString('utf8').replace(/\0.*$/s, '');
  const version = out('cuDriverGetVersion', 0, (s) => d.cuDriverGetVersion(s));
  const memClock = attr(ATTR.memoryClockRateKHz);
  const busWidth = attr(ATTR.memoryBusWidthBits);
  return {
    ordinal,
    name,
    computeCapability: [attr(ATTR.ccMajor), attr(ATTR.ccMinor)],
    multiprocessorCount: attr(ATTR.multiprocessorCount),
    totalMemoryBytes: Number(out('cuDeviceTotalMem_v2', 0, (s) => d.cuDeviceTotalMem_v2(s, dev))),
    l2CacheBytes: attr(ATTR.l2CacheBytes),
    maxSharedPerBlockOptin: attr(ATTR.maxSharedPerBlockOptin),
    maxSharedPerMultiprocessor: attr(ATTR.maxSharedPerMultiprocessor),
    maxThreadsPerBlock: attr(ATTR.maxThreadsPerBlock),
    clockRateKHz: attr(ATTR.clockRateKHz),
    theoreticalBandwidthGBs: (2 * memClock * 1e3 * (busWidth / 8)) / 1e9,
    cudaDriverVersion: `${Math.floor(version / 1000)}.${(version % 1000) / 10}`,
    driverVersion: nvidiaDriverVersion(),
  };
}

const contexts = new Map<number, CudaContext>();

/**
 * How a host thread waits for the GPU in a synchronize (CU_CTX_SCHED_*): the driver's choice
 * (`auto`), busy-waiting (`spin`: the lowest latency, one core busy while waiting), yielding the core
 * between polls (`yield`), or sleeping until an interrupt (`blocking`).
 */
export type HostWait = 'auto' | 'spin' | 'yield' | 'blocking';
const SCHED_FLAGS: Record<HostWait, number> = { auto: 0, spin: 1, yield: 2, blocking: 4 };
const SCHED_MASK = 7;

/** PQCACHE_HOST_WAIT, when set: the wait mode for the primary context (set before its first retain). */
function hostWaitFromEnv(): HostWait | undefined {
  const v = process.env.PQCACHE_HOST_WAIT;
  if (v === undefined || v === '') return undefined;
  if (v in SCHED_FLAGS) return v as HostWait;
  throw new ConfigError('PQCACHE_HOST_WAIT', Object.keys(SCHED_FLAGS).join(' | '), v);
}

export class CudaContext {
  readonly device: DeviceInfo;
  readonly handle: Handle;
  private readonly dev: number;  // the driver's device handle (CUdevice)
  private released = false;

  private constructor(ordinal: number) {
    const d = driver();
    const dev = out('cuDeviceGet', 0, (s) => d.cuDeviceGet(s, ordinal));
    this.dev = dev;
    const wait = hostWaitFromEnv();
    if (wait !== undefined) check('cuDevicePrimaryCtxSetFlags_v2', d.cuDevicePrimaryCtxSetFlags_v2(dev, SCHED_FLAGS[wait]));
    this.handle = outHandle('cuDevicePrimaryCtxRetain', (s) => d.cuDevicePrimaryCtxRetain(s, dev));
    check('cuCtxSetCurrent', d.cuCtxSetCurrent(this.handle));
    this.device = queryDevice(ordinal);
  }

  /** The retained primary context of a device, made current. */
  static primary(ordinal = 0): CudaContext {
    let ctx = contexts.get(ordinal);
    if (ctx === undefined) {
      ctx = new CudaContext(ordinal);
      contexts.set(ordinal, ctx);
    } else {
      ctx.makeCurrent();
    }
    return ctx;
  }

  /** How this context's synchronizing calls wait (the primary context's scheduling flags). */
  hostWait(): HostWait {
    const flags: [number] = [0];
    const active: [number] = [0];
    check('cuDevicePrimaryCtxGetState', driver().cuDevicePrimaryCtxGetState(this.dev, flags, active));
    const bits = flags[0] & SCHED_MASK;
    return (Object.keys(SCHED_FLAGS) as HostWait[]).find((k) => SCHED_FLAGS[k] === bits) ?? 'auto';
  }

  makeCurrent(): void {
    if (this.released) throw new DisposedError('CudaContext');
    check('cuCtxSetCurrent', driver().cuCtxSetCurrent(this.handle));
  }

  synchronize(): void {
    quiesceDevice();
    check('cuCtxSynchronize', driver().cuCtxSynchronize());
  }

  /** Free and total device memory in bytes. */
  memInfo(): { free: number; total: number } {
    const d = driver();
    const free: [number] = [0];
    const total: [number] = [0];
    check('cuMemGetInfo_v2', d.cuMemGetInfo_v2(free, total));
    return { free: Number(free[0]), total: Number(total[0]) };
  }
}
