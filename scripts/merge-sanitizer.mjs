#!/usr/bin/env node
// Merges compute-sanitizer results into the reliability record: for each $OUT/san-<tool>.log,
// the tool, what it ran over (SAN_OVER_<tool>, else SAN_OVER, else every GPU test) and its "ERROR SUMMARY" count.
//   node scripts/merge-sanitizer.mjs OUT_DIR
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const dir = process.argv[2];
const app = process.env.PQCACHE_APP ?? '.device/app';
const { mergeIntoRecord, newRecord, defaultRecordPath } = await import(join(process.cwd(), app, 'dist/src/bench/record.js'));
const { CudaContext } = await import(join(process.cwd(), app, 'dist/src/cuda/context.js'));
const dev = CudaContext.primary().device;
const record = newRecord('reliability', dev.name, dev.driverVersion, 'bash scripts/device-check.sh sanall');
for (const f of readdirSync(dir).filter((f) => /^san-.*\.log$/.test(f)).sort()) {
  const log = readFileSync(join(dir, f), 'utf8');
  const tool = f.replace(/^san-|\.log$/g, '');
  // memcheck, initcheck, synccheck: "ERROR SUMMARY: N errors"; racecheck: "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)".
  const summary = log.match(/(ERROR SUMMARY: \d+ error|RACECHECK SUMMARY: \d+ hazard)/g) ?? [];
  const errors = summary.reduce((n, s) => n + Number(s.match(/(\d+)/)[1]), 0);
  const tests = log.match(/^# pass (\d+)/m)?.[1];
  const failed = log.match(/^# fail (\d+)/m)?.[1];
  record.rows.push({
    impl: `sanitizer-${tool}`,
    config: { tool, over: process.env[`SAN_OVER_${tool.replace(/-/g, '_')}`] ?? process.env.SAN_OVER ?? 'every GPU test (node --test dist/test/gpu): runtime, select + append, attention + decode layers, build kernels' },
    // complete: the test run finished under the tool (a time limit can cut it short).
    extra: { errors, processes_reported: summary.length, tests_passed: Number(tests ?? 0), tests_failed: Number(failed ?? 0), complete: tests !== undefined },
  });
  console.log(`${tool}: ${errors} errors over ${summary.length} processes, tests ${tests} passed / ${failed} failed`);
}
// Exact names: a run of `memcheck` replaces that row, not `memcheck-build` or `memcheck-row`.
mergeIntoRecord(defaultRecordPath('reliability', dev.name), record, record.rows.map((r) => r.impl), 'exact');
