import assert from 'node:assert/strict';
import test from 'node:test';
import { attendCpu, denseAttentionCpu } from '../src/attention/cpu-attention.js';

test('attend over every position with weight 1 equals dense attention (GQA, rel. err ≤ 1e-6)', () => {
  const shape = { batch: 2, heads: 4, kvHeads: 2, headDim: 16 };
  const sk = 37;
  const stride = 40;
  const rnd = (i: number): number => Math.sin(i * 12.9898) * 3;
  const query = new Float32Array(2 * 4 * 16).map((_, i) => rnd(i));
  const keys = new Float32Array(2 * 2 * stride * 16).map((_, i) => rnd(i + 1e4));
  const values = new Float32Array(2 * 2 * stride * 16).map((_, i) => rnd(i + 2e4));
  const inp = { shape, query, keys, values, seqStride: stride, seqLen: sk };
  const L = 50;
  const list = new Int32Array(8 * L).fill(-1);
  const len = new Int32Array(8).fill(sk);
  for (let r = 0; r < 8; r++) for (let p = 0; p < sk; p++) list[r * L + p] = p;
  const sparse = attendCpu(inp, { sparseList: list, sparseLen: len, listCapacity: L, weight: () => 1 });
  const dense = denseAttentionCpu(inp);
  let num = 0;
  let den = 0;
  for (let i = 0; i < dense.length; i++) {
    num += (sparse[i] - dense[i]) ** 2;
    den += dense[i] ** 2;
  }
  assert.ok(Math.sqrt(num / den) <= 1e-6);
  // A sub-list with weight 0 on one position equals attention without that position.
  for (let r = 0; r < 8; r++) len[r] = 3;
  const w = (_row: number, p: number): number => (p === 1 ? 0 : 1);
  const a = attendCpu(inp, { sparseList: list, sparseLen: len, listCapacity: L, weight: w });
  for (let r = 0; r < 8; r++) {
    list[r * L] = 0;
    list[r * L + 1] = 2;
    len[r] = 2;
  }
  const b = attendCpu(inp, { sparseList: list, sparseLen: len, listCapacity: L, weight: () => 1 });
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 * (1 + Math.abs(b[i])));
});
