"""Paired comparison of the in-context learners with the medsam benchmark's methods (issue 12):

    python -m benchmarks.incontext_compare      # -> benchmarks/results/incontext.md

Reads `benchmarks/results/fewshot_incontext.json` and `benchmarks/results/fewshot_medsam.json`:
both use the same datasets, seed and sampler, so episode i at K is the same episode in both; the
in-context run may have fewer episodes, and every comparison uses the episodes both have
(the first n). Means and 95% CIs are over episodes (each the mean of its queries); differences
are paired episode by episode. Also the support-size curve, with `--before` an earlier in-context
run's rows paired against the same methods' rows now (what a change did, episode by episode), and,
when `benchmarks/results/incontext_speed.json` exists, seconds per adapted image.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from metaseg.metrics import mean_ci95, paired_ci95

IN_CONTEXT = ("incontext_sam_transfer", "incontext_sam_transfer_ens", "incontext_sam_transfer_box", "incontext_sam_transfer_box_mask", "incontext_sam", "incontext_sam_ens", "incontext_unet", "incontext_unet_ens")
# GMISeg-style rows checked against the targets; the transfer's _ens / _box / _box_mask variants were not
# the meta-val choice (benchmarks/fewshot_incontext_sam_transfer.yaml), so they are shown, never counted
SAM_LEARNERS = ("incontext_sam_transfer", "incontext_sam")
GRADIENT_ON_BASE = ("medsam_lite_finetune", "medsam_lite_fomaml", "medsam_lite_imaml",
                    "medsam_lite_finetune_refine", "medsam_lite_fomaml_refine", "medsam_lite_imaml_refine")
TABLE = ("medsam_lite_zeroshot", "medsam_lite_finetune", "medsam_lite_fomaml", "medsam_lite_fomaml_refine",
         "medsam_lite_imaml", "transfer", "prior")
PAIRS = (("incontext_sam", "medsam_lite_finetune"), ("incontext_sam", "medsam_lite_fomaml"),
         ("incontext_sam", "incontext_unet"), ("incontext_sam_ens", "incontext_sam"),
         ("incontext_unet_ens", "incontext_unet"), ("incontext_unet", "transfer"), ("incontext_unet", "prior"),
         ("incontext_sam", "prior"), ("incontext_sam_transfer", "incontext_sam"),
         ("incontext_sam_transfer", "medsam_lite_fomaml_refine"), ("incontext_sam_transfer", "medsam_lite_finetune_refine"),
         ("incontext_sam_transfer_ens", "incontext_sam_transfer"), ("incontext_sam_transfer_box", "incontext_sam_transfer"), ("incontext_sam_transfer_box", "medsam_lite_fomaml_refine"))


def episodes_by(doc: dict[str, Any]) -> dict[tuple[str, str, int], list[float]]:
    return {(r["method"], r["target"], int(r["shots"])): list(r["episode_dice"]) for r in doc["rows"]}


def cell(values: list[float]) -> str:
    mean, ci = mean_ci95(values)
    return f"{100 * mean:.1f} ± {100 * ci:.1f}"


def paired(a: list[float], b: list[float]) -> tuple[float, float, int]:
    n = min(len(a), len(b))
    mean, ci, n = paired_ci95(a[:n], b[:n])
    return 100 * mean, 100 * ci, n


def report(incontext: dict[str, Any], medsam: dict[str, Any], speed: dict[str, Any] | None,
           before: dict[str, Any] | None = None) -> str:
    ours, theirs = episodes_by(incontext), episodes_by(medsam)
    both = {**theirs, **ours}
    # every target of either run, so that a target without in-context rows shows as such
    targets = list(dict.fromkeys(r["target"] for r in (*incontext["rows"], *medsam["rows"])))
    n = min(len(v) for v in ours.values())  # every row is read over the same first n episodes
    lines = ["# In-context learners on the medsam benchmark's episodes (generated)", "",
             f"From `{incontext.get('command')}` and `{medsam.get('command')}`; regenerate with "
             "`python -m benchmarks.incontext_compare`. Dice in points, mean ± 95% CI over the "
             f"first {n} episodes per K (15 queries each), the same episodes for every row.", ""]
    for k in (1, 5, 10):
        lines += [f"## K = {k}", "", "| method | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
        for method in (*IN_CONTEXT, *TABLE):
            if any((method, t, k) in both for t in targets):
                lines.append(f"| {method} | " + " | ".join(cell(both[(method, t, k)][:n]) if (method, t, k) in both else "–"
                                                          for t in targets) + " |")
        lines.append("")
    lines += ["## Paired differences (points, 95% CI)", "", "| target | K | comparison | difference | episodes |",
              "|---|---:|---|---|---:|"]
    for t in targets:
        for k in (1, 5, 10):
            for a, b in PAIRS:
                if (a, t, k) in both and (b, t, k) in both:
                    d, ci, m = paired(both[(a, t, k)], both[(b, t, k)])
                    lines.append(f"| {t} | {k} | {a} − {b} | {d:+.1f} ± {ci:.1f} | {m} |")
    lines += ["", "## Issue 12's targets at K = 5", ""]
    lines += target_lines(both, targets)
    shots = sorted({int(r["shots"]) for r in incontext["rows"]})
    lines += ["", "## Support-size curve (Dice, points)", "", "| method | target | " + " | ".join(f"K={k}" for k in shots) + " |",
              "|---|---|" + "---:|" * len(shots)]
    for method in IN_CONTEXT:
        for t in targets:
            if (method, t, shots[0]) in ours:
                lines.append(f"| {method} | {t} | " + " | ".join(cell(ours[(method, t, k)]) if (method, t, k) in ours else "–"
                                                                for k in shots) + " |")
    if before:
        lines += before_lines(ours, episodes_by(before), targets, shots, before.get("command"))
    if speed:
        lines += ["", f"## Seconds per adapted image (CPU, one thread; `{speed['command']}`)", "",
                  "| method | adaptation steps | s / image | weights timed |", "|---|---:|---:|---|"]
        for r in speed["rows"]:
            lines.append(f"| {r['method']} | {r['adaptation_steps']} | {r['seconds_per_image']:.3f} | {r['weights']} |")
    return "\n".join(lines) + "\n"


def before_lines(ours: dict[tuple[str, str, int], list[float]], earlier: dict[tuple[str, str, int], list[float]],
                 targets: list[str], shots: list[int], command: str | None) -> list[str]:
    """Each in-context row now minus the same method's row in the earlier run, paired by episode."""
    lines = ["", f"## Now − before (`{command}`), paired by episode (points, 95% CI)", "",
             "| method | target | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|---|" + "---:|" * len(shots)]
    for method in IN_CONTEXT:
        for t in targets:
            if any((method, t, k) in ours and (method, t, k) in earlier for k in shots):
                cells = []
                for k in shots:
                    if (method, t, k) in ours and (method, t, k) in earlier:
                        d, ci, _ = paired(ours[(method, t, k)], earlier[(method, t, k)])
                        cells.append(f"{d:+.1f} ± {ci:.1f}")
                    else:
                        cells.append("–")
                lines.append(f"| {method} | {t} | " + " | ".join(cells) + " |")
    return lines


