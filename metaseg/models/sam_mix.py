"""SAM-Mix (Ward & Imran, ISBI 2025) on the LiteMedSAM base: a presence classifier whose class
activation map prompts the SAM segmentation branch, so no user prompt is needed.

    image -> frozen encoder (cached) -> embeddings -> PresenceHead -> P(present), CAM
    P(present) < presence_threshold        -> empty mask
    otherwise CAM >= cam_threshold          -> box prompt (its bounding box)
                                            -> dense prompt (the CAM as a mask prompt, added to
                                               the embeddings by the prompt encoder)
    embeddings + prompts -> mask decoder with LoRA (rank 8 by default) -> mask logits
    `refine` times (default 0 = off; inference only): the box of that mask replaces the CAM box -> decoder again

`prompts` chooses what the CAM gives the decoder: `box+dense` (SAM-Mix), `box`, `dense`, or
`whole` (the whole-image box, no CAM: the fine-tuned-base baseline). With a dense prompt the
prompt encoder's small mask-downscaling convolutions train too (LiteMedSAM was trained with boxes).
Why refine is an option, off by default: the box of the first predicted mask is tighter than the
CAM box (IoU with the mask's box 0.49 -> 0.56 on BUSI validation), but on BUSI validation masks at
N=50 it changed SAM-Mix's Dice by +1.2 / -1.0 / -1.6 points (seeds 0 / 1 / 2) and cost the whole-box
baseline 5-8 points (docs/sam_mix.md). Training always uses the CAM box.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.models.cam import COMPONENTS, PresenceHead, cam_boxes, cam_mask_logits, mask_boxes

PROMPTS = ("box+dense", "box", "dense", "whole")
EMPTY_LOGIT = -20.0  # what an image the classifier calls "absent" gets everywhere
# the CAM level that makes the prompt mask: chosen on validation masks (docs/sam_mix.md): >= the train-mask box fit
# (SamMixBudget.auto_cam_threshold) in all 6 BUSI N=50 probes (+7-9 Dice where that fit picked 0.6), best of 0.5-0.9 on
# hippocampus validation slices
CAM_THRESHOLD = 0.7


class SamMix(nn.Module):
    """(B, C, H, W) in [0, 1] -> (B, 1, H, W) mask logits, with `presence` and `cam` as side outputs."""

    def __init__(self, base: nn.Module, prompts: str = "box+dense", cam_threshold: float = CAM_THRESHOLD,
                 presence_threshold: float = 0.5, hidden: int = 32, cam_grad: bool = True,
                 box_component: str = "largest", pooling: str = "lse", refine: int = 0):
        super().__init__()
        if prompts not in PROMPTS:
            raise MetasegError(f"sam_mix: prompts must be one of {list(PROMPTS)}, got {prompts!r}")
        if not 0.0 < cam_threshold < 1.0:
            raise MetasegError(f"sam_mix: cam_threshold must be between 0 and 1, got {cam_threshold}")
        if not 0.0 <= presence_threshold <= 1.0:
            raise MetasegError(f"sam_mix: presence_threshold must be between 0 and 1, got {presence_threshold}")
        if box_component not in COMPONENTS:
            raise MetasegError(f"sam_mix: box_component must be one of {list(COMPONENTS)}, got {box_component!r}")
        if not isinstance(refine, int) or isinstance(refine, bool) or refine < 0:
            raise MetasegError(f"sam_mix: refine must be an integer >= 0, got {refine!r}")
        self.base, self.prompts, self.box_component, self.refine = base, prompts, box_component, refine
        self.fit_info: dict[str, float] = {}
        self.cam_threshold, self.presence_threshold, self.cam_grad = cam_threshold, presence_threshold, cam_grad
        self.head = PresenceHead(base.mask_decoder.transformer_dim, hidden, pooling)
        if "dense" in prompts:
            base.prompt_encoder.mask_downscaling.requires_grad_(True)

    @property
    def image_size(self) -> int:
        return self.base.image_size

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.embed(x)

    def classify(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Presence logits (B,) and CAMs normalised to [0, 1] (B, g, g)."""
        logits, cam = self.head(embeddings)
        return logits, self.head.normalise(cam)

    def prompt_embeddings(self, cam01: torch.Tensor, boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse (B, 2, 256) and dense (B, 256, g, g) prompts from the CAM (or the given `boxes`,
        input-frame pixels, with the CAM's dense prompt), and the boxes used."""
        size, b = self.image_size, cam01.shape[0]
        if boxes is None and self.prompts == "whole":
            boxes = torch.tensor([[0.0, 0.0, size - 1.0, size - 1.0]], device=cam01.device).expand(b, -1)
        elif boxes is None:
            boxes = cam_boxes(cam01, self.cam_threshold, size, self.box_component)
        cam_in = cam01 if self.cam_grad else cam01.detach()
        masks = cam_mask_logits(cam_in, self.cam_threshold, size) if "dense" in self.prompts else None
        encoder = self.base.prompt_encoder
        sparse, dense = encoder(points=None, boxes=boxes if self.prompts != "dense" else None, masks=masks)
        if self.prompts == "dense":  # no box: SAM expects at least one sparse token, the whole image
            sparse, _ = encoder(points=None, boxes=torch.tensor([[0.0, 0.0, size - 1.0, size - 1.0]], device=cam01.device).expand(b, -1), masks=None)
        return sparse, dense, boxes

    def segment(self, embeddings: torch.Tensor, cam01: torch.Tensor, refine: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits at the input size (B, 1, S, S) for the given CAMs, and the box prompts (the
        last used). `refine` rounds: the box of the mask so far replaces the box (an empty mask keeps
        its box), the dense prompt stays the CAM's; no gradient through the box (a thresholded mask);
        no effect with prompts='dense' (no box)."""
        size = (self.image_size, self.image_size)

        def decode(sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
            return F.interpolate(self.base.decode_prompted(embeddings, sparse, dense), size, mode="bilinear", align_corners=False)

        sparse, dense, boxes = self.prompt_embeddings(cam01)
        logits = decode(sparse, dense)
        for _ in range(refine):
            own = torch.as_tensor(mask_boxes((logits.detach()[:, 0] > 0).cpu().numpy()), dtype=boxes.dtype, device=boxes.device)
            boxes = torch.where(torch.isnan(own), boxes, own)  # NaN: empty mask, keep the box it had
            logits = decode(*self.prompt_embeddings(cam01, boxes)[:2])
        return logits, boxes

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything inference computes: presence logits, CAM, boxes, raw mask logits, final logits."""
        height, width = x.shape[-2:]
        embeddings = self.embed(x)
        presence, cam01 = self.classify(embeddings)
        raw, boxes = self.segment(embeddings, cam01, self.refine)
        if raw.shape[-2:] != (height, width):
            raw = F.interpolate(raw, (height, width), mode="bilinear", align_corners=False)
        absent = torch.sigmoid(presence) < self.presence_threshold
        final = torch.where(absent.view(-1, 1, 1, 1), torch.full_like(raw, EMPTY_LOGIT), raw)
        return {"presence": presence, "cam": cam01, "boxes": boxes, "raw": raw, "logits": final}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)["logits"]


def create_sam_mix(prompts: str = "box+dense", cam_threshold: float = CAM_THRESHOLD, presence_threshold: float = 0.5,
                   lora_rank: int = 8, hidden: int = 32, cam_grad: bool = True, image_size: int = 128,
                   embedding_cache: str | None = None, seed: int = 0, box_component: str = "largest",
                   pooling: str = "lse", refine: int = 0) -> SamMix:
    """SAM-Mix on the packaged LiteMedSAM: frozen encoder (cacheable), LoRA rank `lora_rank` on the
    mask decoder, a fresh presence head (seeded); see the module docstring for the options
    (`refine`: box-refinement rounds at inference, 0 = the CAM box only)."""
    from metaseg.models import create_model

    if not isinstance(lora_rank, int) or lora_rank < 1:
        raise MetasegError(f"sam_mix: lora_rank must be an integer >= 1, got {lora_rank!r}")
    base = create_model("medsam_lite", image_size=image_size, prompt_tokens=False, dense_prompt="none",
                        decoder="lora", decoder_lora_rank=lora_rank, embedding_cache=embedding_cache, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SamMix(base, prompts, cam_threshold, presence_threshold, hidden, cam_grad, box_component, pooling, refine)


class CamBoxPrompter:
    """SAM-Mix's trained presence head as a box-prompt source for another SAM-based model: image ->
    LiteMedSAM embeddings (the SAM-Mix base, cached) -> CAM -> its box (cam_boxes), rescaled to
    the receiving model's box frame. Read-only and shared: a deep copy of a model (one per episode
    in the learners) keeps the same prompter instead of copying its encoder."""

    def __init__(self, sam_mix: SamMix):
        self.sam_mix = sam_mix.eval().requires_grad_(False)

    def __deepcopy__(self, memo: dict) -> "CamBoxPrompter":
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, frame: tuple[int, int]) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, 4) boxes x0, y0, x1, y1 in a (height, width) = `frame`
        pixel frame (the image resized to it)."""
        model = self.sam_mix
        _, cam01 = model.classify(model.embed(x.to(next(model.head.parameters()).device)).float())
        boxes = cam_boxes(cam01, model.cam_threshold, model.image_size, model.box_component)
        h, w = frame
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device) / model.image_size
        return (boxes * scale).to(x.device)


def save_cam_prompter(model: SamMix, path: str | Path) -> Path:
    """What CamBoxPrompter needs from a trained SAM-Mix: the head, its CAM threshold and options,
    the image size and the base's fingerprint (the head only reads that base's embeddings)."""
    path = Path(path)
    torch.save({"kind": "sam_mix_cam_prompter", "head": model.head.state_dict(), "cam_threshold": model.cam_threshold,
                "image_size": model.image_size, "pooling": model.head.pooling, "box_component": model.box_component,
                "hidden": model.head.fc.in_features, "base": model.base.base_fingerprint()}, path)
    return path


def read_cam_prompter(path: str | Path, option: str = "--cam-prompts") -> dict:
    """What save_cam_prompter wrote (weights only, no model built): the check a job runs before any
    work, and the first step of load_cam_prompter. Anything else is one line naming `option` and the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MetasegError(f"{option}: no such file {path} (`metaseg adapt --method sam_mix` writes cam_prompter.pt)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many types
        raise MetasegError(f"{option} {path}: not a SAM-Mix prompter file ({type(err).__name__})") from None
    if not isinstance(saved, dict) or saved.get("kind") != "sam_mix_cam_prompter":
        raise MetasegError(f"{option} {path}: not a SAM-Mix prompter file (write one with `metaseg adapt --method sam_mix`)")
    return saved


def load_cam_prompter(path: str | Path, option: str = "--cam-prompts", embedding_cache: str | None = None) -> CamBoxPrompter:
    """A CamBoxPrompter from a file save_cam_prompter wrote (`metaseg adapt --method sam_mix` writes
    cam_prompter.pt); anything else is a one-line error naming `option` and the file."""
    saved = read_cam_prompter(path, option)
    model = create_sam_mix(prompts="box", cam_threshold=saved["cam_threshold"], image_size=saved["image_size"],
                           hidden=saved["hidden"], box_component=saved["box_component"], pooling=saved["pooling"],
                           embedding_cache=embedding_cache)
    if model.base.base_fingerprint()["sha256"] != saved["base"]["sha256"]:
        raise MetasegError(f"{option} {path}: trained on another LiteMedSAM base ({saved['base'].get('name')})")
    model.head.load_state_dict(saved["head"])
    return CamBoxPrompter(model)
