"""MADE and FVSBN through the fast masked linear layer: forward passes (``forward.py``),
the affine flow's density direction (``affine_density.py``) and one-pass samplers
(``sample.py``, backends in ``launchers.py``), the Bernoulli head in one autograd node
(``bernoulli_head.py``)."""
from .affine_density import affine_density
from .bernoulli_head import bernoulli_log_prob
from .forward import fvsbn_logits, made_forward
from .launchers import CPP_SAMPLE_DTYPES, HEADS
from .sample import check_finite_parameters, fvsbn_sample, made_sample

__all__ = ["CPP_SAMPLE_DTYPES", "HEADS", "affine_density", "bernoulli_log_prob", "check_finite_parameters", "fvsbn_logits", "fvsbn_sample",
           "made_forward", "made_sample"]
