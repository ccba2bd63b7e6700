r"""The softmax cross-entropy engine: one rule, fed by dense rows, vocabulary blocks or shards.

Every softmax cross-entropy of jaxent (soft labels, integer labels, both label
smoothing conventions, class weights, ``ignore_index``, z-loss; dense, blocked
or vocabulary-sharded) is this one rule for a target vector :math:`a \ge 0`::

    L      = A lse(z) - <a, z> + lam lse(z)^2,        A = sum_c a_c
    dL/dz  = (A + 2 lam lse(z)) softmax(z) - a

The target is never built as a dense ``[N, K]`` array; it is described per
row by :class:`Target`::

    a = t e_y  +  coef (w * 1_R)  +  scale (w * u)

* ``t e_y``: weight ``t`` on the label class ``y`` (integer labels; a NaN
  ``t`` marks an out-of-range label and makes the row NaN);
* ``coef (w * 1_R)``: the smoothing spread over ``R`` = the kept classes
  (without ``y`` when ``exclude_true``, the ``"off_target"`` convention),
  weighted by the class weights ``w`` (1 without them);
* ``scale (w * u)``: dense soft labels ``u`` (the caller's own array, read in
  the fused reductions, never copied).

Numerics, in one place: the loss is evaluated as ``A log s - 2 D`` with
``s = sum exp(z - m)`` and ``D = sum_c a_c (z_c/2 - m/2)``: both parts are
>= 0 for ``a >= 0`` (no cancellation) and the halved shift is finite for every
finite logit (``z = -3e38`` against ``m = 3e38``). Conventions:

* a class with ``a_c = 0`` contributes nothing, even at a ``-inf`` logit;
  ``a_c > 0`` on a ``-inf`` logit (or a removed class) gives ``+inf``;
* an empty row (every class removed, all logits ``-inf``, or ``K = 0``) and a
  removed row (``keep`` False) give 0 with gradient 0;
* a NaN in a kept logit gives a NaN row (loss and gradient); a ``+inf``
  logit gives NaN (outside the domain). The row test is ``max == -inf``,
  never ``s > 0`` (false for NaN, which used to turn a NaN row into 0).

Partial-statistics API (what :mod:`jaxent._large_vocab` streams over blocks
and combines over shards):

1. :func:`partial_stats` ``(z_block, target, axis=, start=, exclude_true=)``
   -> :class:`Stats` of one block of columns (the dense loss is one block
   covering every column). ``start`` is the global index of the block's
   first column (the label is matched by comparison); ``target.weights`` /
   ``target.soft`` / ``mask`` are the block's slices. Row fields are
   ``keepdims`` along ``axis``.
2. :func:`combine` ``(stats_a, stats_b)`` merges two blocks (a
   ``fori_loop`` carry starts from :func:`empty_stats`);
   :func:`combine_across` ``(stats, axis_name)`` merges shards with one
   ``pmax`` and one ``psum``.
3. :func:`loss_from_stats` ``(stats, target)`` -> ``(loss, lse)`` of the
   combined statistics (keepdims rows).
4. :func:`grad_logits` ``(z_block, target, lse, stats, axis=, start=,
   exclude_true=, mask=)`` -> ``(A + 2 lam lse) p - a`` for the block's
   columns, 0 on removed rows/columns and empty rows: multiply by the row
   cotangent for the VJP (and by ``1 - tanh^2`` under a soft-cap, see
   :func:`softcap_grad`).

The dense path (:func:`dense_loss`) is a ``jax.custom_jvp`` over these
functions whose tangent reuses them; forward-only it compiles to a max pass
and one fused reduction pass that write no ``[N, K]`` array.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxent import _checks

Array = jax.Array


class Target(NamedTuple):
    """Per-row description of the target vector ``a`` (see the module docstring).

    Row arrays have the row shape with the class axis kept at size 1
    (``keepdims``); every field is optional.

    Attributes:
      labels: integer class indices (wide dtype, already clipped into range
        for a gather), or ``None`` for no label term.
      t: weight of the label class (``None``: 1 when ``labels`` is given).
        NaN marks an out-of-range label (its row becomes NaN).
      coef: coefficient of the spread term (``None``: no spread).
      weights: class weights ``[K]`` of the spread and soft terms (``None``: 1).
      soft: dense soft labels with the logits' shape (``None``: none).
      scale: factor of the soft term (``None``: 1).
      keep: boolean row mask (``None``: every row counts).
      z_loss: scalar ``lam`` of ``lam lse^2`` (``None``: no z-loss).
    """

    labels: Array | None = None
    t: Array | None = None
    coef: Array | None = None
    weights: Array | None = None
    soft: Array | None = None
    scale: Array | None = None
    keep: Array | None = None
    z_loss: Array | None = None


class Stats(NamedTuple):
    """Partial row statistics of some columns (``keepdims`` along the class axis).

    ``m``: max of the kept logits (``-inf``: none); ``s = sum exp(z - m)``;
    ``zy``: the label's logit (0 where the label is not among the columns);
    ``hw = sum_R coef w_c (z_c/2 - m/2)`` and ``W = sum_R coef w_c`` (spread);
    ``hu = sum scale u_c w_c (z_c/2 - m/2)`` and ``U = sum scale u_c w_c`` (soft).
    Every sum already carries its coefficient (``coef``, ``scale``), so the
    loss is ``(t + W + U) log s - 2 (t (z_y/2 - m/2) + hw + hu)``. Unused
    terms are ``None`` (the dense soft-label smoothing path sums
    ``scale u + coef w`` in one pass, into ``hu``/``U``).
    """

    m: Array
    s: Array
    zy: Array | None = None
    hw: Array | None = None
    W: Array | None = None
    hu: Array | None = None
    U: Array | None = None


def _some(x: Array | None) -> Array:
    """A field that is present by construction (narrows ``Array | None`` for type checkers)."""
    assert x is not None
    return x


def _cdt(x: Array) -> Any:
    return _checks.compute_dtype(x.dtype)


def _half(z: Array, m0: Array) -> Array:
    """``z/2 - m/2``: finite for every finite ``z`` and ``m`` (no overflow at +-3e38)."""
    return 0.5 * z - 0.5 * m0


def _class_vec(v: Array, ndim: int, axis: int) -> Array:
    """A ``[K]`` vector reshaped to broadcast along ``axis``."""
    return v.reshape(tuple(v.shape[0] if i == axis else 1 for i in range(ndim)))


def _finite_shift(m: Array) -> Array:
    """The row shift: ``m``, or 0 for an empty row (so ``z - m`` stays ``-inf``, not NaN)."""
    return jnp.where(m == -jnp.inf, jnp.zeros((), m.dtype), m)


def _label_hit(shape: tuple[int, ...], labels: Array, axis: int, start: Any) -> Array:
    iota = jax.lax.broadcasted_iota(labels.dtype, shape, axis)
    if start is not None:
        iota = iota + jnp.asarray(start).astype(labels.dtype)
    return iota == labels


def _spread_sel(x, tgt, mask, axis, start, exclude_true):
    """Boolean selection of the spread classes ``R`` (``None``: every column)."""
    sel = mask
    if exclude_true:
        off = ~_label_hit(x.shape, tgt.labels, axis, start)
        sel = off if sel is None else sel & off
    return sel


def _spread_weights(x, tgt, sel, axis):
    """Weights ``w * 1_R`` as an array broadcasting to ``x`` (``None``: all ones)."""
    w = None if tgt.weights is None else _class_vec(tgt.weights, x.ndim, axis)
    if sel is None:
        return w
    one = jnp.ones((), _cdt(x))
    return jnp.where(sel, one if w is None else w, jnp.zeros((), _cdt(x)))


def _soft_weights(x, tgt, mask, axis):
    u = tgt.soft.astype(_cdt(x))
    if tgt.weights is not None:
        u = u * _class_vec(tgt.weights, x.ndim, axis).astype(u.dtype)
    if mask is not None:
        u = jnp.where(mask, u, jnp.zeros((), u.dtype))
    return u


# XLA:CPU fuses a reduction with its elementwise producer only when the
# producer is arithmetic (add, mul, max, min, exp, sign, convert between
# floats): a compare or a select in front of a row reduction makes XLA write
# the whole [N, K] operand first (measured with
# ``compile().memory_analysis().temp_size_in_bytes``, JAX 0.10.2, 64 x 4096:
# 1.0 N*K*4 bytes with ``jnp.where`` in the sum, 0 without). So the guards of
# the unmasked dense path below are arithmetic; ``tests/test_forward_fusion.py``
# pins it, and the differential tests pin the values at -inf/0 weights.
_FLAG_SCALE = 2.0**126  # w * 2^126 >= 1 for every normal w > 0


def _weighted_half_sum(wt: Array, h: Array, axis: int) -> Array:
    """``sum_c wt_c h_c`` for ``wt >= 0``, ``h <= 0``, with ``0 * (-inf) = 0``, fusable.

    A weight > 0 on a ``-inf`` entry makes the sum ``-inf`` (the true value):
    ``wt * max(h, lowest)`` is finite, and a flag term ``lowest`` per such
    entry pushes the sum to ``<= lowest``, which is then mapped to ``-inf``
    at row level. ``sign(h - lowest)`` is -1 exactly at ``-inf`` (NaN stays NaN).
    """
    lo = jnp.finfo(h.dtype).min
    at_inf = 0.5 - 0.5 * jnp.sign(h - lo)
    flag = jnp.minimum(wt * _FLAG_SCALE, 1.0) * at_inf
    out = jnp.sum(wt * jnp.maximum(h, lo) + lo * flag, axis=axis, keepdims=True)
    return jnp.where(out <= lo, jnp.asarray(-jnp.inf, out.dtype), out)


def _gather_exact(x: Array, idx: Array, axis: int) -> Array:
    """``take_along_axis`` through the bits of ``x`` (exact, any float dtype).

    XLA:CPU rewrites ``f(gather(x))`` into ``gather(f(x))`` (an upcast, or the
    shift ``x - m``); ``f(x)`` then has two users and is written out in full
    (1.0 N*K*4 temp bytes at 4096 x 32768, 0 through the bits; JAX 0.10.2).
    Not differentiable (a bitcast has no derivative): primal passes only,
    never inside a custom rule that autodiff differentiates again.
    """
    bits_dt = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, bits_dt)
    return jax.lax.bitcast_convert_type(jnp.take_along_axis(bits, idx, axis=axis), x.dtype)


def partial_stats(
    x: Array,
    tgt: Target,
    *,
    axis: int,
    exclude_true: bool = False,
    start: Any = None,
    mask: Array | None = None,
) -> Stats:
    """Statistics of the columns in ``x`` (a block, or the whole row when ``start`` is None).

    ``x`` may be in a low-precision dtype: the max is taken in it (exact) and
    the upcast happens inside the fused reductions. ``mask`` removes columns.
    With ``start=None`` (dense rows) the label logit is gathered and the
    ``off_target`` exclusion subtracts the label's own term (no class-index
    grid, so the pass stays fused); otherwise the label is matched against
    ``start + column``.
    """
    cdt = _cdt(x)
    xm = x if mask is None else jnp.where(mask, x, jnp.asarray(-jnp.inf, x.dtype))
    m = jnp.max(xm, axis=axis, keepdims=True, initial=-jnp.inf).astype(cdt)
    m0 = _finite_shift(m)
    z = xm.astype(cdt)
    s = jnp.sum(jnp.exp(z - m0), axis=axis, keepdims=True)
    h = _half(z, m0)
    zero = jnp.zeros((), cdt)
    dense = start is None
    zy = hw = w_tot = hu = u_tot = None
    if tgt.labels is not None:
        if dense:
            zy = jnp.take_along_axis(xm, tgt.labels, axis=axis).astype(cdt)
        else:
            hit = _label_hit(x.shape, tgt.labels, axis, start)
            zy = jnp.sum(jnp.where(hit, z, zero), axis=axis, keepdims=True)
    # Each term's row coefficient multiplies inside the sum: sum(coef * h)
    # stays finite where sum(h) would overflow (logits near +-3e38).
    if dense and tgt.soft is not None and tgt.coef is not None and not exclude_true:
        # One weighted pass for a = scale u + coef w (no [N, K] array shared by two sums).
        w = _spread_weights(x, tgt, mask, axis)
        sc = jnp.ones((), cdt) if tgt.scale is None else tgt.scale
        u = _soft_weights(x, tgt, mask, axis)
        v = sc * u + (tgt.coef if w is None else tgt.coef * w)
        hu = _weighted_half_sum(v, h, axis)
        u_tot = sc * jnp.sum(u, axis=axis, keepdims=True) + tgt.coef * _total(w, m, x, axis)
        return Stats(m, s, zy, None, None, hu, u_tot)
    if tgt.coef is not None:
        sel = _spread_sel(x, tgt, mask, axis, start, exclude_true and not dense)
        w = _spread_weights(x, tgt, sel, axis)
        hw = _weighted_half_sum(tgt.coef if w is None else tgt.coef * w, h, axis)
        w_tot = tgt.coef * _total(w, m, x, axis)
        if exclude_true and dense:
            # R = kept classes without y: remove y's own term (row-level).
            w_y = jnp.ones((), cdt) if tgt.weights is None else tgt.weights.astype(cdt)[tgt.labels]
            if mask is not None:
                w_y = jnp.where(jnp.take_along_axis(mask, _some(tgt.labels), axis=axis), w_y, zero)
            w_y = tgt.coef * w_y
            h_y = _half(_some(zy), m0)
            own = jnp.where(w_y != 0, w_y * jnp.maximum(h_y, jnp.finfo(cdt).min), zero)
            # A -inf label logit makes the row +inf through its own term (t > 0).
            hw = jnp.where(h_y == -jnp.inf, hw, jnp.minimum(hw - own, zero))
            w_tot = w_tot - w_y
    if tgt.soft is not None:
        u = _soft_weights(x, tgt, mask, axis)
        if tgt.scale is not None:
            u = tgt.scale * u
        hu = _weighted_half_sum(u, h, axis)
        u_tot = jnp.sum(u, axis=axis, keepdims=True)
    return Stats(m, s, zy, hw, w_tot, hu, u_tot)


def _total(w: Array | None, m: Array, x: Array, axis: int) -> Array:
    """``sum_c w_c`` over the columns (``K`` for unit weights), keepdims."""
    if w is None:
        return jnp.full(m.shape, x.shape[axis], m.dtype)
    return jnp.sum(jnp.broadcast_to(w, x.shape), axis=axis, keepdims=True)


def empty_stats(like: Stats) -> Stats:
    """The statistics of no column (the identity of :func:`combine`)."""

    def z(v: Array | None, fill: float = 0.0) -> Any:
        return None if v is None else jnp.full(v.shape, fill, v.dtype)

    return Stats(z(like.m, -jnp.inf), z(like.s), z(like.zy), z(like.hw), z(like.W),
                 z(like.hu), z(like.U))  # fmt: skip


def _rebase(s_b: Array, m_b: Array, big0: Array) -> Array:
    """``s_b exp(m_b - M)``; 0 for an empty part (NaN stays NaN)."""
    return jnp.where(m_b == -jnp.inf, jnp.zeros((), s_b.dtype), s_b * jnp.exp(m_b - big0))


def _rebase_h(h_b: Array, w_b: Array, m_b: Array, big0: Array) -> Array:
    """``sum w (z/2 - M/2) = h_b + W_b (m_b/2 - M/2)``, both terms <= 0."""
    shift = w_b * _half(_finite_shift(m_b), big0)
    return h_b + jnp.where(w_b == 0, jnp.zeros((), h_b.dtype), shift)


def _add(a, b):
    return None if a is None else a + b


def combine(p: Stats, q: Stats) -> Stats:
    """Merges the statistics of two disjoint sets of columns (exact, no cancellation)."""
    big = jnp.maximum(p.m, q.m)
    big0 = _finite_shift(big)
    s = _rebase(p.s, p.m, big0) + _rebase(q.s, q.m, big0)
    hw = None if p.hw is None else (
        _rebase_h(p.hw, _some(p.W), p.m, big0) + _rebase_h(_some(q.hw), _some(q.W), q.m, big0))  # fmt: skip
    hu = None if p.hu is None else (
        _rebase_h(p.hu, _some(p.U), p.m, big0) + _rebase_h(_some(q.hu), _some(q.U), q.m, big0))  # fmt: skip
    return Stats(big, s, _add(p.zy, q.zy), hw, _add(p.W, q.W), hu, _add(p.U, q.U))


def combine_across(st: Stats, axis_name: Any) -> Stats:
    """Merges the statistics of vocabulary shards: one ``pmax`` and one ``psum``."""
    big = jax.lax.pmax(st.m, axis_name)
    big0 = _finite_shift(big)
    parts = [_rebase(st.s, st.m, big0)]
    if st.zy is not None:
        parts.append(st.zy)
    if st.hw is not None:
        parts += [_rebase_h(st.hw, _some(st.W), st.m, big0), _some(st.W)]
    if st.hu is not None:
        parts += [_rebase_h(st.hu, _some(st.U), st.m, big0), _some(st.U)]
    tot = list(jax.lax.psum(jnp.stack(parts), axis_name))
    s = tot.pop(0)
    zy = tot.pop(0) if st.zy is not None else None
    hw, w_tot = (tot.pop(0), tot.pop(0)) if st.hw is not None else (None, None)
    hu, u_tot = (tot.pop(0), tot.pop(0)) if st.hu is not None else (None, None)
    return Stats(big, s, zy, hw, w_tot, hu, u_tot)


def _mul(c: Array | None, v: Array) -> Array:
    """``c * v`` with ``0 * anything = 0`` (a NaN ``c`` stays NaN); ``c=None`` means 1."""
    if c is None:
        return v
    return jnp.where(c != 0, c * v, jnp.zeros((), v.dtype))


def _label_weight(tgt: Target, like: Array) -> Array | None:
    if tgt.labels is None:
        return None
    return jnp.ones((), like.dtype) if tgt.t is None else tgt.t


def _row_terms(st: Stats, tgt: Target) -> tuple[Array, Array]:
    """``(A, D)``: the target's total mass and ``sum_c a_c (z_c/2 - m/2)`` (<= 0)."""
    m0 = _finite_shift(st.m)
    mass = jnp.zeros_like(st.s)
    dot = jnp.zeros_like(st.s)
    t = _label_weight(tgt, st.s)
    if t is not None:
        mass = mass + t
        dot = dot + _mul(t, _half(_some(st.zy), m0))
    if st.hw is not None:
        mass = mass + _some(st.W)
        dot = dot + st.hw
    if st.hu is not None:
        mass = mass + _some(st.U)
        dot = dot + st.hu
    return mass, dot


