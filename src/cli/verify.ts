/** `pqcache verify`: a backend against the float64 brute force on random configs; exit 1 on mismatch. */
import type { PQCache } from '../pq/cache.js';
import type { CudaPQCacheOptions } from '../pq/cuda-cache.js';
import type { StepKernelChoice } from '../pq/cuda-plan.js';
import type { PQIndexState } from '../pq/index-state.js';
import { CPU_LIMITS, CUDA_LIMITS, type CaseResult, makeCase, runCase } from '../pq/verify.js';
import { cacheFromState, decideBackend } from '../pq/backend.js';
import { progress } from './progress.js';

export interface VerifyOptions {
  readonly backend: 'cpu' | 'cuda';
  readonly cases: number;
  readonly seed: number;
  readonly verbose: boolean;
  readonly first: number;
}

export function runVerify(o: VerifyOptions): number {
  decideBackend(o.backend); // throws CudaUnavailableError when cuda is asked for and absent
  const limits = o.backend === 'cuda' ? CUDA_LIMITS : CPU_LIMITS;
  // CUDA: cases rotate over the planned step kernel, the row kernel in bucket mode, the row kernel
  // scanning every code, the cluster kernel, and resident steps of the row kernel (each where it
  // applies, else the planned one), so each is checked on every kind of case.
  const tuning = (id: number): Pick<CudaPQCacheOptions, 'stepKernel' | 'resident'> =>
    id % 5 === 4 ? { stepKernel: 'row', resident: true } : { stepKernel: (['auto', 'bucket', 'row', 'cluster'] as const)[id % 5] as StepKernelChoice };
  const bar = progress(`verify ${o.backend}`);
  const failed: CaseResult[] = [];
  const counts = { exact: 0, tolerant: 0, built: 0 };
  const started = Date.now();
  for (let i = 0; i < o.cases; i++) {
    const c = makeCase(o.first + i, o.seed, limits);
    counts[c.mode]++;
    if (c.built) counts.built++;
    const r = runCase(c, (state: PQIndexState): PQCache => cacheFromState(o.backend, state, tuning(c.id)));
    if (o.verbose) console.log(`${r.errors.length === 0 ? 'ok  ' : 'FAIL'} ${r.description}`);
    if (r.errors.length > 0) {
      failed.push(r);
      if (!o.verbose) console.log(`FAIL ${r.description}\n  ${r.errors.slice(0, 5).join('\n  ')}`);
    }
    bar.update(i + 1, o.cases);
  }
  bar.stop();
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  console.log(`verify ${o.backend}: ${o.cases} cases (${counts.exact} integer/exact, ${counts.tolerant} real/tolerant, ${counts.built} built by k-means), seed ${o.seed}, ${secs} s`);
  console.log(`${o.cases - failed.length} passed, ${failed.length} failed`);
  return failed.length === 0 ? 0 : 1;
}
