/**
 * The per-layer PQ cache interface both backends implement, and the CPU backend.
 */
import { DisposedError } from '../errors.js';
import type { FloatDType } from '../tensor/dtype.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { type CacheShape, type Layout, type PQConfig, makeLayout } from './config.js';
import { type BuildProgress, appendCodesCpu, buildIndexCpu } from './cpu-build.js';
import { selectCpu } from './cpu-select.js';
import type { PQIndexState } from './index-state.js';
import { encodeIndex } from './persist.js';
import { checkBuilt, checkCapacity, checkCapacityOption, checkKeys, checkQuery, checkStepKey } from './validate.js';

export type BackendName = 'cpu' | 'cuda';

export interface SelectResult<T> {
  /** i32 [B, H, L]: ascending positions, −1 padded (L = layout.listCapacity). */
  readonly sparseList: T;
  /** i32 [B, H] */
  readonly sparseLen: T;
  /** [B, H, sk] in the query's dtype: 1 at listed positions, 0 elsewhere. */
  readonly weights: T;
}

export interface PQCacheOptions {
  readonly shape: CacheShape;
  readonly config?: Partial<PQConfig>;
  /** Positions reserved up front; append never reallocates. */
  readonly capacity: number;
}

export interface BuildOptions {
  readonly onProgress?: (p: BuildProgress) => void;
}

export interface PQCache {
  readonly backend: BackendName;
  readonly layout: Layout;
  readonly capacity: number;
  /** sk: cached positions. */
  readonly seqLen: number;
  readonly built: boolean;
  /** Cluster keys [B, Hkv, sk, D] (SPEC §2 build); replaces any previous index. */
  build(keys: HostTensor, options?: BuildOptions): void;
  /** Code new keys [B, Hkv, n, D] at positions sk … sk+n−1. */
  append(keys: HostTensor): void;
  /** Select for query [B, H, 1, D]; results on the host. */
  selectToHost(query: HostTensor): SelectResult<HostTensor>;
  /** One decode step: append key [B, Hkv, 1, D], then select for query. */
  stepToHost(query: HostTensor, key: HostTensor): SelectResult<HostTensor>;
  /** A host copy of the index (centroids, codes, φ, seqLen). */
  exportState(): PQIndexState;
  /** The index as safetensors bytes (see persist.ts). */
  serialize(): Uint8Array;
  dispose(): void;
}

export function hostSelectResult(
  layout: Layout,
  seqLen: number,
  dtype: FloatDType,
  arrays: { sparseList: Int32Array; sparseLen: Int32Array; weights: Float32Array | Uint16Array },
): SelectResult<HostTensor> {
  const { batch: B, heads: H } = layout.shape;
  return {
    sparseList: new HostTensor('i32', [B, H, layout.listCapacity], arrays.sparseList),
    sparseLen: new HostTensor('i32', [B, H], arrays.sparseLen),
    weights: new HostTensor(dtype, [B, H, seqLen], arrays.weights as HostTensor<typeof dtype>['data']),
  };
}

/** The pure-TypeScript backend: the correctness oracle and the default without a GPU. */
export class CpuPQCache implements PQCache {
  readonly backend = 'cpu' as const;
  readonly layout: Layout;
  readonly capacity: number;
  private state: PQIndexState | undefined;
  private disposed = false;

  constructor(options: PQCacheOptions) {
    this.layout = makeLayout(options.shape, options.config);
    this.capacity = checkCapacityOption(options.capacity);
  }

  /** Wrap an existing state (a loaded index, or parts made by hand). */
  static fromState(state: PQIndexState): CpuPQCache {
    const cache = new CpuPQCache({ shape: state.layout.shape, config: state.layout.config, capacity: state.capacity });
    cache.state = state;
    return cache;
  }

  get seqLen(): number {
    return this.state?.seqLen ?? 0;
  }

  get built(): boolean {
    return this.state !== undefined;
  }

  private live(): void {
    if (this.disposed) throw new DisposedError('CpuPQCache');
  }

  private builtState(operation: string): PQIndexState {
    this.live();
    checkBuilt(operation, this.state !== undefined);
    return this.state as PQIndexState;
  }

  build(keys: HostTensor, options: BuildOptions = {}): void {
    this.live();
    const sk = checkKeys(this.layout, keys, 'keys', this.layout.config.initOffset + 1);
    checkCapacity('keys', this.capacity, sk);
    this.state = buildIndexCpu(this.layout, keys.toFloat32(), sk, this.capacity, options.onProgress);
  }

  append(keys: HostTensor): void {
    const state = this.builtState('append');
    const n = checkKeys(this.layout, keys, 'keys', 1);
    checkCapacity('keys', this.capacity, state.seqLen + n);
    appendCodesCpu(state, keys.toFloat32(), n);
  }

  selectToHost(query: HostTensor): SelectResult<HostTensor> {
    const state = this.builtState('select');
    checkQuery(this.layout, query);
    const arrays = selectCpu(state, query.toFloat32(), query.dtype);
    return hostSelectResult(this.layout, state.seqLen, query.dtype, arrays);
  }

  stepToHost(query: HostTensor, key: HostTensor): SelectResult<HostTensor> {
    const state = this.builtState('step');
    checkQuery(this.layout, query);
    checkStepKey(this.layout, key);
    checkCapacity('key', this.capacity, state.seqLen + 1);
    appendCodesCpu(state, key.toFloat32(), 1);
    return hostSelectResult(this.layout, state.seqLen, query.dtype, selectCpu(state, query.toFloat32(), query.dtype));
  }

  exportState(): PQIndexState {
    const s = this.builtState('exportState');
    return { ...s, centroids: s.centroids.slice(), codes: s.codes.slice(), phi: s.phi.slice() };
  }

  serialize(): Uint8Array {
    return encodeIndex(this.builtState('serialize'));
  }

  dispose(): void {
    this.state = undefined;
    this.disposed = true;
  }
}
