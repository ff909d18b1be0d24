/**
 * Kernel launches with argument blocks packed once in native memory.
 *
 * cuLaunchKernel takes `void **kernelParams`: an array of pointers, one per argument, each to
 * the argument's value. A LaunchArgs owns a block holding the values (8 bytes a slot) followed by
 * that pointer array, so a launch passes one bigint and allocates nothing in JS; changing an
 * argument is a DataView write into the block.
 * The block is a JS ArrayBuffer (its backing store lives outside the moving heap, so its address is
 * stable while the object is alive), not koffi.alloc + koffi.view: koffi 3.3 keeps ≈ 220 bytes per
 * view forever, which a serving process creating argument blocks per request accumulates (soak).
 */
import koffi from 'koffi';
import { ConfigError, DisposedError } from '../errors.js';
import { check, driver } from './driver.js';
import type { Kernel } from './module.js';
import type { Stream } from './stream.js';

export type ArgKind = 'ptr' | 'u64' | 'i32' | 'u32' | 'f32';
export type ArgValue<K extends ArgKind> = K extends 'ptr' | 'u64' ? bigint : number;
/** The values of an argument list, in order (a tuple when `Kinds` is one). */
export type ArgValues<Kinds extends readonly ArgKind[]> = { [I in keyof Kinds]: ArgValue<Kinds[I]> };

const SLOT = 8;

export class LaunchArgs<Kinds extends readonly ArgKind[] = readonly ArgKind[]> {
  readonly kinds: Kinds;
  private block: ArrayBuffer | undefined;
  private view: DataView | undefined;
  /** The `void **kernelParams` address to pass to cuLaunchKernel. */
  private paramsAddr: bigint;

  constructor(kinds: Kinds) {
    this.kinds = kinds;
    const n = Math.max(kinds.length, 1);
    this.block = new ArrayBuffer(n * SLOT * 2);
    this.view = new DataView(this.block);
    const base = koffi.address(this.block) as bigint;
    this.paramsAddr = base + BigInt(n * SLOT);
    for (let i = 0; i < kinds.length; i++) this.view.setBigUint64(n * SLOT + i * SLOT, base + BigInt(i * SLOT), true);
  }

  private dv(): DataView {
    if (this.view === undefined) throw new DisposedError('LaunchArgs');
    return this.view;
  }

  set<I extends number>(index: I, value: ArgValue<Kinds[I]>): this {
    const kind = this.kinds[index];
    const dv = this.dv();
    const at = index * SLOT;
    switch (kind) {
      case 'ptr':
      case 'u64':
        if (typeof value !== 'bigint') throw new ConfigError(`argument ${index} (${kind})`, 'a bigint', value);
        dv.setBigUint64(at, value, true);
        break;
      case 'i32':
        dv.setInt32(at, value as number, true);
        break;
      case 'u32':
        dv.setUint32(at, value as number, true);
        break;
      case 'f32':
        dv.setFloat32(at, value as number, true);
        break;
      default:
        throw new ConfigError('argument index', `0 … ${this.kinds.length - 1}`, index);
    }
    return this;
  }

  /** Set every argument in order. */
  setAll(values: ArgValues<Kinds>): this {
    (values as readonly (number | bigint)[]).forEach((v, i) => this.set(i, v as ArgValue<Kinds[number]>));
    return this;
  }

  get address(): bigint {
    if (this.block === undefined) throw new DisposedError('LaunchArgs');
    return this.paramsAddr;
  }

  dispose(): void {
    if (this.block === undefined) return;
    this.block = undefined; // the garbage collector frees it
    this.view = undefined;
  }
}

export interface LaunchShape {
  readonly grid: readonly [number, number, number];
  readonly block: readonly [number, number, number];
  readonly sharedBytes?: number;
  /**
   * Programmatic dependent launch (sm_90; cuLaunchKernelEx with programmatic stream serialization):
   * the kernel's blocks may start while the kernel before it on the stream still runs, once every
   * block of that one has run `griddepcontrol.launch_dependents` (or exited). The kernel must run
   * `griddepcontrol.wait` before it reads anything that one, or any launched before it, writes.
   */
  readonly overlapPrevious?: boolean;
}

// cuLaunchKernelEx's CUlaunchConfig (56 bytes, padded to 64) and one CUlaunchAttribute (72 bytes)
// after it, in a block reused by every such launch (the driver reads it during the call). Offsets
// from cuda.h (CUDA 13): grid 0/4/8, block 12/16/20, sharedMemBytes 24, hStream 32, attrs 40,
// numAttrs 48; an attribute's id at 0 and its value at 8.
const CONFIG_BYTES = 64;
const ATTR_BYTES = 72;
const CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6;
let exConfig: { block: ArrayBuffer; view: DataView; address: bigint } | undefined;
function launchConfig(shape: LaunchShape, sharedBytes: number, stream: Stream): bigint {
  if (exConfig === undefined) {
    const block = new ArrayBuffer(CONFIG_BYTES + ATTR_BYTES);
    exConfig = { block, view: new DataView(block), address: koffi.address(block) as bigint };
    // The attribute: programmatic stream serialization allowed (value.programmaticStreamSerializationAllowed = 1).
    exConfig.view.setUint32(CONFIG_BYTES, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, true);
    exConfig.view.setInt32(CONFIG_BYTES + 8, 1, true);
  }
  const v = exConfig.view;
  shape.grid.forEach((g, i) => v.setUint32(4 * i, g, true));
  shape.block.forEach((b, i) => v.setUint32(12 + 4 * i, b, true));
  v.setUint32(24, sharedBytes, true);
  v.setBigUint64(32, stream.handle, true);
  v.setBigUint64(40, exConfig.address + BigInt(CONFIG_BYTES), true);
  v.setUint32(48, 1, true);
  return exConfig.address;
}

/**
 * Enqueue `kernel` on `stream` (opting the kernel in to its dynamic shared memory first, where that
 * is past the default); launch-configuration errors throw CudaError(cuLaunchKernel), or
 * CudaError(cuLaunchKernelEx) with `overlapPrevious`.
 */
export function launch(kernel: Kernel, shape: LaunchShape, args: LaunchArgs, stream: Stream): void {
  const [gx, gy, gz] = shape.grid;
  const [bx, by, bz] = shape.block;
  const sharedBytes = shape.sharedBytes ?? 0;
  kernel.allowDynamicShared(sharedBytes);
  if (shape.overlapPrevious === true) {
    const rc = driver().cuLaunchKernelEx(launchConfig(shape, sharedBytes, stream), kernel.handle, args.address, null);
    if (rc !== 0) check(`cuLaunchKernelEx(${kernel.name})`, rc);
    return;
  }
  const rc = driver().cuLaunchKernel(kernel.handle, gx, gy, gz, bx, by, bz, sharedBytes, stream.handle, args.address, null);
  if (rc !== 0) check(`cuLaunchKernel(${kernel.name})`, rc);
}

/**
 * Enqueue `kernel` with these argument values through a one-shot argument block. The driver copies
 * the parameters at launch (and into the node when capturing), so the block is freed right after.
 */
export function launchWith<Kinds extends readonly ArgKind[]>(
  kernel: Kernel,
  shape: LaunchShape,
  kinds: Kinds,
  values: ArgValues<Kinds>,
  stream: Stream,
): void {
  const args = new LaunchArgs(kinds);
  try {
    args.setAll(values);
    launch(kernel, shape, args, stream);
  } finally {
    args.dispose();
  }
}
