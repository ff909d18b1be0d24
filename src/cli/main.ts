#!/usr/bin/env node
/** The `pqcache` command line: info, demo, verify, quality, fuzz, soak, bench. */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { PQCacheError } from '../errors.js';
import { runBench } from './bench.js';
import { runDemo } from './demo.js';
import { runInfo } from './info.js';
import { runQualityCli } from './quality.js';
import { runFaultProbe, runFuzzCli, runSoakCli } from './reliability.js';
import { runVerify } from './verify.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

function int(name: string, min = 0): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}`);
    return n;
  };
}

const program = new Command();
program.name('pqcache').description('PQCache sparse attention for LLM decoding (CUDA + CPU)').version(pkg.version);

program.command('info').description('backends, device and driver').action(() => runInfo(pkg.version));

program
  .command('demo')
  .description('build an index on synthetic LLM-like keys, decode N steps (append + select + attend), print latency and quality, write a report')
  .addOption(new Option('--backend <name>', 'auto | cpu | cuda').choices(['auto', 'cpu', 'cuda']).default('auto'))
  .option('--steps <n>', 'decode steps', int('steps', 1), 200)
  .option('--seq-len <n>', 'cached tokens before decoding (default 32000 on cuda, 8192 on cpu)', int('seq-len', 1024))
  .option('--heads <n>', 'query heads', int('heads', 1), 32)
  .option('--kv-heads <n>', 'key/value heads', int('kv-heads', 1), 8)
  .option('--quality-every <n>', 'measure quality every n steps', int('quality-every', 1), 25)
  .option('--report <dir>', 'where to write index.html and the charts', 'report')
  .action(async (o) => {
    process.exitCode = await runDemo({ backend: o.backend, steps: o.steps, seqLen: o.seqLen, heads: o.heads, kvHeads: o.kvHeads, qualityEvery: o.qualityEvery, reportDir: o.report });
  });

program
  .command('verify')
  .description('check a backend against a float64 brute force on random configs (exit 1 on mismatch)')
  .addOption(new Option('--backend <name>', 'cpu | cuda').choices(['cpu', 'cuda']).default('cpu'))
  .option('--cases <n>', 'random cases', int('cases', 1), 100)
  .option('--seed <n>', 'seed of the case generator', int('seed'), 1)
  .option('--first <n>', 'index of the first case (to rerun one)', int('first'), 0)
  .option('--verbose', 'print every case')
  .action((o) => {
    process.exitCode = runVerify({ backend: o.backend, cases: o.cases, seed: o.seed, verbose: o.verbose === true, first: o.first });
  });

program
  .command('quality')
  .description('recall@K, softmax mass and attention error of PQ selection vs exact top-K, sink+window and random, on synthetic LLM data')
  .addOption(new Option('--backend <name>', 'auto | cpu | cuda').choices(['auto', 'cpu', 'cuda']).default('auto'))
  .option('--quick', 'a small grid that runs in seconds on the CPU (CI)')
  .option('--seed <n>', 'seed of the synthetic data', int('seed'))
  .option('--json <file>', 'write the record here (default for full cuda runs: bench/results/quality-<device>.json)')
  .action((o) => {
    process.exitCode = runQualityCli({ backend: o.backend, quick: o.quick === true, json: o.json, seed: o.seed, command: `pqcache ${process.argv.slice(2).join(' ')}` });
  });

program
  .command('fuzz')
  .description('random valid and invalid inputs against the oracles (and the fault paths on cuda); exit 1 on any mismatch')
  .addOption(new Option('--backend <name>', 'cpu | cuda').choices(['cpu', 'cuda']).default('cpu'))
  .option('--cases <n>', 'valid cases (decode steps, layer steps, builds)', int('cases', 1), 2000)
  .option('--seed <n>', 'seed', int('seed'), 1)
  .option('--json <file>', 'merge the rows into this record (default bench/results/reliability-<device>.json)')
  .action((o) => {
    process.exitCode = runFuzzCli({ backend: o.backend, cases: o.cases, seed: o.seed, json: o.json, command: `pqcache ${process.argv.slice(2).join(' ')}` });
  });

program
  .command('soak')
  .description('long runs on reused indexes (cuda): device memory, RSS and latency over time')
  .option('--steps <n>', 'decode steps on one index', int('steps', 1), 1_000_000)
  .option('--request-len <n>', 'steps per request (the index is reset to the prefill between requests)', int('request-len', 1), 1000)
  .option('--indexes <n>', 'indexes of the interleaved run', int('indexes', 1), 10)
  .option('--interleaved-steps <n>', 'steps of the interleaved run (all indexes)', int('interleaved-steps', 0), 200_000)
  .option('--json <file>', 'merge the rows into this record')
  .action((o) => {
    process.exitCode = runSoakCli({ steps: o.steps, requestLen: o.requestLen, indexes: o.indexes, interleavedSteps: o.interleavedSteps, json: o.json, command: `pqcache ${process.argv.slice(2).join(' ')}` });
  });

program.command('_fault <kind>', { hidden: true }).action((kind: string) => {
  process.exitCode = runFaultProbe(kind);
});

program
  .command('bench')
  .description('latency tables; writes a result record (bench/results/<kind>-<device>.json for cuda, or --json FILE)')
  .addOption(new Option('--backend <name>', 'cpu | cuda').choices(['cpu', 'cuda']).default('cuda'))
  .addOption(new Option('--kind <kind>', 'select | runtime | build | attend | step').choices(['select', 'runtime', 'build', 'attend', 'step']).default('select'))
  .addOption(new Option('--config <name>', 'seed | matrix').choices(['seed', 'matrix']).default('seed'))
  .option('--json <file>', 'write the record here')
  .option('--iters <n>', 'timed calls per row', int('iters', 1), 300)
  .option('--warmup <n>', 'untimed calls first', int('warmup', 0), 50)
  .option('--slice-len <n>', 'general select plan: slice length (tuning)', int('slice-len', 256))
  .option('--cluster <n>', 'pair path: blocks per query head, 1 | 2 | 4 | 8 (tuning)', int('cluster', 1))
  .addOption(new Option('--step-kernel <name>', 'pair path: auto | bucket | row | cluster (tuning, A/B runs)').choices(['auto', 'bucket', 'row', 'cluster']).default('auto'))
  .option('--phases', 'pair path: also report in-kernel phase timing (runs the step kernels\' timing builds, ≈ 0.3 μs slower)')
  .option('--dump-dir <dir>', 'write each config\'s inputs as safetensors (for bench/torch_select_baseline.py)')
  .option('--layers <n>', 'step: layers per token', int('layers', 1), 32)
  .option('--batch <n>', 'select, --config seed: the seed config with this batch size', int('batch', 1))
  .option('--sk <n>', 'select, --config seed: the seed config with this many cached keys', int('sk', 1024))
  .action((o) => {
    process.exitCode = runBench({
      backend: o.backend, kind: o.kind, config: o.config, batch: o.batch, sk: o.sk, json: o.json, iters: o.iters, warmup: o.warmup, sliceLen: o.sliceLen, cluster: o.cluster, stepKernel: o.stepKernel, phases: o.phases === true, dumpDir: o.dumpDir, layers: o.layers,
      command: `pqcache ${process.argv.slice(2).join(' ')}`,
    });
  });

try {
  await program.parseAsync();
} catch (e) {
  if (e instanceof PQCacheError) {
    console.error(`pqcache: ${e.name}: ${e.message}`);
    process.exitCode = 2;
  } else {
    throw e;
  }
}
