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
