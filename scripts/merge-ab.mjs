#!/usr/bin/env node
// Folds the select records of a same-run A/B (one bench process each, alternating) into one
// record, bench/results/<name>-<device>.json: each pqcache-cuda row renamed after its file
// ("pqcache-cuda cab-b1-auto-1"), so a PyTorch baseline can be merged into it (--record) and
// every row keeps its process. Prints the record's path.
//   node scripts/merge-ab.mjs NAME "COMMAND" OUT/ab-*.json
import { readFileSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { dist } from './local-dist.mjs';

const { deviceSlug } = await import(`${dist}/src/bench/record.js`);
const [name, command, ...files] = process.argv.slice(2);
if (name === undefined || command === undefined || files.length === 0) throw new Error('usage: merge-ab.mjs NAME COMMAND FILE…');
const records = files.map((f) => ({ file: f, rec: JSON.parse(readFileSync(f, 'utf8')) }));
const first = records[0].rec;
const rows = records.flatMap(({ file, rec }) => {
  if (rec.device !== first.device || rec.commit !== first.commit) throw new Error(`${file}: another device or commit than ${files[0]}`);
  return rec.rows.filter((r) => r.impl === 'pqcache-cuda').map((r) => ({ ...r, impl: `${r.impl} ${basename(file, '.json')}` }));
});
const path = `bench/results/${name}-${deviceSlug(first.device)}.json`;
writeFileSync(path, `${JSON.stringify({ ...first, command, rows }, null, 2)}\n`);
console.log(path);
