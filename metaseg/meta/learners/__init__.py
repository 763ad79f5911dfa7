"""Built-in learners; importing this package registers them with `metaseg.meta.register_learner`.

maml / fomaml (maml.py), imaml (imaml.py) and the supervised `transfer` baseline (transfer.py)
all run on `metaseg.meta.core`; `common.py` holds what they share (options, adapt, predict).
`support_prior` (support_prior.py) is the learning-free floor: the mean support mask cut to the supports' mean area.
"""
from metaseg.meta.learners.common import InnerLoopLearner
from metaseg.meta.learners.imaml import IMAML
from metaseg.meta.learners.maml import FOMAML, MAML
from metaseg.meta.learners.support_prior import SupportPrior
from metaseg.meta.learners.transfer import Transfer

__all__ = ["InnerLoopLearner", "MAML", "FOMAML", "IMAML", "Transfer", "SupportPrior"]

# The SAM-adapter alias lives beside the SAM model code; importing it here registers it with the rest.
from metaseg.meta import sam_adapter  # noqa: E402,F401
