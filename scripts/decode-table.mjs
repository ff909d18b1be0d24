#!/usr/bin/env node
// One line per row of attend/step records (bench --kind attend|step): GPU and wall medians, and
// for the sparse rows the same run's sequential launch (overlapLaunches: false) beside them.
//   node scripts/decode-table.mjs bench/results/step-*.json
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

const f = (x) => (typeof x === 'number' ? x.toFixed(2) : '-').padStart(9);
console.log('record'.padEnd(34), 'row'.padEnd(26), ' B', '     sk', '  gpu med', ' wall med', '  seq gpu', ' seq wall', ' overlap');
for (const file of process.argv.slice(2)) {
  const rec = JSON.parse(readFileSync(file, 'utf8'));
  for (const r of rec.rows ?? []) {
    const e = r.extra ?? {};
    console.log(basename(file).padEnd(34), r.impl.padEnd(26), String(r.config?.B ?? '').padStart(2), String(r.config?.sk ?? '').padStart(7),
      f(r.gpu_us?.median), f(r.wall_us?.median), f(e.sequential_launch_gpu_us), f(e.sequential_launch_wall_us), String(e.overlap_launches ?? '').padStart(8));
  }
}
