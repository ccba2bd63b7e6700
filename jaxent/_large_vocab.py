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

#: Budget of the heuristic block size (``block_size=None``): the float32 logits
#: of one block of every head stay under 128 MiB (2048 columns up to 16384 rows
#: with one head, 8192 rows with two; the working memory is a small multiple).
BLOCK_BYTES = 128 * 2**20


# --------------------------------------------------------------------------- checks


def _check_temperature(temperature: Any) -> None:
    if temperature is not None:
        _checks.check_positive(temperature, "temperature")


def _check_hparams(label_smoothing: Any, z_loss: Any, logit_softcap: Any) -> None:
    _checks.check_unit_interval(label_smoothing, "label_smoothing")
    _checks.check_nonnegative(z_loss, "z_loss")
    if logit_softcap is not None:
        _checks.check_positive(logit_softcap, "logit_softcap")


def _is_static_zero(x: Any) -> bool:
    """True when ``x`` is known at trace time to be 0 (its term can be skipped)."""
    if _checks.is_tracer(x):
        return False
    return float(np.asarray(x)) == 0.0


def _check_block_size(block_size: Any, vocab: int, rows: int = 0, heads: int = 1) -> int:
    """``block_size``, or the heuristic's choice when it is ``None``.

    The heuristic: :data:`DEFAULT_BLOCK_SIZE` columns (the fastest or tied in
    every measured case), halved while the float32 logits of one block of
    every head (``rows * block * heads * 4`` bytes) exceed
    :data:`BLOCK_BYTES`, down to 256; never more than ``vocab``.
    """
    if block_size is None:
        block = DEFAULT_BLOCK_SIZE
        while block > 256 and rows * block * heads * 4 > BLOCK_BYTES:
            block //= 2
        return max(1, min(block, vocab))
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"`block_size` must be a positive int or None, got {block_size!r}.")
    if block_size <= 0:
        raise ValueError(f"`block_size` must be a positive int, got {block_size}.")
    return min(int(block_size), vocab)


def _varying_axes(x: Array | None) -> frozenset:
    """The manual mesh axes ``x`` varies over (empty outside ``shard_map``, or for ``None``)."""
    if x is None:
        return frozenset()
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
    temp: bool = False  # logits divided by a temperature hp[3]

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


def _num_blocks(cfg: _Config | _DistConfig) -> int:
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
    if cfg.temp:
        z = z / hp[3]
    first = offset + start.astype(labels.dtype)
    mask = None
    if cfg.vocab % cfg.block:
        # Columns before i * block were counted by the previous block: mask them,
        # and keep a label there from matching (the engine's label test ignores `mask`).
        seen = offset + (i * cfg.block).astype(labels.dtype)
        mask = (first + jnp.arange(cfg.block, dtype=labels.dtype) >= seen)[None, :]
        labels = jnp.where(labels >= seen, labels, -1)
    return _Block(z, w_blk, u, first, labels[:, None], mask)


def _block_grads(h, w, b, w_blk, start, du, carry, cdt):
    """Adds one vocabulary block's contribution to ``(dh, dw, db)`` of a head ``h @ w + b``.

    ``du`` ``[N, B]`` (compute dtype) is the gradient w.r.t. the block's
    pre-activation logits; the matmuls run in the input dtype with ``cdt``
    accumulation, and ``dw``/``db`` get the block's columns at ``start``.
    """
    dh, dw, db = carry
    du_in = du.astype(h.dtype)
    dh = dh + jax.lax.dot_general(
        du_in, w_blk, (((1,), (1,)), ((), ())), preferred_element_type=cdt
    )
    # Under an Explicit mesh the contraction runs over the sharded rows: say
    # that the result has the (replicated) sharding of the weight block.
    dw_blk = jax.lax.dot_general(
        h,
        du_in,
        (((0,), (0,)), ((), ())),
        preferred_element_type=cdt,
        out_sharding=_explicit_sharding(w_blk),
    ).astype(w.dtype)
    dw = jax.lax.dynamic_update_slice_in_dim(dw, dw_blk, start, axis=1)
    if db is not None:
        db_blk = jnp.sum(du.astype(cdt), axis=0).astype(b.dtype)
        db = jax.lax.dynamic_update_slice_in_dim(db, db_blk, start, axis=0)
    return dh, dw, db


def _linear_ce_primal(
    h: Array, w: Array, b: Array | None, labels: Array, rw: Array, hp: Array, cfg: _Config
) -> Array:
    return _linear_ce_fwd(h, w, b, labels, rw, hp, cfg)[0]


_linear_ce = jax.custom_vjp(_linear_ce_primal, nondiff_argnums=(6,))


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
        if cfg.temp:
            du = du / hp[3]
        if cfg.softcap:
            du = du * _engine.softcap_grad(blk.u, hp[2])
        return _block_grads(h, w, b, blk.w_blk, blk.start - offset, du, (dh, dw, db), cdt)

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
    dh, dw, db = _engine._some(_sum_to_vma(dh, h)), _sum_to_vma(dw, w), _sum_to_vma(db, b)
    return dh.astype(h.dtype), dw, db, None, jnp.zeros_like(rw), jnp.zeros_like(hp)


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


# --------------------------------------------------------------------------- dense shards


def _vp_ce_primal(z: Array, labels: Array, rw: Array, hp: Array, cfg: _Config) -> Array:
    return _vp_ce_fwd(z, labels, rw, hp, cfg)[0]


_vp_ce = jax.custom_vjp(_vp_ce_primal, nondiff_argnums=(4,))


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


def _setup(
    vocab, block, shards, axis_name, label_smoothing, z_loss, logit_softcap, cdt, temperature=None
):
    """The static config and the traced hyper-parameters ``[eps, lam, cap, T]``."""
    cfg = _Config(
        vocab=vocab,
        block=block,
        shards=shards,
        smoothing=not _is_static_zero(label_smoothing),
        zloss=not _is_static_zero(z_loss),
        softcap=logit_softcap is not None,
        axis_name=axis_name,
        temp=temperature is not None,
    )
    cap = 1.0 if logit_softcap is None else logit_softcap
    t = 1.0 if temperature is None else temperature
    hp = jnp.stack([jnp.asarray(x, cdt) for x in (label_smoothing, z_loss, cap, t)])
    return cfg, hp


