r"""Derivations as data: every closed-form derivative of jaxent, checkable in one command.

Each :class:`Derivation` names a public function and holds three independent
pieces of code:

* ``function``: the jaxent function itself, which differentiates with its
  custom rule (``jax.custom_jvp``, or ``jax.custom_vjp`` for the
  large-vocabulary losses);
* ``closed_form``: the claimed derivative, written out here as a formula
  (e.g. ``(sum y) softmax(z) - y``), one array per differentiated argument:
  the gradient for a scalar output, the Jacobian ``out.shape + arg.shape``
  otherwise;
* ``plain``: a reference definition written with ``jax.numpy`` only (never
  jaxent code), cleaned with ``jnp.where`` so that its autodiff encodes the
  same conventions at edge points as jaxent's rules.

:func:`jaxent.verify` checks ``closed_form`` against ``jax.jacrev(plain)``,
central finite differences of ``plain`` and ``jax.jacrev``/``jax.jacfwd`` of
``function``, in float64, on random inputs (``sample``) and on edge cases
(``-inf`` and masked logits, fully masked rows, zero probabilities,
saturated sigmoids). ``python -m jaxent verify`` runs them all.

Each entry describes one example (one row of classes, or a few elements for
elementwise functions, summed so that the derivative is a gradient); batching
adds nothing to a derivation.

Your own derivations: decorate a closed form with :func:`derivation` (or call
:func:`register` with a :class:`Derivation`) in your own file and run
``python -m jaxent verify --module FILE.py``. Optional fields add checks: a
sympy expression (``symbolic``), a low-precision budget
(``low_precision_ulps``); ``second_order=False`` opts out of the Hessian checks.

Conventions at edge points are stated in each entry's ``convention``; where the
plain definition's autodiff cannot express a convention (a divergence that is
``+inf``), the edge case names the arguments it is compared in
(``Case.reference_argnums``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxent

Array = jax.Array

K = 5  # classes per example in the registered derivations
_INF = np.inf


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One input of a derivation check.

    Attributes:
      label: a short name, e.g. ``"-inf logit"``.
      args: the positional arguments (numpy arrays, Python scalars, ``None``).
      finite_differences: whether central finite differences are meaningful
        here. ``False`` on the boundary of the domain (a zero probability),
        where the derivative is fixed by a convention, not by a limit.
      reference_argnums: the differentiated arguments compared with autodiff
        of the plain definition (``None``: all). Used where the plain
        definition's autodiff is NaN and jaxent's rule states a convention.
      note: why the case is special.

    Example:
      >>> import numpy as np
      >>> from jaxent.derivations import Case
      >>> case = Case("zero probability", (np.array([0.0, 1.0]),), finite_differences=False)
      >>> case.label, case.finite_differences
      ('zero probability', False)
    """

    label: str
    args: tuple[Any, ...]
    finite_differences: bool = True
    reference_argnums: tuple[int, ...] | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Derivation:
    """A closed-form derivative, its plain reference definition and test inputs.

    Attributes:
      name: the registry key (the public function's name, with a
        ``[variant]`` suffix for options that change the formula).
      formula: the derivative in plain text, for tables.
      latex: the derivative in LaTeX.
      function: the jaxent function (differentiates with its custom rule).
      closed_form: ``closed_form(*args)`` returns one array per entry of
        ``argnums``: the gradient (scalar output) or the Jacobian
        (``out.shape + arg.shape``).
      plain: the reference definition (``jax.numpy`` only).
      argnums: the differentiated positional arguments.
      sample: ``sample(rng)`` draws random arguments.
      edge_cases: fixed inputs at the special points.
      convention: the convention at edge points, in words.
      forward_mode: whether ``function`` supports ``jax.jvp``/``jacfwd``
        (``False`` for the ``custom_vjp`` large-vocabulary losses).
      second_order: whether ``function`` has a second derivative worth checking
        (Hessian symmetry, forward-over-reverse, HVP); ``None``: ``forward_mode``.
      symbolic: optional ``symbolic(sympy) -> (expr, symbols)``: the function
        as a sympy expression and, per positional argument, its symbol, a list
        of symbols (one per element) or ``None``; verify differentiates it with
        sympy and compares (extra ``jaxent[symbolic]``).
      low_precision_ulps: optional budget in ULPs per dtype
        (``{"float32": 8, "bfloat16": 4}``) for the function's own gradient
        against the float64 closed form; without one the error is only reported.
      function_name: the name reports give the function (default: its
        qualified name).

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> from jaxent.derivations import Case, Derivation
      >>> def entropy(p):
      ...     return -jnp.sum(p * jnp.log(p))
      >>> d = Derivation(
      ...     name="my_entropy", formula="dH/dp = -(log p + 1)", latex="",
      ...     function=entropy, closed_form=lambda p: (-(jnp.log(p) + 1),), plain=entropy,
      ...     argnums=(0,), sample=lambda rng: (rng.dirichlet([1.0] * 4),),
      ...     edge_cases=(Case("uniform", (jnp.full(4, 0.25),)),))
      >>> result = jaxent.verify(d, num_random=2, low_precision=False)
      >>> result.passed, len(result.details)  # 2 random inputs and the edge case
      (True, 3)
    """

    name: str
    formula: str
    latex: str
    function: Callable[..., Array]
    closed_form: Callable[..., tuple[Array, ...]]
    plain: Callable[..., Array]
    argnums: tuple[int, ...]
    sample: Callable[[np.random.Generator], tuple[Any, ...]]
    edge_cases: tuple[Case, ...] = ()
    convention: str = ""
    forward_mode: bool = True
    second_order: bool | None = None
    symbolic: Callable[[Any], tuple[Any, tuple[Any, ...]]] | None = None
    low_precision_ulps: dict[str, float] | None = None
    function_name: str = ""
    #: ``function`` is a stochastic surrogate (e.g. an estimator's expectation by
    #: enumeration) whose *gradient* is the claim, not its value: pointwise checks of
    #: value and higher derivatives against ``plain`` do not apply.
    surrogate: bool = False


REGISTRY: dict[str, Derivation] = {}


def register(derivation: Derivation) -> Derivation:
    """Adds ``derivation`` to :data:`REGISTRY` (replacing one of the same name).

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> from jaxent import derivations
      >>> def lse(z):
      ...     return jnp.log(jnp.sum(jnp.exp(z)))
      >>> d = derivations.register(derivations.Derivation(
      ...     name="doc_logsumexp", formula="d lse/dz = softmax(z)", latex="",
      ...     function=lse, closed_form=lambda z: (jaxent.softmax(z),), plain=lse,
      ...     argnums=(0,), sample=lambda rng: (rng.normal(size=4),)))
      >>> jaxent.verify("doc_logsumexp", num_random=2, low_precision=False).passed
      True
      >>> _ = derivations.REGISTRY.pop("doc_logsumexp")  # leave the registry as it was
    """
    REGISTRY[derivation.name] = derivation
    return derivation


def get(name: str) -> Derivation:
    """The registered derivation called ``name``, or ``KeyError`` listing the names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no derivation named {name!r}; registered: {', '.join(REGISTRY)}") from None


def select(patterns: Sequence[str] | None = None) -> list[Derivation]:
    """Registered derivations whose name matches any pattern (exact or ``fnmatch`` glob).

    A pattern without glob characters also matches every ``name[variant]``.
    """
    if not patterns:
        return list(REGISTRY.values())
    out = []
    for d in REGISTRY.values():
        base = d.name.split("[")[0]
        if any(fnmatch.fnmatchcase(d.name, p) or p in (d.name, base) for p in patterns):
            out.append(d)
    return out


def derivation(
    *,
    plain: Callable[..., Array],
    sample: Callable[[np.random.Generator], tuple[Any, ...]],
    argnums: int | Sequence[int] = 0,
    name: str | None = None,
    formula: str = "",
    latex: str = "",
    function: Callable[..., Array] | None = None,
    edge_cases: Sequence[Case] = (),
    convention: str = "",
    forward_mode: bool = True,
    second_order: bool | None = None,
    symbolic: Callable[[Any], tuple[Any, tuple[Any, ...]]] | None = None,
    low_precision_ulps: dict[str, float] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: registers the decorated closed-form derivative as a :class:`Derivation`.

    The decorated function returns the derivative in ``argnums`` (one array,
    or a tuple of them for several argnums) and is returned unchanged::

        @derivation(plain=focal_loss, sample=lambda rng: (rng.normal(size=5), 2))
        def focal_loss_grad(z, label): ...

    ``function`` (default ``plain``) is what your code differentiates, e.g. a
    ``jax.custom_jvp`` whose rule should match the closed form; ``name``
    defaults to the decorated function's name, ``formula`` to the first line
    of its docstring. ``python -m jaxent verify --module FILE.py`` checks it.

    Example:
      >>> import jax.numpy as jnp, jaxent
      >>> from jaxent.derivations import REGISTRY, derivation
      >>> def softplus(x):
      ...     return jnp.log1p(jnp.exp(x))
      >>> @derivation(plain=softplus, sample=lambda rng: (rng.normal(),), name="doc_softplus")
      ... def softplus_grad(x):
      ...     "d softplus/dx = sigmoid(x)"
      ...     return 1 / (1 + jnp.exp(-x))
      >>> REGISTRY["doc_softplus"].formula
      'd softplus/dx = sigmoid(x)'
      >>> jaxent.verify("doc_softplus", num_random=2, low_precision=False).passed
      True
      >>> _ = REGISTRY.pop("doc_softplus")  # leave the registry as it was
    """
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def decorate(closed_form: Callable[..., Any]) -> Callable[..., Any]:
        doc = (closed_form.__doc__ or "").strip()
        register(
            Derivation(
                name=name or closed_form.__name__,
                formula=formula or (doc.splitlines()[0] if doc else ""),
                latex=latex,
                function=plain if function is None else function,
                closed_form=_cf(closed_form),
                plain=plain,
                argnums=nums,
                sample=sample,
                edge_cases=tuple(edge_cases),
                convention=convention,
                forward_mode=forward_mode,
                second_order=second_order,
                symbolic=symbolic,
                low_precision_ulps=low_precision_ulps,
                function_name=_qualified(plain if function is None else function),
            )
        )
        return closed_form

    return decorate


def _qualified(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '') or ''}.{getattr(fn, '__qualname__', repr(fn))}".lstrip(
        "."
    )


# =========================================================================== plain definitions
# jax.numpy only; each cleaned with jnp.where *before* the unsafe operation so
# that autodiff is finite wherever jaxent's convention is finite.


def _masked(z: Array, mask: Array | None) -> Array:
    return z if mask is None else jnp.where(mask, z, -jnp.inf)


def _plain_sum_exp(z: Array) -> Array:
    return jnp.sum(jnp.exp(z), axis=-1, keepdims=True)


def _plain_lse(z: Array) -> Array:
    """log sum exp z; ``-inf`` for an empty row (with gradient 0)."""
    s = _plain_sum_exp(z)
    return jnp.where(s > 0, jnp.log(jnp.where(s > 0, s, 1.0)), -jnp.inf)


def _plain_softmax(z: Array, mask: Array | None = None) -> Array:
    z = _masked(z, mask)
    s = _plain_sum_exp(z)
    return jnp.where(s > 0, jnp.exp(z) / jnp.where(s > 0, s, 1.0), 0.0)


def _plain_log_softmax(z: Array, mask: Array | None = None) -> Array:
    zm = _masked(z, mask)
    s = _plain_sum_exp(zm)
    keep = s > 0 if mask is None else mask & (s > 0)  # a removed entry is the constant -inf
    return jnp.where(keep, zm - jnp.log(jnp.where(s > 0, s, 1.0)), -jnp.inf)


def _plogq(p: Array, log_q: Array, active: Array) -> Array:
    """``p * log_q`` on ``active`` entries, the constant 0 elsewhere."""
    return jnp.where(active, p * jnp.where(active, log_q, 0.0), 0.0)


def _log_on(x: Array, active: Array) -> Array:
    return jnp.log(jnp.where(active, x, 1.0))


