import assert from 'node:assert/strict';
import test from 'node:test';
import { CpuPQCache, type PQCache } from '../src/pq/cache.js';
import { type PQIndexState } from '../src/pq/index-state.js';
import { CPU_LIMITS, makeCase, runCase } from '../src/pq/verify.js';
import { HostTensor } from '../src/tensor/host-tensor.js';

test('verify: the CPU backend agrees with the brute force on random cases (integer and real)', () => {
  let exact = 0;
  for (let i = 0; i < 120; i++) {
    const c = makeCase(i, 2024, CPU_LIMITS);
    if (c.mode === 'exact') exact++;
    const r = runCase(c, (s) => CpuPQCache.fromState(s));
    assert.deepEqual(r.errors, [], r.description);
  }
  assert.ok(exact > 30 && exact < 100, `both modes drawn (${exact} exact)`);
});

/** A backend that moves one heavy hitter to its neighbour: verify must catch it. */
function brokenBackend(state: PQIndexState): PQCache {
  const inner = CpuPQCache.fromState(state);
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop !== 'stepToHost') return Reflect.get(target, prop, receiver);
      return (q: HostTensor, k: HostTensor) => {
        const r = target.stepToHost(q, k);
        const list = r.sparseList.data as Int32Array;
        const S = state.layout.config.sinkSize;
        const len = (r.sparseLen.data as Int32Array)[0];
        const i = Math.min(len - 1, S + 1);
        if (i >= 0 && len > 0) list[i] = list[i] + 1 < state.seqLen + 1 && !list.includes(list[i] + 1) ? list[i] + 1 : -5;
        return r;
      };
    },
  });
}

test('verify: a backend that returns a wrong list is reported', () => {
  let caught = 0;
  for (let i = 0; i < 20; i++) {
    const r = runCase(makeCase(i, 99, CPU_LIMITS), brokenBackend);
    if (r.errors.length > 0) caught++;
  }
  assert.equal(caught, 20);
});
