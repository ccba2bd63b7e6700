r"""Divergences: KL (probabilities and logits), Jensen-Shannon, Gaussian KL, KL estimators.

Argument order is the order of the formula: ``kl_divergence(p, q)`` is
:math:`D(p\|q) = \sum_i p_i \log(p_i / q_i)`, the forward KL when ``p`` is
the data distribution and ``q`` the model (seed 002: forward KL covers the
modes, reverse KL :math:`D(q\|p)` picks one). Values are in nats unless a
``base`` is given.

Support convention (as in :mod:`jaxent._information`): a term with
:math:`p_i = 0` is held at 0, in value and in both gradients, so every
gradient is finite at zero probabilities; :math:`p_i > 0 = q_i` gives
``+inf``, the true value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxent import _checks
from jaxent._information import prepare_probs, safe_log, support
from jaxent._softmax import (
    clean_tangent,
    log_probs_from_stats,
    prepare_logits,
    probs_from_stats,
    row_stats,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _zero_like_or(out: Array, dout: Array | None) -> Array:
    return jnp.zeros_like(out) if dout is None else dout


# --------------------------------------------------------------------------- KL, probabilities


def _kl_terms(p, q, mask):
    act = support(p, mask)
    log_ratio = safe_log(p, act) - safe_log(q, act)
    return act, log_ratio, jnp.where(act, p * log_ratio, 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _kl(p: Array, q: Array, mask: Array | None, axis: int) -> Array:
    return jnp.sum(_kl_terms(p, q, mask)[2], axis=axis)


def _kl_jvp(axis, primals, tangents):
    p, q, mask = primals
    dp, dq, _ = tangents
    act, log_ratio, terms = _kl_terms(p, q, mask)
    out = jnp.sum(terms, axis=axis)
    dout = None
    if not _checks.is_symbolic_zero(dp):
        # dD/dp_i = log(p_i / q_i) + 1 on the support, 0 off it.
        dout = jnp.sum(jnp.where(act, log_ratio + 1, 0) * dp, axis=axis)
    if not _checks.is_symbolic_zero(dq):
        # dD/dq_i = -p_i / q_i on the support (-inf where q_i = 0 < p_i).
        t = jnp.sum(jnp.where(act, -p / jnp.where(act, q, 1), 0) * dq, axis=axis)
        dout = t if dout is None else dout + t
    return out, _zero_like_or(out, dout)


_kl.defjvp(_kl_jvp, symbolic_zeros=True)


def kl_divergence(
    p: ArrayLike,
    q: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
) -> Array:
    r"""Kullback-Leibler divergence :math:`D(p\|q) = \sum_i p_i \log\frac{p_i}{q_i}`.

    .. math::
      \frac{\partial D}{\partial p_i} = \log\frac{p_i}{q_i} + 1, \qquad
      \frac{\partial D}{\partial q_i} = -\frac{p_i}{q_i}
      \qquad (p_i > 0;\ \text{both 0 where } p_i = 0)

    :math:`D(p\|q) = H(p, q) - H(p) \ge 0` (Gibbs), with equality iff
    :math:`p = q`; not symmetric. Matches ``scipy.special.rel_entr`` summed.
    Note the order differs from optax's ``kl_divergence(log_predictions,
    targets)`` and PyTorch's ``kl_div(input, target)``, which both compute
    :math:`D(\text{target}\|\text{prediction})`.

    Args:
      p: probabilities (the reference, e.g. the data distribution).
      q: probabilities, same shape.
      axis: the class axis.
      where: optional mask (rank of ``p``: entries; one less: rows).
      base: log base (``None``: nats, 2: bits).

    Returns:
      Divergences in the promoted floating dtype of ``p`` and ``q``.
    """
    (p, q), ax, mask, dt = prepare_probs({"p": p, "q": q}, axis, where)
    return _checks.in_base(_kl(p, q, mask, ax), base).astype(dt)


# --------------------------------------------------------------------------- KL, logits


def _two_rows(a, b, mask, axis):
    """Probabilities and log-probabilities of both logits: ``(p, q, log p, log q)``."""
    sa, ea, s_a, _ = row_stats(a, mask, axis)
    sb, _, s_b, _ = row_stats(b, mask, axis)
    ls_q = log_probs_from_stats(sb, s_b)
    # q from log q (not e_b / s_b): recomputed where it is used, so the
    # backward pass does not keep an N x K buffer of e_b alive.
    return probs_from_stats(ea, s_a), jnp.exp(ls_q), log_probs_from_stats(sa, s_a), ls_q


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _kl_logits(a: Array, b: Array, mask: Array | None, axis: int) -> Array:
    p, _, ls_p, ls_q = _two_rows(a, b, mask, axis)
    act = p > 0
    return jnp.sum(jnp.where(act, p * jnp.where(act, ls_p - ls_q, 0), 0), axis=axis)


def _kl_logits_jvp(axis, primals, tangents):
    a, b, mask = primals
    da, db, _ = tangents
    p, q, ls_p, ls_q = _two_rows(a, b, mask, axis)
    act = p > 0
    delta = jnp.where(act, ls_p - ls_q, 0)
    out = jnp.sum(p * delta, axis=axis)
    dout = None
    if not _checks.is_symbolic_zero(da):
        # dD/da = p * (log p - log q - D); a row with D = +inf is locally
        # constant (+inf) and gets gradient 0.
        d = jnp.expand_dims(out, axis)
        finite = jnp.isfinite(d)
        g = jnp.where(finite, p * (delta - jnp.where(finite, d, 0)), 0)
        dout = jnp.sum(g * clean_tangent(da, mask), axis=axis)
    if not _checks.is_symbolic_zero(db):
        # dD/db = (sum p) softmax(b) - p
        sp = jnp.sum(p, axis=axis, keepdims=True)
        t = jnp.sum((sp * q - p) * clean_tangent(db, mask), axis=axis)
        dout = t if dout is None else dout + t
    return out, _zero_like_or(out, dout)


_kl_logits.defjvp(_kl_logits_jvp, symbolic_zeros=True)


def _prepare_two_logits(p_logits, q_logits, axis, where):
    a, ax, mask, dt_a = prepare_logits(p_logits, axis, where, name="p_logits")
    b = _checks.check_floating(q_logits, "q_logits")
    _checks.check_same_shape(a, b, "p_logits", "q_logits")
    cdt = _checks.compute_dtype(a.dtype, b.dtype)
    return a.astype(cdt), b.astype(cdt), ax, mask, _checks.output_dtype(dt_a, b.dtype)


def kl_divergence_from_logits(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
) -> Array:
    r""":math:`D(\mathrm{softmax}(a)\|\mathrm{softmax}(b))` from logits ``a``, ``b``.

    .. math::
      D = \sum_i p_i(\log p_i - \log q_i), \qquad
      \frac{\partial D}{\partial b} = q - p, \qquad
      \frac{\partial D}{\partial a} = p \odot (\log p - \log q - D)

    (seed 004: equals :math:`H(p, q) - H(p)` computed with two cross-entropy
    calls). Computed in log space: no ``0 * log 0`` NaN at ``-inf``/masked
    logits; a class with :math:`p_i > 0` and a ``-inf`` ``q`` logit gives
    ``+inf`` (its gradient in ``a`` is 0: the value is constant there).

    Args:
      p_logits: logits of :math:`p` (the target / teacher).
      q_logits: logits of :math:`q` (the model / student), same shape.
      axis: the class axis.
      where: optional mask applied to both (rank of the input: classes;
        one less: rows).
      base: log base (``None``: nats, 2: bits).

    Returns:
      Divergences in the promoted dtype of the logits (computed in >= float32).
    """
    a, b, ax, mask, dt = _prepare_two_logits(p_logits, q_logits, axis, where)
    return _checks.in_base(_kl_logits(a, b, mask, ax), base).astype(dt)


# --------------------------------------------------------------------------- Jensen-Shannon


def _check_beta(beta):
    _checks.check_scalar_range(beta, "beta", 0.0, 1.0, low_closed=False, high_closed=False)


def _js_grads(p, q, log_p, log_q, log_m, beta, act_p, act_q):
    """Closed-form dJS/dp and dJS/dq under the support convention."""
    g_p = beta * jnp.where(act_p, log_p - log_m, jnp.where(act_q, -1.0, 0.0))
    g_q = (1 - beta) * jnp.where(act_q, log_q - log_m, jnp.where(act_p, -1.0, 0.0))
    return g_p, g_q


def _js_value(p, q, log_p, log_q, log_m, beta, act_p, act_q, axis):
    t_p = jnp.where(act_p, p * (log_p - log_m), 0)
    t_q = jnp.where(act_q, q * (log_q - log_m), 0)
    return jnp.sum(beta * t_p + (1 - beta) * t_q, axis=axis)


def _js_prob_parts(p, q, mask, beta):
    act_p, act_q = support(p, mask), support(q, mask)
    act_m = act_p | act_q
    log_p, log_q = safe_log(p, act_p), safe_log(q, act_q)
    # log m in log space: beta * p + (1 - beta) * q can be subnormal (flushed to
    # 0 on CPU) for p or q near the smallest normal number, giving JS = +inf.
    lp = jnp.where(act_p, jnp.log(beta) + log_p, -jnp.inf)
    lq = jnp.where(act_q, jnp.log1p(-beta) + log_q, -jnp.inf)
    log_m = jnp.where(act_m, jnp.logaddexp(lp, lq), 0)
    return act_p, act_q, log_p, log_q, log_m


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _js(p: Array, q: Array, mask: Array | None, beta: Array, axis: int) -> Array:
    act_p, act_q, log_p, log_q, log_m = _js_prob_parts(p, q, mask, beta)
    return _js_value(p, q, log_p, log_q, log_m, beta, act_p, act_q, axis)


def _js_jvp(axis, primals, tangents):
    p, q, mask, beta = primals
    dp, dq, _, _ = tangents
    act_p, act_q, log_p, log_q, log_m = _js_prob_parts(p, q, mask, beta)
    out = _js_value(p, q, log_p, log_q, log_m, beta, act_p, act_q, axis)
    g_p, g_q = _js_grads(p, q, log_p, log_q, log_m, beta, act_p, act_q)
    dout = None
    if not _checks.is_symbolic_zero(dp):
        dout = jnp.sum(g_p * dp, axis=axis)
    if not _checks.is_symbolic_zero(dq):
        t = jnp.sum(g_q * dq, axis=axis)
        dout = t if dout is None else dout + t
    return out, _zero_like_or(out, dout)


_js.defjvp(_js_jvp, symbolic_zeros=True)


def js_divergence(
    p: ArrayLike,
    q: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
    beta: float = 0.5,
) -> Array:
    r"""Jensen-Shannon divergence, optionally generalised with a weight :math:`\beta`.

    .. math::
      \mathrm{JS}_\beta(p, q) = \beta D(p\|m) + (1-\beta) D(q\|m), \qquad
      m = \beta p + (1-\beta) q

    :math:`\beta = 1/2` (default) is the symmetric JS divergence,
    :math:`0 \le \mathrm{JS} \le \log 2`, whose square root (in any base) is
    ``scipy.spatial.distance.jensenshannon``. Other :math:`\beta` give the
    generalised JSD of on-policy distillation (GKD; Liger Kernel's ``beta``).
    Closed-form gradient: :math:`\partial/\partial p_i = \beta\log(p_i/m_i)`
    (:math:`-\beta` where :math:`p_i = 0 < q_i`, support convention).

    Args:
      p: probabilities.
      q: probabilities, same shape.
      axis: the class axis.
      where: optional mask (rank of ``p``: entries; one less: rows).
      base: log base (``None``: nats, 2: bits).
      beta: the mixture weight, in (0, 1).

    Returns:
      Divergences in the promoted floating dtype of ``p`` and ``q``.
    """
    _check_beta(beta)
    (p, q), ax, mask, dt = prepare_probs({"p": p, "q": q}, axis, where)
    out = _js(p, q, mask, jnp.asarray(beta, p.dtype), ax)
    return _checks.in_base(out, base).astype(dt)


def _js_logit_parts(a, b, mask, beta, axis):
    p, q, ls_p, ls_q = _two_rows(a, b, mask, axis)
    act_p, act_q = p > 0, q > 0
    log_m = jnp.logaddexp(jnp.log(beta) + ls_p, jnp.log1p(-beta) + ls_q)
    log_m = jnp.where(act_p | act_q, log_m, 0)
    log_p = jnp.where(act_p, ls_p, 0)
    log_q = jnp.where(act_q, ls_q, 0)
    return p, q, log_p, log_q, log_m, act_p, act_q


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _js_logits(a: Array, b: Array, mask: Array | None, beta: Array, axis: int) -> Array:
    p, q, log_p, log_q, log_m, act_p, act_q = _js_logit_parts(a, b, mask, beta, axis)
    return _js_value(p, q, log_p, log_q, log_m, beta, act_p, act_q, axis)


def _js_logits_jvp(axis, primals, tangents):
    a, b, mask, beta = primals
    da, db, _, _ = tangents
    p, q, log_p, log_q, log_m, act_p, act_q = _js_logit_parts(a, b, mask, beta, axis)
    out = _js_value(p, q, log_p, log_q, log_m, beta, act_p, act_q, axis)
    g_p, g_q = _js_grads(p, q, log_p, log_q, log_m, beta, act_p, act_q)
    dout = None
    # Chain through the softmax Jacobian: p * (g - <p, g>).
    if not _checks.is_symbolic_zero(da):
        ga = p * (g_p - jnp.sum(p * g_p, axis=axis, keepdims=True))
        dout = jnp.sum(ga * clean_tangent(da, mask), axis=axis)
    if not _checks.is_symbolic_zero(db):
        gb = q * (g_q - jnp.sum(q * g_q, axis=axis, keepdims=True))
        t = jnp.sum(gb * clean_tangent(db, mask), axis=axis)
        dout = t if dout is None else dout + t
    return out, _zero_like_or(out, dout)


_js_logits.defjvp(_js_logits_jvp, symbolic_zeros=True)


def js_divergence_from_logits(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    base: float | None = None,
    beta: float = 0.5,
) -> Array:
    r"""Jensen-Shannon divergence of :math:`\mathrm{softmax}(a)` and :math:`\mathrm{softmax}(b)`.

    Same definition and ``beta`` as :func:`js_divergence`; the mixture is
    formed in log space (``logaddexp``), so it is exact for ``-inf``/masked
    logits and always finite (:math:`\le \log 2` for :math:`\beta = 1/2`).

    Args:
      p_logits: logits of :math:`p`.
      q_logits: logits of :math:`q`, same shape.
      axis: the class axis.
      where: optional mask applied to both.
      base: log base (``None``: nats, 2: bits).
      beta: the mixture weight, in (0, 1).

    Returns:
      Divergences in the promoted dtype of the logits (computed in >= float32).
    """
    _check_beta(beta)
    a, b, ax, mask, dt = _prepare_two_logits(p_logits, q_logits, axis, where)
    out = _js_logits(a, b, mask, jnp.asarray(beta, a.dtype), ax)
    return _checks.in_base(out, base).astype(dt)


# --------------------------------------------------------------------------- Gaussian


def kl_divergence_diag_gaussian(
    mean_p: ArrayLike,
    std_p: ArrayLike,
    mean_q: ArrayLike,
    std_q: ArrayLike,
    axis: int = -1,
) -> Array:
    r"""Closed-form KL between diagonal Gaussians, summed over ``axis``.

    .. math::
      D(\mathcal N(\mu_p,\sigma_p^2)\|\mathcal N(\mu_q,\sigma_q^2)) =
      \sum \Big[\log\frac{\sigma_q}{\sigma_p} + \frac{\sigma_p^2 + (\mu_p-\mu_q)^2}{2\sigma_q^2}
      - \frac12\Big]

    (the continuous KL of seed 002, e.g. a VAE's posterior against its prior).
    The gradient is autodiff of this elementary expression, which is the
    closed form: :math:`\partial/\partial\mu_p = (\mu_p-\mu_q)/\sigma_q^2`,
    :math:`\partial/\partial\sigma_p = \sigma_p/\sigma_q^2 - 1/\sigma_p`.
    Standard deviations must be positive (checked mode reports others).

    Args:
      mean_p, std_p: parameters of :math:`p`.
      mean_q, std_q: parameters of :math:`q`; all four broadcast together.
      axis: the event axis summed over.

    Returns:
      The KL in nats, in the promoted floating dtype of the inputs.
    """
    names = ("mean_p", "std_p", "mean_q", "std_q")
    args = [
        _checks.check_floating(x, n)
        for x, n in zip((mean_p, std_p, mean_q, std_q), names, strict=True)
    ]
    try:
        shape = jnp.broadcast_shapes(*[x.shape for x in args])
    except ValueError:
        raise ValueError(
            "`mean_p`, `std_p`, `mean_q` and `std_q` must broadcast together, got shapes "
            + ", ".join(str(x.shape) for x in args)
        ) from None
    ax = _checks.canonical_axis(axis, len(shape))
    dt = _checks.output_dtype(*[x.dtype for x in args])
    cdt = _checks.compute_dtype(dt)
    mp, sp, mq, sq = (jnp.broadcast_to(x.astype(cdt), shape) for x in args)
    ratio = sp / sq
    diff = (mp - mq) / sq
    terms = 0.5 * (ratio * ratio + diff * diff) - jnp.log(ratio) - 0.5
    return jnp.sum(terms, axis=ax).astype(dt)


# --------------------------------------------------------------------------- estimators

_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(log_p: ArrayLike, log_q: ArrayLike, *, estimator: str = "k3") -> Array:
    r"""Per-sample Monte-Carlo estimates of :math:`D(p\|q)` from samples :math:`x \sim p`.

    With :math:`r = q(x)/p(x)` (``log r = log_q - log_p``):

    .. math::
      k_1 = -\log r, \qquad k_2 = \tfrac12(\log r)^2, \qquad k_3 = (r - 1) - \log r

    (Schulman, "Approximating KL Divergence", 2020). k1 is unbiased but can
    be negative; k2 is biased, low variance; k3 is unbiased and never
    negative, the estimator of GRPO-style KL penalties. k3 uses ``expm1`` so
    it stays accurate when :math:`r \approx 1`. The mean over samples
    estimates the KL.

    Args:
      log_p: log-probabilities of the samples under :math:`p` (the sampler).
      log_q: log-probabilities of the same samples under :math:`q`;
        broadcastable with ``log_p``.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
      Elementwise estimates in the promoted floating dtype.
    """
    _checks.check_option(estimator, "estimator", _ESTIMATORS)
    lp = _checks.check_floating(log_p, "log_p")
    lq = _checks.check_floating(log_q, "log_q")
    _checks.check_broadcastable(lp, lq, "log_p", "log_q")
    dt = _checks.output_dtype(lp.dtype, lq.dtype)
    cdt = _checks.compute_dtype(dt)
    log_r = lq.astype(cdt) - lp.astype(cdt)
    if estimator == "k1":
        out = -log_r
    elif estimator == "k2":
        out = 0.5 * log_r * log_r
    else:
        out = jnp.expm1(log_r) - log_r
    return out.astype(dt)
