"""Meta-learners over one functional core (`metaseg.meta.core`).

`create_learner(name, **kwargs)` builds one by registry name (`maml`, `fomaml`, `imaml`,
`transfer`, `sam_adapter` uses the same learners over adapter parameters).
"""
from __future__ import annotations

from typing import Any, Callable

from metaseg.meta.base import MetaLearner

LEARNER_REGISTRY: dict[str, Callable[..., MetaLearner]] = {}


def register_learner(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        LEARNER_REGISTRY[name] = cls
        return cls

    return deco


def create_learner(name: str, **kwargs: Any) -> MetaLearner:
    """Build a learner by name; unknown names are a one-line error naming the option."""
    from metaseg.errors import MetasegError
    import metaseg.meta.learners  # noqa: F401  (registers the built-in learners)

    if name not in LEARNER_REGISTRY:
        raise MetasegError(f"learner.name: unknown learner {name!r}; known: {sorted(LEARNER_REGISTRY)}")
    return LEARNER_REGISTRY[name](**kwargs)
