r"""RL on logits: the sampled token's log-probability, KL estimators, loss aggregation.

* ``log_prob_from_logits``: :math:`\log\mathrm{softmax}(z/T)_y`, the negated
  integer-label cross-entropy (the same custom rule,
  :math:`\partial/\partial z = (e_y - \mathrm{softmax}(z/T))/T`).
* ``kl_estimate``: Schulman's per-sample estimators k1, k2, k3 of
  :math:`D(\pi\|\pi_\mathrm{ref})` from samples :math:`x \sim \pi`, and ``k3+``
  (k3's value, k2's gradient), with the closed-form derivative of each.
* ``aggregate_loss``: verl's ``agg_loss`` modes (token-mean and the three
  sequence means) for ``[batch, tokens]`` losses.

Argument convention of ``kl_estimate``: ``log_p`` is the policy being trained
(:math:`\pi`, the sampler: :math:`x \sim \pi`), ``log_q`` the reference
(:math:`\pi_\mathrm{ref}`); :math:`r = \pi_\mathrm{ref}(x)/\pi(x)`; the estimators
estimate :math:`D(\pi\|\pi_\mathrm{ref})`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks
from jaxent._losses import softmax_cross_entropy_with_integer_labels

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


# --------------------------------------------------------------------------- log-probability


def log_prob_from_logits(
    logits: ArrayLike,
    labels: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    temperature: float | ArrayLike | None = None,
) -> Array:
    r"""Log-probability of the label (the sampled token) under ``softmax(logits / T)``.

    log_prob = log softmax(z / T)[y] = z_y / T - logsumexp(z / T)
    d log_prob / dz = (onehot(y) - softmax(z / T)) / T

    .. math::
      \log \pi(y) = \frac{z_y}{T} - \log\sum_j e^{z_j/T}, \qquad
      \frac{\partial \log\pi(y)}{\partial z} = \frac{e_y - \mathrm{softmax}(z/T)}{T}

    It is ``-softmax_cross_entropy_with_integer_labels(logits / T, labels)``:
    the same closed-form rule (one engine), computed in at least float32.

    Conventions (those of the integer-label cross-entropy):
      * a label whose class has a ``-inf`` logit or is removed by ``where``
        gives ``-inf`` (the true value) with a finite gradient
        :math:`e_y - \mathrm{softmax}`; a removed class gets gradient 0;
      * a row removed by a row mask, or with no class left, gives 0 with
        gradient 0 (a log-probability of 0 adds nothing to a sequence's sum);
      * a label outside ``[0, K)`` gives NaN for its row (value and gradient),
        so it cannot silently train on a wrong token; ``jaxent.checked``
        reports it.

    Args:
      logits: floating array ``[..., K]`` (class axis ``axis``).
      labels: integer array with the shape of ``logits`` without ``axis``.
      axis: the class axis.
      where: optional boolean mask (rank of ``logits``: classes; one less: rows).
      temperature: ``T > 0``; the logits are divided by it before the softmax
        (the sampling temperature of the rollout). ``None`` means 1.

    Returns:
      Per-example log-probabilities in the dtype of ``logits``.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> z = jnp.array([[0.0, jnp.log(3.0)], [1.0, 1.0]])
      >>> jaxent.log_prob_from_logits(z, jnp.array([1, 0]))
      Array([-0.28768203, -0.6931472 ], dtype=float32)
    """
    logits = _checks.check_floating(logits, "logits")
    dt = logits.dtype
    ce = softmax_cross_entropy_with_integer_labels(
        logits, labels, axis, where, temperature=temperature
    )
    # 0.0 - ce rather than -ce: a removed row gives +0.0, not -0.0.
    return (0.0 - ce).astype(dt)


# --------------------------------------------------------------------------- KL estimators

_ESTIMATORS = ("k1", "k2", "k3", "k3+")


def _est_terms(lp: Array, lq: Array, estimator: str) -> tuple[Array, Array]:
    """(value, d value / d log_p); d value / d log_q is minus the latter for every estimator."""
    log_r = lq - lp
    if estimator == "k1":
        return -log_r, jnp.ones_like(log_r)
    if estimator == "k2":
        return 0.5 * log_r * log_r, -log_r
    k3 = jnp.expm1(log_r) - log_r
    if estimator == "k3":
        return k3, -jnp.expm1(log_r)
    return k3, -log_r  # k3+: k3's value, k2's gradient (straight-through)


def _est_primal(lp, lq, ls, keep, estimator):
    if keep is not None:  # clean masked samples before any unsafe operation
        lp = jnp.where(keep, lp, 0)
        lq = jnp.where(keep, lq, 0)
        ls = None if ls is None else jnp.where(keep, ls, 0)
    value, a = _est_terms(lp, lq, estimator)
    w = None if ls is None else jnp.exp(lp - ls)
    out = value if w is None else w * value
    if keep is not None:
        out = jnp.where(keep, out, 0)
    return out, value, a, w


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _kl_est(lp, lq, ls, keep, estimator):
    return _est_primal(lp, lq, ls, keep, estimator)[0]


def _kl_est_jvp(estimator, primals, tangents):
    lp, lq, ls, keep = primals
    dlp, dlq, _, _ = tangents  # the sampler is held constant
    out, value, a, w = _est_primal(lp, lq, ls, keep, estimator)
    dout = jnp.zeros_like(out)
    if not _checks.is_symbolic_zero(dlp):
        # d/dlog_p of w k = w (dk/dlog_p + k): the weight exp(log_p - log_sampler)
        # contributes w k.
        coef = a if w is None else w * (a + value)
        dout = dout + coef * dlp
    if not _checks.is_symbolic_zero(dlq):
        coef = -a if w is None else -w * a
        dout = dout + coef * dlq
    if keep is not None:
        dout = jnp.where(keep, dout, 0)
    return out, dout


_kl_est.defjvp(_kl_est_jvp, symbolic_zeros=True)


def kl_estimate(
    log_p: ArrayLike,
    log_q: ArrayLike,
    *,
    estimator: str = "k3",
    where: ArrayLike | None = None,
    log_sampler: ArrayLike | None = None,
) -> Array:
    r"""Per-sample Monte-Carlo estimates of :math:`D(p\|q)` from samples :math:`x \sim p`.

    ``log_p`` is the policy :math:`\pi` (the sampler, the model being trained),
    ``log_q`` the reference :math:`\pi_\mathrm{ref}`; with
    r = q(x)/p(x) (``log r = log_q - log_p``):

      k1 = -log r,   k2 = (log r)^2 / 2,   k3 = (r - 1) - log r,
      k3+ = k3 in value, k2 in gradient (straight-through, verl's ``k3+``)

    .. math::
      k_1 = -\log r, \qquad k_2 = \tfrac12(\log r)^2, \qquad k_3 = (r - 1) - \log r

    (Schulman, "Approximating KL Divergence", 2020). k1 and k3 are unbiased
    estimates of :math:`D(\pi\|\pi_\mathrm{ref})`; k3 is never negative (it
    uses ``expm1``, accurate at :math:`r \approx 1`); k2 is biased, low variance.

    The value is one question, the gradient another. Expected gradient in
    the policy's parameters, on policy (:math:`x \sim \pi`), by exact
    enumeration over a 6-way categorical (``tests/test_rl.py``):

    =========  ==========================  ==============================  ==============================
    estimator  as a loss                   in the reward                   as a loss with
               (differentiated)            (detached, times the score)     ``log_sampler=sg(log_p)``
    =========  ==========================  ==============================  ==============================
    k1         0                           ∇D(π‖π_ref)                     ∇D(π‖π_ref)
    k2         ∇D(π‖π_ref)                 neither KL                      ∇E_π[k2] (neither KL)
    k3         ∇D(π_ref‖π)  (reverse)      ∇D(π‖π_ref) − ∇D(π_ref‖π)       ∇D(π‖π_ref)
    k3+        ∇D(π‖π_ref)                 ∇D(π‖π_ref) − ∇D(π_ref‖π)       2∇D(π‖π_ref) − ∇D(π_ref‖π)
    =========  ==========================  ==============================  ==============================

    (sg = ``jax.lax.stop_gradient``; "in the reward" is the REINFORCE term
    sg(k) ∇log π(x); checked to 1e-10 in float64.)

    Recommendation: to penalise :math:`D(\pi\|\pi_\mathrm{ref})`, put k1 in the
    reward, or use k2 or k3+ as a loss (k3+ reports k3's unbiased, non-negative
    value), or k1/k3 as a loss with ``log_sampler`` (the importance-weighted
    form, also right off policy). k3 as a plain loss (the GRPO default)
    minimises the reverse :math:`D(\pi_\mathrm{ref}\|\pi)`; k1 as a plain loss
    does nothing in expectation; do not combine k2 or k3+ with ``log_sampler``.

    Closed-form derivatives (``jax.custom_jvp``): dk/dlog_q = -dk/dlog_p with
    dk1/dlog_p = 1, dk2/dlog_p = log p - log q, dk3/dlog_p = 1 - r,
    dk3+/dlog_p = log p - log q.

    Args:
      log_p: log-probabilities of the samples under :math:`p = \pi`.
      log_q: log-probabilities of the same samples under :math:`q = \pi_\mathrm{ref}`;
        broadcastable with ``log_p``.
      estimator: ``"k1"``, ``"k2"``, ``"k3"`` or ``"k3+"``.
      where: optional boolean mask broadcastable to the output (e.g. the
        response mask ``[batch, tokens]``); masked samples give 0 with gradient
        0 whatever their inputs (NaN or ``-inf`` padding included).
      log_sampler: log-probabilities of the samples under the policy that drew
        them when that is not :math:`p` (off-policy, stale rollouts). Each
        estimate is multiplied by the importance weight
        :math:`w = \exp(\log p - \log\mu)`, held constant in ``log_sampler``
        and differentiated in ``log_p`` (:math:`\partial(wk)/\partial\log p =
        w(\partial k/\partial \log p + k)`), so that the mean estimates
        :math:`E_\pi[k]` and its gradient. On policy,
        ``log_sampler=jax.lax.stop_gradient(log_p)`` gives ``w = 1`` in value
        and the full gradient :math:`\nabla E_\pi[k]` (score term included).

    Returns:
      Elementwise estimates in the promoted floating dtype (computed in at
      least float32). ``log_p`` must be finite at kept samples.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> lp, lq = jnp.log(jnp.array([0.5, 0.25])), jnp.log(jnp.array([0.25, 0.5]))
      >>> jaxent.kl_estimate(lp, lq, estimator="k1")
      Array([ 0.6931472, -0.6931472], dtype=float32)
      >>> jaxent.kl_estimate(lp, lq, estimator="k3")
      Array([0.19314718, 0.30685282], dtype=float32)
    """
    _checks.check_option(estimator, "estimator", _ESTIMATORS)
    lp = _checks.check_floating(log_p, "log_p")
    lq = _checks.check_floating(log_q, "log_q")
    shape = _checks.check_broadcastable(lp, lq, "log_p", "log_q")
    dts = [lp.dtype, lq.dtype]
    ls = None
    if log_sampler is not None:
        ls = _checks.check_floating(log_sampler, "log_sampler")
        try:
            ok = tuple(np.broadcast_shapes(ls.shape, shape)) == shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"`log_sampler` with shape {ls.shape} must broadcast to the shape of the"
                f" estimates {shape}."
            )
        dts.append(ls.dtype)
    keep = _checks.check_mask(where, shape)
    dt = _checks.output_dtype(*dts)
    cdt = _checks.compute_dtype(dt)

    def prep(x):
        return jnp.broadcast_to(x.astype(cdt), shape)

    ls = None if ls is None else jax.lax.stop_gradient(prep(ls))
    return _kl_est(prep(lp), prep(lq), ls, keep, estimator).astype(dt)


# --------------------------------------------------------------------------- aggregation

_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@jax.custom_jvp
def _masked_weighted_sum(losses: Array, coef: Array, keep: Array) -> Array:
    return jnp.sum(jnp.where(keep, coef * jnp.where(keep, losses, 0), 0))


def _masked_weighted_sum_jvp(primals, tangents):
    losses, coef, keep = primals
    dlosses, dcoef, _ = tangents
    lo = jnp.where(keep, losses, 0)
    out = jnp.sum(jnp.where(keep, coef * lo, 0))
    dout = jnp.zeros_like(out)
    if not _checks.is_symbolic_zero(dlosses):
        # d/dL = coef on kept tokens, 0 elsewhere (a NaN loss there cannot leak)
        dout = dout + jnp.sum(jnp.where(keep, coef * dlosses, 0))
    if not _checks.is_symbolic_zero(dcoef):
        dout = dout + jnp.sum(jnp.where(keep, lo * dcoef, 0))
    return out, dout


_masked_weighted_sum.defjvp(_masked_weighted_sum_jvp, symbolic_zeros=True)


def _safe_recip(x: Array) -> Array:
    return jnp.where(x != 0, 1 / jnp.where(x != 0, x, 1), 0)


def aggregate_loss(
    losses: ArrayLike,
    where: ArrayLike | None,
    *,
    mode: str = "token-mean",
    normalizer: float | ArrayLike | None = None,
) -> Array:
    r"""Reduces per-token losses ``[batch, tokens]`` to a scalar as verl's ``agg_loss`` does.

    With m the mask, n_b = sum_t m[b, t] the tokens of sequence b and
    S = {b : n_b > 0} the sequences with at least one token:

    =============================  =============================================  ================
    mode                           value                                          ``normalizer``
                                                                                  replaces
    =============================  =============================================  ================
    ``"token-mean"``               sum_{b,t} m L / N,  N = sum_b n_b              N
    ``"seq-mean-token-sum"``       sum_{b in S} (sum_t m L) / |S|                  |S|
    ``"seq-mean-token-mean"``      sum_{b in S} (sum_t m L / n_b) / |S|            |S|
    ``"seq-mean-token-sum-norm"``  sum_{b,t} m L / T,  T = ``losses.shape[-1]``    T
    =============================  =============================================  ================

    .. math::
      \text{token-mean} = \frac{\sum_{b,t} m_{bt} L_{bt}}{\sum_{b,t} m_{bt}}, \qquad
      \text{seq-mean-token-mean} = \frac{1}{|S|}\sum_{b\in S}
        \frac{\sum_t m_{bt} L_{bt}}{n_b}

    These are verl's definitions (``verl/trainer/ppo/core_algos.py``,
    ``agg_loss``, January 2026): token-mean is DAPO's, seq-mean-token-mean
    GRPO's, seq-mean-token-sum-norm Dr. GRPO's (verl divides the *sum over
    the batch* by T, its ``loss_scale_factor``). ``normalizer`` is the global
    count when the batch is split across data-parallel ranks or
    gradient-accumulation steps: the total number of tokens (token-mean), of
    non-empty sequences (the seq-mean modes, verl's ``global_batch_size``) or a
    fixed length (sum-norm, verl's ``loss_scale_factor``); the local sums then
    add up to the global loss. (verl also multiplies by ``dp_size`` because its
    data-parallel all-reduce averages gradients; jaxent leaves that to the
    caller.) Differences from verl: a count of 0 gives 0 with gradient 0
    (verl: NaN); seq-mean-token-mean divides by n_b exactly (verl adds 1e-8);
    masked tokens never reach the sum, so NaN padding there is harmless.

    The gradient is d/dL[b, t] = m[b, t] c[b] with c the mode's factor (1/N,
    1/|S|, 1/(n_b |S|), 1/T), a closed-form ``jax.custom_jvp``.

    Args:
      losses: floating ``[batch, tokens]`` per-token losses.
      where: boolean mask of ``losses``' shape (the response mask), or ``None``
        (every token kept).
      mode: one of the four modes above.
      normalizer: optional positive scalar (may be traced, e.g. a ``psum``)
        replacing the local count in the mode's denominator.

    Returns:
      A scalar in the dtype of ``losses`` (accumulated in at least float32).

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> L = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
      >>> m = jnp.array([[True, True, True], [True, False, False]])
      >>> float(jaxent.aggregate_loss(L, m, mode="token-mean"))
      2.5
      >>> float(jaxent.aggregate_loss(L, m, mode="seq-mean-token-mean"))
      3.0
    """
    _checks.check_option(mode, "mode", _MODES)
    lo = _checks.check_floating(losses, "losses")
    if lo.ndim != 2:
        raise ValueError(
            f"`losses` must have shape [batch, tokens] (2 dimensions), got shape {lo.shape}."
        )
    keep = _checks.check_mask(where, lo.shape)
    if keep is None:
        keep = jnp.ones(lo.shape, bool)
    cdt = _checks.compute_dtype(lo.dtype)
    if normalizer is not None:
        _checks.check_positive(normalizer, "normalizer")
    norm = jnp.asarray(1 if normalizer is None else normalizer).astype(cdt)
    n_b = jnp.sum(keep.astype(cdt), axis=-1, keepdims=True)  # [B, 1]
    if mode == "token-mean":
        denom = jnp.sum(n_b) if normalizer is None else norm
        coef = jnp.broadcast_to(_safe_recip(denom), n_b.shape)
    elif mode == "seq-mean-token-sum-norm":
        denom = jnp.asarray(lo.shape[-1], cdt) if normalizer is None else norm
        coef = jnp.broadcast_to(_safe_recip(denom), n_b.shape)
    else:
        n_seq = jnp.sum((n_b > 0).astype(cdt)) if normalizer is None else norm
        coef = jnp.broadcast_to(_safe_recip(n_seq), n_b.shape)
        if mode == "seq-mean-token-mean":
            coef = coef * _safe_recip(n_b)
    coef = jnp.broadcast_to(coef, lo.shape)
    return _masked_weighted_sum(lo.astype(cdt), coef, keep).astype(lo.dtype)
