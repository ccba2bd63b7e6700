"""Label-smoothed cross-entropy: jaxent's integer-label kernel against its peers.

Peers, measured in the same process on the same arrays, value and gradient of
the summed per-example loss with respect to the logits (one jitted function):

* ``optax``: ``optax.smooth_labels`` on a materialised one-hot, then
  ``optax.losses.softmax_cross_entropy`` (what an optax user writes);
* ``log_softmax``: the plain formula ``-(1-eps) lp_y - eps mean_j lp_j`` on
  ``jax.nn.log_softmax`` (no one-hot, autodiff gradient);
* ``torch``: ``F.cross_entropy(..., label_smoothing=eps)`` (only if torch imports).

jaxent's ``label_smoothed_cross_entropy`` with integer labels never builds the
``[N, K]`` one-hot or smoothed array; the memory columns show what that saves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxent
from benchmarks._harness import Case, Impl, register

try:  # optional peer
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional
    torch = None

SHAPE = (4096, 32768)
QUICK_SHAPE = (64, 512)
EPSILON = 0.1
DTYPES = ["float32", "bfloat16"]


def _logits(n: int, v: int, dtype: str) -> jax.Array:
    z = jax.random.normal(jax.random.key(0), (n, v), jnp.float32) * 3
    return z.astype(dtype)


def _labels(n: int, v: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(1).integers(0, v, n), jnp.int32)


def _fwdbwd(loss_fn):
    def total(z, y):
        return jnp.sum(loss_fn(z, y).astype(jnp.float32))

    return jax.jit(jax.value_and_grad(total))


def _jaxent(z, y):
    return jaxent.label_smoothed_cross_entropy(z, y, EPSILON)


def _optax(z, y):
    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
    return optax.losses.softmax_cross_entropy(z, optax.smooth_labels(onehot, EPSILON))


def _plain(z, y):
    lp = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
    lp_y = jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]
    return (-(1 - EPSILON) * lp_y - EPSILON * jnp.mean(lp, axis=-1)).astype(z.dtype)


def _impls(n: int, v: int, dtype: str) -> dict[str, Impl]:
    z, y = _logits(n, v, dtype), _labels(n, v)
    impls = {
        "jaxent": Impl(_fwdbwd(_jaxent), (z, y)),
        "optax": Impl(_fwdbwd(_optax), (z, y)),
        "log_softmax": Impl(_fwdbwd(_plain), (z, y)),
    }
    if torch is not None:
        if dtype == "bfloat16":
            tz = torch.from_numpy(np.array(z.astype(jnp.float32))).to(torch.bfloat16)
        else:
            tz = torch.from_numpy(np.array(z))
        ty = torch.from_numpy(np.array(y, np.int64))

        def run(z, y):
            z = z.detach().requires_grad_(True)
            loss = F.cross_entropy(z, y, label_smoothing=EPSILON, reduction="none").float().sum()
            (g,) = torch.autograd.grad(loss, z)
            return loss, g

        impls["torch"] = Impl(run, (tz, ty), "torch")
    return impls


def _register() -> None:
    n, v = SHAPE
    for dtype in DTYPES:
        register(
            Case(
                f"label_smoothing/fwdbwd/{n}x{v}/{dtype}",
                lambda quick, dtype=dtype: _impls(*(QUICK_SHAPE if quick else SHAPE), dtype),
                description=f"label-smoothed CE (eps={EPSILON}, integer labels), fwd+bwd",
                repeats=3,
                memory=True,
                targets={"optax": 1.05},
                memory_targets={"optax": 1.0},
            )
        )


_register()