def _live(st: Stats, tgt: Target) -> Array:
    live = st.m != -jnp.inf  # NaN rows stay live (and NaN)
    return live if tgt.keep is None else live & tgt.keep


def loss_from_stats(st: Stats, tgt: Target) -> tuple[Array, Array]:
    """``(loss, lse)`` (keepdims) of combined statistics; 0 on empty or removed rows."""
    log_s = jnp.log(st.s)
    lse = log_s + _finite_shift(st.m)
    mass, dot = _row_terms(st, tgt)
    loss = _mul(mass, log_s) - 2 * dot
    if tgt.z_loss is not None:
        loss = loss + _mul(tgt.z_loss, lse * lse)
    zero = jnp.zeros((), loss.dtype)
    return jnp.where(_live(st, tgt), loss, zero), lse


def grad_logits(
    x: Array,
    tgt: Target,
    lse: Array,
    st: Stats,
    *,
    axis: int,
    exclude_true: bool = False,
    start: Any = None,
    mask: Array | None = None,
) -> Array:
    """``(A + 2 lam lse) softmax(z) - a`` on the columns of ``x``, from combined stats.

    0 on removed columns, removed rows and empty rows; NaN on NaN rows.
    """
    cdt = _cdt(x)
    zero = jnp.zeros((), cdt)
    live = _live(st, tgt)
    mass, _ = _row_terms(st, tgt)
    if tgt.z_loss is not None:
        mass = mass + _mul(tgt.z_loss, 2 * lse)
    lse0 = jnp.where(live, lse, zero)
    z = x.astype(cdt)
    if mask is not None:
        z = jnp.where(mask, z, -jnp.inf)
    out = _mul(jnp.where(live, mass, zero), jnp.exp(z - lse0))
    t = _label_weight(tgt, lse)
    if t is not None:
        hit = _label_hit(x.shape, _some(tgt.labels), axis, start)
        out = out - jnp.where(hit, jnp.where(live, t, zero), zero)
    if tgt.coef is not None:
        sel = _spread_sel(x, tgt, mask, axis, start, exclude_true)
        w = _spread_weights(x, tgt, sel, axis)
        c = jnp.where(live, tgt.coef, zero)
        out = out - (c if w is None else _mul(c, w))
    if tgt.soft is not None:
        u = _soft_weights(x, tgt, mask, axis).astype(cdt)
        sc = jnp.where(live, jnp.ones((), cdt) if tgt.scale is None else tgt.scale, zero)
        out = out - _mul(sc, u)
    return out


