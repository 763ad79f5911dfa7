"""metaseg's learners against the libraries people use today, on the same U-Net, the same
episode and in the same process: second-order MAML vs learn2learn, higher and torchopt
(MetaSGD), and iMAML vs torchopt's implicit differentiation (torchopt.diff.implicit).

Every implementation computes one meta-gradient (inner loop on the support set, query loss,
gradient w.r.t. the initial weights); rows report the median seconds of `--repeats` calls after
a warm-up (implementations are interleaved round-robin so background load hits all alike), the
peak memory of one call (method in benchmarks/_common.py) and the max abs difference of the
gradient from metaseg's for the same algorithm. Each row's time relative to metaseg's is also
given paired per round (each call over metaseg's call of the same round: mean and 95% t-interval
over the rounds), in wall-clock and, on CPU, in this thread's CPU time (time.thread_time), which
other jobs on a shared machine disturb far less than the wall clock: metaseg's MAML and torchopt's
MetaSGD run the same aten ops, so only such an interval says whether one is faster. Peers that are not installed are skipped
(bash benchmarks/install_peers.sh .venv/bin/python installs them).

    python -m benchmarks.peers                    # CPU -> benchmarks/results/peers.json + peers.md
    python -m benchmarks.peers --device cuda --out benchmarks/results/peers_cuda.json
"""
from __future__ import annotations

import argparse
import importlib.util
import contextlib
import gc
import io
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from benchmarks import _common
from metaseg.losses import bce_dice_loss
from metaseg.meta import core, create_learner
from metaseg.metrics import mean_ci95

Grads = list[torch.Tensor]


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def collect(model: torch.nn.Module, run: Callable[[], None]) -> Grads:
    """Run one meta-gradient computation from zeroed .grad and return the gradients."""
    model.zero_grad(set_to_none=True)
    run()
    return [p.grad.detach().clone() for p in trainable(model)]


# --------------------------------------------------------------------------- MAML (2nd order)


def metaseg_learner(model, ep, name: str, **options) -> Callable[[], None]:
    learner = create_learner(name, **options)
    return lambda: learner.meta_backward(model, ep)


def higher_maml(model, ep, steps: int, lr: float) -> Callable[[], None]:
    import higher

    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def run() -> None:
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(bce_dice_loss(fmodel(ep.support_x), ep.support_y))
            bce_dice_loss(fmodel(ep.query_x), ep.query_y).backward()

    return run


def learn2learn_maml(model, ep, steps: int, lr: float) -> Callable[[], None]:
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # gym's "unmaintained" banner and numpy deprecations
        from learn2learn.algorithms import MAML
    maml = MAML(model, lr=lr, first_order=False)

    def run() -> None:
        clone = maml.clone()
        for _ in range(steps):
            clone.adapt(bce_dice_loss(clone(ep.support_x), ep.support_y))
        bce_dice_loss(clone(ep.query_x), ep.query_y).backward()

    return run


def torchopt_maml(model, ep, steps: int, lr: float) -> Callable[[], None]:
    import torchopt

    inner = torchopt.MetaSGD(model, lr=lr)

    def run() -> None:
        state = torchopt.extract_state_dict(model)
        for _ in range(steps):
            inner.step(bce_dice_loss(model(ep.support_x), ep.support_y))
        bce_dice_loss(model(ep.query_x), ep.query_y).backward()
        torchopt.recover_state_dict(model, state)

    return run


# ---------------------------------------------------------------------------------- iMAML


def torchopt_imaml(model, ep, steps: int, lr: float, lam: float, cg_steps: int) -> Callable[[], None]:
    """torchopt's iMAML recipe: custom_root over the optimality condition
    ∇_φ [L_support(φ) + λ/2‖φ−θ‖²] = 0, solved by plain CG (solve_cg, not the example's
    normal-equation CG, so that both sides solve the same system with the same Krylov iterates)."""
    import torchopt
    from torch.func import functional_call, grad

    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def objective(params, meta_params, x, y):
        logits = functional_call(model, dict(zip(names, params)), (x,))
        prox = sum(((p - m) ** 2).sum() for p, m in zip(params, meta_params))
        return bce_dice_loss(logits, y) + 0.5 * lam * prox

    @torchopt.diff.implicit.custom_root(grad(objective, argnums=0), argnums=1,
                                         solve=torchopt.linear_solve.solve_cg(maxiter=cg_steps, rtol=0.0, atol=0.0))
    def inner_solver(params, meta_params, x, y):
        params = tuple(p.detach().requires_grad_() for p in params)
        for _ in range(steps):  # the same SGD steps as metaseg's inner loop
            with torch.enable_grad():
                g = torch.autograd.grad(objective(params, meta_params, x, y), params)
            params = tuple((p - lr * gp).detach().requires_grad_() for p, gp in zip(params, g))
        return tuple(p.detach() for p in params)

    def run() -> None:
        meta = tuple(trainable(model))
        fast = inner_solver(tuple(p.detach() for p in meta), meta, ep.support_x, ep.support_y)
        logits = functional_call(model, dict(zip(names, fast)), (ep.query_x,))
        bce_dice_loss(logits, ep.query_y).backward()

    return run


