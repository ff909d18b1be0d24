/**
 * `pqcache quality`: how much of exact attention PQ selection keeps, on the seeded synthetic LLM
 * data (SPEC §6), across pqBits × M × K × sk, next to three reference selections on the same data:
 *   exact-topk   sink + the exact top-K by ⟨q, k⟩ + window (the upper bound for a K-token budget)
 *   sink-window  sink + window only (StreamingLLM-style)
 *   random-k     sink + K random eligible positions + window
 * One index per (sk, pqBits, M), built on the chosen backend; every K selects from it. Metrics
 * are averaged over several decode-step queries.
 */
import { cacheFromState, createPQCache } from '../pq/backend.js';
import { type CacheShape, type PQConfig, makeLayout } from '../pq/config.js';
import type { PQIndexState } from '../pq/index-state.js';
import { QualityReference, type QualityResult, type SparseLists } from '../pq/quality.js';
import { SyntheticLLM } from '../pq/synthetic.js';
import { HostTensor } from '../tensor/host-tensor.js';
import type { RecordRow } from './record.js';
import { round3 } from './stats.js';

export interface QualityGrid {
  readonly shape: CacheShape;
  readonly seqLens: readonly number[];
  readonly pqBits: readonly number[];
  readonly groupFactors: readonly number[];
  readonly heavySizes: readonly number[];
  /** Decode-step queries averaged per setting. */
  readonly queries: number;
  readonly sinkSize: number;
  readonly windowSize: number;
  readonly initOffset: number;
  /** Planted heavy hitters per (b, kv-head). */
  readonly planted: number;
  readonly seed: number;
}

/** Issue 7: pqBits {4,6,8} × M {1,2,4} × K {64,128,512} × sk {8192, 32768}; GQA heads, D = 128. */
export const QUALITY_FULL: QualityGrid = {
  shape: { batch: 1, heads: 8, kvHeads: 2, headDim: 128 },
  seqLens: [8192, 32768],
  pqBits: [4, 6, 8],
  groupFactors: [1, 2, 4],
  heavySizes: [64, 128, 512],
  queries: 4,
  sinkSize: 128,
  windowSize: 128,
  initOffset: 128,
  planted: 128,
  seed: 7,
};

/** A CPU-sized grid for CI (seconds). */
export const QUALITY_QUICK: QualityGrid = {
  shape: { batch: 1, heads: 4, kvHeads: 2, headDim: 64 },
  seqLens: [2048],
  pqBits: [4, 6],
  groupFactors: [1, 2],
  heavySizes: [32, 64],
  queries: 2,
  sinkSize: 32,
  windowSize: 32,
  initOffset: 32,
  planted: 32,
  seed: 7,
};

export interface QualityRow {
  readonly impl: string;
  readonly sk: number;
  readonly pqBits?: number;
  readonly M?: number;
  readonly K: number;
  readonly recall: number;
  readonly softmaxMass: number;
  readonly attendRelError: number;
}

function mean(rs: readonly QualityResult[]): QualityResult {
  const avg = (f: (r: QualityResult) => number): number => rs.reduce((a, r) => a + f(r), 0) / rs.length;
  return { recall: avg((r) => r.recall), softmaxMass: avg((r) => r.softmaxMass), attendRelError: avg((r) => r.attendRelError) };
}