def _check_head(
    hidden: Any, weight: Any, bias: Any, hidden_name: str, weight_name: str, bias_name: str
) -> tuple[Array, Array, Array | None, tuple[int, ...]]:
    """Validates one output head ``(hidden [..., D], weight [D, V], bias [V])``."""
    hidden = _checks.check_floating(hidden, hidden_name)
    weight = _checks.check_floating(weight, weight_name)
    if hidden.ndim < 1:
        raise ValueError(
            f"`{hidden_name}` must have shape [..., D] (rows of hidden states), got a scalar."
        )
    if weight.ndim != 2:
        raise ValueError(f"`{weight_name}` must have shape [D, V], got {weight.shape}.")
    d = hidden.shape[-1]
    if weight.shape[0] != d:
        raise ValueError(
            f"`{weight_name}` must have shape [D, V] with D = {hidden_name}.shape[-1] = {d},"
            f" got {weight.shape}."
        )
    vocab = weight.shape[1]
    if vocab == 0:
        raise ValueError(f"`{weight_name}` must have at least one class (V > 0).")
    if bias is not None:
        bias = _checks.check_floating(bias, bias_name)
        if bias.shape != (vocab,):
            raise ValueError(f"`{bias_name}` must have shape [V] = ({vocab},), got {bias.shape}.")
    return hidden, weight, bias, hidden.shape[:-1]


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
    temperature: Any = None,
):
    shards = 1 if axis_name is None else _checks.check_axis_name(axis_name)
    hidden, weight, bias, row_shape = _check_head(
        hidden, weight, bias, "hidden", weight_name, bias_name
    )
    d, vocab = weight.shape
    labels = _checks.check_labels(labels, "labels")
    if labels.shape != row_shape:
        raise ValueError(
            f"`labels` must have shape {row_shape} (the rows of `hidden` {hidden.shape}),"
            f" got {labels.shape}."
        )
    _check_hparams(label_smoothing, z_loss, logit_softcap)
    _check_temperature(temperature)
    if axis_name is not None:
        _check_sharded_over(weight, axis_name, shards, weight_name)
        if bias is not None:
            _check_sharded_over(bias, axis_name, shards, bias_name)

    dtypes = [hidden.dtype, weight.dtype] + ([] if bias is None else [bias.dtype])
    cdt = _checks.compute_dtype(*dtypes)
    mdt = jnp.result_type(hidden.dtype, weight.dtype)
    block = _check_block_size(block_size, vocab, math.prod(row_shape))
    cfg, hp = _setup(
        vocab, block, shards, axis_name, label_smoothing, z_loss, logit_softcap, cdt, temperature
    )
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
    temperature: float | ArrayLike | None = None,
) -> Array:
    r"""Softmax cross-entropy of ``hidden @ weight`` without materialising the logits.

    L_n = lse(z_n) - (1 - eps) z_{n,y} - (eps/V) sum_j z_{n,j} + lam lse(z_n)^2,  z = cap(h W + b) / T
    dL/dz = p (1 + 2 lam lse) - (1 - eps) e_y - eps/V  (then chained to h, W, b)

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
      block_size: vocabulary columns per block (``None``: the heuristic of
        :func:`_check_block_size`, 2048 unless the rows make one block's
        float32 logits exceed :data:`BLOCK_BYTES`); the working memory grows
        linearly with it, the speed is flat from about 1024 up on CPU.
      temperature: optional :math:`T > 0`: the logits (after the soft-cap)
        are divided by it, ``softmax(cap(hW + b) / T)``; no :math:`T^2` factor.

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
        temperature,
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
    temperature: float | ArrayLike | None = None,
) -> Array:
    r""":func:`linear_cross_entropy` with the projection sharded over the vocabulary.

    L = the loss of linear_cross_entropy with W = [W_1 ... W_k] split over the shards:
    lse = M + log psum_r(s_r exp(m_r - M)),  M = pmax_r(m_r);  dL/dW_r = h g_r^T,  dL/dh = psum_r(W_r g_r)

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
      temperature: optional :math:`T > 0` dividing the logits.

    Returns:
      Per-example losses ``[N]``, identical on every device of ``axis_name``.

    Raises:
      ValueError: ``axis_name`` is ``None`` or not an axis of the enclosing
        ``shard_map``/``pmap``; ``weight_shard``/``bias_shard`` is known to be
        replicated over it; inconsistent shapes or a hyper-parameter out of range.
      TypeError: as :func:`linear_cross_entropy`, or ``axis_name`` not a str
        (or tuple of str).

    Example:
      >>> from functools import partial
      >>> import jax, jax.numpy as jnp, jaxent
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> f = jax.jit(jax.shard_map(
      ...     partial(jaxent.vocab_parallel_linear_cross_entropy, axis_name="tp"),
      ...     mesh=mesh, in_specs=(P(), P(None, "tp"), P()), out_specs=P()))
      >>> f(jnp.ones((2, 3)), jnp.zeros((3, 4)), jnp.array([0, 3]))  # uniform: log 4
      Array([1.3862944, 1.3862944], dtype=float32)
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
        temperature,
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
    temperature: float | ArrayLike | None = None,
) -> Array:
    r"""Integer-label softmax cross-entropy with the class axis sharded over devices.

    L = lse - (1 - eps) z_y - (eps/V) sum_j z_j + lam lse^2,  lse = M + log psum_r(sum_j exp(z_j - M)),  M = pmax_r(max_j z_j)

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
      temperature: optional :math:`T > 0` dividing the logits.

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
    _check_temperature(temperature)
    _check_sharded_over(logits_shard, axis_name, shards, "logits_shard")
    v_local = logits_shard.shape[-1]
    cdt = _checks.compute_dtype(logits_shard.dtype)
    cfg, hp = _setup(v_local, v_local, shards, axis_name, label_smoothing, z_loss, None, cdt)
    n = math.prod(row_shape)
    z = logits_shard.reshape(n, v_local)  # upcast inside the engine's reductions
    if temperature is not None:
        z = z.astype(cdt) / jnp.asarray(temperature, cdt)
    where2 = None if where is None else _checks.check_mask(where, row_shape).reshape(n)
    lab, rw = _row_weight(labels.reshape(n), where2, ignore_index, cfg.v_total, cdt, z)
    out = _vp_ce(z, lab, rw, hp, cfg)
    return out.reshape(row_shape).astype(logits_shard.dtype)


# --------------------------------------------------------------------------- distributions
# Log-probability, entropy, KL and JS of softmax((h W + b) / T), streamed over
# vocabulary blocks (linear_*) or computed on vocabulary shards (vocab_parallel_*),
# from the engine's softmax moments (jaxent._engine.partial_moments and friends).
# Per block of one head: the logits [N, B]; across blocks: moments of [N, 1].


class _DistConfig(NamedTuple):
    """Static description of one streamed distribution computation (hashable)."""

    vocab: int  # classes seen by this call (the local shard's, if sharded)
    block: int  # columns per block
    shards: int  # size of the mesh axis the classes are sharded over (1: unsharded)
    axis_name: Any  # that mesh axis, or None
    temp: bool  # logits divided by hp[0]
    normalized: bool = False  # JS divided by beta (1 - beta)
    fused: bool = False  # JS per-entry terms select-free (a concrete beta in [1/4, 3/4])


def _dist_setup(vocab, rows, heads, block_size, shards, axis_name, temperature, cdt, beta=None):
    _check_temperature(temperature)
    block = vocab if axis_name is not None else _check_block_size(block_size, vocab, rows, heads)
    cfg = _DistConfig(vocab, block, shards, axis_name, temperature is not None)
    t = 1.0 if temperature is None else temperature
    hp = jnp.stack([jnp.asarray(x, cdt) for x in (t, 0.5 if beta is None else beta)])
    return cfg, hp


def _head_logits(h: Array, w: Array, b: Array | None, i: Array, hp: Array, cfg: _DistConfig):
    """``(z, start, w_blk)``: block ``i``'s logits ``(h w_blk + b_blk) / T`` (compute dtype)."""
    start, w_blk, b_blk = _block_slices(w, b, i, cfg)  # type: ignore[arg-type]
    cdt = hp.dtype
    z = jax.lax.dot_general(h, w_blk, (((1,), (0,)), ((), ())), preferred_element_type=cdt)
    if b_blk is not None:
        z = z + b_blk.astype(cdt)[None, :]
    if cfg.temp:
        z = z / hp[0]
    return z, start, w_blk