# ----------------------------------------------------------------------------------- driver


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build(args, model, ep) -> list[tuple[str, str, Callable[[], None]]]:
    steps, lr = args.inner_steps, args.inner_lr
    rows = [("metaseg", "maml", metaseg_learner(model, ep, "maml", inner_steps=steps, inner_lr=lr)),
            ("metaseg (checkpoint)", "maml", metaseg_learner(model, ep, "maml", inner_steps=steps, inner_lr=lr, checkpoint=True))]
    if available("learn2learn"):
        rows.append(("learn2learn 0.2.0", "maml", learn2learn_maml(model, ep, steps, lr)))
    if available("higher"):
        rows.append(("higher", "maml", higher_maml(model, ep, steps, lr)))
    if available("torchopt"):
        rows.append(("torchopt (MetaSGD)", "maml", torchopt_maml(model, ep, steps, lr)))
    rows.append(("metaseg", "imaml", metaseg_learner(model, ep, "imaml", inner_steps=steps, inner_lr=lr, lam=args.lam,
                                                      cg_steps=args.cg_steps)))
    rows.append(("metaseg (hvp=jvp)", "imaml", metaseg_learner(model, ep, "imaml", inner_steps=steps, inner_lr=lr,
                                                                lam=args.lam, cg_steps=args.cg_steps, hvp="jvp")))
    if available("torchopt"):
        rows.append(("torchopt (implicit)", "imaml", torchopt_imaml(model, ep, steps, lr, args.lam, args.cg_steps)))
    return rows


def paired_ratio(times: list[float], reference: list[float]) -> list[float] | None:
    """[mean, 95% half-width] over rounds of times[i] / reference[i] (the same round's calls), or
    None without times (thread CPU time is not measured on CUDA)."""
    if not times or not reference:
        return None
    mean, ci = mean_ci95([t / r for t, r in zip(times, reference, strict=True)])
    return [round(mean, 4), round(ci, 4)]


def ratio_text(pair: list[float] | None) -> str:
    return "—" if pair is None else f"{pair[0]:.3f} ± {pair[1]:.3f}"


def markdown(rows: list[dict]) -> str:
    head = ("| algorithm | implementation | s / meta-step | peak memory (MB) | max abs grad diff vs metaseg | x metaseg time | "
            "x metaseg, paired per round (wall) | x metaseg, paired per round (thread CPU) |\n")
    head += "|---|---|---:|---:|---:|---:|---:|---:|\n"
    base = {r["algorithm"]: r["seconds_per_meta_step"] for r in rows if r["impl"] == "metaseg"}
    lines = [f"| {r['algorithm']} | {r['impl']} | {r['seconds_per_meta_step']:.3f} | {r['peak_memory_mb']:.1f} | "
             f"{r['max_abs_grad_diff']:.1e} | {r['seconds_per_meta_step'] / base[r['algorithm']]:.2f} | "
             f"{ratio_text(r.get('x_metaseg_paired_wall'))} | {ratio_text(r.get('x_metaseg_paired_cpu'))} |" for r in rows]
    s = rows[0]
    settings = (f"Device: {s['device']}; U-Net (resnet18 encoder, depth 3, GroupNorm, {s['parameters']} parameters), "
                f"{s['image_size']} px, {s['shots']} shots + {s['queries']} queries, {s['inner_steps']} inner SGD steps "
                f"(lr {s['inner_lr']}), iMAML λ={s['lam']}, {s['cg_steps']} CG steps; median of {s['repeats']} after warm-up; "
                f"{s['threads']} CPU thread(s); torch {torch.__version__}.\n\nMemory: {s['memory_method']}.\n\n"
                "Paired: each call's time over metaseg's call of the same algorithm in the same round; "
                "mean ± 95% t-interval over the rounds (thread CPU: time.thread_time of the calls, CPU only).\n")
    return head + "\n".join(lines) + "\n\n" + settings


