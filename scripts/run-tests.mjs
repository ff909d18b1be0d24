#!/usr/bin/env node
// Runs node's test runner on the *.test.js files under the given folders (Node 20 has no globs,
// and given a folder it would also run helper modules as test files).
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function find(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? find(p) : name.endsWith('.test.js') ? [p] : [];
  });
}

const files = process.argv.slice(2).flatMap(find).sort();
if (files.length === 0) {
  console.error(`run-tests: no *.test.js under ${process.argv.slice(2).join(', ')}`);
  process.exit(1);
}
// GPU test files run one at a time: they share one device, and some measure its free memory.
const serial = process.argv.slice(2).some((d) => /(^|\/)gpu\/?$/.test(d)) ? ['--test-concurrency=1'] : [];
const r = spawnSync(process.execPath, ['--test', ...serial, ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
