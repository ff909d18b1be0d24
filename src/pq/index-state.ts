/**
 * The host-side state of one layer's PQ index (SPEC §1): centroids, uint8 codes with capacity
 * reserved up front, and φ for the ip metric. Plain data: both backends read and write it, and
 * safetensors persistence saves exactly this.
 *
 * Layouts (row-major):
 *   centroids [B, Hkv, M, C, cdim]   cdim = dsub (+1 for ip)
 *   codes     [B, Hkv, capacity, M]  code of position p in sub-space m at ((b·Hkv + kvh)·cap + p)·M + m;
 *                                    positions below O are unused and stay 0
 *   phi       [B, Hkv, M]            max |x|² of each group at build (ip), 0 for euclidean
 */
import type { Layout } from './config.js';

export interface PQIndexState {
  readonly layout: Layout;
  readonly capacity: number;
  /** sk: positions 0 … sk−1 are cached; codes exist for O … sk−1. */
  seqLen: number;
  readonly centroids: Float32Array;
  readonly codes: Uint8Array;
  readonly phi: Float32Array;
}

export function centroidCount(layout: Layout): number {
  const { batch, kvHeads } = layout.shape;
  return batch * kvHeads * layout.config.pqGroupFactor * layout.numCentroids * layout.centroidDim;
}

export function emptyIndexState(layout: Layout, capacity: number): PQIndexState {
  const { batch, kvHeads } = layout.shape;
  const M = layout.config.pqGroupFactor;
  return {
    layout,
    capacity,
    seqLen: 0,
    centroids: new Float32Array(centroidCount(layout)),
    codes: new Uint8Array(batch * kvHeads * capacity * M),
    phi: new Float32Array(batch * kvHeads * M),
  };
}

/** Offset of centroid row (b, kvh, m, c). */
export function centroidOffset(layout: Layout, b: number, kvh: number, m: number, c: number): number {
  const M = layout.config.pqGroupFactor;
  return (((b * layout.shape.kvHeads + kvh) * M + m) * layout.numCentroids + c) * layout.centroidDim;
}

/** Offset of the M codes of position p of (b, kvh). */
export function codeOffset(layout: Layout, capacity: number, b: number, kvh: number, p: number): number {
  return ((b * layout.shape.kvHeads + kvh) * capacity + p) * layout.config.pqGroupFactor;
}

/** k-means group id (b, kvh, m) → (b·Hkv + kvh)·M + m: the random stream of rng.ts. */
export function groupId(layout: Layout, b: number, kvh: number, m: number): number {
  return (b * layout.shape.kvHeads + kvh) * layout.config.pqGroupFactor + m;
}
