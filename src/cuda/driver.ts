/**
 * The CUDA driver API through koffi: libcuda.so.1 is loaded lazily on first use, every call's
 * CUresult is checked, and a failure throws CudaError naming the call, the error name and text.
 *
 * Handles (CUcontext, CUstream, CUevent, CUmodule, CUfunction, CUgraph, CUgraphExec) and device
 * pointers are bigint, as koffi 3 represents pointers. Only the hot-path calls (graph launch,
 * kernel launch, stream sync, async copies) take no output arguments, so they allocate nothing.
 */
import koffi from 'koffi';
import { CudaError, CudaOutOfMemoryError, CudaUnavailableError } from '../errors.js';

export type Handle = bigint;
export type DevicePtr = bigint;
/** A host pointer: a typed array (koffi passes its data pointer) or a raw address. */
export type HostPtr = ArrayBufferView | bigint;
type Out<T> = [T];

export const CUDA_SUCCESS = 0;
export const CUDA_ERROR_OUT_OF_MEMORY = 2;
export const CUDA_ERROR_NOT_READY = 600;

export const CU_MEMORYTYPE_HOST = 1;
export const CU_MEMORYTYPE_DEVICE = 2;

/** CUDA_MEMCPY2D: a pitched 2-D copy (rows of WidthInBytes, Height rows). */
export interface Memcpy2D {
  srcXInBytes: number;
  srcY: number;
  srcMemoryType: number;
  srcHost: bigint | null;
  srcDevice: bigint;
  srcArray: null;
  srcPitch: number;
  dstXInBytes: number;
  dstY: number;
  dstMemoryType: number;
  dstHost: bigint | null;
  dstDevice: bigint;
  dstArray: null;
  dstPitch: number;
  WidthInBytes: number;
  Height: number;
}

function declareStructs(): void {
  koffi.struct('CUDA_MEMCPY2D', {
    srcXInBytes: 'size_t',
    srcY: 'size_t',
    srcMemoryType: 'int',
    srcHost: 'void *',
    srcDevice: 'uint64_t',
    srcArray: 'void *',
    srcPitch: 'size_t',
    dstXInBytes: 'size_t',
    dstY: 'size_t',
    dstMemoryType: 'int',
    dstHost: 'void *',
    dstDevice: 'uint64_t',
    dstArray: 'void *',
    dstPitch: 'size_t',
    WidthInBytes: 'size_t',
    Height: 'size_t',
  });
}

