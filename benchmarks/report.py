"""Table, plots and README "Results" section of the few-shot benchmark, from its JSON alone.

    python -m benchmarks.report                                   # regenerate from benchmarks/results/fewshot.json
    python -m benchmarks.report --results benchmarks/results/fewshot_gpu.json --docs docs/results_gpu.md

Writes `<stem>.md` (the full table with the protocol), `<stem>_<target>.png` (Dice versus K per
target) beside the JSON, the full Results page (`docs/results.md` by default) and the README's
headline table (between its `generated:results.md` markers). Comparisons
between two methods are paired: every method saw the same episodes, so the 95% CI is a
t-interval over per-episode Dice differences.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from metaseg.metrics import mean_ci95, paired_ci95

TARGET_GAIN_OVER_SCRATCH = 0.15  # issue 5: iMAML 5-shot Dice >= scratch + 15 points, and > transfer
TARGET_DATASETS = ("Kvasir-SEG", "CVC-ClinicDB")
POLYP_DATASETS = {"Kvasir-SEG", "CVC-ClinicDB"}


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def rows_by(doc: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["method"], r["target"], int(r["shots"])): r for r in doc["rows"]}


def ordered(values: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, int]:
    """Mean and 95% CI of per-episode Dice(a) - Dice(b) over the episodes both were scored on."""
    x, y = a.get("episode_dice") or [], b.get("episode_dice") or []
    n = min(len(x), len(y))
    return paired_ci95(x[:n], y[:n])


def pm(mean: float, ci: float, scale: float = 100.0) -> str:
    return "n/a" if mean is None or math.isnan(mean) else f"{scale * mean:.1f} ± {scale * ci:.1f}"


# ----------------------------------------------------------------------------- pieces of text
def protocol_lines(doc: dict[str, Any]) -> list[str]:
    cfg, env = doc["config"], doc["environment"]
    ev, ad, exp = cfg["evaluation"], cfg["adaptation"], cfg["experiment"]
    trainer, module, data = (exp.get(s) or {} for s in ("trainer", "model", "data"))
    model = module.get("model") or {}
    shots = ", ".join(str(k) for k in ev["shots"])
    wall = "not recorded" if doc.get("wall_seconds") is None else f"{doc['wall_seconds'] / 60:.1f} min"
    return [
        f"Leave-one-dataset-out over {len(cfg['datasets'])} real datasets "
        f"({', '.join(d.get('name') or d['root'] for d in cfg['datasets'])}): for each held-out target, "
        "meta-training uses the other datasets only; the leakage check (content hashes) found no image shared "
        "between meta-train, meta-val and the target.",
        f"Meta-validation (checkpoint selection): a {int(100 * float(data.get('val_split', 0)))}% content-hash "
        f"split of every source dataset with >= {data.get('val_split_min_images', 0)} images, never the target "
        "(`data.val_split` of the experiment).",
        f"Evaluation: K in {{{shots}}}, {ev['episodes']} fixed episodes per K (seed {cfg['seed']}, the same episodes "
        f"for every method), up to {ev.get('queries', 15)} query images per episode, queries disjoint from supports; "
        "Dice/IoU per query image at probability 0.5; ± is the 95% t-interval over the per-image scores pooled across episodes.",
        f"Shared by every U-Net method: {model.get('kind', 'unet')} "
        f"(encoder {model.get('encoder_name')}, depth {model.get('encoder_depth')}, decoder {model.get('decoder_channels')}, "
        f"GroupNorm), {cfg['image_size']} px inputs, test-time adaptation = {ad['steps']} "
        f"{ad.get('inner_optimizer', 'sgd').upper()} steps at lr {ad.get('inner_lr')} on the K support images "
        "(no test-time augmentation) unless the method's line below says otherwise.",
        f"Meta-training (all but scratch and prior; `metaseg meta-train` with the experiment fragment of the "
        f"configuration): {trainer['max_steps']} outer steps, meta-batch {data.get('meta_batch_size')}, "
        f"{data.get('shots')}-shot/{data.get('queries')}-query source episodes, support augmentation "
        f"{'on' if data.get('augment', True) else 'off'}, Adam outer lr {module.get('outer_lr')} (cosine), "
        f"meta-val every {trainer.get('val_check_interval')} steps on {data.get('val_episodes')} episodes; inner loop during "
        "meta-training as each method's options say (table below).",
        "scratch = random initialisation fine-tuned on the K shots; transfer = joint supervised training on the "
        "source episodes' images, then fine-tuned on the K shots; prior (`support_prior`) = no network: every query "
        "mask is the mean of the K support masks, cut to their mean foreground area: the location prior a method must beat.",
        f"Hardware: {env.get('gpu') or env.get('cpu')} ({env.get('cpu_count')} cores, torch {env.get('torch')}, "
        f"{env.get('torch_threads')} thread(s) per process, {doc.get('jobs', 1)} worker process(es)), device "
        f"`{env['device']}`; total wall time {wall} ({doc.get('wall_seconds_note', '')}).",
    ]


def method_lines(doc: dict[str, Any]) -> list[str]:
    """Each method's fragment as configured: learner, and whatever it overrides (network, meta-training, adaptation)."""
    out = []
    measured = {r["method"] for r in doc["rows"]}
    for method, mcfg in doc["config"]["methods"].items():
        if method not in measured:
            continue
        mcfg = mcfg or {}
        module = dict(mcfg.get("model") or {})
        learner = module.pop("learner", None) or {"name": "transfer (adaptation only)"}
        network = module.pop("model", None)
        extra = f"; model {network}" if network else ""
        overrides = {**{f"model.{k}": v for k, v in module.items()},
                     **{f"{s}.{k}": v for s in ("trainer", "data") for k, v in (mcfg.get(s) or {}).items()}}
        extra += f"; meta-training overrides {overrides}" if overrides else ""
        extra += f"; test-time adaptation {mcfg['adaptation']}" if mcfg.get("adaptation") else ""
        note = f" — {mcfg['note']}" if mcfg.get("note") else ""
        out.append(f"`{method}`: learner {learner}{extra}{note}")
    return out


