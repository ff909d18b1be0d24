#!/usr/bin/env python3
"""Vectorised PyTorch k-means baseline for the PQ build (issue 5), on the keys and initial draw that
`pqcache bench --backend cuda --kind build` used, in the same run on the same GPU (both regenerated
here: key[i] = mix32(i ^ 0x5eed5eed) / 2^32 * 8 - 4, and the seeded draw of src/pq/rng.ts):
distances by matmul (|x|^2 - 2 x.c + |c|^2), argmin, scatter_add sums, bincount counts, means (empty
clusters keep their centroid). GPU time from CUDA events (keys already on the device), median of 5.
Rows are merged into the pqcache build record with the speed-up and the quantization error ratio.
"""
import argparse
import time

import torch

from torch_common import M32, load_record, mix32, save_record


def draw(seed, stream, counter):
    return mix32(mix32(mix32(seed) ^ stream) ^ counter)


def initial_sample_indices(seed, group, n, C):
    """rng.ts initialSampleIndices: partial Fisher-Yates, then draws with replacement."""
    swapped = {}
    at = lambda i: swapped.get(i, i)
    out = []
    stream = (group * 2) & M32
    distinct = min(C, n)
    for i in range(distinct):
        j = i + draw(seed, stream, i) % (n - i)
        vi, vj = at(i), at(j)
        swapped[i], swapped[j] = vj, vi
        out.append(vj)
    for i in range(distinct, C):
        out.append(at(draw(seed, stream, i) % n))
    return out


def bench_keys(count, device):
    keys = torch.empty(count, dtype=torch.float32, device=device)
    step = 1 << 26
    for start in range(0, count, step):
        i = torch.arange(start, min(start + step, count), dtype=torch.int64, device=device)
        keys[start:start + len(i)] = mix32(i ^ 0x5EED5EED).to(torch.float64).div(4294967296.0).mul(8).sub(4).to(torch.float32)
    return keys


def kmeans(x, init, iters):
    # x [G, n, d], init [G, C] -> centroids [G, C, d], codes [G, n]
    G, n, d = x.shape
    C = init.shape[1]
    c = torch.gather(x, 1, init.long().unsqueeze(-1).expand(G, C, d)).clone()
    xx = (x * x).sum(-1, keepdim=True)
    for _ in range(iters):
        dist = xx - 2 * torch.bmm(x, c.transpose(1, 2)) + (c * c).sum(-1).unsqueeze(1)
        codes = dist.argmin(-1)
        sums = torch.zeros_like(c).scatter_add_(1, codes.unsqueeze(-1).expand(G, n, d), x)
        counts = torch.zeros(G, C, device=x.device).scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float32))
        c = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp(min=1).unsqueeze(-1), c)
    dist = xx - 2 * torch.bmm(x, c.transpose(1, 2)) + (c * c).sum(-1).unsqueeze(1)
    return c, dist.argmin(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    rec = load_record(a.record)
    seed = 0x5EED  # DEFAULT_CONFIG.seed
    same = lambda a, b: {k: v for k, v in a.items() if k != "keys"} == {k: v for k, v in b.items() if k != "keys"}
    for cfg in [r["config"] for r in rec["rows"] if r["impl"] == "pqcache-cuda"]:
        B, Hkv, sk, D, M, O, iters = cfg["B"], cfg["Hkv"], cfg["sk"], cfg["D"], cfg["M"], cfg["O"], cfg["iters"]
        C = 1 << cfg["pqBits"]
        keys = bench_keys(B * Hkv * sk * D, "cuda").view(B, Hkv, sk, D)
        n = sk - O
        x = keys[:, :, O:, :].reshape(B * Hkv, n, M, D // M).permute(0, 2, 1, 3).reshape(B * Hkv * M, n, D // M).contiguous()
        del keys
        init = torch.tensor([initial_sample_indices(seed, g, n, C) for g in range(B * Hkv * M)], device="cuda")
        kmeans(x, init, iters)
        times, walls = [], []
        for _ in range(5):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            e0.record()
            c, codes = kmeans(x, init, iters)
            e1.record()
            e1.synchronize()
            walls.append((time.perf_counter() - t0) * 1e6)
            times.append(e0.elapsed_time(e1) * 1000)
        times.sort()
        walls.sort()
        err = float(((x - torch.gather(c, 1, codes.unsqueeze(-1).expand_as(x))) ** 2).sum(dtype=torch.float64))
        rec["rows"].append({"impl": "torch-kmeans", "config": {**cfg, "keys": "device-f32"}, "wall_us": {"median": round(walls[2], 3)}, "gpu_us": {"median": round(times[2], 3)},
                            "extra": {"quantization_error": err, "note": "keys already on the GPU (fp32); wall: host clock around the call and the sync"}})
        for r in rec["rows"]:
            if r["impl"].startswith("pqcache-cuda") and same(r["config"], cfg):
                r["extra"]["speedup_gpu_vs_torch_kmeans"] = round(times[2] / r["gpu_us"]["median"], 2)
                if r["impl"] != "pqcache-cuda":  # device keys: wall against wall (the host row's wall includes the upload)
                    r["extra"]["speedup_wall_vs_torch_kmeans"] = round(walls[2] / r["wall_us"]["median"], 2)
                r["extra"]["quantization_error_ratio_vs_torch"] = round(r["extra"]["quantization_error"] / err, 4)
        print(f"torch-kmeans sk={sk}: gpu {times[2]:.1f} us, quantization error {err:.4e}", flush=True)
        del x
        torch.cuda.empty_cache()
    save_record(rec, a.record, f"python3 bench/torch_build_baseline.py --record {a.record}")


if __name__ == "__main__":
    main()
