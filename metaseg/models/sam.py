"""Segment Anything (SAM / MedSAM) as a metaseg segmentation model with LoRA adapters.

Built from the `segment_anything` package's own components (ImageEncoderViT, PromptEncoder,
MaskDecoder, TwoWayTransformer) so that official SAM and MedSAM checkpoints load key for key.
What is meta-learned (requires_grad=True) and what is frozen:

- image encoder: frozen; rank-r LoRA adapters on its attention projections (`qkv`, optionally
  `proj`) are trainable;
- prompt encoder: frozen (its no-mask / box-corner embeddings are part of the base model; the
  decoder, which is trainable, can absorb any constant shift they would learn);
- mask decoder: trainable, except the IoU-prediction head and the three multimask hypernetwork
  MLPs, which the single-mask output never uses (no loss reaches them; leaving them trainable
  would give the learners' `torch.autograd.grad` unused tensors and dead meta-parameters).

The learners therefore see only adapters + decoder through `model.parameters()` with
requires_grad=True, and work on SAM unchanged.

Checkpoints of a meta-trained SAM store only the trainable tensors (`trainable_state_dict`) plus
the base checkpoint's file name and sha256 (`base_fingerprint`), and refuse to load onto a
different base (`check_base_fingerprint`, `load_trainable_state_dict(state, base=...)`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.models.lora import inject_lora
from metaseg.models.unet import adapt_channels

PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's normalisation, on 0..255 RGB
PIXEL_STD = (58.395, 57.12, 57.375)
PROMPTS = ("none", "box")


@dataclass(frozen=True)
class SamConfig:
    """Architecture of one SAM variant (values of segment_anything.build_sam for vit_b/l/h)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    mask_in_chans: int = 16
    iou_hidden_dim: int = 256


VARIANTS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    # CPU tests and demos: same code paths (windowed + global attention, relative positions,
    # two-way decoder), ~0.2 M parameters, 64 px input.
    "tiny": SamConfig(
        embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=64, patch_size=8,
        window_size=4, prompt_dim=32, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=2,
        mask_in_chans=4, iou_hidden_dim=32,
    ),
}


