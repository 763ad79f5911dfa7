"""Checkpoints a user hands in: weights_only loading, one-line errors for missing, corrupt, wrong
and foreign files, and trainable-only checkpoints for models with a frozen base (SAM)."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from metaseg.checkpoints import load_module, read_checkpoint
from metaseg.cli import main as cli_main
from metaseg.errors import MetasegError
from tests.test_training import run_tiny


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real metaseg checkpoint after two outer steps of MAML on the tiny synthetic config."""
    tmp = tmp_path_factory.mktemp("ckpt")
    return Path(run_tiny(tmp, "--trainer.max_steps", "2", "--run_test", "false")["last"])


def test_checkpoint_is_weights_only_and_rebuilds_model_and_learner(tiny_ckpt: Path) -> None:
    raw = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)  # plain containers only
    assert raw["hyper_parameters"]["learner"]["name"] == "maml"
    assert raw["metaseg"]["image_size"] == 32
    module = load_module(tiny_ckpt)
    assert type(module.learner).__name__ == "MAML"
    for name, value in module.state_dict().items():
        assert torch.equal(value, raw["state_dict"][name]), name
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(module.model(x), load_module(tiny_ckpt).model(x))


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(MetasegError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and match in message, message
    return message


def test_missing_checkpoint(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "absent.ckpt", "no such file")


def test_truncated_checkpoint(tmp_path: Path, tiny_ckpt: Path) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(tiny_ckpt.read_bytes()[:5000])
    _one_line_error(broken, "is a zip file but not a readable torch checkpoint (corrupt or truncated)")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    _one_line_error(garbage, "is not a torch checkpoint")


def test_text_file_says_what_it_is_not_without_torch_internals(tmp_path: Path) -> None:
    """A text file used to be reported as 'corrupt or truncated: pop from empty list' (torch's internals)."""
    text = tmp_path / "notes.ckpt"
    text.write_text("epoch 3: val_dice 0.71\n" * 20)
    message = _one_line_error(text, "is not a torch checkpoint (neither a zip archive nor a pickle file")
    assert "corrupt" not in message and "pop from" not in message and "KeyError" not in message
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _one_line_error(empty, "is empty, not a torch checkpoint")
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2)[:-3])  # a pickle stream cut short
    _one_line_error(damaged, "is a pickle file but not a readable torch checkpoint")


def test_random_state_dict_and_other_lightning_checkpoint(tmp_path: Path) -> None:
    bare = tmp_path / "bare.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, bare)
    _one_line_error(bare, "not a metaseg checkpoint")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1},
                "pytorch-lightning_version": "2.6.6", "global_step": 3}, other)
    _one_line_error(other, "not one of metaseg")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    _one_line_error(tensor, "not a metaseg checkpoint")


class _Exploit:
    """Unpickling this would create a file: weights_only loading must refuse before running it."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_foreign_pickle_is_refused_without_running_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": {}, "payload": _Exploit(target)}, fh)
    refused = "was refused: it holds code or Python objects"
    _one_line_error(evil, refused)
    assert not target.exists()
    torch_saved = tmp_path / "evil_torch.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(target)}, torch_saved)
    message = _one_line_error(torch_saved, refused)
    assert not target.exists()
    assert "open" in message  # names what it holds ...
    for advice in ("allowlist", "safe_globals", "weights_only", "trust"):  # ... but never how to load it anyway
        assert advice not in message.lower(), message


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 64)
    code = cli_main(["evaluate", "--checkpoint", str(bad), "--dataset", "synthetic:rings", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("metaseg: error: --checkpoint") and str(bad) in err[0]


def test_model_with_frozen_base_stores_only_trainable_state(tmp_path: Path) -> None:
    """SAM-like models (trainable_state_dict/base_fingerprint hooks): the checkpoint holds the
    adapters only, loads back exactly, and refuses a different frozen base."""
    from metaseg.training.module import MetaSegModule

    sam = {"kind": "sam", "variant": "tiny", "image_size": 32, "seed": 0}
    module = MetaSegModule(model=sam, learner={"name": "fomaml", "inner_steps": 1})
    with torch.no_grad():
        for p in module.model.parameters():
            if p.requires_grad:
                p.add_(0.01)  # trained adapters differ from their initial values
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    trainable = {f"model.{k}" for k in module.model.trainable_state_dict()}
    model_keys = {k for k in ckpt["state_dict"] if k.startswith("model.")}
    assert model_keys == trainable and len(trainable) < len([k for k in module.state_dict() if k.startswith("model.")])
    path = tmp_path / "sam.ckpt"
    torch.save(ckpt, path)
    loaded = load_module(path)
    for name, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name

    ckpt["metaseg"]["base_fingerprint"] = {"name": "random-init:tiny:1", "sha256": "0" * 64}
    torch.save(ckpt, path)
    with pytest.raises(MetasegError, match="refusing|different"):
        load_module(path)
