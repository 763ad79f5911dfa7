"""One-off: fill the pairwise-r / empty-mask columns of the CXR diffusion rows from their saved samples
(/tmp/synth-bench), with the same code the benchmark uses (diversity on load_task samples, the real split)."""
import json, sys
from pathlib import Path
from metaseg.data.cache import load_task
from metaseg.data.tasks import resolve_data_root
from metaseg.generative.audit import diversity
from metaseg.generative.data import load_dataset, split_by_hash
from benchmarks.synthetic import reader_options


def main() -> None:
    rows_path = Path("benchmarks/results/synthetic_rows.jsonl")
    rows = [json.loads(l) for l in rows_path.read_text().splitlines() if l.strip()]
    name = "CXR-Lungs-Shenzhen-Montgomery"
    root = resolve_data_root(required=True) / name
    task = load_dataset(root, 64, reader_options=reader_options(name, []))
    for n in (100, 500):
        run = Path(f"/tmp/synth-bench/{name}/diffusion_n{n}_s0")
        audit = json.loads((run / "audit/audit.json").read_text())
        targets = [r for r in rows if r["dataset"] == name and r["generator"] == "diffusion" and r["n_generator_train"] == n and r["seed"] == 0]
        for r in targets:  # these samples are the rows' samples only if the audit figures agree
            assert abs(r["max_corr_median"] - audit["synthetic_vs_train"]["max_corr_median"]) < 1e-3, (n, r["max_corr_median"])
        split = split_by_hash(task.hashes, 0.2, n, 0)
        synth = load_task(run / "samples", size=64)
        assert len(synth) == n, len(synth)
        spread = {f"synthetic_{k}": round(v, 4) for k, v in diversity(synth.images, synth.masks).items()}
        spread.update({f"real_{k}": round(v, 4) for k, v in diversity(task.images[split.train], task.masks[split.train]).items()})
        print(n, spread, len(targets))
        for r in targets:
            r.update(spread)
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":  # a one-off that rewrites the rows file: never on import
    main()
