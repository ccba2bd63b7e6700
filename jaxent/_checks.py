"""Argument checks, dtype policy and log base: the one place every module calls.

Everything here runs at trace time on static information (shapes, dtypes,
Python scalars), so a bad argument fails with a clear ``TypeError`` or
``ValueError`` before any computation is staged.

Dtype policy: every quantity is computed in ``jnp.result_type(x, float32)``
(``float16``/``bfloat16`` are upcast to ``float32``; ``float64`` stays
``float64`` when x64 is enabled) and returned in the floating dtype of the
inputs (so a ``bfloat16`` loss comes back as ``bfloat16``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# --------------------------------------------------------------------------- dtypes


def check_floating(x: Any, name: str) -> Array:
    """Returns ``x`` as an array, raising ``TypeError`` unless it is floating."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array (float16, bfloat16, float32 or"
            f" float64), got dtype {x.dtype}. Cast it, e.g. `{name}.astype(jnp.float32)`."
        )
    return x


def as_inexact(x: Any, name: str) -> Array:
    """Returns ``x`` as a floating array; integer/bool inputs are promoted.

    Used for probabilities and labels, where integer inputs (one-hot labels,
    counts) are legitimate. Complex inputs are rejected.
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"`{name}` must be real, got complex dtype {x.dtype}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def check_integer(x: Any, name: str) -> Array:
    """Returns ``x`` as an array, raising ``TypeError`` unless it is integer."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must be an integer array of class indices, got dtype {x.dtype}."
            " For probability (soft or one-hot) labels use the soft-label function."
        )
    return x


def compute_dtype(*dtypes: Any) -> Any:
    """The dtype computations run in: at least float32."""
    return jnp.result_type(*dtypes, jnp.float32)


def output_dtype(*dtypes: Any) -> Any:
    """The dtype results are returned in: the promoted floating input dtype."""
    return jnp.result_type(*dtypes)


# --------------------------------------------------------------------------- shapes


def canonical_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Normalises a single integer axis, raising ``ValueError`` if out of range."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"`{name}` must be a single int, got {axis!r}.")
    axis = int(axis)
    if ndim == 0:
        raise ValueError(
            f"`{name}`={axis} needs an input with at least one dimension (the class"
            " axis), got a scalar."
        )
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"`{name}`={axis} is out of range for an input with {ndim} dimension(s);"
            f" expected an int in [{-ndim}, {ndim - 1}]."
        )
    return axis % ndim


def check_same_shape(a: Array, b: Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape, got {a.shape} and {b.shape}."
        )


def check_broadcastable(a: Array, b: Array, name_a: str, name_b: str) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise ValueError(
            f"`{name_a}` with shape {a.shape} and `{name_b}` with shape {b.shape}"
            " cannot be broadcast together."
        ) from None


def normalize_where(where: Any, shape: Sequence[int], axis: int) -> Array | None:
    """Turns a ``where`` mask into a boolean array of ``shape`` (or ``None``).

    Two ranks are accepted:
    * the rank of the input: a mask of entries (classes), broadcast to ``shape``;
    * one less: a mask of rows (the per-example output's shape), broadcast and
      expanded along ``axis``; ``False`` masks the whole row.
    """
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        if not jnp.issubdtype(where.dtype, jnp.integer):
            raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
        where = where != 0
    shape = tuple(shape)
    ndim = len(shape)
    row_shape = shape[:axis] + shape[axis + 1 :]
    if where.ndim == ndim:
        target = shape
        mask = where
    elif where.ndim == ndim - 1:
        target = row_shape
        mask = where
    else:
        raise ValueError(
            f"`where` must have the rank of the input ({ndim}, a mask of entries) or"
            f" one less ({ndim - 1}, a mask of rows), got shape {where.shape} for an"
            f" input of shape {shape}."
        )
    try:
        out = np.broadcast_shapes(mask.shape, target)
    except ValueError:
        out = None
    if out != target:
        raise ValueError(
            f"`where` with shape {where.shape} cannot be broadcast to {target}"
            f" (input shape {shape}, axis={axis})."
        )
    mask = jnp.broadcast_to(mask, target)
    if where.ndim == ndim - 1:
        mask = jnp.broadcast_to(jnp.expand_dims(mask, axis), shape)
    return mask


# --------------------------------------------------------------------------- scalars


def _concrete_float(x: Any) -> float | None:
    """The Python value of a scalar if known at trace time, else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001 - anything non-concrete
        return None
    if arr.dtype.kind not in "biuf" and not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"expected a real number, got {x!r}.")
    if arr.shape != ():
        raise ValueError(f"expected a scalar, got shape {arr.shape}.")
    return float(arr)


def log_base(base: Any) -> float | Array | None:
    """Validates ``base`` and returns ``log(base)`` (``None`` for nats).

    ``base`` must be > 0 and != 1. A traced ``base`` is accepted (for
    schedules) without the value check.
    """
    if base is None:
        return None
    if isinstance(base, bool):
        raise TypeError(f"`base` must be a number > 0 and != 1 (or None for nats), got {base!r}.")
    try:
        value = _concrete_float(base)
    except ValueError as e:
        raise ValueError(f"`base` must be a scalar: {e}") from None
    except TypeError:
        raise TypeError(
            f"`base` must be a number > 0 and != 1 (or None for nats), got {base!r}."
        ) from None
    if value is None:
        return jnp.log(jnp.asarray(base, jnp.result_type(float)))
    if not math.isfinite(value) or value <= 0 or value == 1:
        raise ValueError(
            f"`base` must be a finite number > 0 and != 1 (or None for nats), got {base!r}."
        )
    return math.log(value)


def in_base(x: Array, base: Any) -> Array:
    """Converts a quantity in nats to ``base`` (``None``: leave in nats)."""
    lb = log_base(base)
    if lb is None:
        return x
    return x / jnp.asarray(lb, x.dtype)


def check_scalar_range(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    low_closed: bool = True,
    high_closed: bool = False,
) -> None:
    """Checks a (possibly traced) scalar hyper-parameter lies in a range."""
    try:
        v = _concrete_float(value)
    except ValueError as e:
        raise ValueError(f"`{name}` must be a scalar: {e}") from None
    except TypeError:
        raise TypeError(f"`{name}` must be a number, got {value!r}.") from None
    if v is None:
        return
    ok_low = v >= low if low_closed else v > low
    ok_high = v <= high if high_closed else v < high
    if not (ok_low and ok_high and not math.isnan(v)):
        lb = "[" if low_closed else "("
        hb = "]" if high_closed else ")"
        raise ValueError(f"`{name}` must be in {lb}{low}, {high}{hb}, got {value!r}.")


def check_option(value: Any, name: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(
            f"Unknown `{name}`={value!r}; expected one of {', '.join(map(repr, options))}."
        )
    return value


# --------------------------------------------------------------------------- numerics


def is_symbolic_zero(t: Any) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)
