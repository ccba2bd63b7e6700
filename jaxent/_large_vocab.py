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
  O(N * block_size) working memory instead of O(N * V), in every dtype (a
  bfloat16 weight is converted to float32 one block at a time, never whole).
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
give a loss of 0 and receive gradient 0, and so does a row whose logits are
all ``-inf`` (no class left). Label smoothing uses the uniform convention
:math:`(1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon / V`; the z-loss
:math:`\lambda\,\mathrm{lse}^2` (PaLM) and the logit soft-cap
:math:`\mathrm{cap}(u) = c \tanh(u / c)` (Gemma 2, with
:math:`\mathrm{cap}(-\infty) = -\infty`: a ruled-out class stays ruled out)
apply as in the materialised loss, the logsumexp being that of the
soft-capped logits. A label outside ``[0, V)`` that is not ``ignore_index``
gives NaN for its row (loss and gradient), and so does a NaN logit.

Blocks are padding-free: every block has ``block_size`` real columns (the last
block of a ragged vocabulary is moved back to end at ``V`` and its columns
already counted are masked), so a prime ``V`` is exact; a block whose logits
are all ``-inf`` adds nothing (the running max is shifted by 0, never by
``-inf``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxent import _checks, _engine

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
    _checks.check_unit_interval(label_smoothing, "label_smoothing")
    _checks.check_nonnegative(z_loss, "z_loss")
    if logit_softcap is not None:
        _checks.check_positive(logit_softcap, "logit_softcap")


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


def _varying_axes(x: Array) -> frozenset:
    """The manual mesh axes ``x`` varies over (empty outside ``shard_map``)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def _check_sharded_over(x: Array, axis_name: Any, shards: int, name: str) -> None:
    """Raises if ``x`` is known to be replicated over ``axis_name`` (defect: loss + log k).

    ``shard_map`` (with its default ``check_vma=True``) types every value with
    the manual axes it varies over; ``axis_index`` always varies, so when it
    does not the types are not tracked (``check_vma=False``, ``pmap``) and
    nothing can be seen.
    """
    if shards == 1 or not _varying_axes(jax.lax.axis_index(axis_name)):
        return
    axes = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    missing = [a for a in axes if a not in _varying_axes(x)]
    if missing:
        raise ValueError(
            f"`{name}` is replicated over the mesh axis {missing[0]!r} of `axis_name`="
            f"{axis_name!r}: every device would hold all its columns and the loss would be"
            f" off by log({shards}). Pass this device's slice of the class axis, e.g."
            f" `in_specs=P(..., {missing[0]!r})` for that argument of `shard_map`; for"
            " unsharded classes use the single-device function."
        )


def _explicit_sharding(x: Array) -> Any:
    """``x``'s sharding when its mesh has Explicit axes (``jax.make_mesh``'s default), else None."""
    sharding = jax.typeof(x).sharding
    types = getattr(getattr(sharding, "mesh", None), "axis_types", ()) or ()
    if any(t == jax.sharding.AxisType.Explicit for t in types):
        return sharding
    return None


def _rows_like(x: Array, ref: Array) -> Array:
    """Under an Explicit mesh, shards row vector ``x`` as the rows of ``ref`` (identity otherwise).

    The loops below carry per-row statistics whose type (sharding included)
    must not change between iterations, and mix labels with logits computed
    from ``hidden``: both need the row sharding of ``hidden``.
    """
    sharding = _explicit_sharding(ref)
    if sharding is None:
        return x
    spec = tuple(sharding.spec) + (None,) * ref.ndim
    return jax.reshard(x, PartitionSpec(spec[0]))


def _row_weight(
    labels: Array, where: Any, ignore_index: Any, v_total: int, dtype: Any, ref: Array
) -> tuple[Array, Array]:
    """Wide labels and the row weight: 1 kept, 0 removed, NaN kept with a bad label.

    As in the materialised loss, a label outside ``[0, V)`` that is not
    ``ignore_index`` makes its row's loss and gradient NaN instead of silently
    training on a wrong class. Labels are compared in int32/int64 (no wrap).
    """
    ignore_index = _checks.check_ignore_index(ignore_index)
    wide, in_range = _checks.labels_in_range(labels, v_total)
    wide, in_range = _rows_like(wide, ref), _rows_like(in_range, ref)
    rw = jnp.where(in_range, 1.0, jnp.nan).astype(dtype)
    keep = None
    if where is not None:
        keep = _rows_like(_checks.check_mask(where, labels.shape), ref)
    if ignore_index is not None:
        kept = wide != ignore_index
        keep = kept if keep is None else keep & kept
    return wide, (rw if keep is None else jnp.where(keep, rw, 0).astype(dtype))


# --------------------------------------------------------------------------- the rule
# One rule (jaxent._engine): loss = A lse(z) - <a, z> + lam lse^2, gradient (A + 2 lam lse) p - a,
# here with the target a = (1 - eps) e_y + eps / V (A = 1), fed by vocabulary blocks and shards.


class _Config(NamedTuple):
    """Static description of one computation (hashable)."""

    vocab: int  # number of classes seen by this call (the local shard's, if sharded)
    block: int  # columns per block
    shards: int  # size of the mesh axis the classes are sharded over (1: unsharded)
    smoothing: bool  # label smoothing term present
    zloss: bool  # z-loss term present
    softcap: bool  # soft-cap present
    axis_name: Any  # mesh axis over which the vocabulary is sharded, or None

    @property
    def v_total(self) -> int:
        return self.vocab * self.shards


def _target(labels: Array, rw: Array, hp: Array, cfg: _Config) -> _engine.Target:
    """The engine's description of ``a`` for rows of weight ``rw`` (0 removed, NaN bad label)."""
    col = rw[:, None]
    return _engine.Target(
        labels=labels[:, None],
        t=(1 - hp[0]) * col if cfg.smoothing else col,
        coef=hp[0] / cfg.v_total if cfg.smoothing else None,
        keep=col != 0,
        z_loss=hp[1] if cfg.zloss else None,
    )


