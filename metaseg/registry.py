"""The built-in learners and models by name, and the options each one accepts.

Registration is explicit and in one place: the two tables below name every built-in as
"module:factory", and the module is imported only when that entry is built or its options are
read (registering is no side effect of importing, and this file imports neither layer). A
factory's options and their types are read from its signature, so the one-line error for a
misspelt or ill-typed option, `metaseg meta-train --help` and the benchmark's checks all come
from the same source: the factory itself.
"""
from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import types
import textwrap
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

from metaseg.errors import MetasegError

LEARNERS: dict[str, str] = {
    "maml": "metaseg.meta.learners.maml:MAML",
    "fomaml": "metaseg.meta.learners.maml:FOMAML",
    "imaml": "metaseg.meta.learners.imaml:IMAML",
    "transfer": "metaseg.meta.learners.transfer:Transfer",
    "sam_adapter": "metaseg.meta.learners.sam_adapter:SamAdapter",
    "support_prior": "metaseg.meta.learners.support_prior:SupportPrior",
    "incontext": "metaseg.meta.learners.incontext:InContext",
}

MODELS: dict[str, str] = {
    "unet": "metaseg.models.unet:create_unet",
    "sam": "metaseg.models.sam:create_sam",
    "medsam_lite": "metaseg.models.medsam_lite:create_medsam_lite",
    "incontext_unet": "metaseg.models.incontext:create_incontext_unet",
    "incontext_sam": "metaseg.models.incontext_sam:create_incontext_sam",
}


@dataclass(frozen=True)
class Option:
    """One keyword of a factory: its name, type annotation (resolved) and default."""

    name: str
    annotation: Any
    default: Any

    def describe(self) -> str:
        default = "" if self.default is inspect.Parameter.empty else f" = {self.default!r}"
        return f"{self.name}: {type_name(self.annotation)}{default}"


def type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def matches(value: Any, annotation: Any) -> bool:
    """Whether a config value (YAML builtins) fits an annotation: bool is no int, an int is a float,
    a list or tuple is a Sequence; annotations it does not know accept anything."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arm) for arm in args)
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(origin, type) and issubclass(origin, collections.abc.Sequence) and origin is not str:
        return isinstance(value, (list, tuple)) and all(matches(v, args[0] if args else Any) for v in value)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


class Registry:
    """Name -> "module:factory", with the factory's options and their checks."""

    def __init__(self, kind: str, key: str, table: Mapping[str, str]) -> None:
        self.kind, self.key, self.table = kind, key, dict(table)

    def names(self) -> list[str]:
        return sorted(self.table)

    def factory(self, name: Any, where: str) -> Callable[..., Any]:
        """The class or function behind `name`, imported now; unknown names are a one-line error."""
        if not isinstance(name, str) or name not in self.table:
            raise MetasegError(f"{where}.{self.key}: unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return _load(self.table[name])

    def options(self, name: str, where: str | None = None) -> dict[str, Option]:
        """The keyword options `name` accepts, in signature order (a `**options` catch-all is
        not listed: see `forwarded`)."""
        return _options(self.factory(name, where or self.kind))

    def forwarded(self, name: str, options: Mapping[str, Any], where: str) -> str | None:
        """For a factory that hands its other options on to another entry of this registry (e.g.
        sam_adapter to its `algorithm`), the name of that entry."""
        factory = self.factory(name, where)
        via = getattr(factory, "options_from", None)
        if via is None:
            return None
        return options.get(via, _options(factory)[via].default)

    def check(self, name: str, options: Mapping[str, Any], where: str) -> None:
        """One-line error for an unknown option (naming it and listing the accepted ones) or a value
        of the wrong type, before anything is built."""
        own = self.options(name, where)
        inner = self.forwarded(name, options, where)
        accepted = dict(own)
        if isinstance(inner, str) and inner in self.table:
            accepted.update({k: v for k, v in self.options(inner, where).items() if k not in own})
        for key, value in options.items():
            if key == self.key:
                continue
            if key not in accepted:
                close = difflib.get_close_matches(str(key), list(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listed = ", ".join(accepted) or "none"
                raise MetasegError(f"{where}.{key}: unknown option for {self.kind} {name!r}{hint}; accepted: {listed}")
            if not matches(value, accepted[key].annotation):
                raise MetasegError(f"{where}.{key}: expected {type_name(accepted[key].annotation)}, got {value!r}")

    def build(self, name: str, options: Mapping[str, Any], where: str) -> Any:
        """Check the options, then call the factory with them."""
        self.check(name, options, where)
        factory = self.factory(name, where)
        try:
            return factory(**{k: v for k, v in options.items() if k != self.key})
        except MetasegError as exc:
            # factories name their options as "learner.inner_lr" / "model.image_size"; say where the user
            # wrote them (e.g. "model.learner.inner_lr" in an experiment config)
            text, own = str(exc), f"{self.kind}."
            if where != self.kind and text.startswith(own):
                raise MetasegError(f"{where}.{text[len(own):]}") from None
            raise

    def help_text(self) -> str:
        """Every entry with its options, types and defaults (for --help and the docs)."""
        lines = []
        for name in self.names():
            factory = self.factory(name, self.kind)
            options = [o.describe() for o in _options(factory).values()]
            via = getattr(factory, "options_from", None)
            if via is not None:
                options.append(f"and the options of the learner named by {via}")
            lines.append(textwrap.fill(", ".join(options) or "no options", width=100,
                                       initial_indent=f"  {name}: ", subsequent_indent="      "))
        return "\n".join(lines)


def _load(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@lru_cache(maxsize=None)
def _options(factory: Callable[..., Any]) -> dict[str, Option]:
    function = factory.__init__ if isinstance(factory, type) else factory
    hints = typing.get_type_hints(function)
    out = {}
    for param in inspect.signature(factory).parameters.values():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        out[param.name] = Option(param.name, hints.get(param.name, param.annotation), param.default)
    return out


LEARNER_REGISTRY = Registry("learner", "name", LEARNERS)
MODEL_REGISTRY = Registry("model", "kind", MODELS)


def options_help() -> str:
    """The `metaseg meta-train --help` section on model.learner and model.model."""
    return ("learner options (--model.learner '{name: NAME, option: value, ...}' or --model.learner.OPTION value):\n"
            + LEARNER_REGISTRY.help_text()
            + "\n\nmodel options (--model.model '{kind: KIND, ...}' or --model.model.OPTION value):\n"
            + MODEL_REGISTRY.help_text())