def _plain_entropy(p: Array, mask: Array | None = None) -> Array:
    act = p > 0 if mask is None else mask & (p > 0)
    return -jnp.sum(_plogq(p, _log_on(p, act), act))


def _plain_cross_entropy(p: Array, q: Array, mask: Array | None = None) -> Array:
    # Only the 0 log 0 corner (p = q = 0) is cleaned: dH/dp = -log q at p = 0 < q.
    act = (p != 0) | (q > 0)
    if mask is not None:
        act = act & mask
    return -jnp.sum(_plogq(p, _log_on(q, act), act))


def _plain_kl(p: Array, q: Array, mask: Array | None = None) -> Array:
    act = p > 0 if mask is None else mask & (p > 0)
    return jnp.sum(_plogq(p, _log_on(p, act) - _log_on(q, act), act))


def _plain_js(p: Array, q: Array, beta: float) -> Array:
    m = beta * p + (1 - beta) * q
    ap, aq = p > 0, q > 0
    t_p = _plogq(p, _log_on(p, ap) - _log_on(m, ap), ap)
    t_q = _plogq(q, _log_on(q, aq) - _log_on(m, aq), aq)
    return jnp.sum(beta * t_p + (1 - beta) * t_q)


def _plain_softplus(x: Array) -> Array:
    return jnp.logaddexp(x, 0.0)


# =========================================================================== samplers


def _logits(rng: np.random.Generator, k: int = K) -> np.ndarray:
    return rng.normal(0.0, 2.0, size=k)


def _probs(rng: np.random.Generator, k: int = K) -> np.ndarray:
    return rng.dirichlet(np.full(k, 2.0))


def _soft_labels(rng: np.random.Generator, k: int = K) -> np.ndarray:
    # Deliberately not normalised: the gradient is (sum y) softmax(z) - y.
    return rng.dirichlet(np.full(k, 1.5)) * rng.uniform(0.5, 1.5)


_Z_INF = np.array([1.0, -np.inf, 0.5, -2.0, -np.inf])  # two -inf logits
_MASK = np.array([True, True, False, True, False])  # two removed classes
_NONE = np.zeros(K, bool)  # a fully removed row
_Z_GAP = np.array([40.0, 0.0, -1.0, 2.0, 0.5])  # p underflows to ~1e-17
_Z_RANGE = np.arange(K, dtype=float)
_P_ZERO = np.array([0.5, 0.0, 0.3, 0.2, 0.0])  # zero probabilities
_Q_ZERO = np.array([0.25, 0.25, 0.5, 0.0, 0.0])


def _zero_prob_case(args: tuple[Any, ...], note: str, **kw: Any) -> Case:
    return Case("zero probabilities", args, finite_differences=False, note=note, **kw)


_BOUNDARY = "zero probabilities are on the boundary of the domain: convention, no FD"


_LOGITS_CASES = (
    Case("-inf logits", (_Z_INF, None)),
    Case("masked classes", (_Z_RANGE, _MASK)),
    Case("fully masked row", (_Z_RANGE, _NONE)),
    Case("p ~ 1e-17", (_Z_GAP, None)),
)
"""The edge cases of a one-row logits function ``f(z, mask)``."""


def _cf(fn: Callable[..., Any]) -> Callable[..., tuple[Array, ...]]:
    """Wraps a closed form returning one array into the registry's tuple form."""

    @functools.wraps(fn)
    def wrapped(*args: Any) -> tuple[Array, ...]:
        out = fn(*args)
        return out if isinstance(out, tuple) else (out,)

    return wrapped


# =========================================================================== softmax family

register(
    Derivation(
        name="softmax",
        formula="dp/dz = diag(p) - p p^T",
        latex=r"\frac{\partial p_i}{\partial z_j} = p_i(\delta_{ij} - p_j)",
        function=lambda z, mask: jaxent.softmax(z, where=mask),
        closed_form=_cf(
            lambda z, mask: (lambda p: jnp.diag(p) - jnp.outer(p, p))(jaxent.softmax(z, where=mask))
        ),
        plain=_plain_softmax,
        argnums=(0,),
        sample=lambda rng: (_logits(rng), None),
        edge_cases=_LOGITS_CASES,
        convention="removed/-inf classes: p_i = 0, zero row and column; empty row: 0.",
    )
)

register(
    Derivation(
        name="log_softmax",
        formula="dl/dz = I - 1 p^T",
        latex=r"\frac{\partial \log p_i}{\partial z_j} = \delta_{ij} - p_j",
        function=lambda z, mask: jaxent.log_softmax(z, where=mask),
        closed_form=_cf(
            lambda z, mask: jnp.where(
                True if mask is None else jnp.outer(mask, mask),
                jnp.eye(K) - jaxent.softmax(z, where=mask)[None, :],
                0.0,
            )
        ),
        plain=_plain_log_softmax,
        argnums=(0,),
        sample=lambda rng: (_logits(rng), None),
        edge_cases=_LOGITS_CASES,
        convention=(
            "a -inf logit keeps d(log p_i)/dz_i = 1 (the identity part); a removed"
            " class (where) has a zero row and column."
        ),
    )
)

register(
    Derivation(
        name="logsumexp",
        formula="d lse/dz = softmax(z)",
        latex=r"\nabla_z \log\sum_j e^{z_j} = \mathrm{softmax}(z)",
        function=lambda z, mask: jaxent.logsumexp(z, where=mask),
        closed_form=_cf(lambda z, mask: jaxent.softmax(z, where=mask)),
        plain=lambda z, mask: _plain_lse(_masked(z, mask))[0],
        argnums=(0,),
        sample=lambda rng: (_logits(rng), None),
        edge_cases=_LOGITS_CASES,
        convention="empty row: lse = -inf with gradient 0.",
    )
)

register(
    Derivation(
        name="logit",
        formula="d logit/dp = 1 / (p (1 - p))",
        latex=r"\frac{d}{dp}\log\frac{p}{1-p} = \frac{1}{p(1-p)}",
        function=lambda p: jnp.sum(jaxent.logit(p)),
        closed_form=_cf(lambda p: 1.0 / (p * (1.0 - p))),
        plain=lambda p: jnp.sum(jnp.log(p) - jnp.log(1.0 - p)),
        argnums=(0,),
        sample=lambda rng: (rng.uniform(0.05, 0.95, size=K),),
        edge_cases=(Case("near 0 and 1", (np.array([1e-9, 0.5, 1 - 1e-9, 1e-3, 0.999]),)),),
        convention="summed over elements (the derivative is elementwise).",
    )
)

# =========================================================================== information


register(
    Derivation(
        name="self_information",
        formula="dI/dp = -1/p",
        latex=r"\frac{d}{dp}(-\log p) = -\frac{1}{p}",
        function=lambda p: jnp.sum(jaxent.self_information(p)),
        closed_form=_cf(lambda p: -1.0 / p),
        plain=lambda p: -jnp.sum(jnp.log(p)),
        argnums=(0,),
        sample=lambda rng: (rng.uniform(0.05, 1.0, size=K),),
        edge_cases=(Case("p = 0", (np.array([0.0, 0.5, 1.0, 1e-300, 0.1]),), False),),
        convention="I(0) = +inf with derivative -inf (autodiff of log; no custom rule).",
    )
)

register(
    Derivation(
        name="entropy",
        formula="dH/dp = -(log p + 1), 0 at p = 0",
        latex=r"\frac{\partial H}{\partial p_i} = -(\log p_i + 1)\ (p_i > 0),\ 0\ (p_i = 0)",
        function=lambda p, mask: jaxent.entropy(p, where=mask),
        closed_form=_cf(
            lambda p, mask: jnp.where(
                (p > 0) if mask is None else mask & (p > 0),
                -(jnp.log(jnp.where(p > 0, p, 1.0)) + 1.0),
                0.0,
            )
        ),
        plain=_plain_entropy,
        argnums=(0,),
        sample=lambda rng: (_probs(rng), None),
        edge_cases=(
            _zero_prob_case((_P_ZERO, None), _BOUNDARY),
            Case("masked entries", (_probs(np.random.default_rng(0)), _MASK)),
        ),
        convention="support convention: 0 log 0 = 0 and its gradient is 0.",
    )
)

register(
    Derivation(
        name="entropy_from_logits",
        formula="dH/dz = -p * (log p + H)",
        latex=r"\nabla_z H(\mathrm{softmax}(z)) = -p \odot (\log p + H)",
        function=lambda z, mask: jaxent.entropy_from_logits(z, where=mask),
        closed_form=_cf(
            lambda z, mask: (lambda p, lp, h: -p * (jnp.where(p > 0, lp, 0.0) + h))(
                jaxent.softmax(z, where=mask),
                jaxent.log_softmax(z, where=mask),
                jaxent.entropy_from_logits(z, where=mask),
            )
        ),
        plain=lambda z, mask: _plain_entropy(_plain_softmax(z, mask)),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), None),
        edge_cases=_LOGITS_CASES,
        convention="-inf/removed classes (p_i = 0) get gradient 0; empty row: H = 0, gradient 0.",
    )
)


def _binary_entropy_cf(p: Array) -> Array:
    inner = (p > 0) & (p < 1)
    safe = jnp.where(inner, p, 0.5)
    return jnp.where(inner, jnp.log1p(-safe) - jnp.log(safe), jnp.where(p == 0, 1.0, -1.0))


def _binary_entropy_plain(p: Array) -> Array:
    a, b = p > 0, p < 1
    return -jnp.sum(_plogq(p, _log_on(p, a), a) + _plogq(1 - p, _log_on(1 - p, b), b))


register(
    Derivation(
        name="binary_entropy",
        formula="dh/dp = log((1 - p)/p); +1 at p = 0, -1 at p = 1",
        latex=r"h'(p) = \log\frac{1-p}{p}",
        function=lambda p: jnp.sum(jaxent.binary_entropy(p)),
        closed_form=_cf(_binary_entropy_cf),
        plain=_binary_entropy_plain,
        argnums=(0,),
        sample=lambda rng: (rng.uniform(0.02, 0.98, size=K),),
        edge_cases=(
            _zero_prob_case(
                (np.array([0.0, 1.0, 0.5, 1e-12, 0.25]),),
                "p in {0, 1}: the vanishing term is held at 0, so h' = +1 / -1 (finite)",
            ),
        ),
        convention="support convention at p = 0 and p = 1: derivative +1 and -1.",
    )
)

register(
    Derivation(
        name="cross_entropy",
        formula="dH/dp = -log q ; dH/dq = -p/q",
        latex=r"\frac{\partial H}{\partial p_i} = -\log q_i,\quad"
        r"\frac{\partial H}{\partial q_i} = -\frac{p_i}{q_i}",
        function=lambda p, q, mask: jaxent.cross_entropy(p, q, where=mask),
        closed_form=_cf(
            lambda p, q, mask: (
                jnp.where(
                    ((p != 0) | (q > 0)) & (True if mask is None else mask),
                    -jnp.log(jnp.where(q > 0, q, 1.0)) + jnp.where(q > 0, 0.0, _INF),
                    0.0,
                ),
                jnp.where(
                    (p != 0) & (True if mask is None else mask),
                    -p / jnp.where(p != 0, q, 1.0),
                    0.0,
                ),
            )
        ),
        plain=_plain_cross_entropy,
        argnums=(0, 1),
        sample=lambda rng: (_probs(rng), _probs(rng), None),
        edge_cases=(
            _zero_prob_case((_P_ZERO, _P_ZERO[::-1] + 0.1, None), _BOUNDARY),
            _zero_prob_case((_P_ZERO, _P_ZERO, None), "p_i = q_i = 0 corners: gradient 0"),
            Case(
                "q = 0 < p (H = +inf)",
                (_P_ZERO[::-1].copy(), _P_ZERO, None),
                finite_differences=False,
                note="dH/dp = +inf, dH/dq = -inf on the offending class: true values",
            ),
            Case("masked entries", (_P_ZERO + 0.1, _Q_ZERO + 0.1, _MASK)),
        ),
        convention=(
            "p_i = 0 < q_i: dH/dp_i = -log q_i, dH/dq_i = 0; p_i = q_i = 0: both 0;"
            " p_i > 0 = q_i: H = +inf, dH/dp_i = +inf, dH/dq_i = -inf (true values)."
        ),
    )
)

