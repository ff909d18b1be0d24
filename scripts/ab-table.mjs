#!/usr/bin/env node
// One line per select-bench record of an A/B run (device-check.sh rowab/baseab, alternating
// processes): the file, the commit and the seed row's wall and GPU percentiles, so alternating runs
// read side by side; records with a resident row get a second line for it (`gpu` there is the
// device time). Then, per label (the file name less its trailing `-<run>.json`), the median of the
// process medians and their range: what an A/B claim quotes.
//   node scripts/ab-table.mjs OUT/ab-*.json
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

const f = (x) => (typeof x === 'number' ? x.toFixed(2) : '-').padStart(7);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const groups = new Map(); // `${label} ${impl}` -> { wall: [], gpu: [] }
console.log('record'.padEnd(26), 'row'.padEnd(9), 'commit'.padEnd(18), 'wall med', '    p90', '    p99', ' gpu med', '    p90', ' idle-q', 'enqueue');
for (const file of process.argv.slice(2)) {
  let rec;
  try {
    rec = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    console.log(basename(file).padEnd(26), `unreadable: ${e.message}`);
    continue;
  }
  const rows = (rec.rows ?? []).filter((r) => r.impl === 'pqcache-cuda' || r.impl === 'pqcache-cuda-resident');
  if (rows.length === 0) {
    console.log(basename(file).padEnd(26), 'no rows');
    continue;
  }
  const label = basename(file).replace(/-\d+\.json$/, '').replace(/\.json$/, '');
  for (const row of rows) {
    const kind = row.impl === 'pqcache-cuda' ? 'graph' : 'resident';
    const w = row.wall_us ?? {};
    const g = row.gpu_us ?? {};
    console.log(basename(file).padEnd(26), kind.padEnd(9), String(rec.commit ?? '?').slice(0, 18).padEnd(18), f(w.median), f(w.p90), f(w.p99), f(g.median), f(g.p90), f(row.extra?.gpu_idle_queue_us?.median), f(row.extra?.host_enqueue_us_median));
    const key = `${label} ${kind}`;
    if (!groups.has(key)) groups.set(key, { wall: [], gpu: [] });
    if (typeof w.median === 'number') groups.get(key).wall.push(w.median);
    if (typeof g.median === 'number') groups.get(key).gpu.push(g.median);
    const split = row.extra?.host_split_us_median;
    if (split !== undefined) (groups.get(key).split ??= []).push(split);
  }
}
if (groups.size > 0) {
  console.log('\nlabel / row'.padEnd(40), 'n', 'wall (median of medians, range)'.padEnd(32), 'gpu (median of medians, range)');
  const range = (xs) => `${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
  for (const [key, g] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
    console.log(key.padEnd(39), String(g.wall.length).padStart(2), range(g.wall).padEnd(32), g.gpu.length ? range(g.gpu) : '-');
  }
}
// Resident rows with the host clock's breakdown of a step (select bench host_split_us_median):
// medians over the processes of call → ring, ring → completion seen less the device time (the
// two PCIe legs and the spin), and completion seen → return.
const splits = [...groups].filter(([, g]) => g.split !== undefined);
if (splits.length > 0) {
  console.log('\nlabel / row'.padEnd(40), 'n', 'call→ring', 'ring→done', '  device', 'ring→done−device', 'done→return', 'clock read');
  for (const [key, g] of splits.sort(([a], [b]) => a.localeCompare(b))) {
    const m = (k) => median(g.split.map((s) => s[k]));
    const legs = median(g.split.map((s) => s.ring_to_done_seen - s.of_which_device));
    console.log(key.padEnd(39), String(g.split.length).padStart(2), f(m('call_to_ring')).padStart(9), f(m('ring_to_done_seen')).padStart(9), f(m('of_which_device')), f(legs).padStart(16), f(m('done_seen_to_return')).padStart(11), f(m('clock_read')).padStart(10));
  }
}