# --------------------------------------------------------------------------- dense rows


def _neg_log_probs(x, st, mask, cdt):
    """``-log softmax``, with 0 where it is ``+inf`` (derivatives w.r.t. the target only)."""
    z = x.astype(cdt)
    nlp = jnp.log(st.s) - (z - _finite_shift(st.m))
    ok = z > -jnp.inf
    if mask is not None:
        ok = ok & mask
    return jnp.where(ok, nlp, jnp.zeros((), cdt))


def _dense_fast(x, tgt, mask, axis, exclude_true, integer_only=False):
    """The forward loss as one fused chain: max, sum exp, then ``sum a (log s - (z - m))``.

    Every term is >= 0 (no cancellation) and only arithmetic stands between
    the reductions, so XLA:CPU fuses the whole loss into one pass over the
    logits, as it does ``optax.softmax_cross_entropy`` (a ``where`` between
    them splits it: 4096 x 32768 f32, forward, paired: 2.4x optax with the
    guarded statistics, 1.0x with this chain). It is unguarded: ``0 * inf``
    (no label mass on a ``-inf`` logit) gives NaN and a logit span beyond the
    float range overflows, so :func:`_dense` falls back to the guarded
    statistics whenever a row is not finite. Returns ``(loss, m)``.
    """
    cdt = _cdt(x)
    xm = x if mask is None else jnp.where(mask, x, jnp.asarray(-jnp.inf, x.dtype))
    m = jnp.max(xm, axis=axis, keepdims=True, initial=-jnp.inf).astype(cdt)
    m0 = jnp.maximum(m, jnp.finfo(cdt).min)  # arithmetic, not a select: keeps the chain fused
    z = xm.astype(cdt)
    log_s = jnp.log(jnp.sum(jnp.exp(z - m0), axis=axis, keepdims=True))
    zero = jnp.zeros((), cdt)
    # Row-level terms (label, excluded true class, z-loss) are summed into
    # ``row``; a spread or soft term is a sum over classes. Both end in one
    # reduction: XLA:CPU fuses max -> sum exp -> weighted sum into one pass
    # only if nothing but the last sum leaves the chain; adding a row term
    # built from ``log s`` after it makes a multi-output fusion (measured
    # 1.3x optax's smoothed loss at 4096 x 32768 f32, against 0.8x folded).
    row = None
    # With a guard behind (a spread or soft term), plain products: a select
    # here would be pulled into the reduction's fusion and split the chain;
    # 0 * inf gives NaN and sends the call to the guarded statistics.
    mul = _mul if (tgt.coef is None and tgt.soft is None) else jnp.multiply
    t = _label_weight(tgt, log_s)
    if t is not None:
        zy = _gather_exact(xm, tgt.labels, axis).astype(cdt)
        row = mul(t, log_s - (zy - m0))
    v = None
    if tgt.coef is not None:
        w = _spread_weights(x, tgt, mask, axis)
        v = tgt.coef if w is None else tgt.coef * w
    if tgt.soft is not None:
        u = _soft_weights(x, tgt, mask, axis)
        u = u if tgt.scale is None else tgt.scale * u
        v = u if v is None else v + u
    if v is not None and exclude_true:  # R = kept classes without y: remove y's own term
        w_y = jnp.ones((), cdt) if tgt.weights is None else tgt.weights.astype(cdt)[tgt.labels]
        if mask is not None:
            w_y = jnp.where(jnp.take_along_axis(mask, tgt.labels, axis=axis), w_y, zero)
        zy = _gather_exact(xm, tgt.labels, axis).astype(cdt)
        ex = -mul(_some(tgt.coef) * w_y, log_s - (zy - m0))
        row = ex if row is None else row + ex
    if tgt.z_loss is not None:
        lse = log_s + m0
        zl = mul(tgt.z_loss, lse * lse)
        row = zl if row is None else row + zl
    if v is None:
        loss = jnp.zeros_like(log_s) if row is None else row
    else:
        # log s - (z - m), never (log s + m) - z: the second form was faster
        # beside a label term (z - m shared by two sums splits XLA:CPU's fused
        # chain) but rounds relative to |z|, which broke shift invariance
        # (tests/test_differential.py: logits of 1e4 in float32, error 4e-5).
        terms = v * (log_s - (z - m0))
        k = x.shape[axis]
        if row is not None and k > 0:
            # the row term spread evenly over the classes, inside the sum
            terms = terms + row * (1 / k)
            row = None
        loss = jnp.sum(terms, axis=axis, keepdims=True)
        if row is not None:
            loss = loss + row
    if integer_only:
        keep = m != -jnp.inf
        if tgt.keep is not None:
            keep = keep & tgt.keep
        return jnp.where(keep, loss, zero), m
    # With a spread or soft term an empty row gives NaN here (-inf - -inf) and
    # is sent to the guarded statistics with every other non-finite row: the
    # max then has no user outside this chain, which XLA:CPU compiles to one
    # fused pass (max, sum exp, weighted sum), as it does optax's loss.
    if tgt.keep is not None:
        loss = jnp.where(tgt.keep, loss, zero)
    return loss, None


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _dense(x: Array, tgt: Target, mask: Array | None, axis: int, exclude_true: bool) -> Array:
    if tgt.labels is not None and tgt.coef is None and tgt.soft is None:
        # integer labels alone: no 0 * inf can occur, nothing to guard
        return _dense_fast(x, tgt, mask, axis, exclude_true, integer_only=True)[0]
    loss, _ = _dense_fast(x, tgt, mask, axis, exclude_true)
    # A row that is not finite: recompute with the guarded statistics (-inf
    # logits without label mass, empty rows, logits beyond the float range;
    # a NaN row is recomputed too, and stays NaN).
    redo = jnp.any(~jnp.isfinite(loss))

    def guarded():
        st = partial_stats(x, tgt, axis=axis, exclude_true=exclude_true, mask=mask)
        return loss_from_stats(st, tgt)[0]

    return jax.lax.cond(redo, guarded, lambda: loss)