def _recovered_mask(i: Array, start: Array, cfg: _DistConfig) -> Array | None:
    """Columns of a ragged last block already counted by the previous block: False."""
    if cfg.vocab % cfg.block == 0:
        return None
    return (start + jnp.arange(cfg.block, dtype=start.dtype) >= i * cfg.block)[None, :]


def _trips(cfg: _DistConfig, live: Array) -> Array:
    """The number of vocabulary blocks to visit: all of them, or none when no row is kept.

    A call whose rows are all ignored (``where`` all False, e.g. a padding-only
    micro-batch) skips every matmul. Inside a ``jax.custom_vjp`` the loops are
    never differentiated by autodiff, so a traced trip count is allowed.
    """
    return jnp.where(jnp.any(live), _num_blocks(cfg), 0)


def _stream_moments(hs, ws, bs, hp, cfg: _DistConfig, part, like: _engine.Moments, live):
    """Combined moments of every block: ``part(zs, start, mask, i)`` gives one block's."""

    def body(i, st):
        blocks = [_head_logits(h, w, b, i, hp, cfg) for h, w, b in zip(hs, ws, bs, strict=True)]
        start = blocks[0][1]
        part_st = part([z for z, _, _ in blocks], start, _recovered_mask(i, start, cfg), i)
        return _engine.combine_moments(st, part_st)

    return jax.lax.fori_loop(0, _trips(cfg, live), body, _engine.empty_moments(like))  # type: ignore[arg-type]


def _stream_grads(hs, ws, bs, hp, cfg: _DistConfig, dz_fn, live, need=None):
    """Gradients w.r.t. every head's ``(h, w, b)`` from ``dz_fn(zs, start, mask, i) -> dzs``.

    Each block's logits are recomputed; ``dz`` is the gradient w.r.t. the
    logits (before the division by ``T``; ``None`` for a head that needs
    none). The ragged last block goes first: its re-covered columns get 0,
    which the next block overwrites. A head with ``need`` False (a teacher
    under ``stop_gradient``) gets ``(None, None, None)`` and costs no matmul.
    """
    nb = _num_blocks(cfg)
    cdt = hp.dtype
    need = [True] * len(hs) if need is None else list(need)
    if not any(need):
        return [(None, None, None) for _ in hs]

    def body(k, carry):
        i = (k + nb - 1) % nb
        blocks = [_head_logits(h, w, b, i, hp, cfg) for h, w, b in zip(hs, ws, bs, strict=True)]
        start = blocks[0][1]
        dzs = dz_fn([z for z, _, _ in blocks], start, _recovered_mask(i, start, cfg), i)
        out = []
        for (h, w, b), (_, _, w_blk), dz, (dh, dw, db) in zip(
            zip(hs, ws, bs, strict=True), blocks, dzs, carry, strict=True
        ):
            if dh is None:
                out.append((None, None, None))
                continue
            if cfg.temp:
                dz = dz / hp[0]
            out.append(_block_grads(h, w, b, w_blk, start, dz, (dh, dw, db), cdt))
        return tuple(out)

    init = tuple(
        (
            jnp.zeros_like(h, dtype=cdt),
            jnp.zeros_like(w),
            None if b is None else jnp.zeros_like(b),
        )
        if wanted
        else (None, None, None)
        for h, w, b, wanted in zip(hs, ws, bs, need, strict=True)
    )
    grads = jax.lax.fori_loop(0, _trips(cfg, live), body, init)
    return [
        (None, None, None) if dh is None else (dh.astype(h.dtype), dw, db)
        for (dh, dw, db), h in zip(grads, hs, strict=True)
    ]


def _unwrap(*args: Any) -> tuple[list[Any], bool]:
    """Values of a ``symbolic_zeros`` custom-VJP forward's arguments, and whether any is perturbed.

    Called as the primal (no differentiation), the arguments are plain arrays.
    """
    vals, perturbed = [], False
    for x in args:
        if isinstance(x, jax.custom_derivatives.CustomVJPPrimal):
            vals.append(x.value)
            perturbed |= bool(x.perturbed)
        else:
            vals.append(x)
            perturbed |= x is not None
    return vals, perturbed


def _flag(on: bool) -> tuple | None:
    """A residual that is a static flag (an empty pytree, or ``None``)."""
    return () if on else None


def _cotangent(g: Any, like: Array) -> Array:
    """A row cotangent as an array (``0`` for a symbolic zero)."""
    if g is None or _checks.is_symbolic_zero(g):
        return jnp.zeros_like(like)
    return g.astype(like.dtype)


# log-prob and entropy --------------------------------------------------------


def _lpent_part(z, labels, start, mask):
    return _engine.partial_moments(z, axis=1, entropy=True, labels=labels, start=start, mask=mask)


def _lpent_labels(labels: Array, i: Array, cfg: _DistConfig, offset: Any) -> Array:
    """``[N, 1]`` labels of block ``i`` (-1 where the label lies in a re-covered column)."""
    if cfg.vocab % cfg.block:
        labels = jnp.where(labels >= offset + i * cfg.block, labels, -1)
    return labels[:, None]


def _lpent_finish(st: _engine.Moments, rw: Array):
    """Outputs ``(log_prob, entropy)`` and the residual row statistics ``(lse, H)``."""
    lse, _ = _engine.moments_lse(st)
    ent = _engine.moments_entropy(st)
    lp = _engine.moments_log_prob(st)
    col = rw[:, None]
    zero = jnp.zeros((), lp.dtype)
    lp_out = jnp.where(col != 0, col * lp, zero)  # a NaN weight (bad label) gives NaN
    ent_out = jnp.where(col != 0, ent, zero)
    return (lp_out[:, 0], ent_out[:, 0]), (lse, ent)


