/**
 * Streams and events. A Stream is non-blocking (does not serialize with the legacy default
 * stream); events time work on a stream with the GPU's own clock.
 */
import { DisposedError } from '../errors.js';
import { type DevicePtr, type Handle, CUDA_ERROR_NOT_READY, CUDA_SUCCESS, check, driver, out, outHandle } from './driver.js';

const CU_STREAM_NON_BLOCKING = 0x1;
/** With a memory barrier: the work before the write is visible before the value is. */
const CU_STREAM_WRITE_VALUE_DEFAULT = 0x0;
const CU_STREAM_WAIT_VALUE_GEQ = 0x0;
const CU_EVENT_DEFAULT = 0x0;
const CU_EVENT_DISABLE_TIMING = 0x2;

export class Stream {
  private h: Handle | undefined;

  constructor() {
    const d = driver();
    this.h = outHandle('cuStreamCreate', (s) => d.cuStreamCreate(s, CU_STREAM_NON_BLOCKING));
  }

  get handle(): Handle {
    if (this.h === undefined) throw new DisposedError('Stream');
    return this.h;
  }

  synchronize(): void {
    check('cuStreamSynchronize', driver().cuStreamSynchronize(this.handle));
  }

  /** Enqueue a write of `value` to the 32-bit word at `addr` (device or mapped pinned memory) behind the work so far. */
  writeValue32(addr: DevicePtr, value: number): void {
    check('cuStreamWriteValue32_v2', driver().cuStreamWriteValue32_v2(this.handle, addr, value, CU_STREAM_WRITE_VALUE_DEFAULT));
  }

  /** Enqueue a wait until the 32-bit word at `addr` is ≥ `value` (wrap-around compare) before later work. */
  waitValue32(addr: DevicePtr, value: number): void {
    check('cuStreamWaitValue32_v2', driver().cuStreamWaitValue32_v2(this.handle, addr, value, CU_STREAM_WAIT_VALUE_GEQ));
  }

  /** True when all work enqueued so far has finished (no blocking). */
  isIdle(): boolean {
    const rc = driver().cuStreamQuery(this.handle);
    if (rc === CUDA_SUCCESS) return true;
    if (rc === CUDA_ERROR_NOT_READY) return false;
    check('cuStreamQuery', rc);
    return false;
  }

  dispose(): void {
    if (this.h === undefined) return;
    const h = this.h;
    this.h = undefined;
    check('cuStreamDestroy_v2', driver().cuStreamDestroy_v2(h));
  }
}

export class Event {
  private h: Handle | undefined;

  constructor(options: { timing?: boolean } = {}) {
    const d = driver();
    const flags = options.timing === false ? CU_EVENT_DISABLE_TIMING : CU_EVENT_DEFAULT;
    this.h = outHandle('cuEventCreate', (s) => d.cuEventCreate(s, flags));
  }

  get handle(): Handle {
    if (this.h === undefined) throw new DisposedError('Event');
    return this.h;
  }

  record(stream: Stream): void {
    check('cuEventRecord', driver().cuEventRecord(this.handle, stream.handle));
  }

  synchronize(): void {
    check('cuEventSynchronize', driver().cuEventSynchronize(this.handle));
  }

  /** Milliseconds from `start` to this event (both recorded and complete). */
  elapsedSince(start: Event): number {
    const d = driver();
    return out('cuEventElapsedTime_v2', 0, (s) => d.cuEventElapsedTime(s, start.handle, this.handle));
  }

  dispose(): void {
    if (this.h === undefined) return;
    const h = this.h;
    this.h = undefined;
    check('cuEventDestroy_v2', driver().cuEventDestroy_v2(h));
  }
}
