"""Argument checks, dtype policy and log base: the one place every module calls.

Everything here runs at trace time on static information (shapes, dtypes,
Python scalars), so a bad argument fails with a clear ``TypeError`` or
``ValueError`` naming the argument before any computation is staged.

Dtype policy: every quantity is computed in ``jnp.result_type(x, float32)``
(``float16``/``bfloat16`` are upcast to ``float32``; ``float64`` stays
``float64`` when x64 is enabled) and returned in the floating dtype of the
inputs (so a ``bfloat16`` loss comes back as ``bfloat16``).

Index: one helper per kind of argument (call these, never a copy of them).

==============================  ==============================================================
argument kind                   helper
==============================  ==============================================================
logits, probabilities           ``check_floating(x, name)``, ``as_inexact(x, name)``
integer labels                  ``check_labels(x, name="labels")`` (any integer dtype, numpy
                                scalars included; bool rejected); ``check_integer`` is an alias
labels vs the class count       ``labels_in_range(labels, num_classes)`` -> ``(wide, valid)``:
                                compares in int32/int64 so int8/uint8/int16 never wrap
``ignore_index``                ``check_ignore_index(v)`` -> ``int | None`` (Python int or
                                numpy integer scalar; bool, float, arrays rejected)
class weights                   ``check_class_weights(w, num_classes)`` (floating, shape ``(K,)``)
``where`` (class-axis inputs)   ``normalize_where(where, shape, axis)`` (full mask) and
                                ``split_where(where, shape, axis)`` -> ``(entries, rows)``
``where`` (elementwise inputs)  ``check_mask(where, shape)`` (broadcast to ``shape``)
``where`` dtype                 ``check_bool_mask(where)``: boolean only (see below)
scalars                         ``check_nonnegative(v, name)`` (``z_loss``),
                                ``check_positive(v, name)`` (``logit_softcap``, temperature),
                                ``check_unit_interval(v, name)`` (smoothing ``[0, 1)``),
                                ``check_scalar_range(v, name, low, high, ...)`` (general);
                                all reject ``bool`` and accept a traced value (unchecked)
``base``                        ``log_base(base)``, ``in_base(x, base)``
``axis``                        ``canonical_axis(axis, ndim)``
``axis_name``                   ``check_axis_name(axis_name)`` -> axis size (bound, hashable)
option strings                  ``check_option(value, name, options)``
shapes                          ``check_same_shape``, ``check_broadcastable``
==============================  ==============================================================

``where`` masks are boolean only: a float mask is ambiguous with weights and an
integer one with class indices, so both raise ``TypeError`` (cast with
``mask.astype(bool)`` or ``mask != 0``). A mask with the rank of the input
broadcasts to it as ``jax.nn.softmax``'s ``where`` does (size-1 dimensions, e.g.
a ``[1, 1, T, T]`` causal mask on ``[B, H, T, T]`` scores); a mask of one rank
less is a mask of rows and broadcasts to the input's shape without the class axis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax import core as jax_core

F = TypeVar("F", bound=Callable[..., Any])

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


def check_labels(x: Any, name: str = "labels") -> Array:
    """Returns integer class indices as an array, raising ``TypeError`` otherwise.

    Any integer dtype is accepted (``int8`` ... ``uint64``, numpy scalars such
    as ``np.int16(3)``, Python ints); ``bool`` and floating labels are rejected.
    """
    if isinstance(x, bool):
        raise TypeError(f"`{name}` must be integer class indices, got the bool {x!r}.")
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_ or not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must be an integer array of class indices, got dtype {x.dtype}."
            " For probability (soft or one-hot) labels use the soft-label function."
        )
    return x


def check_integer(x: Any, name: str) -> Array:
    """Alias of :func:`check_labels` (kept for existing callers)."""
    return check_labels(x, name)


def wide_label_dtype(dtype: Any) -> Any:
    """An integer dtype in which labels and class counts compare without wrapping.

    ``int32`` for every integer dtype of 4 bytes or fewer except ``uint32``
    (``int64`` when x64 is on); ``int64`` for 8-byte dtypes when x64 is on.
    """
    dtype = np.dtype(dtype)
    if dtype.itemsize < 4 or dtype == np.int32:
        return np.dtype(np.int32)
    return jax.dtypes.canonicalize_dtype(np.int64)


def labels_in_range(labels: Any, num_classes: Any, name: str = "labels") -> tuple[Array, Array]:
    """Labels widened to :func:`wide_label_dtype` and the mask ``0 <= labels < num_classes``.

    The comparison never wraps: ``int16`` labels with ``num_classes=50257`` or
    ``int8`` labels with 300 classes compare in ``int32``. Use the returned
    wide labels for the gather / one-hot as well. ``num_classes`` may be a
    Python int or a (traced) integer scalar.
    """
    labels = check_labels(labels, name)
    wide = labels.astype(wide_label_dtype(labels.dtype))
    if isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool):
        k_int = int(num_classes)
        if k_int < 0:
            raise ValueError(f"the number of classes must be >= 0, got {k_int}.")
        if k_int > np.iinfo(wide.dtype).max:
            # Every representable label is below K: only the lower bound can fail.
            return wide, wide >= 0
        k = jnp.asarray(k_int, wide.dtype)
    else:
        k = jnp.asarray(num_classes).astype(wide.dtype)
    return wide, (wide >= 0) & (wide < k)


def check_ignore_index(value: Any, name: str = "ignore_index") -> int | None:
    """Validates ``ignore_index``: ``None``, a Python int or a numpy integer scalar.

    Returns it as a Python ``int`` (or ``None``). ``bool``, floats, strings and
    arrays (including 0-d ones) raise ``TypeError``.
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a Python int or a numpy integer scalar (or None), got"
            f" {value!r} of type {type(value).__name__}."
        )
    return int(value)


