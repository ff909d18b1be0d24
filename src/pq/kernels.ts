/**
 * Locating and loading the compiled kernel families (kernels/dist/<family>.fatbin, built by
 * `npm run build:kernels`). One Module per family and context, loaded on first use.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Module } from '../cuda/module.js';
import { KernelsNotBuiltError } from '../errors.js';

export type KernelFamily = 'append' | 'select' | 'select_pairs' | 'runtime' | 'build' | 'attention';

/** kernels/dist of this package (dist/src/pq/kernels.js → ../../../kernels/dist), or $PQCACHE_KERNELS_DIR. */
export function kernelsDir(): string {
  return process.env.PQCACHE_KERNELS_DIR ?? fileURLToPath(new URL('../../../kernels/dist/', import.meta.url));
}

export function kernelImagePath(family: KernelFamily): string {
  return `${kernelsDir().replace(/\/$/, '')}/${family}.fatbin`;
}

const loaded = new Map<KernelFamily, Module>();

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
