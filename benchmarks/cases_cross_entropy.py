"""Cross-entropies, KL, entropy and JS from logits: jaxent against its peers.

Seven losses, each against

* ``optax``: what an optax user writes (``optax.losses`` functions; for KL,
  entropy and JS, optax's KL with log targets on ``jax.nn.log_softmax``);
* ``log_softmax``: the plain formula on ``jax.nn.log_softmax`` (upcast to
  float32, as jaxent computes), autodiff gradient;
* ``torch``: the PyTorch equivalent, when torch imports (2 CPU threads).

and in five modes:

* ``fwd``: the jitted per-example loss (float32 and bfloat16, 4096×32768);
  target ≤ 1.05× (float32) / ≤ 1.1× (bfloat16) the faster of optax and the
  plain formula, round by round; ``floor``: a row sum reading each input once.
* ``fwdbwd``: jitted ``value_and_grad`` of the summed loss in the first
  argument (``fwdbwd_q``: KL in its second argument, the distillation
  student); target ≤ 1.0× optax; ``floor``: the inputs read and the gradient
  written in place (donated buffer).
* ``eager``: un-jitted calls at 128×10, as a user types them; target ≤ 1.5× optax.
* ``compile``: tracing, lowering and compiling a fresh ``jax.jit(jax.value_and_grad(...))``
  (caches cleared before each); target ≤ 1.2× optax.

``python -m benchmarks --only /fwd/`` runs the forward-only cases.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxent
from benchmarks._harness import Case, Impl, register

try:  # optional peer
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional
    torch = None

SHAPE = (4096, 32768)
LARGE_V = (1024, 131072)  # opt-in integer-label cases
QUICK_SHAPE = (64, 512)
EAGER_SHAPE = (128, 10)
QUICK_COMPILE_SHAPE = (8, 16)
DTYPES = ["float32", "bfloat16"]
FWD_TARGET = {"float32": 1.05, "bfloat16": 1.1}
F32 = jnp.float32


# --------------------------------------------------------------------------- inputs


def _logits(n: int, v: int, dtype: str, seed: int = 0) -> jax.Array:
    z = jax.random.normal(jax.random.key(seed), (n, v), F32) * 3
    return z.astype(dtype)


def _int_labels(n: int, v: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(1).integers(0, v, n), jnp.int32)


def _soft_labels(n: int, v: int, dtype: str) -> jax.Array:
    return jax.nn.softmax(_logits(n, v, "float32", seed=3), axis=-1).astype(dtype)


def _onehot(n: int, v: int, dtype: str) -> jax.Array:
    return jax.nn.one_hot(_int_labels(n, v), v, dtype=dtype)


def _torch(x: jax.Array) -> Any:
    if x.dtype == jnp.bfloat16:
        return torch.from_numpy(np.array(x.astype(F32))).to(torch.bfloat16)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return torch.from_numpy(np.array(x, np.int64))
    return torch.from_numpy(np.array(x))


# --------------------------------------------------------------------------- the formulas


def _ls32(z):
    return jax.nn.log_softmax(z.astype(F32), axis=-1)


def _plain_ce_soft(z, y):
    return (-jnp.sum(y.astype(F32) * _ls32(z), axis=-1)).astype(z.dtype)


def _plain_ce_int(z, y):
    return (-jnp.take_along_axis(_ls32(z), y[:, None], axis=-1)[:, 0]).astype(z.dtype)


def _plain_kl(p, q):
    lp, lq = _ls32(p), _ls32(q)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1).astype(p.dtype)


def _plain_entropy(z):
    ls = _ls32(z)
    return (-jnp.sum(jnp.exp(ls) * ls, axis=-1)).astype(z.dtype)


def _plain_js(p, q):
    lp, lq = _ls32(p), _ls32(q)
    lm = jnp.logaddexp(lp, lq) - math.log(2.0)
    kl_pm = jnp.sum(jnp.exp(lp) * (lp - lm), axis=-1)
    kl_qm = jnp.sum(jnp.exp(lq) * (lq - lm), axis=-1)
    return (0.5 * kl_pm + 0.5 * kl_qm).astype(p.dtype)


def _optax_kl(p, q):
    # KL(p || q): optax's (log_predictions, log_targets) = (log q, log p).
    return optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(q, axis=-1), jax.nn.log_softmax(p, axis=-1)
    )


def _optax_entropy(z):
    # H(p) = CE(p, p) with optax's soft-label cross-entropy.
    return optax.losses.softmax_cross_entropy(z, jax.nn.softmax(z, axis=-1))


def _optax_js(p, q):
    lp, lq = jax.nn.log_softmax(p, axis=-1), jax.nn.log_softmax(q, axis=-1)
    lm = jnp.logaddexp(lp, lq) - jnp.asarray(math.log(2.0), lp.dtype)
    kl = optax.losses.kl_divergence_with_log_targets
    return 0.5 * kl(lm, lp) + 0.5 * kl(lm, lq)


def _torch_fns() -> dict[str, Callable[..., Any]]:
    if torch is None:
        return {}

    def kl(p, q):
        return F.kl_div(
            F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="none", log_target=True
        ).sum(-1)

    def entropy(z):
        ls = F.log_softmax(z, -1)
        return -(ls.exp() * ls).sum(-1)

    def js(p, q):
        lp, lq = F.log_softmax(p, -1), F.log_softmax(q, -1)
        lm = torch.logaddexp(lp, lq) - math.log(2.0)
        return 0.5 * (lp.exp() * (lp - lm)).sum(-1) + 0.5 * (lq.exp() * (lq - lm)).sum(-1)

    return {
        "ce_soft": lambda z, y: F.cross_entropy(z, y, reduction="none"),
        "ce_int": lambda z, y: F.cross_entropy(z, y, reduction="none"),
        "kl_logits": kl,
        "entropy_logits": entropy,
        "js_logits": js,
    }


@dataclass(frozen=True)
class Family:
    what: str
    inputs: Callable[[int, int, str], tuple[jax.Array, ...]]
    jaxent: Callable[..., Any]
    optax: Callable[..., Any]
    plain: Callable[..., Any]


FAMILIES = {
    "ce_soft": Family(
        "softmax_cross_entropy (soft labels)",
        lambda n, v, dt: (_logits(n, v, dt), _soft_labels(n, v, dt)),
        jaxent.softmax_cross_entropy,
        optax.losses.softmax_cross_entropy,
        _plain_ce_soft,
    ),
    "ce_int": Family(
        "softmax_cross_entropy_with_integer_labels",
        lambda n, v, dt: (_logits(n, v, dt), _int_labels(n, v)),
        jaxent.softmax_cross_entropy_with_integer_labels,
        optax.losses.softmax_cross_entropy_with_integer_labels,
        _plain_ce_int,
    ),
    "kl_logits": Family(
        "kl_divergence_from_logits KL(p||q)",
        lambda n, v, dt: (_logits(n, v, dt, 0), _logits(n, v, dt, 2)),
        jaxent.kl_divergence_from_logits,
        _optax_kl,
        _plain_kl,
    ),
    "entropy_logits": Family(
        "entropy_from_logits",
        lambda n, v, dt: (_logits(n, v, dt),),
        jaxent.entropy_from_logits,
        _optax_entropy,
        _plain_entropy,
    ),
    "js_logits": Family(
        "js_divergence_from_logits (beta=1/2)",
        lambda n, v, dt: (_logits(n, v, dt, 0), _logits(n, v, dt, 2)),
        jaxent.js_divergence_from_logits,
        _optax_js,
        _plain_js,
    ),
}


TORCH_FNS: dict[str, Callable[..., Any]] = _torch_fns()


# --------------------------------------------------------------------------- implementations


def _total(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    def total(*args):
        return jnp.sum(loss_fn(*args).astype(F32))

    return total


def _fwdbwd(loss_fn: Callable[..., Any], argnum: int = 0):
    """value_and_grad of the summed loss in one argument, jitted."""
    return jax.jit(jax.value_and_grad(_total(loss_fn), argnums=argnum))


def _torch_fwdbwd(loss_fn: Callable[..., Any], argnum: int = 0):
    def run(*args):
        args = list(args)
        args[argnum] = args[argnum].detach().requires_grad_(True)
        loss = loss_fn(*args).float().sum()
        (g,) = torch.autograd.grad(loss, args[argnum])
        return loss, g

    return run


def _torch_fwd(loss_fn: Callable[..., Any]):
    def run(*args):
        with torch.no_grad():
            return loss_fn(*args)

    return run


def _impls(family: str, mode: str, n: int, v: int, dtype: str) -> dict[str, Impl]:
    fam = FAMILIES[family]
    args = fam.inputs(n, v, dtype)
    fns = {"jaxent": fam.jaxent, "optax": fam.optax, "log_softmax": fam.plain}
    tfn = TORCH_FNS.get(family) if torch is not None else None
    if mode == "fwd":
        impls = {k: Impl(jax.jit(f), args) for k, f in fns.items()}
        if tfn is not None:
            impls["torch"] = Impl(_torch_fwd(tfn), tuple(map(_torch, args)), "torch")
        return impls
    argnum = 1 if mode == "fwdbwd_q" else 0
    impls = {k: Impl(_fwdbwd(f, argnum), args) for k, f in fns.items()}
    if tfn is not None:
        impls["torch"] = Impl(_torch_fwdbwd(tfn, argnum), tuple(map(_torch, args)), "torch")
    return impls


def _eager_impls(family: str, quick: bool) -> dict[str, Impl]:
    fam = FAMILIES[family]
    args = fam.inputs(*EAGER_SHAPE, "float32")
    return {
        "jaxent": Impl(fam.jaxent, args, framework="eager"),
        "optax": Impl(fam.optax, args, framework="eager"),
    }


def compile_impl(loss_fn: Callable[..., Any], specs: tuple[Any, ...]) -> Impl:
    """An implementation whose call traces, lowers and compiles a fresh
    ``jax.jit(jax.value_and_grad(sum of loss_fn))`` on ``specs`` (shapes only);
    JAX's caches are cleared before every sample (untimed), so nothing of an
    earlier call is reused."""

    def run():
        return jax.jit(jax.value_and_grad(_total(loss_fn))).lower(*specs).compile()

    return Impl(run, (), framework="compile", setup=_fresh)


def _fresh() -> None:
    """Before a compile-time sample (untimed): no cached trace, lowering or
    executable survives, and the garbage that clearing leaves is collected."""
    jax.clear_caches()
    gc.collect()


def _compile_impls(family: str, quick: bool) -> dict[str, Impl]:
    fam = FAMILIES[family]
    n, v = QUICK_COMPILE_SHAPE if quick else SHAPE
    specs = tuple(
        jax.ShapeDtypeStruct(a.shape, a.dtype)
        for a in jax.eval_shape(lambda: fam.inputs(n, v, "float32"))
    )
    return {"jaxent": compile_impl(fam.jaxent, specs), "optax": compile_impl(fam.optax, specs)}


# --------------------------------------------------------------------------- registration


def register_family(family: str, fam: Family, torch_fn: Callable[..., Any] | None = None) -> None:
    """Adds a loss to ``FAMILIES`` and registers its fwd, fwdbwd, eager and
    compile cases (other modules call this for their own losses)."""
    if family in FAMILIES and FAMILIES[family] is not fam:
        raise ValueError(f"loss family {family!r} is registered twice")
    FAMILIES[family] = fam
    if torch_fn is not None:
        TORCH_FNS[family] = torch_fn
    n, v = SHAPE
    for dtype in DTYPES:
        register(
            Case(
                f"{family}/fwd/{n}x{v}/{dtype}",
                lambda quick, f=family, dt=dtype: _impls(
                    f, "fwd", *(QUICK_SHAPE if quick else SHAPE), dt
                ),
                description=f"{fam.what}, forward only",
                targets={"optax|log_softmax": FWD_TARGET[dtype]},
                floor="read",
                table="loss",
            )
        )
    modes = ["fwdbwd", "fwdbwd_q"] if family == "kl_logits" else ["fwdbwd"]
    for mode in modes:
        for dtype in DTYPES:
            wrt = "q_logits (distillation)" if mode == "fwdbwd_q" else "the first argument"
            register(
                Case(
                    f"{family}/{mode}/{n}x{v}/{dtype}",
                    lambda quick, f=family, m=mode, dt=dtype: _impls(
                        f, m, *(QUICK_SHAPE if quick else SHAPE), dt
                    ),
                    description=f"{fam.what}, value_and_grad in {wrt}",
                    targets={"optax": 1.0},
                    floor="rw",
                    memory=True,
                    table="loss",
                )
            )
    register(
        Case(
            f"{family}/eager/{EAGER_SHAPE[0]}x{EAGER_SHAPE[1]}/float32",
            lambda quick, f=family: _eager_impls(f, quick),
            description=f"{fam.what}, un-jitted call",
            targets={"optax": 1.5},
            noise="eager",
            table="loss",
        )
    )
    register(
        Case(
            f"{family}/compile/{n}x{v}/float32",
            lambda quick, f=family: _compile_impls(f, quick),
            description=f"{fam.what}: trace + lower + compile of jit(value_and_grad)",
            targets={"optax": 1.2},
            noise="compile",
            table="loss",
        )
    )


def _register() -> None:
    for family, fam in list(FAMILIES.items()):
        register_family(family, fam)
    # A long vocabulary, opt-in (--only ce_int/ or --all).
    n, v = LARGE_V
    for mode in ("fwd", "fwdbwd"):
        for dtype in DTYPES:
            register(
                Case(
                    f"ce_int/{mode}/{n}x{v}/{dtype}",
                    lambda quick, m=mode, dt=dtype: _impls(
                        "ce_int", m, *(QUICK_SHAPE if quick else LARGE_V), dt
                    ),
                    description=f"integer-label cross-entropy, {mode}, long vocabulary",
                    targets={"optax|log_softmax": FWD_TARGET[dtype]}
                    if mode == "fwd"
                    else {"optax": 1.0},
                    floor="read" if mode == "fwd" else "rw",
                    default=False,
                    table="loss",
                )
            )


_register()
