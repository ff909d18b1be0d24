/**
 * Device and pinned host memory.
 *  - DeviceBuffer: one cuMemAlloc'd range, freed by dispose().
 *  - DeviceArena: one allocation carved into 256-byte-aligned slices up front, so that the decode
 *    step reuses fixed buffers and never allocates.
 *  - PinnedBuffer: page-locked host memory (cuMemAllocHost) with typed-array views, the source
 *    and target of truly asynchronous copies.
 * Every allocation is counted so tests can prove that nothing leaks.
 */
import koffi from 'koffi';
import { ConfigError, DisposedError, ShapeError } from '../errors.js';
import { CU_MEMORYTYPE_DEVICE, CU_MEMORYTYPE_HOST, type DevicePtr, type Handle, check, driver, outHandle } from './driver.js';
import { quiesceDevice } from './resident-guard.js';
import type { Stream } from './stream.js';

const live = { deviceBuffers: 0, deviceBytes: 0, pinnedBuffers: 0, pinnedBytes: 0 };

/** Live allocations made through this module (for leak checks). */
export function allocationStats(): Readonly<typeof live> {
  return { ...live };
}

function checkBytes(argument: string, bytes: number): void {
  if (!Number.isInteger(bytes) || bytes < 1) throw new ConfigError(argument, 'a positive integer byte count', bytes);
}

function hostBytes(view: ArrayBufferView): number {
  return view.byteLength;
}

/** The device memory range [ptr, ptr + bytes) that copies and kernels address. */
export interface DeviceRange {
  readonly ptr: DevicePtr;
  readonly bytes: number;
}

function checkFits(argument: string, range: DeviceRange, offset: number, bytes: number): void {
  if (offset < 0 || offset + bytes > range.bytes) {
    throw new ShapeError(argument, `at most ${range.bytes - offset} bytes at offset ${offset}`, `${bytes} bytes`);
  }
}

/** The legacy default stream (stream handle 0), where the synchronous copies run. */
const LEGACY_STREAM: Handle = 0n;

/**
 * One cuMemcpy2DAsync between host rows `hostPitch` apart and device rows `devicePitch` apart, then a
 * wait for `stream` (a pageable host side must stay untouched until the copy is done). Errors name the
 * copy's src and dst as the caller sees them.
 */
function copyRows2D(direction: 'toDevice' | 'toHost', host: ArrayBufferView, hostPitch: number, device: DeviceRange, devicePitch: number,
  widthBytes: number, height: number, stream: Stream): void {
  if (height === 0 || widthBytes === 0) return;
  const [hostName, deviceName] = direction === 'toDevice' ? ['src', 'dst'] : ['dst', 'src'];
  if (widthBytes > hostPitch || widthBytes > devicePitch) throw new ShapeError('widthBytes', `at most the pitches (host ${hostPitch}, device ${devicePitch})`, String(widthBytes));
  checkFits(deviceName, device, 0, (height - 1) * devicePitch + widthBytes);
  if ((height - 1) * hostPitch + widthBytes > hostBytes(host)) throw new ShapeError(hostName, `at least ${(height - 1) * hostPitch + widthBytes} bytes`, `${hostBytes(host)} bytes`);
  const hostSide = { MemoryType: CU_MEMORYTYPE_HOST, Host: koffi.address(host) as bigint, Device: 0n, Pitch: hostPitch };
  const deviceSide = { MemoryType: CU_MEMORYTYPE_DEVICE, Host: null, Device: device.ptr, Pitch: devicePitch };
  const [from, to] = direction === 'toDevice' ? [hostSide, deviceSide] : [deviceSide, hostSide];
  const copy = {
    srcXInBytes: 0, srcY: 0, srcMemoryType: from.MemoryType, srcHost: from.Host, srcDevice: from.Device, srcArray: null, srcPitch: from.Pitch,
    dstXInBytes: 0, dstY: 0, dstMemoryType: to.MemoryType, dstHost: to.Host, dstDevice: to.Device, dstArray: null, dstPitch: to.Pitch,
    WidthInBytes: widthBytes, Height: height,
  };
  check('cuMemcpy2DAsync_v2', driver().cuMemcpy2DAsync_v2(copy, stream.handle));
  stream.synchronize();
}