def target_lines(both: dict[tuple[str, str, int], list[float]], targets: list[str]) -> list[str]:
    """At least the best gradient-based method on the same base at K = 5 (2 of 3 targets; either
    in-context learner counts, no gradient step), and sam ≥ unet + 10; a target with no in-context
    row is said to be unmeasured, never counted as met."""
    out, wins = [], 0
    for t in targets:
        rivals = [m for m in GRADIENT_ON_BASE if (m, t, 5) in both]
        learners = [m for m in (*SAM_LEARNERS, "incontext_unet") if (m, t, 5) in both]
        if not rivals or not learners:
            out.append(f"- {t}: not measured (in-context rows: {learners or 'none'})")
            continue
        met = False
        for learner in learners:
            n = len(both[(learner, t, 5)])
            best = max(rivals, key=lambda m: sum(both[(m, t, 5)][:n]))
            d, ci, m = paired(both[(learner, t, 5)], both[(best, t, 5)])
            met |= d >= 0
            verdict = "met" if d >= 0 else f"missed by {-d:.1f} points"
            out.append(f"- {t}: {learner} − best gradient-based on the same base ({best}) = {d:+.1f} ± {ci:.1f}, "
                       f"{m} episodes ({verdict})")
        if not any(m in learners for m in SAM_LEARNERS):
            out.append("  incontext_sam: not measured on this target")
        wins += met
        for sam in SAM_LEARNERS:
            if (sam, t, 5) in both and ("incontext_unet", t, 5) in both:
                d, ci, _ = paired(both[(sam, t, 5)], both[("incontext_unet", t, 5)])
                verdict = "met" if d >= 10 else f"missed by {10 - d:.1f} points"
                out.append(f"  {sam} − incontext_unet = {d:+.1f} ± {ci:.1f} (target ≥ +10: {verdict})")
    out.append(f"- at least the best gradient-based method on 2 of 3 targets: {'met' if wins >= 2 else 'missed'} ({wins} of {len(targets)})")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incontext_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--incontext", nargs="+", default=["benchmarks/results/fewshot_incontext.json"],
                        help="in-context results JSON(s); their rows are pooled")
    parser.add_argument("--medsam", default="benchmarks/results/fewshot_medsam.json")
    parser.add_argument("--speed", default="benchmarks/results/incontext_speed.json")
    parser.add_argument("--before", default=None, help="an earlier in-context results JSON to pair the rows against")
    parser.add_argument("--out", default="benchmarks/results/incontext.md")
    args = parser.parse_args(argv)
    for path in (*args.incontext, args.medsam, *([args.before] if args.before else [])):
        if not Path(path).is_file():
            print(f"incontext_compare: error: no such file {path}", file=sys.stderr)
            return 2
    speed = json.loads(Path(args.speed).read_text()) if Path(args.speed).is_file() else None
    docs = [json.loads(Path(p).read_text()) for p in args.incontext]
    pooled = {"command": " and ".join(f"`{d.get('command')}`" for d in docs).strip("`"), "rows": [r for d in docs for r in d["rows"]]}
    before = json.loads(Path(args.before).read_text()) if args.before else None
    text = report(pooled, json.loads(Path(args.medsam).read_text()), speed, before)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
