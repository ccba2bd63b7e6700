"""Batch evaluation: every metric of one batch against one cross-entropy forward.

``jaxent``: :func:`jaxent.metrics.from_logits` — the states of NLL, perplexity,
accuracy, top-5 accuracy, ECE/MCE/RMSCE (15 bins), Brier score and predictive
entropy of one batch — in one jitted call. They are all reductions of the same
row statistics (max, sum of exponentials, sum of their squares and of
e (z - m), label rank): the target is at most 1.5x ``optax``'s integer-label
cross-entropy forward (per-example losses) on the same logits, with no N x V
buffer written. ``separate``
computes the same numbers the way one would by hand (log_softmax, softmax,
argmax, top_k, one-hot), for comparison.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._harness import Case, Impl, register
from jaxent import metrics

SHAPE = (4096, 32768)
QUICK_SHAPE = (64, 512)


def _jaxent(z, y):
    states = metrics.from_logits(z, y, top_k=5)
    return {k: v.compute() for k, v in states.items()}


def _optax(z, y):
    return optax.losses.softmax_cross_entropy_with_integer_labels(z, y)


def _separate(z, y):
    """The hand-written version: several N x V temporaries."""
    ls = jax.nn.log_softmax(z, axis=-1)
    p = jnp.exp(ls)
    nll = -jnp.take_along_axis(ls, y[:, None], axis=-1)[:, 0]
    conf, pred = jnp.max(p, axis=-1), jnp.argmax(p, axis=-1)
    top5 = jax.lax.top_k(z, 5)[1]
    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)
    brier = jnp.sum(jnp.square(p - onehot), axis=-1)
    ent = -jnp.sum(p * ls, axis=-1)
    bins = jnp.clip((conf * 15).astype(jnp.int32), 0, 14)
    correct = (pred == y).astype(z.dtype)
    count = jnp.zeros(15).at[bins].add(1.0)
    gap = jnp.zeros(15).at[bins].add(correct - conf)
    return {
        "nll": jnp.mean(nll),
        "accuracy": jnp.mean(correct),
        "top5": jnp.mean(jnp.any(top5 == y[:, None], axis=-1).astype(z.dtype)),
        "ece": jnp.sum(jnp.abs(gap)) / jnp.sum(count),
        "brier": jnp.mean(brier),
        "entropy": jnp.mean(ent),
    }


def _build(quick: bool) -> dict[str, Impl]:
    n, v = QUICK_SHAPE if quick else SHAPE
    key = jax.random.key(int(np.random.default_rng(0).integers(1 << 31)))
    z = jax.random.normal(key, (n, v), jnp.float32) * 3
    y = jnp.asarray(np.random.default_rng(1).integers(0, v, n), jnp.int32)
    return {
        "jaxent": Impl(jax.jit(_jaxent), (z, y)),
        "optax": Impl(jax.jit(_optax), (z, y)),
        "separate": Impl(jax.jit(_separate), (z, y)),
    }


register(
    Case(
        f"metrics/all/{SHAPE[0]}x{SHAPE[1]}/float32",
        _build,
        description="NLL, accuracy, top-5, ECE/MCE, Brier, entropy of one batch vs one CE forward",
        targets={"optax": 1.5},
        floor="read",
    )
)