/** Synchronous and stream-ordered copies and fills over any device range. */
export const copies = {
  /**
   * Host bytes to the device; they are there when it returns, for work on any stream. From pageable
   * memory cuMemcpyHtoD returns once the bytes are staged, before its DMA lands, and runs on the
   * legacy default stream, which the library's non-blocking streams do not wait for: without the
   * wait below, a kernel enqueued next could read the old bytes (seen on a GPU shared with another
   * process, session 31).
   */
  fromHost(dst: DeviceRange, src: ArrayBufferView, dstOffset = 0): void {
    checkFits('src', dst, dstOffset, hostBytes(src));
    check('cuMemcpyHtoD_v2', driver().cuMemcpyHtoD_v2(dst.ptr + BigInt(dstOffset), src, hostBytes(src)));
    check('cuStreamSynchronize', driver().cuStreamSynchronize(LEGACY_STREAM));
  },
  /**
   * Rows of `widthBytes` from host rows `srcPitch` apart to device rows `dstPitch` apart, without a
   * host-side repacking copy; done when it returns (the stream is synchronized).
   */
  fromHost2D(dst: DeviceRange, dstPitch: number, src: ArrayBufferView, srcPitch: number, widthBytes: number, height: number, stream: Stream): void {
    copyRows2D('toDevice', src, srcPitch, dst, dstPitch, widthBytes, height, stream);
  },
  /**
   * Rows of `widthBytes` from device rows `srcPitch` apart to host rows `dstPitch` apart (fromHost2D
   * the other way); there when it returns (the stream is synchronized).
   */
  toHost2D(dst: ArrayBufferView, dstPitch: number, src: DeviceRange, srcPitch: number, widthBytes: number, height: number, stream: Stream): void {
    copyRows2D('toHost', dst, dstPitch, src, srcPitch, widthBytes, height, stream);
  },
  /** Device bytes to the host, there when it returns; work of other streams that writes them must be synchronized first. */
  toHost(dst: ArrayBufferView, src: DeviceRange, srcOffset = 0): void {
    checkFits('dst', src, srcOffset, hostBytes(dst));
    check('cuMemcpyDtoH_v2', driver().cuMemcpyDtoH_v2(dst, src.ptr + BigInt(srcOffset), hostBytes(dst)));
  },
  /** Device to device, done when it returns (cuMemcpyDtoD itself does not wait for the copy). */
  deviceToDevice(dst: DeviceRange, src: DeviceRange, bytes: number): void {
    checkFits('dst', dst, 0, bytes);
    checkFits('src', src, 0, bytes);
    check('cuMemcpyDtoD_v2', driver().cuMemcpyDtoD_v2(dst.ptr, src.ptr, bytes));
    check('cuStreamSynchronize', driver().cuStreamSynchronize(LEGACY_STREAM));
  },
  deviceToDeviceAsync(dst: DeviceRange, src: DeviceRange, bytes: number, stream: Stream): void {
    checkFits('dst', dst, 0, bytes);
    checkFits('src', src, 0, bytes);
    check('cuMemcpyDtoDAsync_v2', driver().cuMemcpyDtoDAsync_v2(dst.ptr, src.ptr, bytes, stream.handle));
  },
  /** Fill with a 32-bit pattern (count words). */
  fill32Async(dst: DeviceRange, value: number, count: number, stream: Stream): void {
    checkFits('count', dst, 0, count * 4);
    check('cuMemsetD32Async', driver().cuMemsetD32Async(dst.ptr, value >>> 0, count, stream.handle));
  },
  fill16Async(dst: DeviceRange, value: number, count: number, stream: Stream): void {
    checkFits('count', dst, 0, count * 2);
    check('cuMemsetD16Async', driver().cuMemsetD16Async(dst.ptr, value & 0xffff, count, stream.handle));
  },
  fill8Async(dst: DeviceRange, value: number, count: number, stream: Stream): void {
    checkFits('count', dst, 0, count);
    check('cuMemsetD8Async', driver().cuMemsetD8Async(dst.ptr, value & 0xff, count, stream.handle));
  },
};

export class DeviceBuffer implements DeviceRange {
  readonly bytes: number;
  private p: DevicePtr | undefined;

  constructor(bytes: number) {
    checkBytes('bytes', bytes);
    const d = driver();
    quiesceDevice();
    this.p = outHandle('cuMemAlloc_v2', (s) => d.cuMemAlloc_v2(s, bytes), bytes);
    this.bytes = bytes;
    live.deviceBuffers++;
    live.deviceBytes += bytes;
  }

  get ptr(): DevicePtr {
    if (this.p === undefined) throw new DisposedError('DeviceBuffer');
    return this.p;
  }

  get disposed(): boolean {
    return this.p === undefined;
  }

  dispose(): void {
    if (this.p === undefined) return;
    const p = this.p;
    this.p = undefined;
    live.deviceBuffers--;
    live.deviceBytes -= this.bytes;
    quiesceDevice();
    check('cuMemFree_v2', driver().cuMemFree_v2(p));
  }
}