def _nz(t: Any) -> bool:
    return t is not None and not _checks.is_symbolic_zero(t)


def _dense_jvp(axis, exclude_true, primals, tangents):
    x, tgt, mask = primals
    dx, dtgt, _ = tangents
    cdt = _cdt(x)
    st = partial_stats(x, tgt, axis=axis, exclude_true=exclude_true, mask=mask)
    loss, lse = loss_from_stats(st, tgt)
    tan = jnp.zeros_like(loss)
    if _nz(dx):
        g = grad_logits(x, tgt, lse, st, axis=axis, exclude_true=exclude_true, mask=mask)
        dxc = dx.astype(cdt)
        if mask is not None:  # a NaN tangent on a removed entry must not leak
            dxc = jnp.where(mask, dxc, jnp.zeros((), cdt))
        tan = tan + jnp.sum(g * dxc, axis=axis, keepdims=True)
    live = _live(st, tgt)
    zero = jnp.zeros((), cdt)
    d = dtgt
    wants = [_nz(getattr(d, f)) for f in ("t", "coef", "weights", "soft", "scale")]
    if any(wants):
        nlp = _neg_log_probs(x, st, mask, cdt)
        sel = _spread_sel(x, tgt, mask, axis, None, exclude_true) if tgt.coef is not None else None
        nlp_r = nlp if sel is None else jnp.where(sel, nlp, zero)
        w = None if tgt.weights is None else _class_vec(tgt.weights, x.ndim, axis)
        row = jnp.zeros_like(loss)
        if _nz(d.t):
            nlp_y = jnp.take_along_axis(nlp, tgt.labels, axis=axis)
            row = row + d.t * nlp_y
        if _nz(d.coef):
            row = row + d.coef * jnp.sum(nlp_r if w is None else w * nlp_r, axis, keepdims=True)
        if _nz(d.scale):
            u = _soft_weights(x, tgt, mask, axis).astype(cdt)
            row = row + d.scale * jnp.sum(u * nlp, axis, keepdims=True)
        if _nz(d.soft):
            ds = d.soft.astype(cdt)
            if mask is not None:
                ds = jnp.where(mask, ds, zero)
            sc = jnp.ones((), cdt) if tgt.scale is None else tgt.scale
            dsw = ds if w is None else ds * w
            row = row + sc * jnp.sum(dsw * nlp, axis, keepdims=True)
        if _nz(d.weights):
            dw = _class_vec(d.weights.astype(cdt), x.ndim, axis)
            per = jnp.zeros_like(nlp)
            if tgt.coef is not None:
                per = per + tgt.coef * nlp_r
            if tgt.soft is not None:
                sc = jnp.ones((), cdt) if tgt.scale is None else tgt.scale
                soft = tgt.soft.astype(cdt)
                if mask is not None:
                    soft = jnp.where(mask, soft, zero)
                per = per + sc * soft * nlp
            row = row + jnp.sum(per * dw, axis, keepdims=True)
        tan = tan + jnp.where(live, row, zero)
    if _nz(d.z_loss):
        tan = tan + jnp.where(live, lse * lse, zero) * d.z_loss
    return loss, tan


