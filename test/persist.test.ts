import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'node:test';
import { FormatError } from '../src/errors.js';
import { makeLayout } from '../src/pq/config.js';
import { buildIndexCpu } from '../src/pq/cpu-build.js';
import { decodeIndex, encodeIndex, loadIndex, saveIndex } from '../src/pq/persist.js';
import { decodeSafetensors, encodeSafetensors } from '../src/pq/safetensors.js';
import { HostTensor } from '../src/tensor/host-tensor.js';

function smallIndex() {
  const layout = makeLayout({ batch: 2, heads: 4, kvHeads: 2, headDim: 8 }, { pqGroupFactor: 2, pqBits: 3, kmeansIters: 2, initOffset: 3, metric: 'ip', sinkSize: 2, windowSize: 2, heavySize: 4 });
  const keys = new Float32Array(2 * 2 * 50 * 8).map((_, i) => Math.cos(i * 0.37) * 4);
  return buildIndexCpu(layout, keys, 50, 64);
}

test('safetensors: tensors and metadata round-trip; the header is 8-byte aligned', () => {
  const a = HostTensor.fromNumbers('bf16', [2, 3], [1, 2, 3, 4, 5, 6]);
  const b = new HostTensor('u8', [4], new Uint8Array([1, 2, 3, 255]));
  const c = new HostTensor('i32', [1], new Int32Array([-7]));
  const bytes = encodeSafetensors([['a', a], ['b', b], ['c', c]], { note: 'x' });
  assert.equal(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8, 0);
  const f = decodeSafetensors(bytes);
  assert.equal(f.metadata.note, 'x');
  assert.deepEqual(f.tensors.get('a')?.data, a.data);
  assert.deepEqual(f.tensors.get('b')?.data, b.data);
  assert.deepEqual(f.tensors.get('c')?.shape, [1]);
});

test('index: save/load round-trips centroids, codes, φ, config; capacity can grow', () => {
  const st = smallIndex();
  const dir = mkdtempSync(join(tmpdir(), 'pqcache-'));
  saveIndex(join(dir, 'index.safetensors'), st);
  const back = loadIndex(join(dir, 'index.safetensors'), 100);
  assert.equal(back.capacity, 100);
  assert.equal(back.seqLen, 50);
  assert.deepEqual(back.centroids, st.centroids);
  assert.deepEqual(back.phi, st.phi);
  assert.deepEqual(back.layout.config, st.layout.config);
  assert.deepEqual(encodeIndex(back), encodeIndex(st));
});

test('index: a wrong header, shape or dtype is a FormatError naming the field', () => {
  const bytes = encodeIndex(smallIndex());
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8');
  const withHeader = (h: string): Uint8Array => {
    const hb = Buffer.from(h.padEnd(n, ' '));
    const out = new Uint8Array(bytes);
    out.set(hb.subarray(0, n), 8);
    return out;
  };
  assert.throws(() => decodeIndex(withHeader(header.replace('"U8"', '"I8"'))), (e: unknown) => e instanceof FormatError && /codes\.dtype/.test(e.message));
  assert.throws(() => decodeIndex(withHeader(header.replace('"F32","shape":[2,2,2]', '"F32","shape":[2,2,1]'))), (e: unknown) => e instanceof FormatError && /phi/.test(e.message));
  assert.throws(() => decodeIndex(withHeader(header.replace('pqcache-index', 'pqcache-other'))), /format/);
  assert.throws(() => decodeIndex(withHeader('{"broken"')), /valid JSON/);
  assert.throws(() => decodeIndex(bytes.subarray(0, 5)), /at least 8 bytes/);
  assert.throws(() => decodeIndex(bytes.subarray(0, bytes.length - 4)), FormatError);
  const dir = mkdtempSync(join(tmpdir(), 'pqcache-'));
  writeFileSync(join(dir, 'x'), withHeader(header.replace('"seqLen":"50"', '"seqLen":"5x"')));
  assert.throws(() => loadIndex(join(dir, 'x')), /seqLen/);
});
