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

It is built on :mod:`jax.experimental.checkify`: every argument of a public
function is validated by what its name means (one list, :data:`BY_ARGUMENT`:
``logits``, ``labels``, ``p``, ``z_loss``, ``temperature``, ...), with a few
per-function exceptions where a name means something else (:data:`VALIDATORS`,
e.g. ``p`` of ``binary_entropy`` is elementwise) or declared next to the
function as a ``__jaxent_checks__`` attribute. The failing check reports the
argument and the first offending index, and nothing is computed when the mode
is off: ``checked(fn, enabled=False)`` returns ``fn`` itself.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
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
    keys: dict[str, Any] = {f"i{k}": i for k, i in enumerate(idx)}
    parts = ["{" + k + "}" for k in keys]
    if axis is not None:
        parts.insert(axis, ":")
    where = f"[{', '.join(parts)}]" if parts else ""
    v = value[tuple(idx)] if idx else value
    subject = wrap.replace("{}", f"{label}{where}")
    checkify.check(~jnp.any(bad), f"{subject} = {{v}} {text}", v=v, **keys)


def _entry_mask(ctx: _Ctx, x: Array, axis: int | None) -> Array | None:
    """The ``where`` mask of the call broadcast to the entries of ``x`` (or ``None``).

    A ``where`` that does not fit ``x`` (an argument of another shape) gives
    ``None``: every entry of ``x`` is checked.
    """
    where = ctx.get("where")
    if where is None or axis is None:
        return None
    _checks.check_bool_mask(where)
    try:
        return _checks.normalize_where(where, x.shape, axis)
    except ValueError:
        return None


def _elementwise(ctx: _Ctx, x: Array) -> tuple[Array, Array | None]:
    """``x`` and the call's ``where`` broadcast together (elementwise arguments)."""
    where = ctx.get("where")
    if where is None:
        return x, None
    mask = _checks.check_bool_mask(where)
    try:
        shape = tuple(np.broadcast_shapes(x.shape, mask.shape))
    except ValueError:
        return x, None
    return jnp.broadcast_to(x, shape), jnp.broadcast_to(mask, shape)


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
    """Any real value, including +-inf, but not NaN (entries removed by ``where`` skipped)."""
    x, mask = _elementwise(ctx, x)
    _report(_masked(jnp.isnan(x), mask), name, x, "is NaN")


def log_density(name: str, x: Array, ctx: _Ctx) -> None:
    """A log-probability or log-density: not NaN, not ``+inf`` (``-inf`` is fine)."""
    x, mask = _elementwise(ctx, x)
    bad = _masked(jnp.isnan(x) | (x == jnp.inf), mask)
    _report(bad, name, x, "is not a log-probability (NaN or +inf)")


def sample_log_prob(name: str, x: Array, ctx: _Ctx) -> None:
    """The log-probability of a sample under the distribution it was drawn from: finite.

    ``-inf`` is impossible for a drawn sample (it has probability > 0); entries
    removed by ``where`` are skipped.
    """
    x, mask = _elementwise(ctx, x)
    bad = _masked(~jnp.isfinite(x), mask)
    _report(bad, name, x, "is not the finite log-probability of a drawn sample")


def finite(name: str, x: Array, ctx: _Ctx) -> None:
    """A finite real number."""
    _report(~jnp.isfinite(x), name, x, "is not finite")


def positive(name: str, x: Array, ctx: _Ctx) -> None:
    """A finite number > 0 (a standard deviation)."""
    _report(~(jnp.isfinite(x) & (x > 0)), name, x, "must be finite and > 0")


def nonnegative(name: str, x: Array, ctx: _Ctx) -> None:
    """A weight or ``z_loss``: not NaN, >= 0."""
    _report(~(x >= 0), name, x, "must be >= 0 (and not NaN)")


def weights_kept(name: str, x: Array, ctx: _Ctx) -> None:
    """Per-example weights: >= 0, not NaN, on entries kept by ``where``."""
    x, mask = _elementwise(ctx, x)
    _report(_masked(~(x >= 0), mask), name, x, "must be >= 0 (and not NaN)")


