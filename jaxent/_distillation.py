r"""Distillation from a teacher's stored top-k: ``sparse_kl_divergence``.

The teacher is given by ``k`` class indices and their log-probabilities (what
a distillation pipeline stores instead of the full ``[tokens, vocab]``
distribution). The divergence is the forward KL :math:`D(p_\mathrm{teacher}\|
q_\mathrm{student})`, the usual distillation loss, in one of two completions
of the teacher outside its top-k set S:

* ``tail="renormalize"``: both distributions renormalised on S;
* ``tail="bucket"``: S plus one bucket holding the teacher's remaining mass
  :math:`1 - \sum_S p` against the student's mass outside S.

Both have a closed-form derivative of the softmax cross-entropy form
:math:`A\,\mathrm{softmax} - a` (a ``jax.custom_jvp`` whose tangent gathers the
logits' tangent at the k indices; the bucket adds one reduction over the
vocabulary).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxent import _checks
from jaxent._softmax import (
    clean_tangent,
    log_probs_from_stats,
    log_row_sum,
    probs_from_stats,
    row_stats,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_TAILS = ("renormalize", "bucket")


def _normalized(x: Array) -> tuple[Array, Array]:
    """(softmax, log_softmax) over the last axis; empty rows give zeros / ``-inf``."""
    shifted, e, s, _ = row_stats(x, None, x.ndim - 1)
    return probs_from_stats(e, s), log_probs_from_stats(shifted, s)


def _kl_terms(p: Array, log_p: Array, log_q: Array) -> Array:
    """``p (log p - log q)`` with ``0 log 0 = 0`` (cleaned before the subtraction)."""
    act = p > 0
    return jnp.where(act, p * (jnp.where(act, log_p, 0) - jnp.where(act, log_q, 0)), 0)


def _in_set(idx: Array, valid: Array, num_classes: int) -> Array:
    """Boolean ``[..., V]``: the classes named by a valid index (scatter, no k x V compare)."""
    flat = jnp.reshape(jnp.where(valid, idx, num_classes), (-1, idx.shape[-1]))
    rows = jax.vmap(lambda i: jnp.zeros(num_classes, bool).at[i].set(True, mode="drop"))(flat)
    return jnp.reshape(rows, idx.shape[:-1] + (num_classes,))


def _parts(z, t, idx, valid, mask, tail):
    """Primal pieces. ``z`` [..., V] (class axis last), ``t``/``idx``/``valid`` [..., k]."""
    num_classes = z.shape[-1]
    ax = z.ndim - 1
    safe = jnp.where(valid, idx, 0)
    t_s = jnp.where(valid, t, -jnp.inf)
    if tail == "renormalize":
        zm = z if mask is None else jnp.where(mask, z, -jnp.inf)
        z_s = jnp.where(valid, jnp.take_along_axis(zm, safe, axis=ax), -jnp.inf)
        p, log_p = _normalized(t_s)
        q, log_q = _normalized(z_s)
        kl = jnp.sum(_kl_terms(p, log_p, log_q), axis=ax)
        return dict(kl=kl, p=p, log_p=log_p, q=q, log_q=log_q, safe=safe)
    shifted, e, s, _ = row_stats(z, mask, ax)
    log_s = log_row_sum(s)
    log_q = jnp.where(valid, jnp.take_along_axis(shifted, safe, axis=ax) - log_s, -jnp.inf)
    out_set = ~_in_set(idx, valid, num_classes)
    e_tail = jnp.sum(jnp.where(out_set, e, 0), axis=ax, keepdims=True)
    log_q_tail = jnp.where(e_tail > 0, jnp.log(jnp.where(e_tail > 0, e_tail, 1)) - log_s, -jnp.inf)
    q_tail = e_tail / (s + jnp.finfo(s.dtype).tiny)
    p = jnp.exp(t_s)
    # Teacher tail 1 - sum p = -expm1(logsumexp t): accurate when the tail is small;
    # clamped at 0 when rounding makes the stored top-k sum to slightly above 1.
    st, et, ss, mt = row_stats(t_s, None, ax)
    lse_t = jnp.log(ss) + mt
    p_tail = jnp.maximum(-jnp.expm1(lse_t), 0)
    log_p_tail = jnp.log(jnp.where(p_tail > 0, p_tail, 1))
    kl = jnp.sum(_kl_terms(p, t_s, log_q), axis=ax) + jnp.squeeze(
        _kl_terms(p_tail, log_p_tail, log_q_tail), ax
    )
    return dict(
        kl=kl,
        p=p,
        log_p=t_s,
        log_q=log_q,
        safe=safe,
        e=e,
        s=s,
        out_set=out_set,
        p_tail=p_tail,
        log_p_tail=log_p_tail,
        q_tail=q_tail,
        log_q_tail=log_q_tail,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(6,))
def _sparse_kl(z, t, idx, valid, mask, keep_row, tail):
    kl = _parts(z, t, idx, valid, mask, tail)["kl"]
    return jnp.where(keep_row, kl, 0)


def _sparse_kl_jvp(tail, primals, tangents):
    z, t, idx, valid, mask, keep_row = primals
    dz, dt, _, _, _, _ = tangents
    r = _parts(z, t, idx, valid, mask, tail)
    kl = r["kl"]
    out = jnp.where(keep_row, kl, 0)
    ax = z.ndim - 1
    p, log_p, log_q = r["p"], r["log_p"], r["log_q"]
    dout = jnp.zeros_like(out)
    if not _checks.is_symbolic_zero(dz):
        dz = clean_tangent(dz, mask)
        dz_s = jnp.where(valid, jnp.take_along_axis(dz, r["safe"], axis=ax), 0)
        if tail == "renormalize":
            # (sum p) q - p on S (0 outside S): an empty teacher row gives 0.
            coef = jnp.sum(p, axis=ax, keepdims=True) * r["q"] - p
            dout = dout + jnp.sum(coef * dz_s, axis=ax)
        else:
            # A softmax - p on S and A softmax - softmax p_tail / q_tail outside S,
            # A = sum p + p_tail (1 unless the teacher's top-k sums above 1).
            sm = probs_from_stats(r["e"], r["s"])
            p_tail, q_tail = r["p_tail"], r["q_tail"]
            rho = jnp.where(q_tail > 0, p_tail / jnp.where(q_tail > 0, q_tail, 1), 0)
            a_row = jnp.sum(p, axis=ax, keepdims=True) + p_tail
            coef_v = sm * (a_row - jnp.where(r["out_set"], rho, 0))
            dout = dout + jnp.sum(coef_v * dz, axis=ax) - jnp.sum(p * dz_s, axis=ax)
    if not _checks.is_symbolic_zero(dt):
        # Teacher side; 0 where the value is +inf (convention, as for dL/dy at a
        # -inf logit in the cross-entropy).
        act = p > 0
        diff = jnp.where(act, log_p, 0) - jnp.where(act, log_q, 0)
        if tail == "renormalize":
            g = p * (diff - jnp.expand_dims(kl, ax))
        else:
            tail_on = r["p_tail"] > 0
            tail_diff = jnp.where(tail_on, r["log_p_tail"] - r["log_q_tail"], -1.0)
            g = p * (diff - tail_diff)
        g = jnp.where(act & jnp.expand_dims(jnp.isfinite(kl), ax), g, 0)
        dout = dout + jnp.sum(g * jnp.where(valid, dt, 0), axis=ax)
    return out, jnp.where(keep_row, dout, 0)


_sparse_kl.defjvp(_sparse_kl_jvp, symbolic_zeros=True)


def sparse_kl_divergence(
    student_logits: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_log_probs: ArrayLike,
    axis: int = -1,
    where: ArrayLike | None = None,
    *,
    tail: str = "renormalize",
    temperature: float | ArrayLike | None = None,
) -> Array:
    r"""Forward KL from a teacher's stored top-k to the student's logits.

    With S the teacher's k classes, p the teacher (``teacher_log_probs``, its
    log-probabilities over the full vocabulary at those classes) and
    q = softmax(z / T) the student:

    * ``"renormalize"``: KL(p_S || q_S) with p_S = p / sum_S p, q_S = q / sum_S q
      on S;  d/dz_j = (q_S - p_S)_j / T on S, 0 outside S.
    * ``"bucket"``: sum_S p log(p/q) + p_tail log(p_tail / q_tail) with
      p_tail = 1 - sum_S p and q_tail = sum_{j not in S} q_j;
      d/dz_j = (q_j - p_j) / T on S and q_j (1 - p_tail/q_tail) / T outside S.

    .. math::
      D_\mathrm{bucket} = \sum_{i\in S} p_i\log\frac{p_i}{q_i}
        + p_\mathrm{tail}\log\frac{p_\mathrm{tail}}{q_\mathrm{tail}},\qquad
      \frac{\partial D_\mathrm{bucket}}{\partial z_j} = \frac1T\Big(q_j - p_j [j\in S]
        - q_j\frac{p_\mathrm{tail}}{q_\mathrm{tail}}[j\notin S]\Big)

    Convention: argument order is the formula's, teacher first inside the KL
    (forward KL, mass-covering); the result is not multiplied by T² (Hinton's
    convention is ``T**2 * sparse_kl_divergence(..., temperature=T)``).
    ``temperature`` divides the student's logits only: store the teacher's
    log-probabilities at the same temperature, e.g.
    ``jax.lax.top_k(jax.nn.log_softmax(teacher_logits / T), k)``.
    "renormalize" is exact for the tempered teacher restricted to S even if
    the stored values are at T = 1 (a shift of all k values cancels), "bucket"
    needs the teacher's true tail.

    Edge cases: a teacher entry with log-probability ``-inf`` contributes 0
    (0 log 0); an index outside ``[0, V)`` (padding, e.g. -1 when fewer than k
    classes were kept) drops its entry from both sides; a student class with a
    ``-inf`` logit or removed by ``where`` where the teacher has mass gives
    ``+inf`` with a finite gradient; a row removed by a row mask gives 0 with
    gradient 0; a row with no valid teacher entry gives 0 in "renormalize"
    and :math:`-\log q_\mathrm{tail}` in "bucket". Indices should be distinct
    within a row (``jax.lax.top_k`` returns them so): a duplicate is not
    detected and counts twice in the sums over S. Under "bucket",
    :math:`\sum_S e^{t}` must not exceed 1 (a rounding excess is clamped:
    p_tail = 0). Gradients in ``teacher_log_probs`` are closed-form too (0 where
    the value is ``+inf``).

    Args:
      student_logits: floating ``[..., V]`` (class axis ``axis``).
      teacher_indices: integer ``[..., k]``, the teacher's classes (axis ``axis``).
      teacher_log_probs: floating ``[..., k]``, the teacher's log-probabilities there.
      axis: the class axis of all three arrays.
      where: optional boolean mask (rank of ``student_logits``: vocabulary
        classes; one less: rows).
      tail: ``"renormalize"`` or ``"bucket"``.
      temperature: ``T > 0`` dividing the student logits; ``None`` means 1.

    Returns:
      Per-example divergences (``student_logits.shape`` without ``axis``) in
      the promoted floating dtype of the logits and log-probabilities, computed
      in at least float32.

    Example:
      >>> import jaxent, jax.numpy as jnp
      >>> z = jnp.log(jnp.array([0.5, 0.25, 0.125, 0.125]))
      >>> idx, t = jnp.array([0, 1]), jnp.log(jnp.array([0.25, 0.5]))
      >>> float(jaxent.sparse_kl_divergence(z, idx, t))  # (1/3, 2/3) vs (2/3, 1/3)
      0.2310...
      >>> float(jaxent.sparse_kl_divergence(z, idx, t, tail="bucket"))  # + tail 0.25 vs 0.25
      0.1732...
    """
    _checks.check_option(tail, "tail", _TAILS)
    z = _checks.check_floating(student_logits, "student_logits")
    ax = _checks.canonical_axis(axis, z.ndim)
    idx = _checks.check_labels(teacher_indices, "teacher_indices")
    t = _checks.check_floating(teacher_log_probs, "teacher_log_probs")
    if idx.shape != t.shape:
        raise ValueError(
            "`teacher_indices` and `teacher_log_probs` must have the same shape, got"
            f" {idx.shape} and {t.shape}."
        )
    want = z.shape[:ax] + z.shape[ax + 1 :]
    got = idx.shape[:ax] + idx.shape[ax + 1 :] if idx.ndim == z.ndim else None
    if got != want:
        raise ValueError(
            f"`teacher_indices` must have the shape of `student_logits` {z.shape} with the"
            f" class axis ({ax}) replaced by the top-k axis, got {idx.shape}."
        )
    entries, rows = _checks.split_where(where, z.shape, ax)
    mask = None if rows is not None else entries
    keep_row = jnp.ones(want, bool) if rows is None else rows
    dt = _checks.output_dtype(z.dtype, t.dtype)
    cdt = _checks.compute_dtype(dt)
    x = z.astype(cdt)
    if temperature is not None:
        _checks.check_positive(temperature, "temperature")
        x = x / jnp.asarray(temperature).astype(cdt)
    num_classes = z.shape[ax]
    wide, valid = _checks.labels_in_range(idx, num_classes, "teacher_indices")
    x = jnp.moveaxis(x, ax, -1)
    wide = jnp.moveaxis(wide, ax, -1)
    valid = jnp.moveaxis(valid, ax, -1)
    tc = jnp.moveaxis(t.astype(cdt), ax, -1)
    if mask is not None:
        mask = jnp.moveaxis(mask, ax, -1)
    return _sparse_kl(x, tc, wide, valid, mask, keep_row, tail).astype(dt)
