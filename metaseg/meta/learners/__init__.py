"""Built-in learners; importing this package registers them with `metaseg.meta.register_learner`.

maml / fomaml (maml.py), imaml (imaml.py) and the supervised `transfer` baseline (transfer.py)
all run on `metaseg.meta.core`; `common.py` holds what they share (options, adapt, predict).
`sam_adapter` (sam_adapter.py) runs one of them over a SAM model's adapters;
`support_prior` (support_prior.py) is the learning-free floor: the mean support mask cut to the supports' mean area.
"""
from metaseg.meta.learners.common import InnerLoopLearner
from metaseg.meta.learners.imaml import IMAML
from metaseg.meta.learners.maml import FOMAML, MAML
from metaseg.meta.learners.sam_adapter import SamAdapter
from metaseg.meta.learners.support_prior import SupportPrior
from metaseg.meta.learners.transfer import Transfer

__all__ = ["InnerLoopLearner", "MAML", "FOMAML", "IMAML", "Transfer", "SupportPrior", "SamAdapter"]
