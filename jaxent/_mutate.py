"""Mutation testing of the verifier: does it catch a slightly wrong closed form?

Each registered closed form is traced to a jaxpr and perturbed, one mutant at a
time, at the level of its own operations (the jaxent functions it calls are
left intact):

``scale``
  every output times (1 + 1e-6);
``drop``
  one floating-point ``add``/``sub`` replaced by its first operand (one
  additive term dropped);
``sign``
  one ``add`` turned into ``sub`` or back, or one ``neg`` removed;
``swap``
  two arguments of the same shape and dtype swapped (``p`` and ``q``), or,
  where there are none, the operands of one ``div``/``pow``.

A mutant is *caught* when :func:`jaxent.verify`'s checks of the claim fail on
at least one input (references are computed once per derivation, the mutated
claim is judged against them); a mutant whose output equals the original's to
within 8 float64 ULPs (normwise) on every input is *equivalent* (a term that is
0 there, e.g. a constant shift removed by the softmax Jacobian) and is left out
of the score: no numerical check can tell the two apart. ``check_grads_baseline`` runs
``jax.test_util.check_grads`` (float64, reverse mode) on a custom rule built
from each mutant, for comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxent import _verify as V
from jaxent.derivations import Derivation

SCALE = 1e-6
_ADDSUB = ("add", "sub")


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One perturbation of a closed form.

    Attributes:
      kind: ``scale``, ``drop``, ``sign`` or ``swap``.
      index: which candidate of that kind (in the order of the jaxpr).
      description: what was changed, e.g. ``"drop: sub #2 -> first operand"``.
    """

    kind: str
    index: int
    description: str


@dataclasses.dataclass(frozen=True)
class MutationResult:
    """The mutants of one derivation and whether each was caught.

    Attributes:
      name: the derivation.
      mutants: every :class:`Mutant`.
      caught: per mutant, whether verify's checks failed.
      caught_by: per mutant, the references that caught it (``"error"`` if the
        mutant raised).
      baseline_passed: the unmutated closed form passes (else mutants are not judged).
      equivalent: per mutant, its output equals the unmutated claim's to within
        ``EQUIVALENT_ULPS`` on every input (e.g. a term that is 0 there, arguments
        swapped in ``ones_like``): it cannot be caught and is left out of the score.
    """

    name: str
    mutants: tuple[Mutant, ...]
    caught: tuple[bool, ...]
    caught_by: tuple[tuple[str, ...], ...]
    baseline_passed: bool
    equivalent: tuple[bool, ...] = ()

    @property
    def survivors(self) -> list[Mutant]:
        """Mutants neither caught nor equivalent."""
        eq = self.equivalent or (False,) * len(self.mutants)
        return [m for m, c, e in zip(self.mutants, self.caught, eq, strict=True) if not c and not e]

    @property
    def counted(self) -> list[bool]:
        """Caught flags of the mutants that count (not equivalent)."""
        eq = self.equivalent or (False,) * len(self.mutants)
        return [c for c, e in zip(self.caught, eq, strict=True) if not e]


def _is_float(var: Any) -> bool:
    aval = getattr(var, "aval", None)
    return aval is not None and jnp.issubdtype(aval.dtype, jnp.floating)


def _trace(d: Derivation, args: Sequence[Any]) -> tuple[Any, Any, list[Any]]:
    leaves, treedef = jax.tree.flatten(list(args))

    def flat_fn(*flat: Any) -> Any:
        return tuple(d.closed_form(*jax.tree.unflatten(treedef, list(flat))))

    closed = jax.make_jaxpr(flat_fn)(*leaves)
    return closed, treedef, leaves


def _candidates(closed: Any, leaves: Sequence[Any]) -> dict[str, list[Any]]:
    eqns = closed.jaxpr.eqns
    out: dict[str, list[Any]] = {"scale": [None], "drop": [], "sign": [], "swap": []}
    for i, e in enumerate(eqns):
        name = e.primitive.name
        if not e.outvars or not _is_float(e.outvars[0]):
            continue
        if name in _ADDSUB:
            out["drop"].append(("eqn", i, f"drop: {name} #{i} -> first operand"))
            out["sign"].append(
                ("eqn", i, f"sign: {name} #{i} -> {'sub' if name == 'add' else 'add'}")
            )
        elif name == "neg":
            out["sign"].append(("eqn", i, f"sign: neg #{i} removed"))
    shapes = [(np.shape(x), np.asarray(x).dtype) for x in leaves]
    for i in range(len(leaves)):
        for j in range(i + 1, len(leaves)):
            if shapes[i] == shapes[j] and np.asarray(leaves[i]).dtype.kind == "f":
                out["swap"].append(("args", (i, j), f"swap: arguments {i} and {j}"))
    if not out["swap"]:
        for i, e in enumerate(eqns):
            if e.primitive.name in ("div", "pow") and _is_float(e.outvars[0]):
                out["swap"].append(("eqn", i, f"swap: operands of {e.primitive.name} #{i}"))
    return out


