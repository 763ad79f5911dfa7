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


def learner_class(name: str, option: str = "learner.name") -> Callable[..., MetaLearner]:
    """The registered class for `name`, without building it (callers that must know what a learner
    is before building one: the benchmark); unknown names are a one-line error naming `option`."""
    from metaseg.errors import MetasegError
    import metaseg.meta.learners  # noqa: F401  (registers the built-in learners)

    if name not in LEARNER_REGISTRY:
        raise MetasegError(f"{option}: unknown learner {name!r}; known: {sorted(LEARNER_REGISTRY)}")
    return LEARNER_REGISTRY[name]


def create_learner(name: str, **kwargs: Any) -> MetaLearner:
    """Build a learner by name; unknown names are a one-line error naming the option."""
    return learner_class(name)(**kwargs)
