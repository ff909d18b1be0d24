/**
 * pqcache: PQCache sparse attention for LLM decoding.
 *
 *   import { createPQCache, HostTensor } from 'pqcache';
 *   const cache = createPQCache({ shape: { batch: 1, heads: 32, kvHeads: 8, headDim: 128 }, capacity: 40000 });
 *   cache.build(keys);                       // keys [B, Hkv, sk, D]
 *   const { sparseList, sparseLen, weights } = cache.stepToHost(query, newKey);
 */
export * from './errors.js';
export { HostTensor, numel } from './tensor/host-tensor.js';
export { type DeviceTensor } from './tensor/device-tensor.js';
export { type DType, type FloatDType, f16ToF32, f32ToF16, bf16ToF32, f32ToBf16 } from './tensor/dtype.js';
export {
  type PQConfig,
  type CacheShape,
  type Layout,
  type Metric,
  DEFAULT_CONFIG,
  SEED_SHAPE,
  SEED_SEQ_LEN,
  makeLayout,
  usesFullAttention,
} from './pq/config.js';
export { type PQCache, type PQCacheOptions, type SelectResult, type BackendName, CpuPQCache } from './pq/cache.js';
export { CudaPQCache, type CudaPQCacheOptions, type ResidentOptions } from './pq/cuda-cache.js';
export { createPQCache, decideBackend, type BackendChoice, type CreateOptions } from './pq/backend.js';
export { PQCacheStack } from './pq/stack.js';
export { type PQIndexState } from './pq/index-state.js';
export { saveIndex, loadIndex, encodeIndex, decodeIndex } from './pq/persist.js';
export { SyntheticLLM } from './pq/synthetic.js';
export { attendCpu, denseAttentionCpu } from './attention/cpu-attention.js';
export * as cuda from './cuda/index.js';
export { CpuDecodeLayer, type DecodeLayer, type DecodeLayerOptions, type StepInputs, type AttentionMode } from './attention/decode-layer.js';
export { CudaDecodeLayer, type CudaDecodeLayerOptions } from './attention/cuda-decode-layer.js';
export { CudaDecodeStack, CpuDecodeStack, type CudaDecodeStackOptions, type DecodeStackOptions } from './attention/decode-stack.js';
export { CudaAttention, KVCache, type KVCacheView } from './attention/cuda-attention.js';
export { QualityReference, measureQuality, type QualityResult } from './pq/quality.js';
