"""`incontext_sam`: GMISeg-style in-context segmentation on the LiteMedSAM base.

The frozen encoder embeds queries and support images (through medsam_lite's embedding cache, so
meta-training across source tasks pays the encoder once per image). The support set conditions
the mask decoder through the prompt path SAM already has:
- sparse prompts: the learned prompt tokens (initialised to the whole-image box) plus a projected
  foreground and a background prototype (masked averages of the support embeddings);
- dense prompt: the base's no-mask embedding plus (a) the cosine similarity of every query token
  to the two prototypes and (b) cross-attention from the query tokens to the (pooled) support
  tokens, whose values carry a learned foreground/background embedding weighted by the support
  mask. Both enter through zero-initialised projections, so before meta-training the dense prompt
  is the base's own.
Prototypes are means and attention is a softmax over the set of support tokens, so nothing
depends on the order of the support set; each query is decoded on its own. The decoder trains
as medsam_lite's options say (`decoder: full | lora | frozen`), with the conditioning modules.

Option `transfer` (`map` | `box` | `box_mask`; default `none`): a parameter-free label transfer in
the frozen embedding space (`transfer_labels`: every query token takes the softmax(cosine / T)-
weighted vote of all support tokens' mask fractions). `map`: that map, upsampled, is the
prediction (the decoder is not used); `box`: its thresholded map gives the decoder the box prompt
LiteMedSAM was trained for (of its largest connected component); `box_mask` adds the map as SAM's
mask prompt. It needs no training and uses every support token, so it can only gain from more
supports; with `conditioner: false` the learned conditioner is left out and the model is the
pretrained base prompted by the transfer alone (a `train: false` benchmark method).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.models.incontext import InContextModel, Support, check_ensemble
from metaseg.models.medsam_lite import EMBED_DIM, MedSamLite, boxes_from_masks, create_medsam_lite

TRANSFERS = ("none", "map", "box", "box_mask")
_QUERY_CHUNK = 4  # queries per similarity matrix in transfer_labels (memory: chunk x g^2 x K g^2 floats)


def transfer_labels(query: torch.Tensor, embeddings: torch.Tensor, masks: torch.Tensor, temperature: float) -> torch.Tensor:
    """Query embeddings (B, D, g, g), support embeddings (K, D, g, g) and mask fractions (K, 1, g, g)
    -> (B, 1, g, g) foreground probability: per query token, the softmax(cosine / temperature)-
    weighted mean of the mask values of all K g^2 support tokens (a soft nearest-neighbour vote;
    a set operation, so the support order does not matter)."""
    b, d, gh, gw = query.shape
    keys = F.normalize(embeddings, dim=1).transpose(0, 1).reshape(d, -1)  # (D, K g^2), member-major
    values = masks.reshape(-1, 1).to(query.dtype)  # (K g^2, 1), the same order
    out = [torch.softmax(q.flatten(2).transpose(1, 2) @ keys / temperature, dim=-1) @ values
           for q in F.normalize(query, dim=1).split(_QUERY_CHUNK)]
    return torch.cat(out).view(b, 1, gh, gw)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) binary -> the largest 8-connected component of each mask (empty stays empty):
    one stray token far from the object would otherwise stretch the box over the image. The
    component search is cam.strongest_component's, weighted by pixel count."""
    from metaseg.models.cam import strongest_component

    out = torch.zeros_like(mask)
    for i, m in enumerate(mask[:, 0] > 0.5):
        if m.any():
            out[i, 0] = strongest_component(m, m.float()).to(out.device, out.dtype)
    return out


