// Launches the trapping kernel and prints how the fault surfaced. Runs in its own process because
// a kernel fault poisons the CUDA context for the rest of the process.
import { CudaContext } from '../../src/cuda/context.js';
import { LaunchArgs, launch } from '../../src/cuda/launch.js';
import { Stream } from '../../src/cuda/stream.js';
import { CudaError } from '../../src/errors.js';
import { loadKernels } from '../../src/pq/kernels.js';

CudaContext.primary();
const stream = new Stream();
const args = new LaunchArgs([] as const);
launch(loadKernels('runtime').kernel('pq_trap'), { grid: [1, 1, 1], block: [1, 1, 1] }, args, stream);
try {
  stream.synchronize();
  console.log('no error');
  process.exitCode = 1;
} catch (e) {
  console.log(e instanceof CudaError ? `CudaError ${e.message}` : `other ${String(e)}`);
}
