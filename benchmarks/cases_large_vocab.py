"""Linear cross-entropy: time and memory against the materialised logits.

* ``lce/fwdbwd/...``: ``jaxent.linear_cross_entropy`` (default block size)
  against ``softmax_cross_entropy_with_integer_labels(hidden @ weight)`` (the
  materialised version, autodiff through the matmul), forward+backward with
  respect to hidden and weight, with XLA's compiled memory analysis and the
  measured growth of the resident set during one call.
* ``lce_block/...``: the block-size sweep the default was chosen from (not part
  of the default run: ``python -m benchmarks --only lce_block``).
* ``lce_memory_curve/...``: compiled peak memory against V at a fixed block
  size (compile only, no execution): flat for the linear version, linear in V
  for the materialised one. ``python -m benchmarks --memory-curve`` runs it alone.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxent
from benchmarks._harness import Case, Impl, compiled_memory, register
from jaxent._large_vocab import DEFAULT_BLOCK_SIZE

FULL = (8192, 512, 65536)
SWEEP = (1024, 512, 65536)
QUICK = (64, 16, 1024)
BLOCKS = [256, 512, 1024, 2048, 4096, 8192]
CURVE_V = [8192, 16384, 32768, 65536, 131072, 262144]
CURVE_BLOCK = 2048
MiB = 1024 * 1024


def _problem(n: int, d: int, v: int, dtype: Any = jnp.float32, seed: int = 0):
    rng = np.random.default_rng(seed)
    k1, k2 = jax.random.split(jax.random.key(int(rng.integers(1 << 31))))
    h = jax.random.normal(k1, (n, d), jnp.float32).astype(dtype)
    w = (jax.random.normal(k2, (d, v), jnp.float32) / np.sqrt(d)).astype(dtype)
    y = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    return h, w, y


def _linear_fwdbwd(block_size: int | None):
    def total(h, w, y):
        return jnp.sum(jaxent.linear_cross_entropy(h, w, y, block_size=block_size))

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))


def _materialised_fwdbwd():
    def total(h, w, y):
        return jnp.sum(jaxent.softmax_cross_entropy_with_integer_labels(h @ w, y))

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))


def _lce_impls(quick: bool) -> dict[str, Impl]:
    args = _problem(*(QUICK if quick else FULL))
    return {
        "jaxent": Impl(_linear_fwdbwd(None), args),
        "materialised": Impl(_materialised_fwdbwd(), args),
    }


def _sweep_impls(quick: bool) -> dict[str, Impl]:
    n, d, v = QUICK if quick else SWEEP
    args = _problem(n, d, v)
    impls = {"jaxent": Impl(_linear_fwdbwd(None), args)}
    for b in BLOCKS if not quick else [64, 256]:
        if b != min(DEFAULT_BLOCK_SIZE, v):
            impls[f"block_{b}"] = Impl(_linear_fwdbwd(b), args)
    return impls


def _sweep_metrics(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    n, _, v = QUICK if quick else SWEEP
    impls = result["impls"]
    best_med = min(r["median_s"] for r in impls.values())
    best_min = min(r["min_s"] for r in impls.values())
    out = {}
    for name, r in impls.items():
        b = min(DEFAULT_BLOCK_SIZE, v) if name == "jaxent" else int(name.split("_")[1])
        out[f"block {b}" + (" (default)" if name == "jaxent" else "")] = {
            "median_vs_fastest": round(r["median_s"] / best_med, 3),
            "min_vs_fastest": round(r["min_s"] / best_min, 3),
            "temp_MiB": round(r["memory"].get("temp_bytes", 0) / MiB, 1),
        }
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].split()[1])))


def _curve_metrics(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    n, d = (QUICK[0], QUICK[1]) if quick else (FULL[0], FULL[1])
    vs = [256, 1024] if quick else CURVE_V
    block = 64 if quick else CURVE_BLOCK
    curve: dict[str, list[float]] = {
        "V": vs,
        "linear_temp_MiB": [],
        "linear_peak_MiB": [],
        "materialised_temp_MiB": [],
        "materialised_peak_MiB": [],
    }
    for v in vs:
        # Shapes only: nothing is allocated or run.
        args = (
            jax.ShapeDtypeStruct((n, d), jnp.float32),
            jax.ShapeDtypeStruct((d, v), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32),
        )
        for key, fn in (
            ("linear", _linear_fwdbwd(block)),
            ("materialised", _materialised_fwdbwd()),
        ):
            _, mem = compiled_memory(fn, args)
            curve[f"{key}_temp_MiB"].append(round(mem["temp_bytes"] / MiB, 1))
            curve[f"{key}_peak_MiB"].append(round(mem["peak_bytes"] / MiB, 1))
    curve["block_size"] = block
    curve["N"], curve["D"] = n, d
    return curve


n, d, v = FULL
register(
    Case(
        f"lce/fwdbwd/{n}x{d}x{v}/float32",
        _lce_impls,
        description="linear cross-entropy vs materialised logits, fwd+bwd (hidden, weight)",
        pairs=9,  # ~12 s a call on 2 cores: the fewest rounds the harness allows
        memory=True,
        targets={"materialised": 1.3},
        memory_targets={"materialised": 1 / 8},
    )
)
n, d, v = SWEEP
register(
    Case(
        f"lce_block/fwdbwd/{n}x{d}x{v}/float32",
        _sweep_impls,
        description="linear cross-entropy block-size sweep (opt-in: --only lce_block)",
        repeats=3,
        default=False,
        memory=True,
        metrics=_sweep_metrics,
    )
)
register(
    Case(
        f"lce_memory_curve/fwdbwd/{FULL[0]}x{FULL[1]}xV/float32",
        lambda quick: {},
        description=f"compiled memory vs V at block_size={CURVE_BLOCK} (compile only)",
        metrics=_curve_metrics,
    )
)


# --------------------------------------------------------------------------- issue 13
# Log-prob/entropy, KL and JS from hidden states against the materialised
# logits (h @ W, then the dense jaxent functions), forward+backward.

DIST = (2048, 512, 32768)
DIST_MEMORY = [(4096, 1024, 32768), (4096, 1024, 128256)]


def _dist_fns(kind: str, block_size: int | None = None):
    def mat(h, w):
        return jnp.dot(h, w, preferred_element_type=jnp.float32)

    if kind == "lpent":

        def lin(h, w, h2, w2, y):
            lp, ent = jaxent.linear_log_prob_and_entropy(h, w, y, block_size=block_size)
            return jnp.sum(lp) + jnp.sum(ent)

        def ref(h, w, h2, w2, y):
            z = mat(h, w)
            return jnp.sum(jaxent.log_prob_from_logits(z, y)) + jnp.sum(
                jaxent.entropy_from_logits(z)
            )

        argnums = (0, 1)
    elif kind == "kl":

        def lin(h, w, h2, w2, y):
            return jnp.sum(jaxent.linear_kl_divergence(h, w, h2, w2, block_size=block_size))

        def ref(h, w, h2, w2, y):
            return jnp.sum(jaxent.kl_divergence_from_logits(mat(h, w), mat(h2, w2)))

        argnums = (0, 1, 2, 3)
    else:

        def lin(h, w, h2, w2, y):
            return jnp.sum(jaxent.linear_js_divergence(h, w, h2, w2, block_size=block_size))

        def ref(h, w, h2, w2, y):
            return jnp.sum(jaxent.js_divergence_from_logits(mat(h, w), mat(h2, w2)))

        argnums = (0, 1, 2, 3)
    return (
        jax.jit(jax.value_and_grad(lin, argnums=argnums)),
        jax.jit(jax.value_and_grad(ref, argnums=argnums)),
    )


def _dist_args(n, d, v, dtype=jnp.float32):
    h, w, y = _problem(n, d, v, dtype)
    h2, w2, _ = _problem(n, d, v, dtype, seed=1)
    return h, w, h2, w2, y


def _dist_impls(kind: str):
    def build(quick: bool) -> dict[str, Impl]:
        args = _dist_args(*(QUICK if quick else DIST))
        lin, ref = _dist_fns(kind)
        return {"jaxent": Impl(lin, args), "materialised": Impl(ref, args)}

    return build


def _dist_memory_metrics(result: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Compiled temp memory (MiB) of fwd+bwd, shapes only: linear vs materialised."""
    sizes = [(64, 16, 1024), (64, 16, 4096)] if quick else DIST_MEMORY
    out: dict[str, Any] = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        for n, d, v in sizes:
            shapes = (
                jax.ShapeDtypeStruct((n, d), dtype),
                jax.ShapeDtypeStruct((d, v), dtype),
                jax.ShapeDtypeStruct((n, d), dtype),
                jax.ShapeDtypeStruct((d, v), dtype),
                jax.ShapeDtypeStruct((n,), jnp.int32),
            )
            for kind in ("lpent", "kl", "js"):
                lin, ref = _dist_fns(kind)
                lin_mib = compiled_memory(lin, shapes)[1]["temp_bytes"] / MiB
                ref_mib = compiled_memory(ref, shapes)[1]["temp_bytes"] / MiB
                out[f"{kind} {jnp.dtype(dtype).name} {n}x{d}x{v}"] = {
                    "linear_temp_MiB": round(lin_mib, 1),
                    "materialised_temp_MiB": round(ref_mib, 1),
                    "fraction": round(lin_mib / ref_mib, 4),
                }
    return out