/** A slice of an arena: a plain device range with a name for error messages. */
export interface DeviceSlice extends DeviceRange {
  readonly name: string;
}

export const ARENA_ALIGNMENT = 256;

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * A fixed set of named slices in one allocation: plan the sizes, then allocate once.
 *   const arena = DeviceArena.allocate({ codes: 2_000_000, list: 49152 });
 */
export class DeviceArena<Names extends string = string> {
  readonly buffer: DeviceBuffer;
  readonly slices: Readonly<Record<Names, DeviceSlice>>;

  private constructor(buffer: DeviceBuffer, slices: Record<Names, DeviceSlice>) {
    this.buffer = buffer;
    this.slices = slices;
  }

  static allocate<N extends string>(sizes: Readonly<Record<N, number>>): DeviceArena<N> {
    let total = 0;
    const offsets = {} as Record<N, number>;
    for (const name of Object.keys(sizes) as N[]) {
      const bytes = sizes[name];
      if (!Number.isInteger(bytes) || bytes < 0) throw new ConfigError(`arena slice ${name}`, 'a non-negative byte count', bytes);
      offsets[name] = total;
      total += alignUp(Math.max(bytes, 1), ARENA_ALIGNMENT);
    }
    const buffer = new DeviceBuffer(Math.max(total, ARENA_ALIGNMENT));
    const slices = {} as Record<N, DeviceSlice>;
    for (const name of Object.keys(sizes) as N[]) {
      slices[name] = Object.freeze({ name, ptr: buffer.ptr + BigInt(offsets[name]), bytes: sizes[name] });
    }
    return new DeviceArena(buffer, Object.freeze(slices));
  }

  get bytes(): number {
    return this.buffer.bytes;
  }

  dispose(): void {
    this.buffer.dispose();
  }
}

/** Page-locked host memory with an ArrayBuffer view onto it. */
export class PinnedBuffer {
  readonly bytes: number;
  private p: Handle | undefined;
  private view: ArrayBuffer | undefined;

  constructor(bytes: number) {
    checkBytes('bytes', bytes);
    const d = driver();
    quiesceDevice();
    this.p = outHandle('cuMemAllocHost_v2', (s) => d.cuMemAllocHost_v2(s, bytes), bytes);
    this.bytes = bytes;
    this.view = koffi.view(this.p, bytes);
    live.pinnedBuffers++;
    live.pinnedBytes += bytes;
  }

  get ptr(): Handle {
    if (this.p === undefined) throw new DisposedError('PinnedBuffer');
    return this.p;
  }

  /** The pinned bytes as an ArrayBuffer (valid until dispose). */
  get arrayBuffer(): ArrayBuffer {
    if (this.view === undefined) throw new DisposedError('PinnedBuffer');
    return this.view;
  }

  /** Stream-ordered copy host(pinned)[srcOffset…] → device; truly asynchronous. */
  copyToDeviceAsync(dst: DeviceRange, bytes: number, stream: Stream, srcOffset = 0, dstOffset = 0): void {
    checkFits('bytes', dst, dstOffset, bytes);
    if (srcOffset + bytes > this.bytes) throw new ShapeError('bytes', `at most ${this.bytes - srcOffset}`, `${bytes}`);
    check('cuMemcpyHtoDAsync_v2', driver().cuMemcpyHtoDAsync_v2(dst.ptr + BigInt(dstOffset), this.ptr + BigInt(srcOffset), bytes, stream.handle));
  }

  /** Stream-ordered copy device → host(pinned)[dstOffset…]. */
  copyFromDeviceAsync(src: DeviceRange, bytes: number, stream: Stream, dstOffset = 0, srcOffset = 0): void {
    checkFits('bytes', src, srcOffset, bytes);
    if (dstOffset + bytes > this.bytes) throw new ShapeError('bytes', `at most ${this.bytes - dstOffset}`, `${bytes}`);
    check('cuMemcpyDtoHAsync_v2', driver().cuMemcpyDtoHAsync_v2(this.ptr + BigInt(dstOffset), src.ptr + BigInt(srcOffset), bytes, stream.handle));
  }

  dispose(): void {
    if (this.p === undefined) return;
    const p = this.p;
    this.p = undefined;
    this.view = undefined;
    live.pinnedBuffers--;
    live.pinnedBytes -= this.bytes;
    quiesceDevice();
    check('cuMemFreeHost', driver().cuMemFreeHost(p));
  }
}
