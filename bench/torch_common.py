"""Helpers shared by the PyTorch baselines (bench/torch_*_baseline.py): the seeded hash of
src/pq/rng.ts, latency statistics and timing as pqcache measures them, and merging baseline rows
into a pqcache result record of the same run."""
import json
import time

import torch

M32 = 0xFFFFFFFF


def mix32(x):
    """lowbias32 on python ints or int64 tensors holding uint32 values (src/pq/rng.ts)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def pct(xs, q):
    """Nearest-rank percentile (src/bench/stats.ts percentile)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 1)) - 1))]


def summary(xs):
    return {"median": round(pct(xs, 0.5), 3), "p90": round(pct(xs, 0.9), 3), "p99": round(pct(xs, 0.99), 3)}


# The GPU's clock for torch.cuda._sleep's cycle count: over-estimated, so a spin never ends early.
SPIN_CYCLES_PER_US = 2100


def time_calls(fn, iters, warmup, idle=None):
    """Warm up; per-call wall-clock (perf_counter around call + synchronize); then CUDA events in a
    separate loop, with the stream kept busy ahead of each call (torch.cuda._sleep for longer than
    the call takes on the host) so the events time the device alone, as pqcache's bench does
    (src/bench/busy-queue.ts). Returns the two lists of microseconds; with `idle` (a list), also
    appends the events' reading on an idle stream (host enqueue included) to it."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    wall = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall.append((time.perf_counter() - t0) * 1e6)
    spin = int(SPIN_CYCLES_PER_US * max(50.0, 2 * pct(wall, 0.9)))
    e0 = torch.cuda.Event(enable_timing=True)
    e1 = torch.cuda.Event(enable_timing=True)
    gpu = []
    for _ in range(iters):
        torch.cuda._sleep(spin)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        gpu.append(e0.elapsed_time(e1) * 1000)
    if idle is not None:
        for _ in range(iters):
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            idle.append(e0.elapsed_time(e1) * 1000)
    return wall, gpu


def load_record(path):
    """A pqcache record measured on this GPU, without the torch rows of an earlier merge."""
    rec = json.load(open(path))
    if rec["device"] != torch.cuda.get_device_name(0):
        raise SystemExit(f"record device {rec['device']} != {torch.cuda.get_device_name(0)}")
    rec["rows"] = [r for r in rec["rows"] if not r["impl"].startswith("torch")]
    return rec


def add_speedups(rec, cfg, baselines, ours):
    """speedup_{wall,gpu}_vs_<impl> (baseline time / ours) on the rows of `cfg` whose impl `ours` accepts."""
    for r in rec["rows"]:
        if r["config"] == cfg and ours(r["impl"]):
            for b in baselines:
                r["extra"][f"speedup_wall_vs_{b['impl']}"] = round(b["wall_us"]["median"] / r["wall_us"]["median"], 2)
                r["extra"][f"speedup_gpu_vs_{b['impl']}"] = round(b["gpu_us"]["median"] / r["gpu_us"]["median"], 2)


def save_record(rec, path, command):
    """Write the merged record; its command gains the baseline's own."""
    rec["command"] += f" && {command}"
    json.dump(rec, open(path, "w"), indent=2)
    open(path, "a").write("\n")
    print(f"merged into {path}")
