"""Multi-device checks, run in a subprocess by ``test_sharding.py``.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` only takes effect before
jax is imported, so these checks live in their own process: ``python
tests/_sharding_checks.py`` runs every check and prints one JSON object
``{check name: "ok" | error text}`` as its last line.

Batch sharding is checked on a mesh of Auto axes and on one of Explicit axes
(``jax.make_mesh``'s default), under strict dtype and rank promotion.
References are unsharded computations on one device: the same jaxent
function (batch sharding), a float64 numpy formula (edge rows) or the materialised
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
from functools import cache, partial  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")  # the suite's configuration

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


@cache
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
        # Blocks dividing V (no column mask), bias, where, smoothing and soft-cap.
        "linear_cross_entropy_options": (
            lambda h, w, b, y, m: jaxent.linear_cross_entropy(
                h, w, y, bias=b, where=m, block_size=8, label_smoothing=0.1, logit_softcap=4.0
            ),
            (h, w, rng.normal(size=K).astype(np.float32), y, rng.random(N) > 0.3),
            (0, 1, 2),
        ),
    }
    if hasattr(jaxent, "label_smoothed_cross_entropy"):
        table["label_smoothed_cross_entropy"] = (
            partial(jaxent.label_smoothed_cross_entropy, epsilon=0.1),
            (logits(), y),
            (0,),
        )
    return table


def _values_and_grads(name: str) -> Callable:
    """Jitted ``args -> (per-example values, VJP of a fixed cotangent)`` for one loss."""
    fn, _, argnums = _public_losses()[name]

    def run(*args):
        def f(*diff):
            full = list(args)
            for i, d in zip(argnums, diff, strict=True):
                full[i] = d
            return fn(*full)

        def total(*diff):
            out = f(*diff)
            # [N] per example, or [N, K] for the elementwise binary losses
            cot = jnp.arange(1, out.size + 1, dtype=out.dtype).reshape(out.shape) / out.size
            return jnp.sum(out * cot), out

        grads, out = jax.grad(total, argnums=tuple(range(len(argnums))), has_aux=True)(
            *[args[i] for i in argnums]
        )
        return out, grads

    return jax.jit(run)


@cache
def _batch_reference(name: str):
    """Unsharded values and gradients on one device."""
    _, args, _ = _public_losses()[name]
    return _values_and_grads(name)(*[np.asarray(a) for a in args])


def _batch_check(name: str, axis_type: AxisType) -> None:
    _, args, argnums = _public_losses()[name]
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):
        shard = NamedSharding(mesh, P("batch"))
        # Only arrays with the batch as leading axis are sharded (the [D, V] weight is replicated).
        placed = [
            jax.device_put(a, shard if i == 0 or a.shape[0] == N else NamedSharding(mesh, P()))
            for i, a in enumerate(args)
        ]
        assert len(placed[0].sharding.device_set) == 8
        got, got_grads = _values_and_grads(name)(*placed)
    exp, exp_grads = _batch_reference(name)
    assert got.shape[0] == N, got.shape
    _close(got, exp, what=f"{name} values")
    for i, (g, e) in enumerate(zip(got_grads, exp_grads, strict=True)):
        assert np.all(np.isfinite(np.asarray(g))), f"{name}: non-finite gradient {i}"
        _close(g, e, rtol=1e-5, what=f"{name} grad {argnums[i]}")


# Both mesh types: Auto (sharding propagated by XLA) and Explicit (sharding in the
# types, the default of `jax.make_mesh`), for every loss.
for _name in _public_losses():
    CHECKS[f"batch_sharded[{_name}]"] = partial(_batch_check, _name, AxisType.Auto)
    CHECKS[f"batch_sharded_explicit[{_name}]"] = partial(_batch_check, _name, AxisType.Explicit)


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


def _lse_ce_reference(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64 numpy CE; a row with every logit -inf gives 0 (no class left)."""
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    m0 = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = (m0 + np.log(np.sum(np.exp(z - m0), axis=-1, keepdims=True)))[:, 0]
        loss = lse - z[np.arange(len(y)), y]
    return np.where(np.isneginf(m[:, 0]), 0.0, loss)