def closed_unit_interval(name: str, x: Array, ctx: _Ctx) -> None:
    """A mixture weight in [0, 1] (``beta`` of the JS divergence)."""
    _report(~((x >= 0) & (x <= 1)), name, x, "must be in [0, 1]")


def log_base(name: str, x: Array, ctx: _Ctx) -> None:
    """A logarithm base: finite, > 0 and != 1."""
    _report(~(jnp.isfinite(x) & (x > 0) & (x != 1)), name, x, "must be finite, > 0 and != 1")


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
        ignore = _checks.check_ignore_index(ctx.get("ignore_index"))
        x, valid = _checks.labels_in_range(x, k, name)
        bad = ~valid
        if ignore is not None:
            bad = bad & (x != jnp.asarray(ignore, x.dtype))
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
    where = _checks.check_bool_mask(where)
    if where.ndim != labels.ndim:  # a mask of classes: every row is kept
        return None
    try:
        return jnp.broadcast_to(where, labels.shape)
    except ValueError:
        return None


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


def _teacher_indices(name: str, x: Array, ctx: _Ctx) -> None:
    """Top-k teacher class indices: in ``[0, K)`` with ``K`` from ``student_logits``."""
    _int_labels(_class_axis_size("student_logits"), lambda c, y: None)(name, x, ctx)


_Validator = Callable[[str, Array, _Ctx], None]

#: Argument name -> validator: what each argument name means across jaxent.
#: Every argument of a public function with one of these names is checked
#: (unless :data:`VALIDATORS` or the function's ``__jaxent_checks__``
#: overrides it); a new function gets its checks by using these names.
BY_ARGUMENT: dict[str, _Validator] = {
    # logits: class-axis rows
    "logits": logits,
    "p_logits": logits,
    "q_logits": logits,
    "logits_shard": logits,
    "student_logits": logits,
    "member_logits": logits,
    # labels: integer class indices (range) or probability vectors
    "labels": _labels_int_or_dist,
    "teacher_indices": _teacher_indices,
    # probability vectors along the class axis
    "p": distribution,
    "q": distribution,
    # log-probabilities
    "log_p": sample_log_prob,
    "log_sampler": sample_log_prob,
    "log_q": log_density,
    "teacher_log_probs": log_density,
    # weights and per-example values
    "class_weights": nonnegative,
    "pos_weight": nonnegative,
    "weights": weights_kept,
    "losses": not_nan,
    # hyper-parameters (useful when traced: a schedule)
    "epsilon": smoothing_factor,
    "label_smoothing": smoothing_factor,
    "z_loss": nonnegative,
    "logit_softcap": positive,
    "temperature": positive,
    "beta": closed_unit_interval,
    "base": log_base,
    # Gaussians, linear heads
    "mean_p": finite,
    "mean_q": finite,
    "std_p": positive,
    "std_q": positive,
    "hidden": finite,
    "weight": finite,
    "weight_shard": finite,
    "bias": finite,
    "bias_shard": finite,
    "p_hidden": finite,
    "p_weight": finite,
    "q_hidden": finite,
    "q_weight": finite,
    "p_bias": finite,
    "q_bias": finite,
}

#: Function name -> {argument name: validator}: the exceptions to
#: :data:`BY_ARGUMENT`, where a name means something else in one function
#: (``None`` switches a check off).
VALIDATORS: dict[str, dict[str, _Validator | None]] = {
    "logit": {"p": unit_interval},
    "self_information": {"p": unit_interval},
    "binary_entropy": {"p": unit_interval},
    "sigmoid_binary_cross_entropy": {"logits": not_nan, "labels": unit_interval},
    "binary_cross_entropy": {"probs": unit_interval, "labels": unit_interval},
    "smooth_labels": {"labels": _smooth_labels_labels},
    "linear_cross_entropy": {"labels": _linear_labels},
    "vocab_parallel_cross_entropy": {"labels": _vocab_parallel_labels},
    "vocab_parallel_linear_cross_entropy": {"labels": _vocab_parallel_labels},
}


