"""Plain PyTorch reference implementations: the oracle every kernel is tested against."""
from .arrnn import arrnn_log_prob, arrnn_logits, arrnn_sample
from .categorical_nade import (categorical_nade_log_prob, categorical_nade_logits_cumsum,
                               categorical_nade_logits_loop, categorical_nade_sample)
from .fvsbn import fvsbn_log_prob, fvsbn_logits, fvsbn_sample
from .heads import (bernoulli_log_prob, bernoulli_sample, categorical_log_prob, categorical_sample,
                    gaussian_mixture_log_prob, gaussian_mixture_sample)
from .made import hidden_degrees, input_degrees, made_forward, sample_by_passes
from .masked_linear import degree_mask, masked_linear
from .nade import inverse_order, nade_log_prob, nade_logits_cumsum, nade_logits_loop, nade_sample
from .rnade import rnade_log_prob, rnade_params_cumsum, rnade_params_loop, rnade_sample