@check
def vocab_parallel_edge_rows() -> None:
    """-inf on whole shards, a fully -inf row (0) and a NaN logit (NaN row), as materialised."""
    rng = np.random.default_rng(4)
    z = rng.normal(size=(N, K)) * 3
    k_loc = K // 8
    z[0, : K - k_loc] = -np.inf  # only the last shard is live
    z[1, k_loc:] = -np.inf  # only the first shard is live
    z[2, :] = -np.inf  # no class left: 0, gradient 0
    z[3, 5] = np.nan  # NaN row
    z[4, 7] = -np.inf  # the label's logit is -inf: +inf
    y = rng.integers(0, K, size=N).astype(np.int32)
    y[0], y[1], y[4] = K - 1, 0, 7
    mesh = _mesh((8,), ("tp",))
    f = jax.jit(
        jax.shard_map(
            partial(jaxent.vocab_parallel_cross_entropy, axis_name="tp"),
            mesh=mesh,
            in_specs=(P(None, "tp"), P()),
            out_specs=P(),
        )
    )
    zj, yj = jnp.asarray(z, jnp.float32), jnp.asarray(y)
    got = np.asarray(f(zj, yj), np.float64)
    exp = _lse_ce_reference(np.asarray(zj), y)
    assert np.isnan(got[3]) and got[4] == np.inf and got[2] == 0, got[:5]
    ok = np.isfinite(exp)
    _close(got[ok], exp[ok], rtol=1e-6, what="values")
    live = np.ones(N, bool)
    live[[3, 4]] = False
    g = jax.grad(lambda z: jnp.sum(jnp.where(jnp.asarray(live), f(z, yj), 0)))(zj)
    g = np.asarray(g, np.float64)
    assert np.all(np.isfinite(g[live])) and not np.any(g[2]), "fully -inf row: gradient 0"
    # Reference gradient of the live rows: softmax - onehot (0 at -inf logits).
    zz = np.asarray(zj, np.float64)[live]
    m = np.max(zz, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(zz - m)
    with np.errstate(invalid="ignore"):
        p = e / e.sum(-1, keepdims=True)
    p = np.nan_to_num(p)  # the fully -inf row: no class, gradient 0
    p[np.arange(live.sum()), y[live]] -= np.where(np.isneginf(np.max(zz, -1)), 0.0, 1.0)
    _close(g[live], p, rtol=1e-6, what="gradient")


def _raises(fn, error, *words) -> None:
    try:
        fn()
    except error as e:
        msg = str(e)
        assert all(w in msg for w in words), msg
        return
    raise AssertionError(f"no {error.__name__} raised")


@check
def vocab_parallel_misuse() -> None:
    """axis_name None / unknown and replicated class axes raise named errors (issue 9, defect 9)."""
    z, y, _, _ = _vp_problem(5, "plain")
    h = jnp.ones((N, D), jnp.float32)
    w = jnp.ones((D, K), jnp.float32)
    mesh = _mesh((8,), ("tp",))

    def run(body, in_specs, *args):
        return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P()))(*args)

    vp, vpl = jaxent.vocab_parallel_cross_entropy, jaxent.vocab_parallel_linear_cross_entropy
    for name in (None, "nope"):
        _raises(
            lambda n=name: run(lambda z, y: vp(z, y, n), (P(None, "tp"), P()), z, y),
            ValueError,
            "axis_name",
        )
        _raises(
            lambda n=name: run(lambda h, w, y: vpl(h, w, y, n), (P(), P(None, "tp"), P()), h, w, y),
            ValueError,
            "axis_name",
        )
    _raises(
        lambda: run(lambda z, y: vp(z, y, ("tp", 3)), (P(None, "tp"), P()), z, y),
        TypeError,
        "axis_name",
    )
    # Replicated logits / weight: every shard would see all K classes (loss + log 8).
    _raises(
        lambda: run(lambda z, y: vp(z, y, "tp"), (P(), P()), z[:, : K // 8], y),
        ValueError,
        "logits_shard",
        "replicated",
    )
    _raises(
        lambda: run(lambda h, w, y: vpl(h, w, y, "tp"), (P(), P(), P()), h, w[:, : K // 8], y),
        ValueError,
        "weight_shard",
        "replicated",
    )
    # Outside shard_map the axis is unbound: a named error, not a raw NameError.
    _raises(lambda: vp(z, y, "tp"), ValueError, "axis_name")


@check
def vocab_parallel_explicit_mesh() -> None:
    """shard_map over an Explicit-axis mesh (`jax.make_mesh`'s default) gives the same values."""
    z, y, _, _ = _vp_problem(6, "plain")
    rng = np.random.default_rng(6)
    h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(D, K)), jnp.float32)
    mesh = jax.make_mesh((2, 4), ("dp", "tp"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        zs = jax.device_put(z, NamedSharding(mesh, P("dp", "tp")))
        ys = jax.device_put(y, NamedSharding(mesh, P("dp")))
        f = jax.jit(
            jax.shard_map(
                partial(jaxent.vocab_parallel_cross_entropy, axis_name="tp", z_loss=1e-2),
                in_specs=(P("dp", "tp"), P("dp")),
                out_specs=P("dp"),
            )
        )
        got = f(zs, ys)
        g = jax.grad(lambda z: jnp.sum(f(z, ys)))(zs)
        hs = jax.device_put(h, NamedSharding(mesh, P("dp")))
        ws = jax.device_put(w, NamedSharding(mesh, P(None, "tp")))
        fl = jax.jit(
            jax.shard_map(
                partial(jaxent.vocab_parallel_linear_cross_entropy, axis_name="tp", block_size=2),
                in_specs=(P("dp"), P(None, "tp"), P("dp")),
                out_specs=P("dp"),
            )
        )
        got_l = fl(hs, ws, ys)
        gl = jax.grad(lambda h, w: jnp.sum(fl(h, w, ys)), argnums=(0, 1))(hs, ws)
    ref = partial(jaxent.softmax_cross_entropy_with_integer_labels, z_loss=1e-2)
    _close(got, ref(z, y), rtol=1e-6, what="values")
    _close(g, jax.grad(lambda z: jnp.sum(ref(z, y)))(z), rtol=1e-6, what="gradient")

    def ref_l(h, w):
        return jaxent.softmax_cross_entropy_with_integer_labels(h @ w, y)

    _close(got_l, ref_l(h, w), rtol=1e-5, what="linear values")
    for a, b in zip(
        gl, jax.grad(lambda h, w: jnp.sum(ref_l(h, w)), argnums=(0, 1))(h, w), strict=True
    ):
        _close(a, b, rtol=1e-5, what="linear gradient")


# --------------------------------------------------------------------------- issue 13
# Log-prob/entropy and KL with the class axis sharded, against numpy float64.


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return z - (m + np.log(np.sum(np.exp(z - m), axis=-1, keepdims=True)))


def _np_lpent(z, y, t, keep, g_lp, g_ent):
    """(log_prob, entropy) and d(sum g_lp lp + g_ent H)/dz of softmax(z / t), numpy float64."""
    ls = _np_log_softmax(np.asarray(z, np.float64) / t)
    p = np.exp(ls)
    n = len(y)
    live = keep & np.isfinite(ls).any(-1)
    lp = np.where(live, ls[np.arange(n), y], 0.0)
    plogp = np.where(p > 0, p * np.where(p > 0, ls, 0.0), 0.0)
    ent = np.where(live, -plogp.sum(-1), 0.0)
    g_lp, g_ent = np.where(live, g_lp, 0.0), np.where(live, g_ent, 0.0)
    onehot = np.eye(z.shape[-1])[y]
    dent = np.where(p > 0, p * (np.where(p > 0, -ls, 0.0) - ent[:, None]), 0.0)
    dz = (g_lp[:, None] * (onehot - p) + g_ent[:, None] * dent) / t
    return lp, ent, dz


def _np_kl(a, b, t, keep, g):
    la = _np_log_softmax(np.asarray(a, np.float64) / t)
    lb = _np_log_softmax(np.asarray(b, np.float64) / t)
    p, q = np.exp(la), np.exp(lb)
    kl = np.where(p > 0, p * np.where(p > 0, la - lb, 0.0), 0.0).sum(-1)
    kl = np.where(keep, kl, 0.0)
    g = np.where(keep, g, 0.0)[:, None]
    da = g * np.where(p > 0, p * (np.where(p > 0, la - lb, 0.0) - kl[:, None]), 0.0) / t
    db = g * (q - p) / t
    return kl, da, db


def _count_collectives(text: str) -> int:
    return text.count("all_reduce") + text.count("all-reduce")


DIST_OPTIONS = {"plain": {}, "temperature_where": {"temperature": 1.7, "where": True}}


def _dist_problem(seed, option, dtype=jnp.float32, n=N):
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(n, K)) * 3).astype(np.float32)
    b = (rng.normal(size=(n, K)) * 3).astype(np.float32)
    y = rng.integers(0, K, size=n).astype(np.int32)
    kw = dict(DIST_OPTIONS[option])
    keep = rng.random(n) > 0.3 if kw.pop("where", False) else np.ones(n, bool)
    g1, g2 = rng.uniform(0.5, 1.5, size=(2, n)).astype(np.float32)
    return a, b, y, keep, kw, g1, g2


def _vp_lpent_check(option: str) -> None:
    a, _, y, keep, kw, g1, g2 = _dist_problem(11, option)
    t = kw.get("temperature", 1.0)
    mesh = _mesh((8,), ("tp",))

    def body(z, y, keep):
        return jaxent.vocab_parallel_log_prob_and_entropy(z, y, "tp", where=keep, **kw)

    f = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=(P(None, "tp"), P(), P()), out_specs=(P(), P()))
    )

    def total(z):
        lp, ent = f(z, jnp.asarray(y), jnp.asarray(keep))
        return jnp.sum(lp * g1) + jnp.sum(ent * g2)

    lp, ent = f(jnp.asarray(a), jnp.asarray(y), jnp.asarray(keep))
    lp_ref, ent_ref, dz_ref = _np_lpent(a, y, t, keep, g1, g2)
    _close(lp, lp_ref, rtol=1e-6, what="log_prob")
    _close(ent, ent_ref, rtol=1e-6, what="entropy")
    _close(jax.grad(total)(jnp.asarray(a)), dz_ref, rtol=1e-6, what="gradient")
    fwd = f.lower(jnp.asarray(a), jnp.asarray(y), jnp.asarray(keep)).as_text()
    assert _count_collectives(fwd) <= 2, f"{_count_collectives(fwd)} collectives forward"
    both = jax.jit(jax.grad(total)).lower(jnp.asarray(a)).as_text()
    assert _count_collectives(both) <= 2, f"{_count_collectives(both)} collectives fwd+bwd"


