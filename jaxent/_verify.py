r"""Checking a closed-form derivative: the engine behind :func:`jaxent.verify`.

For each derivation, every input ("case") and every differentiated argument
*separately*, the claim is compared with independent references, in float64:

``autodiff``
  ``jax.jacrev`` of the plain definition; the error is also given in ULPs of
  float64 (normwise: max abs error / (eps64 max |reference|)).
``fd``
  central differences of the plain definition with Richardson extrapolation
  (:math:`R(h) = (4D(h/2) - D(h))/3`, error :math:`O(h^4)`), over a sweep of
  steps :math:`h \in \{10^3, 10^2, 10, 1\}\cdot\text{fd\_step}\cdot\max(1, |x_i|)`;
  the step whose estimate agrees best with the next one is used (chosen without
  looking at the claim).
``taylor``
  the Taylor remainder :math:`r(h) = |f(x + hv) - f(x) - h\langle g, v\rangle|`
  for a random direction :math:`v`; a right gradient makes it fall as
  :math:`h^2` (slope 2 on a log-log plot), a wrong one as :math:`h`. Passes at
  slope >= 1.9 (the slope of the smallest steps above rounding level).
``library_rev``, ``library_fwd``
  ``jax.jacrev`` / ``jax.jacfwd`` of the function itself (its custom rule).
``symbolic``
  the derivative of the derivation's sympy expression (optional extra
  ``jaxent[symbolic]``), lambdified to JAX.

Second order (rules with ``second_order``: the ``custom_jvp`` ones), on the
random inputs: Hessian symmetry, forward-over-reverse = reverse-over-reverse,
the Hessian-vector product against Richardson differences of the gradient, and
the Hessian of the plain definition. Transformation consistency: ``jit`` =
eager, ``vmap`` = a loop over the random inputs, output dtype = input dtype
(float32, bfloat16, float16). Low precision: the error of the function's own
gradient in float32/bfloat16/float16 against the float64 closed form, in ULPs
of that dtype (a measured fact; pass/fail only where the derivation states a
budget).

Speed: the inputs of a derivation are grouped by structure (shapes, dtypes,
``None``) and each group is checked in one ``jax.jit(jax.vmap(...))`` call.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
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
TAYLOR_MIN_SLOPE = 1.9
#: Second-order and transformation tolerances (rtol, atol).
SECOND_ORDER_TOL = (1e-7, 1e-10)
TRANSFORM_TOL = (1e-12, 1e-300)
LOW_PRECISION_DTYPES = ("float32", "bfloat16", "float16")
_EPS64 = float(np.finfo(np.float64).eps)
_TAYLOR_H = tuple(10.0 ** -np.arange(1.5, 6.01, 0.5))
_FD_SWEEP = (1e3, 1e2, 1e1, 1.0)


# =========================================================================== results


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison: one reference, one differentiated argument, one input.

    Attributes:
      reference: ``autodiff``, ``fd``, ``taylor``, ``library_rev``,
        ``library_fwd``, ``symbolic``, ``hessian_symmetry``, ``fwd_over_rev``,
        ``hvp_fd``, ``hessian_plain``, ``jit``, ``vmap`` or ``dtype``.
      argument: the argument's name (from the plain definition's signature).
      error: normwise relative error, max |claim - ref| / max |ref| (for
        ``taylor``: the observed convergence slope; ``None`` if undetermined).
      abs_error: max |claim - ref| over compared elements.
      tolerance: the elementwise rtol (for ``taylor``: the minimum slope).
      passed: within tolerance (elementwise ``atol + rtol |ref|``), no NaN in the claim.
      ulps: for ``autodiff``, the normwise error in ULPs of float64.
      skipped: elements not compared (finite differences undefined there).
      note: what failed, or which step was used.
      table: for ``taylor``, ``((h, remainder), ...)``.
    """

    reference: str
    argument: str
    error: float | None
    abs_error: float | None
    tolerance: float
    passed: bool
    ulps: float | None = None
    skipped: int = 0
    note: str = ""
    table: tuple[tuple[float, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class LowPrecision:
    """The error of the function's own gradient in a low-precision dtype.

    Attributes:
      dtype: ``float32``, ``bfloat16`` or ``float16``.
      argument: the argument's name.
      ulps: max |g_dtype - g_float64| / (eps_dtype max |g_float64|) over the
        random inputs (inputs rounded to ``dtype`` first, for both).
      budget: the derivation's stated budget in ULPs (``None``: none stated).
      passed: within budget (``None`` without a budget); ``False`` if the
        output dtype is not the input dtype.
      output_dtype: the dtype of the function's value.
    """

    dtype: str
    argument: str
    ulps: float | None
    budget: float | None
    passed: bool | None
    output_dtype: str


@dataclasses.dataclass(frozen=True)
class CaseResult:
    """The comparison on one input.

    Errors are the maximum absolute error and the normwise relative error
    (max absolute error / max absolute reference value) over every compared
    element and argument; ``None`` where the comparison was not made.
    ``checks`` holds every comparison per argument and reference.

    Attributes:
      label: the input's name (``"random 0"``, ``"-inf logits"``...).
      passed: every comparison made is within tolerance and the claim has no NaN.
      abs_error_autodiff, rel_error_autodiff: vs autodiff of the plain definition.
      abs_error_fd, rel_error_fd: vs finite differences (Richardson).
      abs_error_library, rel_error_library: vs jacrev/jacfwd of the function.
      fd_skipped: elements where finite differences are undefined, not compared.
      message: what failed, or a note about the input.
      checks: every :class:`Check` (per argument and reference).
      taylor_slope: the smallest Taylor slope over the arguments (``None``: not run).
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
    checks: tuple[Check, ...] = ()
    taylor_slope: float | None = None


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`: maxima over the inputs, and every input's details.

    Attributes:
      name: the derivation's name.
      formula: the claimed derivative in words (empty for user pairs without one).
      passed: all inputs and all derivation-level checks passed.
      max_abs_error_autodiff, max_rel_error_autodiff: vs autodiff of the plain definition.
      max_abs_error_fd, max_rel_error_fd: vs finite differences (``None`` if no input allowed them).
      max_abs_error_library, max_rel_error_library: vs jacrev/jacfwd of the
        function (``None`` when the function is its own plain definition).
      details: one :class:`CaseResult` per input.
      function: the qualified name of the checked function (the user's, for
        a user derivation).
      checks: derivation-level checks (``jit``, ``vmap``, ``dtype``).
      low_precision: one :class:`LowPrecision` per dtype and argument.
      min_taylor_slope: the smallest Taylor slope over inputs and arguments.
      seconds: wall time of the check.

    Example:
      >>> import jaxent
      >>> result = jaxent.verify("softmax_cross_entropy", num_random=1, low_precision=False)
      >>> result.passed, result.name
      (True, 'softmax_cross_entropy')
      >>> result.min_taylor_slope > 1.9  # the remainder falls as h**2
      True
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
    function: str = ""
    checks: tuple[Check, ...] = ()
    low_precision: tuple[LowPrecision, ...] = ()
    min_taylor_slope: float | None = None
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite floats become strings)."""
        return _jsonable(dataclasses.asdict(self))

    def failures(self) -> list[str]:
        """One line per failed check: ``case / argument / reference: error > tolerance``."""
        out = []
        for c in self.details:
            out += [f"{c.label} / {k.argument} / {_describe(k)}" for k in c.checks if not k.passed]
        out += [f"{k.argument} / {_describe(k)}" for k in self.checks if not k.passed]
        out += [
            f"{lp.dtype} / {lp.argument}: {_fmt(lp.ulps)} ulps > budget {lp.budget}"
            for lp in self.low_precision
            if lp.passed is False
        ]
        return out

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
        if self.min_taylor_slope is not None:
            lines.append(f"  min Taylor slope: {self.min_taylor_slope:.2f}")
        for c in self.details:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(
                f"    [{mark}] {c.label}: autodiff {_fmt(c.abs_error_autodiff)},"
                f" fd {_fmt(c.abs_error_fd)}, library {_fmt(c.abs_error_library)}"
                + (f"  ({c.message})" if c.message else "")
            )
        lines += [f"    FAIL {f}" for f in self.failures() if " / " in f and "ulps" in f]
        return "\n".join(lines)


def _describe(k: Check) -> str:
    if k.reference == "taylor":
        return f"taylor: slope {_fmt2(k.error)} < {k.tolerance}" + (
            f" ({k.note})" if k.note else ""
        )
    return f"{k.reference}: {_fmt(k.error)} rel > rtol {k.tolerance:.0e}" + (
        f" ({k.note})" if k.note else ""
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _fmt2(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


# =========================================================================== comparisons


@dataclasses.dataclass(frozen=True)
class _Cmp:
    abs_err: float
    rel_err: float
    ok: bool
    skipped: int
    message: str = ""


def _compare(c: Any, r: Any, rtol: float, atol: float, skip_nan: bool) -> _Cmp:
    """Compares two arrays; equal values (including equal infinities) agree.

    NaN in ``c`` always fails; NaN in ``r`` is skipped if ``skip_nan``
    (finite differences undefined there) and fails otherwise.
    """
    c = np.asarray(c, np.float64)
    r = np.asarray(r, np.float64)
    if c.shape != r.shape:
        if c.size != r.size:
            return _Cmp(math.inf, math.inf, False, 0, f"shape {c.shape} != {r.shape}")
        c = c.reshape(r.shape)
    ok, msgs = True, []
    nan_r = np.isnan(r)
    if nan_r.any() and not skip_nan:
        ok = False
        msgs.append("reference has NaN")
    if np.isnan(c).any():
        ok = False
        msgs.append("claim has NaN")
    live = ~nan_r
    skipped = int(nan_r.sum())
    c, r = c[live], r[live]
    with np.errstate(invalid="ignore"):
        diff = np.where(c == r, 0.0, np.abs(c - r))
    diff = np.where(np.isnan(diff), np.inf, diff)
    abs_err, scale = 0.0, 0.0
    if diff.size:
        abs_err = float(diff.max())
        fin = np.isfinite(r)
        if fin.any():
            scale = float(np.abs(r[fin]).max())
        bound = atol + rtol * np.where(fin, np.abs(r), 0.0)
        if (diff > bound).any():
            ok = False
    rel_err = _rel(abs_err, scale, atol / rtol if rtol > 0 else 0.0)
    return _Cmp(abs_err, rel_err, ok, skipped, "; ".join(msgs))


def _rel(abs_err: float, scale: float, floor: float) -> float:
    """Normwise relative error; the scale is floored at atol / rtol (a zero gradient)."""
    scale = max(scale, floor)
    return abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else math.inf)


def _to_x64(x: Any) -> Any:
    if x is None or isinstance(x, (bool, np.bool_)):
        return x
    a = np.asarray(x)
    if a.dtype.kind == "f":
        return np.asarray(a, np.float64)
    if a.dtype.kind in "iu":
        return np.asarray(a, np.int64)
    return a


def _structure(args: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(
        None
        if a is None
        else ("py", a)
        if isinstance(a, (bool, np.bool_))
        else (a.shape, a.dtype.str)
        for a in args
    )


def _arg_names(d: Derivation) -> list[str]:
    for fn in (d.plain, d.function):
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            continue
        pos = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(pos) > max(d.argnums, default=0) and not any(
            p.kind == p.VAR_POSITIONAL for p in params
        ):
            return pos
    return [f"arg{i}" for i in range(max(d.argnums, default=0) + 1)]


def _generic(case: Case) -> bool:
    """Random or user-given inputs (not edge cases): where second order is checked."""
    return case.finite_differences and case.label.startswith(("random", "input"))


def _second_order(d: Derivation) -> bool:
    so = getattr(d, "second_order", None)
    return d.forward_mode if so is None else bool(so)


# =========================================================================== the batched core


def _replace(args: Sequence[Any], i: int, x: Any) -> list[Any]:
    a = list(args)
    a[i] = x
    return a


def _scalarize(f: Callable[..., Array], u: Array | None) -> Callable[..., Array]:
    if u is None:
        return f
    return lambda *a: jnp.sum(u * f(*a))


def _fd_richardson(f: Callable[..., Array], args: list[Any], a: int, rel_steps: Array) -> Array:
    """Richardson-extrapolated central differences, one estimate per step.

    Returns ``(len(rel_steps),) + out.shape + x.shape``; NaN where an evaluation
    is not finite.
    """
    x = args[a]
    flat = x.reshape(-1)
    n = flat.size
    scale = jnp.maximum(1.0, jnp.where(jnp.isfinite(flat), jnp.abs(flat), 1.0))
    eye = jnp.eye(n, dtype=flat.dtype)

    def at(xi: Array) -> Array:
        return f(*_replace(args, a, xi.reshape(x.shape)))

    def deriv(h_rel: Array) -> Array:
        h = h_rel * scale  # (n,)
        pts = jnp.concatenate([flat[None, :] + eye * h[:, None], flat[None, :] - eye * h[:, None]])
        out = jax.vmap(at)(pts)
        plus, minus = out[:n], out[n:]
        hb = h.reshape((n,) + (1,) * (out.ndim - 1))
        ok = jnp.isfinite(plus) & jnp.isfinite(minus)
        dd = jnp.where(ok, (plus - minus) / (2 * hb), jnp.nan)
        dd = jnp.moveaxis(dd, 0, -1)
        return dd.reshape(dd.shape[:-1] + x.shape)

    def richardson(h_rel: Array) -> Array:
        return (4.0 * deriv(h_rel / 2) - deriv(h_rel)) / 3.0

    return jax.vmap(richardson)(rel_steps)


def _direction(x: Array, key: Array) -> Array:
    n = jax.random.normal(key, x.shape, x.dtype)
    ax = jnp.abs(x)
    scale = jnp.where(jnp.isfinite(x) & (ax > 0), ax, 1.0)
    return jnp.where(jnp.isfinite(x), n * jnp.minimum(scale, 10.0), 0.0)


def _make_core(
    d: Derivation, flags: dict[str, bool], fd_steps: tuple[float, ...]
) -> Callable[..., dict[str, Any]]:
    """One function computing every reference for one input (vmapped over inputs)."""
    argnums = d.argnums
    lib = d.function is not d.plain

    def core(args: list[Any], key: Array) -> dict[str, Any]:
        out: dict[str, Any] = {}
        value = d.plain(*args)
        out_shape = jnp.shape(value)
        k_u, k_v, k_w = jax.random.split(key, 3)
        u = None if out_shape == () else jax.random.normal(k_u, out_shape, jnp.float64)
        out["u"] = jnp.zeros(()) if u is None else u
        out["claim"] = tuple(d.closed_form(*args))
        out["autodiff"] = jax.jacrev(d.plain, argnums=argnums)(*args)
        if lib:
            out["library_rev"] = jax.jacrev(d.function, argnums=argnums)(*args)
            if d.forward_mode:
                out["library_fwd"] = tuple(
                    jax.jacfwd(d.function, argnums=a)(*args) for a in argnums
                )
        steps = jnp.asarray(fd_steps, jnp.float64)
        out["fd"] = tuple(_fd_richardson(d.plain, list(args), a, steps) for a in argnums)
        # Taylor: the plain definition along v, per argument (the claim enters later).
        fu = _scalarize(d.plain, u)
        hs = jnp.asarray(_TAYLOR_H, jnp.float64)
        tay = []
        for i, a in enumerate(argnums):
            x = args[a]
            v = _direction(x, jax.random.fold_in(k_v, i))
            fx = fu(*args)
            fh = jax.vmap(lambda h, a=a, x=x, v=v: fu(*_replace(args, a, x + h * v)))(hs)
            tay.append((v, fx, fh))
        out["taylor"] = tuple(tay)
        if flags["second_order"]:
            fl = _scalarize(d.function, u)
            fp = _scalarize(d.plain, u)
            so = []
            for i, a in enumerate(argnums):
                x = args[a]
                v = _direction(x, jax.random.fold_in(k_w, i))
                g = jax.grad(fl, argnums=a)
                h_rr = jax.jacrev(g, argnums=a)(*args)
                h_fr = jax.jacfwd(g, argnums=a)(*args)
                h_pl = jax.hessian(fp, argnums=a)(*args)
                hvp = jax.jvp(lambda xx, a=a, g=g: g(*_replace(args, a, xx)), (x,), (v,))[1]

                def g_dir(t: Array, a: int = a, x: Array = x, v: Array = v, g: Any = g) -> Array:
                    return g(*_replace(args, a, x + t * v))

                st = jnp.asarray(fd_steps, jnp.float64)
                ts = jnp.concatenate([st, -st, st / 2, -st / 2])
                gs = jax.vmap(g_dir)(ts).reshape((4, len(fd_steps)) + jnp.shape(x))
                shp = (len(fd_steps),) + (1,) * jnp.ndim(x)
                d_h = (gs[0] - gs[1]) / (2 * st.reshape(shp))
                d_h2 = (gs[2] - gs[3]) / (st.reshape(shp))
                fdh = (4.0 * d_h2 - d_h) / 3.0
                so.append((h_rr, h_fr, h_pl, hvp, fdh))
            out["second"] = tuple(so)
        return out

    return core


_JIT = True
#: XLA options for the checks' one-off programs: compile time dominates, run time is ~ms.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


#: The persistent XLA cache of ``python -m jaxent verify`` (``JAXENT_VERIFY_CACHE=0`` turns
#: it off, ``JAXENT_VERIFY_CACHE=DIR`` moves it). Only set if the caller has not set one;
#: :func:`verify` itself never changes the global configuration.
_CACHE_DEFAULT = "~/.cache/jaxent/xla"


def enable_cache() -> None:
    import os  # noqa: PLC0415

    where = os.environ.get("JAXENT_VERIFY_CACHE", _CACHE_DEFAULT)
    if where in ("0", "") or getattr(jax.config, "jax_compilation_cache_dir", None):
        return
    path = os.path.expanduser(where)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _compiled(f: Callable[..., Any]) -> Callable[..., Any]:
    if not _JIT:
        return f

    def run(*args: Any) -> Any:
        return jax.jit(f).lower(*args).compile(compiler_options=_COMPILER_OPTIONS)(*args)

    return run


def _stack(cases_args: list[list[Any]]) -> list[Any]:
    first = cases_args[0]
    out = []
    for i, a in enumerate(first):
        if a is None or isinstance(a, (bool, np.bool_)):
            out.append(a)
        else:
            out.append(jnp.asarray(np.stack([c[i] for c in cases_args])))
    return out


def _in_axes(stacked: list[Any]) -> list[Any]:
    return [None if (a is None or isinstance(a, (bool, np.bool_))) else 0 for a in stacked]


@dataclasses.dataclass
class _Prepared:
    d: Derivation
    cases: list[Case]
    args: list[list[Any]]
    refs: list[dict[str, Any]]  # one per case, numpy
    names: list[str]
    tol: dict[str, float]
    fd_steps: tuple[float, ...]
    symbolic: list[Any] | None  # per case: tuple of arrays or None
    errors: list[str]


def _index(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def _prepare(
    d: Derivation, cases: Sequence[Case], tol: dict[str, float], fd_step: float, seed: int
) -> _Prepared:
    args = [[_to_x64(a) for a in c.args] for c in cases]
    names = _arg_names(d)
    fd_steps = tuple(fd_step * s for s in _FD_SWEEP)
    refs: list[dict[str, Any] | None] = [None] * len(cases)
    errors: list[str] = []
    groups: dict[Any, list[int]] = {}
    for i, a in enumerate(args):
        groups.setdefault(_structure(a), []).append(i)
    for idx in groups.values():
        is_random = any(_generic(cases[i]) for i in idx)
        flags = {"second_order": _second_order(d) and is_random}
        core = _make_core(d, flags, fd_steps)
        stacked = _stack([args[i] for i in idx])
        keys = jax.random.split(jax.random.key(seed), len(idx))
        ax = _in_axes(stacked)
        try:
            res = _compiled(
                jax.vmap(lambda *a, core=core: core(list(a[:-1]), a[-1]), in_axes=(*ax, 0))
            )(*stacked, keys)
            res = jax.tree.map(np.asarray, res)
            for j, i in enumerate(idx):
                refs[i] = _index(res, j)
        except Exception:  # noqa: BLE001 - e.g. a primitive without a batching rule
            one = _compiled(lambda *a, core=core: core(list(a[:-1]), a[-1]))
            for j, i in enumerate(idx):
                try:
                    refs[i] = jax.tree.map(np.asarray, one(*args[i], keys[j]))
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{cases[i].label}: {type(e).__name__}: {e}")
                    refs[i] = {}
    sym = _symbolic_values(d, args) if getattr(d, "symbolic", None) is not None else None
    return _Prepared(d, list(cases), args, refs, names, tol, fd_steps, sym, errors)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- symbolic


def symbolic_gradient(d: Derivation) -> tuple[Any, list[Any], list[Any]]:
    """The derivation's sympy expression, its symbols per argument and its derivatives.

    Requires sympy (``pip install jaxent[symbolic]``).

    Returns:
      ``(expr, symbols, grads)``: ``symbols[i]`` is the symbol (or list of
      symbols) standing for positional argument ``i`` (``None`` if it is not
      symbolic); ``grads[k]`` is the list of partial derivatives in
      ``argnums[k]`` (one per symbol).
    """
    import sympy  # noqa: PLC0415 - optional dependency

    expr, symbols = d.symbolic(sympy)  # type: ignore[misc]
    grads = []
    for a in d.argnums:
        s = symbols[a]
        ss = list(s) if isinstance(s, (list, tuple)) else [s]
        grads.append([sympy.diff(expr, x) for x in ss])
    return expr, list(symbols), grads


def _symbolic_values(d: Derivation, args: list[list[Any]]) -> list[Any]:
    try:
        import sympy  # noqa: PLC0415
    except ImportError:
        return [None] * len(args)
    _, symbols, grads = symbolic_gradient(d)
    flat_syms: list[Any] = []
    for s in symbols:
        if s is None:
            continue
        flat_syms += list(s) if isinstance(s, (list, tuple)) else [s]
    fns = [sympy.lambdify(flat_syms, g, modules="jax") for g in grads]
    out = []
    for a in args:
        vals: list[Any] = []
        ok = True
        for s, x in zip(symbols, a, strict=False):
            if s is None:
                ok &= x is None
                continue
            if x is None:
                ok = False
                break
            xs = np.asarray(x, np.float64).reshape(-1)
            n = len(s) if isinstance(s, (list, tuple)) else 1
            if xs.size != n or not np.all(np.isfinite(xs)):
                ok = False
                break
            vals += list(xs)
        if not ok:
            out.append(None)
            continue
        out.append(
            tuple(
                np.asarray(fn(*[jnp.float64(v) for v in vals]), np.float64).reshape(
                    np.shape(a[argn])
                )
                for fn, argn in zip(fns, d.argnums, strict=True)
            )
        )
    return out


# --------------------------------------------------------------------------- judging


def _taylor(v: np.ndarray, fx: float, fh: np.ndarray, g: np.ndarray, argument: str) -> Check:
    hs = np.asarray(_TAYLOR_H)
    if np.size(g) != np.size(v):
        return Check("taylor", argument, None, None, TAYLOR_MIN_SLOPE, False, note="shape")
    g = np.asarray(g, np.float64).reshape(np.shape(v))
    gv = float(np.sum(np.where(v != 0, g * v, 0.0)))
    with np.errstate(invalid="ignore", over="ignore"):
        rem = np.abs(fh - fx - hs * gv)
    floor = 1e3 * _EPS64 * (np.abs(fx) + np.abs(fh) + np.abs(hs * gv)) + 1e-300
    table = tuple((float(h), float(r)) for h, r in zip(hs, rem, strict=True))
    if not np.isfinite(gv) or np.isnan(g[v != 0]).any():
        return Check(
            "taylor",
            argument,
            None,
            None,
            TAYLOR_MIN_SLOPE,
            False,
            note="claim not finite",
            table=table,
        )
    valid = np.isfinite(rem) & np.isfinite(fh) & (rem > floor)
    pairs = [i for i in range(len(hs) - 1) if valid[i] and valid[i + 1]]
    if not pairs:
        if np.all(np.isfinite(fh)) and np.all(rem <= floor):
            return Check(
                "taylor", argument, None, 0.0, TAYLOR_MIN_SLOPE, True,
                note="remainder at rounding level at every h (f is linear along v)", table=table,
            )  # fmt: skip
        return Check(
            "taylor", argument, None, None, TAYLOR_MIN_SLOPE, True,
            note="undetermined (f not finite along v)", table=table,
        )  # fmt: skip
    i = pairs[-1]
    slope = float(np.log(rem[i] / rem[i + 1]) / np.log(hs[i] / hs[i + 1]))
    return Check(
        "taylor", argument, slope, float(rem[i + 1]), TAYLOR_MIN_SLOPE, slope >= TAYLOR_MIN_SLOPE,
        note=f"h = {hs[i]:.1e} -> {hs[i + 1]:.1e}", table=table,
    )  # fmt: skip


def _contract(u: np.ndarray, jac: np.ndarray) -> np.ndarray:
    u = np.asarray(u)
    if u.ndim == 0:
        return np.asarray(jac)
    return np.tensordot(u, jac, axes=u.ndim)


def _judge_case(p: _Prepared, i: int, claim: Sequence[Any] | None) -> CaseResult:
    d, case, ref, tol = p.d, p.cases[i], p.refs[i], p.tol
    names = p.names
    if not ref:
        return CaseResult(case.label, False, None, None, None, None, None, None,
                          message="; ".join(e for e in p.errors if e.startswith(case.label)))  # fmt: skip
    claim = tuple(ref["claim"]) if claim is None else tuple(claim)
    if len(claim) != len(d.argnums):
        return CaseResult(
            case.label, False, None, None, None, None, None, None, 0,
            f"closed form returned {len(claim)} arrays for {len(d.argnums)} argnums",
        )  # fmt: skip
    compared = [k for k, a in enumerate(d.argnums)
                if case.reference_argnums is None or a in case.reference_argnums]  # fmt: skip
    checks: list[Check] = []
    ad, fd, lib = [], [], []
    for k, a in enumerate(d.argnums):
        name = names[a] if a < len(names) else f"arg{a}"
        c = np.asarray(claim[k], np.float64)
        if k in compared:
            r = _compare(c, ref["autodiff"][k], tol["rtol"], tol["atol"], skip_nan=False)
            ad.append(r)
            checks.append(Check("autodiff", name, r.rel_err, r.abs_err, tol["rtol"], r.ok,
                                ulps=r.rel_err / _EPS64, note=r.message))  # fmt: skip
            if case.finite_differences:
                est = np.asarray(ref["fd"][k])  # (steps,) + jac shape
                with np.errstate(invalid="ignore"):
                    disc = [np.nanmax(np.abs(est[j] - est[j + 1]), initial=0.0)
                            for j in range(len(est) - 1)]  # fmt: skip
                j = int(np.nanargmin(disc)) if np.isfinite(disc).any() else len(est) - 1
                r = _compare(c, est[j], tol["fd_rtol"], tol["fd_atol"], skip_nan=True)
                fd.append(r)
                checks.append(Check("fd", name, r.rel_err, r.abs_err, tol["fd_rtol"], r.ok,
                                    skipped=r.skipped,
                                    note=f"Richardson, h = {p.fd_steps[j]:.0e}"
                                    + (f"; {r.message}" if r.message else "")))  # fmt: skip
                if _generic(case):  # at edge points rounding of intermediates swamps r(h)
                    v, fx, fh = ref["taylor"][k]
                    g = _contract(ref["u"], c)
                    checks.append(_taylor(np.asarray(v), float(fx), np.asarray(fh), g, name))
            if p.symbolic is not None and p.symbolic[i] is not None:
                r = _compare(c, p.symbolic[i][k], tol["rtol"], tol["atol"], skip_nan=False)
                checks.append(Check("symbolic", name, r.rel_err, r.abs_err, tol["rtol"], r.ok,
                                    note=r.message))  # fmt: skip
        if "library_rev" in ref:
            r = _compare(c, ref["library_rev"][k], tol["rtol"], tol["atol"], skip_nan=False)
            lib.append(r)
            checks.append(Check("library_rev", name, r.rel_err, r.abs_err, tol["rtol"], r.ok,
                                note=r.message))  # fmt: skip
            if "library_fwd" in ref:
                if not np.all(np.isfinite(c)):
                    checks.append(Check("library_fwd", name, None, None, tol["rtol"], True,
                                        note="jacfwd skipped (infinite partial)"))  # fmt: skip
                else:
                    r = _compare(c, ref["library_fwd"][k], tol["rtol"], tol["atol"], skip_nan=False)
                    lib.append(r)
                    checks.append(Check("library_fwd", name, r.rel_err, r.abs_err, tol["rtol"],
                                        r.ok, note=r.message))  # fmt: skip
        if "second" in ref and _generic(case):
            checks += _second_checks(ref["second"][k], name, p.fd_steps)
    passed = all(k.passed for k in checks)
    failed = list(dict.fromkeys(f"{k.reference}" for k in checks if not k.passed))
    msgs = [
        m
        for m in dict.fromkeys(
            k.note
            for k in checks
            if k.reference in ("autodiff", "library_rev", "library_fwd") and k.note
        )
        if m
    ]  # noqa: E501
    if not passed:
        msgs.insert(0, "mismatch vs " + ", ".join(_legacy(f) for f in dict.fromkeys(failed)))
    elif case.note:
        msgs.append(case.note)
    slopes = [k.error for k in checks if k.reference == "taylor" and k.error is not None]
    return CaseResult(
        label=case.label,
        passed=passed,
        abs_error_autodiff=_maxo([r.abs_err for r in ad]),
        rel_error_autodiff=_maxo([r.rel_err for r in ad]),
        abs_error_fd=_maxo([r.abs_err for r in fd]) if fd else None,
        rel_error_fd=_maxo([r.rel_err for r in fd]) if fd else None,
        abs_error_library=_maxo([r.abs_err for r in lib]) if lib else None,
        rel_error_library=_maxo([r.rel_err for r in lib]) if lib else None,
        fd_skipped=sum(r.skipped for r in fd),
        message="; ".join(msgs),
        checks=tuple(checks),
        taylor_slope=min(slopes) if slopes else None,
    )


def _legacy(ref: str) -> str:
    return "library" if ref.startswith("library") else ref


def _second_checks(so: Any, name: str, fd_steps: tuple[float, ...]) -> list[Check]:
    h_rr, h_fr, h_pl, hvp, fdh = (np.asarray(x) for x in so)
    n = int(np.sqrt(h_rr.size))
    rtol, atol = SECOND_ORDER_TOL
    out = []
    m_rr, m_fr = h_rr.reshape(n, n), h_fr.reshape(n, n)
    for ref_name, c, r, rt, at in (
        ("hessian_symmetry", m_fr, m_fr.T, rtol, atol),
        ("fwd_over_rev", m_fr, m_rr, rtol, atol),
        ("hessian_plain", m_fr, h_pl.reshape(n, n), rtol, atol),
    ):
        cm = _compare(c, r, rt, at, skip_nan=False)
        out.append(Check(ref_name, name, cm.rel_err, cm.abs_err, rt, cm.ok, note=cm.message))
    with np.errstate(invalid="ignore"):
        disc = [np.nanmax(np.abs(fdh[j] - fdh[j + 1]), initial=0.0) for j in range(len(fdh) - 1)]
    j = int(np.nanargmin(disc)) if np.isfinite(disc).any() else len(fdh) - 1
    cm = _compare(hvp, fdh[j], FD_TOL[0], FD_TOL[1], skip_nan=True)
    out.append(Check("hvp_fd", name, cm.rel_err, cm.abs_err, FD_TOL[0], cm.ok, skipped=cm.skipped,
                     note=f"Richardson, h = {fd_steps[j]:.0e}"))  # fmt: skip
    return out


def _maxo(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


# --------------------------------------------------------------------------- transforms, dtypes


def _transform_checks(d: Derivation, p: _Prepared) -> list[Check]:
    """jit = eager, vmap = loop, on the random inputs (float64)."""
    idx = [i for i, c in enumerate(p.cases) if c.label.startswith("random")]
    if not idx:
        return []
    structs = {_structure(p.args[i]) for i in idx}
    if len(structs) != 1:
        return []
    out = []
    rtol, atol = TRANSFORM_TOL
    f = d.function
    try:
        eager = [
            np.asarray(
                f(
                    *[
                        None
                        if a is None
                        else jnp.asarray(a)
                        if not isinstance(a, (bool, np.bool_))
                        else a
                        for a in p.args[i]
                    ]
                )
            )
            for i in idx
        ]  # noqa: E501
        jitted = jax.jit(f)
        jit_vals = [np.asarray(jitted(*p.args[i])) for i in idx]
        cm = _worst(
            [
                _compare(a, b, rtol, atol, skip_nan=False)
                for a, b in zip(jit_vals, eager, strict=True)
            ]
        )  # noqa: E501
        out.append(Check("jit", "value", cm.rel_err, cm.abs_err, rtol, cm.ok, note=cm.message))
        stacked = _stack([p.args[i] for i in idx])
        vm = np.asarray(jax.vmap(f, in_axes=tuple(_in_axes(stacked)))(*stacked))
        cm = _worst(
            [_compare(vm[j], eager[j], rtol, atol, skip_nan=False) for j in range(len(idx))]
        )
        out.append(Check("vmap", "value", cm.rel_err, cm.abs_err, rtol, cm.ok, note=cm.message))
    except Exception as e:  # noqa: BLE001
        out.append(Check("jit", "value", None, None, rtol, False, note=f"{type(e).__name__}: {e}"))
    return out


def _worst(cmps: list[_Cmp]) -> _Cmp:
    return max(cmps, key=lambda c: (not c.ok, c.abs_err))


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _low_precision(d: Derivation, p: _Prepared) -> tuple[list[LowPrecision], list[Check]]:
    idx = [i for i, c in enumerate(p.cases) if c.label.startswith("random")]
    budgets = getattr(d, "low_precision_ulps", None) or {}
    out, checks = [], []
    if not idx:
        return out, checks
    for dt_name in LOW_PRECISION_DTYPES:
        dt = _DTYPES[dt_name]
        eps = float(jnp.finfo(dt).eps)
        worst = [0.0] * len(d.argnums)
        out_dtype = ""
        err = ""
        warned: set[str] = set()
        for i in idx:
            raw = p.args[i]
            try:
                with jax.enable_x64(False), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    low = [
                        jnp.asarray(a, dt) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else
                        (jnp.asarray(a, jnp.int32) if isinstance(a, np.ndarray) else a)
                        for a in raw
                    ]  # fmt: skip
                    val = d.function(*low)
                    out_dtype = str(jnp.result_type(val))
                    grads = jax.jacrev(d.function, argnums=d.argnums)(*low)
                    grads = [np.asarray(g.astype(jnp.float32), np.float64) for g in grads]
                    warned |= {str(w.message).split(".")[0] for w in caught}
                    back = [
                        np.asarray(a.astype(jnp.float32), np.float64)
                        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
                        else (np.asarray(a, np.int64) if hasattr(a, "dtype") else a)
                        for a in low
                    ]  # noqa: E501
                with jax.enable_x64(True):
                    ref = d.closed_form(
                        *[a if not isinstance(a, np.ndarray) else jnp.asarray(a) for a in back]
                    )
                    ref = [np.asarray(r, np.float64) for r in ref]
                for k, (g, r) in enumerate(zip(grads, ref, strict=True)):
                    r = np.asarray(r, np.float64)
                    fin = np.isfinite(r)
                    scale = float(np.abs(r[fin]).max()) if fin.any() else 0.0
                    with np.errstate(invalid="ignore"):
                        e = np.where(g == r, 0.0, np.abs(g - r))
                    e = float(np.nanmax(np.where(np.isnan(e), np.inf, e))) if e.size else 0.0
                    u = _rel(e, scale, p.tol["atol"] / p.tol["rtol"]) / eps
                    worst[k] = max(worst[k], u)
            except Exception as ex:  # noqa: BLE001
                err = f"{type(ex).__name__}: {ex}"[:200]
        dtype_ok = out_dtype == dt_name
        for k, a in enumerate(d.argnums):
            name = p.names[a] if a < len(p.names) else f"arg{a}"
            budget = budgets.get(dt_name)
            passed = None if budget is None else bool(worst[k] <= budget)
            out.append(
                LowPrecision(dt_name, name, None if err else worst[k], budget, passed, out_dtype)
            )
        checks.append(Check("dtype", dt_name, None, None, 0.0, dtype_ok and not err,
                            note=err or "; ".join(
                                ([f"output {out_dtype} for {dt_name} inputs"] if not dtype_ok else [])
                                + [f"warning: {w}" for w in sorted(warned)])))  # fmt: skip
    return out, checks


# =========================================================================== running


def _qualname(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)
    mod = getattr(inner, "__module__", "") or ""
    name = getattr(inner, "__qualname__", getattr(inner, "__name__", type(inner).__name__))
    return f"{mod}.{name}" if mod else name


def _assemble(
    p: _Prepared, details: tuple[CaseResult, ...], extra: list[Check], lowp: list[LowPrecision],
    seconds: float,
) -> VerifyResult:  # fmt: skip
    d = p.d
    slopes = [c.taylor_slope for c in details if c.taylor_slope is not None]
    passed = (
        all(c.passed for c in details)
        and all(k.passed for k in extra)
        and all(lp.passed is not False for lp in lowp)
    )
    return VerifyResult(
        name=d.name,
        formula=d.formula,
        passed=passed,
        max_abs_error_autodiff=_maxo([c.abs_error_autodiff for c in details]),
        max_rel_error_autodiff=_maxo([c.rel_error_autodiff for c in details]),
        max_abs_error_fd=_maxo([c.abs_error_fd for c in details]),
        max_rel_error_fd=_maxo([c.rel_error_fd for c in details]),
        max_abs_error_library=_maxo([c.abs_error_library for c in details]),
        max_rel_error_library=_maxo([c.rel_error_library for c in details]),
        details=details,
        function=getattr(d, "function_name", "") or _qualname(d.function),
        checks=tuple(extra),
        low_precision=tuple(lowp),
        min_taylor_slope=min(slopes) if slopes else None,
        seconds=round(seconds, 3),
    )


def _run(
    d: Derivation,
    cases: Sequence[Case],
    tol: dict[str, float],
    fd_step: float,
    *,
    seed: int = 0,
    transforms: bool = True,
    low_precision: bool = True,
) -> VerifyResult:
    import time  # noqa: PLC0415

    t0 = time.perf_counter()
    with jax.enable_x64(True):
        p = _prepare(d, cases, tol, fd_step, seed)
        details = tuple(_judge_case(p, i, None) for i in range(len(p.cases)))
        extra = _transform_checks(d, p) if transforms else []
    lowp: list[LowPrecision] = []
    if low_precision:
        lowp, dchecks = _low_precision(d, p)
        extra += dchecks
    return _assemble(p, details, extra, lowp, time.perf_counter() - t0)


def _as_tuple_fn(fn: Callable[..., Any], single: bool) -> Callable[..., tuple[Any, ...]]:
    if not single:
        return lambda *a: tuple(fn(*a))
    return lambda *a: (fn(*a),)


def _check_positive(name: str, value: Any, *, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    v = float(value)
    if not (math.isfinite(v) and v > 0) or (upper is not None and v >= upper):
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(f"`{name}` must be a finite number > 0{bound}, got {value!r}.")
    return v


def _check_tolerance(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return v


def _check_count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def cases_for(
    d: Derivation,
    *,
    num_random: int = 2,
    seed: int = 0,
    edge_cases: bool = True,
    inputs: Sequence[tuple[Any, ...]] | None = None,
) -> list[Case]:
    """The inputs :func:`verify` checks ``d`` on: random draws, edge cases, extra inputs."""
    rng = np.random.default_rng(seed)
    cases = [Case(f"random {i}", tuple(d.sample(rng))) for i in range(num_random)]
    if edge_cases:
        cases += list(d.edge_cases)
    cases += [Case(f"input {i}", tuple(a)) for i, a in enumerate(inputs or ())]
    return cases


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
    transforms: bool = True,
    low_precision: bool = True,
    second_order: bool = True,
) -> VerifyResult:
    r"""Checks a closed-form derivative against independent references, in float64.

    Two ways to call it:

    * ``verify("softmax_cross_entropy")`` (or a :class:`~jaxent.derivations.Derivation`,
      e.g. one of your own): a registered derivation of :mod:`jaxent.derivations`,
      on ``num_random`` random inputs and its edge cases.
    * ``verify(fn, derivative, inputs=[(x, y), ...], argnums=0)``: your own
      derivation. ``derivative(*args)`` must return the derivative of
      ``fn(*args)`` with respect to ``args[argnums]``: the gradient for a
      scalar output, the Jacobian (``out.shape + arg.shape``) otherwise; a
      tuple of them if ``argnums`` is a tuple. ``inputs`` lists argument
      tuples; ``sample(rng)`` draws ``num_random`` more.

    For each input and each differentiated argument *separately*, the claim is
    compared with (a) ``jax.jacrev`` of the plain definition (``plain``,
    default ``fn``), (b) Richardson-extrapolated central differences of it over
    a sweep of steps, (c) the Taylor remainder
    :math:`|f(x + hv) - f(x) - h\langle g, v\rangle|`, which must fall as
    :math:`h^2` (slope >= 1.9), and (d) when ``plain`` is given,
    ``jax.jacrev``/``jax.jacfwd`` of ``fn`` itself (its custom rule). An
    input passes if, elementwise,
    :math:`|\text{claim} - \text{ref}| \le \text{atol} + \text{rtol}\,|\text{ref}|`
    for every comparison and the claim has no NaN; equal infinities agree.
    Finite differences and the Taylor test are skipped where an evaluation is
    not finite. Registered rules with ``second_order`` also get Hessian
    checks; ``transforms`` adds jit = eager and vmap = loop; ``low_precision``
    measures float32/bfloat16/float16 gradients in ULPs and checks that the
    output dtype is the input dtype.

    Everything runs under ``jax.enable_x64(True)`` (restored on exit: the
    global ``jax_enable_x64`` flag is left as it was); floating inputs are
    cast to float64.

    Args:
      target: a registered name, a :class:`Derivation`, or a function.
      derivative: the claimed derivative (required with a function).
      inputs: argument tuples to check at.
      sample: ``sample(rng)`` returns an argument tuple (with a function).
      argnums: the differentiated positional argument(s) (with a function).
      plain: a reference definition of ``fn`` without custom rules.
      name: a name for the result (default: ``fn.__name__``).
      num_random: random inputs to draw (with a registered derivation, or ``sample``).
      seed: seed of ``np.random.default_rng`` for the random inputs.
      edge_cases: include a registered derivation's edge cases.
      rtol, atol: tolerances vs autodiff (and vs the function's own derivative).
      fd_rtol, fd_atol: tolerances vs finite differences.
      fd_step: the smallest relative step of the finite-difference sweep
        (the sweep is ``fd_step * (1000, 100, 10, 1)``), in (0, 1).
      transforms: run the jit / vmap consistency checks.
      low_precision: measure low-precision gradients and output dtypes.
      second_order: run the second-order checks (rules that support them).

    Returns:
      A :class:`VerifyResult` (truthy iff it passed).

    Raises:
      KeyError: an unknown registered name.
      ValueError: a function without ``derivative`` or without any input; a
        non-positive ``fd_step``, a negative tolerance or ``num_random``.

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
    fd_step = _check_positive("fd_step", fd_step, upper=1e-2)
    tol = {
        "rtol": _check_tolerance("rtol", rtol),
        "atol": _check_tolerance("atol", atol),
        "fd_rtol": _check_tolerance("fd_rtol", fd_rtol),
        "fd_atol": _check_tolerance("fd_atol", fd_atol),
    }
    num_random = _check_count("num_random", num_random)
    _check_count("seed", seed)
    if isinstance(target, str):
        target = _derivations.get(target)
    if isinstance(target, Derivation):
        d = target
        cases = cases_for(d, num_random=num_random, seed=seed, edge_cases=edge_cases, inputs=inputs)
        if not cases:
            raise ValueError("nothing to check: `num_random` is 0 and there are no edge cases.")
        if not second_order:
            d = dataclasses.replace(d, second_order=False)
        return _run(d, cases, tol, fd_step, seed=seed, transforms=transforms,
                    low_precision=low_precision)  # fmt: skip
    if not callable(target):
        raise TypeError(f"`target` must be a name, a Derivation or a function, got {target!r}.")
    if derivative is None:
        raise ValueError("verify(fn, derivative, ...) needs the claimed `derivative`.")
    single = isinstance(argnums, (int, np.integer))
    nums = (int(argnums),) if single else tuple(int(a) for a in argnums)  # type: ignore[union-attr]
    if not nums or any(a < 0 for a in nums):
        raise ValueError(f"`argnums` must be non-negative positions, got {argnums!r}.")
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
        second_order=second_order and plain is not None,
        function_name=_qualname(target),
    )
    return _run(d, cases, tol, fd_step, seed=seed, transforms=transforms and plain is not None,
                low_precision=low_precision and plain is not None)  # fmt: skip


def verify_all(
    names: Sequence[str] | None = None,
    *,
    num_random: int = 2,
    seed: int = 0,
    progress: Callable[[Derivation], None] | None = None,
    **kwargs: Any,
) -> list[VerifyResult]:
    """Runs :func:`verify` on every registered derivation (or those matching ``names``).

    Args:
      names: names or ``fnmatch`` patterns (see :func:`jaxent.derivations.select`).
      num_random: random inputs per derivation, besides its edge cases.
      seed: seed of the random inputs.
      progress: called with each derivation before it is checked.
      **kwargs: passed to :func:`verify`.

    Returns:
      One :class:`VerifyResult` per derivation, in registry order.
    """
    out = []
    for d in _derivations.select(names):
        if progress is not None:
            progress(d)
        out.append(verify(d, num_random=num_random, seed=seed, **kwargs))
    return out
