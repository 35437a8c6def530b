"""Drop-in ``nn.Module`` layers with a ``backend=`` choice.

NADE-family modules live in ``nade.py`` (its ``__all__`` is exported here and by
``armodel_fast``), so adding one touches no export list elsewhere.
"""
from . import nade as _nade
from .arrnn import ARRNN
from .categorical_nade import CategoricalNADE
from .fvsbn import FVSBN
from .made import MADE
from .masked_linear import MaskedLinear
from .nade import *  # noqa: F401,F403  (NADE and every model added beside it)
from .rnade import RNADE

__all__ = sorted({"ARRNN", "CategoricalNADE", "FVSBN", "MADE", "MaskedLinear", "RNADE", *_nade.__all__})
