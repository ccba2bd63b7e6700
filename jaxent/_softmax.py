"""The softmax family: ``softmax``, ``log_softmax``, ``logsumexp``, ``logit``.

Note for the engine (``_engine.py``) and every other caller: the row helpers
below (``row_stats``, ``log_row_sum``, ``probs_from_stats``,
``log_probs_from_stats``, ``lse_from_stats``, ``weighted_nll``,
``clean_tangent``, ``prepare_logits``) keep their names, signatures and
semantics. ``row_stats`` also accepts an empty class axis (K = 0): it then
behaves as a row whose every class is masked (``s = 0``, ``m`` = lowest float).

All are computed in at least float32 with the max-shift trick and carry a
``jax.custom_jvp`` whose tangent reuses the primal output:

* softmax:      dp = p * (dz - <p, dz>)          (Jacobian diag(p) - p p^T)
* log_softmax:  dl = dz - <p, dz>
* logsumexp:    dlse = <p, dz>                   (gradient = softmax)
* logit:        dy = dp / (p (1 - p))

Conventions shared by every function of jaxent that takes logits:

* ``where`` has either the rank of the input (a mask of entries: ``False``
  removes a class) or one less (a mask of rows: ``False`` removes the row).
* A removed entry behaves like a logit of ``-inf``: probability 0,
  log-probability ``-inf``, and it receives a gradient of exactly 0.
* A row with no entry left (fully masked, or all logits ``-inf``) has
  ``logsumexp = -inf``, softmax all zeros and log_softmax all ``-inf``; its
  gradients are 0. Nothing is NaN.
* ``+inf`` logits are outside the domain (the result is NaN; the checked mode
  of :func:`jaxent.checked` reports them).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


# --------------------------------------------------------------------------- shared kernel


def row_stats(x: Array, mask: Array | None, axis: int) -> tuple[Array, Array, Array, Array]:
    """Max-shifted exponentials of one row: the kernel every logits function uses.

    Args:
      x: logits in the compute dtype.
      mask: boolean mask of kept entries (same shape) or ``None``.
      axis: the (non-negative) class axis.

    Returns:
      ``(shifted, e, s, m)`` with ``shifted = x - m`` (``-inf`` at removed
      entries), ``e = exp(shifted)``, ``s = sum(e)`` and ``m`` the finite row
      shift (the lowest float for an empty row), the last two with
      ``keepdims=True``. A non-empty row has ``s >= 1`` (its max term is 1). An
    empty class axis (K = 0) is an empty row (``initial=-inf`` in the max).

    The row guards here and in the helpers below use ``maximum`` and an
    offset rather than ``jnp.where``: on CPU a select between two row
    reductions splits XLA's fused reduction into separate passes.
    """
    if mask is not None:
        x = jnp.where(mask, x, -jnp.inf)
    m = jnp.maximum(jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf), jnp.finfo(x.dtype).min)
    shifted = x - m
    e = jnp.exp(shifted)
    s = jnp.sum(e, axis=axis, keepdims=True)
    return shifted, e, s, m


def log_row_sum(s: Array) -> Array:
    """``log(s)`` for a row sum from ``row_stats``, finite (``log tiny``) for an empty row.

    Exact for every non-empty row (``s >= 1``, so ``s + tiny == s``); used
    where an empty row's entries are already ``-inf`` or the caller zeroes it.
    """
    return jnp.log(s + jnp.finfo(s.dtype).tiny)


def probs_from_stats(e: Array, s: Array) -> Array:
    """softmax from ``row_stats``; an empty row gives zeros (``0 / tiny``)."""
    return e / (s + jnp.finfo(s.dtype).tiny)


def log_probs_from_stats(shifted: Array, s: Array) -> Array:
    """log_softmax from ``row_stats``; removed entries and empty rows give ``-inf``."""
    return shifted - log_row_sum(s)


def lse_from_stats(s: Array, m: Array) -> Array:
    """logsumexp from ``row_stats``; an empty row gives ``-inf``."""
    return jnp.log(s) + m


def weighted_nll(a: Array, x: Array, m: Array, s: Array, axis: int) -> Array:
    """``-sum_c a_c log softmax(x)_c`` (keepdims) for weights ``a`` that are 0 on removed entries.

    Written as ``(sum a) log s - 2 sum a (x - m)/2``: for ``a >= 0`` both parts
    are >= 0 (no cancellation), and the halved shift is finite for every finite
    logit, so a term that is large only because ``x - m`` overflows (logits near
    the float max, e.g. +-3e38) stays exact. ``0 * log 0 = 0``; weight on a
    ``-inf`` logit gives ``+inf``. Empty rows (``s = 0``) are the caller's.

    No N x K ``select``: the ``-inf`` logits are clamped with ``maximum`` (so
    ``0 * -inf`` never occurs) and detected with a compare, which XLA fuses
    into the reductions (a select there forces a materialised buffer on CPU).
    """
    lowest = jnp.finfo(x.dtype).min
    half = jnp.maximum(0.5 * x - 0.5 * m, lowest)
    lin = jnp.sum(a * half, axis=axis, keepdims=True)
    on_neg_inf = jnp.sum(a * (x == -jnp.inf).astype(a.dtype), axis=axis, keepdims=True)
    total = jnp.sum(a, axis=axis, keepdims=True)
    out = total * log_row_sum(s) - 2 * lin
    return jnp.where(on_neg_inf > 0, jnp.inf, out)


def clean_tangent(dx: Array, mask: Array | None) -> Array:
    """Zeroes tangents of removed entries so a NaN there cannot leak."""
    return dx if mask is None else jnp.where(mask, dx, 0)


def prepare_logits(
    logits: ArrayLike, axis: int, where: Any, name: str = "logits"
) -> tuple[Array, int, Array | None, Any]:
    """Checks logits, returns ``(x in compute dtype, axis, mask, output dtype)``."""
    logits = _checks.check_floating(logits, name)
    ax = _checks.canonical_axis(axis, logits.ndim)
    mask = _checks.normalize_where(where, logits.shape, ax)
    return logits.astype(_checks.compute_dtype(logits.dtype)), ax, mask, logits.dtype


# --------------------------------------------------------------------------- softmax


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _softmax(x: Array, mask: Array | None, axis: int) -> Array:
    _, e, s, _ = row_stats(x, mask, axis)
    return probs_from_stats(e, s)


@_softmax.defjvp
def _softmax_jvp(axis, primals, tangents):
    x, mask = primals
    dx, _ = tangents
    p = _softmax(x, mask, axis)
    dx = clean_tangent(dx, mask)
    return p, p * (dx - jnp.sum(p * dx, axis=axis, keepdims=True))


def softmax(logits: ArrayLike, axis: int = -1, where: ArrayLike | None = None) -> Array:
    r"""Numerically stable softmax.

    softmax(z)_i = exp(z_i - m) / sum_j exp(z_j - m), m = max z; Jacobian diag(p) - p p^T.

    .. math::
      \mathrm{softmax}(z)_i = \frac{e^{z_i - m}}{\sum_j e^{z_j - m}}, \qquad m = \max_j z_j

    Its custom JVP uses the Jacobian :math:`\mathrm{diag}(p) - p p^\top`.

    Args:
      logits: floating array of unnormalised log-probabilities.
      axis: the class axis.
      where: optional mask (rank of ``logits``: entries; one less: rows).
        Removed entries get probability 0; a fully removed row is all zeros.

    Returns:
      Probabilities with the shape and dtype of ``logits`` (computed in at
      least float32).

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> jaxent.softmax(jnp.array([1.0, 1.0, -jnp.inf]))
      Array([0.5, 0.5, 0. ], dtype=float32)
    """
    x, ax, mask, dt = prepare_logits(logits, axis, where)
    return _softmax(x, mask, ax).astype(dt)


# --------------------------------------------------------------------------- log_softmax


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _log_softmax(x: Array, mask: Array | None, axis: int) -> Array:
    shifted, _, s, _ = row_stats(x, mask, axis)
    return log_probs_from_stats(shifted, s)


@_log_softmax.defjvp
def _log_softmax_jvp(axis, primals, tangents):
    x, mask = primals
    dx, _ = tangents
    shifted, e, s, _ = row_stats(x, mask, axis)
    out = log_probs_from_stats(shifted, s)
    p = probs_from_stats(e, s)
    dx = clean_tangent(dx, mask)
    dout = dx - jnp.sum(p * dx, axis=axis, keepdims=True)
    if mask is not None:
        dout = jnp.where(mask, dout, 0)
    return out, dout


def log_softmax(logits: ArrayLike, axis: int = -1, where: ArrayLike | None = None) -> Array:
    r"""Numerically stable log-softmax.

    log_softmax(z)_i = (z_i - m) - log sum_j exp(z_j - m), m = max z;
    dl = dz - <softmax(z), dz>.

    .. math::
      \log\mathrm{softmax}(z)_i = z_i - \log\sum_j e^{z_j}

    Custom JVP: :math:`dl = dz - \langle \mathrm{softmax}(z), dz\rangle`.

    Args:
      logits: floating array of unnormalised log-probabilities.
      axis: the class axis.
      where: optional mask (rank of ``logits``: entries; one less: rows).
        Removed entries are ``-inf`` and receive no gradient.

    Returns:
      Log-probabilities with the shape and dtype of ``logits``.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> jaxent.log_softmax(jnp.array([0.0, 0.0, -jnp.inf]))
      Array([-0.6931472, -0.6931472,       -inf], dtype=float32)
    """
    x, ax, mask, dt = prepare_logits(logits, axis, where)
    return _log_softmax(x, mask, ax).astype(dt)


# --------------------------------------------------------------------------- logsumexp


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _logsumexp(x: Array, mask: Array | None, axis: int) -> Array:
    _, _, s, m = row_stats(x, mask, axis)
    return lse_from_stats(s, m)


@_logsumexp.defjvp
def _logsumexp_jvp(axis, primals, tangents):
    x, mask = primals
    dx, _ = tangents
    _, e, s, m = row_stats(x, mask, axis)
    p = probs_from_stats(e, s)
    dx = clean_tangent(dx, mask)
    return lse_from_stats(s, m), jnp.sum(p * dx, axis=axis, keepdims=True)


def logsumexp(
    logits: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> Array:
    r"""Numerically stable :math:`\log\sum_i e^{z_i}` over one axis.

    lse(z) = m + log sum_i exp(z_i - m), m = max z; gradient softmax(z).

    .. math::
      \mathrm{lse}(z) = m + \log\sum_i e^{z_i - m}, \qquad m = \max_i z_i

    Its gradient is :math:`\mathrm{softmax}(z)` (custom JVP). An empty row
    (fully masked or all ``-inf``) gives ``-inf`` with gradient 0.

    Args:
      logits: floating array.
      axis: the axis to reduce (a single int).
      where: optional mask (rank of ``logits``: entries; one less: rows).
      keepdims: keep the reduced axis with size 1.

    Returns:
      The reduced array in the dtype of ``logits``.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> jaxent.logsumexp(jnp.zeros((2, 0)))  # an empty class axis: an empty row
      Array([-inf, -inf], dtype=float32)
    """
    x, ax, mask, dt = prepare_logits(logits, axis, where)
    out = _logsumexp(x, mask, ax)
    if not keepdims:
        out = jnp.squeeze(out, axis=ax)
    return out.astype(dt)


# --------------------------------------------------------------------------- logit


@jax.custom_jvp
def _logit(p: Array) -> Array:
    return jnp.log(p) - jnp.log1p(-p)


@_logit.defjvp
def _logit_jvp(primals, tangents):
    (p,), (dp,) = primals, tangents
    return _logit(p), dp / (p * (1 - p))


def logit(p: ArrayLike) -> Array:
    r"""The log-odds :math:`\mathrm{logit}(p) = \log\frac{p}{1-p}`, inverse of the sigmoid.

    logit(p) = log(p / (1 - p)) = log p - log1p(-p);  d logit/dp = 1 / (p (1 - p))

    ``logit(0) = -inf`` and ``logit(1) = +inf``; outside [0, 1] the result is
    NaN. Custom JVP: :math:`dy = dp / (p(1-p))`.

    Args:
      p: probabilities (integer inputs are promoted to float).

    Returns:
      Log-odds in the floating dtype of ``p`` (computed in at least float32).

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> jaxent.logit(jnp.array([0.5, 0.0, 1.0]))
      Array([  0., -inf,  inf], dtype=float32)
    """
    p = _checks.as_inexact(p, "p")
    return _logit(p.astype(_checks.compute_dtype(p.dtype))).astype(p.dtype)


# --------------------------------------------------------------------------- one-call dispatch


def _is_static(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, np.generic))


def _run(fn, static, arrays, dynamic):
    return fn(*arrays, **dynamic, **dict(static))


_run_jit = jax.jit(_run, static_argnums=(0, 1))


def dispatch(fn, *arrays: Any, **options: Any) -> Array:
    """Calls ``fn(*arrays, **options)`` as one compiled call (as ``jax.nn.log_softmax`` does).

    Options that are Python (or numpy) scalars, strings or ``None`` are static
    (validate them before calling, so errors fire at trace time); array options
    (a traced ``base`` or ``temperature``) are traced. Lists become arrays.
    Inside an outer trace (any traced argument) ``fn`` is called directly
    (see :func:`jaxent._checks.one_call`).
    """
    arrays = tuple(np.asarray(a) if isinstance(a, (list, tuple)) else a for a in arrays)
    if any(_checks.is_tracer(x) for x in jax.tree.leaves((arrays, options))):
        return fn(*arrays, **options)
    static = tuple(
        sorted(
            (k, v.item() if isinstance(v, np.generic) else v)
            for k, v in options.items()
            if _is_static(v)
        )
    )
    dynamic = {k: v for k, v in options.items() if not _is_static(v)}
    return _run_jit(fn, static, arrays, dynamic)
