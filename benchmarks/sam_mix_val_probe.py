"""SAM-Mix validation probe (BUSI, validation masks only, never test): refine 0 vs 1 and CAM threshold 0.7 vs the
train-box choice, for sam_mix / the CAM-box ablation / the whole-box base.

    nice -n 10 python -m benchmarks.sam_mix_val_probe 50 1 2      # N, then training seeds
"""
import sys, time
import numpy as np, torch
import metaseg.training.sam_mix as tr
from metaseg.models.sam_mix import create_sam_mix
from metaseg.metrics import dice_iou_per_image
from benchmarks.sam_mix_data import split, CAPS, labelled_subset


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    n = int(argv[0])
    data = split("BUSI", size=128, seed=0, caps=CAPS)
    vm = data.masks["val"]; has = vm.reshape(len(vm), -1).any(1)
    for seed in map(int, argv[1:]):
        rows = labelled_subset(data.present["pool"], n, seed)
        for method, prompts in (("sam_mix", "box+dense"), ("ablation", "box"), ("whole", "whole")):
            t = time.time()
            model = create_sam_mix(prompts=prompts, image_size=128, seed=seed)
            budget = tr.SamMixBudget(steps=80, warmup=150, multitask=method == "sam_mix", classifier=method != "whole")
            tr.fit_sam_mix(model, data.images["pool"] if method != "whole" else None, data.present["pool"] if method != "whole" else None,
                           data.images["pool"][rows], data.masks["pool"][rows], budget, seed=seed,
                           val_images=data.images["val"], val_present=data.present["val"])
            line = []
            thresholds = (model.cam_threshold,) if method == "whole" or model.cam_threshold >= 0.7 else (model.cam_threshold, 0.7)
            for thr in thresholds:
                model.cam_threshold = thr
                for refine in (0, 1):
                    model.refine = refine
                    out = tr.predict_sam_mix(model, data.images["val"])
                    d, _ = dice_iou_per_image(torch.from_numpy(out["raw"]).float(), torch.from_numpy(vm).float()[:, None])
                    line.append(f"thr {thr} refine {refine}: {100 * d[has].mean():.1f}")
            print(f"N={n} seed {seed} {method} ({time.time()-t:.0f}s): " + " | ".join(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
