"""Noise calibration: one function timed against itself.

Each case times the *same* implementation twice over, as ``a`` and ``b``, with
the paired, alternating protocol of every other case. The true ratio is 1; the
min-max of the measured paired ratios is the noise of this machine at that
moment, and becomes the tie band of the cases in its group (see
``_harness.verdict``):

* ``noise/jit/...``: one compiled executable (a row logsumexp over
  4096×32768 float32, about the duration of the forward cases), called as
  ``a`` and as ``b``: the band of the jitted cases;
* ``noise/eager/...``: an un-jitted optax cross-entropy at 128×10: the band
  of the eager cases;
* ``noise/compile/...``: compiling optax's cross-entropy ``value_and_grad``:
  the band of the compile-time cases.

The runner runs the calibration of every group it needs first, whatever
``--only`` selects (``--no-calibration`` skips them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._harness import Case, Impl, register
from benchmarks.cases_cross_entropy import compile_impl

SHAPE = (4096, 32768)
QUICK_SHAPE = (64, 512)


def _jit(quick: bool) -> dict[str, Impl]:
    n, v = QUICK_SHAPE if quick else SHAPE
    z = jax.random.normal(jax.random.key(0), (n, v), jnp.float32) * 3
    compiled = jax.jit(lambda z: jax.nn.logsumexp(z, axis=-1)).lower(z).compile()
    same = Impl(compiled, (z,))
    return {"a": same, "b": same}


def _eager(quick: bool) -> dict[str, Impl]:
    z = jax.random.normal(jax.random.key(0), (128, 10), jnp.float32)
    y = jnp.asarray(np.random.default_rng(1).integers(0, 10, 128), jnp.int32)
    same = Impl(optax.losses.softmax_cross_entropy_with_integer_labels, (z, y), "eager")
    return {"a": same, "b": same}


def _compile(quick: bool) -> dict[str, Impl]:
    n, v = (8, 16) if quick else SHAPE
    specs = (jax.ShapeDtypeStruct((n, v), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.int32))
    same = compile_impl(optax.losses.softmax_cross_entropy_with_integer_labels, specs)
    return {"a": same, "b": same}


for _group, _build, _shape, _what in (
    ("jit", _jit, SHAPE, "one compiled logsumexp against itself"),
    ("eager", _eager, (128, 10), "one un-jitted optax CE against itself"),
    ("compile", _compile, SHAPE, "compiling optax CE value_and_grad against itself"),
):
    register(
        Case(
            f"noise/{_group}/{_shape[0]}x{_shape[1]}/float32",
            _build,
            description=f"noise calibration: {_what} (true ratio 1)",
            reference="a",
            noise=_group,
            calibrates=_group,
        )
    )