def peak_memory(args, index: int, model, run) -> float:
    """CUDA: in process (exact allocator statistics). CPU: RSS in this process is polluted by
    every earlier call's freed-but-cached memory, so each implementation runs in its own process."""
    if args.device == "cuda":
        return _common.peak_cuda_mb(lambda: collect(model, run))
    cmd = [sys.executable, "-m", "benchmarks.peers", "--memory-of", str(index), "--device", args.device]
    for option in ("size", "shots", "queries", "inner_steps", "inner_lr", "lam", "cg_steps", "threads"):
        cmd += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_common.malloc_env()).stdout
    return float(out.strip().splitlines()[-1])


def memory_of(args, index: int) -> float:
    """Subprocess side of peak_memory: a warm-up call (it pages in the shared libraries'
    kernels, ~300 MB of RSS that is not the algorithm's), then the measured call."""
    torch.set_num_threads(args.threads)
    model = _common.unet(args.device)
    ep = _common.episode(args.size, args.shots, args.queries, args.device)
    run = build(args, model, ep)[index][2]
    collect(model, run)
    gc.collect()
    # sampled, not ru_maxrss: importing the peers leaves a high-water mark above the measured call's
    return _common.peak_rss_sampled_mb(lambda: collect(model, run))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_episode_arguments(parser)
    _common.add_inner_loop_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: timings on a shared machine are far less noisy single-threaded)")
    parser.add_argument("--out", default="benchmarks/results/peers.json", help="JSON rows; the .md table goes beside it")
    parser.add_argument("--memory-of", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torchopt calls the deprecated functorch.vjp
    if args.memory_of is not None:
        print(memory_of(args, args.memory_of))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    model = _common.unet(args.device)
    ep = _common.episode(args.size, args.shots, args.queries, args.device)
    impls = build(args, model, ep)
    grads = {}
    for impl, alg, run in impls:  # also the warm-up
        grads[(impl, alg)] = collect(model, run)
        print(f"warm-up done: {impl} {alg}", file=sys.stderr, flush=True)
    times: dict[tuple[str, str], list[float]] = {(impl, alg): [] for impl, alg, _ in impls}
    cpu_times: dict[tuple[str, str], list[float]] = {(impl, alg): [] for impl, alg, _ in impls}
    for _ in range(args.repeats):  # round-robin: background load affects every implementation alike
        for impl, alg, run in impls:
            cpu0 = time.thread_time()
            times[(impl, alg)].append(_common.timed(lambda: collect(model, run), args.device, repeats=1, warmup=0))
            if args.device == "cpu":  # on CUDA the host thread's time says nothing about the kernels
                cpu_times[(impl, alg)].append(time.thread_time() - cpu0)
    memory_method = ("torch.cuda.max_memory_allocated during one call minus memory allocated before it" if args.device == "cuda"
                     else "one fresh subprocess per implementation: peak RSS growth during one call (after a warm-up call), "
                          "sampled every 1 ms from /proc/self/statm; glibc mmap threshold fixed so freed tensors return to the OS")
    rows = []
    for index, (impl, alg, run) in enumerate(impls):
        peak = peak_memory(args, index, model, run)
        ref = grads[("metaseg", alg)]
        diff = max(float((a - b).abs().max()) for a, b in zip(grads[(impl, alg)], ref))
        rows.append({
            "impl": impl, "algorithm": alg, "seconds_per_meta_step": sorted(times[(impl, alg)])[len(times[(impl, alg)]) // 2],
            "min_seconds": min(times[(impl, alg)]), "all_seconds": [round(t, 4) for t in times[(impl, alg)]],
            "all_cpu_seconds": [round(t, 4) for t in cpu_times[(impl, alg)]],
            "x_metaseg_paired_wall": paired_ratio(times[(impl, alg)], times[("metaseg", alg)]),
            "x_metaseg_paired_cpu": paired_ratio(cpu_times[(impl, alg)], cpu_times[("metaseg", alg)]),
            "peak_memory_mb": round(peak, 1),
            "max_abs_grad_diff": diff, "device": _common.device_description(args.device), "image_size": args.size,
            "shots": args.shots, "queries": args.queries, "inner_steps": args.inner_steps, "inner_lr": args.inner_lr,
            "lam": args.lam, "cg_steps": args.cg_steps, "repeats": args.repeats, "threads": args.threads,
            "parameters": sum(p.numel() for p in trainable(model)), "memory_method": memory_method,
        })
        print(json.dumps({k: rows[-1][k] for k in ("impl", "algorithm", "seconds_per_meta_step", "x_metaseg_paired_cpu", "peak_memory_mb", "max_abs_grad_diff")}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
