/**
 * Many layers' decode steps per token. On the GPU every layer's kernels (K/V append → PQ select →
 * attend) are captured in one graph, so a token costs one launch whatever the layer count; on the
 * CPU the layers run one after another.
 */
import { CudaContext } from '../cuda/context.js';
import type { DevicePtr } from '../cuda/driver.js';
import { GraphCache } from '../cuda/graph.js';
import { Owned } from '../cuda/owned.js';
import { CompletionSignal } from '../cuda/signal.js';
import { Stream } from '../cuda/stream.js';
import { ConfigError, DisposedError, ShapeError } from '../errors.js';
import type { BuildOptions } from '../pq/cache.js';
import type { DeviceTensor } from '../tensor/device-tensor.js';
import type { HostTensor } from '../tensor/host-tensor.js';
import type { KVCacheView } from './cuda-attention.js';
import { CudaDecodeLayer, type CudaDecodeLayerOptions, type PreparedStep } from './cuda-decode-layer.js';
import { CpuDecodeLayer, type DecodeLayer, type DecodeLayerOptions, type StepInputs } from './decode-layer.js';

export interface DecodeStackOptions extends DecodeLayerOptions {
  readonly numLayers: number;
}

export interface CudaDecodeStackOptions extends Omit<CudaDecodeLayerOptions, 'kv' | 'stream'> {
  readonly numLayers: number;
  /** One external K/V cache per layer (default: each layer allocates its own). */
  readonly kvs?: readonly KVCacheView[];
}

function checkLayerCount(n: unknown): number {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 1024) throw new ConfigError('numLayers', 'an integer in [1, 1024]', n);
  return n;
}

function perLayer(argument: string, expected: number, values: readonly unknown[]): void {
  if (values.length !== expected) throw new ShapeError(argument, `${expected} entries (one per layer)`, `${values.length} entries`);
}

/** Graphs kept before the cache is cleared. */
const MAX_GRAPHS = 8;

export class CudaDecodeStack {
  readonly layers: readonly CudaDecodeLayer[];
  readonly stream: Stream;
  private readonly graphs = new GraphCache(MAX_GRAPHS);
  /** Recent tokens' graph keys with the layer keys they join (the layers hand out the same strings every token). */
  private readonly joinedKeys: { readonly parts: readonly string[]; readonly key: string }[] = [];
  /** joinPointers()'s array. */
  private readonly pointerScratch: DevicePtr[] = [];
  /** The stream and the layers, freed together. */
  private readonly owned = new Owned();
  /** synchronize() after a token's launch: sooner than cuStreamSynchronize (src/cuda/signal.ts). */
  private readonly completion: CompletionSignal;
  private disposed = false;

  constructor(options: CudaDecodeStackOptions) {
    const n = checkLayerCount(options.numLayers);
    if (options.kvs !== undefined) perLayer('kvs', n, options.kvs);
    CudaContext.primary(options.device ?? 0); // current before the stream is made
    this.stream = this.owned.add(new Stream());
    const layers: CudaDecodeLayer[] = [];
    try {
      this.completion = this.owned.add(new CompletionSignal());
      for (let i = 0; i < n; i++) layers.push(this.owned.add(new CudaDecodeLayer({ ...options, stream: this.stream, kv: options.kvs?.[i] })));
    } catch (e) {
      this.owned.dispose();
      throw e;
    }
    this.layers = layers;
  }

  private live(): void {
    if (this.disposed) throw new DisposedError('CudaDecodeStack');
  }

  /** Prefill every layer: keys[i], values[i] are layer i's [B, Hkv, sk, D]. */
  prefill(keys: readonly HostTensor[], values: readonly HostTensor[], options?: BuildOptions & { onLayer?: (layer: number) => void }): void {
    this.live();
    perLayer('keys', this.layers.length, keys);
    perLayer('values', this.layers.length, values);
    this.layers.forEach((layer, i) => {
      options?.onLayer?.(i);
      layer.prefill(keys[i], values[i], options);
    });
  }

  /** One token: every layer's step in one graph launch. Returns each layer's output view. */
  step(inputs: readonly StepInputs<HostTensor | DeviceTensor>[]): DeviceTensor[] {
    this.live();
    perLayer('inputs', this.layers.length, inputs);
    const bound = this.layers.map((layer, i) => layer.bind(inputs[i]));
    const prepared = this.layers.map((layer, i) => layer.prepare(bound[i]));
    const key = this.graphKey(prepared);
    const pointers = this.joinPointers(prepared);
    const graph =
      this.graphs.find(key, pointers) ??
      this.graphs.capture(key, pointers, this.stream, () => {
        for (const p of prepared) p.record();
      });
    graph.launch(this.stream);
    this.completion.launched();
    this.layers.forEach((layer, i) => layer.launched(bound[i]));
    return this.layers.map((layer) => layer.output());
  }

  /**
   * Every layer's input pointers in one array, refilled in place each token (GraphCache.capture
   * copies what it keeps). `flatMap` over the layers' arrays took ≈ 25 μs a token at 32 layers,
   * most of the host time before the launch (bench/NOTES.md, session 44).
   */
  private joinPointers(prepared: readonly PreparedStep[]): DevicePtr[] {
    const out = this.pointerScratch;
    let n = 0;
    for (const p of prepared) for (const ptr of p.pointers) out[n++] = ptr;
    out.length = n;
    return out;
  }

  /**
   * The layers' keys joined. Joining them anew each token makes a new ≈ 2 KB string (32 layers) that
   * the graph lookup hashes again; the layers hand out the same strings every token, so recent joins
   * are kept and matched part by part.
   */
  private graphKey(prepared: readonly PreparedStep[]): string {
    for (const k of this.joinedKeys) {
      let same = true;
      for (let i = 0; same && i < prepared.length; i++) same = k.parts[i] === (prepared[i] as PreparedStep).signature;
      if (same) return k.key;
    }
    const parts = prepared.map((p) => p.signature);
    const key = parts.join('|');
    this.joinedKeys.unshift({ parts, key });
    if (this.joinedKeys.length > MAX_GRAPHS) this.joinedKeys.pop();
    return key;
  }

  stepToHost(inputs: readonly StepInputs<HostTensor>[]): HostTensor[] {
    this.step(inputs);
    return this.layers.map((layer) => layer.outputToHost());
  }

  /** Wait for the shared stream once, then report what any layer's kernels flagged. */
  synchronize(): void {
    this.live();
    this.completion.synchronize(this.stream);
    for (const layer of this.layers) layer.checkStatus();
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.owned.disposeAfter(this.stream, this.graphs);
  }
}

/** The CPU stack: layers stepped in turn. */
export class CpuDecodeStack {
  readonly layers: readonly DecodeLayer[];

  constructor(options: DecodeStackOptions) {
    const n = checkLayerCount(options.numLayers);
    this.layers = Array.from({ length: n }, () => new CpuDecodeLayer(options));
  }

  prefill(keys: readonly HostTensor[], values: readonly HostTensor[], options?: BuildOptions): void {
    perLayer('keys', this.layers.length, keys);
    perLayer('values', this.layers.length, values);
    this.layers.forEach((layer, i) => layer.prefill(keys[i], values[i], options));
  }

  stepToHost(inputs: readonly StepInputs<HostTensor>[]): HostTensor[] {
    perLayer('inputs', this.layers.length, inputs);
    return this.layers.map((layer, i) => layer.stepToHost(inputs[i]));
  }

  dispose(): void {
    for (const layer of this.layers) layer.dispose();
  }
}