def _vp_kl_check(option: str) -> None:
    a, b, _, keep, kw, g1, _ = _dist_problem(12, option)
    t = kw.get("temperature", 1.0)
    mesh = _mesh((8,), ("tp",))

    def body(a, b, keep):
        return jaxent.vocab_parallel_kl_divergence(a, b, "tp", where=keep, **kw)

    f = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=(P(None, "tp"),) * 2 + (P(),), out_specs=P())
    )
    args = (jnp.asarray(a), jnp.asarray(b), jnp.asarray(keep))

    def total(a, b):
        return jnp.sum(f(a, b, args[2]) * g1)

    kl_ref, da_ref, db_ref = _np_kl(a, b, t, keep, g1)
    _close(f(*args), kl_ref, rtol=1e-6, what="kl")
    da, db = jax.grad(total, (0, 1))(args[0], args[1])
    _close(da, da_ref, rtol=1e-6, what="d/dp_logits")
    _close(db, db_ref, rtol=1e-6, what="d/dq_logits")
    # the distillation case: only the student (q) differentiated
    db_only = jax.grad(lambda b: total(jax.lax.stop_gradient(args[0]), b))(args[1])
    _close(db_only, db_ref, rtol=1e-6, what="student-only gradient")
    fwd = f.lower(*args).as_text()
    assert _count_collectives(fwd) <= 2, f"{_count_collectives(fwd)} collectives forward"
    both = jax.jit(jax.grad(total, (0, 1))).lower(args[0], args[1]).as_text()
    assert _count_collectives(both) <= 2, f"{_count_collectives(both)} collectives fwd+bwd"


