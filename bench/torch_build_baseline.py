#!/usr/bin/env python3
"""Vectorised PyTorch k-means baseline for the PQ build (issue 5), on the keys and initial draw that
`pqcache bench --backend cuda --kind build --dump-dir DIR` used, in the same run on the same GPU:
distances by matmul (|x|^2 - 2 x.c + |c|^2), argmin, scatter_add sums, bincount counts, means (empty
clusters keep their centroid). GPU time from CUDA events (keys already on the device), median of 5.
Rows are merged into the pqcache build record with the speed-up and the quantization error ratio.
"""
import argparse
import glob
import json
import os

import torch
from safetensors.torch import load_file


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
    ap.add_argument("--dump-dir", required=True)
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    rec = json.load(open(a.record))
    rec["rows"] = [r for r in rec["rows"] if r["impl"] != "torch-kmeans"]
    for path in sorted(glob.glob(os.path.join(a.dump_dir, "build-*.safetensors"))):
        t = load_file(path)
        meta = json.loads(open(path, "rb").read(8 + int.from_bytes(open(path, "rb").read(8), "little"))[8:])["__metadata__"]
        cfg = json.loads(meta["config"])
        B, Hkv, sk, D, M, O, iters = cfg["B"], cfg["Hkv"], cfg["sk"], cfg["D"], cfg["M"], cfg["O"], cfg["iters"]
        keys = t["keys"].cuda()
        x = keys[:, :, O:, :].reshape(B * Hkv, sk - O, M, D // M).permute(0, 2, 1, 3).reshape(B * Hkv * M, sk - O, D // M).contiguous()
        init = t["init"].cuda()
        kmeans(x, init, iters)
        times = []
        for _ in range(5):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            c, codes = kmeans(x, init, iters)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) * 1000)
        times.sort()
        err = float(((x - torch.gather(c, 1, codes.unsqueeze(-1).expand_as(x))) ** 2).sum().double())
        row = {"impl": "torch-kmeans", "config": cfg, "gpu_us": {"median": round(times[2], 3)}, "extra": {"quantization_error": err}}
        rec["rows"].append(row)
        for r in rec["rows"]:
            if r["impl"] == "pqcache-cuda" and r["config"] == cfg:
                r["extra"]["speedup_gpu_vs_torch_kmeans"] = round(times[2] / r["gpu_us"]["median"], 2)
                r["extra"]["quantization_error_ratio_vs_torch"] = round(r["extra"]["quantization_error"] / err, 4)
        print(f"torch-kmeans sk={sk}: gpu {times[2]:.1f} us, quantization error {err:.4e}", flush=True)
    rec["command"] += f" && python3 bench/torch_build_baseline.py --dump-dir {a.dump_dir} --record {a.record}"
    json.dump(rec, open(a.record, "w"), indent=2)
    open(a.record, "a").write("\n")


if __name__ == "__main__":
    main()
