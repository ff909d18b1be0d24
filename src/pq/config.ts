/**
 * PQCache configuration (SPEC §1) and the cache's tensor shape, validated once at construction.
 */
import { ConfigError } from '../errors.js';

export type Metric = 'euclidean' | 'ip';

export interface PQConfig {
  /** S: the first S positions are always attended. */
  readonly sinkSize: number;
  /** W: the last W positions are always attended. */
  readonly windowSize: number;
  /** K: how many heavy hitters the PQ scores select. */
  readonly heavySize: number;
  /** M: sub-vectors per key (D % M == 0). */
  readonly pqGroupFactor: number;
  /** b: bits per code, C = 2^b centroids per sub-space (1…8). */
  readonly pqBits: number;
  /** k-means rounds at build. */
  readonly kmeansIters: number;
  /** O: the first quantized position; positions below O are never heavy hitters. */
  readonly initOffset: number;
  readonly metric: Metric;
  /** Seed of the k-means initial draw and empty-cluster re-seeding (uint32). */
  readonly seed: number;
}

export interface CacheShape {
  /** B */
  readonly batch: number;
  /** H: query heads. */
  readonly heads: number;
  /** Hkv: key/value heads (H % Hkv == 0). */
  readonly kvHeads: number;
  /** D: head dimension. */
  readonly headDim: number;
}

export const DEFAULT_CONFIG: PQConfig = Object.freeze({
  sinkSize: 128,
  windowSize: 128,
  heavySize: 128,
  pqGroupFactor: 2,
  pqBits: 6,
  kmeansIters: 10,
  initOffset: 128,
  metric: 'euclidean',
  seed: 0x5eed,
});

/** The seed configuration of SPEC §5. */
export const SEED_SHAPE: CacheShape = Object.freeze({ batch: 1, heads: 32, kvHeads: 32, headDim: 128 });
export const SEED_SEQ_LEN = 32000;

function int(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(field, `an integer in [${min}, ${max}]`, v);
  }
  return v;
}

/** Validate a (possibly partial) config and fill defaults. Throws ConfigError naming the field. */
export function resolveConfig(partial: Partial<PQConfig> = {}): PQConfig {
  const c = { ...DEFAULT_CONFIG, ...partial };
  const cfg: PQConfig = {
    sinkSize: int('sinkSize', c.sinkSize, 0, 1 << 30),
    windowSize: int('windowSize', c.windowSize, 0, 1 << 30),
    heavySize: int('heavySize', c.heavySize, 1, 1 << 24),
    pqGroupFactor: int('pqGroupFactor', c.pqGroupFactor, 1, 1 << 16),
    pqBits: int('pqBits', c.pqBits, 1, 8),
    kmeansIters: int('kmeansIters', c.kmeansIters, 0, 10000),
    initOffset: int('initOffset', c.initOffset, 0, 1 << 30),
    metric: c.metric,
    seed: int('seed', c.seed, 0, 0xffffffff),
  };
  if (cfg.metric !== 'euclidean' && cfg.metric !== 'ip') {
    throw new ConfigError('metric', "'euclidean' or 'ip'", cfg.metric);
  }
  return Object.freeze(cfg);
}

export function resolveShape(s: CacheShape): CacheShape {
  const shape = {
    batch: int('batch', s.batch, 1, 1 << 16),
    heads: int('heads', s.heads, 1, 1 << 16),
    kvHeads: int('kvHeads', s.kvHeads, 1, 1 << 16),
    headDim: int('headDim', s.headDim, 1, 1 << 16),
  };
  if (shape.heads % shape.kvHeads !== 0) {
    throw new ConfigError('kvHeads', `a divisor of heads (${shape.heads})`, shape.kvHeads);
  }
  return Object.freeze(shape);
}

/** Everything derived from config + shape, computed once. */
export interface Layout {
  readonly config: PQConfig;
  readonly shape: CacheShape;
  /** C = 2^pqBits */
  readonly numCentroids: number;
  /** dsub = D / M */
  readonly subDim: number;
  /** dsub (+1 for ip): the stored centroid row length. */
  readonly centroidDim: number;
  /** G = H / Hkv */
  readonly groupSize: number;
  /** Width of every sparse list row: max(S + K + W, K + O + 1 + C). */
  readonly listCapacity: number;
}

export function makeLayout(shapeIn: CacheShape, configIn: Partial<PQConfig> = {}): Layout {
  const shape = resolveShape(shapeIn);
  const config = resolveConfig(configIn);
  if (shape.headDim % config.pqGroupFactor !== 0) {
    throw new ConfigError('pqGroupFactor', `a divisor of headDim (${shape.headDim})`, config.pqGroupFactor);
  }
  const numCentroids = 1 << config.pqBits;
  const subDim = shape.headDim / config.pqGroupFactor;
  return Object.freeze({
    config,
    shape,
    numCentroids,
    subDim,
    centroidDim: subDim + (config.metric === 'ip' ? 1 : 0),
    groupSize: shape.heads / shape.kvHeads,
    listCapacity: Math.max(
      config.sinkSize + config.heavySize + config.windowSize,
      fullAttentionThreshold(config, numCentroids),
    ),
  });
}

/** sq = 1: a decode step has one query. */
export const QUERY_LEN = 1;

/** Full attention (every position, weight 1) when sk ≤ K + O + sq + C (SPEC §2 rule 1). */
export function fullAttentionThreshold(config: PQConfig, numCentroids: number): number {
  return config.heavySize + config.initOffset + QUERY_LEN + numCentroids;
}

export function usesFullAttention(layout: Layout, seqLen: number): boolean {
  return seqLen <= fullAttentionThreshold(layout.config, layout.numCentroids);
}

/** The same shape and config, field by field (no strings: a check made on every new request). */
export function sameLayout(a: Layout, b: Layout): boolean {
  return sameFields(a.shape, b.shape) && sameFields(a.config, b.config);
}

function sameFields<T extends object>(a: T, b: T): boolean {
  const ka = Object.keys(a) as (keyof T)[];
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) if (a[k] !== b[k]) return false;
  return true;
}