for _opt in DIST_OPTIONS:
    CHECKS[f"vocab_parallel_log_prob_and_entropy[{_opt}]"] = partial(_vp_lpent_check, _opt)
    CHECKS[f"vocab_parallel_kl_divergence[{_opt}]"] = partial(_vp_kl_check, _opt)


@check
def vocab_parallel_divergences_2d_mesh_bfloat16() -> None:
    """dp (2) x tp (4) mesh, bfloat16 logits: both functions against numpy on the rounded inputs."""
    a, b, y, keep, _, g1, g2 = _dist_problem(13, "plain")
    a16, b16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    a64, b64 = (np.asarray(x.astype(jnp.float32), np.float64) for x in (a16, b16))
    mesh = _mesh((2, 4), ("dp", "tp"))
    lpent = jax.jit(
        jax.shard_map(
            partial(jaxent.vocab_parallel_log_prob_and_entropy, axis_name="tp"),
            mesh=mesh,
            in_specs=(P("dp", "tp"), P("dp")),
            out_specs=(P("dp"), P("dp")),
        )
    )
    kl = jax.jit(
        jax.shard_map(
            partial(jaxent.vocab_parallel_kl_divergence, axis_name="tp"),
            mesh=mesh,
            in_specs=(P("dp", "tp"), P("dp", "tp")),
            out_specs=P("dp"),
        )
    )
    lp, ent = lpent(a16, jnp.asarray(y))
    assert lp.dtype == ent.dtype == jnp.bfloat16
    lp_ref, ent_ref, dz_ref = _np_lpent(a64, y, 1.0, keep | True, g1, g2)
    _close(lp, lp_ref, rtol=1e-2, what="bf16 log_prob")
    _close(ent, ent_ref, rtol=1e-2, what="bf16 entropy")
    dz = jax.grad(
        lambda z: (
            jnp.sum(lpent(z, jnp.asarray(y))[0].astype(jnp.float32) * g1)
            + jnp.sum(lpent(z, jnp.asarray(y))[1].astype(jnp.float32) * g2)
        )
    )(a16)
    _close(dz, dz_ref, rtol=2e-2, what="bf16 log_prob/entropy gradient")
    kl_ref, da_ref, db_ref = _np_kl(a64, b64, 1.0, np.ones(N, bool), g1)
    _close(kl(a16, b16), kl_ref, rtol=1e-2, what="bf16 kl")
    da, db = jax.grad(lambda a, b: jnp.sum(kl(a, b).astype(jnp.float32) * g1), (0, 1))(a16, b16)
    _close(da, da_ref, rtol=2e-2, what="bf16 kl d/da")
    _close(db, db_ref, rtol=2e-2, what="bf16 kl d/db")