/** Typed signatures of the driver entry points we use (CUresult = number). */
export interface DriverApi {
  cuInit(flags: number): number;
  cuDriverGetVersion(v: Out<number>): number;
  cuDeviceGetCount(n: Out<number>): number;
  cuDeviceGet(dev: Out<number>, ordinal: number): number;
  cuDeviceGetName(name: Uint8Array, len: number, dev: number): number;
  cuDeviceGetAttribute(v: Out<number>, attrib: number, dev: number): number;
  cuDeviceTotalMem_v2(bytes: Out<number>, dev: number): number;
  cuDevicePrimaryCtxRetain(ctx: Out<Handle | null>, dev: number): number;
  cuDevicePrimaryCtxRelease_v2(dev: number): number;
  cuDevicePrimaryCtxSetFlags_v2(dev: number, flags: number): number;
  cuDevicePrimaryCtxGetState(dev: number, flags: Out<number>, active: Out<number>): number;
  cuCtxSetCurrent(ctx: Handle): number;
  cuCtxSynchronize(): number;
  cuStreamCreate(stream: Out<Handle | null>, flags: number): number;
  cuStreamDestroy_v2(stream: Handle): number;
  cuStreamSynchronize(stream: Handle): number;
  cuStreamQuery(stream: Handle): number;
  cuEventCreate(event: Out<Handle | null>, flags: number): number;
  cuEventRecord(event: Handle, stream: Handle): number;
  cuEventSynchronize(event: Handle): number;
  cuEventElapsedTime(ms: Out<number>, start: Handle, end: Handle): number;
  cuEventDestroy_v2(event: Handle): number;
  cuMemAlloc_v2(ptr: Out<Handle | null>, bytes: number): number;
  cuMemFree_v2(ptr: DevicePtr): number;
  cuMemGetInfo_v2(free: Out<number>, total: Out<number>): number;
  cuMemAllocHost_v2(ptr: Out<Handle | null>, bytes: number): number;
  cuMemFreeHost(ptr: Handle): number;
  cuMemcpyHtoD_v2(dst: DevicePtr, src: HostPtr, bytes: number): number;
  cuMemcpyDtoH_v2(dst: HostPtr, src: DevicePtr, bytes: number): number;
  cuMemcpyDtoD_v2(dst: DevicePtr, src: DevicePtr, bytes: number): number;
  cuMemcpyHtoDAsync_v2(dst: DevicePtr, src: HostPtr, bytes: number, stream: Handle): number;
  cuMemcpyDtoHAsync_v2(dst: HostPtr, src: DevicePtr, bytes: number, stream: Handle): number;
  cuMemcpyDtoDAsync_v2(dst: DevicePtr, src: DevicePtr, bytes: number, stream: Handle): number;
  cuMemcpy2DAsync_v2(copy: Memcpy2D, stream: Handle): number;
  cuMemsetD8Async(dst: DevicePtr, value: number, count: number, stream: Handle): number;
  cuMemsetD16Async(dst: DevicePtr, value: number, count: number, stream: Handle): number;
  cuMemsetD32Async(dst: DevicePtr, value: number, count: number, stream: Handle): number;
  cuStreamWaitValue32_v2(stream: Handle, addr: DevicePtr, value: number, flags: number): number;
  cuStreamWriteValue32_v2(stream: Handle, addr: DevicePtr, value: number, flags: number): number;
  cuModuleLoadData(mod: Out<Handle | null>, image: Uint8Array): number;
  cuModuleUnload(mod: Handle): number;
  cuModuleGetFunction(fn: Out<Handle | null>, mod: Handle, name: string): number;
  cuFuncSetAttribute(fn: Handle, attrib: number, value: number): number;
  cuFuncGetAttribute(v: Out<number>, attrib: number, fn: Handle): number;
  cuOccupancyMaxActiveBlocksPerMultiprocessor(n: Out<number>, fn: Handle, blockSize: number, dynSmem: number): number;
  cuLaunchKernel(
    fn: Handle,
    gx: number, gy: number, gz: number,
    bx: number, by: number, bz: number,
    sharedBytes: number,
    stream: Handle,
    params: bigint,
    extra: null,
  ): number;
  cuLaunchKernelEx(config: bigint, fn: Handle, params: bigint, extra: null): number;
  cuStreamBeginCapture_v2(stream: Handle, mode: number): number;
  cuStreamEndCapture(stream: Handle, graph: Out<Handle | null>): number;
  cuGraphInstantiateWithFlags(exec: Out<Handle | null>, graph: Handle, flags: number): number;
  cuGraphUpload(exec: Handle, stream: Handle): number;
  cuGraphLaunch(exec: Handle, stream: Handle): number;
  cuGraphExecDestroy(exec: Handle): number;
  cuGraphDestroy(graph: Handle): number;
  cuGetErrorName(code: number, name: Out<string | null>): number;
  cuGetErrorString(code: number, text: Out<string | null>): number;
}