/** Run the grid; `onProgress(done, total)` after each built index. */
export function runQuality(grid: QualityGrid, backend: 'cpu' | 'cuda', onProgress?: (done: number, total: number) => void): QualityRow[] {
  const { shape } = grid;
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = shape;
  const rows: QualityRow[] = [];
  const total = grid.seqLens.length * grid.pqBits.length * grid.groupFactors.length;
  let done = 0;
  for (const sk of grid.seqLens) {
    const gen = new SyntheticLLM({ shape, seed: grid.seed, plantedCount: grid.planted, plantedRange: [grid.initOffset + grid.sinkSize, sk - grid.windowSize] });
    const keys = gen.block('keys', 0, sk);
    const values = gen.block('values', 0, sk);
    const queries = Array.from({ length: grid.queries }, (_, i) => gen.query(i));
    const base: Partial<PQConfig> = { sinkSize: grid.sinkSize, windowSize: grid.windowSize, initOffset: grid.initOffset };
    const refLayout = makeLayout(shape, { ...base, heavySize: grid.heavySizes[0] });
    const refs = queries.map((query) => new QualityReference({ layout: refLayout, query, keys, values, seqStride: sk, seqLen: sk }));
    for (const K of grid.heavySizes) {
      for (const [impl, kind] of [['exact-topk', 'exact'], ['sink-window', 'sink-window'], ['random-k', 'random']] as const) {
        const r = mean(refs.map((ref, i) => ref.evaluate(ref.baselineLists(kind, K, grid.seed + i), K)));
        rows.push({ impl, sk, K, ...r });
      }
    }
    for (const pqBits of grid.pqBits) {
      for (const M of grid.groupFactors) {
        const config = { ...base, pqBits, pqGroupFactor: M, heavySize: grid.heavySizes[0] };
        const builder = createPQCache({ backend, shape, config, capacity: sk });
        let state: PQIndexState;
        try {
          builder.build(new HostTensor('f32', [B, Hkv, sk, D], keys));
          state = builder.exportState();
        } finally {
          builder.dispose();
        }
        for (const K of grid.heavySizes) {
          const layout = makeLayout(shape, { ...config, heavySize: K });
          const cache = cacheFromState(backend, { ...state, layout });
          try {
            const results = queries.map((query, i) => {
              const sel = cache.selectToHost(new HostTensor('f32', [B, H, 1, D], query));
              const lists: SparseLists = { sparseList: sel.sparseList.data as Int32Array, sparseLen: sel.sparseLen.data as Int32Array, listCapacity: layout.listCapacity };
              return refs[i].evaluate(lists, K);
            });
            rows.push({ impl: `pqcache-${backend}`, sk, pqBits, M, K, ...mean(results) });
          } finally {
            cache.dispose();
          }
        }
        onProgress?.(++done, total);
      }
    }
  }
  return rows;
}

/** The grid's rows as result-record rows (quality figures in `extra`). */
export function qualityRecordRows(grid: QualityGrid, rows: readonly QualityRow[]): RecordRow[] {
  const { batch: B, heads: H, kvHeads: Hkv, headDim: D } = grid.shape;
  return rows.map((r) => ({
    impl: r.impl,
    config: {
      B, H, Hkv, D, sk: r.sk, S: grid.sinkSize, W: grid.windowSize, K: r.K, O: grid.initOffset, metric: 'euclidean',
      ...(r.pqBits !== undefined ? { pqBits: r.pqBits, M: r.M as number } : {}), planted: grid.planted, queries: grid.queries, seed: grid.seed,
    },
    extra: { recall: round3(r.recall), softmax_mass: round3(r.softmaxMass), attend_rel_error: round3(r.attendRelError) },
  }));
}

/**
 * Sanity of the ordering the report relies on (exact top-K ≥ PQ ≥ random on recall, per sk and
 * K): the problems found, empty when sane.
 */
export function orderingProblems(rows: readonly QualityRow[]): string[] {
  const problems: string[] = [];
  for (const r of rows) {
    if (!r.impl.startsWith('pqcache')) continue;
    const find = (impl: string): QualityRow | undefined => rows.find((x) => x.impl === impl && x.sk === r.sk && x.K === r.K);
    const exact = find('exact-topk');
    const random = find('random-k');
    const tag = `sk=${r.sk} K=${r.K} pqBits=${r.pqBits} M=${r.M}`;
    if (exact && r.recall > exact.recall + 1e-12) problems.push(`${tag}: PQ recall ${r.recall} above exact top-K ${exact.recall}`);
    if (random && r.recall < random.recall) problems.push(`${tag}: PQ recall ${r.recall} below random ${random.recall}`);
  }
  return problems;
}
