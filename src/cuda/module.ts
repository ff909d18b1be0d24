/**
 * Kernel images (fatbin or PTX) loaded with cuModuleLoadData, and their functions.
 */
import { DisposedError } from '../errors.js';
import { type Handle, check, driver, out, outHandle } from './driver.js';
import { quiesceDevice } from './resident-guard.js';

const FUNC_ATTR = {
  maxThreadsPerBlock: 0,
  staticSharedBytes: 1,
  localBytesPerThread: 3,
  numRegs: 4,
  maxDynamicSharedBytes: 8,
} as const;

export interface KernelAttributes {
  readonly maxThreadsPerBlock: number;
  readonly staticSharedBytes: number;
  readonly localBytesPerThread: number;
  readonly numRegs: number;
  readonly maxDynamicSharedBytes: number;
}

export class Kernel {
  /** The dynamic shared-memory limit as last read or raised (undefined: not read yet). */
  private dynamicSharedLimit: number | undefined;
  /** occupancy() by block size and dynamic shared bytes. */
  private readonly occupancies = new Map<string, number>();

  constructor(
    readonly name: string,
    readonly handle: Handle,
  ) {}

  attributes(): KernelAttributes {
    return {
      maxThreadsPerBlock: this.attribute(FUNC_ATTR.maxThreadsPerBlock),
      staticSharedBytes: this.attribute(FUNC_ATTR.staticSharedBytes),
      localBytesPerThread: this.attribute(FUNC_ATTR.localBytesPerThread),
      numRegs: this.attribute(FUNC_ATTR.numRegs),
      maxDynamicSharedBytes: this.attribute(FUNC_ATTR.maxDynamicSharedBytes),
    };
  }

  private attribute(a: number): number {
    const d = driver();
    return out(`cuFuncGetAttribute(${this.name})`, 0, (s) => d.cuFuncGetAttribute(s, a, this.handle));
  }

  /**
   * Make sure a launch may use `bytes` of dynamic shared memory per block: beyond the default
   * (48 KB less the static bytes) the kernel must opt in, once (launch() calls this). A request past
   * the device's per-block maximum throws CudaError(cuFuncSetAttribute).
   */
  allowDynamicShared(bytes: number): void {
    if (bytes <= (this.dynamicSharedLimit ?? 0)) return;
    this.dynamicSharedLimit ??= this.attribute(FUNC_ATTR.maxDynamicSharedBytes);
    if (bytes <= this.dynamicSharedLimit) return;
    check(`cuFuncSetAttribute(${this.name})`, driver().cuFuncSetAttribute(this.handle, FUNC_ATTR.maxDynamicSharedBytes, bytes));
    this.dynamicSharedLimit = bytes;
  }

  /**
   * Resident blocks per multiprocessor at this block size (opting in to `dynamicSharedBytes`, as a
   * launch would). Fixed for the function on its device, so each shape is asked of the driver once
   * (a build plans its round grid from it on every call).
   */
  occupancy(blockSize: number, dynamicSharedBytes = 0): number {
    const key = `${blockSize}/${dynamicSharedBytes}`;
    let blocks = this.occupancies.get(key);
    if (blocks === undefined) {
      this.allowDynamicShared(dynamicSharedBytes);
      const d = driver();
      blocks = out('cuOccupancyMaxActiveBlocksPerMultiprocessor', 0, (s) =>
        d.cuOccupancyMaxActiveBlocksPerMultiprocessor(s, this.handle, blockSize, dynamicSharedBytes),
      );
      this.occupancies.set(key, blocks);
    }
    return blocks;
  }
}

export class Module {
  private h: Handle | undefined;
  private readonly kernels = new Map<string, Kernel>();

  constructor(image: Uint8Array, readonly source = 'image') {
    const d = driver();
    // PTX must be NUL-terminated text; a fatbin/cubin is used as is.
    const bytes = isPtx(image) && image[image.length - 1] !== 0 ? withNul(image) : image;
    quiesceDevice();
    this.h = outHandle(`cuModuleLoadData(${source})`, (s) => d.cuModuleLoadData(s, bytes));
  }

  get handle(): Handle {
    if (this.h === undefined) throw new DisposedError(`Module(${this.source})`);
    return this.h;
  }

  kernel(name: string): Kernel {
    let k = this.kernels.get(name);
    if (k === undefined) {
      const d = driver();
      const mod = this.handle;
      k = new Kernel(name, outHandle(`cuModuleGetFunction(${name})`, (s) => d.cuModuleGetFunction(s, mod, name)));
      this.kernels.set(name, k);
    }
    return k;
  }

  dispose(): void {
    if (this.h === undefined) return;
    const h = this.h;
    this.h = undefined;
    this.kernels.clear();
    quiesceDevice();
    check('cuModuleUnload', driver().cuModuleUnload(h));
  }
}

function isPtx(image: Uint8Array): boolean {
  const head = Buffer.from(image.subarray(0, 256)).toString('latin1');
  return head.includes('.version') || head.startsWith('//');
}

function withNul(image: Uint8Array): Uint8Array {
  const out = new Uint8Array(image.length + 1);
  out.set(image);
  return out;
}
