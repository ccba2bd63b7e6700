r"""Mergeable evaluation metrics (``jaxent.metrics``), in clu.metrics' protocol.

Each metric is an immutable pytree (a frozen dataclass registered with
``jax.tree_util.register_dataclass``) holding **sums** only:

* ``Metric.empty()``: the state of no data;
* ``Metric.from_model_output(...)``: the state of one batch;
* ``a.merge(b)``: the state of both batches (leaf-wise sums);
* ``a.reduce()``: merges a state stacked along a leading axis (what
  ``jax.lax.all_gather`` or ``jax.vmap`` produce) into one;
* ``a.compute()``: the value.

So they drop into ``clu.metrics.Collection`` (which calls exactly these
methods) and flax training loops without jaxent depending on clu, merging is
exact up to float rounding however the data are split into batches (means are
weighted by kept tokens, not by batches), and
``jax.tree.map(lambda x: jax.lax.psum(x, axis), state)`` merges states across
devices. Configuration (``base``, ``top_k``, ``num_bins``, ``norm``) is static
pytree metadata; merging states of different configurations raises
``ValueError``. Counts are int32, sums are in the compute dtype (>= float32).

Conventions shared by the classification metrics: ``logits`` is ``[..., K]``
(classes last), ``labels`` integer ``[...]``; ``where`` is a boolean mask of
examples (``labels``' shape) and ``ignore_index`` a label value whose examples
are left out (both remove the example from every sum and count). A kept
example whose label is outside ``[0, K)`` makes the sums NaN. With no kept
example, ``compute()`` gives NaN (an empty mean). Extra keyword arguments of
``from_model_output`` are ignored, as in clu (``Collection`` passes every
model output to every metric).

:func:`from_logits` builds the states of several metrics from one pass over
the logits' row statistics (max, sum of exponentials, label logit, ...), and
:func:`fit_temperature` fits the temperature of softmax(z / T).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, TypeVar, dataclass_transform

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import _checks
from jaxent._evaluation import mutual_information

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "Accuracy",
    "BitsPerByte",
    "BrierScore",
    "CalibrationError",
    "MutualInformation",
    "NegativeLogLikelihood",
    "Perplexity",
    "PredictiveEntropy",
    "fit_temperature",
    "from_logits",
]

M = TypeVar("M", bound="_SumMetric")
C = TypeVar("C")


def _static(default: Any = None) -> Any:
    return dataclasses.field(default=default, metadata={"static": True})


# --------------------------------------------------------------------------- the row kernel


def _prepare(logits: Any, labels: Any, where: Any, ignore_index: Any):
    """Checks the inputs; returns ``(x, labels, keep)`` (``x`` in the compute dtype)."""
    logits = _checks.check_floating(logits, "logits")
    if logits.ndim < 1:
        raise ValueError(f"`logits` must have a class axis (last), got a scalar {logits!r}.")
    row_shape = logits.shape[:-1]
    keep = jnp.ones(row_shape, bool)
    if labels is not None:
        labels = _checks.check_integer(labels, "labels")
        if labels.shape != row_shape:
            raise ValueError(
                "`labels` must have the shape of `logits` without the class axis (last),"
                f" {row_shape}, got {labels.shape}."
            )
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_:
            if not jnp.issubdtype(where.dtype, jnp.integer):
                raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
            where = where != 0
        try:
            ok = np.broadcast_shapes(where.shape, row_shape) == row_shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"`where` must be a mask of examples broadcastable to {row_shape} (the"
                f" shape of `logits` without the class axis), got shape {where.shape}."
            )
        keep = keep & jnp.broadcast_to(where, row_shape)
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"`ignore_index` must be an int or None, got {ignore_index!r}.")
        if labels is None:
            raise ValueError("`ignore_index` needs `labels`.")
        keep = keep & (labels != ignore_index)
    return logits.astype(_checks.compute_dtype(logits.dtype)), labels, keep


# Rows per block of the CPU kernel: about 2 MiB of float32 logits per block.
_BLOCK_BYTES = 1 << 21


def _block_stats(x: Array, z_y: Array) -> tuple[Array, ...]:
    """Row reductions of ``x [B, K]``: ``(m, s, q, t, rank)``.

    ``m`` = max (the lowest float for an empty row), ``s = sum e``,
    ``q = sum e^2``, ``t = sum e (x - m)`` with ``e = exp(x - m)`` (``-inf``
    entries contribute 0), ``rank = #{c : x_c > z_y}``.
    """
    lowest = jnp.finfo(x.dtype).min
    m = jnp.maximum(jnp.max(x, axis=-1, keepdims=True), lowest)
    shifted = x - m
    e = jnp.exp(shifted)
    s = jnp.sum(e, axis=-1)
    q = jnp.sum(e * e, axis=-1)
    t = jnp.sum(e * jnp.maximum(shifted, lowest), axis=-1)
    rank = jnp.sum(x > z_y[:, None], axis=-1, dtype=jnp.int32)
    return m[:, 0], s, q, t, rank


def _all_stats(x: Array, z_y: Array, blocked: bool | None = None) -> tuple[Array, ...]:
    """:func:`_block_stats` of ``x [R, K]``, on CPU one block of rows at a time.

    XLA-CPU does not fuse several reductions of one elementwise producer: the
    flat version materialises ``x - m`` and ``exp(x - m)`` as R x K buffers
    (3 R x K writes; measured 1376 ms against optax's CE forward at 70-115 ms
    on 2048 x 32768 float32, this 2-core VM under load), and a variadic
    ``lax.reduce`` is not vectorised (7x the CE forward). Looping over blocks
    of ~2 MiB of rows keeps each block in cache for the five reductions and
    writes no R x K buffer: at 4096 x 32768, the block's max and sum of
    exponentials alone measured 1.14x optax's CE forward (paired rounds
    0.88-1.50x), the whole set 2.6x (1.7-3.3x), both at load average ~9.
    Other backends fuse sibling reductions, so they run the flat version.
    """
    rows, k = x.shape
    if blocked is None:
        blocked = jax.default_backend() == "cpu"
    b = max(1, min(rows, _BLOCK_BYTES // max(k * x.dtype.itemsize, 1)))
    if not blocked or b >= rows:
        return _block_stats(x, z_y)
    n_blocks = -(-rows // b)
    outs = (
        jnp.zeros((rows,), x.dtype),
        jnp.zeros((rows,), x.dtype),
        jnp.zeros((rows,), x.dtype),
        jnp.zeros((rows,), x.dtype),
        jnp.zeros((rows,), jnp.int32),
    )

    def body(i, outs):
        # the last block is clamped to end at `rows` (it overlaps the previous
        # one and rewrites the same per-row values)
        start = jnp.minimum(i * b, rows - b)
        xb = jax.lax.dynamic_slice_in_dim(x, start, b, axis=0)
        zb = jax.lax.dynamic_slice_in_dim(z_y, start, b, axis=0)
        return tuple(
            jax.lax.dynamic_update_slice_in_dim(o, v, start, axis=0)
            for o, v in zip(outs, _block_stats(xb, zb), strict=True)
        )

    return jax.lax.fori_loop(0, n_blocks, body, outs)


# jitted so that eager calls (a loop over batches without jax.jit) compile the
# kernel's loop once per shape instead of once per call.
@functools.partial(jax.jit, static_argnames=("blocked",))
def _row_summary(x: Array, labels: Array | None, blocked: bool | None = None) -> dict[str, Array]:
    """Per-row statistics of ``x [..., K]`` (classes last): one max pass, one exp pass.

    From the row max ``m``, ``s = sum e``, ``q = sum e^2``, ``t = sum e (z - m)``
    (``e = exp(z - m)``), the label logit ``z_y`` (a gather) and
    ``rank = #{c : z_c > z_y}``:

    * ``nll = log s + m - z_y``, ``conf = max p = 1 / s``,
    * top-k correct iff ``rank < k`` (ties count as correct),
    * ``brier = ((s - e_y)^2 + q - e_y^2) / s^2`` (clamped at 0),
    * ``entropy = log s - t / s``.
    """
    shape = x.shape[:-1]
    k = x.shape[-1]
    xf = x.reshape(-1, k)
    if labels is not None:
        yf = labels.reshape(-1)
        valid = (yf >= 0) & (yf < k)
        z_y = jnp.take_along_axis(xf, jnp.clip(yf, 0, k - 1)[:, None], axis=-1)[:, 0]
    else:
        valid = jnp.zeros(xf.shape[:1], bool)  # unused: no label-dependent output
        z_y = jnp.full(xf.shape[:1], jnp.inf, x.dtype)
    m, s, q, t, rank = _all_stats(xf, z_y, blocked)
    tiny = jnp.finfo(x.dtype).tiny
    log_s = jnp.log(s + tiny)
    out = {"conf": 1 / (s + tiny), "entropy": log_s - t / (s + tiny)}
    if labels is not None:
        z_y = jnp.where(valid, z_y, jnp.nan)
        e_y = jnp.exp(z_y - m)
        off = s - e_y
        out["nll"] = log_s + m - z_y
        out["rank"] = jnp.where(valid, rank, k)
        brier = jnp.maximum((off * off + (q - e_y * e_y)) / (s * s), 0)
        out["brier"] = jnp.where(valid, brier, jnp.nan)
    return {name: v.reshape(shape) for name, v in out.items()}


def _masked_sum(v: Array, keep: Array) -> Array:
    return jnp.sum(jnp.where(keep, v, jnp.zeros((), v.dtype)))


def _count(keep: Array) -> Array:
    return jnp.sum(keep, dtype=jnp.int32)


# --------------------------------------------------------------------------- base class


class _SumMetric:
    """Shared protocol: every data field is a sum; static fields are configuration."""

    _sums: ClassVar[tuple[str, ...]] = ()
    # Every subclass is a dataclass (``_register``): what ``dataclasses.replace`` needs.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def _config(self) -> tuple:
        return tuple(
            getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("static")
        )

    def merge(self: M, other: M) -> M:
        """The state of both: leaf-wise sums (configurations must match)."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(self).__name__} with {type(other).__name__}.")
        if other._config() != self._config():
            raise ValueError(
                f"cannot merge {type(self).__name__} states of different configurations:"
                f" {self._config()} and {other._config()}."
            )
        sums = {}
        for name in self._sums:
            a, b = getattr(self, name), getattr(other, name)
            dt = jnp.promote_types(a.dtype, b.dtype)
            sums[name] = jnp.add(a.astype(dt), b.astype(dt))
        return dataclasses.replace(self, **sums)

    def reduce(self: M) -> M:
        """Merges a state stacked along a leading axis (e.g. by ``all_gather``)."""
        return dataclasses.replace(
            self, **{name: jnp.sum(getattr(self, name), axis=0) for name in self._sums}
        )

    def _empty_sums(self) -> dict[str, Array]:
        return {}


