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

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks
from jaxent import _engine as _eng
from jaxent._losses import _in_base

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

CONVENTIONS = ("uniform", "off_target")


# --------------------------------------------------------------------------- checks


def _check_epsilon(epsilon: Any) -> None:
    """``epsilon`` must be a real scalar in [0, 1); a traced value is accepted unchecked."""
    if isinstance(epsilon, bool):
        raise TypeError(f"`epsilon` must be a number in [0, 1), got {epsilon!r}.")
    if not _checks.is_tracer(epsilon):
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

    "uniform": y~ = (1 - eps) y + eps/K;  "off_target": y~ = (1 - eps) y + eps (1 - y)/(K - 1)

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
        # Compared in a wide dtype: int8 label 10 with 300 classes must not wrap.
        wide, valid = _checks.labels_in_range(labels, num_classes)
        y = jnp.expand_dims(wide, ax)
        valid = jnp.expand_dims(valid, ax)
        shape = wide.shape[:ax] + (num_classes,) + wide.shape[ax:]
        onehot = (jax.lax.broadcasted_iota(wide.dtype, shape, ax) == y).astype(dt)
        eps = jnp.asarray(epsilon).astype(dt)
        out = _smooth(onehot, eps, num_classes, convention)
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


# --------------------------------------------------------------------------- kernel


def _smoothing_rows(eps, k_row, convention):
    """``(true-class factor, spread coefficient)`` per row for integer labels.

    ``uniform``: ``(1 - eps, eps / K)``; ``off_target``: ``(1 - eps, eps / (K - 1))``,
    or ``(1, 0)`` with a single (kept) class.
    """
    one = jnp.ones((), eps.dtype)
    zero = jnp.zeros((), eps.dtype)
    if convention == "uniform":
        if isinstance(k_row, int):
            return one - eps, eps / k_row
        return one - eps, eps / jnp.where(k_row > 0, k_row, one)
    n_off = k_row - 1
    if isinstance(n_off, int):
        return (one - eps, eps / n_off) if n_off > 0 else (one, zero)
    has = n_off > 0
    return jnp.where(has, one - eps, one), jnp.where(has, eps / jnp.where(has, n_off, one), zero)


