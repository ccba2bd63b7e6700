"""Cross-entropy losses (optax argument order: prediction first) and their reduction.

Every loss returns per-example values (reduced over the class axis only) and
differentiates through a closed form. The two softmax cross-entropies are
front ends of the one engine (:mod:`jaxent._engine`, a ``jax.custom_jvp``):

* soft labels:      dL/dz = (sum y) softmax(z) - y
* integer labels:   dL/dz = w_y (softmax(z) - onehot(y)) + 2 z_loss lse softmax(z)
* sigmoid binary cross-entropy:          dL/dz = (1 - y) sigma(z) - pos_weight y sigma(-z)
                                         (= sigma(z) - y without pos_weight, exact for large |z|)
* binary cross-entropy from probs:       dL/dp = (1 - y)/(1 - p) - y/p

Public functions validate their arguments in Python (trace-time errors for
Python-scalar hyper-parameters), then call one ``jax.jit``-ed inner function
with static options, so an eager call is one compiled dispatch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks
from jaxent import _engine as _eng

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _add(a: Array | None, b: Array) -> Array:
    return b if a is None else a + b


def _is_concrete_zero(v) -> bool:
    """A value known to be 0 at trace time (a Python or concrete array 0)."""
    if _checks.is_tracer(v):
        return False
    try:
        return bool(np.all(np.asarray(v) == 0))
    except (TypeError, ValueError):
        return False


def _in_base(out: Array, log_base) -> Array:
    return out if log_base is None else out / jnp.asarray(log_base).astype(out.dtype)


def _scale_logits(x: Array, temperature, cdt) -> Array:
    """``x / T`` in the compute dtype (``T=None``: ``x`` unchanged, upcast inside the engine)."""
    if temperature is None:
        return x
    return x.astype(cdt) / jnp.asarray(temperature).astype(cdt)


def _check_temperature(temperature) -> None:
    if temperature is not None:
        _checks.check_positive(temperature, "temperature")


# --------------------------------------------------------------------------- soft labels


@_checks.one_call(static_argnames=("axis",))
def _soft_ce(x, y, where, log_base, temperature, *, axis):
    mask, rows = _checks.split_where(where, x.shape, axis)
    cdt = _checks.compute_dtype(x.dtype, y.dtype)
    out_dt = _checks.output_dtype(x.dtype, y.dtype)
    x = _scale_logits(x, temperature, cdt)
    if _checks.compute_dtype(x.dtype) != cdt:
        x = x.astype(cdt)
    keep = None if rows is None else jnp.expand_dims(rows, axis)
    tgt = _eng.Target(soft=y, keep=keep)
    out = _eng.dense_loss(x, tgt, axis=axis, mask=None if rows is not None else mask)
    return _in_base(jnp.squeeze(out, axis), log_base).astype(out_dt)


def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    base: ArrayLike | None = None,
    temperature: ArrayLike | None = None,
) -> Array:
    r"""Softmax cross-entropy with probability (soft or one-hot) labels.

    L = -sum_j y_j log softmax(z)_j = (sum_j y_j) lse(z) - <y, z>;  dL/dz = (sum_j y_j) softmax(z) - y

    .. math::
      L(z, y) = -\sum_i y_i \log \mathrm{softmax}(z / T)_i, \qquad
      \frac{\partial L}{\partial z} = \frac{1}{T}\Big(\Big(\sum_i y_i\Big)
      \mathrm{softmax}(z / T) - y\Big)

    Plain text: ``L = -sum_i y_i log softmax(z/T)_i``; with ``T = 1`` (the
    default) the gradient is ``(sum y) softmax(z) - y`` (seed 000: ``p - y``
    when ``sum y = 1``).

    Conventions: a term with :math:`y_i = 0` is 0 even where :math:`z_i = -\infty`
    (:math:`0 \log 0 = 0`); label mass on a ``-inf`` logit gives ``+inf``, the
    true value, with a finite gradient in the logits; removed entries (``where``)
    are left out of both the softmax and the sum; a fully removed row (or one
    whose logits are all ``-inf``, or ``K = 0``) gives 0 with gradient 0. A NaN
    logit gives a NaN row, a ``+inf`` logit NaN (outside the domain). Labels
    are not renormalised.

    ``temperature`` divides the logits before the softmax; the result is *not*
    multiplied by :math:`T^2`. Hinton's distillation loss scales it itself:
    ``T**2 * softmax_cross_entropy(student, softmax(teacher / T), temperature=T)``.

    Args:
      logits: floating array of shape ``[..., K]`` (class axis ``axis``).
      labels: probabilities with the same shape (integer one-hot allowed).
      axis: the class axis.
      where: optional mask (rank of ``logits``: classes; one less: rows).
      base: the unit: ``None`` (nats), ``2`` (bits), any number > 0 and != 1.
      temperature: optional :math:`T > 0` dividing the logits.

    Returns:
      Per-example losses (``logits.shape`` without ``axis``) in the promoted
      floating dtype of the inputs, computed in at least float32.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> float(jaxent.softmax_cross_entropy(jnp.zeros(4), jnp.array([1.0, 0, 0, 0])))
      1.386...
      >>> float(jaxent.softmax_cross_entropy(jnp.zeros(4), jnp.array([1.0, 0, 0, 0]), base=2))
      2.0
    """
    x = _checks.check_floating(logits, "logits")
    y = _checks.as_inexact(labels, "labels")
    _checks.check_same_shape(x, y, "logits", "labels")
    ax = _checks.canonical_axis(axis, x.ndim)
    lb = _checks.log_base(base)
    _check_temperature(temperature)
    return _soft_ce(x, y, where, lb, temperature, axis=ax)


# --------------------------------------------------------------------------- integer labels


def logit_softcap(logits: ArrayLike, cap: ArrayLike) -> Array:
    r"""Soft-caps logits: :math:`c \tanh(z / c)` (Gemma 2, Grok), closed-form JVP.

    ``-inf`` (a ruled-out class) stays ``-inf``.
    """
    x = _checks.check_floating(logits, "logits")
    cdt = _checks.compute_dtype(x.dtype)
    return _eng.softcap(x.astype(cdt), jnp.asarray(cap, cdt)).astype(x.dtype)


@_checks.one_call(static_argnames=("axis", "ignore_index"))
def _int_ce(x, labels, where, class_weights, z_loss, cap, log_base, temperature, *, axis,
            ignore_index):  # fmt: skip
    k = x.shape[axis]
    cdt = _checks.compute_dtype(x.dtype)
    out_dt = x.dtype
    mask, rows = _checks.split_where(where, x.shape, axis)
    wide, valid = _checks.labels_in_range(labels, k)
    keep = rows
    if ignore_index is not None:
        kept = wide != jnp.asarray(ignore_index).astype(wide.dtype)
        keep = kept if keep is None else keep & kept
    if k == 0:
        return jnp.zeros(wide.shape, out_dt)
    idx = jnp.expand_dims(jnp.clip(wide, 0, k - 1), axis)
    valid = jnp.expand_dims(valid, axis)
    w_y = jnp.ones((), cdt) if class_weights is None else class_weights.astype(cdt)[idx]
    t = jnp.where(valid, w_y, jnp.asarray(jnp.nan, cdt))
    x = _scale_logits(x, temperature, cdt)
    if cap is not None:
        x = _eng.softcap(x.astype(cdt), jnp.asarray(cap).astype(cdt))
    tgt = _eng.Target(
        labels=idx,
        t=t,
        keep=None if keep is None else jnp.expand_dims(keep, axis),
        z_loss=None if z_loss is None else jnp.asarray(z_loss).astype(cdt),
    )
    out = _eng.dense_loss(x, tgt, axis=axis, mask=mask if rows is None else None)
    return _in_base(jnp.squeeze(out, axis), log_base).astype(out_dt)


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
    base: ArrayLike | None = None,
    temperature: ArrayLike | None = None,
) -> Array:
    r"""Softmax cross-entropy with integer class labels.

    L = lse(z) - z_y (+ lam lse(z)^2);  dL/dz = softmax(z) - onehot(y) (+ 2 lam lse softmax(z))

    .. math::
      L = w_{y}\,\big(\mathrm{lse}(z) - z_{y}\big) + \lambda_z\,\mathrm{lse}(z)^2,
      \qquad \frac{\partial L}{\partial z} = w_y(\mathrm{softmax}(z) - e_y)
      + 2\lambda_z\,\mathrm{lse}(z)\,\mathrm{softmax}(z)

    Plain text: ``L = w_y (lse(z) - z_y) + z_loss lse(z)^2`` with ``w_y`` =
    ``class_weights[label]`` (1 without class weights), the PaLM z-loss weight
    :math:`\lambda_z` = ``z_loss``; with ``logit_softcap`` = c the logits are
    replaced by :math:`c\tanh(z/c)` first (``-inf`` stays ``-inf``), then
    divided by ``temperature`` (not multiplied back by :math:`T^2`).

    Conventions:
      * Rows whose label equals ``ignore_index``, and rows removed by a row
        mask, give loss 0 and gradient 0 (PyTorch's ``ignore_index``). With
        ``reduction="mean"`` PyTorch divides by the summed weights of kept rows:
        :func:`jaxent.weighted_mean` reproduces that.
      * A label outside ``[0, K)`` that is not ``ignore_index`` gives NaN for
        that row (loss and gradient), whatever the class weights, so it cannot
        silently train on a wrong class; ``jaxent.checked`` reports the first
        offending index. Any integer dtype works (``int8`` labels are compared
        in a wide dtype).
      * A label whose class is removed by ``where`` (or has a ``-inf`` logit)
        gives ``+inf``, the true value; a row with no class left (or ``K = 0``)
        gives 0. A NaN logit gives a NaN row; ``+inf`` logits give NaN.
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
      base: the unit: ``None`` (nats), ``2`` (bits), any number > 0 and != 1.
      temperature: optional :math:`T > 0` dividing the logits.

    Returns:
      Per-example losses in the dtype of ``logits`` (computed in >= float32).

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> jaxent.softmax_cross_entropy_with_integer_labels(jnp.zeros((1, 4)), jnp.array([2]))
      Array([1.3862944], dtype=float32)
    """
    logits = _checks.check_floating(logits, "logits")
    labels = _checks.check_labels(labels, "labels")
    ax = _checks.canonical_axis(axis, logits.ndim)
    row_shape = logits.shape[:ax] + logits.shape[ax + 1 :]
    if labels.shape != row_shape:
        raise ValueError(
            f"`labels` must have the shape of `logits` without the class axis,"
            f" {row_shape}, got {labels.shape} (logits shape {logits.shape}, axis={axis})."
        )
    if logit_softcap is not None:
        _checks.check_positive(logit_softcap, "logit_softcap")
    _checks.check_nonnegative(z_loss, "z_loss")
    ignore_index = _checks.check_ignore_index(ignore_index)
    cw = _checks.check_class_weights(class_weights, logits.shape[ax])
    lb = _checks.log_base(base)
    _check_temperature(temperature)
    zl = None if _is_concrete_zero(z_loss) else z_loss
    return _int_ce(logits, labels, where, cw, zl, logit_softcap, lb, temperature, axis=ax,
                   ignore_index=ignore_index)  # fmt: skip


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
    base: ArrayLike | None = None,
) -> Array:
    r"""Elementwise sigmoid binary cross-entropy (PyTorch's ``binary_cross_entropy_with_logits``).

    L = w+ y softplus(-z) + (1 - y) softplus(z)  (= -w+ y log s - (1 - y) log(1 - s), s = sigmoid(z))
    dL/dz = (w+ y + 1 - y) sigmoid(z) - w+ y

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
      base: the unit: ``None`` (nats), ``2`` (bits), any number > 0 and != 1.

    Returns:
      Elementwise losses with the shape and dtype of ``logits``.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> z, y = jnp.array([2.0, -1.0, 50.0]), jnp.array([1.0, 0.0, 1.0])
      >>> jaxent.sigmoid_binary_cross_entropy(z, y)  # at z = 50: e^-50, the true value
      Array([1.2692800e-01, 3.1326169e-01, 1.9287499e-22], dtype=float32)
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
    return _in_base(_sigmoid_bce(z, y, pw), _checks.log_base(base)).astype(out_dt)


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


def binary_cross_entropy(
    probs: ArrayLike, labels: ArrayLike, *, base: ArrayLike | None = None
) -> Array:
    r"""Elementwise binary cross-entropy from probabilities.

    L = -y log p - (1 - y) log(1 - p);  dL/dp = (1 - y)/(1 - p) - y/p  (0 log 0 = 0)

    .. math::
      L = -y\log p - (1-y)\log(1-p),
      \qquad \frac{\partial L}{\partial p} = \frac{1-y}{1-p} - \frac{y}{p}

    with :math:`0\log 0 = 0`. Unlike PyTorch, which clamps each log at -100,
    a confident wrong prediction gives ``+inf`` (the true value). Prefer
    :func:`sigmoid_binary_cross_entropy` on logits for training.

    Args:
      probs: probabilities in [0, 1].
      labels: targets in [0, 1], same shape as ``probs``.
      base: the unit: ``None`` (nats), ``2`` (bits), any number > 0 and != 1.

    Returns:
      Elementwise losses in the floating dtype of the inputs.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> jaxent.binary_cross_entropy(jnp.array([0.9, 0.2, 0.0]), jnp.array([1.0, 0.0, 1.0]))
      Array([0.10536055, 0.22314355,        inf], dtype=float32)
    """
    p = _checks.as_inexact(probs, "probs")
    y = _checks.as_inexact(labels, "labels")
    _checks.check_same_shape(p, y, "probs", "labels")
    cdt = _checks.compute_dtype(p.dtype, y.dtype)
    out = _in_base(_bce(p.astype(cdt), y.astype(cdt)), _checks.log_base(base))
    return out.astype(_checks.output_dtype(p.dtype, y.dtype))


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

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> losses = jnp.array([1.0, 2.0, 3.0])
      >>> jaxent.weighted_mean(losses, weights=jnp.array([1.0, 1.0, 2.0]))  # (1 + 2 + 6) / 4
      Array(2.25, dtype=float32)
      >>> jaxent.weighted_mean(losses, where=jnp.array([True, False, True]))
      Array(2., dtype=float32)
      >>> jaxent.weighted_mean(losses, where=jnp.zeros(3, bool))  # nothing kept: 0, not NaN
      Array(0., dtype=float32)
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
        keep = _checks.check_mask(where, lo.shape)  # boolean, broadcast to `losses`
        w = jnp.where(keep, w, 0)
        lo = jnp.where(keep, lo, 0)
    num = lo if losses_are_weighted else jnp.where(w != 0, w * lo, 0)
    total = jnp.sum(num)
    denom = jnp.sum(w)
    out = jnp.where(denom != 0, total / jnp.where(denom != 0, denom, 1), 0)
    return out.astype(losses.dtype)