def _offset(labels: Array, cfg: _Config) -> Array:
    """Global index of this shard's first class, in the labels' dtype."""
    if cfg.axis_name is None:
        return jnp.zeros((), labels.dtype)
    return jax.lax.axis_index(cfg.axis_name).astype(labels.dtype) * cfg.vocab


def _vary_like(x: Array, *refs: Array) -> Array:
    """Gives a loop's initial carry the manual-axis variance (vma) of ``refs``.

    Inside ``shard_map`` a ``fori_loop`` carry must keep its type; values built
    from a sharded weight vary over its mesh axis, so the zeros they start from
    must be cast to varying too. Outside ``shard_map`` this is the identity.
    """
    want = frozenset()
    for r in refs:
        if r is not None:
            want |= _varying_axes(r)
    missing = tuple(sorted(want - _varying_axes(x)))
    if not missing:
        return x
    return jax.lax.pcast(x, missing, to="varying")


def _sum_to_vma(ct: Array | None, primal: Array | None) -> Array | None:
    """Sums a cotangent over the manual axes it varies over and its primal does not.

    Inside ``shard_map`` a replicated input (a weight replicated over the data
    axis, the hidden states replicated over the vocabulary axis) receives the
    sum of the per-device cotangents: what autodiff inserts for ``pvary``,
    which a custom VJP must do itself.
    """
    if ct is None:
        return None
    extra = tuple(sorted(_varying_axes(ct) - _varying_axes(primal)))
    return jax.lax.psum(ct, extra) if extra else ct


def _empty_stats(rw: Array, cfg: _Config, *refs: Array) -> _engine.Stats:
    """Statistics of no column, with the sharding of ``rw`` and the vma of ``refs``.

    (``_engine.empty_stats`` builds fresh arrays, which lose both: a loop carry
    must keep its type under an Explicit mesh and inside ``shard_map``.)
    """
    zero = _vary_like(jnp.zeros_like(rw)[:, None], *refs)
    m = _vary_like(jnp.full_like(rw, -jnp.inf)[:, None], *refs)
    spread = zero if cfg.smoothing else None
    return _engine.Stats(m=m, s=zero, zy=zero, hw=spread, W=spread)


# --------------------------------------------------------------------------- blocks of h @ W


