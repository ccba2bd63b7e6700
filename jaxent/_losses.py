"""Cross-entropy losses (optax argument order: prediction first) and their reduction.

Every loss returns per-example values (reduced over the class axis only) and
differentiates through a closed form (``jax.custom_jvp``):

* softmax cross-entropy, soft labels:    dL/dz = (sum y) softmax(z) - y
* integer labels:                        dL/dz = w (softmax(z) - onehot(y))
                                                 + 2 z_loss lse softmax(z)
* sigmoid binary cross-entropy:          dL/dz = (1 - y) sigma(z) - pos_weight y sigma(-z)
                                         (= sigma(z) - y without pos_weight, exact for large |z|)
* binary cross-entropy from probs:       dL/dp = (1 - y)/(1 - p) - y/p
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks
from jaxent._softmax import (
    clean_tangent,
    log_probs_from_stats,
    log_row_sum,
    prepare_logits,
    row_stats,
    weighted_nll,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _add(a: Array | None, b: Array) -> Array:
    return b if a is None else a + b


# --------------------------------------------------------------------------- soft labels


def _soft_ce_value(x, y, mask, axis):
    """Shared primal: (loss, labels on kept entries, row stats)."""
    shifted, _, s, m = row_stats(x, mask, axis)
    a = y if mask is None else jnp.where(mask, y, 0)
    # Empty rows (no class left) give 0: a row-level select, so that no N x K
    # select stands between the logits and XLA's fused reductions.
    loss = jnp.squeeze(jnp.where(s > 0, weighted_nll(a, x, m, s, axis), 0), axis)
    return loss, a, shifted, m, s


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _softmax_ce(x: Array, y: Array, mask: Array | None, axis: int) -> Array:
    return _soft_ce_value(x, y, mask, axis)[0]


def _softmax_ce_jvp(axis, primals, tangents):
    x, y, mask = primals
    dx, dy, _ = tangents
    loss, a, shifted, m, s = _soft_ce_value(x, y, mask, axis)
    live = (s > 0).astype(x.dtype)  # 0 on empty rows: their gradient is 0
    dloss = None
    if not _checks.is_symbolic_zero(dx):
        # (sum y) softmax(z) - y with row factors; p is recomputed from the row
        # logsumexp inside the gradient's fusion rather than kept from the
        # forward reductions (no N x K buffer, no N x K select without a mask).
        scale = jnp.sum(a, axis=axis, keepdims=True) * live
        lse = log_row_sum(s) + m
        xm = x if mask is None else jnp.where(mask, x, -jnp.inf)
        coef = jnp.exp(xm - lse) * scale - a * live
        dloss = jnp.sum(coef * clean_tangent(dx, mask), axis=axis)
    if not _checks.is_symbolic_zero(dy):
        # dL/dy_i = -log p_i; 0 at a -inf logit (convention: an impossible class
        # gets a finite label derivative, so forward mode has no 0 * inf).
        ls = log_probs_from_stats(shifted, s)
        keep = (x > -jnp.inf) & (s > 0)
        if mask is not None:
            keep = keep & mask
        dloss = _add(dloss, jnp.sum(jnp.where(keep, -ls, 0) * dy, axis=axis))
    if dloss is None:
        dloss = jnp.zeros_like(loss)
    return loss, dloss


_softmax_ce.defjvp(_softmax_ce_jvp, symbolic_zeros=True)


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> Array:
    r"""Softmax cross-entropy with probability (soft or one-hot) labels.

    .. math::
      L(z, y) = -\sum_i y_i \log \mathrm{softmax}(z)_i, \qquad
      \frac{\partial L}{\partial z} = \Big(\sum_i y_i\Big)\mathrm{softmax}(z) - y

    (seed 000: :math:`\partial L/\partial z = p - y` when :math:`\sum y = 1`).

    Conventions: a term with :math:`y_i = 0` is 0 even where :math:`z_i = -\infty`
    (:math:`0 \log 0 = 0`); label mass on a ``-inf`` logit gives ``+inf``, the
    true value, with a finite gradient in the logits; removed entries (``where``)
    are left out of both the softmax and the sum; a fully removed row (or one
    whose logits are all ``-inf``, as for the integer-label loss) gives 0 with
    gradient 0. Labels are not renormalised.

    Args:
      logits: floating array of shape ``[..., K]`` (class axis ``axis``).
      labels: probabilities with the same shape (integer one-hot allowed).
      axis: the class axis.
      where: optional mask (rank of ``logits``: classes; one less: rows).

    Returns:
      Per-example losses (``logits.shape`` without ``axis``) in the promoted
      floating dtype of the inputs, computed in at least float32.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> float(jaxent.softmax_cross_entropy(jnp.zeros(4), jnp.array([1.0, 0, 0, 0])))
      1.386...
    """
    x, ax, mask, dt = prepare_logits(logits, axis, where)
    y = _checks.as_inexact(labels, "labels")
    _checks.check_same_shape(x, y, "logits", "labels")
    out_dt = _checks.output_dtype(dt, y.dtype)
    cdt = _checks.compute_dtype(x.dtype, y.dtype)
    return _softmax_ce(x.astype(cdt), y.astype(cdt), mask, ax).astype(out_dt)


# --------------------------------------------------------------------------- integer labels


@jax.custom_jvp
def _softcap(x: Array, cap: Array) -> Array:
    return cap * jnp.tanh(x / cap)


def _softcap_jvp(primals, tangents):
    x, cap = primals
    dx, dcap = tangents
    t = jnp.tanh(x / cap)
    sech2 = 1 - t * t
    dout = None
    if not _checks.is_symbolic_zero(dx):
        # d/dx c tanh(x/c) = 1 - t^2
        dout = sech2 * dx
    if not _checks.is_symbolic_zero(dcap):
        # d/dc c tanh(x/c) = t - (x/c)(1 - t^2)
        dout = _add(dout, (t - jnp.where(sech2 != 0, x / cap * sech2, 0)) * dcap)
    return cap * t, jnp.zeros_like(x) if dout is None else dout


_softcap.defjvp(_softcap_jvp, symbolic_zeros=True)


def logit_softcap(logits: ArrayLike, cap: ArrayLike) -> Array:
    r"""Soft-caps logits: :math:`c \tanh(z / c)` (Gemma 2, Grok), closed-form JVP.

    ``-inf`` maps to ``-c``: use ``where`` to remove classes instead.
    """
    x = _checks.check_floating(logits, "logits")
    cdt = _checks.compute_dtype(x.dtype)
    return _softcap(x.astype(cdt), jnp.asarray(cap, cdt)).astype(x.dtype)


def _int_ce_parts(x, labels, mask, axis):
    """Shared primal pieces of the integer-label loss.

    The target logit is gathered from ``x`` itself (not from the shifted
    logits) so that XLA fuses max, exp and sum into reductions that never
    write an N x K intermediate in the forward pass.
    """
    num_classes = x.shape[axis]
    cdt = _checks.compute_dtype(x.dtype)
    x_in = x if mask is None else jnp.where(mask, x, -jnp.inf)  # input dtype
    xm = x_in.astype(cdt)
    # The max is exact in the input dtype: reducing before the upcast keeps XLA
    # from materialising an upcast copy of the logits.
    m = jnp.max(x_in, axis=axis, keepdims=True).astype(cdt)
    m = jnp.where(jnp.isfinite(m), m, 0)
    s = jnp.sum(jnp.exp(xm - m), axis=axis, keepdims=True)
    valid = (labels >= 0) & (labels < num_classes)
    idx = jnp.expand_dims(jnp.clip(labels, 0, num_classes - 1), axis)
    # Gather in the input dtype (exact), then upcast: no upcast copy of x.
    x_y = jnp.squeeze(jnp.take_along_axis(x_in, idx, axis=axis), axis).astype(cdt)
    m_r = jnp.squeeze(m, axis)
    log_s = jnp.squeeze(jnp.log(s), axis)
    empty = log_s == -jnp.inf
    # lse - z_y = log(s) - (z_y - m): the shift cancels exactly.
    ce = jnp.where(valid, jnp.where(empty, 0, log_s) - (x_y - m_r), jnp.nan)
    lse = log_s + m_r
    return ce, lse, empty, valid, idx, xm, m, s


def _z_penalty(z_loss, lse):
    # z_loss * lse^2, exactly 0 when z_loss = 0 (lse^2 may overflow at huge logits).
    return jnp.where(z_loss != 0, z_loss * lse * lse, 0)


def _weighted(weight, keep, v):
    """``weight * v`` on kept rows, 0 elsewhere; ``weight=None`` means 1 on kept rows."""
    if weight is None:
        return jnp.where(keep, v, 0)
    return jnp.where(keep & (weight != 0), weight * v, 0)


# ``weight`` is None without class weights (the weight is then ``keep_row``) and
# ``z_loss`` None when it is a concrete 0: the terms they would add vanish at
# trace time instead of costing an N x K multiply in the gradient.
@functools.partial(jax.custom_jvp, nondiff_argnums=(6,))
def _int_ce(x, labels, weight, keep_row, mask, z_loss, axis):
    ce, lse, empty, *_ = _int_ce_parts(x, labels, mask, axis)
    keep = keep_row & ~empty
    loss = _weighted(weight, keep, ce)
    if z_loss is not None:
        loss = loss + jnp.where(keep, _z_penalty(z_loss, jnp.where(keep, lse, 0)), 0)
    return loss


def _int_ce_jvp(axis, primals, tangents):
    x, labels, weight, keep_row, mask, z_loss = primals
    dx, _, dweight, _, _, dz_loss = tangents
    ce, lse, empty, valid, idx, xm, m, s = _int_ce_parts(x, labels, mask, axis)
    keep = keep_row & ~empty
    lse_k = jnp.where(keep, lse, 0)
    loss = _weighted(weight, keep, ce)
    if z_loss is not None:
        loss = loss + jnp.where(keep, _z_penalty(z_loss, lse_k), 0)
    dloss = None
    if not _checks.is_symbolic_zero(dx):
        # w (p - onehot) + 2 z_loss lse p, zero on removed rows. The row factor
        # (w + 2 z_loss lse) / s is folded into one scale of exp(x - m): one
        # multiply per entry.
        w = jnp.ones_like(lse) if weight is None else weight
        coef_p = w if z_loss is None else w + 2 * z_loss * lse_k
        s_r = jnp.squeeze(s, axis)
        scale = jnp.where(keep, coef_p / jnp.where(keep, s_r, 1), 0)
        p_scaled = jnp.exp(xm - m) * jnp.expand_dims(scale, axis)
        dx = clean_tangent(dx, mask).astype(p_scaled.dtype)
        coef_y = jnp.where(keep, jnp.where(valid, w, jnp.nan), 0)
        dx_y = jnp.squeeze(jnp.take_along_axis(dx, idx, axis=axis), axis)
        dloss = jnp.sum(p_scaled * dx, axis=axis) - coef_y * dx_y
    if weight is not None and not _checks.is_symbolic_zero(dweight):
        dloss = _add(dloss, jnp.where(keep, ce, 0) * dweight)
    if z_loss is not None and not _checks.is_symbolic_zero(dz_loss):
        dloss = _add(dloss, lse_k * lse_k * dz_loss)
    if dloss is None:
        dloss = jnp.zeros_like(loss)
    return loss, dloss


_int_ce.defjvp(_int_ce_jvp, symbolic_zeros=True)


def softmax_cross_entropy_with_integer_labels(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
    z_loss: float | ArrayLike = 0.0,
    logit_softcap: float | None = None,
) -> Array:
    r"""Softmax cross-entropy with integer class labels.

    .. math::
      L = w_{y}\,\big(\mathrm{lse}(z) - z_{y}\big) + \lambda_z\,\mathrm{lse}(z)^2,
      \qquad \frac{\partial L}{\partial z} = w_y(\mathrm{softmax}(z) - e_y)
      + 2\lambda_z\,\mathrm{lse}(z)\,\mathrm{softmax}(z)

    with :math:`w_y` = ``class_weights[label]`` (1 without class weights), the
    PaLM z-loss weight :math:`\lambda_z` = ``z_loss``, and, with
    ``logit_softcap`` = c, logits replaced by :math:`c\tanh(z/c)` first.

    Conventions:
      * Rows whose label equals ``ignore_index``, and rows removed by a row
        mask, give loss 0 and gradient 0 (PyTorch's ``ignore_index``). With
        ``reduction="mean"`` PyTorch divides by the summed weights of kept rows:
        :func:`jaxent.weighted_mean` reproduces that.
      * A label outside ``[0, K)`` that is not ``ignore_index`` gives NaN for
        that row (loss and gradient), so it cannot silently train on a wrong
        class; ``jaxent.checked`` reports the first offending index.
      * A label whose class is removed by ``where`` (or has a ``-inf`` logit)
        gives ``+inf``, the true value; a row with no class left gives 0.
      * The z-loss is not scaled by the class weight.

    Args:
      logits: floating array ``[..., K]``.
      labels: integer array with the shape of ``logits`` without ``axis``.
      axis: the class axis.
      where: optional mask (rank of ``logits``: classes; one less: rows).
      ignore_index: a label value whose rows are ignored (e.g. -100).
      class_weights: floating ``[K]`` weights (PyTorch's ``weight``).
      z_loss: weight of the :math:`\mathrm{lse}^2` penalty (0 disables it).
      logit_softcap: if given, the cap c > 0 of :math:`c\tanh(z/c)`.

    Returns:
      Per-example losses in the dtype of ``logits`` (computed in >= float32).
    """
    logits = _checks.check_floating(logits, "logits")
    labels = _checks.check_integer(labels, "labels")
    ax = _checks.canonical_axis(axis, logits.ndim)
    row_shape = logits.shape[:ax] + logits.shape[ax + 1 :]
    if labels.shape != row_shape:
        raise ValueError(
            f"`labels` must have the shape of `logits` without the class axis,"
            f" {row_shape}, got {labels.shape} (logits shape {logits.shape}, axis={axis})."
        )
    num_classes = logits.shape[ax]
    dt = logits.dtype
    cdt = _checks.compute_dtype(dt)
    x = logits  # upcast inside the kernel, fused with the reductions
    if logit_softcap is not None:
        _checks.check_scalar_range(
            logit_softcap, "logit_softcap", 0, float("inf"), low_closed=False
        )
        x = _softcap(x.astype(cdt), jnp.asarray(logit_softcap, cdt))
    _checks.check_scalar_range(z_loss, "z_loss", 0, float("inf"))
    mask = None
    keep_row = jnp.ones(row_shape, bool)
    if where is not None:
        full = _checks.normalize_where(where, logits.shape, ax)
        if jnp.ndim(where) == logits.ndim - 1:  # a mask of rows
            keep_row = jnp.broadcast_to(jnp.asarray(where) != 0, row_shape)
        else:  # a mask of classes
            mask = full
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int or None, got {ignore_index!r}.")
        keep_row = keep_row & (labels != ignore_index)
    if class_weights is not None:
        cw = _checks.check_floating(class_weights, "class_weights")
        if cw.shape != (num_classes,):
            raise ValueError(
                f"`class_weights` must have shape ({num_classes},), one weight per class,"
                f" got {cw.shape}."
            )
        weight = cw.astype(cdt)[jnp.clip(labels, 0, num_classes - 1)]
        weight = jnp.where(keep_row, weight, 0)
    else:
        weight = None  # 1 on kept rows
    z_loss = None if _is_concrete_zero(z_loss) else jnp.asarray(z_loss, cdt)
    return _int_ce(x, labels, weight, keep_row, mask, z_loss, ax).astype(dt)


def _is_concrete_zero(v) -> bool:
    """A value known to be 0 at trace time (a Python or concrete array 0)."""
    if isinstance(v, jax.core.Tracer):
        return False
    try:
        return bool(np.all(np.asarray(v) == 0))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- binary


@jax.custom_jvp
def _sigmoid_bce(z: Array, y: Array, pos_weight: Array) -> Array:
    a = 1 - y
    b = pos_weight * y
    sp_pos = jax.nn.softplus(z)  # -log(1 - sigma(z))
    sp_neg = jax.nn.softplus(-z)  # -log(sigma(z))
    return jnp.where(a != 0, a * sp_pos, 0) + jnp.where(b != 0, b * sp_neg, 0)


def _sigmoid_bce_jvp(primals, tangents):
    z, y, pos_weight = primals
    dz, dy, dpw = tangents
    loss = _sigmoid_bce(z, y, pos_weight)
    dout = None
    if not _checks.is_symbolic_zero(dz):
        # (1 - y) sigma(z) - pw y sigma(-z): no cancellation for large |z|.
        dout = ((1 - y) * jax.nn.sigmoid(z) - pos_weight * y * jax.nn.sigmoid(-z)) * dz
    if not _checks.is_symbolic_zero(dy):
        sp_neg = jax.nn.softplus(-z)
        dy_coef = jnp.where(pos_weight != 0, pos_weight * sp_neg, 0) - jax.nn.softplus(z)
        dout = _add(dout, dy_coef * dy)
    if not _checks.is_symbolic_zero(dpw):
        dout = _add(dout, jnp.where(y != 0, y * jax.nn.softplus(-z), 0) * dpw)
    return loss, jnp.zeros_like(loss) if dout is None else dout


_sigmoid_bce.defjvp(_sigmoid_bce_jvp, symbolic_zeros=True)


def sigmoid_binary_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    pos_weight: ArrayLike | None = None,
) -> Array:
    r"""Elementwise sigmoid binary cross-entropy (PyTorch's ``binary_cross_entropy_with_logits``).

    .. math::
      L = (1-y)\,\mathrm{softplus}(z) + w_+\,y\,\mathrm{softplus}(-z),
      \qquad \frac{\partial L}{\partial z} = (1-y)\,\sigma(z) - w_+\,y\,\sigma(-z)

    which equals :math:`\sigma(z) - y` for :math:`w_+ = 1` but keeps full
    relative accuracy for large :math:`|z|` (at z = 50, y = 1 the gradient is
    :math:`-1.93\cdot10^{-22}`, where PyTorch returns 0). Written as a sum of
    non-negative terms, the loss is exact at ``+-inf`` logits (0 or ``+inf``).

    Args:
      logits: floating array.
      labels: targets in [0, 1], broadcastable to ``logits``.
      pos_weight: weight :math:`w_+` of positive examples, broadcastable to
        ``logits`` (PyTorch's ``pos_weight``, one per class on the last axis).

    Returns:
      Elementwise losses with the shape and dtype of ``logits``.
    """
    logits = _checks.check_floating(logits, "logits")
    y = _checks.as_inexact(labels, "labels")
    if _checks.check_broadcastable(logits, y, "logits", "labels") != logits.shape:
        raise ValueError(
            f"`labels` with shape {y.shape} must broadcast to the shape of `logits` {logits.shape}."
        )
    cdt = _checks.compute_dtype(logits.dtype, y.dtype)
    if pos_weight is None:
        pw = jnp.ones((), cdt)
    else:
        pw = _checks.as_inexact(pos_weight, "pos_weight")
        if _checks.check_broadcastable(logits, pw, "logits", "pos_weight") != logits.shape:
            raise ValueError(
                f"`pos_weight` with shape {pw.shape} must broadcast to the shape of"
                f" `logits` {logits.shape}."
            )
        pw = pw.astype(cdt)
    out_dt = _checks.output_dtype(logits.dtype, y.dtype)
    z = logits.astype(cdt)
    y = jnp.broadcast_to(y.astype(cdt), z.shape)
    pw = jnp.broadcast_to(pw, z.shape)
    return _sigmoid_bce(z, y, pw).astype(out_dt)


@jax.custom_jvp
def _bce(p: Array, y: Array) -> Array:
    a = 1 - y
    nlog_p = -jnp.log(jnp.where(y != 0, p, 1))
    nlog_1mp = -jnp.log1p(-jnp.where(a != 0, p, 0))
    return jnp.where(y != 0, y * nlog_p, 0) + jnp.where(a != 0, a * nlog_1mp, 0)


def _bce_jvp(primals, tangents):
    p, y = primals
    dp, dy = tangents
    loss = _bce(p, y)
    dout = None
    if not _checks.is_symbolic_zero(dp):
        # dL/dp = (1 - y)/(1 - p) - y/p, each term 0 where its coefficient is 0.
        a = 1 - y
        dp_coef = jnp.where(a != 0, a / jnp.where(a != 0, 1 - p, 1), 0) - jnp.where(
            y != 0, y / jnp.where(y != 0, p, 1), 0
        )
        dout = dp_coef * dp
    if not _checks.is_symbolic_zero(dy):
        # dL/dy = log(1 - p) - log(p) = -logit(p); 0 at p in {0, 1} (convention:
        # a finite label derivative at an impossible prediction).
        inside = (p > 0) & (p < 1)
        q = jnp.where(inside, p, 0.5)
        dout = _add(dout, jnp.where(inside, jnp.log1p(-q) - jnp.log(q), 0) * dy)
    return loss, jnp.zeros_like(loss) if dout is None else dout


_bce.defjvp(_bce_jvp, symbolic_zeros=True)


def binary_cross_entropy(probs: ArrayLike, labels: ArrayLike) -> Array:
    r"""Elementwise binary cross-entropy from probabilities.

    .. math::
      L = -y\log p - (1-y)\log(1-p),
      \qquad \frac{\partial L}{\partial p} = \frac{1-y}{1-p} - \frac{y}{p}

    with :math:`0\log 0 = 0`. Unlike PyTorch, which clamps each log at -100,
    a confident wrong prediction gives ``+inf`` (the true value). Prefer
    :func:`sigmoid_binary_cross_entropy` on logits for training.

    Args:
      probs: probabilities in [0, 1].
      labels: targets in [0, 1], same shape as ``probs``.

    Returns:
      Elementwise losses in the floating dtype of the inputs.
    """
    p = _checks.as_inexact(probs, "probs")
    y = _checks.as_inexact(labels, "labels")
    _checks.check_same_shape(p, y, "probs", "labels")
    cdt = _checks.compute_dtype(p.dtype, y.dtype)
    return _bce(p.astype(cdt), y.astype(cdt)).astype(_checks.output_dtype(p.dtype, y.dtype))


# --------------------------------------------------------------------------- reduction


def weighted_mean(
    losses: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    where: ArrayLike | None = None,
    losses_are_weighted: bool = False,
) -> Array:
    r"""The batch mean PyTorch's ``reduction="mean"`` computes.

    .. math::
      \bar L = \frac{\sum_{n\,\text{kept}} w_n L_n}{\sum_{n\,\text{kept}} w_n}

    To reproduce ``F.cross_entropy(logits, labels, weight=cw, ignore_index=-100)``::

      losses = jaxent.softmax_cross_entropy_with_integer_labels(
          logits, labels, ignore_index=-100)
      keep = labels != -100
      jaxent.weighted_mean(losses, weights=cw[jnp.where(keep, labels, 0)], where=keep)

    or, with losses that already carry the weights (``class_weights=cw``),
    pass ``losses_are_weighted=True`` to divide :math:`\sum L_n` by
    :math:`\sum w_n`. When nothing is kept (or the weights sum to 0) the
    result is 0 with gradient 0, where PyTorch returns NaN.

    Args:
      losses: per-example losses (any shape; every axis is reduced).
      weights: per-example weights broadcastable to ``losses`` (default 1).
      where: per-example boolean mask of rows to keep.
      losses_are_weighted: ``losses`` already include the weights.

    Returns:
      A scalar in the dtype of ``losses`` (accumulated in >= float32).
    """
    losses = _checks.as_inexact(losses, "losses")
    cdt = _checks.compute_dtype(losses.dtype)
    lo = losses.astype(cdt)
    if weights is None:
        w = jnp.ones_like(lo)
    else:
        w = _checks.as_inexact(weights, "weights")
        if _checks.check_broadcastable(lo, w, "losses", "weights") != lo.shape:
            raise ValueError(
                f"`weights` with shape {w.shape} must broadcast to `losses` {lo.shape}."
            )
        w = jnp.broadcast_to(w.astype(cdt), lo.shape)
    if where is not None:
        keep = jnp.asarray(where)
        if _checks.check_broadcastable(lo, keep, "losses", "where") != lo.shape:
            raise ValueError(
                f"`where` with shape {keep.shape} must broadcast to `losses` {lo.shape}."
            )
        keep = jnp.broadcast_to(keep.astype(bool), lo.shape)
        w = jnp.where(keep, w, 0)
        lo = jnp.where(keep, lo, 0)
    num = lo if losses_are_weighted else jnp.where(w != 0, w * lo, 0)
    total = jnp.sum(num)
    denom = jnp.sum(w)
    out = jnp.where(denom != 0, total / jnp.where(denom != 0, denom, 1), 0)
    return out.astype(losses.dtype)
