"""Lightning module that meta-trains a segmentation network with any registered learner.

One training step = one meta-batch (a list of Episodes): the learner accumulates each episode's
meta-gradient into `.grad` (scaled so the sum is the meta-batch mean), the gradients are averaged
across processes by hand (learners run the network through `functional_call`, not through the
DDP wrapper, so DDP's own reducer never sees them), then the outer optimiser and the schedule
step. Optimisation is manual because the learner, not Lightning, owns the backward pass.

Validation adapts on each held-out episode's support set and scores the query set per image;
`val_dice` is what ModelCheckpoint monitors, so model selection only ever sees meta-validation
tasks. Test (meta-test) is reporting only.
"""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from metaseg.data.types import Episode
from metaseg.errors import MetasegError
from metaseg.losses import bce_dice_loss
from metaseg.meta.scoring import score_episode
from metaseg.metrics import mean_ci95

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULES = ("cosine", "none")


def plain(value: Any, where: str) -> Any:
    """Recursively convert a config value to builtins (dict/list/str/number/bool/None).

    Hyperparameters end up in checkpoints that users hand back to `torch.load(weights_only=True)`,
    which refuses any custom class; tuples become lists for the same reason.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise MetasegError(f"{where}: expected plain YAML values (numbers, strings, lists, mappings), got {type(value).__name__}")


def has_trainable_hook(model: torch.nn.Module) -> bool:
    """Models with a frozen, separately shipped base (SAM) save only their trainable part."""
    return all(hasattr(model, m) for m in ("trainable_state_dict", "load_trainable_state_dict", "base_fingerprint"))


def check_options(model: Any, learner: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """`model.model` and `model.learner` as plain dicts, their names and every option checked
    against the factories (metaseg.registry) before anything is built: one-line errors."""
    from metaseg.registry import LEARNER_REGISTRY, MODEL_REGISTRY

    model = plain(dict(model or {"kind": "unet"}), "model.model")
    learner = plain(dict(learner or {"name": "maml"}), "model.learner")
    if "name" not in learner:
        raise MetasegError(f"model.learner: needs a 'name' (one of {', '.join(LEARNER_REGISTRY.names())})")
    LEARNER_REGISTRY.check(learner["name"], learner, "model.learner")
    MODEL_REGISTRY.check(model.get("kind", "unet"), model, "model.model")
    return model, learner


class MetaSegModule(pl.LightningModule):
    """Network + learner + outer optimiser; the checkpoint's hyperparameters alone rebuild both."""

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        learner: dict[str, Any] | None = None,
        outer_lr: float = 1e-3,
        outer_optimizer: str = "adam",
        weight_decay: float = 0.0,
        lr_schedule: str = "cosine",
        warmup_steps: int = 0,
        grad_clip: float | None = None,
        val_adapt_steps: int | None = None,
        lr_schedule_steps: int | None = None,
    ) -> None:
        super().__init__()
        from metaseg.registry import LEARNER_REGISTRY, MODEL_REGISTRY

        model, learner = check_options(model, learner)
        if outer_optimizer not in OPTIMIZERS:
            raise MetasegError(f"model.outer_optimizer: unknown {outer_optimizer!r}; known: {sorted(OPTIMIZERS)}")
        if lr_schedule not in SCHEDULES:
            raise MetasegError(f"model.lr_schedule: unknown {lr_schedule!r}; known: {list(SCHEDULES)}")
        if lr_schedule_steps is not None and (isinstance(lr_schedule_steps, bool) or not isinstance(lr_schedule_steps, int)
                                              or lr_schedule_steps < 1):
            raise MetasegError(f"model.lr_schedule_steps must be a positive integer (or null: trainer.max_steps), "
                               f"got {lr_schedule_steps!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        with torch.enable_grad():  # the U-Net factory runs a probe backward pass; callers may be in no_grad
            self.model = MODEL_REGISTRY.build(model.get("kind", "unet"), model, "model.model")
        self.learner = LEARNER_REGISTRY.build(learner["name"], learner, "model.learner")
        self.learner.setup(self.model)  # model-shaped learner meta-parameters (Meta-SGD lrs) before optimiser/DDP
        self._scores: dict[str, dict[tuple, tuple[list[float], list[float]]]] = {"val": {}, "test": {}}
        self.test_results: dict[str, float] = {}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        params = list(self.learner.meta_parameters(self.model))
        kwargs = {"lr": hp.outer_lr, "weight_decay": hp.weight_decay}
        optimizer = OPTIMIZERS[hp.outer_optimizer](params, **kwargs)
        total = self._total_steps()
        warmup = max(0, int(hp.warmup_steps))

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if hp.lr_schedule == "none" or total <= warmup:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        """The cosine schedule's horizon: `lr_schedule_steps` when set, else the run's length.

        With the horizon tied to trainer.max_steps, a finished run ends at lr 0 and resuming it
        with a larger max_steps jumps the lr back up (the horizon is recomputed from the new
        max_steps); a fixed `lr_schedule_steps` makes the lr a function of the global step alone,
        so a run stopped at step n and resumed to step m follows the same lr as one run to m."""
        if self.hparams.get("lr_schedule_steps"):
            return int(self.hparams.lr_schedule_steps)
        trainer = self._trainer
        if trainer is None:
            return 0
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        total = trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else 0

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, Episode):
            return batch.to(device)
        if isinstance(batch, (list, tuple)) and all(isinstance(e, Episode) for e in batch):
            return [e.to(device) for e in batch]
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _world(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def training_step(self, batch: list[Episode], batch_idx: int) -> None:
        episodes = [batch] if isinstance(batch, Episode) else list(batch)
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        params = list(self.learner.meta_parameters(self.model))
        optimizer.zero_grad(set_to_none=False)

        # Every process scales by the GLOBAL episode count, so summing over processes gives
        # exactly the mean meta-gradient of the whole (split) meta-batch, even for uneven splits.
        total = float(len(episodes))
        if self._world() > 1:
            count = torch.tensor([total], dtype=torch.float64, device=self.device)
            dist.all_reduce(count)
            total = float(count.item())
        # Under fp16 mixed precision the optimiser step unscales by the loss scale, so the
        # meta-gradient must carry it (the learner does its own backward, not manual_backward).
        # (scaling a unit tensor also initialises the scaler, which unscale_ needs). bf16-mixed
        # needs no scaler and is the better choice: learners scale their gradient, not their loss.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        loss_scale = float(scaler.scale(torch.ones((), device=self.device))) if scaler is not None else 1.0

        sums: dict[str, float] = {}
        for stats in self.learner.meta_backward_batch(self.model, episodes, scale=loss_scale / total):
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        if self._world() > 1:
            self._all_reduce_sum_grads(params)

        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the schedule moves on below)
        optimizer.step()
        scheduler.step()
        for key, value in sums.items():
            self.log(key, value / len(episodes), on_step=True, prog_bar=key == "query_loss",
                     batch_size=len(episodes), sync_dist=self._world() > 1)
        self.log("lr", lr, on_step=True, batch_size=len(episodes))

    @staticmethod
    def _all_reduce_sum_grads(params: list[torch.nn.Parameter]) -> None:
        """One flat all-reduce (sum) over every meta-parameter's gradient."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called by the precision plugin after unscaling, so the clip sees true gradient norms.
        if self.hparams.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(list(self.learner.meta_parameters(self.model)), self.hparams.grad_clip)
            self.log("grad_norm", norm, on_step=True, batch_size=1)

    # ------------------------------------------------------------------ validation / test
    def _eval_step(self, stage: str, batch: list[Episode]) -> None:
        episodes = [batch] if isinstance(batch, Episode) else list(batch)
        for episode in episodes:
            # the evaluation jobs' scoring (metaseg.meta.scoring), plus the query loss for the logs
            scores = score_episode(self.model, self.learner, episode, steps=self.hparams.val_adapt_steps,
                                   loss_fn=bce_dice_loss)[""]
            # keyed by content so that DistributedSampler's padding duplicates count once
            key = (episode.task, tuple(episode.support_ids), tuple(episode.query_ids))
            self._scores[stage][key] = (scores.dice, scores.iou)
            self.log(f"{stage}_query_loss", scores.loss, on_epoch=True, batch_size=1, sync_dist=self._world() > 1)

    def validation_step(self, batch: list[Episode], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: list[Episode], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_start(self) -> None:
        self._scores["val"] = {}

    def on_test_epoch_start(self) -> None:
        self._scores["test"] = {}

    def _summarise(self, stage: str) -> dict[str, float]:
        scores = self._scores[stage]
        if self._world() > 1:
            gathered: list[Any] = [None] * self._world()
            dist.all_gather_object(gathered, scores)
            scores = {k: v for part in gathered for k, v in part.items()}
        dice = [d for ds, _ in scores.values() for d in ds]
        iou = [i for _, is_ in scores.values() for i in is_]
        if not dice:
            return {}
        dice_mean, dice_ci = mean_ci95(dice)
        iou_mean, iou_ci = mean_ci95(iou)
        summary = {
            f"{stage}_dice": dice_mean,
            f"{stage}_dice_ci95": dice_ci,
            f"{stage}_iou": iou_mean,
            f"{stage}_iou_ci95": iou_ci,
            f"{stage}_images": float(len(dice)),
            f"{stage}_episodes": float(len(scores)),
        }
        for key, value in summary.items():
            self.log(key, value, prog_bar=key == f"{stage}_dice", batch_size=1)
        return summary

    def on_validation_epoch_end(self) -> None:
        self._summarise("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._summarise("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        import metaseg

        info: dict[str, Any] = {"version": metaseg.__version__}
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(getattr(datamodule, "hparams", None), "image_size", None) or getattr(datamodule, "image_size", None)
        if size is not None:
            info["image_size"] = int(size)
        if hasattr(datamodule, "seen_record"):  # the meta-train + meta-val images, for evaluate/adapt
            info["seen"] = datamodule.seen_record()
        if has_trainable_hook(self.model):
            keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("model.") or k in keep
            }
            info["base_fingerprint"] = plain(self.model.base_fingerprint(), "base_fingerprint")
        checkpoint["metaseg"] = info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        complete_state_dict(self, checkpoint)


def complete_state_dict(module: MetaSegModule, checkpoint: dict[str, Any]) -> None:
    """For trainable-only checkpoints (SAM): check the frozen base is the one trained on, then fill
    the frozen keys from the locally built model so loading stays strict for everything else."""
    saved = checkpoint.get("metaseg", {}).get("base_fingerprint")
    if saved is None:
        return
    if not has_trainable_hook(module.model):
        raise MetasegError("checkpoint stores only trainable weights but the configured model has no frozen base")
    if hasattr(module.model, "check_base_fingerprint"):  # the model knows what identifies its base
        module.model.check_base_fingerprint(saved)
    else:
        current = plain(module.model.base_fingerprint(), "base_fingerprint")
        if current != saved:
            raise MetasegError(f"checkpoint was trained on a different frozen base model ({saved} != local {current})")
    state = checkpoint["state_dict"]
    for key, value in module.state_dict().items():
        if key.startswith("model.") and key not in state:
            state[key] = value