def _eval(closed: Any, leaves: Sequence[Any], kind: str, spec: Any) -> list[Any]:
    jaxpr = closed.jaxpr
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, closed.consts, strict=True):
        env[v] = c
    leaves = list(leaves)
    if kind == "swap" and spec[0] == "args":
        i, j = spec[1]
        leaves[i], leaves[j] = leaves[j], leaves[i]
    for v, x in zip(jaxpr.invars, leaves, strict=True):
        env[v] = x
    for idx, e in enumerate(jaxpr.eqns):
        invals = [read(v) for v in e.invars]
        target = kind in ("drop", "sign", "swap") and spec[0] == "eqn" and spec[1] == idx
        prim, params = e.primitive, e.params
        if target and kind == "drop":
            aval = e.outvars[0].aval
            outs = [jnp.broadcast_to(jnp.asarray(invals[0]).astype(aval.dtype), aval.shape)]
        elif target and kind == "sign" and prim.name == "neg":
            outs = [invals[0]]
        else:
            if target and kind == "sign":
                prim = jax.lax.sub_p if prim.name == "add" else jax.lax.add_p
            if target and kind == "swap":
                invals = invals[::-1]
            bp = prim.get_bind_params(params)
            subfuns, bind_params = bp if isinstance(bp, tuple) else ([], bp)
            ans = prim.bind(*subfuns, *invals, **bind_params)
            outs = list(ans) if prim.multiple_results else [ans]
        for v, x in zip(e.outvars, outs, strict=True):
            env[v] = x
    res = [read(v) for v in jaxpr.outvars]
    if kind == "scale":
        res = [
            r * (1.0 + SCALE) if jnp.issubdtype(jnp.result_type(r), jnp.floating) else r
            for r in res
        ]
    return res


def mutants_of(d: Derivation, num_random: int = 2, seed: int = 0) -> list[Mutant]:
    """The mutants of ``d``'s closed form (traced at its first random input)."""
    with jax.enable_x64(True):
        case = V.cases_for(d, num_random=max(num_random, 1), seed=seed)[0]
        closed, _, leaves = _trace(d, [V._to_x64(a) for a in case.args])
        cands = _candidates(closed, leaves)
    out = []
    for kind in ("scale", "drop", "sign", "swap"):
        for k, spec in enumerate(cands[kind]):
            desc = f"scale: outputs x (1 + {SCALE:g})" if kind == "scale" else spec[2]
            out.append(Mutant(kind, k, desc))
    return out


def _mutated_claim(d: Derivation, args: Sequence[Any], m: Mutant) -> list[Any] | None:
    closed, _, leaves = _trace(d, args)
    cands = _candidates(closed, leaves)
    if m.index >= len(cands[m.kind]):
        return None  # this input's trace has no such operation: the claim is unchanged
    return _eval(closed, leaves, m.kind, cands[m.kind][m.index])