def fold_lines(doc: dict[str, Any]) -> list[str]:
    folds: dict[str, dict[str, Any]] = {}
    for run in doc.get("runs", []):
        folds.setdefault(run["target"], run)
    out = []
    for target, run in folds.items():
        polyp = ""
        if target in POLYP_DATASETS:
            other = sorted(POLYP_DATASETS - {target})
            polyp = (f" Note: {other[0]} is also a colonoscopy polyp dataset and IS a source here: this is "
                     "leave-one-DATASET-out, not leave-one-modality-out.")
        out.append(f"{target} held out: meta-train on {', '.join(run['meta_train_tasks'])}; "
                   f"meta-val on {', '.join(run['meta_val_tasks'])}.{polyp}")
    return out


def table(doc: dict[str, Any], target: str) -> list[str]:
    by = rows_by(doc)
    shots = sorted({int(r["shots"]) for r in doc["rows"] if r["target"] == target})
    methods = ordered([r["method"] for r in doc["rows"] if r["target"] == target])
    runs = {(r["method"], r["target"]): r for r in doc.get("runs", [])}
    head = ["method"] + [f"Dice K={k}" for k in shots] + [f"IoU K={k}" for k in shots] + ["meta-val Dice", "train / eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [m]
        cells += [pm(by[(m, target, k)]["dice_mean"], by[(m, target, k)]["dice_ci95"]) if (m, target, k) in by else "–" for k in shots]
        cells += [pm(by[(m, target, k)]["iou_mean"], by[(m, target, k)]["iou_ci95"]) if (m, target, k) in by else "–" for k in shots]
        run = runs.get((m, target), {})
        val = run.get("meta_val_dice")
        cells.append("–" if val is None else f"{100 * val:.1f}")
        cells.append(f"{run.get('train_seconds', 0):.0f} / {run.get('eval_seconds', 0):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


PAIRS = (("imaml", "maml"), ("imaml", "scratch"), ("imaml", "transfer"), ("imaml", "prior"), ("maml", "fomaml"),
         # issue 16: meta-learning on the pretrained base against fine-tuning the same base, and the U-Net
         ("medsam_lite_fomaml", "medsam_lite_finetune"), ("medsam_lite_imaml", "medsam_lite_finetune"),
         ("medsam_lite_fomaml_refine", "medsam_lite_finetune_refine"), ("medsam_lite_imaml_refine", "medsam_lite_finetune_refine"),
         ("medsam_lite_fomaml", "transfer"), ("medsam_lite_imaml", "transfer"),
         # issue 12: in-context learners (no gradient step) against the gradient-based methods on the same base
         ("incontext_sam", "medsam_lite_finetune"), ("incontext_sam", "medsam_lite_fomaml"), ("incontext_sam", "incontext_unet"),
         ("incontext_sam_ens", "incontext_sam"), ("incontext_unet", "transfer"), ("incontext_unet", "prior"))


def comparison_lines(doc: dict[str, Any], shots: int = 5) -> list[str]:
    """Paired per-episode Dice differences for the comparisons issue 5 asks about."""
    by = rows_by(doc)
    targets = ordered([r["target"] for r in doc["rows"]])
    lines = ["| target | K | comparison | Dice difference (points, paired 95% CI) | episodes |", "|---|---:|---|---|---:|"]
    for target in targets:
        for k in sorted({int(r["shots"]) for r in doc["rows"] if r["target"] == target}):
            for a, b in PAIRS:
                if (a, target, k) in by and (b, target, k) in by:
                    mean, ci, n = paired_difference(by[(a, target, k)], by[(b, target, k)])
                    lines.append(f"| {target} | {k} | {a} − {b} | {pm(mean, ci)} | {n} |")
    return lines


def target_status(doc: dict[str, Any], shots: int = 5) -> list[str]:
    """Issue 5's success criterion, checked on the numbers (met / missed / not measured)."""
    by = rows_by(doc)
    out = []
    for target in TARGET_DATASETS:
        keys = [(m, target, shots) for m in ("imaml", "scratch", "transfer")]
        if not all(k in by for k in keys):
            out.append(f"{target}: not measured (missing {[k[0] for k in keys if k not in by]})")
            continue
        im, sc, tr = (by[k]["dice_mean"] for k in keys)
        gain_ok, transfer_ok = im >= sc + TARGET_GAIN_OVER_SCRATCH, im > tr
        verdict = "MET" if gain_ok and transfer_ok else "MISSED"
        out.append(f"{target}: {verdict} — iMAML {shots}-shot Dice {100 * im:.1f} vs scratch {100 * sc:.1f} "
                   f"(gain {100 * (im - sc):+.1f} points, needs ≥ +{100 * TARGET_GAIN_OVER_SCRATCH:.0f}: "
                   f"{'yes' if gain_ok else 'no'}) and vs transfer {100 * tr:.1f} "
                   f"({'above' if transfer_ok else 'not above'})"
                   + (f"; the support-mask prior scores {100 * by[('prior', target, shots)]['dice_mean']:.1f}"
                      if ("prior", target, shots) in by else ""))
    return out


# ----------------------------------------------------------------------------- outputs
def plot_target(doc: dict[str, Any], target: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r["target"] == target]
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=110)
    for method in ordered([r["method"] for r in rows]):
        pts = sorted((int(r["shots"]), r["dice_mean"], r["dice_ci95"]) for r in rows if r["method"] == method)
        ks, means, cis = zip(*pts)
        ax.errorbar(ks, [100 * m for m in means], yerr=[100 * c for c in cis], marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ks = sorted({int(r["shots"]) for r in rows})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("K (support images)")
    ax.set_ylabel("query Dice (%)")
    cfg = doc["config"]
    ax.set_title(f"{target} held out ({cfg['image_size']} px, {doc['environment']['device']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def results_markdown(doc: dict[str, Any], plots: dict[str, str], heading: str = "#",
                     results_name: str = "benchmarks/results/fewshot.json") -> str:
    """The full results text; `plots` maps target -> image link relative to where the text lives."""
    h2 = heading + "#"
    command = doc.get("command") or "python -m benchmarks.fewshot --config benchmarks/fewshot.yaml"
    make = " (= `make benchmark`)" if command.endswith("--config benchmarks/fewshot.yaml") else ""
    lines = [f"{heading} Few-shot segmentation benchmark (held-out datasets)", ""]
    lines += [f"Command: `{command}`{make}. Every number below is read from `{results_name}`; "
              f"`python -m benchmarks.report --results {results_name}` regenerates this text and the plots.", ""]
    lines += [f"- {line}" for line in protocol_lines(doc)]
    lines += ["", f"{h2} Target check (issue 5)", ""] + [f"- {line}" for line in target_status(doc)]
    lines += ["", "Dice and IoU in points (%), mean ± 95% CI."]
    for target in ordered([r["target"] for r in doc["rows"]]):
        lines += ["", f"{h2} {target} held out", ""] + table(doc, target)
        if target in plots:
            lines += ["", f"![Dice versus K, {target} held out]({plots[target]})"]
    lines += ["", f"{h2} Paired comparisons (same episodes)", ""] + comparison_lines(doc)
    lines += ["", f"{h2} Methods", ""] + [f"- {line}" for line in method_lines(doc)]
    lines += ["", f"{h2} Folds", ""] + [f"- {line}" for line in fold_lines(doc)]
    notes = doc["config"].get("notes") or []
    if notes:
        lines += ["", f"{h2} Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def headline_markdown(doc: dict[str, Any], full_link: str, shots: int = 5) -> str:
    """The README's short Results section: issue 5's target check and one K-shot Dice table
    (methods x held-out targets); the full tables, protocol and notes are at `full_link`."""
    by = rows_by(doc)
    targets = ordered([r["target"] for r in doc["rows"]])
    methods = ordered([r["method"] for r in doc["rows"]])
    ev = doc["config"]["evaluation"]
    lines = ["## Results", "",
             f"Held-out {shots}-shot query Dice in points (mean ± 95% CI, {ev['episodes']} episodes, "
             f"{doc['config']['image_size']} px, device `{doc['environment']['device']}`), read from "
             f"`{doc.get('results_name', 'benchmarks/results/fewshot.json')}`; protocol, K=1/10, IoU, paired "
             f"comparisons and notes: [{full_link}]({full_link}).", ""]
    lines += ["| method | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(pm(by[(m, t, shots)]["dice_mean"], by[(m, t, shots)]["dice_ci95"])
                                             if (m, t, shots) in by else "–" for t in targets) + " |")
    lines += ["", "Target check (issue 5):", ""] + [f"- {line}" for line in target_status(doc, shots)]
    return "\n".join(lines) + "\n"


def write_report(doc: dict[str, Any], results_path: str | Path, docs_path: str | Path | None = None,
                 link_base: str | Path = ".") -> list[Path]:
    """`<stem>.md` and `<stem>_<target>.png` beside the JSON, plus the full Results page at `docs_path`
    (image links relative to that page) and, between its markers in `link_base`/README.md (the
    repository root), a headline table that links to that page."""
    results_path = Path(results_path)
    out_dir, stem = results_path.parent, results_path.stem
    written, plot_names = [], {}
    for target in ordered([r["target"] for r in doc["rows"]]):
        png = out_dir / f"{stem}_{slug(target)}.png"
        written.append(plot_target(doc, target, png))
        plot_names[target] = png.name
    md = out_dir / f"{stem}.md"
    name = _relative(results_path, Path(link_base))
    md.write_text(results_markdown(doc, plot_names, results_name=name))
    written.append(md)
    if docs_path:
        docs_path = Path(docs_path)
        docs_path.parent.mkdir(parents=True, exist_ok=True)
        rel = {t: _relative(out_dir / name, docs_path.parent) for t, name in plot_names.items()}
        text = results_markdown(doc, rel, heading="#", results_name=name).replace(
            "# Few-shot segmentation benchmark (held-out datasets)", "# Results", 1)
        docs_path.write_text(text)
        written.append(docs_path)
        readme = Path(link_base) / "README.md"
        headline = headline_markdown({**doc, "results_name": name}, _relative(docs_path, Path(link_base)))
        if splice_into_readme(readme, docs_path.name, headline):
            written.append(readme)
    return written


def splice_into_readme(readme: Path, key: str, text: str) -> bool:
    """Replace the README's block between `<!-- BEGIN generated:KEY -->` and `<!-- END generated:KEY -->`
    with `text`, so the README's Results section is always the one generated from the JSON.
    Returns False (and leaves the README alone) when it has no such block."""
    begin, end = f"<!-- BEGIN generated:{key} -->", f"<!-- END generated:{key} -->"
    if not readme.is_file():
        return False
    current = readme.read_text()
    if begin not in current or end not in current:
        return False
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")
    return True


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve()).replace(os.sep, "/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="benchmarks/results/fewshot.json")
    parser.add_argument("--docs", default=None, help="README section to write (default: the config's `docs`)")
    args = parser.parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        print(f"report: error: --results {path} does not exist (run `make benchmark` first)", file=sys.stderr)
        return 2
    doc = json.loads(path.read_text())
    for written in write_report(doc, path, args.docs or doc["config"].get("docs")):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