const SIGNATURES: Record<keyof DriverApi, string> = {
  cuInit: 'int cuInit(unsigned int flags)',
  cuDriverGetVersion: 'int cuDriverGetVersion(_Out_ int *v)',
  cuDeviceGetCount: 'int cuDeviceGetCount(_Out_ int *n)',
  cuDeviceGet: 'int cuDeviceGet(_Out_ int *dev, int ordinal)',
  cuDeviceGetName: 'int cuDeviceGetName(_Out_ uint8_t *name, int len, int dev)',
  cuDeviceGetAttribute: 'int cuDeviceGetAttribute(_Out_ int *v, int attrib, int dev)',
  cuDeviceTotalMem_v2: 'int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int dev)',
  cuDevicePrimaryCtxRetain: 'int cuDevicePrimaryCtxRetain(_Out_ void **ctx, int dev)',
  cuDevicePrimaryCtxRelease_v2: 'int cuDevicePrimaryCtxRelease_v2(int dev)',
  cuDevicePrimaryCtxSetFlags_v2: 'int cuDevicePrimaryCtxSetFlags_v2(int dev, unsigned int flags)',
  cuDevicePrimaryCtxGetState: 'int cuDevicePrimaryCtxGetState(int dev, _Out_ unsigned int *flags, _Out_ int *active)',
  cuCtxSetCurrent: 'int cuCtxSetCurrent(void *ctx)',
  cuCtxSynchronize: 'int cuCtxSynchronize()',
  cuStreamCreate: 'int cuStreamCreate(_Out_ void **stream, unsigned int flags)',
  cuStreamDestroy_v2: 'int cuStreamDestroy_v2(void *stream)',
  cuStreamSynchronize: 'int cuStreamSynchronize(void *stream)',
  cuStreamQuery: 'int cuStreamQuery(void *stream)',
  cuEventCreate: 'int cuEventCreate(_Out_ void **event, unsigned int flags)',
  cuEventRecord: 'int cuEventRecord(void *event, void *stream)',
  cuEventSynchronize: 'int cuEventSynchronize(void *event)',
  cuEventElapsedTime: 'int cuEventElapsedTime_v2(_Out_ float *ms, void *start, void *end)',
  cuEventDestroy_v2: 'int cuEventDestroy_v2(void *event)',
  cuMemAlloc_v2: 'int cuMemAlloc_v2(_Out_ void **ptr, size_t bytes)',
  cuMemFree_v2: 'int cuMemFree_v2(uint64_t ptr)',
  cuMemGetInfo_v2: 'int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)',
  cuMemAllocHost_v2: 'int cuMemAllocHost_v2(_Out_ void **ptr, size_t bytes)',
  cuMemFreeHost: 'int cuMemFreeHost(void *ptr)',
  cuMemcpyHtoD_v2: 'int cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t bytes)',
  cuMemcpyDtoH_v2: 'int cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t bytes)',
  cuMemcpyDtoD_v2: 'int cuMemcpyDtoD_v2(uint64_t dst, uint64_t src, size_t bytes)',
  cuMemcpyHtoDAsync_v2: 'int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, void *stream)',
  cuMemcpyDtoHAsync_v2: 'int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, void *stream)',
  cuMemcpyDtoDAsync_v2: 'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void *stream)',
  cuMemcpy2DAsync_v2: 'int cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D *copy, void *stream)',
  cuMemsetD8Async: 'int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t count, void *stream)',
  cuMemsetD16Async: 'int cuMemsetD16Async(uint64_t dst, uint16_t value, size_t count, void *stream)',
  cuMemsetD32Async: 'int cuMemsetD32Async(uint64_t dst, uint32_t value, size_t count, void *stream)',
  cuStreamWaitValue32_v2: 'int cuStreamWaitValue32_v2(void *stream, uint64_t addr, uint32_t value, unsigned int flags)',
  cuStreamWriteValue32_v2: 'int cuStreamWriteValue32_v2(void *stream, uint64_t addr, uint32_t value, unsigned int flags)',
  cuModuleLoadData: 'int cuModuleLoadData(_Out_ void **mod, const void *image)',
  cuModuleUnload: 'int cuModuleUnload(void *mod)',
  cuModuleGetFunction: 'int cuModuleGetFunction(_Out_ void **fn, void *mod, const char *name)',
  cuFuncSetAttribute: 'int cuFuncSetAttribute(void *fn, int attrib, int value)',
  cuFuncGetAttribute: 'int cuFuncGetAttribute(_Out_ int *v, int attrib, void *fn)',
  cuOccupancyMaxActiveBlocksPerMultiprocessor:
    'int cuOccupancyMaxActiveBlocksPerMultiprocessor(_Out_ int *n, void *fn, int blockSize, size_t dynSmem)',
  cuLaunchKernel:
    'int cuLaunchKernel(void *fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int sharedBytes, void *stream, void *params, void *extra)',
  cuLaunchKernelEx: 'int cuLaunchKernelEx(uint64_t config, void *fn, void *params, void *extra)',
  cuStreamBeginCapture_v2: 'int cuStreamBeginCapture_v2(void *stream, int mode)',
  cuStreamEndCapture: 'int cuStreamEndCapture(void *stream, _Out_ void **graph)',
  cuGraphInstantiateWithFlags: 'int cuGraphInstantiateWithFlags(_Out_ void **exec, void *graph, unsigned long long flags)',
  cuGraphUpload: 'int cuGraphUpload(void *exec, void *stream)',
  cuGraphLaunch: 'int cuGraphLaunch(void *exec, void *stream)',
  cuGraphExecDestroy: 'int cuGraphExecDestroy(void *exec)',
  cuGraphDestroy: 'int cuGraphDestroy(void *graph)',
  cuGetErrorName: 'int cuGetErrorName(int code, _Out_ const char **name)',
  cuGetErrorString: 'int cuGetErrorString(int code, _Out_ const char **text)',
};