def _lpent_dz(z, labels, start, mask, lse, ent, g_lp, g_ent):
    """``g_lp (e_y - p) + g_H p ((lse - z) - H)`` on the block's columns."""
    p = _engine.softmax_from_lse(z, lse, mask)
    hit = _engine._label_hit(z.shape, labels, 1, start)
    if mask is not None:
        hit = hit & mask
    zero = jnp.zeros((), p.dtype)
    dz = _engine._times(g_ent, _engine.grad_entropy_logits(z, lse, ent, mask))
    return dz + jnp.where(g_lp == 0, zero, g_lp * (jnp.where(hit, 1.0, zero) - p))


def _lpent_cotangents(g, rw, lse):
    """Row cotangents: removed rows and rows with no class get 0; a bad label NaN."""
    g_lp, g_ent = (_cotangent(x, rw) for x in g)
    col = rw[:, None]
    live = (col != 0) & (lse != -jnp.inf)
    zero = jnp.zeros((), rw.dtype)
    return (
        jnp.where(live, col * g_lp[:, None], zero),
        jnp.where(live, g_ent[:, None], zero),
    )


def _linear_lpent_primal(h, w, b, labels, rw, hp, cfg) -> tuple[Array, Array]:
    return _linear_lpent_fwd(h, w, b, labels, rw, hp, cfg)[0]


_linear_lpent = jax.custom_vjp(_linear_lpent_primal, nondiff_argnums=(6,))


def _linear_lpent_fwd(h, w, b, labels, rw, hp, cfg):
    (h, w, b, labels, rw, hp), _ = _unwrap(h, w, b, labels, rw, hp)
    zero = jnp.zeros_like(rw)[:, None]

    def part(zs, start, mask, i):
        return _lpent_part(zs[0], _lpent_labels(labels, i, cfg, 0), start, mask)

    like = _engine.Moments(zero, zero, zero, zero)
    st = _stream_moments([h], [w], [b], hp, cfg, part, like, rw != 0)
    out, (lse, ent) = _lpent_finish(st, rw)
    return out, (h, w, b, labels, rw, hp, lse, ent)


def _linear_lpent_bwd(cfg, res, g):
    h, w, b, labels, rw, hp, lse, ent = res
    g_lp, g_ent = _lpent_cotangents(g, rw, lse)

    def dz_fn(zs, start, mask, i):
        lab = _lpent_labels(labels, i, cfg, 0)
        return [_lpent_dz(zs[0], lab, start, mask, lse, ent, g_lp, g_ent)]

    ((dh, dw, db),) = _stream_grads([h], [w], [b], hp, cfg, dz_fn, rw != 0)
    return dh, dw, db, None, None, None


_linear_lpent.defvjp(_linear_lpent_fwd, _linear_lpent_bwd, symbolic_zeros=True)


def _vp_lpent_primal(z, labels, rw, hp, cfg) -> tuple[Array, Array]:
    return _vp_lpent_fwd(z, labels, rw, hp, cfg)[0]


_vp_lpent = jax.custom_vjp(_vp_lpent_primal, nondiff_argnums=(4,))


def _vp_scaled(z: Array, hp: Array, cfg: _DistConfig) -> Array:
    z = z.astype(hp.dtype)
    return z / hp[0] if cfg.temp else z


def _vp_lpent_fwd(z, labels, rw, hp, cfg):
    (z, labels, rw, hp), _ = _unwrap(z, labels, rw, hp)
    zs = _vp_scaled(z, hp, cfg)
    st = _lpent_part(zs, labels[:, None], _offset(labels, cfg), None)  # type: ignore[arg-type]
    st = _engine.combine_moments_across(st, cfg.axis_name)
    out, (lse, ent) = _lpent_finish(st, rw)
    return out, (z, labels, rw, hp, lse, ent)


def _vp_lpent_bwd(cfg, res, g):
    z, labels, rw, hp, lse, ent = res
    g_lp, g_ent = _lpent_cotangents(g, rw, lse)
    zs = _vp_scaled(z, hp, cfg)
    start = _offset(labels, cfg)  # type: ignore[arg-type]
    dz = _lpent_dz(zs, labels[:, None], start, None, lse, ent, g_lp, g_ent)
    if cfg.temp:
        dz = dz / hp[0]
    return _sum_to_vma(dz.astype(z.dtype), z), None, None, None


_vp_lpent.defvjp(_vp_lpent_fwd, _vp_lpent_bwd, symbolic_zeros=True)


# KL ---------------------------------------------------------------------------


def _kl_finish(st: _engine.Moments, keep: Array):
    lse_a, lse_b = _engine.moments_lse(st)
    kl = _engine.moments_kl(st)
    out = jnp.where(keep[:, None], kl, jnp.zeros((), kl.dtype))
    return out[:, 0], (lse_a, lse_b, kl)


def _kl_dz(za, zb, mask, lse_a, lse_b, kl, g, need):
    da, db = _engine.grad_kl_logits(za, zb, lse_a, lse_b, kl, mask)
    return [_engine._times(g, d) if on else None for d, on in zip((da, db), need, strict=True)]


def _kl_cotangent(g, keep, lse_a):
    zero = jnp.zeros((), lse_a.dtype)
    g = _cotangent(g, lse_a[:, 0])[:, None]
    return jnp.where(keep[:, None] & (lse_a != -jnp.inf), g, zero)


def _two_head_inputs(ha, wa, ba, hb, wb, bb, keep, hp):
    """``(heads, (need_p, need_q), keep, hp)`` from a two-head custom-VJP forward's arguments."""
    (ha, wa, ba), need_a = _unwrap(ha, wa, ba)
    (hb, wb, bb), need_b = _unwrap(hb, wb, bb)
    (keep, hp), _ = _unwrap(keep, hp)
    return ([ha, hb], [wa, wb], [ba, bb]), (need_a, need_b), keep, hp


def _kl_like(keep: Array, cdt: Any) -> _engine.Moments:
    zero = jnp.zeros(keep.shape + (1,), cdt)
    return _engine.Moments(zero, zero, None, None, zero, zero, zero)


def _linear_kl_primal(hp_, wp, bp, hq, wq, bq, keep, hp, cfg) -> Array:
    return _linear_kl_fwd(hp_, wp, bp, hq, wq, bq, keep, hp, cfg)[0]


_linear_kl = jax.custom_vjp(_linear_kl_primal, nondiff_argnums=(8,))


def _linear_kl_fwd(ha, wa, ba, hb, wb, bb, keep, hp, cfg):
    heads, (need_a, need_b), keep, hp = _two_head_inputs(ha, wa, ba, hb, wb, bb, keep, hp)
    (ha, hb), (wa, wb), (ba, bb) = heads

    def part(zs, start, mask, i):
        return _engine.partial_moments(zs[0], zs[1], axis=1, mask=mask)

    st = _stream_moments(*heads, hp, cfg, part, _kl_like(keep, hp.dtype), keep)
    out, rows = _kl_finish(st, keep)
    flags = (_flag(need_a), _flag(need_b))
    return out, (ha, wa, ba, hb, wb, bb, keep, hp, rows, flags)


