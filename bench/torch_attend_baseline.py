#!/usr/bin/env python3
"""PyTorch SDPA baseline of decode attention, merged into the `pqcache bench --kind attend|step` record
of the same run on the same GPU.

For every config of the record: q [B,H,1,D], K/V [B,Hkv,sk+1,D] in the record's dtype, filled with the
hash of pqcache's pq_fill_hash (uniform in [-1, 1), queries x2; the same shapes and distribution, not the
same seeds: the kernels' time does not depend on the values), and
  torch-sdpa-eager  F.scaled_dot_product_attention(q, k, v, enable_gqa=True), one call per layer
  torch-sdpa-graph  the same captured once with torch.cuda.graphs and replayed
For step records (layers > 1) every layer has its own K/V and one token runs all layers.
Timing as pqcache: warm-up, per-call wall-clock (perf_counter around call + synchronize), then CUDA
events in a separate loop. Each pqcache row gains speedup_*_vs_torch-sdpa-* fields (torch time / ours).
"""
import argparse

import torch
import torch.nn.functional as F

from torch_common import add_speedups, load_record, mix32, save_record, summary, time_calls

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def fill_hash(shape, dtype, seed, scale, dev, chunk=1 << 26):
    """kernels/runtime.cu pq_fill_hash over a contiguous tensor, in chunks (no int64 copy of a 17 GB cache)."""
    out = torch.empty(*shape, device=dev, dtype=dtype)
    flat = out.view(-1)
    s = mix32(seed)
    for start in range(0, flat.numel(), chunk):
        i = torch.arange(start, min(start + chunk, flat.numel()), device=dev, dtype=torch.int64)
        h = mix32((i & 0xFFFFFFFF) ^ mix32((i >> 32) ^ s))
        flat[start:start + i.numel()] = (scale * ((h >> 8).to(torch.float32) * (2.0 / 16777216.0) - 1.0)).to(dtype)
    return out


def bench_config(cfg, iters, warmup, dev):
    B, H, Hkv, D, sk, layers = cfg["B"], cfg["H"], cfg["Hkv"], cfg["D"], cfg["sk"], cfg.get("layers", 1)
    dt = DTYPES[cfg["dtype"]]
    q = fill_hash((B, H, 1, D), dt, 7, 2.0, dev)
    kv = [(fill_hash((B, Hkv, sk + 1, D), dt, 10 * l + 1, 1.0, dev), fill_hash((B, Hkv, sk + 1, D), dt, 10 * l + 2, 1.0, dev)) for l in range(layers)]
    out = [torch.empty(B, H, 1, D, device=dev, dtype=dt) for _ in range(layers)]

    def token():
        for l, (k, v) in enumerate(kv):
            out[l].copy_(F.scaled_dot_product_attention(q, k, v, enable_gqa=True))

    rows = []
    wall, gpu = time_calls(token, iters, warmup)
    rows.append({"impl": "torch-sdpa-eager", "config": cfg, "wall_us": summary(wall), "gpu_us": summary(gpu), "extra": {"layers": layers}})
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            token()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        token()
    wall, gpu = time_calls(g.replay, iters, warmup)
    rows.append({"impl": "torch-sdpa-graph", "config": cfg, "wall_us": summary(wall), "gpu_us": summary(gpu), "extra": {"layers": layers}})
    for r in rows:
        print(f"{r['impl']:17s} B={B} sk={sk} layers={layers}: wall {r['wall_us']['median']} us, gpu {r['gpu_us']['median']} us", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", required=True, help="pqcache attend or step record to merge into")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    dev = torch.device("cuda")
    rec = load_record(a.record)
    configs = []
    for r in rec["rows"]:
        if r["config"] not in configs:
            configs.append(r["config"])
    for cfg in configs:
        rows = bench_config(cfg, a.iters, a.warmup, dev)
        torch.cuda.empty_cache()  # this config's caches died with bench_config
        add_speedups(rec, cfg, rows, lambda impl: impl.startswith("pqcache"))
        rec["rows"].extend(rows)
    save_record(rec, a.record, f"python3 bench/torch_attend_baseline.py --record {a.record}")

if __name__ == "__main__":
    main()
