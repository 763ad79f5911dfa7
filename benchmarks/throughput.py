"""Throughput against the machine's own peak: `python -m benchmarks.throughput`.

One run, one process, torch.set_num_threads(--threads) (1 by default: 2 cores shared with
other jobs), on the peers benchmark's problem (benchmarks/_common.py: the U-Net with resnet18
encoder, depth 3, GroupNorm; 64 px, 5 support + 5 query images; 5 inner SGD steps, lr 0.1;
iMAML lambda 2, 5 CG steps). Sections, each written to the JSON as soon as it is done (a killed
run resumes with --resume and skips finished sections):

- peak: GFLOP/s of a large square matmul (torch.mm, --matmul-n) in fp32 and in bf16, median of 5;
- learners: per learner and precision (fp32, bf16 = metaseg.meta.core.autocast("bf16-mixed")),
  one meta-step (meta_backward): median seconds (precisions interleaved round-robin so that
  background load hits both alike), GFLOP (torch.utils.flop_counter.FlopCounterMode: conv and
  matmul FLOPs of forward, backward and double backward), achieved GFLOP/s / the peak of that
  precision, and the bf16 meta-gradient against fp32's (cosine, relative norm of the difference);
- learners_channels_last (not in the default list): maml, fomaml, imaml again with the U-Net's
  channels_last option (weights and activations NHWC);
- adaptation: learner.adapt (5 first-order steps) + predict of the queries, fp32 and bf16;
- layout_compile: channels_last and torch.compile (inductor, CPU) on forward+backward, one
  second-order inner step + query backward, and one Hessian-vector product;
- vmap: tasks per second of a meta-batch of T = 1, 4, 8 episodes, sequential vs vmap_tasks;
- peers: benchmarks/peers.py run as a subprocess in the same run (its own JSON/markdown), with
  --peers-path added to PYTHONPATH where the peer libraries were installed.

Writes benchmarks/results/throughput.json and .md (the markdown is rebuilt from the JSON).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import _common
from metaseg.losses import bce_dice_loss
from metaseg.meta import core, create_learner

RESULT = Path(__file__).resolve().parent / "results" / "throughput.json"
PRECISIONS = {"fp32": "fp32", "bf16": "bf16-mixed"}


def learner_options(args) -> dict[str, dict[str, Any]]:
    steps, lr = args.inner_steps, args.inner_lr
    return {
        "maml": {"name": "maml", "inner_steps": steps, "inner_lr": lr},
        "fomaml": {"name": "fomaml", "inner_steps": steps, "inner_lr": lr},
        "imaml": {"name": "imaml", "inner_steps": steps, "inner_lr": lr, "lam": args.lam, "cg_steps": args.cg_steps},
        "maml_meta_sgd": {"name": "maml", "inner_steps": steps, "inner_lr": lr, "meta_sgd": True, "meta_sgd_per": "tensor"},
        "transfer": {"name": "transfer"},
    }


def build(options: dict[str, Any]):
    options = dict(options)
    return create_learner(options.pop("name"), **options)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per key, calls interleaved round-robin (background load hits all alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def gflop(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def flat_grads(model, learner) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in learner.meta_parameters(model) if p.grad is not None])


# ------------------------------------------------------------------------------------ sections


def section_peak(args) -> dict[str, Any]:
    n = args.matmul_n
    out = {"matmul_n": n}
    for key, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        seconds = _common.timed(lambda: torch.mm(a, b), "cpu", 5, warmup=0)
        out[key] = round(2 * n**3 / seconds / 1e9, 1)
    return out


def section_learners(args, model, episode, peak, names=None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, options in learner_options(args).items():
        if names is not None and name not in names:
            continue
        learner = build(options)
        learner.setup(model)

        def step(precision: str) -> Callable[[], None]:
            def run() -> None:
                for p in learner.meta_parameters(model):
                    p.grad = None
                with core.autocast(precision, "cpu"):
                    learner.meta_backward(model, episode)
            return run

        runs = {key: step(p) for key, p in PRECISIONS.items()}
        row: dict[str, Any] = {}
        grads = {}
        for key, run in runs.items():
            row[key] = {"gflop": round(gflop(run), 3)}
            grads[key] = flat_grads(model, learner)
        seconds = interleaved(runs, args.repeats)
        for key in runs:
            row[key]["seconds"] = round(seconds[key], 4)
            row[key]["gflop_per_s"] = round(row[key]["gflop"] / seconds[key], 1)
            row[key]["achieved_over_peak"] = round(row[key]["gflop_per_s"] / peak[key], 3)
        g32, g16 = grads["fp32"], grads["bf16"]
        row["bf16_speedup"] = round(seconds["fp32"] / seconds["bf16"], 2)
        row["bf16_grad_cosine"] = round(float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)), 5)
        row["bf16_grad_relative_diff"] = round(float((g16 - g32).norm() / g32.norm()), 4)
        row["options"] = options
        out[name] = row
        print(json.dumps({name: row}), flush=True)
    return out


def section_adaptation(args, model, episode, peak) -> dict[str, Any]:
    learner = build(learner_options(args)["maml"])

    def adapt(precision: str) -> Callable[[], None]:
        def run() -> None:
            with core.autocast(precision, "cpu"):
                fast = learner.adapt(model, episode.support_x, episode.support_y, steps=args.inner_steps)
                with torch.no_grad():
                    learner.predict(model, fast, episode.query_x)
        return run

    runs = {key: adapt(p) for key, p in PRECISIONS.items()}
    row = {key: {"gflop": round(gflop(run), 3)} for key, run in runs.items()}
    seconds = interleaved(runs, args.repeats)
    for key in runs:
        row[key].update(seconds=round(seconds[key], 4), gflop_per_s=round(row[key]["gflop"] / seconds[key], 1))
        row[key]["achieved_over_peak"] = round(row[key]["gflop_per_s"] / peak[key], 3)
    row["bf16_speedup"] = round(seconds["fp32"] / seconds["bf16"], 2)
    row["what"] = f"maml learner's adapt ({args.inner_steps} first-order steps on the support) + predict of the queries"
    return row


def section_layout_compile(args, model, episode) -> dict[str, Any]:
    """channels_last and torch.compile on three kernels, fp32 and bf16; a variant that fails is
    recorded with its error (e.g. double backward through a compiled graph)."""
    sx, sy, qx, qy = episode.support_x, episode.support_y, episode.query_x, episode.query_y
    theta = core.trainable_params(model)
    lr = args.inner_lr

    def kernels(net, sx, sy, qx, qy):
        params = {n: p for n, p in net.named_parameters() if p.requires_grad}

        def fwd_bwd():
            net.zero_grad(set_to_none=True)
            bce_dice_loss(core.full_precision(net(sx)), sy).backward()

        def inner_step():
            net.zero_grad(set_to_none=True)
            loss_fn = core.loss_at(net, sx, sy, bce_dice_loss)
            fast, _, _ = core.inner_step(loss_fn, params, lr)
            q = bce_dice_loss(core.full_precision(core.forward(net, fast, qx)), qy)
            torch.autograd.grad(q, list(params.values()))

        def hvp():
            v = {n: torch.ones_like(p) for n, p in params.items()}
            core.hvp_double_backward(core.loss_at(net, sx, sy, bce_dice_loss), params)(v)

        return {"forward_backward": fwd_bwd, "inner_step_second_order": inner_step, "hvp": hvp}

    out: dict[str, Any] = {}
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    variants = {
        "plain": lambda: (model, sx, sy, qx, qy),
        "channels_last": lambda: (model_cl, cl(sx), sy, cl(qx), qy),
        "compile": lambda: (compiled, sx, sy, qx, qy),
    }
    import copy

    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    compiled = torch.compile(copy.deepcopy(model), backend="inductor", dynamic=False)
    for variant, make in variants.items():
        for key, precision in PRECISIONS.items():
            for kernel, fn in kernels(*make()).items():
                label = f"{variant}/{key}/{kernel}"
                try:
                    with core.autocast(precision, "cpu"):
                        t0 = time.perf_counter()
                        fn()  # warm-up (and, for compile, the compilation)
                        first = time.perf_counter() - t0
                        seconds = _common.timed(fn, "cpu", args.repeats, warmup=0)
                    out[label] = {"seconds": round(seconds, 4), "first_call_seconds": round(first, 2)}
                except Exception as exc:  # a variant that does not run is a result too
                    out[label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                print(json.dumps({label: out[label]}), flush=True)
    for label, row in out.items():
        base = out.get("plain/" + label.split("/", 1)[1], {})
        if "seconds" in row and "seconds" in base:
            row["speedup_over_plain"] = round(base["seconds"] / row["seconds"], 2)
    return out


def _synchronize(device: str) -> None:
    """Wait for queued GPU kernels, so that a timer measures them (a no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def section_vmap(args, model) -> dict[str, Any]:
    """Tasks per second, sequential loop vs vmap_tasks, on --device (the GPU figure:
    `--sections vmap --device cuda --out benchmarks/results/throughput_cuda.json`)."""
    device = args.device
    model = copy.deepcopy(model).to(device)
    out: dict[str, Any] = {"device": device}
    episodes = [_common.episode(args.size, args.shots, args.queries, device, seed=s) for s in range(max(args.tasks))]
    for name in ("maml", "fomaml", "imaml"):
        options = learner_options(args)[name]
        seq, vm = build(options), build({**options, "vmap_tasks": True})
        for t in args.tasks:
            batch = episodes[:t]

            def run(learner) -> Callable[[], None]:
                def go() -> None:
                    for p in learner.meta_parameters(model):
                        p.grad = None
                    learner.meta_backward_batch(model, batch, scale=1.0 / len(batch))
                return go

            if t == args.tasks[0]:
                run(vm)()  # warm-up: the first vmapped call builds its batching rules
            times = {"sequential": [], "vmap": []}
            for _ in range(args.vmap_repeats):  # one timed call each per repeat; the last call's gradients compared
                for key, learner in (("sequential", seq), ("vmap", vm)):
                    _synchronize(device)
                    t0 = time.perf_counter()
                    run(learner)()
                    _synchronize(device)
                    times[key].append(time.perf_counter() - t0)
                    if key == "sequential":
                        g_seq = flat_grads(model, seq)
                    else:
                        g_vm = flat_grads(model, vm)
            seconds = {k: statistics.median(v) for k, v in times.items()}
            row = {"sequential_tasks_per_s": round(t / seconds["sequential"], 3), "vmap_tasks_per_s": round(t / seconds["vmap"], 3),
                   "speedup": round(seconds["sequential"] / seconds["vmap"], 2),
                   "max_abs_grad_diff": float(f"{(g_seq - g_vm).abs().max():.2e}")}
            out[f"{name}/T={t}"] = row
            print(json.dumps({f"{name}/T={t}": row}), flush=True)
    return out


def section_peers(args) -> dict[str, Any]:
    env = dict(os.environ)
    if args.peers_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.peers_path, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "benchmarks.peers", "--out", args.peers_out, "--threads", str(args.threads)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"command": " ".join(cmd[1:]), "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    rows = json.loads(Path(args.peers_out).read_text())
    return {"command": "python " + " ".join(cmd[1:]), "seconds": round(time.perf_counter() - t0, 1), "rows": rows}


# ------------------------------------------------------------------------------------ report


def markdown(result: dict[str, Any]) -> str:
    peak = result.get("peak", {})
    lines = [f"# Throughput against peak ({result['machine']['processor']}, {result['torch_threads']} thread)", "",
             f"Command: `{result['command']}`; load average {result['machine']['load_average_at_start']} at the start, "
             f"{result['machine'].get('load_average_at_end')} at the end (2 cores shared with other jobs).", "",
             f"Peak (torch.mm {peak.get('matmul_n')}²): fp32 {peak.get('fp32')} GFLOP/s, bf16 {peak.get('bf16')} GFLOP/s.", "",
             "| learner | fp32 s | bf16 s | bf16 speed-up | GFLOP (fp32) | fp32 achieved/peak | bf16 achieved/peak | bf16 grad cosine | bf16 grad rel. diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = dict(result.get("learners", {}))
    rows.update({f"{k} (channels_last)": v for k, v in result.get("learners_channels_last", {}).items()})
    if "adaptation" in result:
        rows["adaptation (maml adapt + predict)"] = result["adaptation"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['fp32']['seconds']:.3f} | {row['bf16']['seconds']:.3f} | {row['bf16_speedup']:.2f}x | "
                     f"{row['fp32']['gflop']:.1f} | {row['fp32']['achieved_over_peak']:.2f} | {row['bf16']['achieved_over_peak']:.2f} | "
                     f"{row.get('bf16_grad_cosine', '')} | {row.get('bf16_grad_relative_diff', '')} |")
    if "layout_compile" in result:
        lines += ["", "channels_last and torch.compile (inductor), seconds (speed-up over plain):", "",
                  "| variant / precision / kernel | seconds | speed-up | first call s |", "|---|---:|---:|---:|"]
        for label, row in result["layout_compile"].items():
            if "error" in row:
                lines.append(f"| {label} | fails: {row['error'][:90]} | | |")
            else:
                lines.append(f"| {label} | {row['seconds']:.3f} | {row.get('speedup_over_plain', 1.0):.2f}x | {row['first_call_seconds']} |")
    if "vmap" in result:
        lines += ["", f"Meta-batch of T episodes on {result['vmap'].get('device', 'cpu')}: tasks per second, sequential loop vs vmap_tasks:", "",
                  "| learner / T | sequential tasks/s | vmap tasks/s | speed-up | max abs grad diff |", "|---|---:|---:|---:|---:|"]
        for label, row in result["vmap"].items():
            if label == "device":
                continue
            lines.append(f"| {label} | {row['sequential_tasks_per_s']} | {row['vmap_tasks_per_s']} | {row['speedup']:.2f}x | {row['max_abs_grad_diff']} |")
    peers = result.get("peers", {})
    if peers.get("rows"):
        lines += ["", f"Peers, same run (`{peers['command']}`):", "",
                  "| algorithm | implementation | s / meta-step | x metaseg time |", "|---|---|---:|---:|"]
        ours = {r["algorithm"]: r["seconds_per_meta_step"] for r in peers["rows"] if r["impl"] == "metaseg"}
        for r in peers["rows"]:
            ratio = r["seconds_per_meta_step"] / ours[r["algorithm"]] if r["algorithm"] in ours else float("nan")
            lines.append(f"| {r['algorithm']} | {r['impl']} | {r['seconds_per_meta_step']:.3f} | {ratio:.2f} |")
    elif peers:
        lines += ["", f"Peers: {peers}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_episode_arguments(p)
    _common.add_inner_loop_arguments(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vmap-repeats", type=int, default=1)
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sections", nargs="+", default=["peak", "learners", "adaptation", "vmap", "layout_compile", "peers"])
    p.add_argument("--peers-path", default=os.environ.get("METASEG_PEERS_PATH", ""), help="extra PYTHONPATH entry for the peer libraries")
    p.add_argument("--peers-out", default="benchmarks/results/peers.json")
    p.add_argument("--resume", action="store_true", help="keep the sections already in --out")
    p.add_argument("--out", default=str(RESULT))
    args = p.parse_args(argv)
    if args.device == "cuda":  # before, --device was accepted and ignored: every section ran on the CPU
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device on this machine")
        if set(args.sections) != {"vmap"}:
            p.error("--device cuda: only the vmap section runs on a GPU (the others measure this CPU against its peak); "
                    "use --sections vmap")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if args.resume and out.is_file() else {}
    result.update({
        "command": "python -m benchmarks.throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "problem": f"U-Net (resnet18 encoder, depth 3, GroupNorm), {args.size} px, {args.shots} support + {args.queries} query images, "
                   f"{args.inner_steps} inner SGD steps (lr {args.inner_lr}), iMAML lambda {args.lam}, {args.cg_steps} CG steps",
    })
    machine = result.setdefault("machine", {})
    machine.update({"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__})
    machine.setdefault("load_average_at_start", [round(x, 2) for x in os.getloadavg()])
    model = _common.unet("cpu")
    episode = _common.episode(args.size, args.shots, args.queries, "cpu")

    def save() -> None:
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(result))

    for section in args.sections:
        if section in result and args.resume:
            continue
        t0 = time.perf_counter()
        try:
            if section == "peak":
                result["peak"] = section_peak(args)
            elif section == "learners":
                result["learners"] = section_learners(args, model, episode, result["peak"])
            elif section == "learners_channels_last":  # the same meta-steps with model.channels_last
                torch.manual_seed(0)
                from metaseg.models import create_model

                cl_model = create_model("unet", in_channels=1, channels_last=True)
                cl_model.load_state_dict(model.state_dict())
                result[section] = section_learners(args, cl_model, episode, result["peak"], names=("maml", "fomaml", "imaml"))
            elif section == "adaptation":
                result["adaptation"] = section_adaptation(args, model, episode, result["peak"])
            elif section == "layout_compile":
                result["layout_compile"] = section_layout_compile(args, model, episode)
            elif section == "vmap":
                result["vmap"] = section_vmap(args, model)
            elif section == "peers":
                result["peers"] = section_peers(args)
        except Exception:
            traceback.print_exc()
            result.setdefault("errors", {})[section] = traceback.format_exc().splitlines()[-1]
        result.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
        save()
        print(f"# {section} done in {result['section_seconds'][section]} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