_dense.defjvp(_dense_jvp, symbolic_zeros=True)


def dense_loss(
    x: Array, tgt: Target, *, axis: int, mask: Array | None = None, exclude_true: bool = False
) -> Array:
    """The loss of dense rows (class axis ``axis``), keepdims, in the compute dtype.

    ``x`` may stay in its input dtype (upcast inside the fused reductions).
    ``K = 0`` behaves like a row whose every class is removed: 0.
    """
    if x.shape[axis] == 0:
        return jnp.zeros(x.shape[:axis] + (1,) + x.shape[axis + 1 :], _cdt(x))
    return _dense(x, tgt, mask, axis, exclude_true)


# --------------------------------------------------------------------------- soft-cap


@jax.custom_jvp
def softcap(x: Array, cap: Array) -> Array:
    """``cap tanh(x / cap)``, keeping ``-inf`` (a ruled-out class) at ``-inf``.

    ``+inf`` gives NaN, as every loss does for a ``+inf`` logit (outside the
    domain): capping it to ``cap`` would hide a diverged model.
    """
    out = cap * jnp.tanh(x / cap)
    return jnp.where(x == -jnp.inf, x, jnp.where(x == jnp.inf, jnp.nan, out))


def softcap_grad(x: Array, cap: Array) -> Array:
    """``d softcap / dx = 1 - tanh^2(x / cap)`` (0 at ``-inf``)."""
    t = jnp.tanh(x / cap)
    return 1 - t * t


