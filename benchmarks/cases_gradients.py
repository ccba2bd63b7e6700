"""Closed-form derivative rules against autodiff of the plain definition.

Each case times ``jax.value_and_grad`` (one jitted function, value and gradient
of the summed per-example loss with respect to the logits) of

* ``jaxent``: the public function, which differentiates with its
  ``jax.custom_jvp`` closed form;
* ``autodiff``: the plain, numerically stable definition written with
  ``jax.numpy`` (max-shifted ``log_softmax``, ``jnp.where``-cleaned
  ``p log p``), differentiated by JAX.

Cases: ``gradients/{ce_int,ce_soft,kl_logits,entropy_logits}/4096x32768/float32``.
The target is ``t_jaxent / t_autodiff <= 1.05`` (the issue asks for no more
time than autodiff; 5% is the run-to-run noise of a shared 2-core machine), and
a compiled peak memory no larger (1% slack for row-sized buffers).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

import jaxent
from benchmarks._harness import Case, Impl, register

SHAPE = (4096, 32768)
QUICK_SHAPE = (64, 512)


def _log_softmax(z: jax.Array) -> jax.Array:
    m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    shifted = z - m
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _plain_ce_int(z: jax.Array, y: jax.Array) -> jax.Array:
    return -jnp.take_along_axis(_log_softmax(z), y[:, None], axis=-1)[:, 0]


def _plain_ce_soft(z: jax.Array, y: jax.Array) -> jax.Array:
    return -jnp.sum(y * _log_softmax(z), axis=-1)


def _plain_kl(a: jax.Array, b: jax.Array) -> jax.Array:
    lp, lq = _log_softmax(a), _log_softmax(b)
    p = jnp.exp(lp)
    return jnp.sum(jnp.where(p > 0, p * (lp - lq), 0.0), axis=-1)


def _plain_entropy(z: jax.Array, _: jax.Array) -> jax.Array:
    lp = _log_softmax(z)
    p = jnp.exp(lp)
    return -jnp.sum(jnp.where(p > 0, p * lp, 0.0), axis=-1)


def _grad(loss: Callable[[jax.Array, jax.Array], jax.Array], argnum: int) -> Callable:
    return jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(loss(a, b)), argnums=argnum))


FAMILIES = {
    # name: (jaxent loss, plain loss, second argument, differentiated argument, what)
    "ce_int": (
        jaxent.softmax_cross_entropy_with_integer_labels,
        _plain_ce_int,
        "labels",
        0,
        "softmax CE, integer labels: d/dz = softmax(z) - onehot(y)",
    ),
    "ce_soft": (
        jaxent.softmax_cross_entropy,
        _plain_ce_soft,
        "probs",
        0,
        "softmax CE, soft labels: d/dz = (sum y) softmax(z) - y",
    ),
    "kl_logits": (
        jaxent.kl_divergence_from_logits,
        _plain_kl,
        "logits",
        1,
        "KL(softmax(a) || softmax(b)) in the student logits b: d/db = q - p",
    ),
    "entropy_logits": (
        lambda z, _: jaxent.entropy_from_logits(z),
        _plain_entropy,
        "logits",
        0,
        "entropy of softmax(z): d/dz = -p (log p + H)",
    ),
}


def _inputs(n: int, v: int, second: str) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(0))
    z = jax.random.normal(k1, (n, v), jnp.float32) * 3
    if second == "labels":
        return z, jax.random.randint(k2, (n,), 0, v)
    other = jax.random.normal(k2, (n, v), jnp.float32) * 3
    return z, jax.nn.softmax(other) if second == "probs" else other


def _build(family: str, quick: bool) -> dict[str, Impl]:
    fn, plain, second, argnum, _ = FAMILIES[family]
    args = _inputs(*(QUICK_SHAPE if quick else SHAPE), second)
    return {"jaxent": Impl(_grad(fn, argnum), args), "autodiff": Impl(_grad(plain, argnum), args)}


def _register() -> None:
    n, v = SHAPE
    for family, (*_, what) in FAMILIES.items():
        register(
            Case(
                f"gradients/{family}/{n}x{v}/float32",
                lambda quick, family=family: _build(family, quick),
                description=f"value_and_grad, custom rule vs autodiff of the plain definition; {what}",
                repeats=5,
                memory=True,
                targets={"autodiff": 1.05},
                memory_targets={"autodiff": 1.01},  # row-sized buffers differ by KiB
            )
        )


_register()