# =========================================================================== divergences


def _kl_cf(p: Array, q: Array, mask: Array | None) -> tuple[Array, Array]:
    act = p > 0 if mask is None else mask & (p > 0)
    lr = jnp.log(jnp.where(act, p, 1.0)) - jnp.log(jnp.where(act, q, 1.0))
    return (
        jnp.where(act, lr + 1.0, 0.0),
        jnp.where(act, -p / jnp.where(act, q, 1.0), 0.0),
    )


register(
    Derivation(
        name="kl_divergence",
        formula="dD/dp = log(p/q) + 1 ; dD/dq = -p/q (0 where p = 0)",
        latex=r"\frac{\partial D}{\partial p_i} = \log\frac{p_i}{q_i} + 1,\quad"
        r"\frac{\partial D}{\partial q_i} = -\frac{p_i}{q_i}",
        function=lambda p, q, mask: jaxent.kl_divergence(p, q, where=mask),
        closed_form=_cf(_kl_cf),
        plain=_plain_kl,
        argnums=(0, 1),
        sample=lambda rng: (_probs(rng), _probs(rng), None),
        edge_cases=(
            _zero_prob_case((_P_ZERO, _P_ZERO[::-1] + 0.1, None), _BOUNDARY),
            Case(
                "q = 0 < p (D = +inf)",
                (_P_ZERO, _Q_ZERO, None),
                finite_differences=False,
                note="dD/dp = +inf, dD/dq = -inf on the offending class: true values",
            ),
            Case("masked entries", (_P_ZERO + 0.1, _Q_ZERO + 0.1, _MASK)),
        ),
        convention=(
            "support convention: p_i = 0 gives 0 in both gradients (the one-sided"
            " derivative in p_i is -inf); p_i > 0 = q_i gives +inf / -inf."
        ),
    )
)


def _kl_logits_cf(a: Array, b: Array, mask: Array | None) -> tuple[Array, Array]:
    p = jaxent.softmax(a, where=mask)
    q = jaxent.softmax(b, where=mask)
    lp, lq = jaxent.log_softmax(a, where=mask), jaxent.log_softmax(b, where=mask)
    delta = jnp.where(p > 0, lp - lq, 0.0)
    d = jnp.sum(p * delta)
    ga = jnp.where(jnp.isfinite(d), p * (delta - jnp.where(jnp.isfinite(d), d, 0.0)), 0.0)
    return ga, jnp.sum(p) * q - p


def _kl_logits_plain(a: Array, b: Array, mask: Array | None) -> Array:
    p = _plain_softmax(a, mask)
    act = p > 0
    delta = _plain_log_softmax(a, mask) - _plain_log_softmax(b, mask)
    return jnp.sum(_plogq(p, delta, act))


register(
    Derivation(
        name="kl_divergence_from_logits",
        formula="dD/da = p * (log p - log q - D) ; dD/db = (sum p) q - p",
        latex=r"\nabla_a D = p \odot (\log p - \log q - D),\quad \nabla_b D = q - p",
        function=lambda a, b, mask: jaxent.kl_divergence_from_logits(a, b, where=mask),
        closed_form=_cf(_kl_logits_cf),
        plain=_kl_logits_plain,
        argnums=(0, 1),
        sample=lambda rng: (_logits(rng), _logits(rng), None),
        edge_cases=(
            Case("-inf in p logits", (_Z_INF, _Z_GAP, None)),
            Case(
                "-inf in q logits (D = +inf)",
                (_Z_GAP, _Z_INF, None),
                reference_argnums=(1,),
                note="D is +inf on the row: jaxent returns 0 in p_logits (the value is"
                " locally constant); autodiff of the plain definition gives NaN there",
            ),
            Case("masked classes", (_Z_RANGE, _Z_GAP, _MASK)),
            Case("fully masked row", (_Z_RANGE, _Z_GAP, _NONE)),
        ),
        convention=(
            "p_i = 0 (-inf/removed p logit): no contribution; rows with D = +inf get"
            " gradient 0 in p_logits and (sum p) q - p in q_logits."
        ),
    )
)


def _js_cf(p: Array, q: Array, beta: float) -> tuple[Array, Array]:
    m = beta * p + (1 - beta) * q
    ap, aq = p > 0, q > 0
    lm = jnp.log(jnp.where(ap | aq, m, 1.0))
    gp = jnp.where(ap, jnp.log(jnp.where(ap, p, 1.0)) - lm, jnp.where(aq, -1.0, 0.0))
    gq = jnp.where(aq, jnp.log(jnp.where(aq, q, 1.0)) - lm, jnp.where(ap, -1.0, 0.0))
    return beta * gp, (1 - beta) * gq


_BETA = 0.3
register(
    Derivation(
        name="js_divergence",
        formula="dJS/dp = beta log(p/m) (-beta where p = 0 < q)",
        latex=r"\frac{\partial\,\mathrm{JS}_\beta}{\partial p_i} = \beta\log\frac{p_i}{m_i},"
        r"\quad m = \beta p + (1-\beta) q",
        function=lambda p, q: jaxent.js_divergence(p, q, beta=_BETA),
        closed_form=_cf(lambda p, q: _js_cf(p, q, _BETA)),
        plain=lambda p, q: _plain_js(p, q, _BETA),
        argnums=(0, 1),
        sample=lambda rng: (_probs(rng), _probs(rng)),
        edge_cases=(_zero_prob_case((_P_ZERO, _Q_ZERO), _BOUNDARY),),
        convention=(
            "beta = 0.3; p_i = 0 < q_i: dJS/dp_i = -beta (the limit of autodiff of the"
            " cleaned definition); p_i = q_i = 0: 0."
        ),
    )
)


def _js_logits_cf(a: Array, b: Array, beta: float) -> tuple[Array, Array]:
    p, q = jaxent.softmax(a), jaxent.softmax(b)
    gp, gq = _js_cf(p, q, beta)
    return p * (gp - jnp.sum(p * gp)), q * (gq - jnp.sum(q * gq))


register(
    Derivation(
        name="js_divergence_from_logits",
        formula="dJS/da = p * (g - <p, g>), g = beta log(p/m)",
        latex=r"\nabla_a \mathrm{JS}_\beta = p \odot (g - \langle p, g\rangle),\quad"
        r"g = \beta\log\frac{p}{m}",
        function=lambda a, b: jaxent.js_divergence_from_logits(a, b, beta=_BETA),
        closed_form=_cf(lambda a, b: _js_logits_cf(a, b, _BETA)),
        plain=lambda a, b: _plain_js(_plain_softmax(a), _plain_softmax(b), _BETA),
        argnums=(0, 1),
        sample=lambda rng: (_logits(rng), _logits(rng)),
        edge_cases=(
            Case("-inf logits", (_Z_INF, _Z_GAP)),
            Case("-inf in both", (_Z_INF, _Z_INF[::-1].copy())),
        ),
        convention="beta = 0.3; the softmax Jacobian applied to the gradient in probabilities.",
    )
)


def _gauss_cf(mp: Array, sp: Array, mq: Array, sq: Array) -> tuple[Array, ...]:
    d = mp - mq
    return (
        d / sq**2,
        sp / sq**2 - 1.0 / sp,
        -d / sq**2,
        1.0 / sq - (sp**2 + d**2) / sq**3,
    )


def _gauss_plain(mp: Array, sp: Array, mq: Array, sq: Array) -> Array:
    var_p, var_q = sp**2, sq**2
    return jnp.sum(0.5 * (jnp.log(var_q / var_p) + (var_p + (mp - mq) ** 2) / var_q - 1.0))


register(
    Derivation(
        name="kl_divergence_diag_gaussian",
        formula="dmu_p = (mu_p - mu_q)/s_q^2 ; ds_p = s_p/s_q^2 - 1/s_p",
        latex=r"\frac{\partial D}{\partial\mu_p} = \frac{\mu_p-\mu_q}{\sigma_q^2},\quad"
        r"\frac{\partial D}{\partial\sigma_p} = \frac{\sigma_p}{\sigma_q^2} - \frac{1}{\sigma_p},"
        r"\quad \frac{\partial D}{\partial\sigma_q} = \frac{1}{\sigma_q}"
        r" - \frac{\sigma_p^2 + (\mu_p-\mu_q)^2}{\sigma_q^3}",
        function=lambda mp, sp, mq, sq: jaxent.kl_divergence_diag_gaussian(mp, sp, mq, sq),
        closed_form=_cf(_gauss_cf),
        plain=_gauss_plain,
        argnums=(0, 1, 2, 3),
        sample=lambda rng: (
            rng.normal(size=K),
            rng.uniform(0.3, 2.0, size=K),
            rng.normal(size=K),
            rng.uniform(0.3, 2.0, size=K),
        ),
        convention="autodiff of the closed-form KL (no custom rule).",
    )
)

register(
    Derivation(
        name="kl_estimate[k3]",
        formula="dk3/dlog_q = r - 1 = -dk3/dlog_p, r = q/p",
        latex=r"\frac{\partial k_3}{\partial \log q} = r - 1,\quad r = \frac{q(x)}{p(x)}",
        function=lambda lp, lq: jnp.sum(jaxent.kl_estimate(lp, lq, estimator="k3")),
        closed_form=_cf(lambda lp, lq: (-jnp.expm1(lq - lp), jnp.expm1(lq - lp))),
        plain=lambda lp, lq: jnp.sum(jnp.exp(lq - lp) - 1.0 - (lq - lp)),
        argnums=(0, 1),
        sample=lambda rng: (-rng.exponential(size=K), -rng.exponential(size=K)),
        convention="per-sample estimates, summed; log p = policy (sampler), log q = reference.",
    )
)


# Expected gradients of the KL estimators as RL surrogates, by exact enumeration
# over a K-way categorical: pi = softmax(a) (policy, sampler), pi_ref = softmax(b).
# ``function`` is the enumerated expectation E_{x ~ sg(pi)}[surrogate(x)], whose
# gradient is jaxent's expected gradient; ``plain`` is the objective it claims to
# follow (written without jaxent), so autodiff, FD and Taylor check the claim
# about the objective and the own-rule columns check the surrogate against it.


def _expected_surrogate(estimator: str, where: str) -> Callable[[Array, Array], Array]:
    def f(a: Array, b: Array) -> Array:
        lp, lq = jaxent.log_softmax(a), jaxent.log_softmax(b)
        w = jax.lax.stop_gradient(jnp.exp(lp))  # samples are drawn, not differentiated
        k = jaxent.kl_estimate(lp, lq, estimator=estimator)
        if where == "loss":
            return jnp.sum(w * k)
        return jnp.sum(w * jax.lax.stop_gradient(k) * lp)  # k in the reward: k x score

    return f


def _grad_kl_pq(a: Array, b: Array) -> Array:
    p = jaxent.softmax(a)
    delta = jaxent.log_softmax(a) - jaxent.log_softmax(b)
    return p * (delta - jnp.sum(p * delta))


_KL_EXPECTED = (
    (
        "k1",
        "loss",
        "E[grad k1] = 0",
        r"\mathbb E_\pi[\nabla k_1] = 0",
        lambda a, b: jnp.zeros_like(a),
        lambda a, b: 0.0 * jnp.sum(a),
    ),
    (
        "k1",
        "reward",
        "E[k1 grad log pi] = grad D(pi||ref) = p (log p - log q - D)",
        r"\mathbb E_\pi[k_1\nabla\log\pi] = \nabla D(\pi\|\pi_\mathrm{ref})",
        _grad_kl_pq,
        lambda a, b: _kl_logits_plain(a, b, None),
    ),
    (
        "k2",
        "loss",
        "E[grad k2] = grad D(pi||ref) = p (log p - log q - D)",
        r"\mathbb E_\pi[\nabla k_2] = \nabla D(\pi\|\pi_\mathrm{ref})",
        _grad_kl_pq,
        lambda a, b: _kl_logits_plain(a, b, None),
    ),
    (
        "k3",
        "loss",
        "E[grad k3] = grad D(ref||pi) = p - q",
        r"\mathbb E_\pi[\nabla k_3] = \nabla D(\pi_\mathrm{ref}\|\pi) = \pi - \pi_\mathrm{ref}",
        lambda a, b: jaxent.softmax(a) - jaxent.softmax(b),
        lambda a, b: _kl_logits_plain(b, a, None),
    ),
    (
        "k3+",
        "loss",
        "E[grad k3+] = grad D(pi||ref) = p (log p - log q - D)",
        r"\mathbb E_\pi[\nabla k_{3+}] = \nabla D(\pi\|\pi_\mathrm{ref})",
        _grad_kl_pq,
        lambda a, b: _kl_logits_plain(a, b, None),
    ),
)

