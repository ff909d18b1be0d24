/**
 * `pqcache demo` (`npm start`): the main job end to end. Build a PQ index over synthetic LLM-like
 * keys, decode N tokens with the whole step (append the new key/value → select → sparse attention)
 * on the GPU when there is one, else on the CPU; time each step, sample the quality against exact
 * attention, time dense attention on the same cache for the speed-up, and write report/index.html
 * with SVG charts.
 */
import { attendCpu } from '../attention/cpu-attention.js';
import { CudaDecodeLayer } from '../attention/cuda-decode-layer.js';
import { CpuDecodeLayer, type DecodeLayer, type StepInputs } from '../attention/decode-layer.js';
import { QUALITY_QUICK, runQuality } from '../bench/quality-bench.js';
import { nowUs, summarize } from '../bench/stats.js';
import { CudaContext } from '../cuda/context.js';
import { type BackendChoice, decideBackend } from '../pq/backend.js';
import { makeLayout } from '../pq/config.js';
import { QualityReference, type QualityResult } from '../pq/quality.js';
import { SyntheticLLM } from '../pq/synthetic.js';
import { HostTensor } from '../tensor/host-tensor.js';
import { latencyPoints, loadRecord, qualityRowsOf, recallPoints, writeReport } from '../report/report.js';
import { formatNumber } from './format.js';
import { progress } from './progress.js';

export interface DemoOptions {
  readonly backend: BackendChoice;
  readonly steps: number;
  readonly seqLen?: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly qualityEvery: number;
  /** Where the report goes (default: report/). */
  readonly reportDir: string;
}

/** Host copies of the synthetic K/V for positions 0 … capacity−1, [Hkv, capacity, D] (B = 1). */
class HostKV {
  readonly keys: Float32Array;
  readonly values: Float32Array;

  constructor(readonly gen: SyntheticLLM, readonly capacity: number) {
    const { kvHeads: Hkv, headDim: D } = gen.shape;
    this.keys = new Float32Array(Hkv * capacity * D);
    this.values = new Float32Array(Hkv * capacity * D);
  }

  /** Generate position p's rows; returns key and value [1, Hkv, 1, D]. */
  fill(p: number): { key: Float32Array; value: Float32Array } {
    const { kvHeads: Hkv, headDim: D } = this.gen.shape;
    const key = new Float32Array(Hkv * D);
    const value = new Float32Array(Hkv * D);
    for (let kvh = 0; kvh < Hkv; kvh++) {
      const off = (kvh * this.capacity + p) * D;
      this.gen.keyAt(0, kvh, p, this.keys, off);
      this.gen.valueAt(0, kvh, p, this.values, off);
      key.set(this.keys.subarray(off, off + D), kvh * D);
      value.set(this.values.subarray(off, off + D), kvh * D);
    }
    return { key, value };
  }

  /** Rows [1, Hkv, n, D] of positions 0 … n−1. */
  prefix(which: 'keys' | 'values', n: number): HostTensor {
    const { kvHeads: Hkv, headDim: D } = this.gen.shape;
    const src = which === 'keys' ? this.keys : this.values;
    const out = new Float32Array(Hkv * n * D);
    for (let kvh = 0; kvh < Hkv; kvh++) out.set(src.subarray(kvh * this.capacity * D, (kvh * this.capacity + n) * D), kvh * n * D);
    return new HostTensor('f32', [1, Hkv, n, D], out);
  }
}

