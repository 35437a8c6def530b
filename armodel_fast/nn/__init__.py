"""Drop-in ``nn.Module`` layers with a ``backend=`` choice."""
from .arrnn import ARRNN
from .categorical_nade import CategoricalNADE
from .fvsbn import FVSBN
from .made import MADE
from .masked_linear import MaskedLinear
from .nade import NADE
from .rnade import RNADE

__all__ = ["ARRNN", "CategoricalNADE", "FVSBN", "MADE", "MaskedLinear", "NADE", "RNADE"]