def _linear_kl_bwd(cfg, res, g):
    ha, wa, ba, hb, wb, bb, keep, hp, (lse_a, lse_b, kl), flags = res
    need = [f is not None for f in flags]
    gc = _kl_cotangent(g, keep, lse_a)

    def dz_fn(zs, start, mask, i):
        return _kl_dz(zs[0], zs[1], mask, lse_a, lse_b, kl, gc, need)

    heads = ([ha, hb], [wa, wb], [ba, bb])
    (dha, dwa, dba), (dhb, dwb, dbb) = _stream_grads(*heads, hp, cfg, dz_fn, keep, need)
    return dha, dwa, dba, dhb, dwb, dbb, None, None


_linear_kl.defvjp(_linear_kl_fwd, _linear_kl_bwd, symbolic_zeros=True)


def _vp_kl_primal(za, zb, keep, hp, cfg) -> Array:
    return _vp_kl_fwd(za, zb, keep, hp, cfg)[0]


_vp_kl = jax.custom_vjp(_vp_kl_primal, nondiff_argnums=(4,))


def _vp_kl_fwd(za, zb, keep, hp, cfg):
    (za,), need_a = _unwrap(za)
    (zb,), need_b = _unwrap(zb)
    (keep, hp), _ = _unwrap(keep, hp)
    st = _engine.partial_moments(_vp_scaled(za, hp, cfg), _vp_scaled(zb, hp, cfg), axis=1)
    st = _engine.combine_moments_across(st, cfg.axis_name)
    out, rows = _kl_finish(st, keep)
    return out, (za, zb, keep, hp, rows, (_flag(need_a), _flag(need_b)))


def _vp_kl_bwd(cfg, res, g):
    za, zb, keep, hp, (lse_a, lse_b, kl), flags = res
    need = [f is not None for f in flags]
    gc = _kl_cotangent(g, keep, lse_a)
    zs = (_vp_scaled(za, hp, cfg), _vp_scaled(zb, hp, cfg))
    grads = _kl_dz(*zs, None, lse_a, lse_b, kl, gc, need)
    out = []
    for d, z in zip(grads, (za, zb), strict=True):
        if d is not None:
            d = _sum_to_vma((d / hp[0] if cfg.temp else d).astype(z.dtype), z)
        out.append(d)
    return out[0], out[1], None, None


_vp_kl.defvjp(_vp_kl_fwd, _vp_kl_bwd, symbolic_zeros=True)


# JS (two passes: the mixture needs both normalisers) ---------------------------


def _js_block(za, zb, mask, lse_a, lse_b, hp, cfg: _DistConfig):
    """``js_terms`` (or its select-free form) of one block, from the global log-normalisers."""
    from jaxent._divergences import js_fused_entry, js_terms

    def logp(z, lse):
        lse0 = jnp.where(lse == -jnp.inf, jnp.zeros((), lse.dtype), lse)
        lp = z - lse0
        lp = lp if mask is None else jnp.where(mask, lp, -jnp.inf)
        return jnp.maximum(lp, jnp.finfo(lp.dtype).min) if cfg.fused else lp

    if cfg.fused:
        return js_fused_entry(logp(za, lse_a), logp(zb, lse_b), hp[1])
    return js_terms(logp(za, lse_a), logp(zb, lse_b), hp[1], cfg.normalized)


def _linear_js_primal(ha, wa, ba, hb, wb, bb, keep, hp, cfg) -> Array:
    return _linear_js_fwd(ha, wa, ba, hb, wb, bb, keep, hp, cfg)[0]


_linear_js = jax.custom_vjp(_linear_js_primal, nondiff_argnums=(8,))


def _linear_js_fwd(ha, wa, ba, hb, wb, bb, keep, hp, cfg):
    heads, (need_a, need_b), keep, hp = _two_head_inputs(ha, wa, ba, hb, wb, bb, keep, hp)
    (ha, hb), (wa, wb), (ba, bb) = heads
    zero = jnp.zeros(keep.shape + (1,), hp.dtype)

    def norms(zs, start, mask, i):
        pa = _engine.partial_moments(zs[0], axis=1, mask=mask)
        pb = _engine.partial_moments(zs[1], axis=1, mask=mask)
        return _engine.Moments(pa.m, pa.s, mb=pb.m, sb=pb.s)

    like = _engine.Moments(zero, zero, mb=zero, sb=zero)
    st = _stream_moments(*heads, hp, cfg, norms, like, keep)
    lse_a, lse_b = _engine.moments_lse(st)

    def body(i, acc):
        (za, start, _), (zb, _, _) = (
            _head_logits(h, w, b, i, hp, cfg) for h, w, b in zip(*heads, strict=True)
        )
        p, q, t, g_p, g_q = _js_block(za, zb, _recovered_mask(i, start, cfg), lse_a, lse_b, hp, cfg)
        sums = [jnp.sum(x, axis=1, keepdims=True) for x in (t, p * g_p, q * g_q)]
        return tuple(x + y for x, y in zip(acc, sums, strict=True))

    tot, gp_mean, gq_mean = jax.lax.fori_loop(0, _trips(cfg, keep), body, (zero, zero, zero))
    # JS >= 0 (a sum of Jensen gaps); a NaN logit makes its row NaN.
    bad = jnp.isnan(lse_a) | jnp.isnan(_engine._some(lse_b))
    js = jnp.where(bad, jnp.nan, jnp.maximum(tot, 0))
    out = jnp.where(keep[:, None], js, jnp.zeros((), js.dtype))
    rows = (lse_a, lse_b, js, gp_mean, gq_mean)
    return out[:, 0], (ha, wa, ba, hb, wb, bb, keep, hp, rows, (_flag(need_a), _flag(need_b)))


def _linear_js_bwd(cfg, res, g):
    ha, wa, ba, hb, wb, bb, keep, hp, (lse_a, lse_b, js, gp_mean, gq_mean), flags = res
    need = [f is not None for f in flags]
    zero = jnp.zeros((), js.dtype)
    # The clamp at 0 is active where JS = 0: the value is constant there.
    gc = jnp.where(keep[:, None] & (js > 0), _cotangent(g, js[:, 0])[:, None], zero)

    def dz_fn(zs, start, mask, i):
        p, q, _, g_p, g_q = _js_block(zs[0], zs[1], mask, lse_a, lse_b, hp, cfg)
        grads = (p * (g_p - gp_mean), q * (g_q - gq_mean))
        return [_engine._times(gc, d) if on else None for d, on in zip(grads, need, strict=True)]

    heads = ([ha, hb], [wa, wb], [ba, bb])
    (dha, dwa, dba), (dhb, dwb, dbb) = _stream_grads(*heads, hp, cfg, dz_fn, keep, need)
    return dha, dwa, dba, dhb, dwb, dbb, None, None


_linear_js.defvjp(_linear_js_fwd, _linear_js_bwd, symbolic_zeros=True)


# --------------------------------------------------------------------------- public: distributions