for _est, _where, _formula, _tex, _cf_fn, _plain_fn in _KL_EXPECTED:
    register(
        Derivation(
            name=f"kl_estimate[{_est} {'as a loss' if _where == 'loss' else 'in the reward'}, expected]",
            formula=_formula,
            latex=_tex,
            function=_expected_surrogate(_est, _where),
            closed_form=_cf(_cf_fn),
            plain=_plain_fn,
            argnums=(0,),
            sample=lambda rng: (_logits(rng), _logits(rng)),
            convention=(
                "on policy, by exact enumeration over K = 5 classes: pi = softmax(a), the"
                " sampler held constant; "
                + (
                    "k in the reward multiplies the score grad log pi (k detached)."
                    if _where == "reward"
                    else "k as a loss."
                )
            ),
            second_order=False,  # a surrogate's Hessian is not the objective's
            surrogate=True,
        )
    )

# =========================================================================== losses


_SCE_LABEL_NOTE = (
    "dL/dy_i is taken as 0 at a -inf logit (an impossible class; -log p_i = +inf would"
    " make forward mode 0 * inf = NaN); the value is then +inf: compared in the logits only"
)
_Y_SOFT = np.array([0.1, 0.3, 0.2, 0.15, 0.05])  # sums to 0.8


def _sce_cf(z: Array, y: Array, mask: Array | None) -> tuple[Array, Array]:
    yk = y if mask is None else jnp.where(mask, y, 0.0)
    p = jaxent.softmax(z, where=mask)
    ls = jaxent.log_softmax(z, where=mask)
    finite = ls > -jnp.inf  # an impossible class gets label derivative 0
    return jnp.sum(yk) * p - yk, jnp.where(finite, -ls, 0.0)


def _sce_plain(z: Array, y: Array, mask: Array | None) -> Array:
    ls = _plain_log_softmax(z, mask)
    act = (y != 0) | (ls > -jnp.inf)  # clean only the 0 * log 0 corner
    if mask is not None:
        act = act & mask
    return -jnp.sum(_plogq(y, ls, act))


def _sce_symbolic(sp: Any) -> tuple[Any, tuple[Any, ...]]:
    """Seed 000's loss L = -sum_i y_i log softmax(z)_i, as a sympy expression (K = 5)."""
    z = sp.symbols(f"z0:{K}", real=True)
    y = sp.symbols(f"y0:{K}", real=True)
    lse = sp.log(sum(sp.exp(zi) for zi in z))
    return -sum(yi * (zi - lse) for zi, yi in zip(z, y, strict=True)), (list(z), list(y), None)


register(
    Derivation(
        name="softmax_cross_entropy",
        formula="dL/dz = (sum y) softmax(z) - y ; dL/dy = -log softmax(z)",
        latex=r"\nabla_z L = \Big(\sum_i y_i\Big)\mathrm{softmax}(z) - y,\quad"
        r"\nabla_y L = -\log\mathrm{softmax}(z)",
        function=lambda z, y, mask: jaxent.softmax_cross_entropy(z, y, where=mask),
        closed_form=_cf(_sce_cf),
        plain=_sce_plain,
        argnums=(0, 1),
        sample=lambda rng: (_logits(rng), _soft_labels(rng), None),
        symbolic=_sce_symbolic,
        edge_cases=(
            Case("-inf logits, no mass there", (_Z_INF, np.array([0.6, 0, 0.3, 0.1, 0]), None)),
            Case(
                "label mass on a -inf logit",
                (_Z_INF, np.array([0.6, 0.2, 0.1, 0.1, 0.0]), None),
                reference_argnums=(0,),
                note="L = +inf, the true value, with a finite gradient in the logits; "
                + _SCE_LABEL_NOTE,
            ),
            Case("masked classes", (_Z_RANGE, _Y_SOFT, _MASK)),
            Case("fully masked row", (_Z_RANGE, _Y_SOFT, _NONE)),
            Case("p ~ 1e-17", (_Z_GAP, np.array([0.0, 1.0, 0.0, 0.0, 0.0]), None)),
        ),
        convention=(
            "y_i = 0 at a -inf logit contributes 0, and dL/dy_i = 0 there (an impossible"
            " class); removed classes are left out of softmax and sum; empty row: 0."
        ),
    )
)


def _onehot(label: Array, k: int = K) -> Array:
    return (jnp.arange(k) == label).astype(jnp.result_type(float))


def _int_ce_cf(z: Array, label: Array, mask: Array | None) -> Array:
    p = jaxent.softmax(z, where=mask)
    onehot = _onehot(label) if mask is None else jnp.where(mask, _onehot(label), 0.0)
    return jnp.where(jnp.any(p > 0), p - onehot, 0.0)


def _int_ce_plain(
    z: Array,
    label: Array,
    mask: Array | None,
    cw: Array | None = None,
    z_loss: float = 0.0,
    ignore: int | None = None,
) -> Array:
    zm = _masked(z, mask)
    lse = _plain_lse(zm)[0]
    w = 1.0 if cw is None else cw[jnp.clip(label, 0, K - 1)]
    loss = w * (lse - zm[label]) + z_loss * lse**2
    keep = lse > -jnp.inf
    if ignore is not None:
        keep = keep & (label != ignore)
    return jnp.where(keep, loss, 0.0)


register(
    Derivation(
        name="softmax_cross_entropy_with_integer_labels",
        formula="dL/dz = softmax(z) - onehot(y)",
        latex=r"\nabla_z L = \mathrm{softmax}(z) - e_y",
        function=lambda z, label, mask: jaxent.softmax_cross_entropy_with_integer_labels(
            z, label, where=mask
        ),
        closed_form=_cf(_int_ce_cf),
        plain=_int_ce_plain,
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K), None),
        edge_cases=(
            Case("-inf logits", (_Z_INF, 2, None)),
            Case("label on a -inf logit", (_Z_INF, 1, None), note="L = +inf, gradient p - e_y"),
            Case("masked classes", (_Z_RANGE, 0, _MASK)),
            Case("label on a masked class", (_Z_RANGE, 2, _MASK)),
            Case("fully masked row", (_Z_RANGE, 0, _NONE)),
            Case("p ~ 1e-17", (_Z_GAP, 1, None)),
        ),
        convention=(
            "a label on a -inf or removed class gives +inf with gradient p (the"
            " removed class gets 0); an empty row gives 0 with gradient 0."
        ),
    )
)

_CW = np.array([0.5, 2.0, 1.0, 0.0, 1.5])
_ZL = 0.05
_IGNORE = -100


def _int_ce_w_cf(z: Array, label: Array) -> Array:
    p = jaxent.softmax(z)
    lse = jaxent.logsumexp(z)
    w = jnp.asarray(_CW)[jnp.clip(label, 0, K - 1)]
    g = w * (p - _onehot(label)) + 2 * _ZL * lse * p
    return jnp.where(label == _IGNORE, 0.0, g)


register(
    Derivation(
        name="softmax_cross_entropy_with_integer_labels[weighted]",
        formula="dL/dz = w_y (softmax(z) - onehot(y)) + 2 z_loss lse(z) softmax(z)",
        latex=r"\nabla_z L = w_y(\mathrm{softmax}(z) - e_y)"
        r" + 2\lambda_z\,\mathrm{lse}(z)\,\mathrm{softmax}(z)",
        function=lambda z, label: jaxent.softmax_cross_entropy_with_integer_labels(
            z, label, class_weights=jnp.asarray(_CW), z_loss=_ZL, ignore_index=_IGNORE
        ),
        closed_form=_cf(_int_ce_w_cf),
        plain=lambda z, label: _int_ce_plain(z, label, None, jnp.asarray(_CW), _ZL, _IGNORE),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K)),
        edge_cases=(
            Case("ignore_index row", (_logits(np.random.default_rng(1)), _IGNORE)),
            Case("zero class weight", (_logits(np.random.default_rng(2)), 3)),
            Case("-inf logits", (_Z_INF, 0)),
        ),
        convention="class_weights = [.5, 2, 1, 0, 1.5], z_loss = 0.05, ignore_index = -100: ignored rows give 0.",
    )
)

_CAP = 3.0


def _softcap_cf(z: Array, label: Array) -> Array:
    t = jnp.tanh(z / _CAP)
    return (1 - t * t) * (jaxent.softmax(_CAP * t) - _onehot(label))


register(
    Derivation(
        name="softmax_cross_entropy_with_integer_labels[softcap]",
        formula="dL/dz = (1 - tanh^2(z/c)) (softmax(c tanh(z/c)) - onehot(y))",
        latex=r"\nabla_z L = (1 - t^2)\odot(\mathrm{softmax}(c\,t) - e_y),\quad t = \tanh(z/c)",
        function=lambda z, label: jaxent.softmax_cross_entropy_with_integer_labels(
            z, label, logit_softcap=_CAP
        ),
        closed_form=_cf(_softcap_cf),
        plain=lambda z, label: _int_ce_plain(_CAP * jnp.tanh(z / _CAP), label, None),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K)),
        edge_cases=(Case("saturated cap", (np.array([30.0, -30.0, 0.0, 2.0, -1.0]), 1)),),
        convention="cap c = 3.",
    )
)


def _sig(x: Array) -> Array:
    return jax.nn.sigmoid(x)


def _sbce_cf(z: Array, y: Array, w: Array) -> tuple[Array, Array, Array]:
    return (
        (1 - y) * _sig(z) - w * y * _sig(-z),
        w * _plain_softplus(-z) - _plain_softplus(z),
        y * _plain_softplus(-z),
    )


def _sbce_plain(z: Array, y: Array, w: Array) -> Array:
    # -[w y log sigma(z) + (1 - y) log(1 - sigma(z))] with log sigma(z) = -softplus(-z).
    return jnp.sum(w * y * _plain_softplus(-z) + (1 - y) * _plain_softplus(z))


_Z_SAT = np.array([50.0, -50.0, 30.0, -30.0, 0.0])
register(
    Derivation(
        name="sigmoid_binary_cross_entropy",
        formula="dL/dz = sigmoid(z) - y",
        latex=r"\frac{\partial L}{\partial z} = \sigma(z) - y",
        function=lambda z, y: jnp.sum(jaxent.sigmoid_binary_cross_entropy(z, y)),
        closed_form=_cf(lambda z, y: (_sig(z) - y, -z)),
        plain=lambda z, y: _sbce_plain(z, y, jnp.ones_like(z)),
        argnums=(0, 1),
        sample=lambda rng: (_logits(rng), rng.uniform(size=K)),
        edge_cases=(
            Case(
                "saturated, labels agree",
                (_Z_SAT, np.array([1.0, 0.0, 1.0, 0.0, 1.0])),
                note="z = 50, y = 1: dL/dz = -1.93e-22 to full relative accuracy",
            ),
            Case("saturated, labels disagree", (_Z_SAT, np.array([0.0, 1.0, 0.0, 1.0, 0.5]))),
        ),
        convention=(
            "elementwise, summed. Computed as (1 - y) sigma(z) - y sigma(-z) so that"
            " z = 50, y = 1 gives -1.93e-22, not 0. dL/dy = -z."
        ),
    )
)

