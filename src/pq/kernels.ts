/**
 * Locating and loading the compiled kernel families (kernels/dist/<family>.fatbin, built by
 * `npm run build:kernels`). One Module per family and context, loaded on first use.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Module } from '../cuda/module.js';
import { DeviceInputError, KernelsNotBuiltError, StateError } from '../errors.js';
import type { FloatDType } from '../tensor/dtype.js';

/** Element-type codes the kernels take for float tensors (kernels/common.cuh PqDType). */
export const DTYPE_CODE: Readonly<Record<FloatDType, number>> = { f32: 0, f16: 1, bf16: 2 };

/**
 * Bits of the pinned status word the kernels set for bad device inputs (kernels/common.cuh
 * PqStatus). Read after a sync: throw for the first bit set (sk names the valid list range).
 */
export function throwDeviceStatus(bits: number, seqLen: number): void {
  if (bits & 1) throw new DeviceInputError('query', 'finite values', 'NaN or Inf');
  if (bits & 2) throw new DeviceInputError('key', 'finite values', 'NaN or Inf');
  if (bits & 4) throw new DeviceInputError('sparseList', `positions in [0, ${seqLen})`, 'a position out of range');
  if (bits & 8) throw new DeviceInputError('value', 'finite values', 'NaN or Inf');
  // Not the caller's input: the select kernel's position buckets disagree with sk or the pair table.
  if (bits & 16) throw new StateError('select (bucket mode)', 'position buckets matching sk and the pair table', 'stale buckets (a pqcache bug)');
}

/**
 * A kernels/dist/<family>.fatbin; the _phases ones are the step kernels' timing builds, build_ws
 * holds sm_90a code only (kernels/build.mjs).
 */
export type KernelFamily =
  | 'append' | 'select' | 'select_pairs' | 'select_pairs_phases' | 'select_row' | 'select_row_phases' | 'runtime' | 'build' | 'build_ws' | 'attention';

/** kernels/dist of this package (dist/src/pq/kernels.js → ../../../kernels/dist), or $PQCACHE_KERNELS_DIR. */
export function kernelsDir(): string {
  return process.env.PQCACHE_KERNELS_DIR ?? fileURLToPath(new URL('../../../kernels/dist/', import.meta.url));
}

export function kernelImagePath(family: KernelFamily): string {
  return `${kernelsDir().replace(/\/$/, '')}/${family}.fatbin`;
}

const loaded = new Map<KernelFamily, Module>();

/**
 * A step-kernel family (the pair path's kernels), or with `phaseTiming` its timing build
 * `<family>_phases`: the same kernels with the phase stamps compiled in (kernels/build.mjs).
 */
export function loadStepKernels(family: 'select_row' | 'select_pairs', phaseTiming: boolean): Module {
  return loadKernels(phaseTiming ? `${family}_phases` : family);
}

export function loadKernels(family: KernelFamily): Module {
  let mod = loaded.get(family);
  if (mod === undefined) {
    const path = kernelImagePath(family);
    if (!existsSync(path)) throw new KernelsNotBuiltError(path);
    mod = new Module(readFileSync(path), `${family}.fatbin`);
    loaded.set(family, mod);
  }
  return mod;
}