let api: DriverApi | undefined;
let unavailable: CudaUnavailableError | undefined;

/** Where the driver library is looked for; PQCACHE_LIBCUDA overrides (tests use a bogus path). */
export function driverLibraryPath(): string {
  return process.env.PQCACHE_LIBCUDA ?? 'libcuda.so.1';
}

/** The driver, loaded and cuInit-ed on first use. Throws CudaUnavailableError if there is none. */
export function driver(): DriverApi {
  if (api !== undefined) return api;
  if (unavailable !== undefined) throw unavailable;
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load(driverLibraryPath());
  } catch (e) {
    unavailable = new CudaUnavailableError(`no loadable ${driverLibraryPath()} (${(e as Error).message.split('\n')[0]})`);
    throw unavailable;
  }
  declareStructs();
  const fns: Partial<Record<keyof DriverApi, unknown>> = {};
  for (const [name, sig] of Object.entries(SIGNATURES) as Array<[keyof DriverApi, string]>) {
    try {
      fns[name] = lib.func(sig);
    } catch (e) {
      unavailable = new CudaUnavailableError(`a driver without ${name} (${(e as Error).message}); a CUDA 12.8+ driver is required`);
      throw unavailable;
    }
  }
  const loaded = fns as DriverApi;
  const rc = loaded.cuInit(0);
  if (rc !== CUDA_SUCCESS) {
    unavailable = new CudaUnavailableError(`cuInit failed with ${errorName(loaded, rc)} (${rc})`);
    throw unavailable;
  }
  api = loaded;
  return api;
}

/** True when a driver and at least one GPU are present (never throws). */
export function cudaAvailable(): { ok: true } | { ok: false; reason: string } {
  try {
    const d = driver();
    const n: Out<number> = [0];
    check('cuDeviceGetCount', d.cuDeviceGetCount(n));
    if (n[0] < 1) return { ok: false, reason: 'a driver with no GPU' };
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: e instanceof CudaUnavailableError ? e.reason : (e as Error).message };
  }
}

function errorName(d: DriverApi, code: number): string {
  const out: Out<string | null> = [null];
  return d.cuGetErrorName(code, out) === CUDA_SUCCESS && out[0] ? out[0] : `CUDA_ERROR_${code}`;
}

function errorText(d: DriverApi, code: number): string {
  const out: Out<string | null> = [null];
  return d.cuGetErrorString(code, out) === CUDA_SUCCESS && out[0] ? out[0] : 'unknown error';
}

/** Throw CudaError (CudaOutOfMemoryError for code 2) unless rc is CUDA_SUCCESS. */
export function check(call: string, rc: number, requestedBytes = 0): void {
  if (rc === CUDA_SUCCESS) return;
  const d = api;
  const name = d ? errorName(d, rc) : `CUDA_ERROR_${rc}`;
  const text = d ? errorText(d, rc) : 'driver not loaded';
  if (rc === CUDA_ERROR_OUT_OF_MEMORY) throw new CudaOutOfMemoryError(call, rc, name, text, requestedBytes);
  throw new CudaError(call, rc, name, text);
}

/** Run a call with an output slot and return the slot's value, checked. */
export function out<T>(call: string, init: T, f: (slot: Out<T>) => number): T {
  const slot: Out<T> = [init];
  check(call, f(slot));
  return slot[0];
}

/** Like out() for handle-returning calls: the handle must be non-null. */
export function outHandle(call: string, f: (slot: Out<Handle | null>) => number, requestedBytes = 0): Handle {
  const slot: Out<Handle | null> = [null];
  check(call, f(slot), requestedBytes);
  const h = slot[0];
  if (h === null || h === undefined) throw new CudaError(call, -1, 'NULL_HANDLE', 'the driver returned success and a null handle');
  return typeof h === 'bigint' ? h : BigInt(h);
}