def _num_blocks(cfg: _Config) -> int:
    return -(-cfg.vocab // cfg.block)


def _block_slices(
    w: Array, b: Array | None, i: Array, cfg: _Config
) -> tuple[Array, Array, Array | None]:
    """First column, ``[D, B]`` weight block and ``[B]`` bias block of block ``i``.

    Blocks have a fixed width; the last one of a ragged vocabulary is moved back
    to end at ``V`` (its re-covered columns are masked by :func:`_block_logits`).

    The barrier hides from XLA that ``w`` is the same in every iteration.
    Without it XLA:CPU converts a whole bfloat16 weight to float32 once, before
    the loop (its dots do not take bfloat16 operands): compiled temp memory
    then grows with V (forward+backward, N=64, D=32, block 256: 0.67 MB at
    V=4096, 2.25 MB at V=16384, a float32 copy of W). With it, each block is
    converted on its own and the temp memory is the same at both V (0.15 MB;
    N=2048, D=1536, block 2048: 60 MiB at V=32768 and at V=128256). The
    barrier is an identity: it costs no copy.
    """
    w, b, i = jax.lax.optimization_barrier((w, b, i))
    start = jnp.minimum(i * cfg.block, cfg.vocab - cfg.block)
    w_blk = jax.lax.dynamic_slice_in_dim(w, start, cfg.block, axis=1)
    b_blk = None if b is None else jax.lax.dynamic_slice_in_dim(b, start, cfg.block)
    return start, w_blk, b_blk


class _Block(NamedTuple):
    z: Array  # soft-capped logits [N, B] in the compute dtype
    w_blk: Array  # [D, B] weight block
    u: Array  # logits before the soft-cap
    start: Array  # global index of the first column
    labels: Array  # [N, 1] labels, -1 where the label lies in a re-covered column
    mask: Array | None  # [1, B] kept columns (None: all)


def _block(h, w, b, labels, offset, i, hp, cfg: _Config) -> _Block:
    """Logits of block ``i`` and what the engine needs to know about its columns."""
    start, w_blk, b_blk = _block_slices(w, b, i, cfg)
    cdt = hp.dtype
    u = jax.lax.dot_general(h, w_blk, (((1,), (0,)), ((), ())), preferred_element_type=cdt)
    if b_blk is not None:
        u = u + b_blk.astype(cdt)[None, :]
    z = _engine.softcap(u, hp[2]) if cfg.softcap else u
    first = offset + start.astype(labels.dtype)
    mask = None
    if cfg.vocab % cfg.block:
        # Columns before i * block were counted by the previous block: mask them,
        # and keep a label there from matching (the engine's label test ignores `mask`).
        seen = offset + (i * cfg.block).astype(labels.dtype)
        mask = (first + jnp.arange(cfg.block, dtype=labels.dtype) >= seen)[None, :]
        labels = jnp.where(labels >= seen, labels, -1)
    return _Block(z, w_blk, u, first, labels[:, None], mask)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _linear_ce(
    h: Array, w: Array, b: Array | None, labels: Array, rw: Array, hp: Array, cfg: _Config
) -> Array:
    return _linear_ce_fwd(h, w, b, labels, rw, hp, cfg)[0]


def _linear_ce_fwd(h, w, b, labels, rw, hp, cfg):
    tgt = _target(labels, rw, hp, cfg)
    offset = _offset(labels, cfg)

    def body(i, st):
        blk = _block(h, w, b, labels, offset, i, hp, cfg)
        part = _engine.partial_stats(
            blk.z, tgt._replace(labels=blk.labels), axis=1, start=blk.start, mask=blk.mask
        )
        return _engine.combine(st, part)

    init = _empty_stats(rw, cfg, h, w, b, labels, hp)
    st = jax.lax.fori_loop(0, _num_blocks(cfg), body, init)
    if cfg.axis_name is not None:
        st = _engine.combine_across(st, cfg.axis_name)
    loss, lse = _engine.loss_from_stats(st, tgt)
    return loss[:, 0], (h, w, b, labels, rw, hp, st, lse)


def _linear_ce_bwd(cfg, res, g):
    h, w, b, labels, rw, hp, st, lse = res
    cdt = hp.dtype
    tgt = _target(labels, rw, hp, cfg)
    offset = _offset(labels, cfg)
    gcol = g.astype(cdt)[:, None]
    nb = _num_blocks(cfg)

    def body(k, carry):
        dh, dw, db = carry
        # The ragged last block goes first: its re-covered columns get a
        # gradient of 0, which the next block then overwrites. (Adding to the
        # slice already written instead made XLA:CPU copy a bfloat16 dW:
        # +16 MiB per 32768 columns at D = 256.)
        i = (k + nb - 1) % nb
        blk = _block(h, w, b, labels, offset, i, hp, cfg)
        du = gcol * _engine.grad_logits(
            blk.z,
            tgt._replace(labels=blk.labels),
            lse,
            st,
            axis=1,
            start=blk.start,
            mask=blk.mask,
        )
        if cfg.softcap:
            du = du * _engine.softcap_grad(blk.u, hp[2])
        du = du.astype(h.dtype)
        start, w_blk = blk.start - offset, blk.w_blk
        dh = dh + jax.lax.dot_general(
            du, w_blk, (((1,), (1,)), ((), ())), preferred_element_type=cdt
        )
        # Under an Explicit mesh the contraction runs over the sharded rows: say
        # that the result has the (replicated) sharding of the weight block.
        dw_blk = jax.lax.dot_general(
            h,
            du,
            (((0,), (0,)), ((), ())),
            preferred_element_type=cdt,
            out_sharding=_explicit_sharding(w_blk),
        ).astype(w.dtype)
        dw = jax.lax.dynamic_update_slice_in_dim(dw, dw_blk, start, axis=1)
        if db is not None:
            db_blk = jnp.sum(du.astype(cdt), axis=0).astype(b.dtype)
            db = jax.lax.dynamic_update_slice_in_dim(db, db_blk, start, axis=0)
        return dh, dw, db

    refs = (h, w, b, labels, hp, gcol)
    init = (
        _vary_like(jnp.zeros_like(h, dtype=cdt), *refs),
        _vary_like(jnp.zeros_like(w), *refs),
        None if b is None else _vary_like(jnp.zeros_like(b), *refs),
    )
    dh, dw, db = jax.lax.fori_loop(0, nb, body, init)
    if cfg.axis_name is not None:
        # The hidden states feed every vocabulary shard: sum their contributions
        # (also where shard_map does not track replication, check_vma=False).
        dh = jax.lax.psum(dh, cfg.axis_name)
    dh, dw, db = _sum_to_vma(dh, h), _sum_to_vma(dw, w), _sum_to_vma(db, b)
    return dh.astype(h.dtype), dw, db, None, jnp.zeros_like(rw), jnp.zeros_like(hp)


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


# --------------------------------------------------------------------------- dense shards


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _vp_ce(z: Array, labels: Array, rw: Array, hp: Array, cfg: _Config) -> Array:
    return _vp_ce_fwd(z, labels, rw, hp, cfg)[0]


def _vp_ce_fwd(z, labels, rw, hp, cfg):
    tgt = _target(labels, rw, hp, cfg)
    st = _engine.partial_stats(z, tgt, axis=1, start=_offset(labels, cfg))
    st = _engine.combine_across(st, cfg.axis_name)
    loss, lse = _engine.loss_from_stats(st, tgt)
    return loss[:, 0], (z, labels, rw, hp, st, lse)


def _vp_ce_bwd(cfg, res, g):
    z, labels, rw, hp, st, lse = res
    tgt = _target(labels, rw, hp, cfg)
    dz = _engine.grad_logits(z, tgt, lse, st, axis=1, start=_offset(labels, cfg))
    dz = g.astype(dz.dtype)[:, None] * dz
    return _sum_to_vma(dz.astype(z.dtype), z), None, jnp.zeros_like(rw), jnp.zeros_like(hp)


_vp_ce.defvjp(_vp_ce_fwd, _vp_ce_bwd)


# --------------------------------------------------------------------------- public functions


def _setup(vocab, block, shards, axis_name, label_smoothing, z_loss, logit_softcap, cdt):
    """The static config and the traced hyper-parameters ``[eps, lam, cap]``."""
    cfg = _Config(
        vocab=vocab,
        block=block,
        shards=shards,
        smoothing=not _is_static_zero(label_smoothing),
        zloss=not _is_static_zero(z_loss),
        softcap=logit_softcap is not None,
        axis_name=axis_name,
    )
    cap = 1.0 if logit_softcap is None else logit_softcap
    hp = jnp.stack([jnp.asarray(x, cdt) for x in (label_smoothing, z_loss, cap)])
    return cfg, hp


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
    shards = 1 if axis_name is None else _checks.check_axis_name(axis_name)
    hidden = _checks.check_floating(hidden, "hidden")
    weight = _checks.check_floating(weight, weight_name)
    labels = _checks.check_labels(labels, "labels")
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
    if axis_name is not None:
        _check_sharded_over(weight, axis_name, shards, weight_name)
        if bias is not None:
            _check_sharded_over(bias, axis_name, shards, bias_name)

    dtypes = [hidden.dtype, weight.dtype] + ([] if bias is None else [bias.dtype])
    cdt = _checks.compute_dtype(*dtypes)
    mdt = jnp.result_type(hidden.dtype, weight.dtype)
    block = min(_check_block_size(block_size), vocab)
    cfg, hp = _setup(vocab, block, shards, axis_name, label_smoothing, z_loss, logit_softcap, cdt)
    n = math.prod(row_shape)
    h2 = hidden.reshape(n, d).astype(mdt)
    where2 = None if where is None else _checks.check_mask(where, row_shape).reshape(n)
    lab, rw = _row_weight(labels.reshape(n), where2, ignore_index, cfg.v_total, cdt, h2)
    return h2, weight.astype(mdt), bias, lab, rw, hp, cfg, row_shape, _checks.output_dtype(*dtypes)


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

    Memory is O(N·block_size + N·D + D·V) in both passes instead of O(N·V),
    and the working memory beyond the inputs and gradients does not grow with
    V in any dtype (a bfloat16 weight is converted to float32 per block).
    Matrix products run in the input dtype with float32 accumulation
    (``preferred_element_type``); everything else is computed in at least
    float32. Reverse-mode only (``jax.grad``/``jax.vjp``); gradients flow to
    ``hidden``, ``weight`` and ``bias``. Any V works (no padding: a ragged
    last block is moved back and its re-covered columns masked); ``-inf``
    logits (e.g. a ``-inf`` bias) and NaN follow the materialised loss: a row
    with no finite logit gives 0, a label on a ``-inf`` logit ``+inf``, a NaN
    logit a NaN row. Works under ``jax.jit`` on batch-sharded inputs with a
    mesh of Auto or Explicit axes (``jax.make_mesh``'s default).

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

    Sharding: ``in_specs=(P(), P(None, axis_name), P())`` for ``(hidden,
    weight_shard, labels)`` (``P(axis_name)`` for ``bias_shard``; with a data
    axis ``P("dp")``, ``P(None, "tp")``, ``P("dp")``: the weight's gradient is
    then summed over ``"dp"`` as well). A replicated ``weight_shard`` (or
    ``bias_shard``) would shift the loss by :math:`\log k`: under
    ``shard_map``'s default ``check_vma=True`` it raises ``ValueError``; with
    ``check_vma=False`` or under ``pmap`` it cannot be detected.

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

    Raises:
      ValueError: ``axis_name`` is ``None`` or not an axis of the enclosing
        ``shard_map``/``pmap``; ``weight_shard``/``bias_shard`` is known to be
        replicated over it; inconsistent shapes or a hyper-parameter out of range.
      TypeError: as :func:`linear_cross_entropy`, or ``axis_name`` not a str
        (or tuple of str).
    """
    _checks.check_axis_name(axis_name)  # None is an error here, not "unsharded"
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

    Sharding: give ``shard_map`` ``in_specs=(P(..., axis_name), P(...))``, the
    class axis of the logits sharded over ``axis_name`` and the labels not
    (``P(None, "tp")`` and ``P()`` for ``[N, V]`` logits; ``P("dp", "tp")`` and
    ``P("dp")`` with a data axis). Replicated logits (``P()``) would make every
    device count all :math:`V` classes and shift the loss by :math:`\log k`:
    under ``shard_map``'s default ``check_vma=True`` this raises ``ValueError``;
    with ``check_vma=False`` or under ``pmap`` replication is not tracked and
    cannot be detected. A row whose logits are all ``-inf`` gives 0, a NaN
    logit a NaN row.

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

    Raises:
      ValueError: ``axis_name`` is ``None`` or not an axis of the enclosing
        ``shard_map``/``pmap``; ``logits_shard`` is known to be replicated over
        it; inconsistent shapes or a hyper-parameter out of range.
      TypeError: ``axis_name`` is not a str (or tuple of str); non-floating
        logits or non-integer labels.

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
    shards = _checks.check_axis_name(axis_name)
    logits_shard = _checks.check_floating(logits_shard, "logits_shard")
    labels = _checks.check_labels(labels, "labels")
    if logits_shard.ndim < 1:
        raise ValueError("`logits_shard` must have a class axis (shape [..., V_local]).")
    row_shape = logits_shard.shape[:-1]
    if labels.shape != row_shape:
        raise ValueError(
            f"`labels` must have shape {row_shape} (`logits_shard` without"
            f" its class axis), got {labels.shape}."
        )
    _check_hparams(label_smoothing, z_loss, None)
    _check_sharded_over(logits_shard, axis_name, shards, "logits_shard")
    v_local = logits_shard.shape[-1]
    cdt = _checks.compute_dtype(logits_shard.dtype)
    cfg, hp = _setup(v_local, v_local, shards, axis_name, label_smoothing, z_loss, None, cdt)
    n = math.prod(row_shape)
    z = logits_shard.reshape(n, v_local)  # upcast inside the engine's reductions
    where2 = None if where is None else _checks.check_mask(where, row_shape).reshape(n)
    lab, rw = _row_weight(labels.reshape(n), where2, ignore_index, cfg.v_total, cdt, z)
    out = _vp_ce(z, lab, rw, hp, cfg)
    return out.reshape(row_shape).astype(logits_shard.dtype)