def validators_of(fn: Any) -> dict[str, _Validator]:
    """The per-argument validators ``checked`` applies to ``fn``.

    :data:`BY_ARGUMENT` for each parameter of ``fn``, overridden by
    :data:`VALIDATORS` ``[fn.__name__]`` and then by ``fn.__jaxent_checks__``
    (a mapping declared next to the function, if any).
    """
    params = inspect.signature(fn).parameters
    table: dict[str, _Validator | None] = {n: BY_ARGUMENT[n] for n in params if n in BY_ARGUMENT}
    table.update(VALIDATORS.get(getattr(fn, "__name__", ""), {}))
    table.update(getattr(fn, "__jaxent_checks__", {}))
    return {n: v for n, v in table.items() if v is not None and n in params}


# --------------------------------------------------------------------------- the wrapper


def _lookup(fn: Any) -> tuple[str, dict[str, _Validator]]:
    import jaxent  # the public namespace (imported late: jaxent imports this module)

    name = getattr(fn, "__name__", None)
    public = (
        isinstance(name, str) and not name.startswith("_") and getattr(jaxent, name, None) is fn
    )
    if not public or not inspect.isfunction(fn) or name == "checked":
        known = ", ".join(
            sorted(
                n
                for n in dir(jaxent)
                if not n.startswith("_")
                and inspect.isfunction(getattr(jaxent, n))
                and n != "checked"
            )
        )
        raise ValueError(
            f"jaxent.checked does not know {fn!r}: it validates the arguments of the"
            f" public functions of jaxent by name ({known})."
        )
    assert isinstance(name, str)  # public: a str name
    return name, validators_of(fn)


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


class _CheckFailed(ValueError):
    """Raised inside the run-time callback of a failed check (under ``jit``)."""


class _DropOwnCallbackLogs(logging.Filter):
    """Drops JAX's "callback failed" log record (with its long traceback) for our checks.

    JAX logs every exception raised in a ``jax.debug.callback`` before the
    runtime raises it; for a failed check the user should read the one-line
    message first, so that record is dropped (only for :class:`_CheckFailed`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, _CheckFailed):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


for _logger in ("jax._src.debugging", "jax._src.callback"):
    logging.getLogger(_logger).addFilter(_DropOwnCallbackLogs())


def _throw(err: checkify.Error) -> None:
    msg = err.get()
    if msg is None:
        return
    first = msg.split("\n", 1)[0]
    # The runtime wraps the exception in a JaxRuntimeError whose text starts
    # with XLA's "INTERNAL: CpuCallback error ..." and the Python stack; the
    # message naming the argument and the index goes to stderr first.
    sys.stderr.write(f"jaxent.checked: {first}\n")
    sys.stderr.flush()
    raise _CheckFailed(f"jaxent.checked: {first}")


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
    * standard deviations, ``logit_softcap``, ``temperature``: finite and > 0;
      weights and ``z_loss``: >= 0; smoothing factors: in [0, 1); ``beta``: in
      [0, 1]; ``base``: finite, > 0, != 1; log-probabilities: no NaN, no
      ``+inf``, and ``log_p``/``log_sampler`` of ``kl_estimate`` finite (a
      drawn sample has probability > 0).

    The validators come from what each argument's name means
    (:data:`BY_ARGUMENT`), with per-function exceptions (:data:`VALIDATORS`).

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
        ``jax.errors.JaxRuntimeError`` whose message ends with the same text;
        the one-line message is printed on stderr first (JAX's own log record
        of the callback's traceback is dropped for these errors).
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
        if any(_checks.is_tracer(v) for v in jax.tree.leaves(arguments)):
            err, _ = checkified(arguments)
            if under_trace == "checkify":
                checkify.check_error(err)
            else:
                jax.debug.callback(_throw, err)
        else:
            # Validated arguments and masks are traced; structural ones
            # (``ignore_index=np.int64(-100)``, ``num_classes``) stay static.
            dyn_names = tuple(
                k for k, v in arguments.items() if _is_array(v) and (k in table or k == "where")
            )
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
