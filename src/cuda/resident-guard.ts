/**
 * Driver calls that may wait for all work of the context — allocations and frees (cuMemFree and
 * cuMemFreeHost synchronize the device), module loads, context synchronization — would wait forever
 * behind a resident kernel (src/cuda/resident.ts), which ends only when told to. Those calls in this
 * layer call quiesceResident() first; the running resident launch registers how to stop it.
 */
let stopRunning: (() => void) | undefined;

/** Called by the resident launch that starts (with its stop) and stops (with undefined). */
export function registerResidentStop(stop: (() => void) | undefined): void {
  stopRunning = stop;
}

/** Stop the running resident launch, if any, before a call that may wait for it. */
export function quiesceResident(): void {
  stopRunning?.();
}
