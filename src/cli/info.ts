/** `pqcache info`: backends, device, driver, kernels. */
import { existsSync } from 'node:fs';
import { CudaContext } from '../cuda/context.js';
import { cudaProblem } from '../pq/backend.js';
import { kernelImagePath, kernelsDir } from '../pq/kernels.js';

export function runInfo(version: string): void {
  console.log(`pqcache ${version} (Node ${process.version})`);
  console.log('backends: cpu (always available)');
  const problem = cudaProblem();
  if (problem !== undefined) {
    console.log(`          cuda: unavailable: ${problem}`);
    console.log('          auto → cpu');
  } else {
    const d = CudaContext.primary().device;
    console.log('          cuda: available; auto → cuda');
    console.log(`device:   ${d.name}, compute capability ${d.computeCapability.join('.')}, ${d.multiprocessorCount} SMs, ` +
      `${(d.totalMemoryBytes / 2 ** 30).toFixed(1)} GiB, L2 ${(d.l2CacheBytes / 2 ** 20).toFixed(0)} MiB`);
    console.log(`driver:   ${d.driverVersion} (CUDA ${d.cudaDriverVersion})`);
  }
  const families = ['append', 'select', 'select_pairs', 'runtime'] as const;
  const present = families.filter((f) => existsSync(kernelImagePath(f)));
  console.log(`kernels:  ${kernelsDir()} (${present.length > 0 ? present.map((f) => `${f}.fatbin`).join(', ') : 'not built: npm run build:kernels'})`);
}
