"""Training SAM-Mix: the presence classifier on every image with an image-level label (focal loss),
the LoRA segmentation branch on the few images with masks (BCE + Dice), together (multitask).

Schedule: `warmup` classifier-only steps (so the first CAM prompts point somewhere), then `steps`
joint steps, loss = focal + seg_weight * (BCE + Dice). With `multitask=False` (the ablation) the
classifier trains alone for warmup + steps, is frozen, and only then the segmenter trains on its
(detached) CAM prompts. With `classifier=False` (prompts="whole" baseline) only the segmenter trains.
All embeddings come from the frozen encoder's cache, so a step costs the head and the decoder only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from metaseg.errors import MetasegError
from metaseg.losses import bce_dice_loss
from metaseg.models.cam import (balanced_rows, cam_mask_loss, choose_cam_threshold, choose_presence_threshold,
                                focal_loss)
from metaseg.models.sam_mix import SamMix


@dataclass
class SamMixBudget:
    steps: int = 200
    warmup: int = 100
    lr_classifier: float = 1e-3
    lr_segmenter: float = 1e-3
    batch_classifier: int = 32
    batch_segmenter: int = 4
    seg_weight: float = 1.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    multitask: bool = True
    classifier: bool = True
    balance: bool = True  # classifier batches class-balanced (else drawn uniformly: collapses to the majority)
    cam_mask_weight: float = 1.0  # CAM-vs-mask loss on the images with masks (0: labels alone shape the CAM)
    auto_cam_threshold: bool = False  # True: pick cam_threshold by CAM-box IoU with the TRAINING masks' boxes (the old
    # default: it picked 0.6 in 3 of 6 BUSI N=50 runs, each 7-9 Dice below the fixed 0.7 on validation; models.sam_mix)
    presence_min_recall: float | None = None  # None: presence threshold by balanced accuracy on the validation
    # labels; a value: the highest threshold keeping that share of the validation PRESENT images (models.cam)
    absent_labels: bool = True  # labels must include absent images; False: all "present" allowed (a dataset with no
    # empty image, e.g. Kvasir-SEG: the focal loss then only raises presence, the CAM learns from the masks; gate it off)


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1] (float tensors pass through)."""
    x = torch.as_tensor(images)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def embed_all(model: SamMix, images: np.ndarray | torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Frozen-encoder embeddings of every image (float16, through the cache)."""
    x = to_float(images)
    return torch.cat([model.embed(x[i:i + batch]).half() for i in range(0, len(x), batch)])


def _segmenter_params(model: SamMix) -> list[torch.nn.Parameter]:
    return [p for p in model.base.parameters() if p.requires_grad]


def check_training_data(present: np.ndarray | None, masks: np.ndarray, classifier: bool, absent_labels: bool = True) -> None:
    """One-line errors for what SAM-Mix cannot train from (`absent_labels`: both label values required)."""
    if len(masks) < 1:
        raise MetasegError("sam_mix: no image with a mask to train the segmentation branch (--shots >= 1)")
    if classifier:
        if present is None or len(present) == 0:
            raise MetasegError("sam_mix: no image-level labels (give --labels a CSV of id,label, or a dataset with class folders)")
        values = set(np.unique(present).tolist())
        if not values <= {0, 1} or (absent_labels and len(values) < 2):
            raise MetasegError(f"sam_mix: image-level labels must include both present (1) and absent (0) images, got {sorted(values)}")


def fit_sam_mix(
    model: SamMix,
    label_images: np.ndarray | torch.Tensor | None,
    present: np.ndarray | None,
    mask_images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    budget: SamMixBudget | None = None,
    seed: int = 0,
    log: Callable[[dict[str, Any]], None] | None = None,
    val_images: np.ndarray | torch.Tensor | None = None,
    val_present: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place; returns one record per step (losses). See the module docstring.

    Thresholds: with `budget.auto_cam_threshold` the CAM threshold is the one whose boxes best fit
    the TRAINING masks' boxes (chosen when the segmenter starts, and again at the end); with
    `val_images`/`val_present` (image-level labels of a validation split, never test) the presence
    threshold is the one with the best balanced accuracy there. Both land on the model, and what
    was chosen in `model.fit_info`."""
    budget = budget or SamMixBudget()
    masks = torch.as_tensor(np.asarray(masks)).float().reshape(len(masks), 1, *np.asarray(masks).shape[-2:])
    check_training_data(None if present is None else np.asarray(present), masks, budget.classifier, budget.absent_labels)
    if budget.presence_min_recall is not None:  # a bad value fails before any training, not after it
        choose_presence_threshold(np.array([0.0, 1.0]), np.array([0, 1]), budget.presence_min_recall)
    if budget.classifier and budget.cam_mask_weight > 0 and model.head.pooling != "lse":
        raise MetasegError("sam_mix: cam_mask_weight > 0 needs pooling='lse' (a mean-pooled CAM cannot match a mask "
                           "without lowering the presence logit); set cam_mask_weight=0")
    gen = torch.Generator().manual_seed(seed)
    seg_emb = embed_all(model, mask_images)
    cls_emb = embed_all(model, label_images) if budget.classifier else None
    labels = torch.as_tensor(np.asarray(present)).float() if budget.classifier else None
    head_opt = torch.optim.Adam(model.head.parameters(), lr=budget.lr_classifier, weight_decay=1e-4)
    seg_opt = torch.optim.Adam(_segmenter_params(model), lr=budget.lr_segmenter)
    total = (budget.warmup if budget.classifier else 0) + budget.steps
    cls_only = budget.warmup if budget.multitask else budget.warmup + budget.steps
    if not budget.multitask and budget.classifier:
        total = cls_only + budget.steps
    history = []
    info: dict[str, float] = {}
    model.train()
    for step in range(total):
        if budget.classifier and budget.auto_cam_threshold and step == cls_only:
            info["cam_threshold_start"], info["cam_box_iou_start"] = _pick_cam_threshold(model, seg_emb, masks)
        record: dict[str, float] = {"step": float(step)}
        loss = torch.zeros(())
        train_cls = budget.classifier and (step < cls_only or budget.multitask)
        train_seg = step >= cls_only or not budget.classifier
        if train_cls:
            k = min(budget.batch_classifier, len(cls_emb))
            rows = balanced_rows(labels, k, gen) if budget.balance else torch.randint(len(cls_emb), (k,), generator=gen)
            logits, _ = model.classify(cls_emb[rows].float())
            cls_loss = focal_loss(logits, labels[rows], budget.focal_gamma, budget.focal_alpha)
            loss = loss + cls_loss
            record["focal"] = float(cls_loss.detach())
            if budget.cam_mask_weight > 0:  # the few masks say where the evidence should be
                rows = torch.randperm(len(seg_emb), generator=gen)[: budget.batch_segmenter]
                _, raw_cam = model.head(seg_emb[rows].float())
                loc_loss = cam_mask_loss(raw_cam, masks[rows, 0])
                loss = loss + budget.cam_mask_weight * loc_loss
                record["cam_mask"] = float(loc_loss.detach())
        if train_seg:
            rows = torch.randperm(len(seg_emb), generator=gen)[: budget.batch_segmenter]
            emb = seg_emb[rows].float()
            if budget.classifier:
                _, cam = model.classify(emb)
                if not budget.multitask:
                    cam = cam.detach()  # the frozen classifier's map: no segmentation gradient into it
            else:
                cam = torch.zeros(len(rows), *emb.shape[-2:])
            pred, _ = model.segment(emb, cam)
            seg_loss = bce_dice_loss(pred, masks[rows])
            loss = loss + budget.seg_weight * seg_loss
            record["seg"] = float(seg_loss.detach())
        head_opt.zero_grad()
        seg_opt.zero_grad()
        loss.backward()
        if train_cls or (train_seg and budget.multitask):
            head_opt.step()
        if train_seg:
            seg_opt.step()
        history.append(record)
        if log is not None:
            log(record)
    model.eval()
    if budget.classifier and budget.auto_cam_threshold:
        info["cam_threshold"], info["cam_box_iou_train"] = _pick_cam_threshold(model, seg_emb, masks)
    if budget.classifier and val_images is not None and val_present is not None:
        with torch.no_grad():
            prob = torch.sigmoid(torch.cat([model.classify(e.float())[0] for e in embed_all(model, val_images).split(64)]))
        model.presence_threshold = choose_presence_threshold(prob.numpy(), np.asarray(val_present), budget.presence_min_recall)
        info["presence_threshold"] = model.presence_threshold
    model.fit_info = info
    return history


@torch.no_grad()
def _pick_cam_threshold(model: SamMix, embeddings: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Set model.cam_threshold to the candidate whose CAM boxes best fit the masks' boxes."""
    cam = torch.cat([model.classify(e.float())[1] for e in embeddings.split(64)])
    model.cam_threshold, iou = choose_cam_threshold(cam, masks[:, 0].numpy(), model.image_size, component=model.box_component)
    return model.cam_threshold, iou


@torch.no_grad()
def predict_sam_mix(model: SamMix, images: np.ndarray | torch.Tensor, batch: int = 16) -> dict[str, np.ndarray]:
    """Prompt-free inference for every image: presence probability, CAM, box, raw and final masks."""
    model.eval()
    x = to_float(images)
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(x), batch):
        out = model.outputs(x[i:i + batch])
        out["presence"] = torch.sigmoid(out["presence"])
        for key, value in out.items():
            parts.setdefault(key, []).append(value.cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}