def mutate(
    d: Derivation,
    *,
    num_random: int = 2,
    seed: int = 0,
    tol: dict[str, float] | None = None,
    fd_step: float = V.FD_STEP,
) -> MutationResult:
    """Generates the mutants of ``d`` and judges each with the verifier's references."""
    tol = tol or {"rtol": V.AUTODIFF_TOL[0], "atol": V.AUTODIFF_TOL[1],
                  "fd_rtol": V.FD_TOL[0], "fd_atol": V.FD_TOL[1]}  # fmt: skip
    mutants = mutants_of(d, num_random, seed)
    with jax.enable_x64(True):
        cases = V.cases_for(d, num_random=num_random, seed=seed)
        p = V._prepare(d, cases, tol, fd_step, seed)
        base = [V._judge_case(p, i, None) for i in range(len(cases))]
        if not all(c.passed for c in base):
            return MutationResult(d.name, tuple(mutants), (False,) * len(mutants),
                                  ((),) * len(mutants), False)  # fmt: skip
        unmutated = []  # evaluated the way mutants are (op by op), for bitwise equivalence
        for i in range(len(cases)):
            closed, _, leaves = _trace(d, p.args[i])
            unmutated.append(_eval(closed, leaves, "none", None))
        caught, by, equivalent = [], [], []
        for m in mutants:
            refs: list[str] = []
            same = True
            for i in range(len(cases)):
                try:
                    claim = _mutated_claim(d, p.args[i], m)
                except Exception:  # noqa: BLE001 - a mutant that crashes is caught
                    refs.append("error")
                    same = False
                    continue
                if claim is None:
                    continue
                same = same and _identical(claim, unmutated[i])
                r = V._judge_case(p, i, claim)
                refs += [k.reference for k in r.checks if not k.passed]
                if not r.checks and not r.passed:
                    refs.append("shape")
            refs = list(dict.fromkeys(refs))
            caught.append(bool(refs))
            by.append(tuple(refs))
            equivalent.append(same and not refs)
    return MutationResult(d.name, tuple(mutants), tuple(caught), tuple(by), True, tuple(equivalent))


#: A mutant within this many float64 ULPs (normwise) of the original on every input is
#: equivalent: no numerical check can tell them apart.
EQUIVALENT_ULPS = 8


def _identical(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Outputs equal to within EQUIVALENT_ULPS, normwise (NaN and infinities equal)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.size != y.size:
            return False
        x = x.reshape(y.shape)
        if not np.array_equal(np.isnan(x), np.isnan(y)):
            return False
        fin = np.isfinite(x) & np.isfinite(y)
        if not np.array_equal(x[~fin & ~np.isnan(y)], y[~fin & ~np.isnan(y)]):
            return False
        scale = float(np.abs(y[fin]).max()) if fin.any() else 0.0
        if (
            fin.any()
            and float(np.abs(x[fin] - y[fin]).max())
            > EQUIVALENT_ULPS * 2.220446049250313e-16 * scale
        ):
            return False
    return True


def check_grads_baseline(d: Derivation, *, num_random: int = 2, seed: int = 0) -> list[bool]:
    """Per mutant of ``d``: does ``jax.test_util.check_grads`` (float64, rev) catch it?

    The mutant becomes the reverse rule of a ``jax.custom_vjp`` whose value is
    the plain definition; ``check_grads(order=1, modes=["rev"])`` is run at the
    random inputs. Returns one bool per :func:`mutants_of` mutant.
    """
    from jax.test_util import check_grads  # noqa: PLC0415

    mutants = mutants_of(d, num_random, seed)
    out = []
    with jax.enable_x64(True):
        cases = [
            c
            for c in V.cases_for(d, num_random=num_random, seed=seed)
            if c.label.startswith("random")
        ]
        for m in mutants:
            hit = False
            for c in cases:
                args = [V._to_x64(a) for a in c.args]
                f = _custom_rule(d, args, m)
                diff = tuple(jnp.asarray(args[a]) for a in d.argnums)
                try:
                    check_grads(f, diff, order=1, modes=["rev"])
                except AssertionError:
                    hit = True
                    break
                except Exception:  # noqa: BLE001
                    hit = True
                    break
            out.append(hit)
    return out


def _custom_rule(d: Derivation, args: list[Any], m: Mutant) -> Callable[..., Any]:
    def full(*xs: Any) -> list[Any]:
        a = list(args)
        for k, x in zip(d.argnums, xs, strict=True):
            a[k] = x
        return a

    @jax.custom_vjp
    def f(*xs: Any) -> Any:
        return d.plain(*full(*xs))

    def fwd(*xs: Any) -> Any:
        return f(*xs), xs

    def bwd(xs: Any, ct: Any) -> Any:
        claim = _mutated_claim(d, full(*xs), m)
        if claim is None:
            claim = list(d.closed_form(*full(*xs)))
        return tuple(
            jnp.tensordot(ct, g, axes=jnp.ndim(ct)).astype(x.dtype)
            for g, x in zip(claim, xs, strict=True)
        )

    f.defvjp(fwd, bwd)
    return f
