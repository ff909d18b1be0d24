/**
 * `pqcache demo` (`npm start`): build a PQ index over synthetic LLM-like keys, decode N steps
 * (append the new key, select), and print latency and selection quality.
 */
import { nowUs, round3, summarize } from '../bench/stats.js';
import { createPQCache } from '../pq/backend.js';
import { CudaPQCache } from '../pq/cuda-cache.js';
import type { BackendChoice } from '../pq/backend.js';
import { makeLayout } from '../pq/config.js';
import { measureQuality } from '../pq/quality.js';
import { SyntheticLLM } from '../pq/synthetic.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { table } from './format.js';
import { progress } from './progress.js';

export interface DemoOptions {
  readonly backend: BackendChoice;
  readonly steps: number;
  readonly seqLen?: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly qualityEvery: number;
}

export function runDemo(o: DemoOptions): number {
  const shape = { batch: 1, heads: o.heads, kvHeads: o.kvHeads, headDim: 128 };
  const config = { sinkSize: 128, windowSize: 128, heavySize: 128, pqGroupFactor: 2, pqBits: 6, initOffset: 128, kmeansIters: 10 };
  const probe = createPQCache({ backend: o.backend, shape, config, capacity: 1 });
  const backend = probe.backend;
  console.log(`backend: ${backend} (${probe.backendReason})`);
  probe.dispose();
  const sk = o.seqLen ?? (backend === 'cuda' ? 32000 : 8192);
  const layout = makeLayout(shape, config);
  const { kvHeads: Hkv, heads: H, headDim: D } = shape;
  const capacity = sk + o.steps;
  const gen = new SyntheticLLM({ shape, seed: 7, plantedCount: 64, plantedRange: [256, sk - 256] });
  console.log(`synthetic keys: B=1 H=${H} Hkv=${Hkv} D=${D} sk=${sk}, ${o.steps} decode steps; config S=W=K=128, M=2, C=64, O=128`);
  const keys = new Float32Array(Hkv * capacity * D);
  const values = new Float32Array(Hkv * capacity * D);
  for (let kvh = 0; kvh < Hkv; kvh++) {
    for (let p = 0; p < sk; p++) {
      gen.keyAt(0, kvh, p, keys, (kvh * capacity + p) * D);
      gen.valueAt(0, kvh, p, values, (kvh * capacity + p) * D);
    }
  }
  const prefix = new Float32Array(Hkv * sk * D);
  for (let kvh = 0; kvh < Hkv; kvh++) prefix.set(keys.subarray(kvh * capacity * D, (kvh * capacity + sk) * D), kvh * sk * D);

  const cache = createPQCache({ backend, shape, config, capacity });
  const bar = progress('build');
  const t0 = nowUs();
  cache.build(new HostTensor('f32', [1, Hkv, sk, D], prefix), { onProgress: (p) => bar.update(p.done, p.total) });
  bar.stop();
  const buildMs = (nowUs() - t0) / 1000;
  console.log(`build: ${buildMs.toFixed(0)} ms (${Hkv * 2} k-means groups of ${sk - 128} keys)`);

  const lat: number[] = [];
  const quality: Array<{ recall: number; softmaxMass: number; attendRelError: number }> = [];
  const stepBar = progress('decode');
  for (let s = 0; s < o.steps; s++) {
    const p = sk + s;
    const key = new Float32Array(Hkv * D);
    for (let kvh = 0; kvh < Hkv; kvh++) {
      gen.keyAt(0, kvh, p, keys, (kvh * capacity + p) * D);
      gen.valueAt(0, kvh, p, values, (kvh * capacity + p) * D);
      key.set(keys.subarray((kvh * capacity + p) * D, (kvh * capacity + p + 1) * D), kvh * D);
    }
    const q = gen.query(s);
    const qt = new HostTensor('f32', [1, H, 1, D], q);
    const kt = new HostTensor('f32', [1, Hkv, 1, D], key);
    const measure = s % o.qualityEvery === 0 || s === o.steps - 1;
    let lists: { sparseList: Int32Array; sparseLen: Int32Array };
    const ts = nowUs();
    if (cache instanceof CudaPQCache) {
      // What a model does each token: one graph launch, results stay on the GPU; wait for them.
      cache.step(qt, kt);
      cache.synchronize();
      lat.push(nowUs() - ts);
      lists = measure ? cache.listsToHost() : { sparseList: new Int32Array(0), sparseLen: new Int32Array(0) };
    } else {
      const res = cache.stepToHost(qt, kt);
      lat.push(nowUs() - ts);
      lists = { sparseList: res.sparseList.data as Int32Array, sparseLen: res.sparseLen.data as Int32Array };
    }
    if (measure) quality.push(measureQuality({ layout, query: q, keys, values, seqStride: capacity, seqLen: p + 1, ...lists }));
    stepBar.update(s + 1, o.steps);
  }
  stepBar.stop();
  cache.dispose();
  const l = summarize(lat);
  const mean = (f: (q: (typeof quality)[number]) => number): number => quality.reduce((a, q) => a + f(q), 0) / quality.length;
  console.log(table(
    ['backend', 'steps', 'step median μs', 'p99 μs', 'recall@128', 'softmax mass', 'attend rel err'],
    [[backend, o.steps, round3(l.median), round3(l.p99), mean((q) => q.recall).toFixed(3), mean((q) => q.softmaxMass).toFixed(6), mean((q) => q.attendRelError).toExponential(2)]],
  ));
  console.log(backend === 'cuda'
    ? '(step = host query/key → append + select on the GPU → synchronized, results on the device; quality from sampled steps vs exact attention)'
    : '(step = append the new key + select, results as host arrays; quality from sampled steps vs exact attention)');
  return 0;
}