register(
    Derivation(
        name="sigmoid_binary_cross_entropy[pos_weight]",
        formula="dL/dz = (1 - y) sigmoid(z) - w y sigmoid(-z)",
        latex=r"\frac{\partial L}{\partial z} = (1-y)\,\sigma(z) - w_+ y\,\sigma(-z)",
        function=lambda z, y, w: jnp.sum(jaxent.sigmoid_binary_cross_entropy(z, y, pos_weight=w)),
        closed_form=_cf(_sbce_cf),
        plain=_sbce_plain,
        argnums=(0, 1, 2),
        sample=lambda rng: (_logits(rng), rng.uniform(size=K), rng.uniform(0.5, 3.0, size=K)),
        edge_cases=(
            Case("saturated", (_Z_SAT, np.array([1.0, 0.0, 0.0, 1.0, 0.5]), np.full(K, 2.0))),
        ),
        convention="elementwise, summed; dL/dy = w softplus(-z) - softplus(z), dL/dw = y softplus(-z).",
    )
)


def _bce_plain(p: Array, y: Array) -> Array:
    a, b = y != 0, (1 - y) != 0
    return -jnp.sum(_plogq(y, _log_on(p, a), a) + _plogq(1 - y, _log_on(1 - p, b), b))


register(
    Derivation(
        name="binary_cross_entropy",
        formula="dL/dp = (1 - y)/(1 - p) - y/p",
        latex=r"\frac{\partial L}{\partial p} = \frac{1-y}{1-p} - \frac{y}{p}",
        function=lambda p, y: jnp.sum(jaxent.binary_cross_entropy(p, y)),
        closed_form=_cf(lambda p, y: ((1 - y) / (1 - p) - y / p, jnp.log1p(-p) - jnp.log(p))),
        plain=_bce_plain,
        argnums=(0, 1),
        sample=lambda rng: (rng.uniform(0.05, 0.95, size=K), rng.uniform(size=K)),
        convention="elementwise, summed; 0 log 0 = 0 (no clamping at -100 as in PyTorch).",
    )
)


def _wmean_cf(losses: Array, weights: Array) -> tuple[Array, Array]:
    total = jnp.sum(weights)
    mean = jnp.sum(weights * losses) / total
    return weights / total, (losses - mean) / total


register(
    Derivation(
        name="weighted_mean",
        formula="d/dL_n = w_n / sum w ; d/dw_n = (L_n - mean) / sum w",
        latex=r"\frac{\partial \bar L}{\partial L_n} = \frac{w_n}{\sum_m w_m},\quad"
        r"\frac{\partial \bar L}{\partial w_n} = \frac{L_n - \bar L}{\sum_m w_m}",
        function=lambda losses, weights: jaxent.weighted_mean(losses, weights=weights),
        closed_form=_cf(_wmean_cf),
        plain=lambda losses, weights: jnp.sum(weights * losses) / jnp.sum(weights),
        argnums=(0, 1),
        sample=lambda rng: (rng.exponential(size=K), rng.uniform(0.1, 2.0, size=K)),
        convention="no custom rule (autodiff of a ratio of sums).",
    )
)

# =========================================================================== label smoothing


def _smoothed(label: Array, eps: Array | float, convention: str) -> Array:
    onehot = _onehot(label)
    if convention == "uniform":
        return (1 - eps) * onehot + eps / K
    return (1 - eps) * onehot + eps / (K - 1) * (1 - onehot)


def _ls_ce_cf(convention: str) -> Callable[..., tuple[Array, Array]]:
    def cf(z: Array, label: Array, eps: Array) -> tuple[Array, Array]:
        ls = jaxent.log_softmax(z)
        ls = jnp.where(ls > -jnp.inf, ls, 0.0)  # convention: a -inf class adds 0 to dL/deps
        dy = _smoothed(label, 1.0, convention) - _smoothed(label, 0.0, convention)
        return jaxent.softmax(z) - _smoothed(label, eps, convention), -jnp.sum(dy * ls)

    return cf


def _ls_ce_plain(convention: str) -> Callable[..., Array]:
    def plain(z: Array, label: Array, eps: Array) -> Array:
        return -jnp.sum(_smoothed(label, eps, convention) * _plain_log_softmax(z))

    return plain


for _conv, _tex in (
    ("uniform", r"(1-\varepsilon)e_y + \varepsilon/K"),
    ("off_target", r"(1-\varepsilon)e_y + \frac{\varepsilon}{K-1}(1 - e_y)"),
):
    register(
        Derivation(
            name=f"label_smoothed_cross_entropy[{_conv}]",
            formula="dL/dz = softmax(z) - y_smooth ; dL/deps = -<dy_smooth/deps, log p>",
            latex=r"\nabla_z L = \mathrm{softmax}(z) - \tilde y,\quad \tilde y = " + _tex,
            function=functools.partial(
                lambda z, label, eps, c: jaxent.label_smoothed_cross_entropy(
                    z, label, eps, convention=c
                ),
                c=_conv,
            ),
            closed_form=_cf(_ls_ce_cf(_conv)),
            plain=_ls_ce_plain(_conv),
            argnums=(0, 2),
            sample=lambda rng: (_logits(rng), rng.integers(0, K), rng.uniform(0.01, 0.3)),
            edge_cases=(
                Case(
                    "smoothing mass on a -inf logit",
                    (_Z_INF, 0, 0.1),
                    reference_argnums=(0,),
                    note="L = +inf; the logits gradient p - y_smooth stays finite",
                ),
                Case("eps = 0", (_Z_GAP, 1, 0.0)),
            ),
            convention=(
                f"integer labels, convention={_conv!r}; a class with log p = -inf adds 0"
                " to dL/deps (L is +inf there for every eps > 0)."
            ),
        )
    )


def _ls_soft_cf(z: Array, y: Array) -> Array:
    t = jnp.asarray(_CW) * ((1 - 0.1) * y + 0.1 / K)
    return jnp.sum(t) * jaxent.softmax(z) - t


register(
    Derivation(
        name="label_smoothed_cross_entropy[soft,class_weights]",
        formula="dL/dz = (sum w y_s) softmax(z) - w y_s",
        latex=r"\nabla_z L = \Big(\sum_c w_c\tilde y_c\Big)\mathrm{softmax}(z) - w\odot\tilde y",
        function=lambda z, y: jaxent.label_smoothed_cross_entropy(
            z, y, 0.1, class_weights=jnp.asarray(_CW)
        ),
        closed_form=_cf(_ls_soft_cf),
        plain=lambda z, y: -jnp.sum(jnp.asarray(_CW) * (0.9 * y + 0.1 / K) * _plain_log_softmax(z)),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), _probs(rng)),
        convention="eps = 0.1 (uniform), class_weights = [.5, 2, 1, 0, 1.5].",
    )
)

register(
    Derivation(
        name="smooth_labels",
        formula="dy_s/dy = (1 - eps) I ; dy_s/deps = 1/K - y",
        latex=r"\frac{\partial\tilde y}{\partial y} = (1-\varepsilon) I,\quad"
        r"\frac{\partial\tilde y}{\partial\varepsilon} = \frac{1}{K} - y",
        function=lambda y, eps: jaxent.smooth_labels(y, eps),
        closed_form=_cf(lambda y, eps: ((1 - eps) * jnp.eye(K), 1.0 / K - y)),
        plain=lambda y, eps: (1 - eps) * y + eps / K,
        argnums=(0, 1),
        sample=lambda rng: (_probs(rng), rng.uniform(0.0, 0.5)),
        convention="probability labels, uniform convention.",
    )
)

register(
    Derivation(
        name="with_label_smoothing",
        formula="dL/dz = softmax(z) - y_smooth",
        latex=r"\nabla_z L = \mathrm{softmax}(z) - \tilde y",
        function=lambda z, label: jaxent.with_label_smoothing(
            jaxent.softmax_cross_entropy, 0.2, convention="off_target"
        )(z, label),
        closed_form=_cf(lambda z, label: jaxent.softmax(z) - _smoothed(label, 0.2, "off_target")),
        plain=lambda z, label: _ls_ce_plain("off_target")(z, label, 0.2),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K)),
        convention="with_label_smoothing(softmax_cross_entropy, 0.2, convention='off_target').",
    )
)


def _gap_cf(eps: Array, k: int, convention: str) -> Array:
    if convention == "uniform":
        return -k / (eps * (eps + k * (1 - eps)))
    return -1.0 / (1 - eps) - 1.0 / eps


for _conv in ("uniform", "off_target"):
    register(
        Derivation(
            name=f"optimal_logit_gap[{_conv}]",
            formula=(
                "d gap/deps = -K / (eps (eps + K (1 - eps)))"
                if _conv == "uniform"
                else "d gap/deps = -1/(1 - eps) - 1/eps"
            ),
            latex=(
                r"\frac{d}{d\varepsilon}\log\Big(1 + \frac{K(1-\varepsilon)}{\varepsilon}\Big)"
                r" = -\frac{K}{\varepsilon(\varepsilon + K(1-\varepsilon))}"
                if _conv == "uniform"
                else r"\frac{d}{d\varepsilon}\log\frac{(1-\varepsilon)(K-1)}{\varepsilon}"
                r" = -\frac{1}{1-\varepsilon} - \frac{1}{\varepsilon}"
            ),
            function=functools.partial(
                lambda eps, c: jaxent.optimal_logit_gap(eps, K, convention=c), c=_conv
            ),
            closed_form=_cf(functools.partial(_gap_cf, k=K, convention=_conv)),
            plain=functools.partial(
                lambda eps, c: jnp.log(
                    (1 - eps + eps / K) / (eps / K)
                    if c == "uniform"
                    else (1 - eps) / (eps / (K - 1))
                ),
                c=_conv,
            ),
            argnums=(0,),
            sample=lambda rng: (rng.uniform(0.01, 0.5),),
            convention=f"K = {K}, convention={_conv!r}; no custom rule.",
        )
    )

# =========================================================================== large vocabularies

_EPS_LV, _ZL_LV, _D = 0.1, 0.05, 3


def _lv_dz(z: Array, label: Array) -> Array:
    """d loss / d logits of the smoothed, z-lossed integer cross-entropy."""
    p, lse = jaxent.softmax(z), jaxent.logsumexp(z)
    return p * (1 + 2 * _ZL_LV * lse) - (1 - _EPS_LV) * _onehot(label) - _EPS_LV / K


def _lv_plain_from_logits(z: Array, label: Array) -> Array:
    lse = _plain_lse(z)[0]
    return lse - (1 - _EPS_LV) * z[label] - _EPS_LV / K * jnp.sum(z) + _ZL_LV * lse**2


def _linear_cf(h: Array, w: Array, label: Array) -> tuple[Array, Array]:
    g = _lv_dz(h @ w, label)
    return w @ g, jnp.outer(h, g)


register(
    Derivation(
        name="linear_cross_entropy",
        formula="dL/dh = W g ; dL/dW = h g^T ; g = p (1 + 2 lam lse) - (1 - eps) e_y - eps/V",
        latex=r"g = p(1 + 2\lambda\,\mathrm{lse}) - (1-\varepsilon)e_y - \frac{\varepsilon}{V},"
        r"\quad \nabla_h L = W g,\quad \nabla_W L = h g^\top",
        function=jax.jit(
            lambda h, w, label: jaxent.linear_cross_entropy(
                h, w, label, label_smoothing=_EPS_LV, z_loss=_ZL_LV, block_size=2
            )
        ),
        closed_form=_cf(_linear_cf),
        plain=lambda h, w, label: _lv_plain_from_logits(h @ w, label),
        argnums=(0, 1),
        sample=lambda rng: (rng.normal(size=_D), rng.normal(size=(_D, K)), rng.integers(0, K)),
        convention="eps = 0.1, z_loss = 0.05, block_size = 2 (ragged last block).",
        forward_mode=False,
    )
)


@functools.cache
def _tp_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((1,), ("tp",), axis_types=(jax.sharding.AxisType.Auto,))


@jax.jit  # compiled once: shard_map is slow to run op by op
def _vp_ce(z: Array, label: Array) -> Array:
    from jax.sharding import PartitionSpec as P

    f = jax.shard_map(
        lambda zz, yy: jaxent.vocab_parallel_cross_entropy(
            zz, yy, "tp", label_smoothing=_EPS_LV, z_loss=_ZL_LV
        ),
        mesh=_tp_mesh(),
        in_specs=(P(None, "tp"), P()),
        out_specs=P(),
    )
    return f(z[None], jnp.reshape(label, (1,)))[0]


