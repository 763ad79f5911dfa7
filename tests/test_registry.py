"""Learner and model options: checked against the factories' signatures (metaseg.registry) wherever
a learner or model is built, listed by `metaseg meta-train --help`; the learner's loss is an option."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaseg.errors import MetasegError
from metaseg.meta import create_learner
from metaseg.models import create_model
from metaseg.registry import LEARNER_REGISTRY, LEARNERS, MODEL_REGISTRY, MODELS, matches
from tests.meta_helpers import meta_grads, random_episode, tiny_net

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "experiments" / "fomaml_polyp_skin.yaml")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ----------------------------------------------------------------------------- metaseg meta-train
def test_meta_train_misspelt_learner_option_is_one_line_listing_the_accepted_ones(capsys):
    from metaseg.cli import main

    assert main(["meta-train", "--config", CONFIG, "--model.learner.inner_stpes", "3"]) == 2
    line = one_line_error(capsys)
    assert "inner_stpes" in line and "accepted: inner_steps, inner_lr" in line and "loss" in line


@pytest.mark.parametrize("override, expected", [
    (["--model.learner.inner_steps", "abc"], "model.learner.inner_steps: expected int, got 'abc'"),
    (["--model.model.encoder_dept", "2"], "model.model.encoder_dept: unknown option for model 'unet'"),
    (["--model.learner.name", "reptile"], "model.learner.name: unknown learner 'reptile'"),
    # a value the factory itself refuses is named where the user wrote it, not as "learner.loss"
    (["--model.learner.loss", "nosuch"], "model.learner.loss: unknown loss 'nosuch'"),
])
def test_meta_train_ill_typed_or_unknown_values_are_one_line(capsys, override, expected):
    from metaseg.cli import main

    assert main(["meta-train", "--config", CONFIG, *override]) == 2
    assert expected in one_line_error(capsys)


def test_meta_train_help_lists_every_learner_and_model_option(capsys):
    from metaseg.commands.train import run_argv

    assert run_argv(["--help"]) == 0
    out = capsys.readouterr().out
    section = out.split("learner options", 1)[1]
    for text in ("maml: inner_steps: int = 5", "cg_steps: int = 5", "loss: str = 'bce_dice'", "sam_adapter: algorithm",
                 "support_prior: no options", "model options", "unet: encoder_name: str = 'resnet18'",
                 "decoder_channels: Sequence[int]", "medsam_lite: image_size: int = 128"):
        assert text in section, text
    assert set(LEARNERS) | set(MODELS) <= {line.split(":")[0].strip() for line in section.splitlines() if ": " in line}


def test_module_and_checkpoint_rebuild_check_options_before_building():
    from metaseg.training.module import MetaSegModule

    with pytest.raises(MetasegError, match=r"model.learner.inner_stpes: unknown option for learner 'maml'"):
        MetaSegModule(learner={"name": "maml", "inner_stpes": 1})
    with pytest.raises(MetasegError, match=r"model.model.in_channels: expected int, got '3'"):
        MetaSegModule(model={"kind": "unet", "in_channels": "3"}, learner={"name": "maml"})


# ----------------------------------------------------------------------------- the registry itself
def test_building_one_learner_imports_only_its_module():
    """Registration is the table, not a side effect of importing every learner."""
    code = ("import sys; from metaseg.meta import create_learner; create_learner('imaml'); "
            "print(sorted(m for m in sys.modules if m.startswith('metaseg.meta.learners.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "['metaseg.meta.learners.common', 'metaseg.meta.learners.imaml']"


def test_every_table_entry_resolves_and_lists_its_options():
    for registry in (LEARNER_REGISTRY, MODEL_REGISTRY):
        for name in registry.names():
            assert callable(registry.factory(name, registry.kind))
            registry.options(name)  # the signature's annotations resolve
    assert list(LEARNER_REGISTRY.options("fomaml")) == ["inner_steps", "inner_lr", "meta_sgd", "meta_sgd_per",
                                                        "inner_optimizer", "loss", "vmap_tasks"]


def test_create_learner_and_model_check_options_in_one_line():
    with pytest.raises(MetasegError, match=r"learner.inner_stpes: unknown option .*did you mean 'inner_steps'"):
        create_learner("maml", inner_stpes=3)
    with pytest.raises(MetasegError, match=r"learner.first_order: expected bool, got 'yes'"):
        create_learner("maml", first_order="yes")
    with pytest.raises(MetasegError, match=r"model.encoder_dept: unknown option for model 'unet'"):
        create_model("unet", encoder_dept=2)
    create_learner("imaml", lam=2)  # an int is a float


def test_sam_adapter_options_are_its_algorithms():
    with pytest.raises(MetasegError, match=r"learner.cg_steps: unknown option for learner 'sam_adapter'.*inner_steps"):
        create_learner("sam_adapter", algorithm="maml", cg_steps=3)  # an iMAML option under MAML
    assert create_learner("sam_adapter", algorithm="imaml", cg_steps=3).inner.cg_steps == 3


@pytest.mark.parametrize("value, annotation, ok", [
    (3, int, True), (True, int, False), (3, float, True), ("3", float, False), (None, "str | None", True),
    ("a", "str | None", True), ([64, 32], "Sequence[int]", True), ([64, "x"], "Sequence[int]", False),
    ((1, 2), "Sequence[int]", True), ("ab", "Sequence[str]", False),
])
def test_value_type_matching(value, annotation, ok):
    from typing import Sequence  # noqa: F401  (for the annotations below)

    resolved = eval(annotation) if isinstance(annotation, str) else annotation  # noqa: S307 - test literals
    assert matches(value, resolved) is ok


# ----------------------------------------------------------------------------- loss option
def my_weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user's loss for the dotted-path test: BCE with foreground weighted 3x."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(3.0, dtype=logits.dtype))


def test_loss_option_changes_the_meta_gradient_and_accepts_a_dotted_path():
    model, ep = tiny_net(), random_episode()
    default = meta_grads(create_learner("maml", inner_steps=2), model, ep)
    bce = meta_grads(create_learner("maml", inner_steps=2, loss="bce"), model, ep)
    dotted = meta_grads(create_learner("maml", inner_steps=2, loss="metaseg.losses:bce_loss"), model, ep)
    assert not all(torch.allclose(a, b) for a, b in zip(default, bce))
    assert all(torch.equal(a, b) for a, b in zip(bce, dotted))
    for name in ("imaml", "transfer", "fomaml"):
        assert not all(torch.allclose(a, b) for a, b in zip(meta_grads(create_learner(name), model, ep),
                                                            meta_grads(create_learner(name, loss="focal_dice"), model, ep)))


def test_second_order_maml_with_a_user_loss_equals_finite_differences():
    """The configured loss is the one differentiated in both loops: MAML's meta-gradient with a
    user's loss matches central differences of that loss's meta-objective."""
    model, ep = tiny_net(), random_episode()
    learner = create_learner("maml", inner_steps=2, loss="tests.test_registry:my_weighted_bce")
    grads = meta_grads(learner, model, ep)
    params = list(learner.meta_parameters(model))
    torch.manual_seed(0)
    direction = [torch.randn_like(g) for g in grads]

    def objective(sign: float, eps: float = 1e-5) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        fast = learner.adapt(model, ep.support_x, ep.support_y)
        with torch.no_grad():
            value = float(my_weighted_bce(learner.predict(model, fast, ep.query_x), ep.query_y))
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
        return value

    fd = (objective(1) - objective(-1)) / 2e-5
    analytic = float(sum((g * d).sum() for g, d in zip(grads, direction)))
    assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("loss, message", [
    ("dcie", "learner.loss: unknown loss 'dcie'; known: bce_dice, bce, dice, focal_dice"),
    ("no.such.module:fn", "learner.loss: cannot load loss 'no.such.module:fn'"),
    ("metaseg.losses:LOSSES", "learner.loss: 'metaseg.losses:LOSSES' is not a function"),
])
def test_unknown_loss_is_one_line(loss, message):
    with pytest.raises(MetasegError) as info:
        create_learner("fomaml", loss=loss)
    assert message in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- the benchmark's method fragments
@pytest.mark.parametrize("section, key, value, expected", [
    ("learner", "inner_steps", "abc", "methods.fomaml.model.learner.inner_steps: expected int, got 'abc'"),
    ("learner", "inner_stpes", 3, "methods.fomaml.model.learner.inner_stpes: unknown option for learner 'fomaml'"),
    ("model", "encoder_dept", 2, "methods.fomaml.model.model.encoder_dept: unknown option for model 'unet'"),
])
def test_benchmark_method_fragment_options_are_checked_by_the_same_registry(section, key, value, expected):
    import copy

    from benchmarks.fewshot import check_config
    from tests.test_fewshot import TINY

    bad = copy.deepcopy(TINY)
    model = bad["methods"]["fomaml"].setdefault("model", {})
    if section == "model":
        model["model"] = {**(bad["experiment"]["model"].get("model") or {"kind": "unet"}), key: value}
    else:
        model["learner"][key] = value
    with pytest.raises(MetasegError) as info:
        check_config(bad)
    assert expected in str(info.value) and "\n" not in str(info.value)
