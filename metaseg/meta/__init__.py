"""Meta-learners over one functional core (`metaseg.meta.core`).

`create_learner(name, **options)` builds one by name (`maml`, `fomaml`, `imaml`, `transfer`,
`sam_adapter`, `support_prior`); the names and their modules are listed in `metaseg.registry`,
which also checks the options against the learner's signature.
"""
from __future__ import annotations

from typing import Any, Callable

from metaseg.meta.base import MetaLearner
from metaseg.registry import LEARNER_REGISTRY


def learner_class(name: str, where: str = "learner") -> Callable[..., MetaLearner]:
    """The class behind `name`, without building it (callers that must know what a learner is
    before building one: the benchmark); unknown names are a one-line error naming `where`.name."""
    return LEARNER_REGISTRY.factory(name, where)


def create_learner(name: str, **options: Any) -> MetaLearner:
    """Build a learner by name; an unknown name, option or ill-typed value is a one-line error."""
    return LEARNER_REGISTRY.build(name, options, "learner")
