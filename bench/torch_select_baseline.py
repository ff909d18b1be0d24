#!/usr/bin/env python3
"""PyTorch baseline of the decode step (SPEC §2: append the new key's code, then select), on the very
inputs `pqcache bench --backend cuda --dump-dir DIR` measured, in the same run on the same GPU.

Two implementations of the same ops:
  torch-eager  append (cdist-style distances, argmin, index_copy) -> LUT einsum -> gather scores ->
               eligibility mask -> topk -> sort -> cat(sink, heavy, window) -> scatter weights
  torch-graph  the same step captured once with torch.cuda.graphs and replayed
Shapes are static (the codes buffer has the index's capacity; sk lives in a device tensor), which is
what makes the graph capture possible; eager runs exactly the same kernels.

Timing as in pqcache: warm-up, then per-call wall-clock (perf_counter around call + synchronize) and,
in a separate loop, CUDA events with the stream kept busy ahead (and, recorded too, on an idle stream);
medians and tails. Rows are merged into the pqcache record (--record),
and each pqcache row gains the speed-up over both baselines.
"""
import argparse
import glob
import json
import os

import torch
from safetensors.torch import load_file

from torch_common import add_speedups, load_record, save_record, summary, time_calls


class TorchStep:
    def __init__(self, cfg, centroids, codes, seq_len, dev):
        self.cfg = cfg
        self.B, self.H, self.Hkv, self.D = cfg["B"], cfg["H"], cfg["Hkv"], cfg["D"]
        self.M, self.S, self.W, self.K, self.O = cfg["M"], cfg["S"], cfg["W"], cfg["K"], cfg["O"]
        self.G = self.H // self.Hkv
        self.dsub = self.D // self.M
        self.centroids = centroids.to(dev)  # [B,Hkv,M,C,cdim]
        self.cent = self.centroids[..., : self.dsub].contiguous()
        self.codes = codes.to(dev)  # [B,Hkv,cap,M] uint8
        self.cap = self.codes.shape[2]
        self.sk = torch.tensor(seq_len, device=dev, dtype=torch.long)
        self.pos = torch.arange(self.cap, device=dev)
        self.L = self.S + self.K + self.W
        self.weights = torch.zeros(self.B, self.H, self.cap, device=dev)
        self.q = torch.zeros(self.B, self.H, self.D, device=dev)
        self.k = torch.zeros(self.B, self.Hkv, self.D, device=dev)

    def step(self):
        B, H, Hkv, G, M, dsub = self.B, self.H, self.Hkv, self.G, self.M, self.dsub
        # append: nearest centroid of each sub-vector of the new key (L2), written at position sk
        x = self.k.view(B, Hkv, M, 1, dsub)
        d = ((x - self.cent) ** 2).sum(-1)  # [B,Hkv,M,C]
        new_codes = d.argmin(-1).to(torch.uint8)  # [B,Hkv,M]
        self.codes.index_copy_(2, self.sk.view(1), new_codes.unsqueeze(2))
        self.sk += 1
        sk = self.sk
        # LUT and scores over all positions (static shape), masked to the eligible range
        qg = self.q.view(B, Hkv, G, M, dsub)
        lut = torch.einsum("bkgmd,bkmcd->bkgmc", qg, self.cent)  # [B,Hkv,G,M,C]
        idx = self.codes.long().permute(0, 1, 3, 2).unsqueeze(2).expand(B, Hkv, G, M, self.cap)
        scores = torch.gather(lut, 4, idx).sum(3)  # [B,Hkv,G,cap]
        lo = max(self.O, self.S)
        eligible = (self.pos >= lo) & (self.pos < sk - self.W)
        scores = scores.masked_fill(~eligible, float("-inf")).view(B, H, self.cap)
        heavy = torch.topk(scores, self.K, dim=-1, sorted=False).indices
        heavy = torch.sort(heavy, dim=-1).values
        sink = self.pos[: self.S].expand(B, H, self.S)
        window = (sk - self.W + torch.arange(self.W, device=sk.device)).expand(B, H, self.W)
        lst = torch.cat([sink, heavy, window], dim=-1)
        self.weights.zero_()
        self.weights.scatter_(-1, lst, 1.0)
        self.list = lst
        return lst


def bench_file(path, iters, warmup, dev):
    t = load_file(path)
    meta = json.loads(open(path, "rb").read(8 + int.from_bytes(open(path, "rb").read(8), "little"))[8:])["__metadata__"]
    cfg = json.loads(meta["config"])
    seq_len = int(meta["seqLen"])
    queries, keys = t["queries"].to(dev), t["keys"].to(dev)
    sets = queries.shape[0]
    rows = []
    for impl in ("torch-eager", "torch-graph"):
        st = TorchStep(cfg, t["centroids"], t["codes"].clone(), seq_len, dev)
        counter = [0]

        def feed():
            i = counter[0] % sets
            counter[0] += 1
            st.q.copy_(queries[i])
            st.k.copy_(keys[i])

        if impl == "torch-eager":
            def call():
                feed()
                st.step()
        else:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    st.step()
            torch.cuda.current_stream().wait_stream(s)
            st.sk.fill_(seq_len)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                st.step()
            st.sk.fill_(seq_len)

            def call():
                feed()
                g.replay()

        if seq_len + warmup + 2 * iters + 8 > st.cap:
            raise SystemExit(f"{path}: capacity {st.cap} too small for {warmup + 2 * iters} appends")
        idle = []
        wall, gpu = time_calls(call, iters, warmup, idle)
        rows.append({"impl": impl, "config": cfg, "wall_us": summary(wall), "gpu_us": summary(gpu),
                     "extra": {"note": "same inputs as pqcache-cuda; torch.topk tie order is unspecified, so not checked against the oracle",
                               "gpu_method": "CUDA events, stream kept busy ahead (torch.cuda._sleep; host enqueue outside)",
                               "gpu_idle_queue_us": summary(idle)}})
        print(f"{impl:12s} B={cfg['B']} sk={cfg['sk']}: wall {rows[-1]['wall_us']['median']} us, gpu {rows[-1]['gpu_us']['median']} us", flush=True)
    return cfg, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump-dir", required=True)
    ap.add_argument("--record", required=True, help="pqcache select record to merge into")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    a = ap.parse_args()
    dev = torch.device("cuda")
    rec = load_record(a.record)
    for path in sorted(glob.glob(os.path.join(a.dump_dir, "select-*.safetensors"))):
        cfg, rows = bench_file(path, a.iters, a.warmup, dev)
        rec["rows"].extend(rows)
        # Our graph row, and each process's in an A/B record (scripts/merge-ab.mjs: "pqcache-cuda <file>").
        add_speedups(rec, cfg, rows, lambda impl: impl == "pqcache-cuda" or impl.startswith("pqcache-cuda "))
    save_record(rec, a.record, f"python3 bench/torch_select_baseline.py --dump-dir {a.dump_dir} --record {a.record}")

if __name__ == "__main__":
    main()