@_checks.one_call(static_argnames=("axis", "convention", "ignore_index", "integer"))
def _ls_ce(x, labels, eps, where, class_weights, log_base, *, axis, convention, ignore_index,
           integer):  # fmt: skip
    k = x.shape[axis]
    mask, rows = _checks.split_where(where, x.shape, axis)
    if integer:
        cdt = _checks.compute_dtype(x.dtype)
        out_dt = x.dtype
    else:
        cdt = _checks.compute_dtype(x.dtype, labels.dtype)
        out_dt = x.dtype
        if jnp.issubdtype(labels.dtype, jnp.floating):
            out_dt = _checks.output_dtype(x.dtype, labels.dtype)
        if _checks.compute_dtype(x.dtype) != cdt:
            x = x.astype(cdt)
    eps = jnp.asarray(eps).astype(cdt)
    w = None if class_weights is None else class_weights.astype(cdt)
    keep = None if rows is None else jnp.expand_dims(rows, axis)
    entry_mask = mask if rows is None else None
    k_row = k if entry_mask is None else jnp.sum(entry_mask, axis, keepdims=True, dtype=cdt)
    if integer:
        wide, valid = _checks.labels_in_range(labels, k)
        if ignore_index is not None:
            kept = jnp.expand_dims(wide != jnp.asarray(ignore_index).astype(wide.dtype), axis)
            keep = kept if keep is None else keep & kept
        if k == 0:
            return jnp.zeros(wide.shape, out_dt)
        idx = jnp.expand_dims(jnp.clip(wide, 0, k - 1), axis)
        true_f, coef = _smoothing_rows(eps, k_row, convention)
        w_y = jnp.ones((), cdt) if w is None else w[idx]
        t = jnp.where(jnp.expand_dims(valid, axis), true_f * w_y, jnp.asarray(jnp.nan, cdt))
        tgt = _eng.Target(labels=idx, t=t, coef=coef, weights=w, keep=keep)
        out = _eng.dense_loss(x, tgt, axis=axis, mask=entry_mask,
                              exclude_true=convention == "off_target")  # fmt: skip
    else:
        # uniform: (1-eps) y + eps/K; off_target: (1 - eps - eps/(K-1)) y + eps/(K-1).
        true_f, coef = _smoothing_rows(eps, k_row, "uniform")
        if convention == "off_target":
            _, coef = _smoothing_rows(eps, k_row, "off_target")
            true_f = jnp.ones((), cdt) - eps - coef
        tgt = _eng.Target(coef=coef, weights=w, soft=labels, scale=true_f, keep=keep)
        out = _eng.dense_loss(x, tgt, axis=axis, mask=entry_mask)
    return _in_base(jnp.squeeze(out, axis), log_base).astype(out_dt)


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
    base: ArrayLike | None = None,
) -> Array:
    r"""Softmax cross-entropy against smoothed labels, per example.

    L = -sum_j y~_j log softmax(z)_j;  dL/dz = softmax(z) - y~  (unit class weights)
    y~ = (1 - eps) onehot(y) + eps/K ("uniform"), or (1 - eps) on y and eps/(K - 1) elsewhere ("off_target")

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
      base: the unit: ``None`` (nats), ``2`` (bits), any number > 0 and != 1.

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
      >>> loss = jaxent.label_smoothed_cross_entropy(z, jnp.array([0]), 0.1)
      >>> print(f"{float(loss[0]):.6f}")  # 0.9 (lse - 2) + 0.1 (lse - 2/3)
      0.372878
    """
    convention = _checks.check_option(convention, "convention", CONVENTIONS)
    _check_epsilon(epsilon)
    x = _checks.check_floating(logits, "logits")
    ax = _checks.canonical_axis(axis, x.ndim)
    cw = _checks.check_class_weights(class_weights, x.shape[ax])
    lb = _checks.log_base(base)
    ignore_index = _checks.check_ignore_index(ignore_index)
    labels = jnp.asarray(labels)
    integer = _is_integer(labels)
    if integer:
        labels = _checks.check_labels(labels)
        row_shape = x.shape[:ax] + x.shape[ax + 1 :]
        if labels.shape != row_shape:
            raise ValueError(
                f"integer `labels` must have the shape of `logits` without the class axis,"
                f" {row_shape}, got {labels.shape} (logits shape {x.shape}, axis={axis})."
            )
    else:
        if ignore_index is not None:
            raise ValueError(
                "`ignore_index` applies to integer labels only; for probability labels mask"
                " the rows with `where`."
            )
        labels = _checks.as_inexact(labels, "labels")
        if labels.shape != x.shape:
            raise ValueError(
                "probability `labels` must have the shape of `logits`,"
                f" {x.shape}, got {labels.shape}. Integer labels must have an integer dtype."
            )
    return _ls_ce(x, labels, epsilon, where, cw, lb, axis=ax, convention=convention,
                  ignore_index=ignore_index, integer=integer)  # fmt: skip


# --------------------------------------------------------------------------- wrapper


_INTEGER_LABEL_LOSS = "softmax_cross_entropy_with_integer_labels"


