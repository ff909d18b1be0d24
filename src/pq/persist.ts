/**
 * Index persistence as safetensors: tensors `centroids` F32 [B,Hkv,M,C,cdim], `codes` U8
 * [B,Hkv,sk,M], `phi` F32 [B,Hkv,M]; metadata `format` = "pqcache-index", `version` = "1",
 * `shape` and `config` as JSON, `seqLen`. Loading checks every field against the others.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { ConfigError, FormatError, PQCacheError } from '../errors.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { type CacheShape, type Layout, type PQConfig, makeLayout } from './config.js';
import { type PQIndexState, codeOffset, emptyIndexState } from './index-state.js';
import { decodeSafetensors, encodeSafetensors } from './safetensors.js';

export const INDEX_FORMAT = 'pqcache-index';
export const INDEX_VERSION = '1';

export function encodeIndex(state: PQIndexState): Uint8Array {
  const { layout } = state;
  const { batch: B, kvHeads: Hkv } = layout.shape;
  const M = layout.config.pqGroupFactor;
  const sk = state.seqLen;
  const codes = new Uint8Array(B * Hkv * sk * M);
  for (let bh = 0; bh < B * Hkv; bh++) {
    const src = codeOffset(layout, state.capacity, 0, bh, 0); // (0·Hkv + bh) walks every (b, kvh)
    codes.set(state.codes.subarray(src, src + sk * M), bh * sk * M);
  }
  return encodeSafetensors(
    [
      ['centroids', new HostTensor('f32', [B, Hkv, M, layout.numCentroids, layout.centroidDim], state.centroids)],
      ['codes', new HostTensor('u8', [B, Hkv, sk, M], codes)],
      ['phi', new HostTensor('f32', [B, Hkv, M], state.phi)],
    ],
    {
      format: INDEX_FORMAT,
      version: INDEX_VERSION,
      shape: JSON.stringify(layout.shape),
      config: JSON.stringify(layout.config),
      seqLen: String(sk),
    },
  );
}

function parseJson(file: string, field: string, text: string | undefined): unknown {
  if (text === undefined) throw new FormatError(file, `__metadata__.${field}`, 'present', 'missing');
  try {
    return JSON.parse(text);
  } catch {
    throw new FormatError(file, `__metadata__.${field}`, 'JSON', text);
  }
}

function expectTensorShape(file: string, name: string, t: HostTensor | undefined, dtype: string, shape: number[]): HostTensor {
  if (t === undefined) throw new FormatError(file, name, `a ${dtype} tensor`, 'missing');
  if (t.dtype !== dtype) throw new FormatError(file, `${name}.dtype`, dtype, t.dtype);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new FormatError(file, `${name}.shape`, JSON.stringify(shape), JSON.stringify(t.shape));
  }
  return t;
}

/** Decode an index; `capacity` defaults to seqLen and may be larger to leave room for appends. */
export function decodeIndex(bytes: Uint8Array, capacity?: number, file = 'index'): PQIndexState {
  const { tensors, metadata } = decodeSafetensors(bytes, file);
  if (metadata.format !== INDEX_FORMAT) throw new FormatError(file, '__metadata__.format', INDEX_FORMAT, metadata.format ?? 'missing');
  if (metadata.version !== INDEX_VERSION) throw new FormatError(file, '__metadata__.version', INDEX_VERSION, metadata.version ?? 'missing');
  let layout: Layout;
  try {
    layout = makeLayout(parseJson(file, 'shape', metadata.shape) as CacheShape, parseJson(file, 'config', metadata.config) as PQConfig);
  } catch (e) {
    if (e instanceof PQCacheError && !(e instanceof FormatError)) throw new FormatError(file, '__metadata__', 'a valid shape and config', e.message);
    throw e;
  }
  const sk = Number(metadata.seqLen);
  if (!Number.isInteger(sk) || sk < 1) throw new FormatError(file, '__metadata__.seqLen', 'a positive integer', metadata.seqLen);
  const cap = capacity ?? sk;
  if (!Number.isInteger(cap) || cap < sk) throw new ConfigError('capacity', `an integer ≥ the stored seqLen ${sk}`, cap);
  const { batch: B, kvHeads: Hkv } = layout.shape;
  const M = layout.config.pqGroupFactor;
  const centroids = expectTensorShape(file, 'centroids', tensors.get('centroids'), 'f32', [B, Hkv, M, layout.numCentroids, layout.centroidDim]);
  const codes = expectTensorShape(file, 'codes', tensors.get('codes'), 'u8', [B, Hkv, sk, M]);
  const phi = expectTensorShape(file, 'phi', tensors.get('phi'), 'f32', [B, Hkv, M]);
  for (const v of centroids.data as Float32Array) {
    if (!Number.isFinite(v)) throw new FormatError(file, 'centroids', 'finite values', v);
  }
  const codeData = codes.data as Uint8Array;
  for (let i = 0; i < codeData.length; i++) {
    if (codeData[i] >= layout.numCentroids) throw new FormatError(file, 'codes', `values < C = ${layout.numCentroids}`, codeData[i]);
  }
  const state = emptyIndexState(layout, cap);
  state.centroids.set(centroids.data as Float32Array);
  state.phi.set(phi.data as Float32Array);
  for (let bh = 0; bh < B * Hkv; bh++) {
    state.codes.set(codeData.subarray(bh * sk * M, (bh + 1) * sk * M), codeOffset(layout, cap, 0, bh, 0));
  }
  state.seqLen = sk;
  return state;
}

export function saveIndex(path: string, state: PQIndexState): void {
  writeFileSync(path, encodeIndex(state));
}

export function loadIndex(path: string, capacity?: number): PQIndexState {
  return decodeIndex(readFileSync(path), capacity, path);
}
