/**
 * The report's charts: vega-lite specifications compiled and rendered to SVG in Node (no browser,
 * no canvas: vega's SVG renderer with its text-width estimates).
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

/** Render a vega-lite spec to a standalone SVG document. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

export interface LatencyPoint {
  /** Series label: pqcache sparse step, dense, PyTorch SDPA, … */
  readonly series: string;
  readonly contextLength: number;
  readonly batch: number;
  /** GPU time per call, μs. */
  readonly microseconds: number;
}

/** Latency against context length (log–log), one line per implementation, one panel per batch size. */
export function latencySpec(points: readonly LatencyPoint[], title: string): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    data: { values: points.map((p) => ({ ...p, batchLabel: `B = ${p.batch}` })) },
    facet: { column: { field: 'batchLabel', type: 'nominal', title: null } },
    config: { legend: { labelLimit: 400, orient: 'bottom', columns: 2 } },
    spec: {
      width: 300,
      height: 240,
      mark: { type: 'line', point: true },
      encoding: {
        x: {
          field: 'contextLength', type: 'quantitative', scale: { type: 'log' }, title: 'context length (tokens)',
          axis: { values: [...new Set(points.map((p) => p.contextLength))].sort((a, b) => a - b), grid: false },
        },
        y: {
          field: 'microseconds', type: 'quantitative', scale: { type: 'log' }, title: 'GPU time per decode step (μs)',
          axis: { values: [1, 10, 100, 1000, 10000, 100000, 1000000], format: '~s' },
        },
        color: { field: 'series', type: 'nominal', title: 'implementation' },
      },
    },
  };
}

export interface RecallPoint {
  readonly series: string;
  readonly pqBits: number;
  readonly recall: number;
}

/** Recall@K against pqBits: one line per PQ setting and per baseline (baselines are flat). */
export function recallSpec(points: readonly RecallPoint[], title: string): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    width: 360,
    height: 240,
    config: { legend: { labelLimit: 400 } },
    data: { values: [...points] },
    mark: { type: 'line', point: true },
    encoding: {
      x: {
        field: 'pqBits', type: 'quantitative', title: 'pqBits (C = 2^bits centroids per sub-space)',
        axis: { values: [...new Set(points.map((p) => p.pqBits))].sort((a, b) => a - b) },
      },
      y: { field: 'recall', type: 'quantitative', title: 'recall@K vs exact top-K', scale: { domain: [0, 1] } },
      color: { field: 'series', type: 'nominal', title: 'selection' },
    },
  };
}
