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
}

/**
 * Enqueue `kernel` on `stream` (opting the kernel in to its dynamic shared memory first, where that
 * is past the default); launch-configuration errors throw CudaError(cuLaunchKernel).
 */
export function launch(kernel: Kernel, shape: LaunchShape, args: LaunchArgs, stream: Stream): void {
  const [gx, gy, gz] = shape.grid;
  const [bx, by, bz] = shape.block;
  const sharedBytes = shape.sharedBytes ?? 0;
  kernel.allowDynamicShared(sharedBytes);
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