def _dist_sweep_impls(quick: bool) -> dict[str, Impl]:
    n, d, v = QUICK if quick else SWEEP
    args = _dist_args(n, d, v)
    impls = {"jaxent": Impl(_dist_fns("kl")[0], args)}
    for b in BLOCKS if not quick else [64, 256]:
        if b != min(DEFAULT_BLOCK_SIZE, v):
            impls[f"block_{b}"] = Impl(_dist_fns("kl", b)[0], args)
    return impls


n, d, v = DIST
for _kind, _what in (
    ("lpent", "linear_log_prob_and_entropy vs log_prob_from_logits + entropy_from_logits of h @ W"),
    ("kl", "linear_kl_divergence vs kl_divergence_from_logits of both heads' h @ W"),
    ("js", "linear_js_divergence vs js_divergence_from_logits of both heads' h @ W"),
):
    register(
        Case(
            f"linear_{_kind}/fwdbwd/{n}x{d}x{v}/float32",
            _dist_impls(_kind),
            description=f"{_what}, fwd+bwd (all inputs)",
            pairs=9,
            memory=True,
            targets={"materialised": 1.3},
        )
    )
register(
    Case(
        "linear_dist_memory/fwdbwd/4096x1024xV",
        lambda quick: {},
        description="compiled temp memory of the three linear functions vs materialised, f32 and bf16 (compile only)",
        metrics=_dist_memory_metrics,
    )
)
register(
    Case(
        f"linear_kl_block/fwdbwd/{SWEEP[0]}x{SWEEP[1]}x{SWEEP[2]}/float32",
        _dist_sweep_impls,
        description="linear_kl_divergence block-size sweep (opt-in: --only linear_kl_block)",
        repeats=3,
        default=False,
        memory=True,
        metrics=_sweep_metrics,
    )
)