def _row_keep(where: Any, row_shape: tuple[int, ...], n: int, ref: Array) -> Array:
    if where is None:
        return _rows_like(jnp.ones((n,), bool), ref)
    return _rows_like(_checks.check_mask(where, row_shape).reshape(n), ref)


def linear_log_prob_and_entropy(
    hidden: ArrayLike,
    weight: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    temperature: float | ArrayLike | None = None,
    where: ArrayLike | None = None,
    block_size: int | None = None,
) -> tuple[Array, Array]:
    r"""Log-probability of the label and entropy per token, from hidden states.

    With p = softmax((h W + b) / T) per row (the rollout policy of RL):

        log_prob = log p_y = z_y - lse(z),      entropy = H(p) = lse(z) - sum_j p_j z_j
        d log_prob / dz = e_y - p,              dH / dz_j = p_j (log(1/p_j) - H)

    .. math::
      \log p_y = z_y - \mathrm{lse}(z), \qquad H(p) = -\sum_j p_j \log p_j,
      \qquad z = (hW + b)/T

    both computed in one stream over blocks of the vocabulary, as
    :func:`linear_cross_entropy` does (the logits ``[N, V]`` never exist:
    working memory O(N * block_size)); the row statistics are the engine's
    softmax moments (max, sum of exponentials, the entropy sum and the label
    logit, all relative to the running max, so a common shift of the logits
    costs no accuracy), accumulated in float32. A ``jax.custom_vjp`` keeps only
    ``lse`` and ``H`` per row and recomputes each block in the backward pass;
    gradients flow to ``hidden``, ``weight`` and ``bias`` for any combination
    of the two outputs' cotangents. Reverse mode only.

    Conventions (those of :func:`jaxent.log_prob_from_logits` and
    :func:`jaxent.entropy_from_logits`): a row removed by ``where`` gives
    ``(0, 0)`` and gradient 0; a row whose logits are all ``-inf`` gives
    ``(0, 0)``; a label on a ``-inf`` logit gives ``log_prob = -inf``; a
    label outside ``[0, V)`` makes ``log_prob`` NaN (not the entropy);
    ``0 log 0 = 0``; a NaN logit gives NaN. No ``T**2`` factor.

    Args:
      hidden: floating hidden states ``[N, D]`` (or ``[..., D]``).
      weight: floating output projection ``[D, V]``.
      labels: integer class indices (the sampled tokens) of shape ``hidden.shape[:-1]``.
      bias: optional floating bias ``[V]``.
      temperature: optional :math:`T > 0` dividing the logits (``None``: 1).
      where: optional boolean row mask of the shape of ``labels``.
      block_size: vocabulary columns per block (``None``: the heuristic of
        :func:`linear_cross_entropy`).

    Returns:
      ``(log_prob, entropy)``, each of the shape of ``labels``, in the promoted
      dtype of the inputs (computed in at least float32).

    Raises:
      TypeError: non-floating ``hidden``/``weight``/``bias`` or non-integer ``labels``.
      ValueError: inconsistent shapes, ``temperature <= 0`` or a bad ``block_size``.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> h, w = jnp.ones((2, 3)), jnp.zeros((3, 4))  # uniform over 4 classes
      >>> lp, ent = jaxent.linear_log_prob_and_entropy(h, w, jnp.array([0, 3]))
      >>> print(jnp.round(lp, 4), jnp.round(ent, 4))  # -log 4, log 4
      [-1.3863 -1.3863] [1.3863 1.3863]

    See also:
      :func:`jaxent.log_prob_from_logits`, :func:`jaxent.entropy_from_logits`
      (the same from materialised logits), :func:`vocab_parallel_log_prob_and_entropy`.
    """
    hidden, weight, bias, row_shape = _check_head(hidden, weight, bias, "hidden", "weight", "bias")
    labels = _checks.check_labels(labels, "labels")
    if labels.shape != row_shape:
        raise ValueError(
            f"`labels` must have shape {row_shape} (the rows of `hidden` {hidden.shape}),"
            f" got {labels.shape}."
        )
    d, vocab = weight.shape
    n = math.prod(row_shape)
    dtypes = [hidden.dtype, weight.dtype] + ([] if bias is None else [bias.dtype])
    cdt, out_dt = _checks.compute_dtype(*dtypes), _checks.output_dtype(*dtypes)
    mdt = jnp.result_type(hidden.dtype, weight.dtype)
    cfg, hp = _dist_setup(vocab, n, 1, block_size, 1, None, temperature, cdt)
    h2 = hidden.reshape(n, d).astype(mdt)
    where2 = None if where is None else _checks.check_mask(where, row_shape).reshape(n)
    lab, rw = _row_weight(labels.reshape(n), where2, None, vocab, cdt, h2)
    lp, ent = _linear_lpent(h2, weight.astype(mdt), bias, lab, rw, hp, cfg)
    return lp.reshape(row_shape).astype(out_dt), ent.reshape(row_shape).astype(out_dt)


def _two_heads(
    p_hidden,
    p_weight,
    q_hidden,
    q_weight,
    p_bias,
    q_bias,
    where,
    block_size,
    temperature,
    beta=None,
):
    ha, wa, ba, rows_a = _check_head(p_hidden, p_weight, p_bias, "p_hidden", "p_weight", "p_bias")
    hb, wb, bb, rows_b = _check_head(q_hidden, q_weight, q_bias, "q_hidden", "q_weight", "q_bias")
    if rows_a != rows_b:
        raise ValueError(
            f"`p_hidden` and `q_hidden` must have the same rows, got {ha.shape} and {hb.shape}."
        )
    if wa.shape[1] != wb.shape[1]:
        raise ValueError(
            f"`p_weight` and `q_weight` must have the same number of classes V,"
            f" got {wa.shape} and {wb.shape}."
        )
    vocab = wa.shape[1]
    n = math.prod(rows_a)
    dtypes = [x.dtype for x in (ha, wa, ba, hb, wb, bb) if x is not None]
    cdt, out_dt = _checks.compute_dtype(*dtypes), _checks.output_dtype(*dtypes)
    cfg, hp = _dist_setup(vocab, n, 2, block_size, 1, None, temperature, cdt, beta)
    mdt_a = jnp.result_type(ha.dtype, wa.dtype)
    mdt_b = jnp.result_type(hb.dtype, wb.dtype)
    ha2 = ha.reshape(n, ha.shape[-1]).astype(mdt_a)
    hb2 = hb.reshape(n, hb.shape[-1]).astype(mdt_b)
    keep = _row_keep(where, rows_a, n, ha2)
    args = (ha2, wa.astype(mdt_a), ba, hb2, wb.astype(mdt_b), bb, keep, hp)
    return args, cfg, rows_a, out_dt


