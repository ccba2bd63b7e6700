r"""Checked mode: opt-in run-time validation of the arguments of jaxent functions.

jaxent validates everything it can see at trace time (dtypes, shapes, Python
hyper-parameters) and raises ``TypeError``/``ValueError`` there. Values that
exist only at run time cannot be checked that way without a cost on every
call, so the library follows a convention for them instead (an out-of-range
label gives a NaN row, a ``+inf`` logit is outside the domain, ...).
:func:`checked` turns those silent conventions into errors, on request:

.. code-block:: python

    loss_fn = jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels)
    loss_fn(logits, labels)  # ValueError: labels[3] = 12 is out of range [0, 10)

It is built on :mod:`jax.experimental.checkify`: every argument of a known
function is validated by name (a table, :data:`VALIDATORS`, maps each public
function to its per-argument validators), the failing check reports the
argument and the first offending index, and nothing is computed when the mode
is off: ``checked(fn, enabled=False)`` returns ``fn`` itself.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxent import _checks

Array = jax.Array
F = TypeVar("F", bound=Callable[..., Any])

#: The error raised by a failed check outside ``jit`` (a ``ValueError`` subclass).
CheckError = checkify.JaxRuntimeError

_HALF = (jnp.float16, jnp.bfloat16)


# --------------------------------------------------------------------------- reporting


class _Ctx:
    """What a validator may read: the bound arguments and the tolerance."""

    def __init__(self, fn_name: str, arguments: Mapping[str, Any], atol: float | None):
        self.fn_name = fn_name
        self.arguments = arguments
        self.atol = atol

    def get(self, name: str, default: Any = None) -> Any:
        return self.arguments.get(name, default)

    def tol(self, x: Array) -> float:
        if self.atol is not None:
            return self.atol
        return 1e-2 if x.dtype in _HALF else 1e-3


def _report(
    bad: Array, label: str, value: Array, text: str, axis: int | None = None, wrap: str = "{}"
) -> None:
    """Fails if any entry of ``bad`` is set, naming the first offending index.

    ``label`` is the argument name; ``value`` has the shape of ``bad`` and
    gives the reported value. With ``axis`` given, ``bad`` is indexed by rows
    and the index is printed with ``:`` at the class axis (``p[2, :]``);
    ``wrap`` formats the indexed name (e.g. ``"sum({})"``).
    """
    if bad.size == 0:
        return
    idx = jnp.unravel_index(jnp.argmax(bad.reshape(-1)), bad.shape) if bad.ndim else ()
    keys = {f"i{k}": i for k, i in enumerate(idx)}
    parts = ["{" + k + "}" for k in keys]
    if axis is not None:
        parts.insert(axis, ":")
    where = f"[{', '.join(parts)}]" if parts else ""
    v = value[tuple(idx)] if idx else value
    subject = wrap.replace("{}", f"{label}{where}")
    checkify.check(~jnp.any(bad), f"{subject} = {{v}} {text}", v=v, **keys)


def _entry_mask(ctx: _Ctx, x: Array, axis: int | None) -> Array | None:
    """The ``where`` mask of the call broadcast to the entries of ``x`` (or ``None``)."""
    where = ctx.get("where")
    if where is None or axis is None:
        return None
    return _checks.normalize_where(where, x.shape, axis)


def _axis(ctx: _Ctx, x: Array) -> int | None:
    if x.ndim == 0:
        return None
    return _checks.canonical_axis(ctx.get("axis", -1), x.ndim)


def _masked(bad: Array, mask: Array | None) -> Array:
    return bad if mask is None else bad & mask


# --------------------------------------------------------------------------- validators
#
# A validator is ``v(name, x, ctx) -> None``: it stages ``checkify.check``s on
# the argument ``name`` (value ``x``, already an array) of the call ``ctx``.


def logits(name: str, x: Array, ctx: _Ctx) -> None:
    """Logits: no NaN and no ``+inf`` on kept entries (``-inf`` removes a class)."""
    ax = _axis(ctx, x)
    bad = _masked(jnp.isnan(x) | (x == jnp.inf), _entry_mask(ctx, x, ax))
    _report(bad, name, x, "is not a valid logit (NaN or +inf); remove a class with -inf or where=")


def not_nan(name: str, x: Array, ctx: _Ctx) -> None:
    """Any real value, including +-inf, but not NaN."""
    _report(jnp.isnan(x), name, x, "is NaN")


def log_density(name: str, x: Array, ctx: _Ctx) -> None:
    """A log-probability or log-density: not NaN, not ``+inf``."""
    _report(jnp.isnan(x) | (x == jnp.inf), name, x, "is not a log-probability (NaN or +inf)")


def finite(name: str, x: Array, ctx: _Ctx) -> None:
    """A finite real number."""
    _report(~jnp.isfinite(x), name, x, "is not finite")


def positive(name: str, x: Array, ctx: _Ctx) -> None:
    """A finite number > 0 (a standard deviation)."""
    _report(~(jnp.isfinite(x) & (x > 0)), name, x, "must be finite and > 0")


def nonnegative(name: str, x: Array, ctx: _Ctx) -> None:
    """A weight: not NaN, >= 0."""
    _report(~(x >= 0), name, x, "must be >= 0 (and not NaN)")


def unit_interval(name: str, x: Array, ctx: _Ctx) -> None:
    """A probability, elementwise: in [0, 1], not NaN."""
    _report(~((x >= 0) & (x <= 1)), name, x, "is not a probability in [0, 1]")


def smoothing_factor(name: str, x: Array, ctx: _Ctx) -> None:
    """A label-smoothing factor in [0, 1)."""
    _report(~((x >= 0) & (x < 1)), name, x, "is not a smoothing factor in [0, 1)")


def distribution(name: str, x: Array, ctx: _Ctx) -> None:
    """Probability vectors along ``axis``: entries in [0, 1], kept entries summing to 1.

    Entries removed by ``where`` are not checked; a row whose entries are all
    removed is skipped. The sum must be within ``atol`` of 1 (default 1e-3,
    1e-2 for float16/bfloat16 inputs).
    """
    ax = _axis(ctx, x)
    if ax is None:
        unit_interval(name, x, ctx)
        return
    mask = _entry_mask(ctx, x, ax)
    _report(_masked(~((x >= 0) & (x <= 1)), mask), name, x, "is not a probability in [0, 1]")
    xf = x.astype(_checks.compute_dtype(x.dtype))
    kept = xf if mask is None else jnp.where(mask, xf, 0)
    s = jnp.sum(kept, axis=ax)
    atol = ctx.tol(x)
    bad = ~(jnp.abs(s - 1) <= atol)
    if mask is not None:
        bad = bad & jnp.any(mask, axis=ax)
    _report(bad, name, s, f"is not 1 within atol={atol:g}", axis=ax, wrap="sum({})")


def _int_labels(num_classes: Callable[[_Ctx], Any], row_mask: Callable[[_Ctx, Array], Any]):
    def validator(name: str, x: Array, ctx: _Ctx) -> None:
        k = num_classes(ctx)
        ignore = ctx.get("ignore_index")
        bad = (x < 0) | (x >= k)
        if ignore is not None:
            bad = bad & (x != ignore)
        keep = row_mask(ctx, x)
        if keep is not None:
            bad = bad & keep
        if isinstance(k, (int, np.integer)):
            text = f"is out of range [0, {int(k)})"
        else:
            text = "is out of range [0, num_classes)"
        if ignore is not None:
            text += f" and is not ignore_index={ignore}"
        _report(bad, name, x, text)

    return validator


def _class_axis_size(arg: str) -> Callable[[_Ctx], int]:
    def k(ctx: _Ctx) -> int:
        z = jnp.asarray(ctx.get(arg))
        return z.shape[_checks.canonical_axis(ctx.get("axis", -1), z.ndim)]

    return k


def _row_where(ctx: _Ctx, labels: Array) -> Array | None:
    """The row mask of a call whose ``where`` may mask rows (rank of the labels)."""
    where = ctx.get("where")
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.ndim != labels.ndim:  # a mask of classes: every row is kept
        return None
    return jnp.broadcast_to(where != 0, labels.shape)


#: Integer labels of a ``[..., K]`` logits array (``K`` from ``logits.shape[axis]``).
integer_labels = _int_labels(_class_axis_size("logits"), _row_where)


def _labels_int_or_dist(name: str, x: Array, ctx: _Ctx) -> None:
    """Integer class indices (range check) or probability labels (distribution check)."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        integer_labels(name, x, ctx)
    else:
        distribution(name, x, ctx)


