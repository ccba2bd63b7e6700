"""Multi-device checks, run in a subprocess by ``test_sharding.py``.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` only takes effect before
jax is imported, so these checks live in their own process: ``python
tests/_sharding_checks.py`` runs every check and prints one JSON object
``{check name: "ok" | error text}`` as its last line.

References are always unsharded computations on one device: the same jaxent
function (batch sharding) or the materialised
``softmax_cross_entropy_with_integer_labels`` / ``linear_cross_entropy``
(vocabulary sharding).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import jaxent  # noqa: E402

N, K, D = 16, 24, 8  # batch (divisible by 8), classes (divisible by 8), hidden size
CHECKS: dict[str, Callable[[], None]] = {}


def check(fn: Callable[[], None]) -> Callable[[], None]:
    CHECKS[fn.__name__] = fn
    return fn


def _close(actual, expected, rtol=1e-6, what=""):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale, err_msg=what)


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


# --------------------------------------------------------------------------- batch sharding


def _rng_inputs(seed: int):
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def logits():
        return (rng.normal(size=(N, K)) * 2).astype(f32)

    def probs():
        return jax.nn.softmax(jnp.asarray(logits())).__array__()

    def binary():
        return rng.random(size=(N, K)).astype(f32)

    int_labels = rng.integers(0, K, size=N).astype(np.int32)
    return logits, probs, binary, int_labels, rng


def _public_losses() -> dict[str, tuple[Callable, tuple, tuple[int, ...]]]:
    """name -> (function, arguments, positions of the differentiated arguments)."""
    logits, probs, binary, y, rng = _rng_inputs(0)
    y_ign = y.copy()
    y_ign[[1, 9]] = -100
    h = rng.normal(size=(N, D)).astype(np.float32)
    w = rng.normal(size=(D, K)).astype(np.float32)
    table = {
        "softmax_cross_entropy": (jaxent.softmax_cross_entropy, (logits(), probs()), (0, 1)),
        "softmax_cross_entropy_with_integer_labels": (
            partial(
                jaxent.softmax_cross_entropy_with_integer_labels,
                ignore_index=-100,
                z_loss=1e-2,
                logit_softcap=5.0,
            ),
            (logits(), y_ign),
            (0,),
        ),
        "sigmoid_binary_cross_entropy": (
            jaxent.sigmoid_binary_cross_entropy,
            (logits(), binary()),
            (0, 1),
        ),
        "binary_cross_entropy": (
            jaxent.binary_cross_entropy,
            (np.clip(binary(), 0.01, 0.99), binary()),
            (0,),
        ),
        "kl_divergence_from_logits": (
            jaxent.kl_divergence_from_logits,
            (logits(), logits()),
            (0, 1),
        ),
        "entropy_from_logits": (jaxent.entropy_from_logits, (logits(),), (0,)),
        "js_divergence_from_logits": (
            jaxent.js_divergence_from_logits,
            (logits(), logits()),
            (0, 1),
        ),
        "kl_divergence": (jaxent.kl_divergence, (probs(), probs()), (0, 1)),
        "cross_entropy": (jaxent.cross_entropy, (probs(), probs()), (0, 1)),
        "linear_cross_entropy": (
            partial(jaxent.linear_cross_entropy, block_size=5, z_loss=1e-2, ignore_index=-100),
            (h, w, y_ign),
            (0, 1),
        ),
    }
    if hasattr(jaxent, "label_smoothed_cross_entropy"):
        table["label_smoothed_cross_entropy"] = (
            partial(jaxent.label_smoothed_cross_entropy, epsilon=0.1),
            (logits(), y),
            (0,),
        )
    return table


def _batch_check(name: str) -> None:
    fn, args, argnums = _public_losses()[name]
    mesh = _mesh((8,), ("batch",))
    shard = NamedSharding(mesh, P("batch"))
    # Only arrays with the batch as leading axis are sharded (the [D, V] weight is replicated).
    placed = [
        jax.device_put(a, shard if i == 0 or a.shape[0] == N else NamedSharding(mesh, P()))
        for i, a in enumerate(args)
    ]
    assert len(placed[0].sharding.device_set) == 8

    def total(*a):
        out = fn(*a)  # [N] per example, or [N, K] for the elementwise binary losses
        cot = jnp.arange(1, out.size + 1, dtype=jnp.float32).reshape(out.shape) / out.size
        return jnp.sum(out * cot)

    vg = jax.jit(jax.value_and_grad(total, argnums=argnums))
    per_example = jax.jit(fn)
    got_loss = per_example(*placed)
    got_total, got_grads = vg(*placed)
    exp_loss = per_example(*[np.asarray(a) for a in args])
    exp_total, exp_grads = vg(*[np.asarray(a) for a in args])
    assert got_loss.shape[0] == N, got_loss.shape
    _close(got_loss, exp_loss, what=f"{name} values")
    _close(got_total, exp_total, what=f"{name} total")
    for i, (g, e) in enumerate(zip(got_grads, exp_grads, strict=True)):
        assert np.all(np.isfinite(np.asarray(g))), f"{name}: non-finite gradient {i}"
        _close(g, e, rtol=1e-5, what=f"{name} grad {argnums[i]}")


for _name in _public_losses():
    CHECKS[f"batch_sharded[{_name}]"] = partial(_batch_check, _name)


# --------------------------------------------------------------------------- vocab-parallel


VP_OPTIONS = {
    "plain": {},
    "ignore_where": {"ignore_index": -100, "where": True},
    "z_loss": {"z_loss": 3e-2},
    "smoothing": {"label_smoothing": 0.1},
}


def _vp_problem(seed: int, option: str):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.normal(size=(N, K)) * 3, jnp.float32)
    y = rng.integers(0, K, size=N).astype(np.int32)
    kw = dict(VP_OPTIONS[option])
    if kw.pop("where", False):
        kw["where"] = jnp.asarray(rng.random(N) > 0.3)
    if "ignore_index" in kw:
        y[[0, 5]] = -100
    return z, jnp.asarray(y), kw, rng


def _vp_reference(z, y, kw):
    """Materialised loss (label smoothing as soft labels, uniform convention)."""
    eps = kw.get("label_smoothing", 0.0)
    if eps:
        soft = (1 - eps) * jax.nn.one_hot(y, K, dtype=z.dtype) + eps / K
        return jaxent.softmax_cross_entropy(z, soft)
    return jaxent.softmax_cross_entropy_with_integer_labels(z, y, **kw)


def _vp_check(option: str) -> None:
    z, y, kw, rng = _vp_problem(1, option)
    mesh = _mesh((8,), ("tp",))
    row_kw = {k: v for k, v in kw.items() if k == "where"}
    static_kw = {k: v for k, v in kw.items() if k != "where"}

    def body(z, y, *where):
        return jaxent.vocab_parallel_cross_entropy(
            z, y, "tp", **static_kw, **({"where": where[0]} if where else {})
        )

    in_specs = (P(None, "tp"), P()) + ((P(),) if row_kw else ())
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P()))
    extra = (row_kw["where"],) if row_kw else ()
    cot = jnp.asarray(rng.uniform(0.5, 1.5, size=N), jnp.float32)  # no cancellation
    got, got_g = jax.value_and_grad(lambda z: jnp.sum(f(z, y, *extra) * cot))(z)
    exp, exp_g = jax.value_and_grad(lambda z: jnp.sum(_vp_reference(z, y, kw) * cot))(z)
    _close(f(z, y, *extra), _vp_reference(z, y, kw), rtol=1e-6, what="values")
    _close(got, exp, rtol=1e-6, what="total")
    _close(got_g, exp_g, rtol=1e-6, what="gradient")
    # At most two collectives in the forward pass (a pmax and a psum), none backward.
    hlo = f.lower(z, y, *extra).as_text()
    n_coll = hlo.count("all_reduce") + hlo.count("all-reduce")
    assert n_coll <= 2, f"{n_coll} collectives in the forward pass"
    gz = jax.jit(jax.grad(lambda z: jnp.sum(f(z, y, *extra) * cot))).lower(z).as_text()
    n_all = gz.count("all_reduce") + gz.count("all-reduce")
    assert n_all <= 2, f"{n_all} collectives in forward+backward"


for _opt in VP_OPTIONS:
    CHECKS[f"vocab_parallel[{_opt}]"] = partial(_vp_check, _opt)


@check
def vocab_parallel_2d_mesh_bfloat16() -> None:
    """Batch over 'dp' (2) and classes over 'tp' (4); bfloat16 logits, float32 accumulation."""
    z, y, _, _ = _vp_problem(2, "plain")
    mesh = _mesh((2, 4), ("dp", "tp"))
    f = jax.jit(
        jax.shard_map(
            partial(jaxent.vocab_parallel_cross_entropy, axis_name="tp", z_loss=1e-2),
            mesh=mesh,
            in_specs=(P("dp", "tp"), P("dp")),
            out_specs=P("dp"),
        )
    )
    zb = z.astype(jnp.bfloat16)
    got = f(zb, y)
    assert got.dtype == jnp.bfloat16
    exp = jaxent.softmax_cross_entropy_with_integer_labels(zb.astype(jnp.float32), y, z_loss=1e-2)
    _close(got, exp, rtol=1e-2)
    g = jax.grad(lambda z: jnp.sum(f(z, y).astype(jnp.float32)))(zb)
    e = jax.grad(
        lambda z: jnp.sum(jaxent.softmax_cross_entropy_with_integer_labels(z, y, z_loss=1e-2))
    )(zb.astype(jnp.float32))
    _close(g, e, rtol=2e-2)


LINEAR_OPTIONS = {
    "plain": {},
    "all": {
        "bias": True,
        "ignore_index": -100,
        "z_loss": 1e-2,
        "logit_softcap": 3.0,
        "label_smoothing": 0.1,
        "block_size": 2,
    },
}


def _vp_linear_check(option: str) -> None:
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(D, K)), jnp.float32)
    b = jnp.asarray(rng.normal(size=K), jnp.float32)
    y = rng.integers(0, K, size=N).astype(np.int32)
    kw = dict(LINEAR_OPTIONS[option])
    use_bias = kw.pop("bias", False)
    if "ignore_index" in kw:
        y[[2, 3]] = -100
    y = jnp.asarray(y)
    mesh = _mesh((8,), ("tp",))

    def body(h, w, b, y):
        return jaxent.vocab_parallel_linear_cross_entropy(
            h, w, y, "tp", bias_shard=b if use_bias else None, **kw
        )

    f = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=(P(), P(None, "tp"), P("tp"), P()), out_specs=P())
    )
    cot = jnp.asarray(rng.uniform(0.5, 1.5, size=N), jnp.float32)  # no cancellation

    def ref(h, w, b):
        return jaxent.linear_cross_entropy(h, w, y, bias=b if use_bias else None, **kw)

    def mat(h, w, b):
        eps = kw.get("label_smoothing", 0.0)
        logits = h @ w + b[None, :] if use_bias else h @ w
        if kw.get("logit_softcap"):
            c = kw["logit_softcap"]
            logits = c * jnp.tanh(logits / c)
        ok = y != -100
        soft = (1 - eps) * jax.nn.one_hot(jnp.where(ok, y, 0), K) + eps / K
        lse = jax.nn.logsumexp(logits, axis=-1)
        loss = jaxent.softmax_cross_entropy(logits, soft) + kw.get("z_loss", 0.0) * lse**2
        return jnp.where(ok, loss, 0)

    argnums = (0, 1, 2) if use_bias else (0, 1)
    got, got_g = jax.value_and_grad(lambda h, w, b: jnp.sum(f(h, w, b, y) * cot), argnums=argnums)(
        h, w, b
    )
    for reference in (ref, mat):
        exp, exp_g = jax.value_and_grad(
            lambda h, w, b, r=reference: jnp.sum(r(h, w, b) * cot), argnums=argnums
        )(h, w, b)
        _close(f(h, w, b, y), reference(h, w, b), rtol=1e-5, what="values")
        _close(got, exp, rtol=1e-5, what="total")
        for g, e in zip(got_g, exp_g, strict=True):
            _close(g, e, rtol=1e-5, what="gradient")
    hlo = f.lower(h, w, b, y).as_text()
    n_coll = hlo.count("all_reduce") + hlo.count("all-reduce")
    assert n_coll <= 2, f"{n_coll} collectives in the forward pass"


for _opt in LINEAR_OPTIONS:
    CHECKS[f"vocab_parallel_linear[{_opt}]"] = partial(_vp_linear_check, _opt)


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    results = {}
    for name, fn in CHECKS.items():
        try:
            fn()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the parent test
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
