"""jaxent: information theory for training on JAX.

The single list of what is public. Each section re-exports one private module;
a function's module is named after its family.
"""

# softmax family
from jaxent._softmax import log_softmax as log_softmax
from jaxent._softmax import logit as logit
from jaxent._softmax import logsumexp as logsumexp
from jaxent._softmax import softmax as softmax

# information measures
from jaxent._information import binary_entropy as binary_entropy
from jaxent._information import cross_entropy as cross_entropy
from jaxent._information import entropy as entropy
from jaxent._information import entropy_from_logits as entropy_from_logits
from jaxent._information import self_information as self_information

# divergences
from jaxent._divergences import js_divergence as js_divergence
from jaxent._divergences import js_divergence_from_logits as js_divergence_from_logits
from jaxent._divergences import kl_divergence as kl_divergence
from jaxent._divergences import kl_divergence_diag_gaussian as kl_divergence_diag_gaussian
from jaxent._divergences import kl_divergence_from_logits as kl_divergence_from_logits
from jaxent._divergences import total_variation as total_variation
from jaxent._divergences import total_variation_from_logits as total_variation_from_logits

# losses
from jaxent._losses import binary_cross_entropy as binary_cross_entropy
from jaxent._losses import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jaxent._losses import softmax_cross_entropy as softmax_cross_entropy
from jaxent._losses import (
    softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels,
)
from jaxent._losses import weighted_mean as weighted_mean

# label smoothing (issue 4)
from jaxent._smoothing import label_smoothed_cross_entropy as label_smoothed_cross_entropy
from jaxent._smoothing import optimal_logit_gap as optimal_logit_gap
from jaxent._smoothing import smooth_labels as smooth_labels
from jaxent._smoothing import with_label_smoothing as with_label_smoothing

# large vocabularies and sharding (issue 5)
from jaxent._large_vocab import linear_cross_entropy as linear_cross_entropy
from jaxent._large_vocab import vocab_parallel_cross_entropy as vocab_parallel_cross_entropy
from jaxent._large_vocab import (
    vocab_parallel_linear_cross_entropy as vocab_parallel_linear_cross_entropy,
)

# From hidden states and vocabulary shards: log-prob, entropy, KL, JS (issue 13)
from jaxent._large_vocab import linear_js_divergence as linear_js_divergence
from jaxent._large_vocab import linear_kl_divergence as linear_kl_divergence
from jaxent._large_vocab import linear_log_prob_and_entropy as linear_log_prob_and_entropy
from jaxent._large_vocab import vocab_parallel_kl_divergence as vocab_parallel_kl_divergence
from jaxent._large_vocab import (
    vocab_parallel_log_prob_and_entropy as vocab_parallel_log_prob_and_entropy,
)

# RL and distillation (issue 12)
from jaxent._distillation import sparse_kl_divergence as sparse_kl_divergence
from jaxent._rl import aggregate_loss as aggregate_loss
from jaxent._rl import kl_estimate as kl_estimate
from jaxent._rl import log_prob_from_logits as log_prob_from_logits

# derivations and verification (issue 3)
from jaxent import derivations as derivations
from jaxent.verify import VerifyResult as VerifyResult
from jaxent.verify import verify as verify

# checked mode (issue 6)
from jaxent._checked import checked as checked

# evaluation: Brier score, ensembles, mergeable metrics (issue 11)
from jaxent._evaluation import brier_score as brier_score
from jaxent._evaluation import ensemble_log_softmax as ensemble_log_softmax
from jaxent._evaluation import mutual_information as mutual_information
from jaxent._evaluation import predictive_entropy as predictive_entropy
from jaxent import metrics as metrics

__version__ = "0.1.0"

#: The public names (modules ``jaxent.metrics`` and ``jaxent.derivations`` aside).
__all__ = [
    "VerifyResult",
    "aggregate_loss",
    "binary_cross_entropy",
    "binary_entropy",
    "brier_score",
    "checked",
    "cross_entropy",
    "ensemble_log_softmax",
    "entropy",
    "entropy_from_logits",
    "js_divergence",
    "js_divergence_from_logits",
    "kl_divergence",
    "kl_divergence_diag_gaussian",
    "kl_divergence_from_logits",
    "kl_estimate",
    "label_smoothed_cross_entropy",
    "linear_cross_entropy",
    "linear_js_divergence",
    "linear_kl_divergence",
    "linear_log_prob_and_entropy",
    "log_prob_from_logits",
    "log_softmax",
    "logit",
    "logsumexp",
    "mutual_information",
    "optimal_logit_gap",
    "predictive_entropy",
    "self_information",
    "sigmoid_binary_cross_entropy",
    "smooth_labels",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "sparse_kl_divergence",
    "total_variation",
    "total_variation_from_logits",
    "verify",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_kl_divergence",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_log_prob_and_entropy",
    "weighted_mean",
    "with_label_smoothing",
]