function relError(got: Float32Array, want: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i] - want[i]) ** 2;
    den += want[i] ** 2;
  }
  return Math.sqrt(num / den);
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const shape = { batch: 1, heads: o.heads, kvHeads: o.kvHeads, headDim: 128 };
  const config = { sinkSize: 128, windowSize: 128, heavySize: 128, pqGroupFactor: 2, pqBits: 6, initOffset: 128, kmeansIters: 10 };
  const decision = decideBackend(o.backend, { shape, config });
  const backend = decision.backend;
  const device = backend === 'cuda' ? CudaContext.primary().device.name : 'CPU';
  console.log(`backend: ${backend} (${decision.reason})${backend === 'cuda' ? `, ${device}` : ''}`);
  const sk = o.seqLen ?? (backend === 'cuda' ? 32000 : 8192);
  const capacity = sk + o.steps;
  const layout = makeLayout(shape, config);
  const { heads: H, kvHeads: Hkv, headDim: D } = shape;
  const kvDType = backend === 'cuda' ? 'bf16' : 'f32';
  console.log(`synthetic LLM-like keys: B=1 H=${H} Hkv=${Hkv} D=${D}, ${sk} cached tokens, ${o.steps} decode steps; ` +
    `S=W=K=128, M=2, pqBits=6, O=128; K/V cache ${kvDType}`);
  const gen = new SyntheticLLM({ shape, seed: 7, plantedCount: 128, plantedRange: [256, sk - 256] });
  const host = new HostKV(gen, capacity);
  for (let p = 0; p < sk; p++) host.fill(p);

  const options = { shape, config, capacity, kvDType } as const;
  const layer: DecodeLayer = backend === 'cuda' ? new CudaDecodeLayer(options) : new CpuDecodeLayer(options);
  const stepInputs: Array<StepInputs<HostTensor>> = [];
  const lat: number[] = [];
  const quality: QualityResult[] = [];
  let worstOutputError = 0;
  let buildMs = 0;
  let denseLat: number[] = [];
  try {
    const bar = progress('build');
    const t0 = nowUs();
    layer.prefill(host.prefix('keys', sk), host.prefix('values', sk), { onProgress: (p) => bar.update(p.done, p.total) });
    bar.stop();
    buildMs = (nowUs() - t0) / 1000;
    console.log(`prefill + index build: ${buildMs.toFixed(0)} ms (${Hkv * 2} k-means groups of ${sk - 128} keys)`);

    const stepBar = progress('decode');
    for (let s = 0; s < o.steps; s++) {
      const p = sk + s;
      const { key, value } = host.fill(p);
      const q = gen.query(s);
      const inputs = {
        query: new HostTensor('f32', [1, H, 1, D], q),
        key: new HostTensor('f32', [1, Hkv, 1, D], key),
        value: new HostTensor('f32', [1, Hkv, 1, D], value),
      };
      stepInputs.push(inputs);
      const ts = nowUs();
      let hostOut: HostTensor | undefined;
      if (layer instanceof CudaDecodeLayer) {
        // What a model does per token and layer: one graph launch; the output stays on the GPU.
        layer.step(inputs);
        layer.synchronize();
      } else {
        hostOut = layer.stepToHost(inputs);
      }
      lat.push(nowUs() - ts);
      if (s % o.qualityEvery === 0 || s === o.steps - 1) {
        const lists = layer.listsToHost();
        const x = { layout, query: q, keys: host.keys, values: host.values, seqStride: capacity, seqLen: p + 1 };
        quality.push(new QualityReference(x).evaluate(lists));
        // The step's own attention output against float64 attention over the same lists.
        const got = (hostOut ?? (layer as CudaDecodeLayer).outputToHost()).toFloat32();
        const want = attendCpu({ ...x, shape }, { ...lists, weight: () => 1 });
        worstOutputError = Math.max(worstOutputError, relError(got, want));
      }
      stepBar.update(s + 1, o.steps);
    }
    stepBar.stop();
    denseLat = timeDense(layer, backend, options, host, stepInputs);
  } finally {
    layer.dispose();
  }

  const l = summarize(lat);
  const dense = summarize(denseLat);
  const avg = (f: (q: QualityResult) => number): number => quality.reduce((a, q) => a + f(q), 0) / quality.length;
  const tolerance = kvDType === 'f32' ? 1e-5 : 1e-2;
  const summary: Array<[string, string]> = [
    ['backend', `${backend} (${device})`],
    ['shape', `B=1, H=${H}, Hkv=${Hkv}, D=${D}; ${sk} cached tokens + ${o.steps} decoded; K/V ${kvDType}`],
    ['PQ config', 'S = W = K = 128, M = 2, pqBits = 6, O = 128'],
    ['prefill + index build', `${buildMs.toFixed(0)} ms`],
    ['sparse step (append + select + attend), median / p99', `${formatNumber(l.median)} / ${formatNumber(l.p99)} μs`],
    ['dense step (append + attend over every token), median', `${formatNumber(dense.median)} μs (${denseLat.length} steps)`],
    ['speed-up over dense', `${(dense.median / l.median).toFixed(2)}×`],
    ['recall@128 vs exact top-128', avg((q) => q.recall).toFixed(3)],
    ['softmax mass kept', avg((q) => q.softmaxMass).toFixed(4)],
    ['attention error vs dense (relative)', avg((q) => q.attendRelError).toExponential(2)],
    [
      'step output vs float64 oracle (worst relative)',
      backend === 'cpu' ? 'n/a (the CPU backend is the oracle)' : `${worstOutputError.toExponential(2)} (${worstOutputError <= tolerance ? 'ok' : 'MISMATCH'}, tolerance ${tolerance})`,
    ],
  ];
  const width = Math.max(...summary.map(([k]) => k.length));
  for (const [k, v] of summary) console.log(`${k.padEnd(width)}  ${v}`);
  console.log(backend === 'cuda'
    ? '(step = host query/key/value → one graph launch → synchronized; the output stays on the GPU. Quality sampled every ' +
      `${o.qualityEvery} steps against exact attention on the host.)`
    : `(step = append + select + attend, output as a host array. Quality sampled every ${o.qualityEvery} steps.)`);
  console.log('(Quality of the seed setting M = 2 swings kv-head by kv-head with the k-means initial draw on this data; ' +
    'M = 4 is steadier: README.md, "Quality".)');

  const attend = loadRecord('attend', device);
  const qualityRecord = loadRecord('quality', device);
  let recall: Parameters<typeof writeReport>[1]['recall'];
  if (qualityRecord) {
    const rows = qualityRowsOf(qualityRecord.record);
    const skMax = Math.max(...rows.map((r) => r.sk));
    recall = { points: recallPoints(rows, 128, skMax), source: `bench/results/${qualityRecord.file.split('/').pop()} (${qualityRecord.record.device})`, K: 128, sk: skMax };
  } else {
    const rows = runQuality(QUALITY_QUICK, 'cpu');
    recall = { points: recallPoints(rows, 64, 2048), source: 'this demo: pqcache quality --quick on the CPU', K: 64, sk: 2048 };
  }
  const files = await writeReport(o.reportDir, {
    title: `pqcache demo — ${device}`,
    summary,
    latency: attend ? { points: latencyPoints(attend.record), source: `bench/results/${attend.file.split('/').pop()} (${attend.record.device}, commit ${attend.record.commit.slice(0, 7)})` } : undefined,
    recall,
  });
  console.log(`report: ${files.join(', ')}`);
  return worstOutputError <= tolerance ? 0 : 1;
}