def linear_kl_divergence(
    p_hidden: ArrayLike,
    p_weight: ArrayLike,
    q_hidden: ArrayLike,
    q_weight: ArrayLike,
    *,
    p_bias: ArrayLike | None = None,
    q_bias: ArrayLike | None = None,
    temperature: float | ArrayLike | None = None,
    where: ArrayLike | None = None,
    block_size: int | None = None,
) -> Array:
    r"""KL divergence D(p || q) per token between two output heads, from hidden states.

    With a = (h_p W_p + b_p) / T, b = (h_q W_q + b_q) / T, p = softmax(a), q = softmax(b):

        D(p || q) = sum_j p_j (log p_j - log q_j)
        dD/da_j = p_j (log p_j - log q_j - D),      dD/db_j = q_j - p_j

    .. math::
      D(p\|q) = \sum_j p_j \log\frac{p_j}{q_j}, \qquad
      \frac{\partial D}{\partial a_j} = p_j\Big(\log\frac{p_j}{q_j} - D\Big), \qquad
      \frac{\partial D}{\partial b_j} = q_j - p_j

    For distillation without either head's ``[N, V]`` logits: one stream over
    vocabulary blocks computes both heads' logits per block and accumulates
    the engine's two-head moments (both maxima and sums of exponentials and
    ``sum e^(a - m) ((a - m) - (b - m_b))``, float32), so
    ``D = d / s - log s + log s_b``. The ``jax.custom_vjp`` keeps the two
    logsumexps and ``D`` per row and recomputes the blocks in the backward
    pass; gradients flow to all four arrays and both biases. The teacher is
    usually the ``p`` head under ``jax.lax.stop_gradient`` (forward KL, as in
    Hinton's distillation); the student as ``p`` gives the reverse KL.
    ``0 log 0 = 0``; a class with ``p_j > 0`` and ``q_j = 0`` gives ``+inf``;
    removed rows (``where``) and rows where ``p`` has no class give 0 with
    gradient 0. No ``T**2`` factor: multiply by ``T**2`` yourself for Hinton's
    convention.

    Args:
      p_hidden, p_weight: the ``p`` head: hidden states ``[N, D_p]`` (or
        ``[..., D_p]``) and projection ``[D_p, V]``.
      q_hidden, q_weight: the ``q`` head: ``[N, D_q]`` and ``[D_q, V]`` (the
        same rows and classes; the hidden sizes may differ).
      p_bias, q_bias: optional biases ``[V]``.
      temperature: optional :math:`T > 0` dividing both heads' logits.
      where: optional boolean row mask of the rows' shape.
      block_size: vocabulary columns per block (``None``: the heuristic of
        :func:`linear_cross_entropy`, for two heads).

    Returns:
      Per-token divergences of the rows' shape, in the promoted input dtype.

    Raises:
      TypeError: non-floating inputs.
      ValueError: inconsistent shapes, ``temperature <= 0`` or a bad ``block_size``.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> h = jnp.ones((1, 1))
      >>> wp, wq = jnp.log(jnp.array([[0.5, 0.5]])), jnp.log(jnp.array([[0.9, 0.1]]))
      >>> print(jnp.round(jaxent.linear_kl_divergence(h, wp, h, wq), 4))  # 0.5 log(0.5/0.9) + 0.5 log 5
      [0.5108]

    See also:
      :func:`jaxent.kl_divergence_from_logits` (materialised logits),
      :func:`linear_js_divergence`, :func:`vocab_parallel_kl_divergence`.
    """
    args, cfg, rows, out_dt = _two_heads(
        p_hidden, p_weight, q_hidden, q_weight, p_bias, q_bias, where, block_size, temperature
    )
    return _linear_kl(*args, cfg).reshape(rows).astype(out_dt)


def linear_js_divergence(
    p_hidden: ArrayLike,
    p_weight: ArrayLike,
    q_hidden: ArrayLike,
    q_weight: ArrayLike,
    *,
    beta: float | ArrayLike = 0.5,
    normalized: bool = False,
    p_bias: ArrayLike | None = None,
    q_bias: ArrayLike | None = None,
    temperature: float | ArrayLike | None = None,
    where: ArrayLike | None = None,
    block_size: int | None = None,
) -> Array:
    r"""Generalised Jensen-Shannon divergence per token between two heads, from hidden states.

    With p = softmax((h_p W_p + b_p) / T), q = softmax((h_q W_q + b_q) / T),
    m = beta p + (1 - beta) q:

        JS_beta = beta D(p || m) + (1 - beta) D(q || m)
        normalized=True: JS_beta / (beta (1 - beta)); D(p || q) at beta = 0, D(q || p) at beta = 1

    .. math::
      \mathrm{JS}_\beta = \beta D(p\|m) + (1-\beta) D(q\|m), \qquad m = \beta p + (1-\beta) q

    The definition, ``beta`` and ``normalized`` of
    :func:`jaxent.js_divergence_from_logits` (GKD's generalised JSD, TRL's
    ``generalized_jsd_loss``), with the same per-entry terms
    (``log(m/p)`` through ``log1p``/``expm1``: exactly 0 for identical heads,
    never negative). The mixture needs both heads' normalisers, so the
    forward pass streams over the vocabulary blocks twice (the logsumexps,
    then the divergence); the backward pass recomputes each block once more.
    Memory O(N * block_size), never ``[N, V]``; gradients to all four arrays
    and both biases (``jax.custom_vjp``, reverse mode). Removed rows give 0.

    Args:
      p_hidden, p_weight: the ``p`` head (``[N, D_p]``, ``[D_p, V]``).
      q_hidden, q_weight: the ``q`` head (``[N, D_q]``, ``[D_q, V]``).
      beta: the mixture weight, in ``[0, 1]``.
      normalized: divide by :math:`\beta(1-\beta)` (a Python bool).
      p_bias, q_bias: optional biases ``[V]``.
      temperature: optional :math:`T > 0` dividing both heads' logits.
      where: optional boolean row mask.
      block_size: vocabulary columns per block (``None``: heuristic).

    Returns:
      Per-token divergences of the rows' shape, in the promoted input dtype.

    Raises:
      TypeError: non-floating inputs, ``normalized`` not a bool.
      ValueError: inconsistent shapes, ``beta`` outside ``[0, 1]``,
        ``temperature <= 0`` or a bad ``block_size``.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> h, w = jnp.ones((1, 2)), jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
      >>> print(jaxent.linear_js_divergence(h, w, h, w))  # identical heads
      [0.]

    See also:
      :func:`jaxent.js_divergence_from_logits`, :func:`linear_kl_divergence`.
    """
    from jaxent._divergences import _check_beta, _check_normalized, js_fused

    _check_beta(beta)
    _check_normalized(normalized)
    args, cfg, rows, out_dt = _two_heads(
        p_hidden, p_weight, q_hidden, q_weight, p_bias, q_bias, where, block_size, temperature, beta
    )
    cfg = cfg._replace(normalized=bool(normalized), fused=js_fused(beta, bool(normalized)))
    return _linear_js(*args, cfg).reshape(rows).astype(out_dt)


