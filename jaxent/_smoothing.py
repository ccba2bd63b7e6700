r"""Label smoothing: ``smooth_labels``, ``label_smoothed_cross_entropy``,
``with_label_smoothing`` and ``optimal_logit_gap``.

Two conventions are in use and are easy to confuse; every function here takes
``convention`` explicitly. With :math:`K` classes, smoothing factor
:math:`\varepsilon` and true class :math:`y`:

* ``"uniform"`` (optax, PyTorch, Keras): the true class gets
  :math:`1-\varepsilon+\varepsilon/K`, every other class :math:`\varepsilon/K`;
* ``"off_target"`` (seed 000, T5X, Praxis, Megatron): the true class gets
  :math:`1-\varepsilon`, every other class :math:`\varepsilon/(K-1)`.

For probability labels :math:`y`:

* ``uniform``:    :math:`\tilde y = (1-\varepsilon)\, y + \varepsilon / K`
* ``off_target``: :math:`\tilde y = (1-\varepsilon)\, y + \frac{\varepsilon}{K-1}(1 - y)`

which agree with the above for one-hot labels. ``off_target`` with
:math:`K = 1` has no off-target class to receive mass: the labels are left
unchanged (all the mass stays on the true class).

At the minimum of the smoothed cross-entropy :math:`\mathrm{softmax}(z) =
\tilde y`, so the logits no longer run off to :math:`\pm\infty`: the gap
between the true logit and every other one is finite
(:func:`optimal_logit_gap`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks
from jaxent import _softmax as _sm

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

CONVENTIONS = ("uniform", "off_target")


# --------------------------------------------------------------------------- checks


def _check_epsilon(epsilon: Any) -> None:
    """``epsilon`` must be a real scalar in [0, 1); a traced value is accepted unchecked."""
    if isinstance(epsilon, bool):
        raise TypeError(f"`epsilon` must be a number in [0, 1), got {epsilon!r}.")
    if not isinstance(epsilon, jax.core.Tracer):
        arr = np.asarray(epsilon) if not isinstance(epsilon, jax.Array) else epsilon
        if (
            not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer))
            and arr.dtype != jnp.bfloat16
        ):
            raise TypeError(f"`epsilon` must be a real number, got {epsilon!r}.")
    _checks.check_scalar_range(epsilon, "epsilon", 0.0, 1.0)


def _check_num_classes(num_classes: Any) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"`num_classes` must be an int >= 1, got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {num_classes}.")
    return int(num_classes)


def _check_class_weights(class_weights: Any, num_classes: int, dtype: Any) -> Array | None:
    if class_weights is None:
        return None
    w = _checks.check_floating(class_weights, "class_weights")
    if w.shape != (num_classes,):
        raise ValueError(
            f"`class_weights` must have shape ({num_classes},) (one weight per class),"
            f" got {w.shape}."
        )
    return w.astype(dtype)


def _has_tangent(t: Any) -> bool:
    """Whether a custom-JVP tangent is a real (non-``None``, non-symbolic-zero) array."""
    return t is not None and not _checks.is_symbolic_zero(t)


def _is_integer(x: Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.integer)


# --------------------------------------------------------------------------- smoothing


def _smooth(y: Array, eps: Array, k: Any, convention: str) -> Array:
    """Smooths probability labels ``y`` over ``k`` classes (``k`` int or per-row array)."""
    if convention == "uniform":
        if isinstance(k, int):
            return (1.0 - eps) * y + eps / k
        return (1.0 - eps) * y + eps / jnp.where(k > 0, k, 1)
    # off_target: K <= 1 has no off-target class, the labels stay as they are.
    if isinstance(k, int):
        if k <= 1:
            return y
        return (1.0 - eps) * y + eps / (k - 1) * (1.0 - y)
    smoothed = (1.0 - eps) * y + eps / jnp.where(k > 1, k - 1, 1) * (1.0 - y)
    return jnp.where(k > 1, smoothed, y)


def smooth_labels(
    labels: ArrayLike,
    epsilon: ArrayLike,
    *,
    num_classes: int | None = None,
    convention: str = "uniform",
    axis: int = -1,
) -> Array:
    r"""Smooths one-hot, probability or integer labels.

    With :math:`K` classes and smoothing factor :math:`\varepsilon`:

    .. math::
      \tilde y =
      \begin{cases}
        (1-\varepsilon)\, y + \dfrac{\varepsilon}{K}
          & \text{convention="uniform" (optax, PyTorch)} \\[1ex]
        (1-\varepsilon)\, y + \dfrac{\varepsilon}{K-1}\,(1 - y)
          & \text{convention="off_target" (T5X, Praxis, Megatron)}
      \end{cases}

    For a one-hot :math:`y` the true class gets :math:`1-\varepsilon+\varepsilon/K`
    (uniform) or :math:`1-\varepsilon` (off_target), every other class
    :math:`\varepsilon/K` or :math:`\varepsilon/(K-1)`. ``off_target`` with
    :math:`K=1` leaves the labels unchanged (no off-target class). ``uniform``
    equals :func:`optax.smooth_labels`.

    Args:
      labels: probability labels (floating or boolean, one-hot or soft) with
        the classes along ``axis``; or integer class indices, in which case
        ``num_classes`` is required. An integer label outside
        ``[0, num_classes)`` gives a row of NaN.
      epsilon: the smoothing factor in :math:`[0, 1)`; may be traced (the
        range check then applies only to concrete values).
      num_classes: the number of classes :math:`K`. Required for integer
        labels; for probability labels it must match ``labels.shape[axis]``.
      convention: ``"uniform"`` or ``"off_target"`` (see above).
      axis: the class axis of probability labels; for integer labels, the
        position of the new class axis in the output (as in
        :func:`jax.nn.one_hot`).

    Returns:
      Smoothed labels: the shape and floating dtype of probability labels
      (computed in at least float32); for integer labels
      ``labels.shape`` with a class axis of size ``num_classes`` inserted at
      ``axis``, in the default float dtype.

    Raises:
      TypeError: complex labels, or a non-numeric ``epsilon``/``num_classes``.
      ValueError: ``epsilon`` outside [0, 1), an unknown ``convention``,
        ``num_classes`` < 1, integer labels without ``num_classes``, or a
        ``num_classes`` that does not match probability labels.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> jaxent.smooth_labels(jnp.array([2]), 0.1, num_classes=3)
      Array([[0.03333334, 0.03333334, 0.93333334]], dtype=float32)
      >>> jaxent.smooth_labels(jnp.array([2]), 0.1, num_classes=3, convention="off_target")
      Array([[0.05, 0.05, 0.9 ]], dtype=float32)
    """
    convention = _checks.check_option(convention, "convention", CONVENTIONS)
    _check_epsilon(epsilon)
    num_classes = _check_num_classes(num_classes)
    labels = jnp.asarray(labels)
    if _is_integer(labels):
        if num_classes is None:
            raise ValueError(
                "`num_classes` is required with integer `labels` (class indices);"
                " pass e.g. `num_classes=logits.shape[-1]`."
            )
        ax = _checks.canonical_axis(axis, labels.ndim + 1)
        dt = jnp.result_type(float)
        y = jnp.expand_dims(labels, ax)
        iota = jnp.arange(num_classes, dtype=labels.dtype)
        iota = iota.reshape(_class_shape(labels.ndim + 1, ax, num_classes))
        onehot = (y == iota).astype(dt)
        eps = jnp.asarray(epsilon, dt)
        out = _smooth(onehot, eps, num_classes, convention)
        valid = (y >= 0) & (y < num_classes)
        return jnp.where(valid, out, jnp.nan)
    labels = _checks.as_inexact(labels, "labels")
    ax = _checks.canonical_axis(axis, labels.ndim)
    k = labels.shape[ax]
    if num_classes is not None and num_classes != k:
        raise ValueError(
            f"`num_classes`={num_classes} does not match `labels.shape[{axis}]`={k}"
            " for probability labels."
        )
    dt = _checks.compute_dtype(labels.dtype)
    eps = jnp.asarray(epsilon, dt)
    return _smooth(labels.astype(dt), eps, k, convention).astype(labels.dtype)


# --------------------------------------------------------------------------- kernels


def _finite_or_zero(lp: Array) -> Array:
    """Log-probabilities with ``-inf`` (removed or impossible classes) replaced by 0.

    Used only in the derivatives with respect to the target weights, where a
    ``-inf`` log-probability multiplies a tangent that is zero there.
    """
    return jnp.where(lp > -jnp.inf, lp, 0)


def _class_shape(ndim: int, axis: int, k: int) -> tuple[int, ...]:
    return tuple(k if i == axis else 1 for i in range(ndim))


@functools.partial(jax.custom_jvp, nondiff_argnums=(6, 7))
def _integer_core(
    x: Array,
    y: Array,
    mask: Array | None,
    t: Array,
    coef: Array,
    w: Array | None,
    axis: int,
    exclude_true: bool,
) -> Array:
    r"""``-t * lp_y - coef * sum_{c in R} w_c lp_c`` with reductions only.

    ``y`` (clipped labels), ``t`` and ``coef`` have the class axis kept with
    size 1; ``R`` is the kept classes, without ``y`` when ``exclude_true``.
    An empty row (no kept class, or all logits ``-inf``) gives 0.
    """
    _, _, s, m = _sm.row_stats(x, mask, axis)
    # Weight of each class: t on the true class, coef * w_c on the smoothing
    # classes R; weighted_nll keeps terms exact where x - m overflows.
    sel = _rest_selection(x.shape, y, mask, axis, exclude_true)
    a = (
        jnp.broadcast_to(coef, x.shape)
        if w is None
        else coef * w.reshape(_class_shape(x.ndim, axis, w.shape[0]))
    )
    if sel is not None:
        a = jnp.where(sel, a, 0)
    x_y = jnp.take_along_axis(x if mask is None else jnp.where(mask, x, -jnp.inf), y, axis=axis)
    true_part = t * _sm.log_row_sum(s) - 2 * jnp.where(t != 0, t * (0.5 * x_y - 0.5 * m), 0)
    rest_part = jnp.where(coef != 0, _sm.weighted_nll(a, x, m, s, axis), 0)
    return jnp.where(s > 0, true_part + rest_part, 0)


def _rest_selection(
    shape: tuple[int, ...], y: Array, mask: Array | None, axis: int, exclude_true: bool
) -> Array | None:
    """Boolean selection of the smoothing classes ``R`` (``None``: all of them)."""
    sel = mask
    if exclude_true:
        iota = jax.lax.broadcasted_iota(y.dtype, shape, axis)
        off = iota != y
        sel = off if sel is None else sel & off
    return sel


def _integer_core_jvp(axis, exclude_true, primals, tangents):
    x, y, mask, t, coef, w = primals
    dx, _, _, dt, dcoef, dw = tangents
    out = _integer_core(x, y, mask, t, coef, w, axis, exclude_true)
    shifted, _, s, _ = _sm.row_stats(x, mask, axis)
    t = jnp.where(s > 0, t, 0)  # an empty row has loss 0 and gradient 0
    coef = jnp.where(s > 0, coef, 0)
    sel = _rest_selection(x.shape, y, mask, axis, exclude_true)
    wb = None if w is None else w.reshape(_class_shape(x.ndim, axis, w.shape[0]))
    tan = jnp.zeros_like(out)
    if _has_tangent(dx):
        # d loss = <S p - a, dx>, a = t e_y + coef w 1_R, S = sum(a).
        p = _sm._softmax(x, mask, axis)
        dx = _sm.clean_tangent(dx, mask)
        if wb is None:
            w_rest = (
                jnp.asarray(x.shape[axis], x.dtype)
                if sel is None
                else jnp.sum(sel, axis=axis, keepdims=True, dtype=x.dtype)
            )
            wdx_rest = jnp.sum(dx if sel is None else jnp.where(sel, dx, 0), axis, keepdims=True)
        else:
            wsel = wb if sel is None else jnp.where(sel, wb, 0)
            w_rest = jnp.sum(jnp.broadcast_to(wsel, x.shape), axis=axis, keepdims=True)
            wdx_rest = jnp.sum(wsel * dx, axis=axis, keepdims=True)
        total = t + jnp.where(coef != 0, coef * w_rest, 0)
        dx_y = jnp.take_along_axis(dx, y, axis=axis)
        tan = (
            tan
            + total * jnp.sum(p * dx, axis=axis, keepdims=True)
            - t * dx_y
            - jnp.where(coef != 0, coef, 0) * wdx_rest
        )
    if _has_tangent(dt) or _has_tangent(dcoef) or _has_tangent(dw):
        lp = _finite_or_zero(_sm.log_probs_from_stats(shifted, s))
        lp_rest = lp if sel is None else jnp.where(sel, lp, 0)
        if _has_tangent(dt):
            tan = tan - dt * jnp.take_along_axis(lp, y, axis=axis)
        if _has_tangent(dcoef):
            wlp = lp_rest if wb is None else wb * lp_rest
            tan = tan - dcoef * jnp.sum(wlp, axis=axis, keepdims=True)
        if _has_tangent(dw):
            dwb = dw.reshape(_class_shape(x.ndim, axis, w.shape[0]))
            tan = tan - coef * jnp.sum(lp_rest * dwb, axis=axis, keepdims=True)
    return out, tan


_integer_core.defjvp(_integer_core_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _soft_core(x: Array, a: Array, mask: Array | None, axis: int) -> Array:
    """``-sum_c a_c lp_c`` with ``0 * lp = 0``; ``a`` is zero on removed entries.

    An empty row (no kept class, or all logits ``-inf``) gives 0.
    """
    _, _, s, m = _sm.row_stats(x, mask, axis)
    return jnp.where(s > 0, _sm.weighted_nll(a, x, m, s, axis), 0)


def _soft_core_jvp(axis, primals, tangents):
    x, a, mask = primals
    dx, da, _ = tangents
    out = _soft_core(x, a, mask, axis)
    shifted, _, s, _ = _sm.row_stats(x, mask, axis)
    tan = jnp.zeros_like(out)
    if _has_tangent(dx):
        # d loss = <sum(a) p - a, dx>  (= softmax - smoothed labels for a normalised target)
        p = _sm._softmax(x, mask, axis)
        dx = _sm.clean_tangent(dx, mask)
        a = jnp.where(s > 0, a, 0)  # an empty row has loss 0 and gradient 0
        total = jnp.sum(a, axis=axis, keepdims=True)
        tan = tan + jnp.sum((total * p - a) * dx, axis=axis, keepdims=True)
    if _has_tangent(da):
        lp = _finite_or_zero(_sm.log_probs_from_stats(shifted, s))
        tan = tan - jnp.sum(lp * da, axis=axis, keepdims=True)
    return out, tan


_soft_core.defjvp(_soft_core_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------- the loss


def label_smoothed_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    epsilon: ArrayLike,
    *,
    convention: str = "uniform",
    axis: int = -1,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    class_weights: ArrayLike | None = None,
) -> Array:
    r"""Softmax cross-entropy against smoothed labels, per example.

    .. math::
      \ell(z, y) = -\sum_{c} w_c\, \tilde y_c \log \mathrm{softmax}(z)_c,
      \qquad
      \frac{\partial \ell}{\partial z} = \Big(\sum_c w_c \tilde y_c\Big)
        \mathrm{softmax}(z) - w \odot \tilde y

    with :math:`\tilde y` from :func:`smooth_labels` (``convention="uniform"``:
    :math:`(1-\varepsilon)\,y + \varepsilon/K`, as optax and PyTorch;
    ``"off_target"``: :math:`1-\varepsilon` on the true class and
    :math:`\varepsilon/(K-1)` elsewhere, as T5X and Megatron) and :math:`w = 1`
    without ``class_weights``, where the gradient is
    :math:`\mathrm{softmax}(z) - \tilde y`. With integer labels the loss is
    computed with reductions, never a one-hot or smoothed array; for
    ``uniform``:

    .. math::
      \ell = \mathrm{lse}(z) - (1-\varepsilon)\, z_y - \frac{\varepsilon}{K}\sum_j z_j .

    For ``uniform`` with integer labels this equals PyTorch's
    ``F.cross_entropy(logits, labels, weight=class_weights,
    ignore_index=ignore_index, label_smoothing=epsilon, reduction="none")``:
    :math:`(1-\varepsilon)\, w_y (-\log p_y) + \frac{\varepsilon}{K}\sum_j w_j(-\log p_j)`.

    Masking (``where``): removed classes get no label mass and :math:`K`
    counts the kept classes of each row (so the smoothing spreads only over
    them); removed classes contribute nothing, even at a ``-inf`` logit. As in
    :func:`jaxent.softmax_cross_entropy_with_integer_labels`, an integer label
    on a removed class gives ``+inf``; as in :func:`jaxent.softmax_cross_entropy`,
    probability-label mass on a removed class is left out. A removed row, a
    row with no class left (fully removed, or all logits ``-inf``) and an
    ``ignore_index`` row give loss 0 and gradient 0. A
    ``-inf`` logit on a class that receives mass gives ``+inf`` (the true
    value), never NaN. An integer label outside
    ``[0, K)`` that is not ``ignore_index`` gives NaN for its row. ``off_target``
    with a single (kept) class leaves all the mass on the true class.

    The derivative is a ``jax.custom_jvp`` in closed form, so ``grad``,
    ``jacfwd``, ``jvp`` and ``hessian`` all work; ``epsilon``, ``class_weights``
    and probability labels can be differentiated too.

    Args:
      logits: floating array of unnormalised log-probabilities.
      labels: integer class indices (``logits.shape`` without ``axis``), or
        probability labels (one-hot or soft, the shape of ``logits``).
      epsilon: the smoothing factor in :math:`[0, 1)`; may be traced.
      convention: ``"uniform"`` or ``"off_target"``.
      axis: the class axis of ``logits``.
      where: optional mask (rank of ``logits``: classes; one less: rows).
      ignore_index: integer labels equal to it give loss 0 and gradient 0.
      class_weights: optional floating array of shape ``(K,)``, one weight per
        class (PyTorch's ``weight``).

    Returns:
      The per-example loss, ``logits.shape`` without ``axis``, in the dtype of
      ``logits`` (promoted with floating ``labels``); computed in at least
      float32.

    Raises:
      TypeError: integer ``logits``, complex labels, non-floating
        ``class_weights``.
      ValueError: ``epsilon`` outside [0, 1), an unknown ``convention``,
        mismatched shapes, or ``ignore_index`` with probability labels.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> z = jnp.array([[2.0, 0.0, 0.0]])
      >>> jaxent.label_smoothed_cross_entropy(z, jnp.array([0]), 0.1)
      Array([0.37287816], dtype=float32)
    """
    convention = _checks.check_option(convention, "convention", CONVENTIONS)
    _check_epsilon(epsilon)
    x, ax, mask, out_dt = _sm.prepare_logits(logits, axis, where)
    k = x.shape[ax]
    w = _check_class_weights(class_weights, k, x.dtype)
    eps = jnp.asarray(epsilon).astype(x.dtype)
    labels = jnp.asarray(labels)
    if mask is None:
        k_row: Any = k
        has_any: Any = True
    else:
        k_row = jnp.sum(mask, axis=ax, keepdims=True, dtype=x.dtype)
        has_any = k_row > 0

    if _is_integer(labels):
        row_shape = x.shape[:ax] + x.shape[ax + 1 :]
        if labels.shape != row_shape:
            raise ValueError(
                f"integer `labels` must have the shape of `logits` without the class axis,"
                f" {row_shape}, got {labels.shape} (logits shape {x.shape}, axis={axis})."
            )
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
        ):
            raise TypeError(f"`ignore_index` must be an int or None, got {ignore_index!r}.")
        out = _integer_loss(
            x, labels, mask, eps, w, k, k_row, has_any, ax, convention, ignore_index
        )
        return jnp.squeeze(out, axis=ax).astype(out_dt)

    if ignore_index is not None:
        raise ValueError(
            "`ignore_index` applies to integer labels only; for probability labels mask"
            " the rows with `where`."
        )
    label_floating = jnp.issubdtype(labels.dtype, jnp.floating)
    labels = _checks.as_inexact(labels, "labels")
    if labels.shape != x.shape:
        raise ValueError(
            "probability `labels` must have the shape of `logits`,"
            f" {x.shape}, got {labels.shape}. Integer labels must have an integer dtype."
        )
    if label_floating:
        out_dt = _checks.output_dtype(out_dt, labels.dtype)
    dt = _checks.compute_dtype(x.dtype, labels.dtype)
    x = x.astype(dt)
    y = labels.astype(dt)
    if mask is not None:
        y = jnp.where(mask, y, 0)
    target = _smooth(y, eps.astype(dt), k_row, convention)
    if w is not None:
        target = target * w.astype(dt).reshape(_class_shape(x.ndim, ax, k))
    if mask is not None:
        target = jnp.where(mask, target, 0)
    out = _soft_core(x, target, mask, ax)
    return jnp.squeeze(out, axis=ax).astype(out_dt)


def _integer_loss(
    x: Array,
    labels: Array,
    mask: Array | None,
    eps: Array,
    w: Array | None,
    k: int,
    k_row: Any,
    has_any: Any,
    ax: int,
    convention: str,
    ignore_index: int | None,
) -> Array:
    """Per-row weights of the true class and of the smoothing classes, then the kernel."""
    y = jnp.expand_dims(labels, ax)
    in_range = (y >= 0) & (y < k)
    yc = jnp.clip(y, 0, k - 1)
    ignored = (y == ignore_index) if ignore_index is not None else jnp.zeros_like(in_range)
    on = ~ignored & has_any
    w_y = jnp.ones((), x.dtype) if w is None else jnp.take(w, yc)
    if convention == "uniform":
        t = (1.0 - eps) * w_y
        coef = eps / (k_row if isinstance(k_row, int) else jnp.where(k_row > 0, k_row, 1))
        exclude_true = False
    else:
        n_off = k_row - 1
        if isinstance(n_off, int):
            t = (1.0 - eps) * w_y if n_off > 0 else w_y * jnp.ones_like(eps)
            coef = eps / n_off if n_off > 0 else jnp.zeros_like(eps)
        else:
            t = jnp.where(n_off > 0, 1.0 - eps, 1.0) * w_y
            coef = jnp.where(n_off > 0, eps / jnp.where(n_off > 0, n_off, 1), 0)
        exclude_true = True
    t = jnp.where(on, t, 0)
    coef = jnp.where(on, coef, 0)
    invalid = ~ignored & ~in_range & has_any
    t = jnp.where(invalid, jnp.nan, t)
    coef = jnp.where(invalid, jnp.nan, coef)
    return _integer_core(x, yc, mask, t, coef, w, ax, exclude_true)


# --------------------------------------------------------------------------- wrapper


def with_label_smoothing(
    loss_fn: Callable[..., Array],
    epsilon: ArrayLike,
    *,
    convention: str = "uniform",
    num_classes: int | None = None,
) -> Callable[..., Array]:
    r"""Wraps an optax-style loss that takes probability labels so it smooths them first.

    .. math::
      \mathrm{wrapped}(z, y, \ldots) = \mathrm{loss\_fn}(z, \tilde y(y), \ldots)

    with :math:`\tilde y` from :func:`smooth_labels` (``convention="uniform"``:
    :math:`(1-\varepsilon)\,y + \varepsilon/K`, optax/PyTorch; ``"off_target"``:
    :math:`1-\varepsilon` on the true class, :math:`\varepsilon/(K-1)`
    elsewhere). The wrapped function has the signature of ``loss_fn``,
    ``loss_fn(logits, labels, *args, **kwargs)``, and accepts integer class
    indices or one-hot/probability labels. The class axis is read from an
    ``axis`` keyword argument if one is passed (default ``-1``); integer
    labels are one-hot encoded along it with :math:`K` = ``num_classes`` or
    the size of that axis of ``logits``. It is a pure function of its inputs:
    ``jit``, ``vmap`` and ``grad`` apply, and ``epsilon`` may be a traced value
    (build the wrapper inside the jitted step for a schedule).

    The smoothing spreads over all :math:`K` classes; for masked classes or
    ignored rows use :func:`label_smoothed_cross_entropy`. Integer labels
    outside ``[0, K)`` give NaN labels (and so a NaN loss) for their row.

    Args:
      loss_fn: a loss ``loss_fn(logits, labels, *args, **kwargs)`` taking
        probability labels, e.g. ``optax.losses.softmax_cross_entropy`` or
        ``jaxent.softmax_cross_entropy``.
      epsilon: the smoothing factor in :math:`[0, 1)`.
      convention: ``"uniform"`` or ``"off_target"``.
      num_classes: optional :math:`K`, checked against ``logits``.

    Returns:
      The wrapped loss (``functools.wraps(loss_fn)``).

    Example:
      >>> import jaxent, optax, jax.numpy as jnp
      >>> loss = jaxent.with_label_smoothing(optax.losses.softmax_cross_entropy, 0.1)
      >>> loss(jnp.array([[2.0, 0.0, 0.0]]), jnp.array([0]))
      Array([0.3728782], dtype=float32)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {loss_fn!r}.")
    convention = _checks.check_option(convention, "convention", CONVENTIONS)
    _check_epsilon(epsilon)
    num_classes = _check_num_classes(num_classes)

    @functools.wraps(loss_fn)
    def smoothed_loss(logits: ArrayLike, labels: ArrayLike, *args: Any, **kwargs: Any) -> Array:
        logits_arr = jnp.asarray(logits)
        labels_arr = jnp.asarray(labels)
        axis = kwargs.get("axis", -1)
        ax = _checks.canonical_axis(axis, logits_arr.ndim)
        k = logits_arr.shape[ax]
        if num_classes is not None and num_classes != k:
            raise ValueError(
                f"`num_classes`={num_classes} does not match `logits.shape[{axis}]`={k}."
            )
        if _is_integer(labels_arr):
            smoothed = smooth_labels(
                labels_arr, epsilon, num_classes=k, convention=convention, axis=ax
            )
            if jnp.issubdtype(logits_arr.dtype, jnp.floating):
                smoothed = smoothed.astype(_checks.compute_dtype(logits_arr.dtype))
        else:
            smoothed = smooth_labels(labels_arr, epsilon, convention=convention, axis=ax)
        return loss_fn(logits, smoothed, *args, **kwargs)

    return smoothed_loss


# --------------------------------------------------------------------------- optimum


def optimal_logit_gap(
    epsilon: ArrayLike, num_classes: int, *, convention: str = "uniform"
) -> Array:
    r"""The gap :math:`z_y - z_j` (any :math:`j \ne y`) at the minimum of the smoothed loss.

    The smoothed cross-entropy is minimised at :math:`\mathrm{softmax}(z) =
    \tilde y`; the other logits are then all equal and

    .. math::
      z_y - z_j = \log\frac{\tilde y_y}{\tilde y_j} =
      \begin{cases}
        \log\dfrac{1-\varepsilon+\varepsilon/K}{\varepsilon/K}
          = \log\Big(1 + \dfrac{K(1-\varepsilon)}{\varepsilon}\Big)
          & \text{uniform} \\[1ex]
        \log\dfrac{(1-\varepsilon)(K-1)}{\varepsilon} & \text{off\_target}
      \end{cases}

    (for off_target this is :math:`e^{z_y} = \frac{1-\varepsilon}{\varepsilon}
    \sum_{j\ne y} e^{z_j}` solved for equal :math:`z_j`). :math:`\varepsilon
    = 0` gives :math:`+\infty`: without smoothing the gap grows without bound.

    Args:
      epsilon: the smoothing factor in :math:`[0, 1)`; may be traced.
      num_classes: the number of classes :math:`K \ge 2`.
      convention: ``"uniform"`` or ``"off_target"``.

    Returns:
      The gap as a scalar array (default float dtype).

    Raises:
      ValueError: ``epsilon`` outside [0, 1), ``num_classes`` < 2 (there is no
        other class), or an unknown ``convention``.

    Example:
      >>> import jaxent
      >>> jaxent.optimal_logit_gap(0.1, 10, convention="off_target")
      Array(4.394449, dtype=float32)
    """
    convention = _checks.check_option(convention, "convention", CONVENTIONS)
    _check_epsilon(epsilon)
    k = _check_num_classes(num_classes)
    if k is None:
        raise TypeError("`num_classes` must be an int >= 2, got None.")
    if k < 2:
        raise ValueError(
            f"`num_classes` must be >= 2 for a gap to another class, got {num_classes}."
        )
    eps = jnp.asarray(epsilon).astype(jnp.result_type(float))
    if convention == "uniform":
        return jnp.log1p(k * (1.0 - eps) / eps)
    return jnp.log1p(-eps) + np.log(k - 1) - jnp.log(eps)
