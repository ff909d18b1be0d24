/**
 * Choosing a backend: `auto` takes CUDA when a driver, a GPU and the compiled kernels are there
 * (and the layout is one the kernels support), else the CPU, and says why.
 */
import { existsSync } from 'node:fs';
import { cudaAvailable } from '../cuda/driver.js';
import { ConfigError, CudaUnavailableError, KernelsNotBuiltError } from '../errors.js';
import { type BackendName, CpuPQCache, type PQCache } from './cache.js';
import { makeLayout } from './config.js';
import { CudaPQCache, type CudaPQCacheOptions } from './cuda-cache.js';
import { cudaLayoutProblem } from './cuda-plan.js';
import type { PQIndexState } from './index-state.js';
import { kernelImagePath } from './kernels.js';

export type BackendChoice = BackendName | 'auto';

export interface BackendDecision {
  readonly backend: BackendName;
  /** Why this backend (shown by the CLI: "no GPU: using the CPU backend"). */
  readonly reason: string;
}

/** Why CUDA cannot be used here (undefined when it can). */
export function cudaProblem(): string | undefined {
  const a = cudaAvailable();
  if (!a.ok) return a.reason;
  if (!existsSync(kernelImagePath('select'))) return new KernelsNotBuiltError(kernelImagePath('select')).message;
  return undefined;
}

export function decideBackend(choice: BackendChoice, options?: Pick<CudaPQCacheOptions, 'shape' | 'config'>): BackendDecision {
  if (choice === 'cpu') return { backend: 'cpu', reason: 'requested' };
  const problem = cudaProblem();
  if (choice === 'cuda') {
    if (problem !== undefined) throw new CudaUnavailableError(problem);
    return { backend: 'cuda', reason: 'requested' };
  }
  if (choice !== 'auto') throw new ConfigError('backend', "'auto', 'cpu' or 'cuda'", choice);
  if (problem !== undefined) return { backend: 'cpu', reason: `CUDA unavailable (${problem})` };
  if (options) {
    const layoutProblem = cudaLayoutProblem(makeLayout(options.shape, options.config));
    if (layoutProblem) return { backend: 'cpu', reason: `layout not supported by the CUDA kernels (${layoutProblem.message})` };
  }
  return { backend: 'cuda', reason: 'GPU found' };
}

export interface CreateOptions extends CudaPQCacheOptions {
  readonly backend?: BackendChoice;
}

/** A PQ cache on the chosen backend (default `auto`). */
export function createPQCache(options: CreateOptions): PQCache & { readonly backendReason: string } {
  const decision = decideBackend(options.backend ?? 'auto', options);
  const cache = decision.backend === 'cuda' ? new CudaPQCache(options) : new CpuPQCache(options);
  return Object.assign(cache, { backendReason: decision.reason });
}

/** A cache on `backend` holding an existing index state (built elsewhere, loaded, or made by hand). */
export function cacheFromState(backend: BackendName, state: PQIndexState, tuning: Pick<CudaPQCacheOptions, 'stepKernel' | 'resident'> = {}): PQCache {
  if (backend === 'cpu') return CpuPQCache.fromState(state);
  const cache = new CudaPQCache({ shape: state.layout.shape, config: state.layout.config, capacity: state.capacity, ...tuning });
  try {
    cache.uploadState(state);
  } catch (e) {
    cache.dispose();
    throw e;
  }
  return cache;
}
