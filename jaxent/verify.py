r"""Checking a closed-form derivative against autodiff and finite differences.

:func:`verify` takes a registered derivation (by name) or any user-supplied
pair ``(function, claimed_derivative)`` and compares, in float64, on random
and on edge-case inputs:

* the claim with ``jax.jacrev`` of the plain definition (``autodiff``);
* the claim with central finite differences of the plain definition (``fd``),
  :math:`\frac{f(x + h e_i) - f(x - h e_i)}{2h}` with
  :math:`h = 10^{-6}\max(1, |x_i|)`, wherever both evaluations are finite;
* the claim with ``jax.jacrev`` and ``jax.jacfwd`` of the function as jaxent
  (or the user) differentiates it, i.e. through its custom rule (``library``).

Float64: the checks run inside ``with jax.enable_x64(True):``, a context
manager that restores the caller's setting on exit; the user's global
``jax_enable_x64`` flag is never changed. Floating inputs are converted to
float64 inside the context.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxent import derivations as _derivations
from jaxent.derivations import Case, Derivation

Array = jax.Array

#: Default tolerances: |claim - reference| <= atol + rtol |reference|, elementwise.
AUTODIFF_TOL = (1e-7, 1e-10)  # (rtol, atol)
FD_TOL = (1e-5, 1e-7)
FD_STEP = 1e-6


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """The comparison on one input.

    Errors are the maximum absolute error and the normwise relative error
    (max absolute error / max absolute reference value) over every compared
    element; ``None`` where the comparison was not made.

    Attributes:
      label: the input's name (``"random 0"``, ``"-inf logits"``...).
      passed: every comparison made is within tolerance and the claim has no NaN.
      abs_error_autodiff, rel_error_autodiff: vs autodiff of the plain definition.
      abs_error_fd, rel_error_fd: vs central finite differences.
      abs_error_library, rel_error_library: vs jacrev/jacfwd of the function.
      fd_skipped: elements where finite differences are undefined (an
        evaluation is not finite), not compared.
      message: what failed, or a note about the input.
    """

    label: str
    passed: bool
    abs_error_autodiff: float | None
    rel_error_autodiff: float | None
    abs_error_fd: float | None
    rel_error_fd: float | None
    abs_error_library: float | None
    rel_error_library: float | None
    fd_skipped: int = 0
    message: str = ""


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`: maxima over the inputs, and every input's details.

    Attributes:
      name: the derivation's name.
      formula: the claimed derivative in words (empty for user pairs without one).
      passed: all inputs passed.
      max_abs_error_autodiff, max_rel_error_autodiff: vs autodiff of the plain definition.
      max_abs_error_fd, max_rel_error_fd: vs central finite differences
        (``None`` if no input allowed them).
      max_abs_error_library, max_rel_error_library: vs jacrev/jacfwd of the
        function (``None`` when the function is its own plain definition).
      details: one :class:`CaseResult` per input.
    """

    name: str
    formula: str
    passed: bool
    max_abs_error_autodiff: float | None
    max_rel_error_autodiff: float | None
    max_abs_error_fd: float | None
    max_rel_error_fd: float | None
    max_abs_error_library: float | None
    max_rel_error_library: float | None
    details: tuple[CaseResult, ...]

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite floats become strings)."""
        return _jsonable(dataclasses.asdict(self))

    def __str__(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [
            f"{self.name}: {status}  {self.formula}".rstrip(),
            f"  max error vs autodiff: {_fmt(self.max_abs_error_autodiff)} abs,"
            f" {_fmt(self.max_rel_error_autodiff)} rel",
            f"  max error vs finite differences: {_fmt(self.max_abs_error_fd)} abs,"
            f" {_fmt(self.max_rel_error_fd)} rel",
        ]
        if self.max_abs_error_library is not None:
            lines.append(
                f"  max error vs the function's own derivative: "
                f"{_fmt(self.max_abs_error_library)} abs, {_fmt(self.max_rel_error_library)} rel"
            )
        for c in self.details:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(
                f"    [{mark}] {c.label}: autodiff {_fmt(c.abs_error_autodiff)},"
                f" fd {_fmt(c.abs_error_fd)}, library {_fmt(c.abs_error_library)}"
                + (f"  ({c.message})" if c.message else "")
            )
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


# --------------------------------------------------------------------------- comparisons


@dataclasses.dataclass(frozen=True)
class _Cmp:
    abs_err: float
    rel_err: float
    ok: bool
    skipped: int
    message: str = ""


def _compare(
    claim: Sequence[Any], ref: Sequence[Any], rtol: float, atol: float, skip_nan: bool
) -> _Cmp:
    """Compares tuples of arrays; equal values (including equal infinities) agree.

    NaN in ``claim`` always fails; NaN in ``ref`` is skipped if ``skip_nan``
    (finite differences undefined there) and fails otherwise.
    """
    abs_err, scale, ok, skipped, msgs = 0.0, 0.0, True, 0, []
    for i, (c, r) in enumerate(zip(claim, ref, strict=True)):
        c = np.asarray(c, np.float64)
        r = np.asarray(r, np.float64)
        if c.shape != r.shape:
            if c.size != r.size:
                return _Cmp(math.inf, math.inf, False, 0, f"shape {c.shape} != {r.shape}")
            c = c.reshape(r.shape)
        nan_r = np.isnan(r)
        if nan_r.any() and not skip_nan:
            ok = False
            msgs.append(f"reference has NaN (argument {i})")
        if np.isnan(c).any():
            ok = False
            msgs.append(f"claim has NaN (argument {i})")
        live = ~nan_r
        skipped += int(nan_r.sum())
        c, r = c[live], r[live]
        with np.errstate(invalid="ignore"):
            diff = np.where(c == r, 0.0, np.abs(c - r))
        diff = np.where(np.isnan(diff), np.inf, diff)
        if diff.size:
            abs_err = max(abs_err, float(diff.max()))
            fin = np.isfinite(r)
            if fin.any():
                scale = max(scale, float(np.abs(r[fin]).max()))
            bound = atol + rtol * np.where(fin, np.abs(r), 0.0)
            if (diff > bound).any():
                ok = False
    rel_err = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf)
    return _Cmp(abs_err, rel_err, ok, skipped, "; ".join(msgs))


def _fd_jacobian(f: Callable[..., Array], args: list[Any], argnum: int, step: float) -> Array:
    """Central-difference Jacobian of ``f`` in ``args[argnum]``: ``out.shape + x.shape``.

    Elements where either evaluation is not finite are NaN (undefined).
    """
    x = jnp.asarray(args[argnum])
    flat = x.reshape(-1)
    n = flat.size
    h = step * jnp.maximum(1.0, jnp.where(jnp.isfinite(flat), jnp.abs(flat), 1.0))
    shifts = jnp.diag(h)
    base = jnp.broadcast_to(flat[None, :], (n, n))
    points = jnp.concatenate([base + shifts, base - shifts]).reshape((2 * n, *x.shape))

    def at(xi: Array) -> Array:
        a = list(args)
        a[argnum] = xi
        return f(*a)

    out = jax.vmap(at)(points)
    plus, minus = out[:n], out[n:]
    hb = h.reshape((n,) + (1,) * (out.ndim - 1))
    d = jnp.where(jnp.isfinite(plus) & jnp.isfinite(minus), (plus - minus) / (2 * hb), jnp.nan)
    d = jnp.moveaxis(d, 0, -1)  # out.shape + (n,)
    return d.reshape(d.shape[:-1] + x.shape)


def _to_x64(x: Any) -> Any:
    if x is None or isinstance(x, (bool, np.bool_)):
        return x
    a = np.asarray(x)
    if a.dtype.kind == "f":
        return jnp.asarray(a, jnp.float64)
    if a.dtype.kind in "iu":
        return jnp.asarray(a, jnp.int64)
    return jnp.asarray(a)


def _check_case(d: Derivation, case: Case, tol: dict[str, float], fd_step: float) -> CaseResult:
    args = [_to_x64(a) for a in case.args]
    argnums = d.argnums
    claim = tuple(d.closed_form(*args))
    if len(claim) != len(argnums):
        return CaseResult(
            case.label, False, None, None, None, None, None, None, 0,
            f"closed form returned {len(claim)} arrays for {len(argnums)} argnums",
        )  # fmt: skip
    ref = jax.jacrev(d.plain, argnums=argnums)(*args)
    compared = range(len(argnums))
    if case.reference_argnums is not None:
        compared = [i for i, a in enumerate(argnums) if a in case.reference_argnums]
    ad = _compare(
        [claim[i] for i in compared],
        [ref[i] for i in compared],
        tol["rtol"],
        tol["atol"],
        skip_nan=False,
    )
    fd = None
    if case.finite_differences:
        fds = [_fd_jacobian(d.plain, args, a, fd_step) for a in argnums]
        fd = _compare(
            [claim[i] for i in compared],
            [fds[i] for i in compared],
            tol["fd_rtol"],
            tol["fd_atol"],
            skip_nan=True,
        )
    lib = None
    if d.function is not d.plain:
        lib = _compare(
            claim,
            jax.jacrev(d.function, argnums=argnums)(*args),
            tol["rtol"],
            tol["atol"],
            skip_nan=False,
        )
        if d.forward_mode:
            lib = _worst([lib, *_forward_checks(d, args, claim, tol)])
    parts = [ad] + [c for c in (fd, lib) if c is not None]
    passed = all(c.ok for c in parts)
    msgs = [m for m in (ad.message, lib.message if lib else "") if m]
    if not passed:
        failed = [n for n, c in (("autodiff", ad), ("fd", fd), ("library", lib)) if c and not c.ok]
        msgs.insert(0, "mismatch vs " + ", ".join(failed))
    elif case.note:
        msgs.append(case.note)
    return CaseResult(
        label=case.label,
        passed=passed,
        abs_error_autodiff=ad.abs_err,
        rel_error_autodiff=ad.rel_err,
        abs_error_fd=None if fd is None else fd.abs_err,
        rel_error_fd=None if fd is None else fd.rel_err,
        abs_error_library=None if lib is None else lib.abs_err,
        rel_error_library=None if lib is None else lib.rel_err,
        fd_skipped=0 if fd is None else fd.skipped,
        message="; ".join(msgs),
    )


def _worst(cmps: list[_Cmp]) -> _Cmp:
    worst = max(cmps, key=lambda c: (not c.ok, c.abs_err))
    msgs = "; ".join(dict.fromkeys(c.message for c in cmps if c.message))
    return dataclasses.replace(worst, message=msgs)


def _forward_checks(
    d: Derivation, args: list[Any], claim: tuple[Any, ...], tol: dict[str, float]
) -> list[_Cmp]:
    """``jax.jacfwd`` of the function, one argument at a time.

    An argument whose claimed derivative has an infinite entry is skipped:
    forward mode multiplies every partial by a tangent, and ``inf * 0`` is NaN
    in every other direction.
    """
    out = []
    for i, a in enumerate(d.argnums):
        if not np.all(np.isfinite(np.asarray(claim[i]))):
            out.append(
                _Cmp(0.0, 0.0, True, 0, f"jacfwd skipped in argument {a} (infinite partial)")
            )
            continue
        g = jax.jacfwd(d.function, argnums=a)(*args)
        out.append(_compare([claim[i]], [g], tol["rtol"], tol["atol"], skip_nan=False))
    return out


def _max(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _run(
    d: Derivation,
    cases: Sequence[Case],
    tol: dict[str, float],
    fd_step: float,
) -> VerifyResult:
    with jax.enable_x64(True):
        details = tuple(_check_case(d, c, tol, fd_step) for c in cases)
    return VerifyResult(
        name=d.name,
        formula=d.formula,
        passed=all(c.passed for c in details),
        max_abs_error_autodiff=_max([c.abs_error_autodiff for c in details]),
        max_rel_error_autodiff=_max([c.rel_error_autodiff for c in details]),
        max_abs_error_fd=_max([c.abs_error_fd for c in details]),
        max_rel_error_fd=_max([c.rel_error_fd for c in details]),
        max_abs_error_library=_max([c.abs_error_library for c in details]),
        max_rel_error_library=_max([c.rel_error_library for c in details]),
        details=details,
    )


def _as_tuple_fn(fn: Callable[..., Any], single: bool) -> Callable[..., tuple[Any, ...]]:
    if not single:
        return lambda *a: tuple(fn(*a))
    return lambda *a: (fn(*a),)


# --------------------------------------------------------------------------- public


def verify(
    target: str | Derivation | Callable[..., Any],
    derivative: Callable[..., Any] | None = None,
    *,
    inputs: Sequence[tuple[Any, ...]] | None = None,
    sample: Callable[[np.random.Generator], tuple[Any, ...]] | None = None,
    argnums: int | Sequence[int] = 0,
    plain: Callable[..., Any] | None = None,
    name: str | None = None,
    num_random: int = 3,
    seed: int = 0,
    edge_cases: bool = True,
    rtol: float = AUTODIFF_TOL[0],
    atol: float = AUTODIFF_TOL[1],
    fd_rtol: float = FD_TOL[0],
    fd_atol: float = FD_TOL[1],
    fd_step: float = FD_STEP,
) -> VerifyResult:
    r"""Checks a closed-form derivative against autodiff and finite differences, in float64.

    Two ways to call it:

    * ``verify("softmax_cross_entropy")`` (or a :class:`~jaxent.derivations.Derivation`):
      a registered derivation of :mod:`jaxent.derivations`, on ``num_random``
      random inputs and its edge cases.
    * ``verify(fn, derivative, inputs=[(x, y), ...], argnums=0)``: your own
      derivation. ``derivative(*args)`` must return the derivative of
      ``fn(*args)`` with respect to ``args[argnums]``: the gradient for a
      scalar output, the Jacobian (``out.shape + arg.shape``) otherwise; a
      tuple of them if ``argnums`` is a tuple. ``inputs`` lists argument
      tuples; ``sample(rng)`` draws ``num_random`` more.

    For each input the claim is compared with (a) ``jax.jacrev`` of the plain
    definition (``plain``, default ``fn``), (b) central finite differences of
    it and (c) when ``plain`` is given, ``jax.jacrev``/``jax.jacfwd`` of
    ``fn`` itself (which go through ``fn``'s custom rule if it has one). An
    input passes if, elementwise,
    :math:`|\text{claim} - \text{ref}| \le \text{atol} + \text{rtol}\,|\text{ref}|`
    for every comparison and the claim has no NaN; equal infinities agree.
    Finite differences are skipped where an evaluation is not finite.

    Everything runs under ``jax.enable_x64(True)`` (restored on exit: the
    global ``jax_enable_x64`` flag is left as it was); floating inputs are
    cast to float64.

    Args:
      target: a registered name, a :class:`Derivation`, or a function.
      derivative: the claimed derivative (required with a function).
      inputs: argument tuples to check at (with a function).
      sample: ``sample(rng)`` returns an argument tuple (with a function).
      argnums: the differentiated positional argument(s) (with a function).
      plain: a reference definition of ``fn`` without custom rules.
      name: a name for the result (default: ``fn.__name__``).
      num_random: random inputs to draw (with a registered derivation, or ``sample``).
      seed: seed of ``np.random.default_rng`` for the random inputs.
      edge_cases: include a registered derivation's edge cases.
      rtol, atol: tolerances vs autodiff (and vs the function's own derivative).
      fd_rtol, fd_atol: tolerances vs finite differences.
      fd_step: relative step :math:`h` of the finite differences.

    Returns:
      A :class:`VerifyResult` (truthy iff it passed).

    Raises:
      KeyError: an unknown registered name.
      ValueError: a function without ``derivative`` or without any input.

    Example:
      >>> import jax, jax.numpy as jnp, jaxent
      >>> def focal(z, y):  # binary focal loss, gamma = 2, y in {0, 1}
      ...     p = jax.nn.sigmoid(z)
      ...     pt = jnp.where(y == 1, p, 1 - p)
      ...     return -jnp.sum((1 - pt) ** 2 * jnp.log(pt))
      >>> def focal_grad(z, y):  # derived by hand
      ...     p = jax.nn.sigmoid(z)
      ...     pt = jnp.where(y == 1, p, 1 - p)
      ...     s = jnp.where(y == 1, 1.0, -1.0)
      ...     return s * (1 - pt) ** 2 * (2 * pt * jnp.log(pt) + pt - 1)
      >>> z, y = jnp.array([0.3, -2.0, 4.0]), jnp.array([1, 0, 0])
      >>> jaxent.verify(focal, focal_grad, inputs=[(z, y)]).passed
      True
    """
    tol = {"rtol": rtol, "atol": atol, "fd_rtol": fd_rtol, "fd_atol": fd_atol}
    if isinstance(target, str):
        target = _derivations.get(target)
    if isinstance(target, Derivation):
        d = target
        rng = np.random.default_rng(seed)
        cases = [Case(f"random {i}", d.sample(rng)) for i in range(num_random)]
        if edge_cases:
            cases += list(d.edge_cases)
        cases += [Case(f"input {i}", tuple(a)) for i, a in enumerate(inputs or ())]
        return _run(d, cases, tol, fd_step)
    if not callable(target):
        raise TypeError(f"`target` must be a name, a Derivation or a function, got {target!r}.")
    if derivative is None:
        raise ValueError("verify(fn, derivative, ...) needs the claimed `derivative`.")
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    cases = [Case(f"input {i}", tuple(a)) for i, a in enumerate(inputs or ())]
    if sample is not None:
        rng = np.random.default_rng(seed)
        cases += [Case(f"random {i}", tuple(sample(rng))) for i in range(num_random)]
    if not cases:
        raise ValueError("verify(fn, derivative, ...) needs `inputs` or `sample`.")
    d = Derivation(
        name=name or getattr(target, "__name__", "function"),
        formula="",
        latex="",
        function=target,
        closed_form=_as_tuple_fn(derivative, single),
        plain=target if plain is None else plain,
        argnums=nums,
        sample=lambda rng: (),
    )
    return _run(d, cases, tol, fd_step)


def verify_all(
    names: Sequence[str] | None = None, *, num_random: int = 2, seed: int = 0
) -> list[VerifyResult]:
    """Runs :func:`verify` on every registered derivation (or those matching ``names``).

    Args:
      names: names or ``fnmatch`` patterns (see :func:`jaxent.derivations.select`).
      num_random: random inputs per derivation, besides its edge cases.
      seed: seed of the random inputs.

    Returns:
      One :class:`VerifyResult` per derivation, in registry order.
    """
    return [verify(d, num_random=num_random, seed=seed) for d in _derivations.select(names)]