def _vp_setup(logits_shard: ArrayLike, name: str, axis_name: Any, shards: int) -> Array:
    logits_shard = _checks.check_floating(logits_shard, name)
    if logits_shard.ndim < 1:
        raise ValueError(f"`{name}` must have a class axis (shape [..., V_local]).")
    _check_sharded_over(logits_shard, axis_name, shards, name)
    return logits_shard


def vocab_parallel_log_prob_and_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    axis_name: Any,
    *,
    temperature: float | ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> tuple[Array, Array]:
    r""":func:`linear_log_prob_and_entropy` of logits whose class axis is sharded over devices.

    For use inside ``shard_map``: ``logits`` ``[..., V/k]`` is this device's
    contiguous slice of the class axis (last axis) over the mesh axis
    ``axis_name`` of size k; ``labels`` are global class indices, the same on
    every device of the axis. Two collectives, one ``pmax`` of the row max
    and one ``psum`` of the rebased moments ``(s, e, z_y)``:

        lse = M + log S,  log_prob = z_y - lse,  H = log S - E / S

    and a local, closed-form backward pass (no collective). Sharding:
    ``in_specs=(P(None, axis_name), P())`` for ``[N, V]`` logits and ``[N]``
    labels (``P("dp", "tp")`` and ``P("dp")`` with a data axis); replicated
    logits raise ``ValueError`` under ``shard_map``'s default ``check_vma``.
    Conventions as :func:`linear_log_prob_and_entropy`.

    Args:
      logits: this device's slice ``[..., V_local]`` of the logits.
      labels: global integer class indices of shape ``logits.shape[:-1]``.
      axis_name: the mesh axis the class axis is sharded over.
      temperature: optional :math:`T > 0` dividing the logits.
      where: optional boolean row mask of the shape of ``labels``.

    Returns:
      ``(log_prob, entropy)`` of the shape of ``labels``, the same on every
      device of ``axis_name``, in the dtype of ``logits``.

    Raises:
      ValueError: ``axis_name`` unbound or ``None``, replicated logits,
        inconsistent shapes, ``temperature <= 0``.
      TypeError: non-floating logits, non-integer labels, a bad ``axis_name``.

    Example:
      >>> from functools import partial
      >>> import jax, jax.numpy as jnp, jaxent
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> f = jax.jit(jax.shard_map(
      ...     partial(jaxent.vocab_parallel_log_prob_and_entropy, axis_name="tp"),
      ...     mesh=mesh, in_specs=(P(None, "tp"), P()), out_specs=(P(), P())))
      >>> lp, ent = f(jnp.zeros((2, 4)), jnp.array([0, 3]))
      >>> print(jnp.round(lp, 4), jnp.round(ent, 4))
      [-1.3863 -1.3863] [1.3863 1.3863]
    """
    shards = _checks.check_axis_name(axis_name)
    z = _vp_setup(logits, "logits", axis_name, shards)
    labels = _checks.check_labels(labels, "labels")
    row_shape = z.shape[:-1]
    if labels.shape != row_shape:
        raise ValueError(
            f"`labels` must have shape {row_shape} (`logits` without its class axis),"
            f" got {labels.shape}."
        )
    v_local = z.shape[-1]
    cdt = _checks.compute_dtype(z.dtype)
    cfg, hp = _dist_setup(v_local, 0, 1, None, shards, axis_name, temperature, cdt)
    n = math.prod(row_shape)
    z2 = z.reshape(n, v_local)
    where2 = None if where is None else _checks.check_mask(where, row_shape).reshape(n)
    lab, rw = _row_weight(labels.reshape(n), where2, None, v_local * shards, cdt, z2)
    lp, ent = _vp_lpent(z2, lab, rw, hp, cfg)
    return lp.reshape(row_shape).astype(z.dtype), ent.reshape(row_shape).astype(z.dtype)


def vocab_parallel_kl_divergence(
    p_logits: ArrayLike,
    q_logits: ArrayLike,
    axis_name: Any,
    *,
    temperature: float | ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> Array:
    r"""D(softmax(p_logits) || softmax(q_logits)) with the class axis sharded over devices.

    For use inside ``shard_map``: both ``[..., V/k]`` arguments are this
    device's slices of the class axis (last axis) over ``axis_name``. Two
    collectives, one ``pmax`` of both heads' row maxima and one ``psum`` of
    the rebased moments ``(s_a, s_b, d)``:

        D(p || q) = d / s_a - log s_a + log s_b,   d = sum e^(a - M_a) ((a - M_a) - (b - M_b))

    and a local closed-form backward pass: ``dD/da = p (log p - log q - D)``,
    ``dD/db = q - p``. Conventions as :func:`linear_kl_divergence`.

    Args:
      p_logits: this device's slice ``[..., V_local]`` of the ``p`` logits.
      q_logits: the same slice of the ``q`` logits (same shape).
      axis_name: the mesh axis the class axis is sharded over.
      temperature: optional :math:`T > 0` dividing both.
      where: optional boolean row mask of the rows' shape.

    Returns:
      Per-row divergences (the logits' shape without the class axis), the same
      on every device of ``axis_name``, in the promoted dtype of the logits.

    Raises:
      ValueError: ``axis_name`` unbound or ``None``, replicated logits,
        different shapes, ``temperature <= 0``.
      TypeError: non-floating logits, a bad ``axis_name``.

    Example:
      >>> from functools import partial
      >>> import jax, jax.numpy as jnp, jaxent
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> f = jax.jit(jax.shard_map(
      ...     partial(jaxent.vocab_parallel_kl_divergence, axis_name="tp"),
      ...     mesh=mesh, in_specs=(P(None, "tp"), P(None, "tp")), out_specs=P()))
      >>> a = jnp.log(jnp.array([[0.5, 0.5]]))
      >>> b = jnp.log(jnp.array([[0.9, 0.1]]))
      >>> print(jnp.round(f(a, b), 4))
      [0.5108]
    """
    shards = _checks.check_axis_name(axis_name)
    za = _vp_setup(p_logits, "p_logits", axis_name, shards)
    zb = _vp_setup(q_logits, "q_logits", axis_name, shards)
    if za.shape != zb.shape:
        raise ValueError(
            f"`p_logits` and `q_logits` must have the same shape, got {za.shape} and {zb.shape}."
        )
    row_shape, v_local = za.shape[:-1], za.shape[-1]
    cdt = _checks.compute_dtype(za.dtype, zb.dtype)
    out_dt = _checks.output_dtype(za.dtype, zb.dtype)
    cfg, hp = _dist_setup(v_local, 0, 2, None, shards, axis_name, temperature, cdt)
    n = math.prod(row_shape)
    za2, zb2 = za.reshape(n, v_local), zb.reshape(n, v_local)
    keep = _row_keep(where, row_shape, n, za2)
    return _vp_kl(za2, zb2, keep, hp, cfg).reshape(row_shape).astype(out_dt)
