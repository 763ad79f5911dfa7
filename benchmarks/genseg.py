"""GenSeg benchmark: real_only, real_aug, separate, genseg on ultra-low-data splits (issue 13).

    python -m benchmarks.genseg run    [--seeds 0 1 2] [--steps 150] [--size 64] [--test-cap 100]
                                       [--n-real 8 40 100 all] [--segmenter segformer|litemedsam] [--rows FILE]
    python -m benchmarks.genseg report [--rows FILE ...]    # results/genseg.{json,md} + figures

The report pairs genseg with real_only and separate by seed and, where rows keep
`dice_per_image`, per test image; it tabulates the data-efficiency curve and interpolates the
real pairs each method needs for the same Dice.

`run` appends one JSON row per finished (method, dataset, seed) to results/genseg_rows.jsonl and
skips rows already there, so a killed run resumes where it stopped. Order: seed-major, so the
first seed covers every dataset and method before the second starts.

Splits are by content hash (seed 0 for every training seed; the training seed changes the
initialisation, the minibatches and the augmentations). The in-domain test set is fixed per
dataset: the `--test-cap` pairs after the protocol's n_real (40; CXR 9) in hash order. The
real pairs are the rest in hash order (the protocol's first n_real, then the pairs after the
test set), so `--n-real 8 40 100 all` (the data-efficiency curve) gives nested training sets
scored on the same test images; "all" is every remaining pair, capped at `--all-cap`. n_real
splits into n_train (train) and n_val = round(n_real / 5) (GenSeg's level-3 validation split;
the baselines do not use it). Out-of-domain: the same model on CVC-ClinicDB (Kvasir-SEG) and
Montgomery (Shenzhen), capped the same way. Rows keep each test image's Dice (`dice_per_image`,
in test-set order), so the report can pair methods per image.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks import _rows

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ROWS = RESULTS / "genseg_rows.jsonl"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
METHODS = ("real_only", "real_aug", "separate", "genseg")
DATASETS = ("isic2017", "kvasir", "busi", "cxr")
N_REAL = {"isic2017": 40, "kvasir": 40, "busi": 40, "cxr": 9}  # the protocol


def split_sizes(n_real: int) -> tuple[int, int]:
    """(n_train, n_val) of n_real real pairs: a fifth (rounded) validates, as 32 + 8 and 7 + 2."""
    if n_real < 2:
        raise SystemExit(f"--n-real: need at least 2 real pairs (train + validation), got {n_real}")
    n_val = max(1, round(n_real / 5))
    return n_real - n_val, n_val


def load(name: str, size: int, cap: int, data: Path) -> dict:
    """The dataset's test (in-domain) Pairs, its real-pair `pool` (Pairs in the order training
    takes them) and, where there is one, ood (out-of-domain) Pairs."""
    from metaseg.data.cache import load_task
    from metaseg.data.types import TaskArrays
    from metaseg.jobs.genseg import ordered_rows, take

    def task(folder: str, category: str | None = None) -> TaskArrays:
        return load_task(data / folder, size=size, category=category)

    ood = None
    if name == "isic2017":
        t = task("ISIC-2017-256sq")
    elif name == "kvasir":
        t = task("Kvasir-SEG")
        o = task("CVC-ClinicDB")
        ood = take(o, ordered_rows(o.hashes, 0)[:cap])
    elif name == "busi":
        b, m = task("BUSI", "benign"), task("BUSI", "malignant")
        t = TaskArrays("BUSI:benign+malignant", np.concatenate([b.images, m.images]), np.concatenate([b.masks, m.masks]),
                       list(b.ids) + list(m.ids), list(b.hashes) + list(m.hashes), list(b.sources) + list(m.sources))
    elif name == "cxr":
        full = task("CXR-Lungs-Shenzhen-Montgomery")
        keep = lambda prefix: [i for i, x in enumerate(full.ids) if x.startswith(prefix)]  # noqa: E731
        sz, mc = keep("CHNCXR"), keep("MCUCXR")
        sub = lambda rows: TaskArrays(full.name, full.images[rows], full.masks[rows], [full.ids[i] for i in rows],  # noqa: E731
                                      [full.hashes[i] for i in rows], [full.sources[i] for i in rows])
        t = sub(sz)
        o = sub(mc)
        ood = take(o, ordered_rows(o.hashes, 0)[:cap])
    else:
        raise SystemExit(f"unknown dataset {name}")
    order = ordered_rows(t.hashes, 0)
    first = N_REAL[name]
    out = {"test": take(t, order[first:first + cap]), "pool": take(t, order[:first] + order[first + cap:])}
    if ood is not None:
        out["ood"] = ood
    return out


def done_keys(path: Path = ROWS) -> set[tuple]:
    return {(r["method"], r["dataset"], r["seed"], r["segmenter"], r["n_real"]) for r in _rows.read_rows(path)}


def resolve_n_real(value: str, name: str, pool: int, all_cap: int) -> int:
    """An --n-real entry: a number of real pairs, "default" (the protocol's) or "all" (capped)."""
    if value == "default":
        return N_REAL[name]
    if value == "all":
        return min(pool, all_cap)
    try:
        n = int(value)
    except ValueError:
        raise SystemExit(f"--n-real: expected a number, 'default' or 'all', got {value!r}") from None
    if n > pool:
        raise SystemExit(f"--n-real: {name} has {pool} real pairs outside its test set, asked for {n}")
    return n


def real_split(pool, n_real: int):
    """(train, val) Pairs: the pool's first n_train pairs and the n_val after them."""
    from metaseg.jobs.genseg import Pairs

    n_train, n_val = split_sizes(n_real)
    part = lambda a, b: Pairs(pool.images[a:b], pool.masks[a:b], list(pool.ids[a:b]))  # noqa: E731
    return part(0, n_train), part(n_train, n_train + n_val)


RUN_INDEPENDENT = ("method", "seed")  # what may differ between the rows of one segmenter


def check_config(path: Path, config: dict) -> None:
    """One configuration per segmenter per rows file (the report groups rows by dataset, segmenter
    and n_real only): a row of another size, budget or weighting is refused, naming the file."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)["config"]
        if row.get("segmenter", "unet") != config.get("segmenter", "unet"):
            continue
        diff = config_diff(row, config)
        if diff:
            raise SystemExit(f"--rows {path}: holds rows of another configuration ({', '.join(diff)} differ); "
                             "write these to another --rows file")


def config_diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if k not in RUN_INDEPENDENT and a.get(k) != b.get(k))


def run(args: argparse.Namespace) -> None:
    import torch

    from metaseg.errors import MetasegError
    from metaseg.generative.segmenters import DEFAULT_LR, SEGMENTERS
    from metaseg.jobs.genseg import GenSegConfig, dice_scores, fit, sample_figure
    from metaseg.jobs.methods import resolve_device
    from metaseg.metrics import mean_ci95

    torch.set_num_threads(args.threads)
    if args.segmenter not in SEGMENTERS:
        raise SystemExit(f"--segmenter: unknown {args.segmenter!r}; choose one of {', '.join(SEGMENTERS)}")
    try:
        device = resolve_device(args.device)
    except MetasegError as e:
        raise SystemExit(str(e)) from None
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows_path = Path(args.rows)
    cache: dict[str, dict] = {}
    for seed in args.seeds:
        for name in args.datasets:
            if name not in cache:
                cache[name] = load(name, args.size, args.test_cap, Path(args.data))
            d = cache[name]
            for n_real in [resolve_n_real(v, name, len(d["pool"].images), args.all_cap) for v in args.n_real]:
                n_train, n_val = split_sizes(n_real)
                train, val = real_split(d["pool"], n_real)
                for method in args.methods:
                    key = (method, name, seed, args.segmenter, n_real)
                    if key in done_keys(rows_path):
                        continue
                    cfg = GenSegConfig(method=method, segmenter=args.segmenter, size=args.size, steps=args.steps,
                                       gan_steps=args.gan_steps, batch_size=args.batch_size, hyper_every=args.hyper_every,
                                       lr=args.lr if args.lr is not None else DEFAULT_LR[args.segmenter],
                                       hypergradient=args.hypergradient, gen_weight=args.gen_weight,
                                       gen_width=args.gen_width, disc_width=args.disc_width, seed=seed)
                    check_config(rows_path, asdict(cfg))
                    started = time.time()
                    r = fit(cfg, train, val, device)
                    seconds = time.time() - started
                    rows = []
                    for domain, split in (("in", "test"), ("out", "ood")):
                        if split not in d:
                            continue
                        scores = dice_scores(r.seg, d[split], device=device)
                        mean, ci = mean_ci95(scores.tolist())
                        rows.append({"method": method, "dataset": name, "domain": domain, "n_real": n_real,
                                     "n_train": n_train, "n_val": n_val, "segmenter": args.segmenter, "seed": seed,
                                     "dice_mean": mean, "dice_ci95": ci, "n_test": int(len(scores)),
                                     "train_seconds": round(seconds, 1), "device": device.type, "config": asdict(cfg),
                                     "dice_per_image": [round(float(x), 5) for x in scores]})
                    if (method == "genseg" and seed == args.seeds[0] and n_real == N_REAL[name]
                            and args.segmenter == "unet" and rows_path == ROWS):
                        sample_figure(r, RESULTS / f"genseg_samples_{name}.png")
                    for row in rows:
                        _rows.append_row(rows_path, row)
                    print(f"{name} n_real {n_real} {method} seed {seed}: "
                          + ", ".join(f"{x['domain']} {x['dice_mean']:.3f}" for x in rows) + f" ({seconds:.0f} s)", flush=True)


JSON_FIELDS = ("method", "dataset", "domain", "n_real", "segmenter", "seed", "dice_mean", "dice_ci95")  # issue 13
CURVE_ROWS = RESULTS / "genseg_curve_rows.jsonl"
CURVE_SEED1_ROWS = RESULTS / "genseg_curve_seed1_rows.jsonl"
SEGFORMER_ROWS = RESULTS / "genseg_segformer_rows.jsonl"
LITEMEDSAM_ROWS = RESULTS / "genseg_litemedsam_rows.jsonl"
DEFAULT_ROWS = (ROWS, CURVE_ROWS, CURVE_SEED1_ROWS, SEGFORMER_ROWS, LITEMEDSAM_ROWS)
RUN_COMMANDS = {  # how each rows file was made (with OMP_NUM_THREADS=1 nice -n 10)
    ROWS.name: "python -m benchmarks.genseg run",
    CURVE_ROWS.name: "python -m benchmarks.genseg run --seeds 0 --datasets isic2017 busi --methods real_only genseg "
                     "--n-real 8 100 all --rows benchmarks/results/genseg_curve_rows.jsonl",
    CURVE_SEED1_ROWS.name: "python -m benchmarks.genseg run --seeds 1 --datasets isic2017 busi --methods real_only genseg "
                           "--n-real 8 100 all --rows benchmarks/results/genseg_curve_seed1_rows.jsonl",
    SEGFORMER_ROWS.name: "python -m benchmarks.genseg run --seeds 0 --segmenter segformer --methods real_only genseg "
                         "--rows benchmarks/results/genseg_segformer_rows.jsonl",
    LITEMEDSAM_ROWS.name: "python -m benchmarks.genseg run --segmenter litemedsam --steps 100 --datasets isic2017 busi "
                          "--methods real_only separate genseg --rows benchmarks/results/genseg_litemedsam_rows.jsonl, then the "
                          "same with --datasets kvasir cxr",
}
TARGETS = {"real_only": 10.0, "separate": 3.0}  # genseg must beat each by this many Dice points, in-domain


def read_rows(paths) -> list[dict]:
    """The rows of every file, one configuration per segmenter (the report groups by dataset,
    segmenter and n_real only): a file that holds another is refused, naming it."""
    rows: list[dict] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise SystemExit(f"--rows: no such file {path}")
        new = _rows.read_rows(path)
        first: dict[str, dict] = {}
        for r in rows + new:
            first.setdefault(r["segmenter"], r["config"])
        diff = sorted({k for r in new for k in config_diff(r["config"], first[r["segmenter"]])})
        if diff:
            raise SystemExit(f"--rows {path}: rows of another configuration than the other files ({', '.join(diff)} differ); "
                             "report it on its own")
        rows += new
    return rows


def seed_paired(a: list[dict], b: list[dict]) -> tuple[float, float, int]:
    """Mean and 95% CI (points) of dice_mean(a) - dice_mean(b) over the seeds both ran."""
    from metaseg.metrics import paired_ci95

    by_b = {r["seed"]: r["dice_mean"] for r in b}
    both = [r for r in a if r["seed"] in by_b]
    return paired_ci95([100 * r["dice_mean"] for r in both], [100 * by_b[r["seed"]] for r in both])


def image_paired(a: list[dict], b: list[dict]) -> tuple[float, float, int] | None:
    """Mean and 95% CI (points) over test images of (seed-averaged Dice(a) - Dice(b)) per image,
    over the seeds both ran; None unless every such row kept its per-image scores."""
    from metaseg.metrics import paired_ci95

    by_b = {r["seed"]: r for r in b}
    pairs = [(r, by_b[r["seed"]]) for r in a if r["seed"] in by_b]
    if not pairs or any("dice_per_image" not in x or "dice_per_image" not in y for x, y in pairs):
        return None
    seed_mean = lambda side: np.mean([p[side]["dice_per_image"] for p in pairs], axis=0) * 100  # noqa: E731
    return paired_ci95(seed_mean(0), seed_mean(1))


def n_for_dice(ns: list[int], dice: list[float], target: float) -> tuple[str, float]:
    """Real pairs a curve needs to reach `target` Dice: interpolated linearly in log n on the
    curve's running maximum. ("=", n), ("<=", smallest n) if its first point already reaches it,
    (">", largest n) if it never does."""
    order = np.argsort(ns)
    n_sorted = np.asarray(ns, dtype=float)[order]
    xs, env = np.log(n_sorted), np.maximum.accumulate(np.asarray(dice, dtype=float)[order])
    if target <= env[0]:
        return ("=" if target == env[0] else "<="), float(n_sorted[0])
    if target > env[-1]:
        return ">", float(n_sorted[-1])
    i = int(np.argmax(env >= target))
    if env[i] == target:
        return "=", float(n_sorted[i])
    t = (target - env[i - 1]) / (env[i] - env[i - 1])
    return "=", float(np.exp(xs[i - 1] + t * (xs[i] - xs[i - 1])))


def _needs(relation: str, n: float) -> str:
    return f"{n:.0f}" if relation == "=" else f"{relation} {n:.0f}"


def data_ratios(curves: dict[str, dict[int, float]]) -> list[dict]:
    """At every Dice level either method reached on the curve, the real pairs each needs and
    real_only's / genseg's ratio (a bound where one of them is outside its measured range)."""
    out = []
    ro, gs = curves["real_only"], curves["genseg"]
    for source, curve in (("real_only", ro), ("genseg", gs)):
        for n, d in sorted(curve.items()):
            need = {m: n_for_dice(list(c), list(c.values()), d) for m, c in (("real_only", ro), ("genseg", gs))}
            (rel_r, n_r), (rel_g, n_g) = need["real_only"], need["genseg"]
            if rel_r == "=" and rel_g == "=":
                ratio = f"{n_r / n_g:.2f}"
            elif rel_g in ("=", "<=") and rel_r == ">":
                ratio = f"> {n_r / n_g:.2f}"
            elif rel_r in ("=", "<=") and rel_g == ">":
                ratio = f"< {n_r / n_g:.2f}"
            elif rel_g == "<=" and rel_r == "=":
                ratio = f">= {n_r / n_g:.2f}"
            elif rel_r == "<=" and rel_g == "=":
                ratio = f"<= {n_r / n_g:.2f}"
            else:
                ratio = "n/a"
            out.append({"dice": round(100 * d, 2), "from": f"{source} at n_real {n}",
                        "n_real_only": _needs(rel_r, n_r), "n_genseg": _needs(rel_g, n_g), "ratio_real_only_to_genseg": ratio})
    return out


def shared_slope_ratio(curves: dict[str, dict[int, float]]) -> dict:
    """Least squares Dice = a_method + b * ln(n_real) with one slope b for both methods: genseg
    reaches any Dice with exp((a_genseg - a_real_only) / b) times fewer real pairs (None unless
    b > 0). Less sensitive to one noisy point than interpolating each curve."""
    xs, ys, gs = [], [], []
    for m in ("real_only", "genseg"):
        for n, d in curves[m].items():
            xs.append(np.log(n))
            ys.append(100 * d)
            gs.append(1.0 if m == "genseg" else 0.0)
    design = np.stack([np.ones(len(xs)), gs, xs], axis=1)
    (a, offset, slope), *_ = np.linalg.lstsq(design, np.asarray(ys), rcond=None)
    ratio = float(np.exp(offset / slope)) if slope > 0 else None
    return {"slope_points_per_ln_n": float(slope), "genseg_offset_points": float(offset), "ratio": ratio}


def _cell(values: list[float]) -> str:
    from metaseg.metrics import mean_ci95

    if not values:
        return "–"
    mu, ci = mean_ci95(values)
    return f"{mu:.1f} (1 seed, no CI)" if len(values) < 2 else f"{mu:.1f} ± {ci:.1f} ({len(values)})"


def _pm(t) -> str:
    if t is None or t[2] == 0:
        return "–"
    return f"{t[0]:+.1f} (1, no CI)" if t[2] < 2 else f"{t[0]:+.1f} ± {t[1]:.1f} ({t[2]})"


def report(args: argparse.Namespace) -> None:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(x) for x in args.rows] if args.rows else [p for p in DEFAULT_ROWS if p.is_file()]
    rows = read_rows(paths)
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["domain"], r["segmenter"], r["n_real"]), {}).setdefault(r["method"], []).append(r)
    protocol = {k: v for k, v in groups.items() if k[3] == N_REAL.get(k[0])}
    runs = {p.name: RUN_COMMANDS.get(p.name, "python -m benchmarks.genseg run --rows " + str(p)) for p in paths}
    command = ("python -m benchmarks.genseg report " + (" ".join(["--rows", *map(str, args.rows)]) + " " if args.rows else "")
               + f"--protocol {json.dumps(args.protocol)}")
    lines = ["# GenSeg benchmark (generated by `python -m benchmarks.genseg report`)", "", args.protocol, "",
             "Rows from (one thread, `OMP_NUM_THREADS=1 nice -n 10`):", ""] + [f"- `{f}`: `{c}`" for f, c in runs.items()] + [
             "", f"Report: `{command}`.", "",
             "## Protocol splits (n_real 40; CXR 9)", "",
             "Dice (x100): mean over seeds of each run's mean test Dice; ± = 95% t-interval over seeds "
             "(n seeds in brackets). `out` = the same models on CVC-ClinicDB (Kvasir-SEG) / Montgomery (Shenzhen).", "",
             "| dataset | domain | n_real | segmenter | " + " | ".join(METHODS) + " |", "|---|---|---|---|" + "---|" * len(METHODS)]
    for (ds, dom, seg, n), by in sorted(protocol.items()):
        lines.append(f"| {ds} | {dom} | {n} | {seg} | " + " | ".join(_cell([100 * r["dice_mean"] for r in by.get(m, [])]) for m in METHODS) + " |")
    paired = []
    lines += ["", "## Paired differences (Dice points)", "",
              "Seed-paired: mean ± 95% t-interval over seeds of the per-seed difference of mean test Dice (n seeds). "
              "Image-paired: mean ± 95% t-interval over the test images of the per-image difference (averaged over "
              "the seeds both ran; n images); only where the rows kept per-image scores (`dice_per_image`), which "
              "the protocol rows (run before that field existed) did not, so for them the seed-paired difference is "
              "what there is.", "",
              "| dataset | domain | n_real | segmenter | genseg − real_only (seeds) | genseg − separate (seeds) "
              "| genseg − real_only (images) | genseg − separate (images) |", "|---|---|---|---|---|---|---|---|"]
    for (ds, dom, seg, n), by in sorted(groups.items()):
        if "genseg" not in by:
            continue
        cells, cells_img = [], []
        for base in ("real_only", "separate"):
            sp = seed_paired(by["genseg"], by.get(base, []))
            ip = image_paired(by["genseg"], by[base]) if base in by else None
            cells.append(_pm(sp))
            cells_img.append(_pm(ip))
            if sp[2]:
                paired.append({"dataset": ds, "domain": dom, "n_real": n, "segmenter": seg, "minus": base,
                               "seed_paired": {"mean": sp[0], "ci95": sp[1], "n_seeds": sp[2]},
                               "image_paired": None if ip is None else {"mean": ip[0], "ci95": ip[1], "n_images": ip[2]}})
        if any(c != "–" for c in cells):
            lines.append(f"| {ds} | {dom} | {n} | {seg} | " + " | ".join(cells + cells_img) + " |")
    lines += ["", "## Targets (in-domain, protocol splits, genseg ≥ real_only + 10 and ≥ separate + 3 on ≥ 3 of 4 datasets)", ""]
    met: dict[str, int] = {}
    for (ds, dom, seg, n), by in sorted(protocol.items()):
        if dom != "in" or "genseg" not in by:
            continue
        for base, need in TARGETS.items():
            gap = seed_paired(by["genseg"], by.get(base, []))
            if gap[2]:
                ok = gap[0] >= need
                met[f"{seg} {base}"] = met.get(f"{seg} {base}", 0) + ok
                lines.append(f"- {seg} {ds}: genseg − {base} = {gap[0]:+.1f} ({gap[2]} seed{'s' if gap[2] > 1 else ''}; target +{need:.0f}): "
                             + ("met" if ok else f"missed by {need - gap[0]:.1f} points"))
    lines += [f"- {k}: target met on {v} dataset(s)" for k, v in sorted(met.items())]
    curve_data = _curve_section(rows, lines)
    if curve_data:
        _curve_figure(curve_data, out_dir)
    secs: dict[tuple, list[float]] = {}
    for r in rows:
        if r["domain"] == "in":
            secs.setdefault((r["segmenter"], r["method"], r["n_real"] == N_REAL.get(r["dataset"])), []).append(r["train_seconds"])
    wall = [{"segmenter": s, "method": m, "splits": "protocol" if p else "curve", "seconds_mean": float(np.mean(v)), "runs": len(v)}
            for (s, m, p), v in sorted(secs.items())]
    lines += ["", "## CPU wall time", "", "Training seconds per run (mean over runs; one thread, shared 2-core CPU, nice 10; "
              "the curve's runs have the same step budget, so their time does not grow with n_real):", "",
              "| segmenter | method | splits | seconds | runs |", "|---|---|---|---|---|"]
    lines += [f"| {w['segmenter']} | {w['method']} | {w['splits']} | {w['seconds_mean']:.0f} | {w['runs']} |" for w in wall]
    (out_dir / "genseg.md").write_text("\n".join(lines) + "\n")
    (out_dir / "genseg.json").write_text(json.dumps({
        "protocol": args.protocol, "command": command, "run_commands": runs,
        "config": {seg: {k: c.get(k) for k in ("size", "steps", "gan_steps", "batch_size", "lr", "hyper_every", "hypergradient")}
                   for seg, c in sorted({r["segmenter"]: r["config"] for r in rows}.items())},
        "rows": [{k: r[k] for k in JSON_FIELDS} for r in rows],
        "paired": paired, "curve_ratios": curve_data, "wall_seconds": wall}, indent=1) + "\n")
    print("\n".join(lines))
    _figure([r for r in rows if r["n_real"] == N_REAL.get(r["dataset"]) and r["segmenter"] == "unet"], out_dir)


def _curve_section(rows: list[dict], lines: list[str]) -> dict:
    """Dice vs n_real (U-Net, in-domain) for real_only and genseg, each point the mean over the
    seeds that every point of its dataset ran; the ratio tables and the figure's data."""
    runs: dict[str, dict[tuple, float]] = {}
    for r in rows:
        if r["domain"] == "in" and r["segmenter"] == "unet" and r["method"] in ("real_only", "genseg"):
            runs.setdefault(r["dataset"], {})[(r["method"], r["n_real"], r["seed"])] = r["dice_mean"]
    curve: dict[str, dict[str, dict[int, float]]] = {}
    seeds_of: dict[str, list[int]] = {}
    for ds, got in runs.items():
        points = {(m, n) for m, n, _ in got}
        seeds = sorted(set.intersection(*[{s for m, n, s in got if (m, n) == pt} for pt in points]))
        c = {m: {n: float(np.mean([got[(m, n, s)] for s in seeds])) for mm, n in points if mm == m} for m in ("real_only", "genseg")}
        if seeds and min(len(v) for v in c.values()) >= 2:
            curve[ds], seeds_of[ds] = c, seeds
    if not curve:
        return {}
    out = {}
    lines += ["", "## Data-efficiency curve (U-Net, in-domain, the same test images at every n_real)", "",
              "Each point: mean test Dice over the seeds that every point of the dataset ran (" +
              "; ".join(f"{ds}: seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}" for ds, v in sorted(seeds_of.items())) + ").", "",
              "| dataset | n_real | real_only | genseg |", "|---|---|---|---|"]
    for ds, c in sorted(curve.items()):
        for n in sorted(set(c["real_only"]) | set(c["genseg"])):
            f = lambda m: f"{100 * c[m][n]:.1f}" if n in c[m] else "–"  # noqa: E731
            lines.append(f"| {ds} | {n} | {f('real_only')} | {f('genseg')} |")
    lines += ["", "Real pairs each method needs for the same Dice (linear in log n_real on each curve's running "
              "maximum; `<=`/`>` where the level is below the first / above the last measured point). "
              "ratio = real_only's n / genseg's n (GenSeg's claim: 8–20).", "",
              "| dataset | Dice | level from | real_only needs | genseg needs | ratio |", "|---|---|---|---|---|---|"]
    for ds, c in sorted(curve.items()):
        out[ds] = {"seeds": seeds_of[ds], "curve": {m: {str(n): v for n, v in sorted(c[m].items())} for m in c}, "ratios": data_ratios(c),
                   "shared_slope": shared_slope_ratio(c)}
        lines += [f"| {ds} | {x['dice']:.1f} | {x['from']} | {x['n_real_only']} | {x['n_genseg']} | {x['ratio_real_only_to_genseg']} |"
                  for x in out[ds]["ratios"]]
    lines += ["", "Few seeds per point, and a seed moves a run's Dice by several points (the protocol rows' "
              "intervals above), so where a curve is flat or dips a difference of a fraction of a point decides "
              "a `>` bound. A steadier summary: one straight line per method in ln n_real with a shared "
              "slope (least squares); genseg's offset over real_only divided by the slope gives the ratio "
              "of real pairs for the same Dice, exp(offset / slope):", "",
              "| dataset | slope (points per e-fold of n_real) | genseg offset (points) | ratio real_only / genseg |",
              "|---|---|---|---|"]
    for ds in sorted(out):
        f = out[ds]["shared_slope"]
        ratio = "n/a (slope ≤ 0)" if f["ratio"] is None else f"{f['ratio']:.2f}"
        lines.append(f"| {ds} | {f['slope_points_per_ln_n']:.2f} | {f['genseg_offset_points']:+.2f} | {ratio} |")
    lines += ["", "Figure: `genseg_curve.png`."]
    return out


def _curve_figure(curve: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curve), figsize=(3.6 * len(curve), 3.0), squeeze=False)
    for ax, (ds, c) in zip(axes[0], sorted(curve.items())):
        for m, style in (("real_only", "o--"), ("genseg", "s-")):
            ns = sorted(int(n) for n in c["curve"][m])
            ax.plot(ns, [100 * c["curve"][m][str(n)] for n in ns], style, label=m)
        ax.set_xscale("log")
        ax.set_title(ds)
        ax.set_xlabel("real pairs (n_real)")
        ax.set_ylabel("test Dice (x100)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "genseg_curve.png", dpi=90)
    plt.close(fig)


def _figure(rows: list[dict], out_dir: Path) -> None:
    """Bars of in-domain Dice per dataset and method (the protocol rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ins = [r for r in rows if r["domain"] == "in"]
    datasets = sorted({r["dataset"] for r in ins})
    if not datasets:
        return
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.2
    for j, m in enumerate(METHODS):
        mu = [np.mean([r["dice_mean"] for r in ins if r["dataset"] == d and r["method"] == m] or [np.nan]) for d in datasets]
        ax.bar(np.arange(len(datasets)) + (j - 1.5) * width, mu, width, label=m)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("test Dice (in-domain)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(out_dir / "genseg_dice.png", dpi=90)
    plt.close(fig)

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    r.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    r.add_argument("--segmenter", default="unet", help="unet (default), segformer or litemedsam (the pretrained LiteMedSAM base)")
    r.add_argument("--lr", type=float, help="segmenter learning rate (default: 1e-3; litemedsam 3e-4)")
    r.add_argument("--size", type=int, default=64)
    r.add_argument("--steps", type=int, default=150)
    r.add_argument("--gan-steps", type=int, default=150)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--hyper-every", type=int, default=5)
    r.add_argument("--hypergradient", default="unrolled_fd")
    r.add_argument("--test-cap", type=int, default=100)
    r.add_argument("--n-real", nargs="+", default=["default"],
                   help="real pairs per run (train + validation): numbers, 'default' (the protocol's: 40, CXR 9) or 'all'")
    r.add_argument("--all-cap", type=int, default=400, help="'all' means min(pairs outside the test set, this)")
    r.add_argument("--gen-weight", type=float, default=1.0, help="lambda of L_seg on generated pairs")
    r.add_argument("--gen-width", type=int, default=16, help="Pix2Pix generator width (64 in the paper)")
    r.add_argument("--disc-width", type=int, default=16, help="PatchGAN width (64 in the paper)")
    r.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    r.add_argument("--rows", default=str(ROWS), help="the JSONL file rows are appended to (and resumed from)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--data", default=str(DATA))
    q = sub.add_parser("report")
    q.add_argument("--protocol", default="")
    q.add_argument("--rows", nargs="+", help="JSONL row files (default: those of DEFAULT_ROWS that exist: results/genseg_rows.jsonl, "
                   "genseg_curve_rows.jsonl, genseg_curve_seed1_rows.jsonl, genseg_segformer_rows.jsonl, "
                   "genseg_litemedsam_rows.jsonl)")
    q.add_argument("--out", default=str(RESULTS), help="folder for genseg.{json,md} and the figures")
    args = p.parse_args()
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