class SupportConditioner(nn.Module):
    """Support embeddings + masks -> extra sparse tokens and a dense-prompt offset for each query."""

    def __init__(self, dim: int = EMBED_DIM, heads: int = 8, pool: int = 2):
        super().__init__()
        self.pool = pool
        self.prototype_proj = nn.Linear(dim, dim)
        self.label_embed = nn.Parameter(torch.zeros(2, dim))  # background, foreground
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_out = nn.Linear(dim, dim)
        self.similarity_out = nn.Conv2d(2, dim, 1)
        for layer in (self.attn_out, self.similarity_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.label_embed, std=0.02)

    @staticmethod
    def prototypes(embeddings: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(K, D, g, g), (K, 1, g, g) fractions -> (2, D): background and foreground masked means."""
        weights = torch.cat([1 - masks, masks], 1)  # (K, 2, g, g)
        total = torch.einsum("kcxy,kdxy->cd", weights, embeddings)
        return total / weights.sum((0, 2, 3)).clamp_min(1e-6).unsqueeze(1)

    def forward(self, query: torch.Tensor, embeddings: torch.Tensor, masks: torch.Tensor,
                pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, D, g, g); support embeddings (K, D, g, g), masks (K, 1, g, g); pe (1, D, g, g)
        -> sparse tokens (B, 2, D), dense offset (B, D, g, g)."""
        b, d, gh, gw = query.shape
        protos = self.prototypes(embeddings, masks)  # (2, D)
        sparse = self.prototype_proj(protos).unsqueeze(0).expand(b, -1, -1)
        similarity = torch.einsum("bdxy,cd->bcxy", F.normalize(query, dim=1), F.normalize(protos, dim=1))
        keys = embeddings + pe
        values = embeddings + masks * self.label_embed[1].view(1, d, 1, 1) + (1 - masks) * self.label_embed[0].view(1, d, 1, 1)
        if self.pool > 1:
            keys, values = F.avg_pool2d(keys, self.pool), F.avg_pool2d(values, self.pool)
        keys = keys.flatten(2).transpose(1, 2).reshape(1, -1, d).expand(b, -1, -1)  # all support tokens, one set
        values = values.flatten(2).transpose(1, 2).reshape(1, -1, d).expand(b, -1, -1)
        tokens = (query + pe).flatten(2).transpose(1, 2)  # (B, g*g, D)
        attended, _ = self.attn(tokens, keys, values, need_weights=False)
        dense = self.attn_out(attended).transpose(1, 2).reshape(b, d, gh, gw) + self.similarity_out(similarity)
        return sparse, dense


class InContextSam(InContextModel):
    """LiteMedSAM base (`base`, a MedSamLite) + `SupportConditioner`; checkpoints hold only the
    trainable parameters and the base's fingerprint, as medsam_lite's do."""

    def __init__(self, base: MedSamLite, heads: int, pool: int, conditioner: bool = True, transfer: str = "none",
                 transfer_temperature: float = 0.1, transfer_threshold: float = 0.5):
        super().__init__()
        self.base = base
        self.in_channels, self.image_size = base.in_channels, base.image_size
        self.conditioner = SupportConditioner(EMBED_DIM, heads, pool) if conditioner else None
        self.transfer, self.transfer_temperature, self.transfer_threshold = transfer, transfer_temperature, transfer_threshold

    def train(self, mode: bool = True) -> "InContextSam":
        """The frozen encoder stays in eval mode (its BatchNorms would otherwise use batch statistics)."""
        super().train(mode)
        self.base.image_encoder.eval()
        return self

    def encode_support(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Support:
        grid = self.image_size // 4
        return {"embeddings": self.base.embed(support_x),
                "grid_masks": F.interpolate(support_y, (grid, grid), mode="area")}

    def segment_once(self, x: torch.Tensor, support: Support) -> torch.Tensor:
        height, width = x.shape[-2:]
        query = self.base.embed(x)
        b = query.shape[0]
        if self.transfer == "map":
            prob = F.interpolate(self.transfer_map(query, support), (height, width), mode="bilinear", align_corners=False)
            return torch.logit(prob.clamp(1e-4, 1 - 1e-4))
        if self.transfer == "none":
            sparse, dense = self.base.prompts(b)
        else:
            sparse, dense = self.transfer_prompts(query, support)
        if self.conditioner is not None:
            pe = self.base.prompt_encoder.get_dense_pe()
            extra_sparse, extra_dense = self.conditioner(query, support["embeddings"], support["grid_masks"], pe)
            sparse, dense = torch.cat([sparse, extra_sparse], 1), dense + extra_dense
        logits = self.base.decode_prompted(query, sparse, dense)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
        return logits

    def transfer_map(self, query: torch.Tensor, support: Support) -> torch.Tensor:
        """(B, 1, g, g) foreground probability transferred from the support (no parameters)."""
        return transfer_labels(query, support["embeddings"], support["grid_masks"], self.transfer_temperature)

    def transfer_prompts(self, query: torch.Tensor, support: Support) -> tuple[torch.Tensor, torch.Tensor]:
        """The pretrained prompt path fed by the label transfer: the box of the largest component of
        the thresholded map (no component: the whole image), plus for `box_mask` the map as SAM's
        mask prompt (logits at the prompt encoder's mask size). No gradient flows through the box."""
        with torch.no_grad():
            prob = self.transfer_map(query, support)
            region = largest_component((prob > self.transfer_threshold).float())
            boxes = boxes_from_masks(region, self.image_size)
        masks = None
        if self.transfer == "box_mask":
            size = self.base.prompt_encoder.mask_input_size
            masks = torch.logit(F.interpolate(prob, size, mode="bilinear", align_corners=False).clamp(1e-4, 1 - 1e-4))
        sparse, dense = self.base.prompt_encoder(points=None, boxes=boxes, masks=masks)
        return sparse, dense.expand(query.shape[0], -1, -1, -1)

    # -- trainable-only checkpoints (metaseg.training.module.has_trainable_hook) -----------------
    def base_fingerprint(self) -> dict[str, str]:
        return self.base.base_fingerprint()

    def check_base_fingerprint(self, saved: dict[str, str]) -> None:
        self.base.check_base_fingerprint(saved)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], base: dict[str, str] | None = None) -> None:
        if base is not None:
            self.check_base_fingerprint(base)
        own = {n: p for n, p in self.named_parameters() if p.requires_grad}
        if set(state) != set(own):
            raise MetasegError(f"incontext_sam trainable state does not match this model (e.g. {sorted(set(state) ^ set(own))[:3]})")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(state[name])