/** Dense attention on the same cache contents: the last steps replayed (same rows) through a dense layer. */
function timeDense(layer: DecodeLayer, backend: 'cpu' | 'cuda', options: ConstructorParameters<typeof CpuDecodeLayer>[0], host: HostKV, inputs: ReadonlyArray<StepInputs<HostTensor>>): number[] {
  const n = Math.min(inputs.length, backend === 'cuda' ? 100 : 10);
  const start = layer.seqLen - n;
  const lat: number[] = [];
  if (layer instanceof CudaDecodeLayer) {
    const dense = new CudaDecodeLayer({ ...options, attention: 'dense', kv: layer.kv, stream: layer.stream });
    try {
      dense.adoptPrefilled(start);
      for (const x of inputs.slice(inputs.length - n)) {
        const t = nowUs();
        dense.step(x);
        dense.synchronize();
        lat.push(nowUs() - t);
      }
    } finally {
      dense.dispose();
    }
    return lat;
  }
  const dense = new CpuDecodeLayer({ ...options, attention: 'dense' });
  try {
    dense.prefill(host.prefix('keys', start), host.prefix('values', start));
    for (const x of inputs.slice(inputs.length - n)) {
      const t = nowUs();
      dense.stepToHost(x);
      lat.push(nowUs() - t);
    }
  } finally {
    dense.dispose();
  }
  return lat;
}