def _smooth_labels_labels(name: str, x: Array, ctx: _Ctx) -> None:
    if jnp.issubdtype(x.dtype, jnp.integer):
        k = ctx.get("num_classes")
        if k is not None:
            _int_labels(lambda c: c.get("num_classes"), lambda c, y: None)(name, x, ctx)
    else:
        distribution(name, x, ctx)


def _linear_labels(name: str, x: Array, ctx: _Ctx) -> None:
    w = jnp.asarray(ctx.get("weight"))
    _int_labels(lambda c: w.shape[-1], _row_where)(name, x, ctx)


def _vocab_parallel_labels(name: str, x: Array, ctx: _Ctx) -> None:
    axis_name = ctx.get("axis_name")
    local = ctx.get("logits_shard", ctx.get("weight_shard"))
    v_local = jnp.asarray(local).shape[-1]
    v_total = v_local * jax.lax.psum(1, axis_name)
    _int_labels(lambda c: v_total, _row_where)(name, x, ctx)


_Validator = Callable[[str, Array, _Ctx], None]

_DIST2 = {"p": distribution, "q": distribution}
_LOGITS2 = {"p_logits": logits, "q_logits": logits}

#: Function name -> {argument name: validator}. Every public function of
#: jaxent has an entry (a test checks it); arguments not listed are not checked.
VALIDATORS: dict[str, dict[str, _Validator]] = {
    # softmax family
    "softmax": {"logits": logits},
    "log_softmax": {"logits": logits},
    "logsumexp": {"logits": logits},
    "logit": {"p": unit_interval},
    # information measures
    "self_information": {"p": unit_interval},
    "entropy": {"p": distribution},
    "entropy_from_logits": {"logits": logits},
    "binary_entropy": {"p": unit_interval},
    "cross_entropy": _DIST2,
    # divergences
    "kl_divergence": _DIST2,
    "js_divergence": _DIST2,
    "kl_divergence_from_logits": _LOGITS2,
    "js_divergence_from_logits": _LOGITS2,
    "kl_divergence_diag_gaussian": {
        "mean_p": finite,
        "std_p": positive,
        "mean_q": finite,
        "std_q": positive,
    },
    "kl_estimate": {"log_p": log_density, "log_q": log_density},
    # losses
    "softmax_cross_entropy": {"logits": logits, "labels": distribution},
    "softmax_cross_entropy_with_integer_labels": {
        "logits": logits,
        "labels": integer_labels,
        "class_weights": nonnegative,
    },
    "sigmoid_binary_cross_entropy": {
        "logits": not_nan,
        "labels": unit_interval,
        "pos_weight": nonnegative,
    },
    "binary_cross_entropy": {"probs": unit_interval, "labels": unit_interval},
    "weighted_mean": {"losses": not_nan, "weights": nonnegative},
    # label smoothing
    "smooth_labels": {"labels": _smooth_labels_labels, "epsilon": smoothing_factor},
    "label_smoothed_cross_entropy": {
        "logits": logits,
        "labels": _labels_int_or_dist,
        "epsilon": smoothing_factor,
        "class_weights": nonnegative,
    },
    "with_label_smoothing": {"epsilon": smoothing_factor},
    "optimal_logit_gap": {"epsilon": smoothing_factor},
    # large vocabularies
    "linear_cross_entropy": {
        "hidden": finite,
        "weight": finite,
        "labels": _linear_labels,
        "bias": finite,
        "label_smoothing": smoothing_factor,
        "z_loss": nonnegative,
    },
    "vocab_parallel_cross_entropy": {
        "logits_shard": logits,
        "labels": _vocab_parallel_labels,
        "label_smoothing": smoothing_factor,
        "z_loss": nonnegative,
    },
    "vocab_parallel_linear_cross_entropy": {
        "hidden": finite,
        "weight_shard": finite,
        "labels": _vocab_parallel_labels,
        "bias_shard": finite,
        "label_smoothing": smoothing_factor,
        "z_loss": nonnegative,
    },
}