def _reject_integer_label_loss(loss_fn: Callable[..., Array]) -> None:
    """``with_label_smoothing`` hands its wrapped loss probability labels."""
    from jaxent._losses import softmax_cross_entropy_with_integer_labels

    name = getattr(loss_fn, "__name__", "")
    if (
        loss_fn is softmax_cross_entropy_with_integer_labels
        or name.endswith(_INTEGER_LABEL_LOSS)
        or "integer_labels" in name
    ):
        raise TypeError(
            f"`loss_fn`={name or loss_fn!r} takes integer labels, but `with_label_smoothing`"
            " passes it smoothed probability labels [..., K]. Wrap a soft-label loss"
            " (e.g. `optax.losses.softmax_cross_entropy` or `jaxent.softmax_cross_entropy`),"
            " or call `jaxent.label_smoothed_cross_entropy(logits, labels, epsilon)` directly."
        )
    if loss_fn is label_smoothed_cross_entropy:
        raise TypeError(
            "`loss_fn`=label_smoothed_cross_entropy already smooths its labels: call it"
            " directly instead of wrapping it."
        )


def with_label_smoothing(
    loss_fn: Callable[..., Array],
    epsilon: ArrayLike,
    *,
    convention: str = "uniform",
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> Callable[..., Array]:
    r"""Wraps an optax-style loss that takes probability labels so it smooths them first.

    loss(z, y) -> loss(z, y~),  y~ = (1 - eps) y + eps/K ("uniform") or the "off_target" smoothing of smooth_labels

    .. math::
      \mathrm{wrapped}(z, y, \ldots) = \mathrm{loss\_fn}(z, \tilde y(y), \ldots)

    Plain text: ``wrapped(z, y, ...) = loss_fn(z, smooth_labels(y, epsilon), ...)``
    with :math:`\tilde y` from :func:`smooth_labels` (``convention="uniform"``:
    :math:`(1-\varepsilon)\,y + \varepsilon/K`, optax/PyTorch; ``"off_target"``:
    :math:`1-\varepsilon` on the true class, :math:`\varepsilon/(K-1)`
    elsewhere). The wrapped function takes ``loss_fn``'s arguments,
    ``(logits, labels, *args, **kwargs)``, and accepts integer class indices
    or one-hot/probability labels. The class axis is read from an ``axis``
    keyword argument if one is passed (default ``-1``); integer labels are
    one-hot encoded along it with :math:`K` = ``num_classes`` or the size of
    that axis of ``logits``. The smoothed labels are in the dtype of floating
    ``logits`` (so a bfloat16 loss stays bfloat16). It is a pure function:
    ``jit``, ``vmap`` and ``grad`` apply, and ``epsilon`` may be a traced
    value (build the wrapper inside the jitted step for a schedule).

    Wrapping :func:`jaxent.softmax_cross_entropy` without ``where`` takes a
    fast path: the call goes to :func:`label_smoothed_cross_entropy`, which
    builds no ``[N, K]`` smoothed array (same values).

    Dropping rows: integer labels outside ``[0, K)`` give NaN labels (a NaN
    row), so a PyTorch-style ``-100`` must be handled: pass
    ``ignore_index=-100`` here (those rows get all-zero labels, so a
    cross-entropy gives 0 with gradient 0), or remove the rows with the
    wrapped loss's ``where`` row mask. The smoothing spreads over all
    :math:`K` classes; for masked classes use :func:`label_smoothed_cross_entropy`.

    Args:
      loss_fn: a loss ``loss_fn(logits, labels, *args, **kwargs)`` taking
        probability labels, e.g. ``optax.losses.softmax_cross_entropy`` or
        ``jaxent.softmax_cross_entropy``. An integer-label loss is rejected
        with a ``TypeError``.
      epsilon: the smoothing factor in :math:`[0, 1)`.
      convention: ``"uniform"`` or ``"off_target"``.
      num_classes: optional :math:`K`, checked against ``logits``.
      ignore_index: optional integer label whose rows get all-zero labels.

    Returns:
      The wrapped loss, named ``label_smoothed_<loss_fn name>``, with
      ``loss_fn``'s signature and a docstring stating ``epsilon`` and the
      convention.

    Example:
      >>> import jaxent, optax, jax.numpy as jnp
      >>> loss = jaxent.with_label_smoothing(optax.losses.softmax_cross_entropy, 0.1)
      >>> loss(jnp.array([[2.0, 0.0, 0.0]]), jnp.array([0]))
      Array([0.3728782], dtype=float32)
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {loss_fn!r}.")
    _reject_integer_label_loss(loss_fn)
    convention = _checks.check_option(convention, "convention", CONVENTIONS)
    _check_epsilon(epsilon)
    num_classes = _check_num_classes(num_classes)
    ignore_index = _checks.check_ignore_index(ignore_index)
    from jaxent._losses import softmax_cross_entropy

    fast = loss_fn is softmax_cross_entropy

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
        integer = _is_integer(labels_arr)
        if fast and not args and kwargs.get("where") is None and set(kwargs) <= {"axis", "base"}:
            if not integer or ignore_index is None:
                return label_smoothed_cross_entropy(
                    logits_arr, labels_arr, epsilon, convention=convention, **kwargs
                )
        if integer:
            smoothed = smooth_labels(
                labels_arr, epsilon, num_classes=k, convention=convention, axis=ax
            )
            if ignore_index is not None:
                wide = labels_arr.astype(_checks.wide_label_dtype(labels_arr.dtype))
                drop = jnp.expand_dims(wide == ignore_index, ax)
                smoothed = jnp.where(drop, jnp.zeros((), smoothed.dtype), smoothed)
        else:
            smoothed = smooth_labels(labels_arr, epsilon, convention=convention, axis=ax)
        if jnp.issubdtype(logits_arr.dtype, jnp.floating):
            smoothed = smoothed.astype(logits_arr.dtype)
        return loss_fn(logits, smoothed, *args, **kwargs)

    inner = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    smoothed_loss.__name__ = smoothed_loss.__qualname__ = f"label_smoothed_{inner}"
    smoothed_loss.__module__ = getattr(loss_fn, "__module__", __name__)
    try:
        smoothed_loss.__signature__ = inspect.signature(loss_fn)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        pass
    eps_text = epsilon if isinstance(epsilon, (int, float)) else "a traced value"
    smoothed_loss.__doc__ = (
        f"``{inner}`` against smoothed labels: ``{inner}(logits, smooth_labels(labels,"
        f" epsilon={eps_text}, convention={convention!r}), ...)``.\n\n"
        + (
            "Convention 'uniform': the true class gets 1 - eps + eps/K, every other class eps/K."
            if convention == "uniform"
            else "Convention 'off_target': the true class gets 1 - eps, every other class"
            " eps/(K - 1)."
        )
        + "\nInteger labels are one-hot encoded along ``axis`` (default -1); labels outside"
        " [0, K) give a NaN row"
        + (
            f", except ignore_index={ignore_index} (all-zero labels)."
            if ignore_index is not None
            else "; drop rows with the wrapped loss's ``where``."
        )
        + f"\nBuilt by jaxent.with_label_smoothing; see {inner} for the arguments."
    )
    return smoothed_loss


# --------------------------------------------------------------------------- optimum


def optimal_logit_gap(
    epsilon: ArrayLike, num_classes: int, *, convention: str = "uniform"
) -> Array:
    r"""The gap :math:`z_y - z_j` (any :math:`j \ne y`) at the minimum of the smoothed loss.

    gap = log(K (1 - eps)/eps + 1) ("uniform");  log((K - 1)(1 - eps)/eps) ("off_target")

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
    eps = jnp.asarray(epsilon)
    # Returned in epsilon's floating dtype (bf16 in, bf16 out), computed in >= float32.
    out_dt = eps.dtype if jnp.issubdtype(eps.dtype, jnp.floating) else jnp.result_type(float)
    eps = eps.astype(_checks.compute_dtype(out_dt))
    if convention == "uniform":
        gap = jnp.log1p(k * (1.0 - eps) / eps)
    else:
        gap = jnp.log1p(-eps) + np.log(k - 1) - jnp.log(eps)
    return gap.astype(out_dt)
