/**
 * Several layers' caches held together: one PQCache per layer, built and stepped together.
 */
import { ShapeError } from '../errors.js';
import type { HostTensor } from '../tensor/host-tensor.js';
import type { BuildOptions, PQCache, SelectResult } from './cache.js';

export class PQCacheStack {
  constructor(readonly layers: readonly PQCache[]) {
    if (layers.length === 0) throw new ShapeError('layers', 'at least one layer', '0 layers');
  }

  private perLayer<T>(argument: string, values: readonly T[]): void {
    if (values.length !== this.layers.length) throw new ShapeError(argument, `${this.layers.length} entries (one per layer)`, `${values.length} entries`);
  }

  build(keys: readonly HostTensor[], options?: BuildOptions): void {
    this.perLayer('keys', keys);
    this.layers.forEach((layer, i) => layer.build(keys[i], options));
  }

  stepToHost(queries: readonly HostTensor[], keys: readonly HostTensor[]): SelectResult<HostTensor>[] {
    this.perLayer('queries', queries);
    this.perLayer('keys', keys);
    return this.layers.map((layer, i) => layer.stepToHost(queries[i], keys[i]));
  }

  dispose(): void {
    for (const layer of this.layers) layer.dispose();
  }
}
