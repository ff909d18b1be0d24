import assert from 'node:assert/strict';
import test from 'node:test';
import { Owned } from '../src/cuda/owned.js';

test('Owned disposes newest first, every item once, even when one throws (first error rethrown)', () => {
  const log: string[] = [];
  const owned = new Owned();
  const item = (name: string, fail = false) => ({
    dispose() {
      log.push(name);
      if (fail) throw new Error(`${name} failed`);
    },
  });
  const a = item('a');
  assert.equal(owned.add(a), a, 'add returns the item');
  owned.add(item('b', true));
  owned.add(item('c', true));
  assert.throws(() => owned.dispose(), /c failed/);
  assert.deepEqual(log, ['c', 'b', 'a']);
  owned.dispose(); // already empty: nothing disposed twice
  assert.deepEqual(log, ['c', 'b', 'a']);
});

test('Owned.disposeAfter waits for the stream, then disposes the given items in order and the owned ones, even when the wait throws', () => {
  const log: string[] = [];
  const item = (name: string) => ({ dispose: () => void log.push(name) });
  const owned = new Owned();
  owned.add(item('stream'));
  owned.add(item('buffer'));
  const faulted = { synchronize: () => { log.push('sync'); throw new Error('launch failed'); } };
  assert.throws(() => owned.disposeAfter(faulted, item('graphs'), undefined, item('scratch')), /launch failed/);
  assert.deepEqual(log, ['sync', 'graphs', 'scratch', 'buffer', 'stream']);
});
