// The built library a diagnostic script imports: the device pack's (.device/app/dist, on the GPU
// machine) where it exists, else this checkout's dist/; its kernels beside it.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
export const dist = existsSync(`${root}.device/app/dist`) ? `${root}.device/app/dist` : `${root}dist`;
process.env.PQCACHE_KERNELS_DIR ??= `${dist}/../kernels/dist/`;
