#!/usr/bin/env node
// One line per select-bench record of an A/B run (device-check.sh rowab/baseab): the file, the
// commit and the seed row's wall and GPU percentiles, so alternating runs read side by side.
//   node scripts/ab-table.mjs OUT/ab-*.json
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

const f = (x) => (typeof x === 'number' ? x.toFixed(2) : '-').padStart(7);
console.log('record'.padEnd(22), 'commit'.padEnd(18), 'wall med', '    p90', '    p99', ' gpu med', '    p90', ' idle-q', 'enqueue');
for (const file of process.argv.slice(2)) {
  let rec;
  try {
    rec = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    console.log(basename(file).padEnd(22), `unreadable: ${e.message}`);
    continue;
  }
  const row = rec.rows?.find((r) => r.impl === 'pqcache-cuda') ?? rec.rows?.[0];
  if (row === undefined) {
    console.log(basename(file).padEnd(22), 'no rows');
    continue;
  }
  const w = row.wall_us ?? {};
  const g = row.gpu_us ?? {};
  console.log(basename(file).padEnd(22), String(rec.commit ?? '?').slice(0, 18).padEnd(18), f(w.median), f(w.p90), f(w.p99), f(g.median), f(g.p90), f(row.extra?.gpu_idle_queue_us?.median), f(row.extra?.host_enqueue_us_median));
}
