"""Shared set-up for the learner benchmarks (peers.py, memory.py): one U-Net, one fixed episode,
and peak-memory measurement.

Peak memory, method:
- CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus the memory
  allocated just before the measured call (model, episode and .grad buffers excluded).
- CPU: the process's resident-set high-water mark (getrusage ru_maxrss) after the measured
  call, minus the RSS just before it (read from /proc/self/statm). ru_maxrss never decreases,
  so each configuration must run in a fresh process (memory.py spawns one per row) and the
  warm-up before the baseline must already have touched the allocator's steady-state pools.
  For peers.py, which runs all implementations in one process as the issue asks, a background
  thread samples /proc/self/statm every 1 ms during the measured call instead.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import threading
import time
from typing import Callable

import torch

from metaseg.data.types import Episode
from metaseg.models import create_model

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def unet(device: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", in_channels=1).to(device)


def episode(size: int, shots: int, queries: int, device: str, seed: int = 0) -> Episode:
    """A fixed synthetic episode: smooth blobs as foreground, images correlated with the mask."""
    g = torch.Generator().manual_seed(seed)
    n = shots + queries
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = torch.rand(n, 2, generator=g) - 0.5
    radius = 0.2 + 0.3 * torch.rand(n, generator=g)
    mask = (((xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2) < radius[:, None, None] ** 2)
    mask = mask.float().unsqueeze(1)
    image = (0.3 + 0.4 * mask + 0.15 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    image, mask = image.to(device), mask.to(device)
    return Episode("bench", image[:shots], mask[:shots], image[shots:], mask[shots:],
                   [f"s{i}" for i in range(shots)], [f"q{i}" for i in range(queries)])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_cuda_mb(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def peak_rss_sampled_mb(fn: Callable[[], object], interval_s: float = 0.001) -> float:
    """Peak RSS growth during fn(), sampled by a background thread (in-process comparisons)."""
    before = rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], rss_mb()) - before


def peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    return peak_cuda_mb(fn) if device.startswith("cuda") else peak_rss_sampled_mb(fn)


def malloc_env() -> dict[str, str]:
    """Environment for a CPU measurement subprocess: a fixed glibc mmap threshold (no dynamic
    raising) so freed tensors go back to the OS and the RSS before a call is not inflated by
    the warm-up's freed-but-cached heap."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def add_episode_arguments(parser) -> None:
    """--device/--size/--shots/--queries, shared by peers.py and memory.py so both measure alike."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)


def add_inner_loop_arguments(parser) -> None:
    """--inner-steps/--inner-lr/--lam/--cg-steps, shared by peers.py and throughput.py so the
    learners they time run the same inner loop."""
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=2.0)
    parser.add_argument("--cg-steps", type=int, default=5)