@softcap.defjvp
def _softcap_jvp(primals, tangents):
    x, cap = primals
    dx, dcap = tangents
    t = jnp.tanh(x / cap)
    sech2 = 1 - t * t
    zero = jnp.zeros((), sech2.dtype)
    # d/dc c tanh(x/c) = t - (x/c)(1 - t^2); at -inf the output is constant.
    dc = jnp.where(sech2 != 0, t - x / cap * sech2, jnp.where(x == -jnp.inf, zero, t))
    dout = jnp.where(sech2 != 0, sech2 * dx, zero) + dc * dcap
    return softcap(x, cap), dout


# --------------------------------------------------------------------------- softmax moments
# Streamed statistics of p = softmax(a) (and q = softmax(b) for a second head) that
# the cross-entropy statistics above do not carry: the entropy, and the p-weighted
# log-ratio of two heads. Used by the blocked (linear_*) and vocabulary-sharded
# (vocab_parallel_*) log-prob/entropy and divergences of jaxent._large_vocab.
#
#   e = sum_j e^{a_j - m} (a_j - m)                    H(p)      = log s - e / s
#   d = sum_j e^{a_j - m} ((a_j - m) - (b_j - m_b))    D(p || q) = d / s - log s + log s_b
#
# Every sum is relative to the running maxima (m, m_b), never to the raw logits,
# so the values do not lose accuracy when all logits shift by a common c
# (issue 9, defect 2); merging two parts rebases each to the larger maxima:
#   s <- sum_i e^{m_i - M} s_i,  e <- sum_i e^{m_i - M} (e_i + (m_i - M) s_i),
#   d <- sum_i e^{m_i - M} (d_i + ((m_i - M) - (m_b,i - M_b)) s_i).


