"""Cross-entropy, KL and entropy from logits: jaxent against its peers.

Peers, all measured in the same process on the same arrays:

* ``optax``: ``optax.losses`` (integer-label CE, KL with log targets, soft-label CE);
* ``log_softmax``: the plain formula on ``jax.nn.log_softmax`` (autodiff gradient);
* ``torch``: PyTorch's ``F.cross_entropy`` / ``F.kl_div`` (only if torch imports).

Forward cases time the per-example losses; ``fwdbwd`` cases time the value and
the gradient with respect to the logits of their sum, in one jitted function.
The ``ce_bandwidth`` case compares cross-entropy forward+backward with a plain
streaming pass over the same bytes, the machine's practical limit.
"""

from __future__ import annotations

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

SHAPES = [(4096, 32768), (1024, 131072)]
QUICK_SHAPE = (64, 512)
DTYPES = ["float32", "bfloat16"]


def _logits(n: int, v: int, dtype: str, seed: int = 0) -> jax.Array:
    rng = np.random.default_rng(seed)
    z = jax.random.normal(jax.random.key(int(rng.integers(1 << 31))), (n, v), jnp.float32) * 3
    return z.astype(dtype)


def _labels(n: int, v: int, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, v, n), jnp.int32)


def _torch(x: jax.Array) -> Any:
    if x.dtype == jnp.bfloat16:
        return torch.from_numpy(np.array(x.astype(jnp.float32))).to(torch.bfloat16)
    return torch.from_numpy(np.array(x))


def _fwdbwd(loss_fn):
    """value_and_grad of the summed loss in the first argument, jitted."""

    def total(z, *rest):
        return jnp.sum(loss_fn(z, *rest).astype(jnp.float32))

    return jax.jit(jax.value_and_grad(total))


def _torch_fwdbwd(loss_fn):
    def run(z, *rest):
        z = z.detach().requires_grad_(True)
        loss = loss_fn(z, *rest).float().sum()
        (g,) = torch.autograd.grad(loss, z)
        return loss, g

    return run


# --------------------------------------------------------------------------- integer-label CE


def _ce_plain(z, y):
    ls = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(ls, y[:, None], axis=-1)[:, 0].astype(z.dtype)


def _ce_impls(n: int, v: int, dtype: str, mode: str) -> dict[str, Impl]:
    z, y = _logits(n, v, dtype), _labels(n, v)
    fns = {
        "jaxent": jaxent.softmax_cross_entropy_with_integer_labels,
        "optax": optax.losses.softmax_cross_entropy_with_integer_labels,
        "log_softmax": _ce_plain,
    }
    wrap = _fwdbwd if mode == "fwdbwd" else jax.jit
    impls = {k: Impl(wrap(f), (z, y)) for k, f in fns.items()}
    if torch is not None:

        def tce(z, y):
            return F.cross_entropy(z, y, reduction="none")

        run = _torch_fwdbwd(tce) if mode == "fwdbwd" else tce
        impls["torch"] = Impl(run, (_torch(z), torch.from_numpy(np.array(y, np.int64))), "torch")
    return impls


def _register_ce() -> None:
    for n, v in SHAPES:
        for dtype in DTYPES:
            for mode in ("fwd", "fwdbwd"):

                def build(quick: bool, n=n, v=v, dtype=dtype, mode=mode) -> dict[str, Impl]:
                    return _ce_impls(*(QUICK_SHAPE if quick else (n, v)), dtype, mode)

                register(
                    Case(
                        f"ce_int/{mode}/{n}x{v}/{dtype}",
                        build,
                        description=f"integer-label cross-entropy, {mode}",
                        repeats=3,
                        targets={"optax": 1.05},
                    )
                )


# --------------------------------------------------------------------------- KL and entropy


def _kl_plain(p, q):
    lp, lq = jax.nn.log_softmax(p, axis=-1), jax.nn.log_softmax(q, axis=-1)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def _kl_optax(p, q):
    # KL(p || q): optax's (log_predictions, log_targets) = (log q, log p).
    return optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(q, axis=-1), jax.nn.log_softmax(p, axis=-1)
    )


def _entropy_plain(z):
    ls = jax.nn.log_softmax(z, axis=-1)
    return -jnp.sum(jnp.exp(ls) * ls, axis=-1)


def _entropy_optax(z):
    # H(p) = CE(p, p) with optax's soft-label cross-entropy.
    return optax.losses.softmax_cross_entropy(z, jax.nn.softmax(z, axis=-1))


