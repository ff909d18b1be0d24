/**
 * Streams and events. A Stream is non-blocking (does not serialize with the legacy default
 * stream); events time work on a stream with the GPU's own clock.
 */
import { DisposedError } from '../errors.js';
import { type Handle, CUDA_ERROR_NOT_READY, CUDA_SUCCESS, check, driver, out, outHandle } from './driver.js';

const CU_STREAM_NON_BLOCKING = 0x1;
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
