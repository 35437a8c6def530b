"""MADE and FVSBN through the fast masked linear layer: forward passes (``forward.py``)
and one-pass samplers (``sample.py``, backends in ``launchers.py``)."""
from .forward import fvsbn_logits, made_forward
from .launchers import CPP_SAMPLE_DTYPES, HEADS
from .sample import check_finite_parameters, fvsbn_sample, made_sample

__all__ = ["CPP_SAMPLE_DTYPES", "HEADS", "check_finite_parameters", "fvsbn_logits", "fvsbn_sample", "made_forward",
           "made_sample"]