register(
    Derivation(
        name="vocab_parallel_cross_entropy",
        formula="dL/dz = p (1 + 2 lam lse) - (1 - eps) e_y - eps/V",
        latex=r"\nabla_z L = p(1 + 2\lambda\,\mathrm{lse}) - (1-\varepsilon)e_y"
        r" - \frac{\varepsilon}{V}",
        function=_vp_ce,
        closed_form=_cf(_lv_dz),
        plain=_lv_plain_from_logits,
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K)),
        convention="shard_map over a 1-device mesh; eps = 0.1, z_loss = 0.05.",
        forward_mode=False,
    )
)


@jax.jit
def _vp_linear_ce(h: Array, w: Array, label: Array) -> Array:
    from jax.sharding import PartitionSpec as P

    f = jax.shard_map(
        lambda hh, ww, yy: jaxent.vocab_parallel_linear_cross_entropy(
            hh, ww, yy, "tp", label_smoothing=_EPS_LV, z_loss=_ZL_LV, block_size=2
        ),
        mesh=_tp_mesh(),
        in_specs=(P(), P(None, "tp"), P()),
        out_specs=P(),
    )
    return f(h[None], w, jnp.reshape(label, (1,)))[0]


register(
    Derivation(
        name="vocab_parallel_linear_cross_entropy",
        formula="dL/dh = W g ; dL/dW = h g^T (as linear_cross_entropy)",
        latex=REGISTRY["linear_cross_entropy"].latex,
        function=_vp_linear_ce,
        closed_form=_cf(_linear_cf),
        plain=lambda h, w, label: _lv_plain_from_logits(h @ w, label),
        argnums=(0, 1),
        sample=lambda rng: (rng.normal(size=_D), rng.normal(size=(_D, K)), rng.integers(0, K)),
        convention="shard_map over a 1-device mesh; eps = 0.1, z_loss = 0.05, block_size = 2.",
        forward_mode=False,
    )
)


# =========================================================================== RL and distillation (issue 12)


def _log_prob_cf(z: Array, label: Array, mask: Array | None) -> Array:
    return -_int_ce_cf(z, label, mask)


register(
    Derivation(
        name="log_prob_from_logits",
        formula="d log_prob/dz = onehot(y) - softmax(z)",
        latex=r"\nabla_z \log\mathrm{softmax}(z)_y = e_y - \mathrm{softmax}(z)",
        function=lambda z, label, mask: jaxent.log_prob_from_logits(z, label, where=mask),
        closed_form=_cf(_log_prob_cf),
        plain=lambda z, label, mask: -_int_ce_plain(z, label, mask),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K), None),
        edge_cases=(
            Case("-inf logits", (_Z_INF, 2, None)),
            Case("label on a -inf logit", (_Z_INF, 1, None), note="-inf, gradient e_y - p"),
            Case("masked classes", (_Z_RANGE, 0, _MASK)),
            Case("label on a masked class", (_Z_RANGE, 2, _MASK)),
            Case("fully masked row", (_Z_RANGE, 0, _NONE)),
            Case("p ~ 1e-17", (_Z_GAP, 1, None)),
        ),
        convention=(
            "minus the integer-label cross-entropy (its rule): a label on a -inf or removed"
            " class gives -inf with gradient -p (the removed class gets 0); empty row: 0."
        ),
    )
)

_T_RL = 0.7


register(
    Derivation(
        name="log_prob_from_logits[temperature]",
        formula="d log_prob/dz = (onehot(y) - softmax(z/T)) / T",
        latex=r"\nabla_z \log\mathrm{softmax}(z/T)_y = \frac{e_y - \mathrm{softmax}(z/T)}{T}",
        function=lambda z, label: jaxent.log_prob_from_logits(z, label, temperature=_T_RL),
        closed_form=_cf(lambda z, label: -_int_ce_cf(z / _T_RL, label, None) / _T_RL),
        plain=lambda z, label: -_int_ce_plain(z / _T_RL, label, None),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K)),
        convention="T = 0.7.",
    )
)


def _k_plain(lp: Array, lq: Array, estimator: str) -> Array:
    log_r = lq - lp
    k2 = 0.5 * log_r**2
    k3 = jnp.exp(log_r) - 1.0 - log_r
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return k2
    return k3


_K_DLOGP = {
    "k1": lambda lp, lq: jnp.ones_like(lp),
    "k2": lambda lp, lq: lp - lq,
}

# k3+ is not registered: a straight-through estimator (k3's value, k2's gradient) has
# no finite-difference check by design; its rule is k2's (tests/test_rl.py checks it).
for _est in ("k1", "k2"):
    register(
        Derivation(
            name=f"kl_estimate[{_est}]",
            formula={
                "k1": "dk1/dlog_p = 1 = -dk1/dlog_q",
                "k2": "dk2/dlog_p = log p - log q = -dk2/dlog_q",
            }[_est],
            latex={
                "k1": r"\frac{\partial k_1}{\partial\log p} = 1 = -\frac{\partial k_1}{\partial\log q}",
                "k2": r"\frac{\partial k_2}{\partial\log p} = \log p - \log q",
            }[_est],
            function=functools.partial(
                lambda lp, lq, e: jnp.sum(jaxent.kl_estimate(lp, lq, estimator=e)), e=_est
            ),
            closed_form=_cf(
                functools.partial(
                    lambda lp, lq, e: (_K_DLOGP[e](lp, lq), -_K_DLOGP[e](lp, lq)), e=_est
                )
            ),
            plain=functools.partial(lambda lp, lq, e: jnp.sum(_k_plain(lp, lq, e)), e=_est),
            argnums=(0, 1),
            sample=lambda rng: (-rng.exponential(size=K), -rng.exponential(size=K)),
            convention="per-sample estimates, summed; log p = policy (sampler), log q = reference.",
        )
    )


def _k3_sampler_cf(lp: Array, lq: Array, ls: Array) -> tuple[Array, Array]:
    w = jnp.exp(lp - ls)
    k3 = jnp.expm1(lq - lp) - (lq - lp)
    return w * (-jnp.expm1(lq - lp) + k3), w * jnp.expm1(lq - lp)


register(
    Derivation(
        name="kl_estimate[k3, log_sampler]",
        formula="d(w k3)/dlog_p = w (1 - r + k3), d(w k3)/dlog_q = w (r - 1), w = p/mu held in mu",
        latex=r"\frac{\partial (w k_3)}{\partial\log p} = w(1 - r + k_3),\quad"
        r"\frac{\partial (w k_3)}{\partial\log q} = w(r - 1),\quad w = \frac{p(x)}{\mu(x)}",
        function=lambda lp, lq, ls: jnp.sum(jaxent.kl_estimate(lp, lq, log_sampler=ls)),
        closed_form=_cf(_k3_sampler_cf),
        plain=lambda lp, lq, ls: jnp.sum(
            jnp.exp(lp - jax.lax.stop_gradient(ls)) * _k_plain(lp, lq, "k3")
        ),
        argnums=(0, 1),
        sample=lambda rng: tuple(-rng.exponential(size=K) for _ in range(3)),
        convention="importance weight exp(log p - log mu), the sampler mu held constant.",
    )
)

_AGG_MASK = np.array(
    [[True, True, True, False], [False, False, False, False], [True, False, False, False]]
)


def _agg_plain(mode: str) -> Callable[[Array], Array]:
    def plain(losses: Array) -> Array:  # verl's agg_loss, dp_size = 1, no +1e-8
        m = jnp.asarray(_AGG_MASK).astype(losses.dtype)
        seq = jnp.sum(jnp.where(_AGG_MASK, losses, 0.0), axis=-1)
        cnt = jnp.sum(m, axis=-1)
        nonempty = cnt > 0
        n_seq = jnp.sum(nonempty.astype(losses.dtype))
        if mode == "token-mean":
            return jnp.sum(seq) / jnp.sum(cnt)
        if mode == "seq-mean-token-sum":
            return jnp.sum(jnp.where(nonempty, seq, 0.0)) / n_seq
        if mode == "seq-mean-token-mean":
            per = seq / jnp.where(nonempty, cnt, 1.0)
            return jnp.sum(jnp.where(nonempty, per, 0.0)) / n_seq
        return jnp.sum(seq) / losses.shape[-1]

    return plain


def _agg_cf(mode: str) -> Callable[[Array], Array]:
    def cf(losses: Array) -> Array:
        m = jnp.asarray(_AGG_MASK).astype(losses.dtype)
        cnt = jnp.sum(m, axis=-1, keepdims=True)
        n_seq = jnp.sum((cnt > 0).astype(losses.dtype))
        coef = {
            "token-mean": 1.0 / jnp.sum(cnt),
            "seq-mean-token-sum": 1.0 / n_seq,
            "seq-mean-token-mean": 1.0 / (jnp.where(cnt > 0, cnt, 1.0) * n_seq),
            "seq-mean-token-sum-norm": 1.0 / losses.shape[-1],
        }[mode]
        return m * coef

    return cf


for _mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
    register(
        Derivation(
            name=f"aggregate_loss[{_mode}]",
            formula={
                "token-mean": "dA/dL = m / N (N = kept tokens)",
                "seq-mean-token-sum": "dA/dL = m / |S| (S = non-empty sequences)",
                "seq-mean-token-mean": "dA/dL[b] = m[b] / (n_b |S|)",
                "seq-mean-token-sum-norm": "dA/dL = m / T (T = tokens per row)",
            }[_mode],
            latex=r"\frac{\partial A}{\partial L_{bt}} = m_{bt}\,c_b",
            function=functools.partial(
                lambda lo, md: jaxent.aggregate_loss(lo, _AGG_MASK, mode=md), md=_mode
            ),
            closed_form=_cf(_agg_cf(_mode)),
            plain=_agg_plain(_mode),
            argnums=(0,),
            sample=lambda rng: (rng.normal(size=_AGG_MASK.shape),),
            convention="verl's agg_loss (dp_size = 1); one empty sequence in the mask.",
        )
    )

_SK_IDX = np.array([3, 0, 1])  # the teacher's top-3 of K = 5 classes


def _sk_teacher(rng: np.random.Generator) -> np.ndarray:
    p = rng.dirichlet(np.full(K, 2.0))
    return np.log(p[_SK_IDX])


def _sk_plain(tail: str) -> Callable[[Array, Array, Array], Array]:
    def plain(z: Array, idx: Array, t: Array) -> Array:
        log_q = _plain_log_softmax(z)
        if tail == "renormalize":
            lp = t - jax.scipy.special.logsumexp(t)
            lq = z[idx] - jax.scipy.special.logsumexp(z[idx])
            return jnp.sum(jnp.exp(lp) * (lp - lq))
        out_set = jnp.ones(K, bool).at[idx].set(False)
        p_tail = 1.0 - jnp.sum(jnp.exp(t))
        log_q_tail = jax.scipy.special.logsumexp(jnp.where(out_set, z, -jnp.inf)) - (
            jax.scipy.special.logsumexp(z)
        )
        head = jnp.sum(jnp.exp(t) * (t - log_q[idx]))
        return head + p_tail * (jnp.log(p_tail) - log_q_tail)

    return plain


def _sk_cf(tail: str) -> Callable[[Array, Array, Array], tuple[Array, Array]]:
    def cf(z: Array, idx: Array, t: Array) -> tuple[Array, Array]:
        sm = jaxent.softmax(z)
        p = jnp.exp(t)
        if tail == "renormalize":
            q_s = sm[idx] / jnp.sum(sm[idx])
            p_s = p / jnp.sum(p)
            kl = jnp.sum(p_s * (jnp.log(p_s) - jnp.log(q_s)))
            gz = jnp.zeros(K).at[idx].add(q_s - p_s)
            return gz, p_s * (jnp.log(p_s) - jnp.log(q_s) - kl)
        out_set = jnp.ones(K, bool).at[idx].set(False)
        p_tail = 1.0 - jnp.sum(p)
        q_tail = jnp.sum(jnp.where(out_set, sm, 0.0))
        gz = sm - jnp.zeros(K).at[idx].add(p) - jnp.where(out_set, sm * p_tail / q_tail, 0.0)
        gt = p * ((t - jnp.log(sm[idx])) - (jnp.log(p_tail) - jnp.log(q_tail)))
        return gz, gt

    return cf


