"""A derivation in your own file: the multi-class focal loss and its hand-derived gradient.

Check it (and get a report for a paper's appendix) with::

    python -m jaxent verify --module examples/my_derivation.py --markdown report.md

Focal loss (Lin et al., 2017) on logits z with integer label y, p = softmax(z):

    L(z, y) = -(1 - p_y)^gamma log p_y

    dL/dz = (e_y - p) [gamma p_y (1 - p_y)^(gamma - 1) log p_y - (1 - p_y)^gamma]

(from dL/dp_y = gamma (1 - p_y)^(gamma-1) log p_y - (1 - p_y)^gamma / p_y and
dp_y/dz = p_y (e_y - p)). ``focal_loss`` differentiates with this formula as a
``jax.custom_jvp``; ``focal_loss_plain`` is the definition autodiff and finite
differences check it against.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxent.derivations import Case, derivation

GAMMA = 2.0
K = 5


def focal_loss_plain(z, label):
    """The definition, in jax.numpy only."""
    log_p = jax.nn.log_softmax(z)[label]
    return -((1.0 - jnp.exp(log_p)) ** GAMMA) * log_p


@jax.custom_jvp
def focal_loss(z, label):
    """What a training loop would call: the value, differentiated by the closed form."""
    return focal_loss_plain(z, label)


@focal_loss.defjvp
def _focal_loss_jvp(primals, tangents):
    z, label = primals
    dz, _ = tangents
    return focal_loss(z, label), jnp.sum(focal_loss_grad(z, label) * dz)


@derivation(
    name="focal_loss",
    plain=focal_loss_plain,
    function=focal_loss,
    argnums=0,
    sample=lambda rng: (rng.normal(0.0, 2.0, size=K), rng.integers(0, K)),
    edge_cases=(
        Case("confident and right", (np.array([9.0, 0.0, -1.0, 0.5, 0.0]), 0)),
        Case("confident and wrong", (np.array([9.0, 0.0, -1.0, 0.5, 0.0]), 2)),
    ),
    formula="dL/dz = (e_y - p) [g p_y (1 - p_y)^(g-1) log p_y - (1 - p_y)^g]",
    convention="gamma = 2, K = 5 classes, integer label.",
)
def focal_loss_grad(z, label):
    p = jax.nn.softmax(z)
    p_y, log_p_y = p[label], jax.nn.log_softmax(z)[label]
    e_y = (jnp.arange(z.shape[-1]) == label).astype(z.dtype)
    scale = GAMMA * p_y * (1.0 - p_y) ** (GAMMA - 1.0) * log_p_y - (1.0 - p_y) ** GAMMA
    return (e_y - p) * scale
