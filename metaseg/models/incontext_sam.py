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
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from metaseg.errors import MetasegError
from metaseg.models.incontext import InContextModel, Support, check_ensemble
from metaseg.models.medsam_lite import EMBED_DIM, MedSamLite, create_medsam_lite


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

    def __init__(self, base: MedSamLite, heads: int, pool: int):
        super().__init__()
        self.base = base
        self.in_channels, self.image_size = base.in_channels, base.image_size
        self.conditioner = SupportConditioner(EMBED_DIM, heads, pool)

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
        pe = self.base.prompt_encoder.get_dense_pe()
        extra_sparse, extra_dense = self.conditioner(query, support["embeddings"], support["grid_masks"], pe)
        sparse, dense = self.base.prompts(b)
        logits = self.base.decode_prompted(query, torch.cat([sparse, extra_sparse], 1), dense + extra_dense)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
        return logits

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
) -> InContextSam:
    """GMISeg-style in-context LiteMedSAM (meta-train it with `learner: {name: incontext}`).

    image_size ... seed: medsam_lite's options (the base and what of it trains); the encoder
      stays frozen (no encoder LoRA: the embedding cache is what makes meta-training cheap).
    heads: attention heads of the query->support cross-attention; pool: support tokens are
      average-pooled by this factor before attention (cost); ensemble / ensemble_size: see InContextModel.
    """
    if heads < 1 or EMBED_DIM % heads:
        raise MetasegError(f"model.heads must divide {EMBED_DIM}, got {heads!r}")
    if pool < 1:
        raise MetasegError(f"model.pool must be an integer >= 1, got {pool!r}")
    check_ensemble(ensemble, ensemble_size)
    base = create_medsam_lite(image_size=image_size, checkpoint=checkpoint, prompt_tokens=prompt_tokens,
                              dense_prompt=dense_prompt, decoder=decoder, decoder_lora_rank=decoder_lora_rank,
                              embedding_cache=embedding_cache, in_channels=in_channels, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InContextSam(base, heads, pool)
    model.ensemble, model.ensemble_size = ensemble, ensemble_size
    return model
