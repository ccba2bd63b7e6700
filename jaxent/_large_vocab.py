r"""Large-vocabulary losses: linear and vocab-parallel cross-entropy.

With 128k-256k-token vocabularies the ``[N, V]`` logits dominate training
memory. The functions here compute the per-example softmax cross-entropy

.. math::
  \ell_n = \mathrm{lse}(z_n) - (1 - \varepsilon)\, z_{n, y_n}
           - \frac{\varepsilon}{V} \sum_j z_{n j} + \lambda\, \mathrm{lse}(z_n)^2,
  \qquad \mathrm{lse}(z_n) = \log \sum_j e^{z_{n j}}

without ever holding the logits :math:`z = \mathrm{cap}(h W + b)` of all
classes at once:

* :func:`linear_cross_entropy` takes the hidden states and the output
  projection and streams over blocks of the vocabulary. Its ``jax.custom_vjp``
  keeps only the per-row logsumexp (O(N) residuals) and recomputes each block
  of logits in the backward pass, so forward and backward use
  O(N * block_size) working memory instead of O(N * V).
* :func:`vocab_parallel_cross_entropy` and
  :func:`vocab_parallel_linear_cross_entropy` run inside ``shard_map`` when the
  class axis is sharded over a mesh axis (tensor parallelism): the global max
  and the global sum of exponentials cost one ``pmax`` and one ``psum``; the
  gradient is local and closed-form (no collective in the backward pass except
  the ``psum`` of the hidden-state gradient in the linear version).

A custom VJP (not a JVP) is used on purpose: a JVP would be linearised by
autodiff, which saves every block's probabilities and brings back the O(N * V)
memory the functions exist to avoid. Forward-mode (``jax.jvp``, ``jacfwd``) is
therefore not supported by these three functions.

Conventions (the same as :func:`jaxent.softmax_cross_entropy_with_integer_labels`):
rows whose label equals ``ignore_index`` or whose ``where`` entry is ``False``
give a loss of 0 and receive gradient 0. Label smoothing uses the uniform
convention :math:`(1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon / V`; the
z-loss :math:`\lambda\,\mathrm{lse}^2` (PaLM) and the logit soft-cap
:math:`\mathrm{cap}(u) = c \tanh(u / c)` (Gemma 2) apply as in the
materialised loss, the logsumexp being that of the soft-capped logits.
A label outside ``[0, V)`` that is not ``ignore_index`` gives NaN for its row
(loss and gradient), as in the materialised loss.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

#: Default number of vocabulary columns per block. Measured (forward+backward,
#: D=512, V=65536, float32, 2-core CPU, quiet machine; ``python -m benchmarks
#: --only lce_block`` and the notes in benchmarks/README.md): times relative to
#: the fastest block, N=64: 512 1.16, 1024 1.06, 2048 1.00, 4096 1.06,
#: 8192 1.18; N=256: 1.05/1.02/1.00/1.06/1.05; N=1024: 256 1.18, 512 1.07,
#: 1024 1.00, 2048 1.00, 4096 1.03, 8192 1.02; N=8192: 1024 12.8 s, 2048
#: 12.3 s. 2048 is the fastest or tied everywhere; the working memory is
#: about two [N, block] float32 buffers (128 MiB at N=8192).
DEFAULT_BLOCK_SIZE = 2048


# --------------------------------------------------------------------------- checks


def _check_hparams(label_smoothing: Any, z_loss: Any, logit_softcap: Any) -> None:
    _checks.check_scalar_range(label_smoothing, "label_smoothing", 0.0, 1.0)
    _checks.check_scalar_range(z_loss, "z_loss", 0.0, math.inf)
    if logit_softcap is not None:
        _checks.check_scalar_range(logit_softcap, "logit_softcap", 0.0, math.inf, low_closed=False)


def _is_static_zero(x: Any) -> bool:
    """True when ``x`` is known at trace time to be 0 (its term can be skipped)."""
    if isinstance(x, jax.core.Tracer):
        return False
    return float(np.asarray(x)) == 0.0


def _check_block_size(block_size: Any) -> int:
    if block_size is None:
        return DEFAULT_BLOCK_SIZE
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"`block_size` must be a positive int or None, got {block_size!r}.")
    if block_size <= 0:
        raise ValueError(f"`block_size` must be a positive int, got {block_size}.")
    return int(block_size)


def _row_validity(
    labels: Array, where: Any, ignore_index: Any, row_shape: tuple[int, ...]
) -> Array | None:
    """Boolean [rows] of rows that count (``None``: all of them)."""
    valid = None
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            if not jnp.issubdtype(where.dtype, jnp.integer):
                raise TypeError(f"`where` must be a boolean row mask, got dtype {where.dtype}.")
            where = where != 0
        if where.shape != row_shape:
            raise ValueError(
                f"`where` must be a row mask with the shape of `labels` {row_shape},"
                f" got {where.shape}."
            )
        valid = where
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"`ignore_index` must be an int or None, got {ignore_index!r}.")
        keep = labels != ignore_index
        valid = keep if valid is None else valid & keep
    return valid


def _row_weight(labels: Array, valid: Array | None, v_total: Any, dtype: Any) -> Array:
    """1 for rows that count, 0 for removed rows, NaN for kept rows with a bad label.

    As in the materialised loss, a label outside ``[0, V)`` that is not
    ``ignore_index`` makes its row's loss and gradient NaN instead of silently
    training on a wrong class.
    """
    ok = (labels >= 0) & (labels < v_total)
    rw = jnp.where(ok, 1.0, jnp.nan).astype(dtype)
    return rw if valid is None else jnp.where(valid, rw, 0).astype(dtype)


# --------------------------------------------------------------------------- block kernel


class _Config(NamedTuple):
    """Static description of one blocked computation (hashable)."""

    vocab: int  # number of classes seen by this call (the local shard's, if sharded)
    block: int  # columns per block
    smoothing: bool  # label smoothing term present
    zloss: bool  # z-loss term present
    softcap: bool  # soft-cap present
    axis_name: Any  # mesh axis over which the vocabulary is sharded, or None


def _varying_axes(x: Array) -> set:
    """The manual mesh axes ``x`` varies over (empty outside ``shard_map``)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return set(mat.varying)
    return set(getattr(aval, "vma", ()))


