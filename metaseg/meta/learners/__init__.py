"""The built-in learners, one module each (listed by name in `metaseg.registry.LEARNERS`).

maml / fomaml (maml.py), imaml (imaml.py) and the supervised `transfer` baseline (transfer.py)
all run on `metaseg.meta.core`; `common.py` holds what they share (options, loss, adapt, predict).
`sam_adapter` (sam_adapter.py) runs one of them over a SAM model's adapters;
`incontext` (incontext.py) meta-trains the in-context segmenters (no gradient step at test time);
`support_prior` (support_prior.py) is the learning-free floor: the mean support mask cut to the supports' mean area.
"""