for _tail in ("renormalize", "bucket"):
    register(
        Derivation(
            name=f"sparse_kl_divergence[{_tail}]",
            formula={
                "renormalize": "dD/dz = q_S - p_S on S, 0 outside; dD/dt = p_S (log p_S - log q_S - D)",
                "bucket": "dD/dz = q - p on S, q (1 - p_tail/q_tail) outside;"
                " dD/dt = p (log p/q - log p_tail/q_tail)",
            }[_tail],
            latex={
                "renormalize": r"\nabla_{z_S} D = q_S - p_S,\quad"
                r"\nabla_t D = p_S(\log p_S - \log q_S - D)",
                "bucket": r"\nabla_z D = q - p\,[S] - q\,\frac{p_\mathrm{tail}}{q_\mathrm{tail}}[\bar S]",
            }[_tail],
            function=functools.partial(
                lambda z, idx, t, tl: jaxent.sparse_kl_divergence(z, idx, t, tail=tl), tl=_tail
            ),
            closed_form=_cf(_sk_cf(_tail)),
            plain=_sk_plain(_tail),
            argnums=(0, 2),
            sample=lambda rng: (_logits(rng), _SK_IDX, _sk_teacher(rng)),
            convention="teacher top-3 of 5 classes (indices fixed, distinct).",
        )
    )


# =========================================================================== issue 12: divergences (helper A)
# Temperature, the normalised generalised JSD and total variation. The plain
# definitions are written out here; the closed forms live in _divergences.py.

_T = 2.5


def _kl_logits_t_cf(a: Array, b: Array) -> tuple[Array, Array]:
    p, q = jaxent.softmax(a / _T), jaxent.softmax(b / _T)
    lp, lq = jnp.log(p), jnp.log(q)
    d = jnp.sum(p * (lp - lq))
    return p * (lp - lq - d) / _T, (q - p) / _T


register(
    Derivation(
        name="kl_divergence_from_logits[temperature]",
        formula="dD/db = (q - p)/T, dD/da = p (log p - log q - D)/T; p, q = softmax(./T)",
        latex=r"\nabla_b D = \frac{q - p}{T},\quad \nabla_a D = \frac{p\odot(\log p - \log q - D)}{T},"
        r"\quad p = \mathrm{softmax}(a/T)",
        function=lambda a, b: jaxent.kl_divergence_from_logits(a, b, temperature=_T),
        closed_form=_cf(_kl_logits_t_cf),
        plain=lambda a, b: _plain_kl(_plain_softmax(a / _T), _plain_softmax(b / _T)),
        argnums=(0, 1),
        sample=lambda rng: (_logits(rng), _logits(rng)),
        convention="T = 2.5; the result is not multiplied by T^2.",
    )
)


def _entropy_t_cf(z: Array) -> Array:
    p = jaxent.softmax(z / _T)
    lp = jnp.log(p)
    h = -jnp.sum(p * lp)
    return -p * (lp + h) / _T


register(
    Derivation(
        name="entropy_from_logits[temperature]",
        formula="dH/dz = -p (log p + H)/T, p = softmax(z/T)",
        latex=r"\nabla_z H = -\frac{p\odot(\log p + H)}{T},\quad p = \mathrm{softmax}(z/T)",
        function=lambda z: jaxent.entropy_from_logits(z, temperature=_T),
        closed_form=_cf(_entropy_t_cf),
        plain=lambda z: _plain_entropy(_plain_softmax(z / _T)),
        argnums=(0,),
        sample=lambda rng: (_logits(rng),),
        convention="T = 2.5; the result is not rescaled.",
    )
)


def _plain_js_normalized(p: Array, q: Array, beta: float) -> Array:
    """JSD_beta / (beta (1 - beta)); its limits at beta = 0, 1 are the generalised
    KL sum p log(p/q) - p + q (= D(p||q) on the simplex) and its mirror."""
    if beta == 0.0:
        return _plain_kl(p, q) - jnp.sum(p) + jnp.sum(q)
    if beta == 1.0:
        return _plain_kl(q, p) - jnp.sum(q) + jnp.sum(p)
    return _plain_js(p, q, beta) / (beta * (1 - beta))


def _js_normalized_cf(p: Array, q: Array, beta: float) -> tuple[Array, Array]:
    if beta == 0.0:  # sum p log(p/q) - p + q: log(p/q), 1 - p/q
        return jnp.log(p / q), 1 - p / q
    if beta == 1.0:  # sum q log(q/p) - q + p: 1 - q/p, log(q/p)
        return 1 - q / p, jnp.log(q / p)
    m = beta * p + (1 - beta) * q
    return jnp.log(p / m) / (1 - beta), jnp.log(q / m) / beta


for _b in (0.0, 0.3, 1.0):
    register(
        Derivation(
            name=f"js_divergence[normalized, beta={_b:g}]",
            formula="dJSn/dp = log(p/m)/(1-beta), dJSn/dq = log(q/m)/beta;"
            " beta = 0: sum p log(p/q) - p + q, beta = 1: its mirror",
            latex=r"\frac{\partial}{\partial p_i}\frac{\mathrm{JS}_\beta}{\beta(1-\beta)}"
            r" = \frac{\log(p_i/m_i)}{1-\beta},\quad m = \beta p + (1-\beta) q",
            function=functools.partial(
                lambda p, q, b: jaxent.js_divergence(p, q, beta=b, normalized=True), b=_b
            ),
            closed_form=_cf(functools.partial(lambda p, q, b: _js_normalized_cf(p, q, b), b=_b)),
            plain=functools.partial(lambda p, q, b: _plain_js_normalized(p, q, b), b=_b),
            argnums=(0, 1),
            sample=lambda rng: (_probs(rng), _probs(rng)),
            convention="p is the teacher (GKD); continuous in beta on [0, 1].",
        )
    )


def _js_logits_normalized_cf(a: Array, b: Array, beta: float) -> tuple[Array, Array]:
    p, q = jaxent.softmax(a), jaxent.softmax(b)
    gp, gq = _js_normalized_cf(p, q, beta)
    return p * (gp - jnp.sum(p * gp)), q * (gq - jnp.sum(q * gq))


for _b in (0.0, 0.3, 1.0):
    register(
        Derivation(
            name=f"js_divergence_from_logits[normalized, beta={_b:g}]",
            formula="dJSn/da = p (g - <p, g>), g = log(p/m)/(1-beta)",
            latex=r"\nabla_a = p\odot(g - \langle p, g\rangle),\quad g = \frac{\log(p/m)}{1-\beta}",
            function=functools.partial(
                lambda a, c, b: jaxent.js_divergence_from_logits(a, c, beta=b, normalized=True),
                b=_b,
            ),
            closed_form=_cf(
                functools.partial(lambda a, c, b: _js_logits_normalized_cf(a, c, b), b=_b)
            ),
            plain=functools.partial(
                lambda a, c, b: _plain_js_normalized(_plain_softmax(a), _plain_softmax(c), b),
                b=_b,
            ),
            argnums=(0, 1),
            sample=lambda rng: (_logits(rng), _logits(rng)),
            convention="p = softmax(a) is the teacher (GKD); beta = 0 is TRL's forward KL.",
        )
    )


def _plain_tv(p: Array, q: Array) -> Array:
    return 0.5 * jnp.sum(jnp.abs(p - q))


register(
    Derivation(
        name="total_variation",
        formula="dTV/dp = sign(p - q)/2 = -dTV/dq (0 at ties)",
        latex=r"\frac{\partial\,\mathrm{TV}}{\partial p_i} = \tfrac12\operatorname{sign}(p_i - q_i)"
        r" = -\frac{\partial\,\mathrm{TV}}{\partial q_i}",
        function=lambda p, q: jaxent.total_variation(p, q),
        closed_form=_cf(lambda p, q: (0.5 * jnp.sign(p - q), -0.5 * jnp.sign(p - q))),
        plain=_plain_tv,
        argnums=(0, 1),
        sample=lambda rng: (_probs(rng), _probs(rng)),
        convention="the subgradient 0 at ties p_i = q_i.",
        second_order=False,
    )
)


def _tv_logits_cf(a: Array, b: Array) -> tuple[Array, Array]:
    p, q = jaxent.softmax(a), jaxent.softmax(b)
    s = 0.5 * jnp.sign(p - q)
    return p * (s - jnp.sum(p * s)), -q * (s - jnp.sum(q * s))


register(
    Derivation(
        name="total_variation_from_logits",
        formula="dTV/da = p (s - <p, s>), dTV/db = -q (s - <q, s>), s = sign(p - q)/2",
        latex=r"\nabla_a\mathrm{TV} = p\odot(s - \langle p, s\rangle),\quad"
        r"s = \tfrac12\operatorname{sign}(p - q)",
        function=lambda a, b: jaxent.total_variation_from_logits(a, b),
        closed_form=_cf(_tv_logits_cf),
        plain=lambda a, b: _plain_tv(_plain_softmax(a), _plain_softmax(b)),
        argnums=(0, 1),
        sample=lambda rng: (_logits(rng), _logits(rng)),
        convention="the softmax Jacobian applied to the closed form in probabilities.",
        second_order=False,
    )
)

# =========================================================================== evaluation

_M = 3  # ensemble members in the samples below


def _members(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, 2.0, size=(_M, K))


def _plain_member_probs(zs: Array) -> Array:
    return jax.vmap(_plain_softmax)(zs)


def _brier_plain(z: Array, y: Array) -> Array:
    return jnp.sum((_plain_softmax(z) - jax.nn.one_hot(y, K, dtype=z.dtype)) ** 2)


def _brier_cf(z: Array, y: Array) -> Array:
    p = jaxent.softmax(z)
    e = jax.nn.one_hot(y, K, dtype=z.dtype)
    return 2 * p * ((p - e) - (jnp.sum(p * p) - jnp.sum(p * e)))


register(
    Derivation(
        name="brier_score",
        formula="dB/dz = 2 p * ((p - e_y) - (sum p^2 - p_y))",
        latex=r"\nabla_z \sum_c (p_c - e_{y,c})^2 = 2 p \odot \big((p - e_y) - (\|p\|^2 - p_y)\big)",
        function=lambda z, y: jaxent.brier_score(z, y),
        closed_form=_cf(_brier_cf),
        plain=_brier_plain,
        argnums=(0,),
        sample=lambda rng: (_logits(rng), np.asarray(rng.integers(0, K), np.int32)),
        convention="integer label y; p = softmax(z).",
    )
)


def _ensemble_plain(zs: Array) -> Array:
    return jnp.log(jnp.mean(_plain_member_probs(zs), axis=0))


def _ensemble_cf(zs: Array) -> Array:
    p = jaxent.softmax(zs)  # [M, K]
    w = p / jnp.sum(p, axis=0, keepdims=True)  # member m's share of class i
    eye = jnp.eye(K, dtype=zs.dtype)
    # d log pbar_i / d z_mj = w_mi (delta_ij - p_mj): shape [K(i), M, K(j)]
    return jnp.einsum("mi,mij->imj", w, eye[None, :, :] - p[:, None, :])


register(
    Derivation(
        name="ensemble_log_softmax",
        formula="d log pbar_i / d z_mj = w_mi (delta_ij - p_mj), w_mi = p_mi / sum_m' p_m'i",
        latex=r"\frac{\partial \log\bar p_i}{\partial z_{mj}} = \frac{p_{mi}}{\sum_{m'} p_{m'i}}(\delta_{ij} - p_{mj})",
        function=lambda zs: jaxent.ensemble_log_softmax(zs),
        closed_form=_cf(_ensemble_cf),
        plain=_ensemble_plain,
        argnums=(0,),
        sample=lambda rng: (_members(rng),),
        convention="members on axis 0; pbar = mean_m softmax(z_m).",
    )
)