def _vary_like(x: Array, *refs: Array) -> Array:
    """Gives a loop's initial carry the manual-axis variance (vma) of ``refs``.

    Inside ``shard_map`` a ``fori_loop`` carry must keep its type; values built
    from a sharded weight vary over its mesh axis, so the zeros they start from
    must be cast to varying too. Outside ``shard_map`` this is the identity.
    """
    want = set()
    for r in refs:
        want |= _varying_axes(r)
    missing = tuple(sorted(want - _varying_axes(x)))
    if not missing:
        return x
    return jax.lax.pcast(x, missing, to="varying")


def _num_blocks(cfg: _Config) -> int:
    return -(-cfg.vocab // cfg.block)


def _ragged(cfg: _Config) -> bool:
    return cfg.vocab % cfg.block != 0


def _block_logits(
    h: Array, w: Array, b: Array | None, hp: Array, i: Array, cfg: _Config
) -> tuple[Array, Array | None, Array, Array | None]:
    """Soft-capped logits of block ``i``.

    Blocks have a fixed width; the last one of a ragged vocabulary is moved back
    to end at ``V`` and its columns already covered by the previous block are
    masked (``keep``), so that every column is counted exactly once.

    Returns:
      ``(z, t, start, keep)``: logits [N, B] in the compute dtype (``-inf`` at
      masked columns), ``tanh(u / cap)`` (or ``None``), the block's first
      column and the kept-column mask (``None`` when no column is masked).
    """
    cdt = hp.dtype
    start = jnp.minimum(i * cfg.block, cfg.vocab - cfg.block)
    w_blk = jax.lax.dynamic_slice_in_dim(w, start, cfg.block, axis=1)
    u = jax.lax.dot_general(h, w_blk, (((1,), (0,)), ((), ())), preferred_element_type=cdt)
    if b is not None:
        u = u + jax.lax.dynamic_slice_in_dim(b, start, cfg.block).astype(cdt)[None, :]
    t = None
    if cfg.softcap:
        cap = hp[2]
        t = jnp.tanh(u / cap)
        u = cap * t
    keep = None
    if _ragged(cfg):
        keep = (start + jnp.arange(cfg.block) >= i * cfg.block)[None, :]
        u = jnp.where(keep, u, -jnp.inf)
    return u, t, start, keep


def _local_stats(
    h: Array, w: Array, b: Array | None, labels: Array, hp: Array, cfg: _Config
) -> tuple[Array, Array, Array, Array]:
    """Streams over the blocks: running max, sum of exp, target logit, sum of logits.

    ``labels`` are local class indices; one outside ``[0, V)`` matches no column.
    """
    n = h.shape[0]
    cdt = hp.dtype

    def body(i, carry):
        m, s, zy, zs = carry
        z, _, start, keep = _block_logits(h, w, b, hp, i, cfg)
        m_new = jnp.maximum(m, jnp.max(z, axis=1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)
        hit = (start + jnp.arange(cfg.block))[None, :] == labels[:, None]
        if keep is not None:
            hit = hit & keep
        zy = zy + jnp.sum(jnp.where(hit, z, 0), axis=1)
        if cfg.smoothing:
            zs = zs + jnp.sum(z if keep is None else jnp.where(keep, z, 0), axis=1)
        return m_new, s, zy, zs

    refs = (h, w, labels, hp) + (() if b is None else (b,))
    init = tuple(
        _vary_like(x, *refs)
        for x in (
            jnp.full((n,), -jnp.inf, cdt),
            jnp.zeros((n,), cdt),
            jnp.zeros((n,), cdt),
            jnp.zeros((n,), cdt),
        )
    )
    return jax.lax.fori_loop(0, _num_blocks(cfg), body, init)


def _global_stats(
    m: Array, s: Array, zy: Array, zs: Array, cfg: _Config
) -> tuple[Array, Array, Array]:
    """Combines local statistics into the global ``(lse, z_y, sum_j z_j)``.

    Unsharded this is ``m + log s``; sharded it costs one ``pmax`` (the global
    max) and one ``psum`` (of the rescaled sums of exponentials, the target
    logit from the shard that owns it, and the logit sums).
    """
    if cfg.axis_name is None:
        return m + jnp.log(s), zy, zs
    big = jax.lax.pmax(m, cfg.axis_name)
    parts = [s * jnp.exp(m - big), zy] + ([zs] if cfg.smoothing else [])
    parts = jax.lax.psum(jnp.stack(parts), cfg.axis_name)
    return big + jnp.log(parts[0]), parts[1], parts[-1]


def _loss_from_stats(
    lse: Array, zy: Array, zs: Array, weight: Array, hp: Array, v_total: int, cfg: _Config
) -> Array:
    loss = lse
    if cfg.smoothing:
        eps = hp[0]
        loss = loss - (1 - eps) * zy - eps * zs / v_total
    else:
        loss = loss - zy
    if cfg.zloss:
        loss = loss + hp[1] * lse * lse
    return jnp.where(weight != 0, weight * loss, 0)


def _dlogits(
    z: Array,
    t: Array | None,
    hit: Array,
    keep: Array | None,
    lse: Array,
    gw: Array,
    hp: Array,
    v_total: int,
    cfg: _Config,
) -> Array:
    """Closed-form gradient of the loss with respect to the pre-cap logits of a block.

    .. math::
      \\partial \\ell / \\partial z_j = p_j (1 + 2 \\lambda\\,\\mathrm{lse})
        - (1 - \\varepsilon) [j = y] - \\varepsilon / V,
      \\qquad \\partial z / \\partial u = 1 - \\tanh^2(u / c)
    """
    coef = gw * (1 + 2 * hp[1] * lse) if cfg.zloss else gw
    p = jnp.exp(z - lse[:, None])
    dz = coef[:, None] * p
    one = gw * (1 - hp[0]) if cfg.smoothing else gw
    dz = dz - jnp.where(hit, one[:, None], 0)
    if cfg.smoothing:
        dz = dz - (gw * hp[0] / v_total)[:, None]
    if t is not None:
        dz = dz * (1 - t * t)
    ok = (gw != 0)[:, None]
    return jnp.where(ok if keep is None else ok & keep, dz, 0)


# --------------------------------------------------------------------------- linear CE core


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _linear_ce(
    h: Array, w: Array, b: Array | None, labels: Array, weight: Array, hp: Array, cfg: _Config
) -> Array:
    return _linear_ce_fwd(h, w, b, labels, weight, hp, cfg)[0]


def _offset_labels(labels: Array, cfg: _Config) -> Array:
    if cfg.axis_name is None:
        return labels
    return labels - jax.lax.axis_index(cfg.axis_name) * cfg.vocab


def _v_total(cfg: _Config) -> Any:
    if cfg.axis_name is None:
        return cfg.vocab
    return cfg.vocab * jax.lax.axis_size(cfg.axis_name)


def _linear_ce_fwd(h, w, b, labels, weight, hp, cfg):
    local = _offset_labels(labels, cfg)
    m, s, zy, zs = _local_stats(h, w, b, local, hp, cfg)
    lse, zy, zs = _global_stats(m, s, zy, zs, cfg)
    loss = _loss_from_stats(lse, zy, zs, weight, hp, _v_total(cfg), cfg)
    return loss, (h, w, b, labels, weight, hp, lse)


def _linear_ce_bwd(cfg, res, g):
    h, w, b, labels, weight, hp, lse = res
    cdt = hp.dtype
    local = _offset_labels(labels, cfg)
    v_total = _v_total(cfg)
    gw = g.astype(cdt) * weight
    mdt = jnp.result_type(h.dtype, w.dtype)

    def body(i, carry):
        dh, dw, db = carry
        z, t, start, keep = _block_logits(h, w, b, hp, i, cfg)
        hit = (start + jnp.arange(cfg.block))[None, :] == local[:, None]
        if keep is not None:
            hit = hit & keep
        du = _dlogits(z, t, hit, keep, lse, gw, hp, v_total, cfg).astype(mdt)
        w_blk = jax.lax.dynamic_slice_in_dim(w, start, cfg.block, axis=1)
        dh = dh + jax.lax.dot_general(
            du, w_blk, (((1,), (1,)), ((), ())), preferred_element_type=cdt
        )
        dw_blk = jax.lax.dot_general(
            h, du, (((0,), (0,)), ((), ())), preferred_element_type=cdt
        ).astype(w.dtype)
        # In a ragged last block the re-covered columns get exactly 0 added.
        if _ragged(cfg):
            dw_blk = dw_blk + jax.lax.dynamic_slice_in_dim(dw, start, cfg.block, axis=1)
        dw = jax.lax.dynamic_update_slice_in_dim(dw, dw_blk, start, axis=1)
        if db is not None:
            db_blk = jnp.sum(du.astype(cdt), axis=0).astype(b.dtype)
            if _ragged(cfg):
                db_blk = db_blk + jax.lax.dynamic_slice_in_dim(db, start, cfg.block)
            db = jax.lax.dynamic_update_slice_in_dim(db, db_blk, start, axis=0)
        return dh, dw, db

    refs = (h, w, labels, hp, gw) + (() if b is None else (b,))
    init = (
        _vary_like(jnp.zeros(h.shape, cdt), *refs),
        _vary_like(jnp.zeros(w.shape, w.dtype), *refs),
        None if b is None else _vary_like(jnp.zeros(b.shape, b.dtype), *refs),
    )
    dh, dw, db = jax.lax.fori_loop(0, _num_blocks(cfg), body, init)
    if cfg.axis_name is not None:
        # The hidden states feed every vocabulary shard: sum their contributions.
        dh = jax.lax.psum(dh, cfg.axis_name)
    return dh.astype(h.dtype), dw, db, None, jnp.zeros_like(weight), jnp.zeros_like(hp)


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


def _prepare_linear(
    hidden: Any,
    weight: Any,
    labels: Any,
    bias: Any,
    where: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    logit_softcap: Any,
    block_size: Any,
    axis_name: Any,
    weight_name: str,
    bias_name: str,
):
    hidden = _checks.check_floating(hidden, "hidden")
    weight = _checks.check_floating(weight, weight_name)
    labels = _checks.check_integer(labels, "labels")
    if hidden.ndim < 1:
        raise ValueError("`hidden` must have shape [..., D] (rows of hidden states), got a scalar.")
    if weight.ndim != 2:
        raise ValueError(f"`{weight_name}` must have shape [D, V], got {weight.shape}.")
    d = hidden.shape[-1]
    if weight.shape[0] != d:
        raise ValueError(
            f"`{weight_name}` must have shape [D, V] with D = hidden.shape[-1] = {d},"
            f" got {weight.shape}."
        )
    row_shape = hidden.shape[:-1]
    if labels.shape != row_shape:
        raise ValueError(
            f"`labels` must have shape {row_shape} (the rows of `hidden` {hidden.shape}),"
            f" got {labels.shape}."
        )
    vocab = weight.shape[1]
    if vocab == 0:
        raise ValueError(f"`{weight_name}` must have at least one class (V > 0).")
    if bias is not None:
        bias = _checks.check_floating(bias, bias_name)
        if bias.shape != (vocab,):
            raise ValueError(f"`{bias_name}` must have shape [V] = ({vocab},), got {bias.shape}.")
    _check_hparams(label_smoothing, z_loss, logit_softcap)
    block = min(_check_block_size(block_size), vocab)
    valid = _row_validity(labels, where, ignore_index, row_shape)

    dtypes = [hidden.dtype, weight.dtype] + ([] if bias is None else [bias.dtype])
    cdt = _checks.compute_dtype(*dtypes)
    out_dt = _checks.output_dtype(*dtypes)
    mdt = jnp.result_type(hidden.dtype, weight.dtype)
    cfg = _Config(
        vocab=vocab,
        block=block,
        smoothing=not _is_static_zero(label_smoothing),
        zloss=not _is_static_zero(z_loss),
        softcap=logit_softcap is not None,
        axis_name=axis_name,
    )
    hp = jnp.stack(
        [
            jnp.asarray(label_smoothing, cdt),
            jnp.asarray(z_loss, cdt),
            jnp.asarray(1.0 if logit_softcap is None else logit_softcap, cdt),
        ]
    )
    n = math.prod(row_shape)
    h2 = hidden.reshape(n, d).astype(mdt)
    w2 = weight.astype(mdt)
    lab = labels.reshape(n)
    v_total = vocab if axis_name is None else vocab * jax.lax.axis_size(axis_name)
    rw = _row_weight(lab, None if valid is None else valid.reshape(n), v_total, cdt)
    return h2, w2, bias, lab, rw, hp, cfg, row_shape, out_dt


def linear_cross_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | ArrayLike = 0.0,
    z_loss: float | ArrayLike = 0.0,
    logit_softcap: float | None = None,
    block_size: int | None = None,
) -> Array:
    r"""Softmax cross-entropy of ``hidden @ weight`` without materialising the logits.

    With logits :math:`z_n = \mathrm{cap}(h_n W + b)`, where
    :math:`\mathrm{cap}(u) = c\tanh(u/c)` when ``logit_softcap`` is :math:`c`
    (identity otherwise), the per-example loss is

    .. math::
      \ell_n = \mathrm{lse}(z_n) - (1-\varepsilon)\, z_{n y_n}
               - \frac{\varepsilon}{V}\sum_{j=1}^{V} z_{n j}
               + \lambda\,\mathrm{lse}(z_n)^2

    (uniform label smoothing :math:`\varepsilon`, z-loss :math:`\lambda`), and
    :math:`\ell_n = 0` for ignored or masked rows.

    The vocabulary is processed in blocks of ``block_size`` columns with an
    online logsumexp; a ``jax.custom_vjp`` saves only the per-row logsumexp and
    recomputes each block of logits in the backward pass, where the gradient
    with respect to the logits is closed-form:

    .. math::
      \frac{\partial \ell_n}{\partial z_{nj}} = p_{nj}\,(1 + 2\lambda\,\mathrm{lse}(z_n))
        - (1-\varepsilon)[j = y_n] - \frac{\varepsilon}{V}

    Memory is O(N·block_size + N·D + D·V) in both passes instead of O(N·V).
    Matrix products run in the input dtype with float32 accumulation
    (``preferred_element_type``); everything else is computed in at least
    float32. Reverse-mode only (``jax.grad``/``jax.vjp``); gradients flow to
    ``hidden``, ``weight`` and ``bias``.

    Args:
      hidden: floating array of hidden states, shape ``[N, D]`` (or ``[..., D]``).
      weight: floating output projection, shape ``[D, V]``.
      labels: integer class indices, shape ``[N]`` (the rows of ``hidden``).
      bias: optional floating bias of shape ``[V]``.
      where: optional boolean row mask of shape ``[N]``; ``False`` rows give 0.
      ignore_index: optional label value whose rows give 0 (e.g. ``-100``).
      label_smoothing: :math:`\varepsilon \in [0, 1)`, uniform convention
        :math:`(1-\varepsilon)\,\mathrm{onehot} + \varepsilon/V`.
      z_loss: :math:`\lambda \ge 0`, coefficient of :math:`\mathrm{lse}^2`.
      logit_softcap: optional :math:`c > 0`; logits become :math:`c\tanh(u/c)`.
      block_size: vocabulary columns per block (default
        :data:`DEFAULT_BLOCK_SIZE` = 2048); the working memory grows
        linearly with it, the speed is flat from about 1024 up on CPU.

    Returns:
      Per-example losses of shape ``[N]`` (the shape of ``labels``), in the
      promoted dtype of the inputs.

    Raises:
      TypeError: non-floating ``hidden``/``weight``/``bias`` or non-integer ``labels``.
      ValueError: inconsistent shapes or a hyper-parameter out of range.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> h, w = jnp.ones((2, 3)), jnp.zeros((3, 4))
      >>> jaxent.linear_cross_entropy(h, w, jnp.array([0, 3]))  # uniform: log 4
      Array([1.3862944, 1.3862944], dtype=float32)

    References:
      Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
    """
    h2, w2, b, lab, rw, hp, cfg, row_shape, out_dt = _prepare_linear(
        hidden,
        weight,
        labels,
        bias,
        where,
        ignore_index,
        label_smoothing,
        z_loss,
        logit_softcap,
        block_size,
        None,
        "weight",
        "bias",
    )
    return _linear_ce(h2, w2, b, lab, rw, hp, cfg).reshape(row_shape).astype(out_dt)


def vocab_parallel_linear_cross_entropy(
    hidden: ArrayLike,
    weight_shard: ArrayLike,
    labels: ArrayLike,
    axis_name: Any,
    *,
    bias_shard: ArrayLike | None = None,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | ArrayLike = 0.0,
    z_loss: float | ArrayLike = 0.0,
    logit_softcap: float | None = None,
    block_size: int | None = None,
) -> Array:
    r""":func:`linear_cross_entropy` with the projection sharded over the vocabulary.

    For use inside ``shard_map`` (or ``pmap``) where ``weight_shard`` ``[D, V/k]``
    is this device's contiguous slice of ``weight`` along a mesh axis
    ``axis_name`` of size :math:`k` (shard :math:`r` holds classes
    :math:`[rV/k, (r+1)V/k)`), while ``hidden`` and ``labels`` (global class
    indices) are the same on every device of that axis. Each device streams
    over its own blocks, then

    .. math::
      M = \mathrm{pmax}(m_r), \quad
      \mathrm{lse} = M + \log \mathrm{psum}(s_r e^{m_r - M}), \quad
      z_y = \mathrm{psum}(z_{y, r})

    (a ``pmax`` and a ``psum``, the target logit coming from the shard that
    owns it). The backward pass is local except for one ``psum`` of the
    hidden-state gradient; ``weight_shard`` and ``bias_shard`` get their own
    slices of the full gradient. The loss is the same on every device of the
    axis, and equals :func:`linear_cross_entropy` of the full weight.

    Args:
      hidden: hidden states ``[N, D]`` (or ``[..., D]``), replicated over ``axis_name``.
      weight_shard: this device's ``[D, V_local]`` slice of the projection.
      labels: global integer class indices ``[N]``.
      axis_name: the mesh axis name the vocabulary is sharded over.
      bias_shard: optional ``[V_local]`` slice of the bias.
      where: optional boolean row mask ``[N]``.
      ignore_index: optional label value whose rows give 0.
      label_smoothing: :math:`\varepsilon \in [0, 1)` (uniform over all :math:`V` classes).
      z_loss: :math:`\lambda \ge 0`.
      logit_softcap: optional :math:`c > 0`.
      block_size: local vocabulary columns per block.

    Returns:
      Per-example losses ``[N]``, identical on every device of ``axis_name``.
    """
    h2, w2, b, lab, rw, hp, cfg, row_shape, out_dt = _prepare_linear(
        hidden,
        weight_shard,
        labels,
        bias_shard,
        where,
        ignore_index,
        label_smoothing,
        z_loss,
        logit_softcap,
        block_size,
        axis_name,
        "weight_shard",
        "bias_shard",
    )
    return _linear_ce(h2, w2, b, lab, rw, hp, cfg).reshape(row_shape).astype(out_dt)


# --------------------------------------------------------------------------- vocab-parallel CE


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _vp_ce(z: Array, labels: Array, weight: Array, hp: Array, axis_name: Any, flags: tuple):
    return _vp_ce_fwd(z, labels, weight, hp, axis_name, flags)[0]


def _vp_local(z: Array, labels: Array, axis_name: Any) -> tuple[Array, Array]:
    v_local = z.shape[-1]
    local = labels - jax.lax.axis_index(axis_name) * v_local
    hit = jax.lax.broadcasted_iota(local.dtype, z.shape, z.ndim - 1) == local[..., None]
    return hit, jnp.sum(jnp.where(hit, z, 0), axis=-1)


def _vp_ce_fwd(z, labels, weight, hp, axis_name, flags):
    smoothing, zloss = flags
    v_total = z.shape[-1] * jax.lax.axis_size(axis_name)
    big = jax.lax.pmax(jnp.max(z, axis=-1), axis_name)
    big = jnp.where(jnp.isfinite(big), big, 0)
    _, zy = _vp_local(z, labels, axis_name)
    parts = [jnp.sum(jnp.exp(z - big[..., None]), axis=-1), zy]
    if smoothing:
        parts.append(jnp.sum(z, axis=-1))
    parts = jax.lax.psum(jnp.stack(parts), axis_name)
    lse = big + jnp.log(parts[0])
    loss = lse
    if smoothing:
        loss = loss - (1 - hp[0]) * parts[1] - hp[0] * parts[2] / v_total
    else:
        loss = loss - parts[1]
    if zloss:
        loss = loss + hp[1] * lse * lse
    return jnp.where(weight != 0, weight * loss, 0), (z, labels, weight, hp, lse)


def _vp_ce_bwd(axis_name, flags, res, g):
    z, labels, weight, hp, lse = res
    smoothing, zloss = flags
    v_total = z.shape[-1] * jax.lax.axis_size(axis_name)
    gw = g * weight
    hit, _ = _vp_local(z, labels, axis_name)
    coef = gw * (1 + 2 * hp[1] * lse) if zloss else gw
    dz = coef[..., None] * jnp.exp(z - lse[..., None])
    one = gw * (1 - hp[0]) if smoothing else gw
    dz = dz - jnp.where(hit, one[..., None], 0)
    if smoothing:
        dz = dz - (gw * hp[0] / v_total)[..., None]
    dz = jnp.where((gw != 0)[..., None], dz, 0)
    return dz, None, jnp.zeros_like(weight), jnp.zeros_like(hp)


_vp_ce.defvjp(_vp_ce_fwd, _vp_ce_bwd)


def vocab_parallel_cross_entropy(
    logits_shard: ArrayLike,
    labels: ArrayLike,
    axis_name: Any,
    *,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | ArrayLike = 0.0,
    z_loss: float | ArrayLike = 0.0,
) -> Array:
    r"""Integer-label softmax cross-entropy with the class axis sharded over devices.

    For use inside ``shard_map`` (or ``pmap``): ``logits_shard`` ``[..., V/k]``
    is this device's contiguous slice of the logits along the mesh axis
    ``axis_name`` of size :math:`k` (shard :math:`r` holds classes
    :math:`[rV/k, (r+1)V/k)`); ``labels`` are global class indices, the same on
    every device of the axis. With two collectives,

    .. math::
      M = \mathrm{pmax}_r \max_j z^{(r)}_j, \qquad
      (S, z_y) = \mathrm{psum}_r\Big(\sum_j e^{z^{(r)}_j - M},\;
                 \sum_j [j + rV/k = y]\, z^{(r)}_j\Big),

    .. math::
      \ell = M + \log S - (1-\varepsilon) z_y - \frac{\varepsilon}{V}\sum_j z_j
             + \lambda (M + \log S)^2 .

    The gradient is closed-form and local (no collective):
    :math:`\partial\ell/\partial z^{(r)}_j = p_j(1 + 2\lambda\,\mathrm{lse})
    - (1-\varepsilon)[j + rV/k = y] - \varepsilon/V`.

    Args:
      logits_shard: this device's slice ``[..., V_local]`` of the logits (class axis last).
      labels: global integer class indices of shape ``logits_shard.shape[:-1]``.
      axis_name: the mesh axis name the class axis is sharded over.
      where: optional boolean row mask of the shape of ``labels``.
      ignore_index: optional label value whose rows give 0.
      label_smoothing: :math:`\varepsilon \in [0, 1)`, uniform over all :math:`V` classes.
      z_loss: :math:`\lambda \ge 0`.

    Returns:
      Per-example losses of the shape of ``labels``, the same on every device
      of ``axis_name``, in the dtype of ``logits_shard`` (computed in at least float32).

    Example:
      >>> from functools import partial
      >>> import jax, jax.numpy as jnp, jaxent
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> f = jax.jit(jax.shard_map(
      ...     partial(jaxent.vocab_parallel_cross_entropy, axis_name="tp"),
      ...     mesh=mesh, in_specs=(P(None, "tp"), P()), out_specs=P()))
      >>> f(jnp.zeros((2, 4)), jnp.array([0, 3]))
      Array([1.3862944, 1.3862944], dtype=float32)
    """
    logits_shard = _checks.check_floating(logits_shard, "logits_shard")
    labels = _checks.check_integer(labels, "labels")
    if logits_shard.ndim < 1:
        raise ValueError("`logits_shard` must have a class axis (shape [..., V_local]).")
    if labels.shape != logits_shard.shape[:-1]:
        raise ValueError(
            f"`labels` must have shape {logits_shard.shape[:-1]} (`logits_shard` without"
            f" its class axis), got {labels.shape}."
        )
    _check_hparams(label_smoothing, z_loss, None)
    valid = _row_validity(labels, where, ignore_index, labels.shape)
    cdt = _checks.compute_dtype(logits_shard.dtype)
    hp = jnp.stack([jnp.asarray(label_smoothing, cdt), jnp.asarray(z_loss, cdt)])
    v_total = logits_shard.shape[-1] * jax.lax.axis_size(axis_name)
    rw = _row_weight(labels, valid, v_total, cdt)
    flags = (not _is_static_zero(label_smoothing), not _is_static_zero(z_loss))
    out = _vp_ce(logits_shard.astype(cdt), labels, rw, hp, axis_name, flags)
    return out.astype(logits_shard.dtype)