class Moments(NamedTuple):
    """Softmax moments of some columns of one or two heads (row vectors, keepdims).

    ``m``, ``s``: max of ``a`` and ``sum e^(a - m)``; ``e``: the entropy sum;
    ``zy``: the label's logit (0 where the label is not among the columns);
    ``mb``, ``sb``: the same as ``m``, ``s`` for ``b``; ``d``: the log-ratio sum
    (present only with ``mb``). Unused fields are ``None``.
    """

    m: Array
    s: Array
    e: Array | None = None
    zy: Array | None = None
    mb: Array | None = None
    sb: Array | None = None
    d: Array | None = None


def _times(w: Array, v: Array) -> Array:
    """``w * v`` with ``0 * (+-inf) = 0`` (a NaN ``w`` or ``v`` stays NaN)."""
    return jnp.where(w == 0, jnp.zeros((), w.dtype), w * v)


def partial_moments(
    a: Array,
    b: Array | None = None,
    *,
    axis: int,
    entropy: bool = False,
    labels: Array | None = None,
    start: Any = 0,
    mask: Array | None = None,
) -> Moments:
    """Moments of the columns of ``a`` (and of ``b``, same shape) along ``axis``.

    ``labels`` (keepdims, global indices) are matched against ``start + column``;
    ``mask`` removes columns of both heads. Inputs are upcast to the compute dtype.
    """
    cdt = _cdt(a)
    a = a.astype(cdt)
    if mask is not None:
        a = jnp.where(mask, a, -jnp.inf)
    m = jnp.max(a, axis=axis, keepdims=True, initial=-jnp.inf)
    m0 = _finite_shift(m)
    ea = jnp.exp(a - m0)
    s = jnp.sum(ea, axis=axis, keepdims=True)
    e = zy = mb = sb = d = None
    if entropy:
        e = jnp.sum(_times(ea, a - m0), axis=axis, keepdims=True)
    if labels is not None:
        hit = _label_hit(a.shape, labels, axis, start)
        zy = jnp.sum(jnp.where(hit, a, jnp.zeros((), cdt)), axis=axis, keepdims=True)
    if b is not None:
        b = b.astype(cdt)
        if mask is not None:
            b = jnp.where(mask, b, -jnp.inf)
        mb = jnp.max(b, axis=axis, keepdims=True, initial=-jnp.inf)
        mb0 = _finite_shift(mb)
        sb = jnp.sum(jnp.exp(b - mb0), axis=axis, keepdims=True)
        d = jnp.sum(_times(ea, (a - m0) - (b - mb0)), axis=axis, keepdims=True)
    return Moments(m, s, e, zy, mb, sb, d)


def empty_moments(like: Moments) -> Moments:
    """The moments of no column (the identity of :func:`combine_moments`)."""

    def z(v: Array | None, fill: float = 0.0) -> Any:
        return None if v is None else jnp.full_like(v, fill)

    return Moments(z(like.m, -jnp.inf), z(like.s), z(like.e), z(like.zy), z(like.mb, -jnp.inf),
                   z(like.sb), z(like.d))  # fmt: skip