def _predictive_entropy_plain(zs: Array) -> Array:
    return _plain_entropy(jnp.mean(_plain_member_probs(zs), axis=0))


def _predictive_entropy_cf(zs: Array) -> Array:
    p = jaxent.softmax(zs)
    lbar = jnp.log(jnp.mean(p, axis=0))
    return -p * (lbar[None, :] - jnp.sum(p * lbar[None, :], axis=1, keepdims=True)) / _M


register(
    Derivation(
        name="predictive_entropy",
        formula="dH(pbar)/dz_mj = -(1/M) p_mj (log pbar_j - sum_i p_mi log pbar_i)",
        latex=r"\frac{\partial H(\bar p)}{\partial z_{mj}} = -\tfrac{1}{M} p_{mj}\big(\log\bar p_j - \textstyle\sum_i p_{mi}\log\bar p_i\big)",
        function=lambda zs: jaxent.predictive_entropy(zs),
        closed_form=_cf(_predictive_entropy_cf),
        plain=_predictive_entropy_plain,
        argnums=(0,),
        sample=lambda rng: (_members(rng),),
        convention="members on axis 0; nats.",
    )
)


def _mutual_information_plain(zs: Array) -> Array:
    ps = _plain_member_probs(zs)
    return _plain_entropy(jnp.mean(ps, axis=0)) - jnp.mean(jax.vmap(_plain_entropy)(ps))


def _mutual_information_cf(zs: Array) -> Array:
    p = jaxent.softmax(zs)
    lp = jaxent.log_softmax(zs)
    h = -jnp.sum(p * lp, axis=1, keepdims=True)
    return _predictive_entropy_cf(zs) + p * (lp + h) / _M


register(
    Derivation(
        name="mutual_information",
        formula="dI/dz_mj = dH(pbar)/dz_mj + (1/M) p_mj (log p_mj + H(p_m))",
        latex=r"\frac{\partial I}{\partial z_{mj}} = \frac{\partial H(\bar p)}{\partial z_{mj}} + \tfrac{1}{M} p_{mj}\big(\log p_{mj} + H(p_m)\big)",
        function=lambda zs: jaxent.mutual_information(zs),
        closed_form=_cf(_mutual_information_cf),
        plain=_mutual_information_plain,
        argnums=(0,),
        sample=lambda rng: (_members(rng),),
        convention="BALD: H(mean_m p_m) - mean_m H(p_m), members on axis 0; nats.",
    )
)


# =========================================================================== from hidden states, vocabulary shards (issue 13)

_T_LV, _BETA_LV, _D2 = 1.5, 0.3, 4


def _lpent_dz(z: Array, label: Array, which: str) -> Array:
    """d(log_prob)/dz = e_y - p, or dH/dz = p (-log p - H), of softmax(z)."""
    p, lp = jaxent.softmax(z), jaxent.log_softmax(z)
    if which == "log_prob":
        return _onehot(label) - p
    return p * (-lp - jnp.sum(-p * lp))


def _linear_lpent_cf(which: str) -> Callable[..., tuple[Array, Array]]:
    def cf(h: Array, w: Array, label: Array) -> tuple[Array, Array]:
        du = _lpent_dz(h @ w / _T_LV, label, which) / _T_LV
        return w @ du, jnp.outer(h, du)

    return cf


def _lpent_plain(z: Array, label: Array, which: str) -> Array:
    lp = _plain_log_softmax(z)
    return lp[label] if which == "log_prob" else -jnp.sum(jnp.exp(lp) * lp)


for _which in ("log_prob", "entropy"):
    register(
        Derivation(
            name=f"linear_log_prob_and_entropy[{_which}]",
            formula=(
                "dL/dh = W g / T ; dL/dW = h g^T / T ; "
                + ("g = e_y - p" if _which == "log_prob" else "g = p (-log p - H)")
            ),
            latex=r"g = "
            + (r"e_y - p" if _which == "log_prob" else r"p\,(-\log p - H)")
            + r",\quad \nabla_h = W g / T,\quad \nabla_W = h g^\top / T",
            function=jax.jit(
                lambda h, w, label, _i=int(_which == "entropy"): jaxent.linear_log_prob_and_entropy(
                    h, w, label, temperature=_T_LV, block_size=2
                )[_i]
            ),
            closed_form=_cf(_linear_lpent_cf(_which)),
            plain=lambda h, w, label, _w=_which: _lpent_plain(h @ w / _T_LV, label, _w),
            argnums=(0, 1),
            sample=lambda rng: (rng.normal(size=_D), rng.normal(size=(_D, K)), rng.integers(0, K)),
            convention="z = h W / T with T = 1.5; block_size = 2 (ragged last block).",
            forward_mode=False,
            function_name="jaxent.linear_log_prob_and_entropy",
        )
    )


def _two_head_logits(hp: Array, wp: Array, hq: Array, wq: Array) -> tuple[Array, Array]:
    return hp @ wp / _T_LV, hq @ wq / _T_LV


def _chain_heads(hp, wp, hq, wq, da, db):
    da, db = da / _T_LV, db / _T_LV
    return wp @ da, jnp.outer(hp, da), wq @ db, jnp.outer(hq, db)


def _linear_kl_cf(hp: Array, wp: Array, hq: Array, wq: Array) -> tuple[Array, ...]:
    a, b = _two_head_logits(hp, wp, hq, wq)
    p, q = jaxent.softmax(a), jaxent.softmax(b)
    ratio = jaxent.log_softmax(a) - jaxent.log_softmax(b)
    return _chain_heads(hp, wp, hq, wq, p * (ratio - jnp.sum(p * ratio)), q - p)


def _two_head_sample(rng: np.random.Generator) -> tuple[Any, ...]:
    return (
        rng.normal(size=_D),
        rng.normal(size=(_D, K)),
        rng.normal(size=_D2),
        rng.normal(size=(_D2, K)),
    )


register(
    Derivation(
        name="linear_kl_divergence",
        formula="dD/da = p (log p - log q - D) ; dD/db = q - p ; a = h_p W_p / T, b = h_q W_q / T",
        latex=r"\nabla_a D = p\,(\log p - \log q - D),\quad \nabla_b D = q - p,"
        r"\quad a = h_p W_p / T,\ b = h_q W_q / T",
        function=jax.jit(
            lambda hp, wp, hq, wq: jaxent.linear_kl_divergence(
                hp, wp, hq, wq, temperature=_T_LV, block_size=2
            )
        ),
        closed_form=_linear_kl_cf,
        plain=lambda hp, wp, hq, wq: _plain_kl(
            *(_plain_softmax(x) for x in _two_head_logits(hp, wp, hq, wq))
        ),
        argnums=(0, 1, 2, 3),
        sample=_two_head_sample,
        convention="two heads of hidden sizes 3 and 4, T = 1.5, block_size = 2.",
        forward_mode=False,
    )
)


def _plain_js_heads(hp: Array, wp: Array, hq: Array, wq: Array) -> Array:
    a, b = _two_head_logits(hp, wp, hq, wq)
    return _plain_js(_plain_softmax(a), _plain_softmax(b), _BETA_LV)


def _linear_js_cf(hp: Array, wp: Array, hq: Array, wq: Array) -> tuple[Array, ...]:
    a, b = _two_head_logits(hp, wp, hq, wq)
    p, q = jaxent.softmax(a), jaxent.softmax(b)
    log_m = jnp.log(_BETA_LV * p + (1 - _BETA_LV) * q)
    gp = _BETA_LV * (jaxent.log_softmax(a) - log_m)
    gq = (1 - _BETA_LV) * (jaxent.log_softmax(b) - log_m)
    return _chain_heads(hp, wp, hq, wq, p * (gp - jnp.sum(p * gp)), q * (gq - jnp.sum(q * gq)))


register(
    Derivation(
        name="linear_js_divergence",
        formula="dJS/da = p (g_p - <p, g_p>), g_p = beta log(p/m) ; dJS/db likewise with"
        " (1 - beta) log(q/m) ; m = beta p + (1 - beta) q",
        latex=r"\nabla_a \mathrm{JS} = p\,(g_p - \langle p, g_p\rangle),\ g_p = \beta\log\frac{p}{m};"
        r"\ \nabla_b \mathrm{JS} = q\,(g_q - \langle q, g_q\rangle),\ g_q = (1-\beta)\log\frac{q}{m}",
        function=jax.jit(
            lambda hp, wp, hq, wq: jaxent.linear_js_divergence(
                hp, wp, hq, wq, beta=_BETA_LV, temperature=_T_LV, block_size=2
            )
        ),
        closed_form=_linear_js_cf,
        plain=lambda hp, wp, hq, wq: _plain_js_heads(hp, wp, hq, wq),
        argnums=(0, 1, 2, 3),
        sample=_two_head_sample,
        convention="beta = 0.3, T = 1.5, block_size = 2; two passes over the blocks.",
        forward_mode=False,
    )
)


@jax.jit
def _vp_lpent(z: Array, label: Array) -> Array:
    from jax.sharding import PartitionSpec as P

    f = jax.shard_map(
        lambda zz, yy: jaxent.vocab_parallel_log_prob_and_entropy(zz, yy, "tp", temperature=_T_LV),
        mesh=_tp_mesh(),
        in_specs=(P(None, "tp"), P()),
        out_specs=(P(), P()),
    )
    lp, ent = f(z[None], jnp.reshape(label, (1,)))
    return lp[0] + 0.5 * ent[0]


def _vp_lpent_cf(z: Array, label: Array) -> Array:
    zt = z / _T_LV
    return (_lpent_dz(zt, label, "log_prob") + 0.5 * _lpent_dz(zt, label, "entropy")) / _T_LV


register(
    Derivation(
        name="vocab_parallel_log_prob_and_entropy",
        formula="d(log_prob + H/2)/dz = ((e_y - p) + p (-log p - H) / 2) / T",
        latex=r"\nabla_z (\log p_y + \tfrac12 H) = \big(e_y - p + \tfrac12 p(-\log p - H)\big)/T",
        function=_vp_lpent,
        closed_form=_cf(_vp_lpent_cf),
        plain=lambda z, label: (
            _lpent_plain(z / _T_LV, label, "log_prob")
            + 0.5 * _lpent_plain(z / _T_LV, label, "entropy")
        ),
        argnums=(0,),
        sample=lambda rng: (_logits(rng), rng.integers(0, K)),
        convention="shard_map over a 1-device mesh; both outputs (log_prob + entropy / 2), T = 1.5.",
        forward_mode=False,
    )
)


@jax.jit
def _vp_kl(a: Array, b: Array) -> Array:
    from jax.sharding import PartitionSpec as P

    f = jax.shard_map(
        lambda x, y: jaxent.vocab_parallel_kl_divergence(x, y, "tp", temperature=_T_LV),
        mesh=_tp_mesh(),
        in_specs=(P(None, "tp"), P(None, "tp")),
        out_specs=P(),
    )
    return f(a[None], b[None])[0]


def _vp_kl_cf(a: Array, b: Array) -> tuple[Array, Array]:
    at, bt = a / _T_LV, b / _T_LV
    p, q = jaxent.softmax(at), jaxent.softmax(bt)
    ratio = jaxent.log_softmax(at) - jaxent.log_softmax(bt)
    return p * (ratio - jnp.sum(p * ratio)) / _T_LV, (q - p) / _T_LV


register(
    Derivation(
        name="vocab_parallel_kl_divergence",
        formula="dD/da = p (log p - log q - D) / T ; dD/db = (q - p) / T",
        latex=r"\nabla_a D = p\,(\log p - \log q - D)/T,\quad \nabla_b D = (q - p)/T",
        function=_vp_kl,
        closed_form=_vp_kl_cf,
        plain=lambda a, b: _plain_kl(_plain_softmax(a / _T_LV), _plain_softmax(b / _T_LV)),
        argnums=(0, 1),
        sample=lambda rng: (_logits(rng), _logits(rng)),
        convention="shard_map over a 1-device mesh; T = 1.5.",
        forward_mode=False,
    )
)
