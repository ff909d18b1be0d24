/**
 * GPU test gating: without a GPU the tests skip with the reason; with PQCACHE_REQUIRE_GPU=1
 * (npm run test:gpu) a missing GPU is a failure instead.
 */
import { cudaAvailable } from '../../src/cuda/driver.js';
import { cudaProblem } from '../../src/pq/backend.js';

export function gpuSkip(): string | false {
  const problem = cudaAvailable().ok ? cudaProblem() : (cudaAvailable() as { reason: string }).reason;
  if (problem === undefined) return false;
  if (process.env.PQCACHE_REQUIRE_GPU === '1') throw new Error(`GPU tests required (PQCACHE_REQUIRE_GPU=1) but: ${problem}`);
  return `no GPU: ${problem}`;
}