@check
def vocab_parallel_divergences_edge_rows() -> None:
    """A shard whose logits are all -inf, a fully -inf row, a label on a -inf logit."""
    a, b, y, _, _, g1, g2 = _dist_problem(14, "plain")
    a[:, :3] = -np.inf  # the first shard (K / 8 = 3 columns) is ruled out everywhere
    a[4] = -np.inf  # no class left in row 4
    y[2] = 1  # a label on a -inf logit: log_prob = -inf
    b[:, :3] = -np.inf
    b[4] = -np.inf
    keep = np.ones(N, bool)
    mesh = _mesh((8,), ("tp",))
    lpent = jax.jit(
        jax.shard_map(
            partial(jaxent.vocab_parallel_log_prob_and_entropy, axis_name="tp"),
            mesh=mesh,
            in_specs=(P(None, "tp"), P()),
            out_specs=(P(), P()),
        )
    )
    lp, ent = lpent(jnp.asarray(a), jnp.asarray(y))
    lp_ref, ent_ref, dz_ref = _np_lpent(a, y, 1.0, keep, g1, g2)
    assert float(lp[2]) == -np.inf and float(lp[4]) == 0.0 and float(ent[4]) == 0.0
    fin = np.isfinite(lp_ref)
    _close(np.asarray(lp)[fin], lp_ref[fin], rtol=1e-6, what="edge log_prob")
    _close(ent, ent_ref, rtol=1e-6, what="edge entropy")
    dz = jax.grad(lambda z: jnp.sum(lpent(z, jnp.asarray(y))[1] * g2))(jnp.asarray(a))
    assert np.all(np.isfinite(np.asarray(dz)))
    kl = jax.jit(
        jax.shard_map(
            partial(jaxent.vocab_parallel_kl_divergence, axis_name="tp"),
            mesh=mesh,
            in_specs=(P(None, "tp"), P(None, "tp")),
            out_specs=P(),
        )
    )
    kl_ref, _, _ = _np_kl(a, b, 1.0, keep, g1)
    got = kl(jnp.asarray(a), jnp.asarray(b))
    assert float(got[4]) == 0.0
    _close(got, kl_ref, rtol=1e-6, what="edge kl")
    grads = jax.grad(lambda a, b: jnp.sum(kl(a, b)), (0, 1))(jnp.asarray(a), jnp.asarray(b))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))), "non-finite KL gradient"


@check
def vocab_parallel_temperature_on_cross_entropy() -> None:
    z, y, _, _ = _vp_problem(15, "plain")
    mesh = _mesh((8,), ("tp",))
    f = jax.jit(
        jax.shard_map(
            partial(jaxent.vocab_parallel_cross_entropy, axis_name="tp", temperature=2.5),
            mesh=mesh,
            in_specs=(P(None, "tp"), P()),
            out_specs=P(),
        )
    )
    ls = _np_log_softmax(np.asarray(z, np.float64) / 2.5)
    _close(f(z, y), -ls[np.arange(N), np.asarray(y)], rtol=1e-6, what="temperature")


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