def _float(x: ArrayLike | None = None) -> Array:
    return jnp.zeros((), jnp.float32) if x is None else jnp.asarray(x)


def _zero_count() -> Array:
    return jnp.zeros((), jnp.int32)


def _mean(total: Array, count: Array) -> Array:
    return total / count.astype(total.dtype)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, _static))
def _register(cls: type[C]) -> type[C]:
    """A frozen dataclass registered as a pytree (static fields: configuration)."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True)(cls))


def _check_base(base: Any) -> Any:
    if base is not None:
        _checks.log_base(base)
        if _checks.is_tracer(base):
            raise TypeError("`base` of a metric is static configuration: pass a Python number.")
        base = float(base)
    return base


# --------------------------------------------------------------------------- NLL family


@_register
class _BasedMean(_SumMetric):
    """A mean over kept examples: a summed value, a count, and the log base of ``compute()``."""

    total: Array
    count: Array
    base: float | None = _static()
    _sums: ClassVar[tuple[str, ...]] = ("total", "count")

    @classmethod
    def empty(cls, base: float | None = None):
        return cls(_float(), _zero_count(), _check_base(base))

    def compute(self) -> Array:
        return _checks.in_base(_mean(self.total, self.count), self.base)


@_register
class _SummedNLL(_BasedMean):
    """The state of :class:`NegativeLogLikelihood` and :class:`Perplexity`: summed NLL, count."""

    @classmethod
    def from_model_output(
        cls,
        logits: ArrayLike,
        labels: ArrayLike,
        *,
        where: ArrayLike | None = None,
        ignore_index: int | None = None,
        base: float | None = None,
        **_: Any,
    ):
        x, y, keep = _prepare(logits, labels, where, ignore_index)
        r = _row_summary(x, y)
        return cls(_masked_sum(r["nll"], keep), _count(keep), _check_base(base))


@_register
class NegativeLogLikelihood(_SummedNLL):
    r"""Mean negative log-likelihood per kept token.

    compute() = sum_i -log softmax(z_i)_{y_i} / (number of kept tokens), in ``base``.

    .. math::
      \mathrm{NLL} = \frac{1}{|I|}\sum_{i \in I} -\log_b \mathrm{softmax}(z_i)_{y_i}

    Attributes:
      total: sum of the NLLs in nats.
      count: number of kept tokens.
      base: log base of ``compute()`` (``None``: nats, 2: bits per token).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75], [0.1, 0.9]]))
      >>> a = metrics.NegativeLogLikelihood.from_model_output(z[:1], jnp.array([0]), base=2)
      >>> b = metrics.NegativeLogLikelihood.from_model_output(
      ...     z[1:], jnp.array([0, -100]), ignore_index=-100, base=2)
      >>> a.merge(b).compute()  # (1 + 2) / 2 bits
      Array(1.5, dtype=float32)
    """


@_register
class Perplexity(_SummedNLL):
    r"""Perplexity: exp of the mean NLL in nats, weighted by kept tokens across batches.

    compute() = exp( sum_i -log softmax(z_i)_{y_i} / |I| ).

    .. math::
      \mathrm{PPL} = \exp\Big(\frac{1}{|I|}\sum_{i\in I} -\log \mathrm{softmax}(z_i)_{y_i}\Big)

    The torchmetrics ``Perplexity(ignore_index)`` definition: batches holding
    different numbers of kept tokens merge exactly (not by averaging batch
    perplexities). ``base`` is accepted for symmetry with
    :class:`NegativeLogLikelihood` and does not change the value
    (:math:`b^{\mathrm{NLL}_b} = e^{\mathrm{NLL}}`).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
      >>> metrics.Perplexity.from_model_output(z, jnp.array([0, 0])).compute()  # sqrt(2 * 4)
      Array(2.828427, dtype=float32)
    """

    def compute(self) -> Array:
        return jnp.exp(_mean(self.total, self.count))


@_register
class BitsPerByte(_SumMetric):
    r"""Bits per byte: total NLL over total bytes (lm-evaluation-harness' definition).

    compute() = sum_i NLL_i / (ln 2 * sum bytes).

    .. math::
      \mathrm{BPB} = \frac{\sum_{i \in I} -\ln \mathrm{softmax}(z_i)_{y_i}}{\ln 2 \cdot \sum \mathrm{bytes}}

    ``num_bytes`` is either a scalar (the number of bytes of the text the
    batch's kept tokens encode) or an array of the shape of ``labels`` (bytes
    per token; only kept tokens are counted).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
      >>> metrics.BitsPerByte.from_model_output(z, jnp.array([0, 0]), 3).compute()  # 3 bits / 3
      Array(1., dtype=float32)
    """

    total: Array
    num_bytes: Array

    _sums: ClassVar[tuple[str, ...]] = ("total", "num_bytes")

    @classmethod
    def empty(cls):
        return cls(_float(), _float())

    @classmethod
    def from_model_output(
        cls,
        logits: ArrayLike,
        labels: ArrayLike,
        num_bytes: ArrayLike,
        *,
        where: ArrayLike | None = None,
        ignore_index: int | None = None,
        **_: Any,
    ):
        x, y, keep = _prepare(logits, labels, where, ignore_index)
        r = _row_summary(x, y)
        nb = _checks.as_inexact(num_bytes, "num_bytes").astype(x.dtype)
        if nb.ndim == 0:
            total_bytes = nb
        elif nb.shape == keep.shape:
            total_bytes = _masked_sum(nb, keep)
        else:
            raise ValueError(
                f"`num_bytes` must be a scalar or have the shape of `labels` {keep.shape},"
                f" got {nb.shape}."
            )
        return cls(_masked_sum(r["nll"], keep), total_bytes)

    def compute(self) -> Array:
        return self.total / (jnp.asarray(math.log(2), self.total.dtype) * self.num_bytes)


# --------------------------------------------------------------------------- accuracy


@_register
class Accuracy(_SumMetric):
    r"""Top-k accuracy: the fraction of kept examples whose label is among the k largest logits.

    compute() = |{i : #{c : z_ic > z_iy_i} < k}| / |I|   (ties count as correct)

    .. math::
      \mathrm{acc}_k = \frac{1}{|I|}\sum_{i\in I}
      \mathbb{1}\big[\,|\{c : z_{ic} > z_{i y_i}\}| < k\,\big]

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
      >>> metrics.Accuracy.from_model_output(z, jnp.array([1, 1]), top_k=2).compute()
      Array(1., dtype=float32)
    """

    correct: Array
    count: Array
    top_k: int = _static(1)
    _sums: ClassVar[tuple[str, ...]] = ("correct", "count")

    @staticmethod
    def _check_k(top_k: Any) -> int:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"`top_k` must be an int >= 1, got {top_k!r}.")
        return int(top_k)

    @classmethod
    def empty(cls, top_k: int = 1):
        return cls(_zero_count(), _zero_count(), cls._check_k(top_k))

    @classmethod
    def from_model_output(
        cls,
        logits: ArrayLike,
        labels: ArrayLike,
        *,
        top_k: int = 1,
        where: ArrayLike | None = None,
        ignore_index: int | None = None,
        **_: Any,
    ):
        top_k = cls._check_k(top_k)
        x, y, keep = _prepare(logits, labels, where, ignore_index)
        r = _row_summary(x, y)
        return cls(_count(keep & (r["rank"] < top_k)), _count(keep), top_k)

    def compute(self) -> Array:
        dt = jnp.asarray(0.0).dtype  # float32, float64 under x64
        return self.correct.astype(dt) / self.count.astype(dt)


# --------------------------------------------------------------------------- calibration


def _bin_index(conf: Array, num_bins: int) -> Array:
    """torchmetrics' ``bucketize(conf, linspace(0, 1, n + 1), right=True) - 1``.

    Bin i holds ``[i/n, (i+1)/n)``; a confidence of exactly 1 gets the extra
    bin ``n`` (torchmetrics keeps ``n + 1`` bins).
    """
    edges = jnp.linspace(0, 1, num_bins + 1, dtype=conf.dtype)
    edges = edges.reshape((1,) * conf.ndim + (num_bins + 1,))
    return jnp.sum(conf[..., None] >= edges, axis=-1, dtype=jnp.int32) - 1


@_register
class CalibrationError(_SumMetric):
    r"""Top-label calibration error over equal-width confidence bins.

    With confidence c_i = max_k softmax(z_i)_k, correctness a_i = [argmax z_i == y_i]
    and bins B_b of equal width on [0, 1]::

      "l1" (ECE):   sum_b |B_b|/N |acc(B_b) - conf(B_b)|
      "l2" (RMSCE): sqrt(sum_b |B_b|/N (acc(B_b) - conf(B_b))^2)
      "max" (MCE):  max_b |acc(B_b) - conf(B_b)|

    .. math::
      \mathrm{ECE} = \sum_b \frac{|B_b|}{N}\,\big|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big|,
      \quad \mathrm{RMSCE} = \Big(\sum_b \frac{|B_b|}{N}
      \big(\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big)^2\Big)^{1/2},
      \quad \mathrm{MCE} = \max_b \big|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big|

    torchmetrics' ``MulticlassCalibrationError(num_classes, n_bins, norm)``
    definition: bin b holds confidences in ``[b/n, (b+1)/n)`` and a confidence
    of exactly 1 gets a bin of its own; empty bins count 0 in "max".
    The state keeps per-bin sums (counts, confidences, correct predictions),
    so every norm, "max" included, merges exactly; :meth:`bins` returns the
    reliability diagram. Ties in the top logit count as correct.

    Attributes:
      count, conf_sum, correct: per-bin sums, shape ``[num_bins + 1]``.
      num_bins, norm: static configuration.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.log(jnp.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]]))
      >>> s = metrics.CalibrationError.from_model_output(z, jnp.array([0, 0, 0, 1]), num_bins=10)
      >>> round(float(s.compute()), 6)  # (2 * |1 - 0.9| + 2 * |0.5 - 0.6|) / 4
      0.1
    """

    count: Array
    conf_sum: Array
    correct: Array
    num_bins: int = _static(15)
    norm: str = _static("l1")
    _sums: ClassVar[tuple[str, ...]] = ("count", "conf_sum", "correct")

    @staticmethod
    def _check(num_bins: Any, norm: Any) -> tuple[int, str]:
        if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)):
            raise TypeError(f"`num_bins` must be an int >= 1, got {num_bins!r}.")
        if num_bins < 1:
            raise ValueError(f"`num_bins` must be an int >= 1, got {num_bins!r}.")
        _checks.check_option(norm, "norm", ("l1", "l2", "max"))
        return int(num_bins), norm

    @classmethod
    def empty(cls, num_bins: int = 15, norm: str = "l1"):
        num_bins, norm = cls._check(num_bins, norm)
        z = jnp.zeros((num_bins + 1,), jnp.int32)
        return cls(z, jnp.zeros((num_bins + 1,), jnp.float32), z, num_bins, norm)

    @classmethod
    def from_model_output(
        cls,
        logits: ArrayLike,
        labels: ArrayLike,
        *,
        num_bins: int = 15,
        norm: str = "l1",
        where: ArrayLike | None = None,
        ignore_index: int | None = None,
        **_: Any,
    ):
        num_bins, norm = cls._check(num_bins, norm)
        x, y, keep = _prepare(logits, labels, where, ignore_index)
        r = _row_summary(x, y)
        return cls(*_calibration_sums(r["conf"], r["rank"] < 1, keep, num_bins), num_bins, norm)

    def bins(self) -> tuple[Array, Array, Array]:
        """``(count, mean confidence, accuracy)`` per bin (0 for empty bins), ``[num_bins + 1]``."""
        n = self.count.astype(self.conf_sum.dtype)
        safe = jnp.maximum(n, 1)
        return self.count, self.conf_sum / safe, self.correct.astype(n.dtype) / safe

    def compute(self) -> Array:
        count, conf, acc = self.bins()
        gap = jnp.abs(acc - conf)
        total = jnp.sum(count).astype(gap.dtype)
        weight = count.astype(gap.dtype) / total
        if self.norm == "l1":
            return jnp.sum(weight * gap)
        if self.norm == "l2":
            return jnp.sqrt(jnp.sum(weight * gap * gap))
        return jnp.where(total > 0, jnp.max(gap), jnp.nan)


def _calibration_sums(conf: Array, correct: Array, keep: Array, num_bins: int):
    idx = _bin_index(conf, num_bins).reshape(-1)
    keep = keep.reshape(-1)
    idx = jnp.where(keep, idx, num_bins + 1)  # out of range: dropped by the scatter
    zeros_i = jnp.zeros((num_bins + 1,), jnp.int32)
    count = zeros_i.at[idx].add(1, mode="drop")
    conf_sum = jnp.zeros((num_bins + 1,), conf.dtype).at[idx].add(conf.reshape(-1), mode="drop")
    hits = zeros_i.at[idx].add(correct.reshape(-1).astype(jnp.int32), mode="drop")
    return count, conf_sum, hits


# --------------------------------------------------------------------------- Brier, entropy


@_register
class BrierScore(_SumMetric):
    r"""Mean Brier score over kept examples (see :func:`jaxent.brier_score`).

    compute() = (1/|I|) sum_i sum_c (softmax(z_i)_c - [c == y_i])^2.

    .. math::
      \bar B = \frac{1}{|I|}\sum_{i\in I}\sum_c \big(p_{ic} - \mathbb{1}[c = y_i]\big)^2

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
      >>> state = metrics.BrierScore.from_model_output(z, jnp.array([0, 1]))
      >>> round(float(state.compute()), 6)  # (0.5 + 0.125) / 2
      0.3125
    """

    total: Array
    count: Array
    _sums: ClassVar[tuple[str, ...]] = ("total", "count")

    @classmethod
    def empty(cls):
        return cls(_float(), _zero_count())

    @classmethod
    def from_model_output(
        cls,
        logits: ArrayLike,
        labels: ArrayLike,
        *,
        where: ArrayLike | None = None,
        ignore_index: int | None = None,
        **_: Any,
    ):
        x, y, keep = _prepare(logits, labels, where, ignore_index)
        r = _row_summary(x, y)
        return cls(_masked_sum(r["brier"], keep), _count(keep))

    def compute(self) -> Array:
        return _mean(self.total, self.count)


@_register
class PredictiveEntropy(_BasedMean):
    r"""Mean entropy of the predicted distribution softmax(z) over kept examples.

    compute() = (1/|I|) sum_i H(softmax(z_i)), in ``base``. For an ensemble,
    pass :func:`jaxent.ensemble_log_softmax` of the members as ``logits``.

    .. math::
      \bar H = \frac{1}{|I|}\sum_{i \in I} -\sum_c p_{ic}\log_b p_{ic}

    ``labels`` is only needed for ``ignore_index``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.zeros((3, 4))
      >>> metrics.PredictiveEntropy.from_model_output(z, base=2).compute()
      Array(2., dtype=float32)
    """

    @classmethod
    def from_model_output(
        cls,
        logits: ArrayLike,
        labels: ArrayLike | None = None,
        *,
        where: ArrayLike | None = None,
        ignore_index: int | None = None,
        base: float | None = None,
        **_: Any,
    ):
        x, y, keep = _prepare(logits, labels, where, ignore_index)
        r = _row_summary(x, None)
        return cls(_masked_sum(r["entropy"], keep), _count(keep), _check_base(base))


@_register
class MutualInformation(_BasedMean):
    r"""Mean ensemble mutual information (BALD) over kept examples.

    compute() = (1/|I|) sum_i [H(mean_m p_im) - mean_m H(p_im)], in ``base``
    (see :func:`jaxent.mutual_information`).

    .. math::
      \bar I = \frac{1}{|I|}\sum_{i\in I}\Big(H(\bar p_i) - \frac{1}{M}\sum_m H(p_{im})\Big)

    ``member_logits`` has classes last and members on ``member_axis``;
    ``where`` masks examples (the shape without both axes).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.log(jnp.array([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]]))
      >>> metrics.MutualInformation.from_model_output(z, base=2).compute()  # (1 + 0) / 2
      Array(0.5, dtype=float32)
    """

    @classmethod
    def from_model_output(
        cls,
        member_logits: ArrayLike,
        *,
        member_axis: int = 0,
        where: ArrayLike | None = None,
        base: float | None = None,
        **_: Any,
    ):
        z = _checks.check_floating(member_logits, "member_logits")
        mi = mutual_information(z, axis=-1, member_axis=member_axis)
        mi = mi.astype(_checks.compute_dtype(mi.dtype))
        keep = jnp.ones(mi.shape, bool)
        if where is not None:
            w = jnp.asarray(where)
            if w.dtype != jnp.bool_:
                w = w != 0
            try:
                ok = np.broadcast_shapes(w.shape, mi.shape) == mi.shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"`where` must be a mask of examples broadcastable to {mi.shape}"
                    f" (`member_logits` without its member and class axes), got {w.shape}."
                )
            keep = jnp.broadcast_to(w, mi.shape)
        return cls(_masked_sum(mi, keep), _count(keep), _check_base(base))


# --------------------------------------------------------------------------- all at once


def from_logits(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
    num_bins: int = 15,
    top_k: int = 5,
    base: float | None = None,
) -> dict[str, Any]:
    """The states of every classification metric of one batch, from one pass over the logits.

    One set of row statistics (max, sum of exponentials, label logit, rank of
    the label, sum of squared and of entropy terms) feeds all of them, so the
    whole set costs about as much as one cross-entropy forward.

    Args:
      logits: floating ``[..., K]``.
      labels: integer ``[...]``.
      where: optional boolean mask of examples.
      ignore_index: optional label value to leave out.
      num_bins: calibration bins.
      top_k: the k of ``"top_k_accuracy"``.
      base: log base of ``"nll"`` and ``"entropy"`` (``None``: nats).

    Returns:
      A dict (a pytree; merge two with ``jax.tree.map(jnp.add, a, b)`` or
      key by key with ``merge``) with keys ``"nll"``, ``"perplexity"``,
      ``"accuracy"``, ``"top_k_accuracy"``, ``"ece"``, ``"mce"``, ``"rmsce"``,
      ``"brier"``, ``"entropy"``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.25, 0.75, 0.0]]))
      >>> states = metrics.from_logits(z, jnp.array([0, 0]), top_k=2, base=2)
      >>> {k: round(float(v.compute()), 4) for k, v in states.items()}  # doctest: +NORMALIZE_WHITESPACE
      {'nll': 1.5, 'perplexity': 2.8284, 'accuracy': 0.5, 'top_k_accuracy': 1.0,
       'ece': 0.625, 'mce': 0.75, 'rmsce': 0.6374, 'brier': 0.75, 'entropy': 1.1556}
    """
    top_k = Accuracy._check_k(top_k)
    num_bins, _ = CalibrationError._check(num_bins, "l1")
    base = _check_base(base)
    x, y, keep = _prepare(logits, labels, where, ignore_index)
    r = _row_summary(x, y)
    nll, n = _masked_sum(r["nll"], keep), _count(keep)
    sums = _calibration_sums(r["conf"], r["rank"] < 1, keep, num_bins)
    return {
        "nll": NegativeLogLikelihood(nll, n, base),
        "perplexity": Perplexity(nll, n, base),
        "accuracy": Accuracy(_count(keep & (r["rank"] < 1)), n, 1),
        "top_k_accuracy": Accuracy(_count(keep & (r["rank"] < top_k)), n, top_k),
        "ece": CalibrationError(*sums, num_bins, "l1"),
        "mce": CalibrationError(*sums, num_bins, "max"),
        "rmsce": CalibrationError(*sums, num_bins, "l2"),
        "brier": BrierScore(_masked_sum(r["brier"], keep), n),
        "entropy": PredictiveEntropy(_masked_sum(r["entropy"], keep), n, base),
    }


# --------------------------------------------------------------------------- temperature


def _temperature_derivatives(beta: Array, xc: Array, mask: Array, z_y: Array, keep: Array):
    """f'(beta) and f''(beta) of f(beta) = sum_i lse(beta z_i) - beta z_iy.

    f' = sum_i E_p[z] - z_y and f'' = sum_i Var_p[z], with p = softmax(beta z).
    """
    u = jnp.where(mask, beta * xc, -jnp.inf)
    m = jnp.max(u, axis=-1, keepdims=True)
    e = jnp.exp(u - jnp.maximum(m, jnp.finfo(xc.dtype).min))
    s = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.maximum(s, jnp.finfo(xc.dtype).tiny)
    mean = jnp.sum(p * xc, axis=-1)
    var = jnp.sum(p * jnp.square(xc - mean[..., None]), axis=-1)
    zero = jnp.zeros((), xc.dtype)
    return jnp.sum(jnp.where(keep, mean - z_y, zero)), jnp.sum(jnp.where(keep, var, zero))


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    ignore_index: int | None = None,
) -> Array:
    r"""The temperature T > 0 that minimises the mean NLL of softmax(z / T) (temperature scaling).

    f(beta) = sum_i [logsumexp(beta z_i) - beta z_{i,y_i}], beta = 1/T, is convex;
    f'(beta) = sum_i E_p[z_i] - z_{i,y_i} and f''(beta) = sum_i Var_p[z_i] with
    p = softmax(beta z_i).

    .. math::
      T^\star = 1/\beta^\star, \quad
      \beta^\star = \arg\min_{\beta > 0} \sum_i \operatorname{lse}(\beta z_i) - \beta z_{i y_i},
      \qquad f'(\beta) = \sum_i \mathbb{E}_{p_i}[z] - z_{i y_i}, \quad
      f''(\beta) = \sum_i \mathrm{Var}_{p_i}[z]

    Safeguarded Newton steps on :math:`\beta` inside a bracket
    :math:`f'(\beta_{lo}) < 0 < f'(\beta_{hi})` (a step leaving the bracket is
    replaced by bisection), in a ``jax.lax.while_loop``: jit-able, each step
    one pass over the logits. Fit it on held-out data (Guo et al., 2017).

    Edge cases: if the labels are no better predicted than by the uniform
    distribution (:math:`f'(0) \ge 0`) the result is ``inf``; if every kept
    example is predicted correctly with a margin, NLL keeps falling as
    :math:`T \to 0` and the result is a small T where NLL has reached 0 in
    floating point (at least ``2**-60``).
    ``-inf`` logits are treated as removed classes; examples whose label has a
    ``-inf`` logit (infinite NLL at every T) are left out. A kept label
    outside ``[0, K)`` gives NaN.

    Args:
      logits: floating ``[..., K]`` (classes last).
      labels: integer ``[...]``.
      where: optional boolean mask of examples.
      ignore_index: optional label value to leave out.

    Returns:
      A scalar T in the compute dtype (>= float32).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxent import metrics
      >>> z = jnp.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
      >>> # labels right 3 times in 4: softmax(z / T)_y = 3/4 at T = 2 / log 3
      >>> round(float(metrics.fit_temperature(z, jnp.array([0, 1, 1, 0]))), 5)
      1.82048

    References:
      Guo et al., "On calibration of modern neural networks", 2017.
    """
    x, y, keep = _prepare(logits, labels, where, ignore_index)
    return _fit_temperature(x, y, keep)


@jax.jit
def _fit_temperature(x: Array, y: Array, keep: Array) -> Array:
    num_classes = x.shape[-1]
    dt = x.dtype
    mask = x > -jnp.inf
    xc = jnp.where(mask, x, jnp.zeros((), dt))
    hit = jax.lax.broadcasted_iota(y.dtype, x.shape, x.ndim - 1) == y[..., None]
    z_y = jnp.sum(jnp.where(hit, xc, jnp.zeros((), dt)), axis=-1)
    label_ok = jnp.any(hit & mask, axis=-1)
    bad = jnp.any(keep & ((y < 0) | (y >= num_classes)))
    keep = keep & label_ok
    one = jnp.ones((), dt)

    def deriv(beta):
        return _temperature_derivatives(beta, xc, mask, z_y, keep)

    g0, _ = deriv(jnp.zeros((), dt))
    max_doublings = 60

    # Bracket: double hi until f'(hi) > 0.
    def expand_cond(c):
        hi, g, k = c
        return (g < 0) & (k < max_doublings)

    def expand(c):
        hi, _, k = c
        hi = 2 * hi
        return hi, deriv(hi)[0], k + 1

    g1, _ = deriv(one)
    hi, ghi, _ = jax.lax.while_loop(expand_cond, expand, (one, g1, jnp.zeros((), jnp.int32)))
    lo = jnp.where(ghi < 0, hi, jnp.where(g1 < 0, hi / 2, jnp.zeros((), dt)))

    def newton_cond(c):
        lo, hi, beta, step, k = c
        return (k < 100) & (jnp.abs(step) > 1e-6 * beta) & (hi - lo > 1e-7 * hi)

    def newton(c):
        lo, hi, beta, _, k = c
        g, h = deriv(beta)
        lo = jnp.where(g < 0, beta, lo)
        hi = jnp.where(g > 0, beta, hi)
        cand = beta - g / jnp.maximum(h, jnp.finfo(dt).tiny)
        inside = (cand > lo) & (cand < hi) & (h > 0)
        new = jnp.where(inside, cand, 0.5 * (lo + hi))
        new = jnp.where(g == 0, beta, new)
        return lo, hi, new, new - beta, k + 1

    beta0 = jnp.where(ghi < 0, hi, jnp.clip(one, lo, hi))
    beta0 = jnp.where((beta0 <= lo) | (beta0 >= hi), 0.5 * (lo + hi), beta0)
    init = (lo, hi, beta0, jnp.asarray(jnp.inf, dt), jnp.zeros((), jnp.int32))
    _, _, beta, _, _ = jax.lax.while_loop(newton_cond, newton, init)
    beta = jnp.where(ghi < 0, hi, beta)  # still decreasing at 2**60: T -> 0
    t = jnp.where(g0 >= 0, jnp.inf, 1 / beta)
    return jnp.where(bad, jnp.nan, t)
