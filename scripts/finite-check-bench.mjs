// How long the host-input finiteness check takes (src/pq/validate.ts checkFinite: WebAssembly SIMD,
// src/tensor/finite.ts), against the scalar forms it replaced, on 4096 floats (one seed-config query
// or key). Host only; run after `npm run build`:
//   node scripts/finite-check-bench.mjs
import { checkFinite } from '../dist/src/pq/validate.js';
import { HostTensor } from '../dist/src/tensor/host-tensor.js';

function eightSums(d) { // the previous form: eight sums of x · 0
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, i = 0;
  for (const n = d.length & ~7; i < n; i += 8) { s0 += d[i] * 0; s1 += d[i + 1] * 0; s2 += d[i + 2] * 0; s3 += d[i + 3] * 0; s4 += d[i + 4] * 0; s5 += d[i + 5] * 0; s6 += d[i + 6] * 0; s7 += d[i + 7] * 0; }
  for (; i < d.length; i++) s0 += d[i] * 0;
  return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7 === 0;
}
function subFourSums(d) { // the form before that: four sums of x − x
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, i = 0;
  for (const n = d.length & ~3; i < n; i += 4) { s0 += d[i] - d[i]; s1 += d[i + 1] - d[i + 1]; s2 += d[i + 2] - d[i + 2]; s3 += d[i + 3] - d[i + 3]; }
  for (; i < d.length; i++) s0 += d[i] - d[i];
  return s0 + s1 + s2 + s3 === 0;
}
function isFiniteEach(d) { // the first form
  for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) return false;
  return true;
}
const data = new Float32Array(4096).map((_, i) => Math.sin(i) * 3);
const t = new HostTensor('f32', [4096], data);
const forms = [['checkFinite (WebAssembly SIMD)', () => checkFinite('x', t)], ['eight sums of x · 0', () => eightSums(data)], ['four sums of x − x', () => subFourSums(data)], ['Number.isFinite per element', () => isFiniteEach(data)]];
const reps = 100000;
for (const [name, fn] of forms) {
  for (let i = 0; i < reps / 5; i++) fn(); // warm up
  const times = [];
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < reps; i++) fn();
    times.push(Number(process.hrtime.bigint() - t0) / reps / 1000);
  }
  times.sort((a, b) => a - b);
  console.log(`${name.padEnd(36)} ${times[2].toFixed(2)} μs per 4096 floats (median of 5 × ${reps})`);
}