def _kl_impls(n: int, v: int, mode: str) -> dict[str, Impl]:
    p, q = _logits(n, v, "float32", 0), _logits(n, v, "float32", 2)
    fns = {
        "jaxent": jaxent.kl_divergence_from_logits,
        "optax": _kl_optax,
        "log_softmax": _kl_plain,
    }
    wrap = _fwdbwd if mode == "fwdbwd" else jax.jit
    impls = {k: Impl(wrap(f), (p, q)) for k, f in fns.items()}
    if torch is not None:

        def tkl(p, q):
            return F.kl_div(
                F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="none", log_target=True
            ).sum(-1)

        run = _torch_fwdbwd(tkl) if mode == "fwdbwd" else tkl
        impls["torch"] = Impl(run, (_torch(p), _torch(q)), "torch")
    return impls


def _entropy_impls(n: int, v: int, mode: str) -> dict[str, Impl]:
    z = _logits(n, v, "float32", 0)
    fns = {
        "jaxent": jaxent.entropy_from_logits,
        "optax": _entropy_optax,
        "log_softmax": _entropy_plain,
    }
    wrap = _fwdbwd if mode == "fwdbwd" else jax.jit
    impls = {k: Impl(wrap(f), (z,)) for k, f in fns.items()}
    if torch is not None:

        def tent(z):
            ls = F.log_softmax(z, -1)
            return -(ls.exp() * ls).sum(-1)

        run = _torch_fwdbwd(tent) if mode == "fwdbwd" else tent
        impls["torch"] = Impl(run, (_torch(z),), "torch")
    return impls


def _register_divergences() -> None:
    n, v = SHAPES[0]
    for mode in ("fwd", "fwdbwd"):
        register(
            Case(
                f"kl_logits/{mode}/{n}x{v}/float32",
                lambda quick, mode=mode: _kl_impls(*(QUICK_SHAPE if quick else (n, v)), mode),
                description=f"KL(p||q) from logits, {mode}",
                repeats=3,
            )
        )
        register(
            Case(
                f"entropy_logits/{mode}/{n}x{v}/float32",
                lambda quick, mode=mode: _entropy_impls(*(QUICK_SHAPE if quick else (n, v)), mode),
                description=f"entropy from logits, {mode}",
                repeats=3,
            )
        )


# --------------------------------------------------------------------------- bandwidth


def _bandwidth_impls(quick: bool) -> dict[str, Impl]:
    n, v = QUICK_SHAPE if quick else SHAPES[0]
    z, y = _logits(n, v, "float32"), _labels(n, v)
    return {
        "jaxent": Impl(_fwdbwd(jaxent.softmax_cross_entropy_with_integer_labels), (z, y)),
        "optax": Impl(_fwdbwd(optax.losses.softmax_cross_entropy_with_integer_labels), (z, y)),
        # A plain streaming pass: read the logits once, write an array of the same size.
        "stream": Impl(jax.jit(lambda z: z * 2.0 + 1.0), (z,)),
        # Reading alone (a row sum): the bandwidth without writing fresh memory.
        "stream_read": Impl(jax.jit(lambda z: jnp.sum(z, axis=-1)), (z,)),
    }


def _bandwidth_metrics(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    n, v = QUICK_SHAPE if quick else SHAPES[0]
    nbytes = n * v * 4
    stream_bw = 2 * nbytes / result["impls"]["stream"]["median_s"]
    read_bw = nbytes / result["impls"]["stream_read"]["median_s"]
    out = {
        "stream_GBps": stream_bw / 1e9,
        "stream_read_GBps": read_bw / 1e9,
        "bytes_per_pass": nbytes,
    }
    # Forward+backward moves at least 3 passes: read for the logsumexp, read and
    # write for the gradient (the loss and labels are O(N)).
    for name in ("jaxent", "optax"):
        bw = 3 * nbytes / result["impls"][name]["median_s"]
        out[f"{name}_GBps"] = bw / 1e9
        out[f"{name}_fraction_of_stream"] = bw / stream_bw
    return out


def _register_bandwidth() -> None:
    n, v = SHAPES[0]
    register(
        Case(
            f"ce_bandwidth/fwdbwd/{n}x{v}/float32",
            _bandwidth_impls,
            description="CE fwd+bwd vs a streaming pass (fraction of memory bandwidth)",
            repeats=3,
            metrics=_bandwidth_metrics,
        )
    )


_register_ce()
_register_divergences()
_register_bandwidth()
