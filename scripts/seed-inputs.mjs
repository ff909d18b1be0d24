// The seed config's device inputs for the diagnostics that step it (graph-step-split.mjs,
// ring-graph-floor.mjs): `sets` query and key tensors ([1, 32, 1, 128] f32, fixed values) in one arena.
import { join } from 'node:path';

export const seedConfig = (sk) => ({ B: 1, H: 32, Hkv: 32, D: 128, sk, S: 128, W: 128, K: 128, M: 2, pqBits: 6, O: 128, metric: 'euclidean' });

/** { arena, q, k }: q[s] and k[s] for s < sets (dispose the arena when done). `app`: the dist/src folder. */
export async function seedDeviceInputs(app, sets = 8) {
  const { DeviceArena, copies } = await import(join(app, 'cuda/memory.js'));
  const { deviceTensor } = await import(join(app, 'tensor/device-tensor.js'));
  const bytes = 32 * 128 * 4;
  const arena = DeviceArena.allocate({ q: bytes * sets, k: bytes * sets });
  for (let s = 0; s < sets; s++) {
    copies.fromHost(arena.slices.q, new Float32Array(4096).map((_, i) => Math.sin(i + 3 * s)), s * bytes);
    copies.fromHost(arena.slices.k, new Float32Array(4096).map((_, i) => Math.cos(i + 5 * s)), s * bytes);
  }
  const q = Array.from({ length: sets }, (_, s) => deviceTensor('f32', [1, 32, 1, 128], arena.slices.q.ptr + BigInt(s * bytes)));
  const k = Array.from({ length: sets }, (_, s) => deviceTensor('f32', [1, 32, 1, 128], arena.slices.k.ptr + BigInt(s * bytes)));
  return { arena, q, k };
}