def check_class_weights(
    weights: Any, num_classes: int, name: str = "class_weights"
) -> Array | None:
    """Validates per-class weights: ``None`` or a floating array of shape ``(num_classes,)``."""
    if weights is None:
        return None
    w = jnp.asarray(weights)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array of shape ({num_classes},), got dtype"
            f" {w.dtype}. Cast it, e.g. `{name}.astype(jnp.float32)`."
        )
    if w.shape != (num_classes,):
        raise ValueError(
            f"`{name}` must have shape ({num_classes},) (one weight per class), got {w.shape}."
        )
    return w


def compute_dtype(*dtypes: Any) -> Any:
    """The dtype computations run in: at least float32.

    The policy is explicit, so it holds under ``jax.numpy_dtype_promotion("strict")``
    too (where ``bfloat16`` and ``float32`` have no implicit common type):
    callers then ``.astype`` their inputs to it.
    """
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*dtypes, jnp.float32)


def output_dtype(*dtypes: Any) -> Any:
    """The dtype results are returned in: the promoted floating input dtype.

    Computed with JAX's standard lattice whatever the promotion mode (an
    explicit policy; see :func:`compute_dtype`).
    """
    with jax.numpy_dtype_promotion("standard"):
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


def check_bool_mask(where: Any, name: str = "where") -> Array:
    """Returns ``where`` as a boolean array; other dtypes raise ``TypeError``."""
    if isinstance(where, bool):
        return jnp.asarray(where)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(
            f"`{name}` must be a boolean mask, got dtype {where.dtype}. A float mask is"
            " ambiguous with weights and an integer one with class indices: pass"
            f" `{name}.astype(bool)` (or `{name} != 0`)."
        )
    return where


def split_where(where: Any, shape: Sequence[int], axis: int) -> tuple[Array | None, Array | None]:
    """Splits a ``where`` argument into ``(entries, rows)`` boolean masks.

    * rank of the input: a mask of entries, broadcast to ``shape`` as
      ``jax.nn.softmax``'s ``where`` is (size-1 dimensions); ``rows`` is ``None``;
    * one rank less: a mask of rows, broadcast to ``shape`` without ``axis``;
      ``entries`` is that row mask expanded along ``axis`` (``False`` removes
      the whole row).

    ``(None, None)`` for ``where=None``.
    """
    if where is None:
        return None, None
    mask = check_bool_mask(where)
    shape = tuple(shape)
    ndim = len(shape)
    row_shape = shape[:axis] + shape[axis + 1 :]
    if mask.ndim == ndim:
        target = shape
    elif mask.ndim == ndim - 1:
        target = row_shape
    else:
        raise ValueError(
            f"`where` must have the rank of the input ({ndim}, a mask of entries) or"
            f" one less ({ndim - 1}, a mask of rows), got shape {mask.shape} for an"
            f" input of shape {shape}."
        )
    try:
        out = tuple(np.broadcast_shapes(mask.shape, target))
    except ValueError:
        out = None
    if out != target:
        raise ValueError(
            f"`where` with shape {mask.shape} cannot be broadcast to {target}"
            f" (input shape {shape}, axis={axis})."
        )
    mask = jnp.broadcast_to(mask, target)
    if mask.ndim == ndim - 1:
        return jnp.broadcast_to(jnp.expand_dims(mask, axis), shape), mask
    return mask, None


def normalize_where(where: Any, shape: Sequence[int], axis: int) -> Array | None:
    """Turns a ``where`` mask into a boolean array of ``shape`` (or ``None``).

    See :func:`split_where` for the two accepted ranks.
    """
    return split_where(where, shape, axis)[0]


