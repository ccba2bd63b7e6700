r"""Evaluation, per example: Brier score and ensemble (Bayesian) uncertainty.

* ``brier_score``: :math:`\sum_c (\mathrm{softmax}(z)_c - [c = y])^2`, integer labels.
* ``ensemble_log_softmax``: the log of the members' mean probability,
  a log-mean-exp of their log-softmax.
* ``predictive_entropy``: :math:`H(\bar p)`, :math:`\bar p = \mathrm{mean}_m \mathrm{softmax}(z_m)`.
* ``mutual_information``: :math:`H(\bar p) - \mathrm{mean}_m H(p_m)` (BALD), >= 0.

Every function computes in at least float32, returns the input dtype and
carries a ``jax.custom_jvp`` whose tangent reuses the primal's quantities.

Ensemble convention: ``member_logits`` has a member axis (``member_axis``,
default 0) and a class axis (``axis``, an axis of ``member_logits``); the
output drops the member axis (and, for the scalar measures, the class axis).
``where`` is a mask of ``member_logits``' entries (its rank) or rows (one
less: the shape without the class axis, member axis included). A member
whose row has no class left (fully masked, or all logits ``-inf``) is left out
of the mean; an example with no member left gives ``-inf`` log-probabilities
and entropy and mutual information 0.

The mean probability is formed as :math:`a + \log \sum_m e^{l_m - a} - \log M`
with :math:`a = \max_m l_m`: identical members give exactly their own
log-probabilities, so their mutual information is exactly 0. Mutual
information is computed as the mean Kullback-Leibler divergence of the
members from the mean, :math:`\mathrm{mean}_m \mathrm{KL}(p_m \| \bar p)`
(equal to the entropy difference, without its cancellation), and rounding
below 0 is clamped to 0.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxent import _checks
from jaxent._softmax import clean_tangent, log_row_sum, prepare_logits, row_stats

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


# --------------------------------------------------------------------------- Brier score


def _one_hot_mask(labels: Array, shape: tuple[int, ...], axis: int) -> Array:
    """``iota == label`` along ``axis`` (a compare XLA fuses into reductions)."""
    iota = jax.lax.broadcasted_iota(labels.dtype, shape, axis)
    return iota == jnp.expand_dims(labels, axis)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _brier(x: Array, mask: Array | None, labels: Array, axis: int) -> Array:
    _, e, s, _ = row_stats(x, mask, axis)
    hit = _one_hot_mask(labels, x.shape, axis)
    miss = (~hit).astype(x.dtype)
    # Sum over c != y of p_c, and of p_c^2: no cancellation near p_y = 1.
    off = jnp.sum(e * miss, axis=axis)
    q_off = jnp.sum(e * e * miss, axis=axis)
    s = jnp.squeeze(s, axis)
    return (off * off + q_off) / (s * s + jnp.finfo(x.dtype).tiny)


@_brier.defjvp
def _brier_jvp(axis, primals, tangents):
    x, mask, labels = primals
    dx = clean_tangent(tangents[0], mask)
    out = _brier(x, mask, labels, axis)
    _, e, s, _ = row_stats(x, mask, axis)
    p = e / (s + jnp.finfo(x.dtype).tiny)
    t = p - _one_hot_mask(labels, x.shape, axis).astype(x.dtype)
    # dB/dz = 2 p * (t - <p, t>),  t = p - onehot(y)
    g = 2 * p * (t - jnp.sum(p * t, axis=axis, keepdims=True))
    return out, jnp.sum(g * dx, axis=axis)


def _check_labels(labels: Any, row_shape: tuple[int, ...], logits_shape, axis: int) -> Array:
    labels = _checks.check_integer(labels, "labels")
    if labels.shape != row_shape:
        raise ValueError(
            "`labels` must have the shape of `logits` without the class axis,"
            f" {row_shape}, got {labels.shape} (logits shape {logits_shape}, axis={axis})."
        )
    return labels


def brier_score(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> Array:
    r"""Brier score of softmax predictions against integer labels.

    B = sum_c (softmax(z)_c - [c == y])^2, in [0, 2].

    .. math::
      B = \sum_c \big(p_c - \mathbb{1}[c = y]\big)^2, \qquad p = \mathrm{softmax}(z),
      \qquad \frac{\partial B}{\partial z} = 2\,p \odot \big(t - \langle p, t\rangle\big),
      \quad t = p - e_y

    The multi-class (summed over classes) convention of Brier (1950) and
    TFP's ``brier_score`` plus 1 (TFP drops the constant :math:`\sum_c y_c^2`);
    divide by K for the per-class mean some libraries report. Computed as
    :math:`\big((\sum_{c\ne y} p_c)^2 + \sum_{c \ne y} p_c^2\big)`, exact near
    :math:`p_y = 1`.

    Conventions: masked/``-inf`` classes have probability 0; a row removed by
    a row mask (or with no class left) gives 0; a label whose class is removed
    gives :math:`1 + \sum_c p_c^2`; a label outside ``[0, K)`` gives NaN.

    Args:
      logits: floating array ``[..., K]``.
      labels: integer array with the shape of ``logits`` without ``axis``.
      axis: the class axis.
      where: optional mask (rank of ``logits``: classes; one less: rows).

    Returns:
      Per-example scores (``logits.shape`` without ``axis``) in the dtype of
      ``logits`` (computed in >= float32).

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> z = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
      >>> jaxent.brier_score(z, jnp.array([0, 1]))  # 0.25+0.0625+0.0625, 0.25+0.5625+0.0625
      Array([0.375, 0.875], dtype=float32)

    References:
      Brier, "Verification of forecasts expressed in terms of probability", 1950.
    """
    x, ax, mask, dt = prepare_logits(logits, axis, where)
    row_shape = x.shape[:ax] + x.shape[ax + 1 :]
    y = _check_labels(labels, row_shape, x.shape, axis)
    out = _brier(x, mask, y, ax)
    num_classes = x.shape[ax]
    out = jnp.where((y < 0) | (y >= num_classes), jnp.nan, out)
    if where is not None and jnp.ndim(where) == x.ndim - 1:
        w = jnp.asarray(where)
        w = w if w.dtype == jnp.bool_ else w != 0
        out = jnp.where(jnp.broadcast_to(w, row_shape), out, 0)
    return out.astype(dt)


# --------------------------------------------------------------------------- ensembles


def _prepare_members(
    member_logits: Any, axis: int, member_axis: int, where: Any
) -> tuple[Array, Array | None, Any, int]:
    """Checks the inputs; returns ``(x [M, ..., K], mask, dtype, output class axis)``.

    The member axis is moved first and the class axis last.
    """
    x, ax, mask, dt = prepare_logits(member_logits, axis, where, name="member_logits")
    if x.ndim < 2:
        raise ValueError(
            "`member_logits` needs a member axis and a class axis (at least 2"
            f" dimensions), got shape {x.shape}."
        )
    max_ = _checks.canonical_axis(member_axis, x.ndim, "member_axis")
    if max_ == ax:
        raise ValueError(
            f"`member_axis`={member_axis} and `axis`={axis} name the same axis of"
            f" `member_logits` (shape {x.shape}); they must differ."
        )
    out_axis = ax - 1 if ax > max_ else ax
    x = jnp.moveaxis(jnp.moveaxis(x, max_, 0), ax if ax > max_ else ax + 1, -1)
    if mask is not None:
        mask = jnp.moveaxis(jnp.moveaxis(mask, max_, 0), ax if ax > max_ else ax + 1, -1)
    return x, mask, dt, out_axis


def _ensemble_primal(x: Array, mask: Array | None):
    """Quantities of an ensemble ``x [M, ..., K]`` (members first, classes last).

    Returns ``(ls, lbar, w, h, mi)``: members' log-softmax clamped to the lowest
    float, the mean's log-probabilities (``-inf`` where the mean is 0), member
    weights ``w = kept / num kept`` ``[M, ..., 1]``, H(mean) and the mean KL.
    """
    lowest = jnp.finfo(x.dtype).min
    shifted, _, s, _ = row_stats(x, mask, -1)
    kept = (s > 0).astype(x.dtype)  # a member row with a class left
    count = jnp.sum(kept, axis=0, keepdims=True)
    w = kept / jnp.maximum(count, 1)
    ls = jnp.maximum(shifted - log_row_sum(s), lowest)  # log p_m, -inf -> lowest
    a = jax.lax.stop_gradient(jnp.max(ls, axis=0, keepdims=True))
    # sum_m w_m exp(l_m - a): exactly 1 for identical members (M ones over M).
    total = jnp.sum(w * jnp.exp(ls - a), axis=0, keepdims=True)
    pos = (total > 0) & (a > lowest)  # a class every member gives probability 0: -inf
    lbar = jnp.where(pos, a + jnp.log(jnp.where(pos, total, 1)), -jnp.inf)[0]
    lbar_c = jnp.maximum(lbar, lowest)
    pbar = jnp.exp(lbar_c)
    h = -jnp.sum(pbar * lbar_c, axis=-1)
    p = jnp.exp(ls)
    kl = jnp.sum(p * (ls - lbar_c[None]), axis=-1)  # KL(p_m || mean), 0 for an empty member
    mi = jnp.maximum(jnp.sum(w[..., 0] * kl, axis=0), 0)
    return ls, lbar, w, h, mi


@jax.custom_jvp
def _ensemble(x: Array, mask: Array | None):
    _, lbar, _, h, mi = _ensemble_primal(x, mask)
    return lbar, h, mi


@_ensemble.defjvp
def _ensemble_jvp(primals, tangents):
    x, mask = primals
    dx = clean_tangent(tangents[0], mask)
    ls, lbar, w, h, mi = _ensemble_primal(x, mask)
    lowest = jnp.finfo(x.dtype).min
    lbar_c = jnp.maximum(lbar, lowest)
    p = jnp.exp(ls)
    # d log p_m = dz - <p_m, dz>   (0 on removed entries)
    dls = dx - jnp.sum(p * dx, axis=-1, keepdims=True)
    dp = p * dls
    # r_mc = w_m p_mc / pbar_c: member m's share of the mean at class c (0 where p_mc = 0)
    r = jnp.where(p > 0, w * jnp.exp(ls - lbar_c[None]), 0)
    dlbar = jnp.sum(r * dls, axis=0)
    dpbar = jnp.sum(w * dp, axis=0)
    # dH(mean) = -sum_c log pbar_c dpbar_c;  dH(p_m) = -sum_c log p_mc dp_mc
    dh = -jnp.sum(lbar_c * dpbar, axis=-1)
    dh_m = -jnp.sum(ls * dp, axis=-1)
    dmi = dh - jnp.sum(w[..., 0] * dh_m, axis=0)
    dlbar = jnp.where(jnp.isneginf(lbar), 0, dlbar)
    return (lbar, h, mi), (dlbar, dh, dmi)


def ensemble_log_softmax(
    member_logits: ArrayLike,
    axis: int = -1,
    member_axis: int = 0,
    where: ArrayLike | None = None,
) -> Array:
    r"""Log-probabilities of an ensemble's mean prediction (log-mean-exp).

    log pbar_c = log( (1/M) sum_m softmax(z_m)_c ) = logsumexp_m(log_softmax(z_m)_c) - log M

    .. math::
      \log \bar p_c = \log \frac{1}{M}\sum_{m=1}^{M} \mathrm{softmax}(z_m)_c
      = \operatorname{lse}_m \big(\log\mathrm{softmax}(z_m)_c\big) - \log M,
      \qquad \frac{\partial \log \bar p_c}{\partial z_{mk}}
      = r_{mc}\,(\delta_{ck} - p_{mk}), \quad r_{mc} = \frac{p_{mc}}{M \bar p_c}

    Conventions are in the module docstring (``jaxent._evaluation``): members
    with no class left are left out of the mean; a class that every member
    gives probability 0 gets ``-inf``.

    Args:
      member_logits: floating array with a member axis and a class axis.
      axis: the class axis (of ``member_logits``).
      member_axis: the member axis.
      where: optional mask (rank of ``member_logits``: entries; one less: rows).

    Returns:
      ``member_logits`` without the member axis: log-probabilities, in its dtype.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> z = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))  # two members
      >>> jnp.exp(jaxent.ensemble_log_softmax(z))
      Array([0.7, 0.3], dtype=float32)
    """
    x, mask, dt, out_axis = _prepare_members(member_logits, axis, member_axis, where)
    lbar, _, _ = _ensemble(x, mask)
    return jnp.moveaxis(lbar, -1, out_axis).astype(dt)


def predictive_entropy(
    member_logits: ArrayLike,
    axis: int = -1,
    member_axis: int = 0,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
) -> Array:
    r"""Entropy of an ensemble's mean prediction (total predictive uncertainty).

    H(pbar) = -sum_c pbar_c log pbar_c,  pbar = (1/M) sum_m softmax(z_m)

    .. math::
      H(\bar p) = -\sum_c \bar p_c \log_b \bar p_c, \qquad
      \frac{\partial H}{\partial z_{mk}} = -\frac{p_{mk}}{M}
      \Big(\log \bar p_k - \sum_c p_{mc} \log \bar p_c\Big)

    With one member this is :func:`jaxent.entropy_from_logits`. Classes of
    probability 0 contribute 0; an example with no member left gives 0.

    Args:
      member_logits: floating array with a member axis and a class axis.
      axis: the class axis (of ``member_logits``).
      member_axis: the member axis.
      where: optional mask (rank of ``member_logits``: entries; one less: rows).
      base: log base (``None``: nats, 2: bits).

    Returns:
      Per-example entropies (``member_logits.shape`` without both axes), in its dtype.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> z = jnp.log(jnp.array([[1.0, 0.0], [0.0, 1.0]]))  # two confident members disagree
      >>> jaxent.predictive_entropy(z, base=2)
      Array(1., dtype=float32)
    """
    x, mask, dt, _ = _prepare_members(member_logits, axis, member_axis, where)
    _, h, _ = _ensemble(x, mask)
    return _checks.in_base(h, base).astype(dt)


def mutual_information(
    member_logits: ArrayLike,
    axis: int = -1,
    member_axis: int = 0,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
) -> Array:
    r"""Mutual information between the prediction and the member (BALD), >= 0.

    I = H(pbar) - (1/M) sum_m H(p_m) = (1/M) sum_m KL(p_m || pbar)

    .. math::
      I = H(\bar p) - \frac{1}{M}\sum_m H(p_m)
        = \frac{1}{M}\sum_m \mathrm{KL}(p_m \,\|\, \bar p) \ \ge 0, \qquad
      \frac{\partial I}{\partial z_{mk}} = \frac{p_{mk}}{M}\big(d_{mk} - \mathrm{KL}_m\big),
      \quad d_{mk} = \log p_{mk} - \log \bar p_k

    The epistemic part of the predictive entropy (Houlsby et al., 2011;
    Gal et al., 2017): 0 when all members agree, exactly 0 for identical
    members (rounding below 0 is clamped to 0), at most :math:`\log M`.

    Args:
      member_logits: floating array with a member axis and a class axis.
      axis: the class axis (of ``member_logits``).
      member_axis: the member axis.
      where: optional mask (rank of ``member_logits``: entries; one less: rows).
      base: log base (``None``: nats, 2: bits).

    Returns:
      Per-example mutual information (``member_logits.shape`` without both
      axes), in its dtype.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> z = jnp.log(jnp.array([[1.0, 0.0], [0.0, 1.0]]))  # two confident members disagree
      >>> jaxent.mutual_information(z, base=2)  # 1 bit of disagreement
      Array(1., dtype=float32)
      >>> jaxent.mutual_information(jnp.stack([z[0], z[0]]))
      Array(0., dtype=float32)

    References:
      Houlsby et al., "Bayesian active learning for classification and
      preference learning", 2011.
    """
    x, mask, dt, _ = _prepare_members(member_logits, axis, member_axis, where)
    _, _, mi = _ensemble(x, mask)
    return _checks.in_base(mi, base).astype(dt)
