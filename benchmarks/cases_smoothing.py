"""Label-smoothed cross-entropy: the two jaxent entry points against their peers.

Registered through :func:`benchmarks.cases_cross_entropy.register_family`, so
each gets the same modes as the other losses (``fwd``, ``fwdbwd``, ``eager``,
``compile``; see that module):

* ``label_smoothing``: ``jaxent.label_smoothed_cross_entropy(z, y, 0.1)``
  with integer labels, which never builds the ``[N, K]`` one-hot or smoothed
  array; ``optax``: ``optax.smooth_labels`` on a materialised one-hot, then
  ``optax.losses.softmax_cross_entropy`` (what an optax user writes);
  ``log_softmax``: ``-(1-eps) lp_y - eps mean_j lp_j``; ``torch``:
  ``F.cross_entropy(..., label_smoothing=eps)``.
* ``with_label_smoothing``: ``jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, 0.1)``
  on one-hot labels given as an array; ``optax``: ``softmax_cross_entropy(z,
  smooth_labels(y, eps))``; the plain formula and torch likewise.

``python -m benchmarks --only label_smoothing``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxent
from benchmarks.cases_cross_entropy import (
    Family,
    _int_labels,
    _logits,
    _ls32,
    _onehot,
    register_family,
    torch,
)

EPSILON = 0.1
F32 = jnp.float32


def _plain_smoothed(z, y):
    lp = _ls32(z)
    lp_y = jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]
    return (-(1 - EPSILON) * lp_y - EPSILON * jnp.mean(lp, axis=-1)).astype(z.dtype)


def _plain_with_smoothing(z, y):
    k = z.shape[-1]
    ys = y.astype(F32) * (1 - EPSILON) + EPSILON / k
    return (-jnp.sum(ys * _ls32(z), axis=-1)).astype(z.dtype)


def _optax_smoothed(z, y):
    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
    return optax.losses.softmax_cross_entropy(z, optax.smooth_labels(onehot, EPSILON))


def _optax_with_smoothing(z, y):
    return optax.losses.softmax_cross_entropy(z, optax.smooth_labels(y, EPSILON))


def _jaxent_smoothed(z, y):
    return jaxent.label_smoothed_cross_entropy(z, y, EPSILON)


_jaxent_with_smoothing = jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, EPSILON)


def _torch_smoothed(z, y):
    return torch.nn.functional.cross_entropy(z, y, label_smoothing=EPSILON, reduction="none")


register_family(
    "label_smoothing",
    Family(
        f"label_smoothed_cross_entropy (eps={EPSILON}, integer labels)",
        lambda n, v, dt: (_logits(n, v, dt), _int_labels(n, v)),
        _jaxent_smoothed,
        _optax_smoothed,
        _plain_smoothed,
    ),
    _torch_smoothed if torch is not None else None,
)
register_family(
    "with_label_smoothing",
    Family(
        f"with_label_smoothing(softmax_cross_entropy) (eps={EPSILON}, one-hot labels)",
        lambda n, v, dt: (_logits(n, v, dt), _onehot(n, v, dt)),
        _jaxent_with_smoothing,
        _optax_with_smoothing,
        _plain_with_smoothing,
    ),
    _torch_smoothed if torch is not None else None,
)
