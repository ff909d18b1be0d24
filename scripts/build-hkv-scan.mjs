// Diagnostic: the seed build at fewer kv heads (fewer groups, fewer bytes of keys), GPU time per
// group, to see whether keys that fit in L2 (Hkv = 4: 33 MB of bf16) make a group's rounds cheaper
// (session 33: they do not; the time is ≈ 190 μs + 38 μs a group from bf16 keys at every Hkv).
//   bash scripts/device-run.sh node scripts/build-hkv-scan.mjs    (HKV=2,4,8 SRC=device-bf16 REPS=7 OUTJSON=f)
// The build's A/B overrides come from the same variables as `pqcache bench` (PQCACHE_BUILD_ROUND=mma|wgmma,
// PQCACHE_BUILD_RECOMPUTE=n, …: src/cli/bench.ts buildTuningFromEnv).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

// APP: another build's dist/src (a BASE of pack-device.sh, with PQCACHE_KERNELS_DIR its kernels) for an A/B.
const app = join(process.cwd(), process.env.APP ?? '.device/app/dist/src');
const { benchBuildCuda, SEED_BUILD } = await import(join(app, 'bench/build-bench.js'));
const { buildTuningFromEnv } = await import(join(app, 'cli/bench.js'));
const heads = (process.env.HKV ?? '2,4,8,16,32').split(',').map(Number);
const sources = (process.env.SRC ?? 'device-bf16,device-f32').split(',');
const reps = Number(process.env.REPS ?? 7);
const tuning = buildTuningFromEnv();
const out = [];
for (const Hkv of heads) {
  for (const r of benchBuildCuda({ ...SEED_BUILD, Hkv }, reps, tuning, sources)) {
    const groups = Hkv * SEED_BUILD.M;
    // Share of points re-scored in the canonical order (near ties), over the build's assignment passes.
    const flagged = r.extra.flagged_share_per_round ?? [];
    const flaggedMean = flagged.length ? flagged.reduce((a, b) => a + b, 0) / flagged.length : NaN;
    out.push({ Hkv, keys: r.config.keys, gpu: r.gpu_us.median, wall: r.wall_us.median, perGroup: r.gpu_us.median / groups, flaggedShare: flaggedMean });
    console.log(`Hkv=${Hkv} ${r.config.keys} gpu=${r.gpu_us.median.toFixed(1)} wall=${r.wall_us.median.toFixed(1)} per-group=${(r.gpu_us.median / groups).toFixed(2)} flagged=${(100 * flaggedMean).toFixed(3)}%`);
  }
}
if (process.env.OUTJSON) writeFileSync(process.env.OUTJSON, JSON.stringify(out, null, 2));