# --------------------------------------------------------------------------- the wrapper


def _lookup(fn: Any) -> tuple[str, dict[str, _Validator]]:
    import jaxent  # the public namespace (imported late: jaxent imports this module)

    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or name not in VALIDATORS or getattr(jaxent, name, None) is not fn:
        known = ", ".join(sorted(n for n in VALIDATORS if hasattr(jaxent, n)))
        raise ValueError(
            f"jaxent.checked does not know {fn!r}: it validates the arguments of the"
            f" public functions of jaxent by name ({known})."
        )
    return name, VALIDATORS[name]


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _throw(err: checkify.Error) -> None:
    err.throw()


def checked(
    fn: F,
    *,
    atol: float | None = None,
    enabled: bool = True,
    under_trace: Literal["callback", "checkify"] = "callback",
) -> F:
    r"""Wraps a jaxent function so that bad run-time values raise instead of propagating.

    The returned function has the signature, result and gradients of ``fn``;
    before calling it, it validates the arguments ``fn`` is known to take
    (:data:`VALIDATORS`):

    * logits: no NaN, no ``+inf`` (``-inf`` and ``where``-removed entries are fine);
    * integer labels: in ``[0, K)`` or equal to ``ignore_index`` (rows removed
      by a row mask are skipped);
    * probability vectors (``p``, ``q``, soft labels): entries in [0, 1] and
      kept entries of each row summing to 1 within ``atol``; elementwise
      probabilities (``logit``, ``binary_entropy``, BCE): in [0, 1];
    * standard deviations: finite and > 0; weights: >= 0; smoothing factors:
      in [0, 1); log-probabilities: no NaN, no ``+inf``.

    A failure names the argument and the first offending index, e.g.
    ``labels[3] = 12 is out of range [0, 10)`` or
    ``sum(p[1, :]) = 0.9 is not 1 within atol=0.001``.

    Errors:
      * Called on concrete arrays, a failed check raises
        ``jax.experimental.checkify.JaxRuntimeError`` (a ``ValueError``
        subclass, exported as ``jaxent._checked.CheckError``) with that message.
      * Called under a transformation (``jax.jit``, ``vmap``, ``grad``, ``scan``)
        with ``under_trace="callback"`` (default), the check runs at run time in
        a ``jax.debug.callback``: the computation fails with
        ``jax.errors.JaxRuntimeError`` whose message contains the same text.
        With ``under_trace="checkify"``, the check is staged as
        ``checkify.check_error`` instead: wrap the outermost function in
        ``checkify.checkify`` and call ``err.throw()``, which raises
        ``checkify.JaxRuntimeError`` (without checkify, ``jit`` refuses to
        lower it).

    Off by default: it costs nothing unless used, and ``enabled=False`` returns
    ``fn`` itself, so a flag can switch it off in production at zero cost.

    Args:
      fn: a public jaxent function (``jaxent.softmax_cross_entropy``, ...).
      atol: tolerance of the row-sum check of probability vectors (default
        1e-3, or 1e-2 for float16/bfloat16 inputs).
      enabled: ``False`` returns ``fn`` unchanged.
      under_trace: how a check is raised inside a transformation (see Errors).

    Returns:
      A function with the signature of ``fn``.

    Raises:
      ValueError: ``fn`` is not a public jaxent function (at wrap time, before
        anything is traced), or an unknown ``under_trace``.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> ce = jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels)
      >>> ce(jnp.zeros((2, 10)), jnp.array([1, 12]))  # doctest: +SKIP
      Traceback (most recent call last):
      JaxRuntimeError: labels[1] = 12 is out of range [0, 10) (`check` failed)
    """
    if not enabled:
        return fn
    _checks.check_option(under_trace, "under_trace", ("callback", "checkify"))
    if atol is not None:
        _checks.check_scalar_range(atol, "atol", 0.0, float("inf"))
        atol = float(atol)
    name, table = _lookup(fn)
    sig = inspect.signature(fn)

    def validate(arguments: dict[str, Any]) -> None:
        ctx = _Ctx(name, arguments, atol)
        for arg, validator in table.items():
            value = arguments.get(arg)
            if value is not None and not callable(value):
                validator(arg, jnp.asarray(value), ctx)

    checkified = checkify.checkify(validate, errors=checkify.user_checks)
    cache: dict[Any, Callable[..., Any]] = {}

    def compiled(static: tuple[tuple[str, Any], ...], dyn_names: tuple[str, ...]):
        key = (static, dyn_names)
        if key not in cache:

            def inner(*dyn: Any) -> None:
                validate({**dict(static), **dict(zip(dyn_names, dyn, strict=True))})

            cache[key] = jax.jit(checkify.checkify(inner, errors=checkify.user_checks))
        return cache[key]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(arguments)):
            err, _ = checkified(arguments)
            if under_trace == "checkify":
                checkify.check_error(err)
            else:
                jax.debug.callback(_throw, err)
        else:
            dyn_names = tuple(k for k, v in arguments.items() if _is_array(v))
            static = tuple((k, v) for k, v in arguments.items() if k not in dyn_names)
            try:
                hash(static)
            except TypeError:  # e.g. a list argument: validate op by op instead
                err, _ = checkified(arguments)
            else:
                err, _ = compiled(static, dyn_names)(*[arguments[k] for k in dyn_names])
            err.throw()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
