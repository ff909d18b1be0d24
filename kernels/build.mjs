#!/usr/bin/env node
// Builds every kernel family (kernels/*.cu) into a fatbin under kernels/dist/ with nvcc:
//   SASS for sm_80 and sm_90, plus compute_80 PTX that the driver JIT-compiles on newer GPUs;
//   families for one architecture only (ARCH_SPECIFIC: build_ws, wgmma is sm_90a-only) get just its
//   SASS, and the host loads them only on that architecture.
// The step-kernel families also get a timing build, <family>_phases.fatbin, with the phase stamps
// compiled in (-DPQ_PHASE_STAMPS; kernels/select_common.cuh PhaseStamps): a cache created with
// phaseTiming (`bench --phases`) loads it; the shipped kernels carry no stamps.
// The driver picks the matching image at cuModuleLoadData time. Also writes the ptxas resource
// report (registers, shared memory, spills) to kernels/dist/resource-usage.txt.
// Skips a family whose fatbin is newer than its sources. Without nvcc: a notice, exit 0
// (the CPU backend needs no kernels; the CUDA backend then reports KernelsNotBuiltError).
//   node kernels/build.mjs [--force] [--sm90-only --out DIR]
// --sm90-only --out DIR: sm_90 SASS only, into DIR (scripts/pack-device.sh: the GPU machine is a
// Hopper and its carry budget is small; the SASS is the same as in the full build).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const argAfter = (flag) => {
  const i = process.argv.indexOf(flag);
  return i < 0 ? undefined : process.argv[i + 1];
};
const dist = resolve(argAfter('--out') ?? join(here, 'dist'));
const sm90Only = process.argv.includes('--sm90-only');
const force = process.argv.includes('--force');
const nvcc = process.env.NVCC ?? 'nvcc';

function hasNvcc() {
  try {
    execFileSync(nvcc, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

if (!hasNvcc()) {
  console.warn(`build:kernels: ${nvcc} not found; skipping (the CPU backend works; the CUDA backend needs kernels/dist)`);
  process.exit(0);
}
mkdirSync(dist, { recursive: true });

const headers = readdirSync(here).filter((f) => f.endsWith('.cuh')).map((f) => join(here, f));
const families = readdirSync(here).filter((f) => f.endsWith('.cu')).sort();
const STAMPED = ['select_pairs.cu', 'select_row.cu'];
// [output name, source, extra nvcc flags]
const builds = [
  ...families.map((f) => [f.replace(/\.cu$/, ''), f, []]),
  ...STAMPED.map((f) => [f.replace(/\.cu$/, '_phases'), f, ['-DPQ_PHASE_STAMPS']]),
];
// Families whose kernels use architecture-specific instructions: their only image.
const ARCH_SPECIFIC = { 'build_ws.cu': ['-gencode', 'arch=compute_90a,code=sm_90a'] };
const newest = (files) => Math.max(...files.map((f) => statSync(f).mtimeMs));
const GENCODE = sm90Only
  ? ['-gencode', 'arch=compute_90,code=sm_90']
  : ['-gencode', 'arch=compute_80,code=[sm_80,compute_80]', '-gencode', 'arch=compute_90,code=sm_90'];

function build([family, file, flags]) {
  const src = join(here, file);
  const out = join(dist, `${family}.fatbin`);
  if (!force && existsSync(out) && statSync(out).mtimeMs > newest([src, ...headers, fileURLToPath(import.meta.url)])) {
    return Promise.resolve({ family, skipped: true, report: '' });
  }
  const args = ['-std=c++17', '-O3', '-fatbin', ...(ARCH_SPECIFIC[file] ?? GENCODE), ...flags, '-Xptxas', '-v', '-o', out, src];
  return new Promise((resolve, reject) => {
    const p = spawn(nvcc, args, { cwd: here });
    let log = '';
    p.stdout.on('data', (d) => (log += d));
    p.stderr.on('data', (d) => (log += d));
    p.on('close', (code) => {
      if (code !== 0) reject(new Error(`nvcc failed for ${family}:\n${log}`));
      else resolve({ family, skipped: false, report: log });
    });
  });
}

const started = Date.now();
const results = await Promise.all(builds.map(build));
const built = results.filter((r) => !r.skipped);
if (built.length > 0) {
  const report = results
    .filter((r) => r.report)
    .map((r) => `== ${r.family}\n${r.report.split('\n').filter((l) => /entry function|Used|spill|stack frame/.test(l)).join('\n')}`)
    .join('\n');
  writeFileSync(join(dist, 'resource-usage.txt'), report + '\n');
  const spills = report.split('\n').filter((l) => /[1-9][0-9]* bytes spill stores/.test(l)).length;
  console.log(`build:kernels: built ${built.map((r) => r.family).join(', ')} in ${((Date.now() - started) / 1000).toFixed(1)} s` +
    (spills ? ` (${spills} entries with spills, see ${join(dist, 'resource-usage.txt')})` : ''));
} else {
  console.log('build:kernels: up to date');
}
