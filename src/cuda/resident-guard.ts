/**
 * Driver calls that may wait for all work of the context — allocations and frees (cuMemFree and
 * cuMemFreeHost synchronize the device), module loads, context synchronization — would wait forever
 * behind work that ends only when the host says so: a resident kernel (src/cuda/resident.ts), or a
 * chain of steps waiting for its doorbell (src/cuda/step-chain.ts). Those calls in this layer call
 * quiesceDevice() first; the running resident launch and each waiting chain register how to end.
 */
let stopRunning: (() => void) | undefined;
const waitingChains = new Set<() => void>();

/** Called by the resident launch that starts (with its stop) and stops (with undefined). */
export function registerResidentStop(stop: (() => void) | undefined): void {
  stopRunning = stop;
}

/** Called by a chain that starts waiting for its doorbell, with how to drain it; returns the unregister. */
export function registerWaitingChain(drain: () => void): () => void {
  waitingChains.add(drain);
  return () => waitingChains.delete(drain);
}

/** Stop the running resident launch and drain every waiting chain, before a call that may wait for them. */
export function quiesceDevice(): void {
  stopRunning?.();
  for (const drain of [...waitingChains]) drain();
}