@overload
def check_mask(where: None, shape: Sequence[int], name: str = ...) -> None: ...
@overload
def check_mask(where: jax.typing.ArrayLike, shape: Sequence[int], name: str = ...) -> Array: ...
def check_mask(where: Any, shape: Sequence[int], name: str = "where") -> Array | None:
    """A boolean mask of an elementwise input, broadcast to ``shape`` (or ``None``)."""
    if where is None:
        return None
    mask = check_bool_mask(where, name)
    shape = tuple(shape)
    try:
        out = tuple(np.broadcast_shapes(mask.shape, shape))
    except ValueError:
        out = None
    if out != shape:
        raise ValueError(f"`{name}` with shape {mask.shape} must broadcast to {shape}.")
    return jnp.broadcast_to(mask, shape)


# --------------------------------------------------------------------------- scalars


def is_tracer(x: Any) -> bool:
    """Whether ``x`` is traced (its value unknown at trace time)."""
    return isinstance(x, jax_core.Tracer)


def _concrete_float(x: Any) -> float | None:
    """The Python value of a scalar if known at trace time, else ``None``."""
    if is_tracer(x):
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


def _reject_bool(value: Any, name: str, expected: str) -> None:
    if isinstance(value, (bool, np.bool_)) or (
        hasattr(value, "dtype") and np.dtype(value.dtype) == np.bool_
    ):
        raise TypeError(f"`{name}` must be {expected}, got the bool {value!r}.")


def check_scalar_range(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    low_closed: bool = True,
    high_closed: bool = False,
) -> None:
    """Checks a (possibly traced) real scalar hyper-parameter lies in a range.

    ``bool`` (Python, numpy or a boolean array) raises ``TypeError``; a traced
    value is accepted without the value check (``jaxent.checked`` checks it).
    """
    lb = "[" if low_closed else "("
    hb = "]" if high_closed else ")"
    _reject_bool(value, name, f"a real number in {lb}{low}, {high}{hb}")
    if hasattr(value, "dtype") and not (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must be a real number, got dtype {value.dtype}.")
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
        raise ValueError(f"`{name}` must be in {lb}{low}, {high}{hb}, got {value!r}.")


def check_nonnegative(value: Any, name: str) -> None:
    """A real scalar >= 0 (``z_loss``)."""
    check_scalar_range(value, name, 0.0, math.inf)


def check_positive(value: Any, name: str) -> None:
    """A finite real scalar > 0 (``logit_softcap``, ``temperature``)."""
    check_scalar_range(value, name, 0.0, math.inf, low_closed=False)


def check_unit_interval(value: Any, name: str, *, high_closed: bool = False) -> None:
    """A real scalar in ``[0, 1)`` (``[0, 1]`` with ``high_closed=True``)."""
    check_scalar_range(value, name, 0.0, 1.0, high_closed=high_closed)


def check_axis_name(axis_name: Any, name: str = "axis_name") -> int:
    """Validates a mesh axis name and returns the size of that axis.

    Must be called where the axis is bound (inside ``shard_map``/``pmap``).
    ``None`` raises ``ValueError`` (say which axis the vocabulary is sharded
    over); a name that is not a ``str`` or a tuple of ``str`` raises
    ``TypeError``; a name not bound by an enclosing ``shard_map``/``pmap``
    raises ``ValueError`` (JAX's own error is a bare ``NameError``).
    """
    if axis_name is None:
        raise ValueError(
            f"`{name}` must name the mesh axis the vocabulary is sharded over (a str),"
            " got None; for unsharded logits use the single-device function."
        )
    ok = isinstance(axis_name, str) or (
        isinstance(axis_name, tuple) and axis_name and all(isinstance(a, str) for a in axis_name)
    )
    if not ok:
        raise TypeError(
            f"`{name}` must be a mesh axis name (a str, or a tuple of str), got {axis_name!r}"
            f" of type {type(axis_name).__name__}."
        )
    try:
        return int(jax.lax.axis_size(axis_name))
    except NameError:
        raise ValueError(
            f"`{name}`={axis_name!r} is not an axis of the enclosing shard_map/pmap; call"
            " this function inside `jax.shard_map(..., mesh=...)` over that axis."
        ) from None


def check_option(value: Any, name: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(
            f"Unknown `{name}`={value!r}; expected one of {', '.join(map(repr, options))}."
        )
    return value


# --------------------------------------------------------------------------- numerics


def is_symbolic_zero(t: Any) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def one_call(*, static_argnames: tuple[str, ...] = ()) -> Callable[[F], F]:
    """``jax.jit`` for concrete calls, a plain call inside an outer trace.

    An eager call is one compiled dispatch (as ``jax.nn.log_softmax``). Under a
    trace (any argument a tracer) the function is traced inline instead: a
    nested ``jit`` is inlined by XLA anyway, but tracing it costs a trace of a
    custom rule's primal on top of its JVP under ``jax.grad`` (measured on a
    jitted ``value_and_grad``).
    """

    def wrap(fn: F) -> F:
        jitted = jax.jit(fn, static_argnames=static_argnames)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if any(is_tracer(x) for x in jax.tree.leaves((args, kwargs))):
                return fn(*args, **kwargs)
            return jitted(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
