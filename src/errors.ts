/**
 * Typed errors. Every message names the argument (or driver call), the expected value and the
 * actual one, so a caller can act on it without reading our source.
 */

/** Base class: `instanceof PQCacheError` catches everything this library throws on purpose. */
export class PQCacheError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

function show(value: unknown): string {
  if (Array.isArray(value)) return `[${value.join(', ')}]`;
  if (typeof value === 'string') return value;
  if (typeof value === 'bigint') return `${value}`;
  return JSON.stringify(value) ?? String(value);
}

/** A tensor argument has the wrong shape. */
export class ShapeError extends PQCacheError {
  constructor(
    readonly argument: string,
    readonly expected: string,
    readonly actual: readonly number[] | string,
  ) {
    super(`${argument}: expected shape ${expected}, got ${show(actual)}`);
  }
}

/** A tensor argument has the wrong element type. */
export class DTypeError extends PQCacheError {
  constructor(
    readonly argument: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`${argument}: expected dtype ${expected}, got ${actual}`);
  }
}

/** A configuration field is out of range or inconsistent with another. */
export class ConfigError extends PQCacheError {
  constructor(
    readonly field: string,
    readonly expected: string,
    readonly actual: unknown,
  ) {
    super(`${field}: expected ${expected}, got ${show(actual)}`);
  }
}

/** NaN or ±Inf in a query or key: reported, never ranked. */
export class NonFiniteError extends PQCacheError {
  constructor(
    readonly argument: string,
    readonly index: number,
    readonly value: number,
  ) {
    super(`${argument}: expected finite values, got ${value} at flat index ${index}`);
  }
}

/** Appending would exceed the capacity reserved when the index was created. */
export class CapacityError extends PQCacheError {
  constructor(
    readonly argument: string,
    readonly capacity: number,
    readonly requested: number,
  ) {
    super(`${argument}: expected at most ${capacity} cached positions (the capacity), got ${requested}`);
  }
}

/** An operation that needs state which is not there yet (e.g. select before build). */
export class StateError extends PQCacheError {
  constructor(
    readonly operation: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`${operation}: expected ${expected}, got ${actual}`);
  }
}

/** Use of an object after dispose(). */
export class DisposedError extends PQCacheError {
  constructor(readonly object: string) {
    super(`${object}: expected a live object, got one that was disposed`);
  }
}

/** A file (safetensors index) whose header, shapes or dtypes do not match what is expected. */
export class FormatError extends PQCacheError {
  constructor(
    readonly file: string,
    readonly field: string,
    readonly expected: string,
    readonly actual: unknown,
  ) {
    super(`${file}: ${field}: expected ${expected}, got ${show(actual)}`);
  }
}

/** No NVIDIA driver or no GPU: the CPU backend keeps working, `cuda` was asked for explicitly. */
export class CudaUnavailableError extends PQCacheError {
  constructor(readonly reason: string) {
    super(`cuda backend: expected an NVIDIA driver (libcuda.so.1) and a GPU, got ${reason}`);
  }
}

/** The compiled kernels (kernels/dist) are missing: built by `npm run build:kernels` with nvcc. */
export class KernelsNotBuiltError extends PQCacheError {
  constructor(readonly path: string) {
    super(
      `kernels: expected the compiled kernel image at ${path}, got no such file ` +
        `(run \`npm run build:kernels\` with nvcc installed, or install a published package)`,
    );
  }
}

/** A CUDA driver call returned an error. Names the call, the CUresult name and its text. */
export class CudaError extends PQCacheError {
  constructor(
    readonly call: string,
    readonly code: number,
    readonly errorName: string,
    readonly errorText: string,
  ) {
    super(`${call}: expected CUDA_SUCCESS, got ${errorName} (${code}): ${errorText}`);
  }
}

/** CUDA_ERROR_OUT_OF_MEMORY, separated so callers can shrink and retry. */
export class CudaOutOfMemoryError extends CudaError {
  constructor(
    call: string,
    code: number,
    errorName: string,
    errorText: string,
    readonly requestedBytes: number,
  ) {
    super(call, code, errorName, `${errorText} (requested ${requestedBytes} bytes)`);
  }
}

/** A kernel reported bad input through its device status word (found at the next sync). */
export class DeviceInputError extends PQCacheError {
  constructor(
    readonly argument: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`${argument}: expected ${expected}, got ${actual} (detected on the device)`);
  }
}