def create_incontext_sam(
    image_size: int = 128,
    checkpoint: str | None = None,
    prompt_tokens: bool = True,
    dense_prompt: str = "constant",
    decoder: str = "full",
    decoder_lora_rank: int = 8,
    embedding_cache: str | None = None,
    in_channels: int = 3,
    seed: int = 0,
    heads: int = 8,
    pool: int = 2,
    ensemble: int = 0,
    ensemble_size: int = 0,
    conditioner: bool = True,
    transfer: str = "none",
    transfer_temperature: float = 0.1,
    transfer_threshold: float = 0.5,
) -> InContextSam:
    """GMISeg-style in-context LiteMedSAM (meta-train it with `learner: {name: incontext}`).

    image_size ... seed: medsam_lite's options (the base and what of it trains); the encoder
      stays frozen (no encoder LoRA: the embedding cache is what makes meta-training cheap).
    heads: attention heads of the query->support cross-attention; pool: support tokens are
      average-pooled by this factor before attention (cost); ensemble / ensemble_size: see InContextModel.
    conditioner: false leaves the learned SupportConditioner out (then only `transfer` reads the support).
    transfer: none | map | box | box_mask, the parameter-free label transfer (the prediction, or
      what prompts the decoder: module docstring); transfer_temperature: of its softmax over cosine similarities;
      transfer_threshold: the map's foreground cut for the box.
    """
    if heads < 1 or EMBED_DIM % heads:
        raise MetasegError(f"model.heads must divide {EMBED_DIM}, got {heads!r}")
    if pool < 1:
        raise MetasegError(f"model.pool must be an integer >= 1, got {pool!r}")
    check_ensemble(ensemble, ensemble_size)
    if transfer not in TRANSFERS:
        raise MetasegError(f"model.transfer must be one of {list(TRANSFERS)}, got {transfer!r}")
    if not isinstance(transfer_temperature, (int, float)) or not transfer_temperature > 0:
        raise MetasegError(f"model.transfer_temperature must be a number > 0, got {transfer_temperature!r}")
    if not isinstance(transfer_threshold, (int, float)) or not 0 < transfer_threshold < 1:
        raise MetasegError(f"model.transfer_threshold must be a number in (0, 1), got {transfer_threshold!r}")
    if not conditioner and transfer == "none":
        raise MetasegError("model.conditioner: false needs model.transfer (map, box or box_mask), or nothing reads the support")
    if conditioner and transfer == "map":
        raise MetasegError("model.transfer: map predicts without the decoder, so it needs model.conditioner: false")
    base = create_medsam_lite(image_size=image_size, checkpoint=checkpoint, prompt_tokens=prompt_tokens,
                              dense_prompt=dense_prompt, decoder=decoder, decoder_lora_rank=decoder_lora_rank,
                              embedding_cache=embedding_cache, in_channels=in_channels, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InContextSam(base, heads, pool, bool(conditioner), transfer, float(transfer_temperature), float(transfer_threshold))
    model.ensemble, model.ensemble_size = ensemble, ensemble_size
    return model
