"""Checked mode: the cost of ``jaxent.checked`` on, off, and not used.

Three implementations of integer-label softmax cross-entropy, forward and
backward, jitted, on the same arrays:

* ``jaxent``: the plain function (the reference);
* ``checked_off``: ``jaxent.checked(fn, enabled=False)``, which *is* ``fn``
  (asserted below), so the compiled program is identical: zero cost when off;
* ``checked``: ``jaxent.checked(fn)``: the arguments are validated (labels in
  range, logits free of NaN/+inf) in the same program and reported through a
  ``jax.debug.callback``: one extra pass over the logits and a host callback.

``python -m benchmarks --only checked/``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxent
from benchmarks._harness import Case, Impl, register

FN = jaxent.softmax_cross_entropy_with_integer_labels
SHAPES = [(1024, 32768)]
QUICK_SHAPE = (16, 128)
DTYPES = ["float32", "bfloat16"]


def _fwdbwd(fn):
    def total(z, y):
        return jnp.sum(fn(z, y).astype(jnp.float32))

    return jax.jit(jax.value_and_grad(total))


def _build(shape, dtype):
    def build(quick: bool) -> dict[str, Impl]:
        n, v = QUICK_SHAPE if quick else shape
        z = (jax.random.normal(jax.random.key(0), (n, v), jnp.float32) * 3).astype(dtype)
        y = jnp.asarray(np.random.default_rng(1).integers(0, v, n), jnp.int32)
        off = jaxent.checked(FN, enabled=False)
        assert off is FN, "checked(fn, enabled=False) must return fn itself"
        return {
            "jaxent": Impl(_fwdbwd(FN), (z, y)),
            "checked_off": Impl(_fwdbwd(off), (z, y)),
            "checked": Impl(_fwdbwd(jaxent.checked(FN)), (z, y)),
        }

    return build


for _shape in SHAPES:
    for _dt in DTYPES:
        register(
            Case(
                f"checked/ce_int/fwdbwd/{_shape[0]}x{_shape[1]}/{_dt}",
                _build(_shape, _dt),
                description="integer-label CE: plain vs checked(enabled=False) vs checked",
                repeats=5,
                targets={"checked_off": 1.05},
            )
        )