def _rebased_moments(p: Moments, big: Array, big_b: Array | None) -> list[Array]:
    """The sums of ``p`` relative to the maxima ``(big, big_b)``, in field order."""
    big0 = _finite_shift(big)
    m0 = _finite_shift(p.m)
    alpha = jnp.where(p.m == -jnp.inf, jnp.zeros((), p.s.dtype), jnp.exp(p.m - big0))
    out = [alpha * p.s]
    if p.e is not None:
        out.append(_times(alpha, p.e + _times(p.s, m0 - big0)))
    if p.zy is not None:
        out.append(p.zy)
    if p.mb is not None:
        bigb0 = _finite_shift(_some(big_b))
        out.append(_rebase(_some(p.sb), p.mb, bigb0))
        if p.d is not None:
            shift = (m0 - big0) - (_finite_shift(p.mb) - bigb0)
            out.append(_times(alpha, p.d + _times(p.s, shift)))
    return out


def _moments_from(big: Array, big_b: Array | None, sums: list[Array], like: Moments) -> Moments:
    sums = list(sums)
    s = sums.pop(0)
    e = sums.pop(0) if like.e is not None else None
    zy = sums.pop(0) if like.zy is not None else None
    sb = sums.pop(0) if like.mb is not None else None
    d = sums.pop(0) if like.d is not None else None
    return Moments(big, s, e, zy, big_b, sb, d)


def combine_moments(p: Moments, q: Moments) -> Moments:
    """Merges the moments of two disjoint sets of columns."""
    big = jnp.maximum(p.m, q.m)
    big_b = None if p.mb is None else jnp.maximum(p.mb, _some(q.mb))
    sums = [
        x + y
        for x, y in zip(
            _rebased_moments(p, big, big_b), _rebased_moments(q, big, big_b), strict=True
        )
    ]
    return _moments_from(big, big_b, sums, p)


def combine_moments_across(st: Moments, axis_name: Any) -> Moments:
    """Merges the moments of vocabulary shards: one ``pmax`` and one ``psum``."""
    if st.mb is None:
        big, big_b = jax.lax.pmax(st.m, axis_name), None
    else:
        big, big_b = jax.lax.pmax(jnp.stack([st.m, st.mb]), axis_name)
    sums = jax.lax.psum(jnp.stack(_rebased_moments(st, big, big_b)), axis_name)
    return _moments_from(big, big_b, list(sums), st)


def moments_lse(st: Moments) -> tuple[Array, Array | None]:
    """``(lse(a), lse(b))`` of combined moments (``-inf`` for an empty row)."""
    lse_a = jnp.log(st.s) + _finite_shift(st.m)
    lse_b = None if st.mb is None else jnp.log(_some(st.sb)) + _finite_shift(st.mb)
    return lse_a, lse_b


def moments_entropy(st: Moments) -> Array:
    """``H(p) = log s - e / s`` (0 for an empty row); needs ``entropy=True`` moments."""
    h = jnp.log(st.s) - _some(st.e) / st.s
    return jnp.where(st.m == -jnp.inf, jnp.zeros((), h.dtype), h)


def moments_log_prob(st: Moments) -> Array:
    """``log p_y = (z_y - m) - log s`` (0 for an empty row); needs ``labels`` moments."""
    lp = (_some(st.zy) - _finite_shift(st.m)) - jnp.log(st.s)
    return jnp.where(st.m == -jnp.inf, jnp.zeros((), lp.dtype), lp)


def moments_kl(st: Moments) -> Array:
    """``D(p || q) = d / s - log s + log s_b``: 0 for an empty ``p``, ``+inf`` for an empty ``q``."""
    kl = _some(st.d) / st.s + (jnp.log(_some(st.sb)) - jnp.log(st.s))
    zero, inf = jnp.zeros((), kl.dtype), jnp.asarray(jnp.inf, kl.dtype)
    kl = jnp.where(st.mb == -jnp.inf, inf, kl)
    return jnp.where(st.m == -jnp.inf, zero, kl)


def softmax_from_lse(x: Array, lse: Array, mask: Array | None = None) -> Array:
    """``exp(x - lse)`` in the compute dtype: 0 on removed columns and on empty rows."""
    z = x.astype(_cdt(x))
    if mask is not None:
        z = jnp.where(mask, z, -jnp.inf)
    empty = lse == -jnp.inf
    p = jnp.exp(z - jnp.where(empty, jnp.zeros((), lse.dtype), lse))
    return jnp.where(empty, jnp.zeros((), p.dtype), p)


def grad_entropy_logits(x: Array, lse: Array, ent: Array, mask: Array | None = None) -> Array:
    """``dH/dz_j = p_j ((lse - z_j) - H)`` (0 where ``p_j = 0``)."""
    z = x.astype(_cdt(x))
    p = softmax_from_lse(x, lse, mask)
    return _times(p, (lse - z) - ent)


def grad_kl_logits(
    a: Array, b: Array, lse_a: Array, lse_b: Array, kl: Array, mask: Array | None = None
) -> tuple[Array, Array]:
    """``(dD/da, dD/db) = (p ((a - lse_a) - (b - lse_b) - D), q - p)`` of ``D(p || q)``."""
    cdt = _cdt(a)
    p = softmax_from_lse(a, lse_a, mask)
    q = softmax_from_lse(b, lse_b, mask)
    la = a.astype(cdt) - lse_a
    lb = b.astype(cdt) - lse_b
    return _times(p, (la - lb) - kl), q - p
