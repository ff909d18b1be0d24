/** A thin, typed binding of the CUDA driver API (see each module's header). */
export { cudaAvailable, driver, check, type DevicePtr, type Handle } from './driver.js';
export { CudaContext, deviceCount, queryDevice, type DeviceInfo } from './context.js';
export { Stream, Event } from './stream.js';
export {
  DeviceBuffer,
  DeviceArena,
  PinnedBuffer,
  allocationStats,
  copies,
  type DeviceRange,
  type DeviceSlice,
} from './memory.js';
export { Module, Kernel, type KernelAttributes } from './module.js';
export { LaunchArgs, launch, type ArgKind, type ArgValue, type ArgValues, type LaunchShape } from './launch.js';
export { GraphCache, GraphExec } from './graph.js';
export { ResidentLaunch, type ResidentTimeouts } from './resident.js';