def build_sam_parts(cfg: SamConfig, image_size: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(image_encoder, prompt_encoder, mask_decoder) exactly as segment_anything's `_build_sam` makes them."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    grid = image_size // cfg.patch_size
    encoder = ImageEncoderViT(
        depth=cfg.depth, embed_dim=cfg.embed_dim, img_size=image_size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=cfg.num_heads, patch_size=cfg.patch_size,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(cfg.global_attn_indexes),
        window_size=cfg.window_size, out_chans=cfg.prompt_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=cfg.prompt_dim, image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size), mask_in_chans=cfg.mask_in_chans,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=cfg.decoder_depth, embedding_dim=cfg.prompt_dim, mlp_dim=cfg.decoder_mlp_dim,
            num_heads=cfg.decoder_heads,
        ),
        transformer_dim=cfg.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=cfg.iou_hidden_dim,
    )
    return encoder, prompt_encoder, decoder


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of a state dict's names, shapes and values (identifies a random initialisation)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def read_sam_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A SAM/MedSAM state dict from a local file (weights_only); wrappers `model`/`state_dict`/`module.` undone."""
    if not path.is_file():
        raise MetasegError(f"model.checkpoint: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or a pickle that is not plain weights
        raise MetasegError(f"model.checkpoint: cannot read {path} as a weights file ({type(exc).__name__})") from None
    for wrapper in ("model", "state_dict"):  # MedSAM training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MetasegError(f"model.checkpoint: {path} is not a SAM state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resize_position_tables(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Interpolate the absolute position embedding and relative-position tables of a checkpoint
    made for another input size (e.g. a 1024 px checkpoint used at 256 px on a CPU)."""
    out = dict(state)
    for name, value in state.items():
        want = target.get(name)
        if want is None or want.shape == value.shape:
            continue
        if name.endswith("pos_embed") and value.dim() == 4:  # (1, H, W, C)
            out[name] = F.interpolate(
                value.permute(0, 3, 1, 2), size=tuple(want.shape[1:3]), mode="bicubic", align_corners=False
            ).permute(0, 2, 3, 1)
        elif name.endswith(("rel_pos_h", "rel_pos_w")) and value.dim() == 2:  # (2S-1, head_dim), as SAM's get_rel_pos
            out[name] = F.interpolate(value.t()[None], size=want.shape[0], mode="linear")[0].t()
    return out


class SamSegmenter(nn.Module):
    """SAM as a dense segmenter: (B, C, H, W) in [0, 1] -> (B, 1, H, W) logits at input resolution.

    Images are resized (longest side) to `image_size`, normalised with SAM's pixel mean/std and
    zero-padded, as SamPredictor does. Nothing mixes images of a batch (LayerNorm only, attention
    within an image), so a prediction never depends on the other images of the batch (tested).
    """

    # a callable (images in [0, 1], (h, w) frame) -> (B, 4) boxes that replaces the prompt-free first
    # pass / the whole-image box, e.g. SAM-Mix's CAM (models.sam_mix.CamBoxPrompter); None: no box
    box_prompter = None

    def __init__(self, variant: str, cfg: SamConfig, image_size: int, prompt: str, in_channels: int):
        super().__init__()
        self.variant, self.cfg, self.image_size, self.prompt, self.in_channels = variant, cfg, image_size, prompt, in_channels
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_sam_parts(cfg, image_size)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1) / 255.0, persistent=False)
        self._fingerprint: dict[str, str] | None = None
        self._fingerprint_name = ""

    # ---------------------------------------------------------------- base weights
    def load_base_checkpoint(self, path: Path) -> None:
        """Load an official SAM/MedSAM checkpoint into the (not yet adapted) base modules, strictly."""
        state = resize_position_tables(read_sam_checkpoint(path), self.state_dict())
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch: another variant's checkpoint
            first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
            raise MetasegError(
                f"model.checkpoint: {path} does not fit SAM {self.variant} ({first.split(':')[0]}; another variant's checkpoint?)"
            ) from None
        if missing or unexpected:
            raise MetasegError(
                f"model.checkpoint: {path} is not a SAM {self.variant} checkpoint "
                f"(missing keys {missing[:3]}, unexpected keys {unexpected[:3]})"
            )
        self._fingerprint_name = path.name
        self._fingerprint = {"name": path.name, "sha256": file_sha256(path)}

    def base_fingerprint(self) -> dict[str, str]:
        """{name, sha256} of the base weights: the checkpoint file, or the seeded random initialisation."""
        if self._fingerprint is None:  # random init: hash what trainable_state_dict does not carry
            base = {k: v for k, v in self.state_dict(keep_vars=True).items() if not v.requires_grad}
            self._fingerprint = {"name": self._fingerprint_name, "sha256": state_sha256(base)}
        return dict(self._fingerprint)

    # ---------------------------------------------------------------- trainable state
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """{name: tensor} over the requires_grad parameters only (adapters + decoder); store
        `base_fingerprint()` beside it so that loading can refuse a different base."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def check_base_fingerprint(self, saved: dict[str, str]) -> None:
        """Refuse trainable state meta-trained on another base (compared by content hash, not file name)."""
        mine = self.base_fingerprint()
        if not isinstance(saved, dict) or saved.get("sha256") != mine["sha256"]:
            saved = saved if isinstance(saved, dict) else {}
            raise MetasegError(
                f"SAM adapter was trained on base {saved.get('name')} (sha256 {str(saved.get('sha256'))[:12]}), "
                f"refusing to load onto {mine['name']} (sha256 {mine['sha256'][:12]})"
            )

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], base: dict[str, str] | None = None) -> None:
        """Inverse of `trainable_state_dict`; with `base` (the saved fingerprint) a different base is refused.
        The key set must match exactly (another lora_rank/lora_targets is an error, not a partial load)."""
        if base is not None:
            self.check_base_fingerprint(base)
        own = {n: p for n, p in self.named_parameters() if p.requires_grad}
        if set(state) != set(own):
            diff = sorted(set(state) ^ set(own))
            raise MetasegError(f"SAM trainable state does not match this model (e.g. {diff[:3]}; lora_rank/lora_targets?)")
        with torch.no_grad():
            for name, p in own.items():
                if state[name].shape != p.shape:
                    raise MetasegError(f"SAM trainable state: {name} has shape {tuple(state[name].shape)}, model has {tuple(p.shape)} (lora_rank?)")
                p.copy_(state[name])

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = adapt_channels(x, 3)
        height, width = x.shape[-2:]
        inp, (h, w) = self.preprocess(x)
        embeddings = self.image_encoder(inp)
        low_res = self.decode(embeddings, boxes=None if self.box_prompter is None else self.box_prompter(x, (h, w)))
        if self.prompt == "box":  # the box is a thresholded coarse mask: no gradient through it
            low_res = self.decode(embeddings, boxes=self.boxes_from_logits(low_res.detach(), h, w))
        logits = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return F.interpolate(logits[..., :h, :w], (height, width), mode="bilinear", align_corners=False)

    def preprocess(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize the longest side to image_size, normalise, zero-pad bottom/right (SAM's ResizeLongestSide)."""
        height, width = x.shape[-2:]
        scale = self.image_size / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        if (h, w) != (height, width):
            x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=scale < 1)
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h)), (h, w)

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
        """Single-mask low-res logits (B, 1, S/4, S/4) for one prompt set (none, or one box) per image.

        Same computation as segment_anything's `MaskDecoder.predict_masks` with the single-mask
        output, batched over images. Hand-written because SAM's decoder takes ONE image with many
        prompts (it repeat-interleaves the image embedding over the prompt batch); calling it
        per image was 3x slower than the whole tiny encoder on CPU. `test_sam` checks this
        equals SAM's own decoder image by image.
        """
        b = embeddings.shape[0]
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.decode_prompted(embeddings, sparse.expand(b, -1, -1), dense.expand(b, -1, -1, -1))

    def decode_prompted(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """`decode` for given per-image prompt embeddings (sparse (B, N, D), dense (B, D, g, g))."""
        b = embeddings.shape[0]
        decoder = self.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        image_pe = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        hs, src = decoder.transformer(embeddings + dense, image_pe, tokens)
        c, h, w = embeddings.shape[1:]
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])  # token 1 = the single-mask token
        return (hyper.unsqueeze(1) @ upscaled.flatten(2)).view(b, 1, *upscaled.shape[-2:])

    def boxes_from_logits(self, low_res: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Bounding box (x0, y0, x1, y1, input-frame pixels) of each coarse foreground; the whole image if empty."""
        stride = self.image_size / low_res.shape[-1]
        valid = low_res[:, 0, : max(1, round(h / stride)), : max(1, round(w / stride))] > 0
        boxes = []
        for fg in valid:
            ys, xs = torch.nonzero(fg, as_tuple=True)
            if ys.numel() == 0:
                boxes.append([0.0, 0.0, float(w), float(h)])
            else:
                x0, y0 = xs.min().item() * stride, ys.min().item() * stride
                x1, y1 = min((xs.max().item() + 1) * stride, w), min((ys.max().item() + 1) * stride, h)
                boxes.append([x0, y0, x1, y1])
        return torch.tensor(boxes, dtype=low_res.dtype, device=low_res.device)


def freeze_base(model: SamSegmenter) -> None:
    """requires_grad only for the mask decoder parts the single-mask output uses (LoRA added afterwards)."""
    model.requires_grad_(False)
    train_single_mask_decoder(model.mask_decoder)


def train_single_mask_decoder(decoder: nn.Module) -> None:
    """requires_grad for the decoder parts the single-mask output reaches (not the IoU head nor the
    three multimask hypernetworks, which no loss reaches)."""
    decoder.requires_grad_(True)
    decoder.iou_prediction_head.requires_grad_(False)
    for mlp in decoder.output_hypernetworks_mlps[1:]:
        mlp.requires_grad_(False)


def create_sam(
    variant: str = "tiny",
    checkpoint: str | None = None,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_targets: Sequence[str] = ("qkv",),
    prompt: str = "none",
    image_size: int | None = None,
    in_channels: int = 3,
    seed: int = 0,
) -> SamSegmenter:
    """SAM/MedSAM with LoRA adapters, for meta-learning.

    variant: vit_b | vit_l | vit_h (official architectures) | tiny (CPU tests/demos).
    checkpoint: local path to an official SAM or MedSAM state dict of that variant; None = seeded
      random initialisation (for tests; the fingerprint is then 'random-init:<variant>:<seed>').
    lora_alpha: LoRA scaling numerator (scaling = alpha / rank); default = rank (scaling 1).
    lora_targets: attention Linear layers to adapt: "qkv" (fused query/key/value) and/or "proj".
    prompt: "none" (prompt-free dense prediction) | "box" (box from a prompt-free coarse pass).
    image_size: side of SAM's square input; default the variant's (1024, tiny 64). Another size
      interpolates the checkpoint's position tables (cheaper on CPU, less faithful to the base).
    in_channels: 1 or 3; SAM always sees RGB, grayscale is repeated to 3 channels (adapt_channels).
    """
    if variant not in VARIANTS:
        raise MetasegError(f"model.variant: unknown SAM variant {variant!r}; known: {sorted(VARIANTS)}")
    if prompt not in PROMPTS:
        raise MetasegError(f"model.prompt must be one of {list(PROMPTS)}, got {prompt!r}")
    if in_channels not in (1, 3):
        raise MetasegError(f"model.in_channels must be 1 or 3 for SAM, got {in_channels}")
    bad_targets = set(lora_targets) - {"qkv", "proj"}
    if bad_targets or not lora_targets:
        raise MetasegError(f"model.lora_targets must be a non-empty subset of ['qkv', 'proj'], got {list(lora_targets)}")
    cfg = VARIANTS[variant]
    image_size = int(image_size or cfg.img_size)
    if image_size % cfg.patch_size or image_size < 4 * cfg.patch_size:
        raise MetasegError(f"model.image_size={image_size} must be a multiple of {cfg.patch_size} and >= {4 * cfg.patch_size}")
    with torch.random.fork_rng(devices=[]):  # deterministic init without touching the caller's RNG
        torch.manual_seed(seed)
        model = SamSegmenter(variant, cfg, image_size, prompt, in_channels)
        model._fingerprint_name = f"random-init:{variant}:{seed}"
        if checkpoint:
            model.load_base_checkpoint(Path(checkpoint).expanduser())
        freeze_base(model)
        inject_lora(model.image_encoder, lora_targets, rank=lora_rank, alpha=float(lora_alpha or lora_rank))
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
