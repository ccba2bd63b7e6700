"""Tests of `jaxent.linear_cross_entropy` (single device).

References: the materialised `jaxent.softmax_cross_entropy_with_integer_labels`
of ``hidden @ weight + bias`` (values and autodiff gradients), and a float64
numpy formula for label smoothing. The vocabulary-parallel functions need
several devices and are tested in ``test_sharding.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxent
from jaxent import _large_vocab

N, D, V = 24, 16, 100


def _problem(seed, dtype=np.float32, n=N, d=D, v=V, scale=1.0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(n, d)) * scale, dtype)
    w = jnp.asarray(rng.normal(size=(d, v)) / np.sqrt(d) * 3, dtype)
    b = jnp.asarray(rng.normal(size=(v,)), dtype)
    y = jnp.asarray(rng.integers(0, v, size=(n,)), jnp.int32)
    return h, w, b, y, rng


def _materialised(h, w, b, y, **kw):
    logits = h @ w if b is None else h @ w + b[None, :]
    return jaxent.softmax_cross_entropy_with_integer_labels(logits, y, **kw)


def _loss_and_grads(fn, h, w, b, y, cot):
    def total(h, w, b):
        return jnp.sum(fn(h, w, b) * cot)

    argnums = (0, 1) if b is None else (0, 1, 2)
    values = jax.jit(fn)(h, w, b)
    grads = jax.jit(jax.grad(total, argnums=argnums))(h, w, b)
    return values, grads


def _rel_close(actual, expected, rtol):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


OPTIONS = {
    "plain": {},
    "bias": {"bias": True},
    "ignore_index": {"ignore_index": -100},
    "where": {"where": True},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"logit_softcap": 2.5},
    "all": {
        "bias": True,
        "ignore_index": -100,
        "where": True,
        "z_loss": 3e-2,
        "logit_softcap": 4.0,
    },
}


@pytest.mark.parametrize("block_size", [None, 33])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_matches_materialised_float32(option, block_size):
    """Values and gradients within 1e-5 (relative to the largest entry) in float32."""
    opts = dict(OPTIONS[option])
    h, w, b, y, rng = _problem(1)
    use_bias = opts.pop("bias", False)
    b = b if use_bias else None
    kw = {}
    if "ignore_index" in opts:
        y = y.at[jnp.array([2, 7])].set(-100)
        kw["ignore_index"] = -100
    if opts.pop("where", False):
        kw["where"] = jnp.asarray(rng.random(N) > 0.3)
    kw.update(opts)
    cot = jnp.asarray(rng.normal(size=N), jnp.float32)

    def ours(h, w, b):
        return jaxent.linear_cross_entropy(h, w, y, bias=b, block_size=block_size, **kw)

    def ref(h, w, b):
        return _materialised(h, w, b, y, **kw)

    got, got_g = _loss_and_grads(ours, h, w, b, y, cot)
    exp, exp_g = _loss_and_grads(ref, h, w, b, y, cot)
    assert got.dtype == jnp.float32 and got.shape == (N,)
    _rel_close(got, exp, 1e-5)
    for g, e in zip(got_g, exp_g, strict=True):
        assert g.dtype == jnp.float32
        _rel_close(g, e, 1e-5)


def _smoothed_ref(h, w, b, y, eps, z_loss=0.0):
    z = np.asarray(h, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
    zy = z[np.arange(len(y)), np.asarray(y)]
    return lse - (1 - eps) * zy - eps * z.mean(-1) + z_loss * lse**2


@pytest.mark.x64  # float64 numpy reference at 1e-12
@pytest.mark.parametrize("block_size", [None, 30])
def test_label_smoothing(block_size):
    """Uniform convention: lse - (1-eps) z_y - eps mean_j z_j (float64 numpy reference)."""
    h, w, b, y, rng = _problem(2, np.float64)
    eps, zl = 0.1, 1e-2
    got = jax.jit(
        lambda h, w, b: jaxent.linear_cross_entropy(
            h, w, y, bias=b, label_smoothing=eps, z_loss=zl, block_size=block_size
        )
    )(h, w, b)
    np.testing.assert_allclose(got, _smoothed_ref(h, w, b, y, eps, zl), rtol=1e-12)

    # Gradient: the soft-label loss with targets (1 - eps) onehot + eps / V.
    def ref(h, w, b):
        soft = (1 - eps) * jax.nn.one_hot(y, V, dtype=h.dtype) + eps / V
        return jaxent.softmax_cross_entropy(h @ w + b[None, :], soft)

    def ours(h, w, b):
        return jaxent.linear_cross_entropy(
            h, w, y, bias=b, label_smoothing=eps, block_size=block_size
        )

    cot = jnp.asarray(rng.normal(size=N))
    _, got_g = _loss_and_grads(ours, h, w, b, y, cot)
    _, exp_g = _loss_and_grads(ref, h, w, b, y, cot)
    for g, e in zip(got_g, exp_g, strict=True):
        _rel_close(g, e, 1e-12)


@pytest.mark.x64
def test_float64_check_grads():
    """Reverse-mode gradients agree with finite differences in float64."""
    h, w, b, y, _ = _problem(3, np.float64, n=5, d=4, v=11)

    def f(h, w, b):
        return jaxent.linear_cross_entropy(
            h, w, y, bias=b, z_loss=0.1, logit_softcap=3.0, label_smoothing=0.2, block_size=4
        )

    check_grads(jax.jit(f), (h, w, b), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_bfloat16_accumulates_in_float32():
    """bfloat16 in and out, close to the float32 loss of the same (rounded) inputs."""
    h, w, b, y, rng = _problem(4, np.float32, v=512)
    hb, wb, bb = (x.astype(jnp.bfloat16) for x in (h, w, b))
    cot = jnp.ones(N, jnp.float32)

    def ours(h, w, b):
        return jaxent.linear_cross_entropy(h, w, y, bias=b, block_size=64)

    def ref(h, w, b):
        return _materialised(h, w, b, y)

    got, grads = _loss_and_grads(ours, hb, wb, bb, y, cot.astype(jnp.bfloat16))
    exp, exp_g = _loss_and_grads(ref, *(x.astype(jnp.float32) for x in (hb, wb, bb)), y, cot)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), exp, rtol=2e-2)
    for g, e in zip(grads, exp_g, strict=True):
        assert g.dtype == jnp.bfloat16
        _rel_close(g, e, 3e-2)


def test_block_size_invariance_and_leading_dims():
    """Any block size (dividing V or not, larger than V) gives the same loss; [B, T, D] works."""
    h, w, b, y, _ = _problem(5)

    def f(h, y, bs):
        return jaxent.linear_cross_entropy(h, w, y, bias=b, block_size=bs)

    f = jax.jit(f, static_argnums=2)
    results = [f(h, y, bs) for bs in (1, 7, 25, 99, 1000)]
    for r in results[1:]:
        _rel_close(r, results[0], 1e-6)
    got = f(h.reshape(4, 6, D), y.reshape(4, 6), None)
    assert got.shape == (4, 6)
    _rel_close(got.reshape(N), results[0], 1e-6)


def test_vmap_and_jit():
    h, w, b, y, _ = _problem(6)
    hs = jnp.stack([h, 2 * h])

    def f(h):
        return jaxent.linear_cross_entropy(h, w, y, bias=b, block_size=32)

    got = jax.jit(jax.vmap(f))(hs)
    np.testing.assert_allclose(got[1], jax.jit(f)(2 * h), rtol=1e-6)
    grad = jax.grad(lambda h: jnp.sum(f(h)))
    gv = jax.jit(jax.vmap(grad))(hs)
    g1 = jax.jit(grad)(2 * h)
    np.testing.assert_allclose(gv[1], g1, rtol=1e-5, atol=1e-6)


def test_masked_rows_and_bad_labels():
    """Removed rows: loss 0 and zero gradient. A kept out-of-range label: NaN (as materialised)."""
    h, w, b, y, _ = _problem(7)
    where = jnp.zeros(N, bool)
    loss, gh = jax.jit(
        jax.value_and_grad(lambda h: jnp.sum(jaxent.linear_cross_entropy(h, w, y, where=where)))
    )(h)
    assert loss == 0 and not np.any(np.asarray(gh))
    lce = jax.jit(jaxent.linear_cross_entropy, static_argnames="ignore_index")
    y_ign = jnp.full((N,), -100, jnp.int32)
    out = lce(h, w, y_ign, ignore_index=-100)
    assert not np.any(np.asarray(out))

    y_bad = y.at[3].set(V)
    out = lce(h, w, y_bad)
    ref = _materialised(h, w, None, y_bad)
    assert np.isnan(out[3]) and np.isnan(ref[3])
    np.testing.assert_allclose(np.delete(out, 3), np.delete(ref, 3), rtol=1e-5)


def test_memory_is_linear_not_quadratic():
    """Compiled forward+backward needs far less than one N x V float32 buffer."""
    n, d, v, bs = 256, 32, 16384, 256
    h, w, _, y, _ = _problem(8, np.float32, n=n, d=d, v=v)

    def lce(h, w):
        return jnp.sum(jaxent.linear_cross_entropy(h, w, y, block_size=bs))

    def mat(h, w):
        return jnp.sum(_materialised(h, w, None, y))

    def temp(f):
        comp = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(h, w).compile()
        return comp.memory_analysis().temp_size_in_bytes

    logits_bytes = n * v * 4
    assert temp(mat) >= logits_bytes
    assert temp(lce) < logits_bytes / 8


def test_saves_only_linear_residuals():
    """The VJP keeps O(N) residuals beyond the inputs: no [N, block] or [N, V] array."""
    h, w, b, y, _ = _problem(9)
    _, f_vjp = jax.vjp(lambda h, w: jaxent.linear_cross_entropy(h, w, y, block_size=10), h, w)
    shapes = {leaf.shape for leaf in jax.tree_util.tree_leaves(f_vjp)}
    assert all(np.prod(s, dtype=int) <= max(N * D, D * V) for s in shapes)
    assert not any(s in {(N, V), (N, 10)} for s in shapes)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden": np.ones((N, D), np.int32)}, TypeError, "hidden"),
        ({"weight": np.ones((D, V), np.int32)}, TypeError, "weight"),
        ({"labels": np.ones(N, np.float32)}, TypeError, "labels"),
        ({"weight": np.ones((D + 1, V), np.float32)}, ValueError, "weight"),
        ({"weight": np.ones((D,), np.float32)}, ValueError, "weight"),
        ({"labels": np.ones(N + 1, np.int32)}, ValueError, "labels"),
        ({"bias": np.ones(V + 1, np.float32)}, ValueError, "bias"),
        ({"where": np.ones(N + 1, bool)}, ValueError, "where"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": 2.5}, TypeError, "block_size"),
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"logit_softcap": 0.0}, ValueError, "logit_softcap"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index"),
    ],
)
def test_bad_inputs(kwargs, error, match):
    args = {
        "hidden": np.ones((N, D), np.float32),
        "weight": np.ones((D, V), np.float32),
        "labels": np.zeros(N, np.int32),
    }
    for k in ("hidden", "weight", "labels"):
        if k in kwargs:
            args[k] = kwargs.pop(k)
    with pytest.raises(error, match=match):
        jaxent.linear_cross_entropy(args["hidden"], args["weight"], args["labels"], **kwargs)


def test_default_block_size():
    assert _large_vocab.DEFAULT_BLOCK_SIZE == 2048
    h, w, _, y, _ = _problem(10, v=3000)  # V > default: two blocks, the last ragged
    got = jax.jit(lambda h, w: jaxent.linear_cross_entropy(h, w, y))(h, w)
    _rel_close(got, _materialised(h, w, None, y), 1e-5)


# --------------------------------------------------------------------------- issue 10 / issue 9


def _np_linear_ce(h, w, b, y, cap=None):
    """float64 numpy loss and d loss / d u (u = h w + b) for every row (cotangent 1).

    Conventions of the materialised loss: cap(-inf) = -inf; a row whose logits
    are all -inf gives 0 (gradient 0); a label on a -inf logit gives +inf.
    """
    h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
    u = h @ w + (0.0 if b is None else np.asarray(b, np.float64))
    z = u if cap is None else np.where(np.isneginf(u), -np.inf, cap * np.tanh(u / cap))
    m = z.max(-1, keepdims=True)
    m0 = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(z - m0)
    s = e.sum(-1, keepdims=True)
    empty = np.isneginf(m[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = (m0 + np.log(s))[:, 0]
        loss = np.where(empty, 0.0, lse - z[np.arange(len(y)), y])
        p = np.where(empty[:, None], 0.0, e / s)
    dz = p.copy()
    dz[np.arange(len(y)), y] -= np.where(empty, 0.0, 1.0)
    if cap is not None:
        dz = dz * (1 - np.tanh(u / cap) ** 2)
    return loss, dz


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_working_memory_flat_in_vocab(dtype):
    """Compiled forward+backward temp memory is the same at V = 4000 and 16000.

    A bfloat16 weight used to be converted to float32 whole before the block
    loop, and a ragged last block made a copy of a bfloat16 dW (N=2048,
    D=1536: 252 MiB at V=32768, 1163 MiB at V=128256; now 60 MiB at both).
    """
    n, d, bs = 64, 32, 256

    def temp(v):
        h = jnp.ones((n, d), dtype)
        w = jnp.ones((d, v), dtype)
        y = jnp.zeros((n,), jnp.int32)

        def f(h, w):
            out = jaxent.linear_cross_entropy(h, w, y, block_size=bs)
            return jnp.sum(out.astype(jnp.float32))

        comp = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(h, w).compile()
        return comp.memory_analysis().temp_size_in_bytes

    small, large = temp(4000), temp(16000)  # ragged last blocks (160 and 128 columns)
    # Even a 2-byte copy of the 12000 extra columns of W or dW would add 768 KB.
    assert large - small < d * (16000 - 4000) // 4, (small, large)
    assert large < n * 16000 * 4 / 8  # far below one [N, V] float32 buffer


@pytest.mark.parametrize(("v", "block_size"), [(251, 64), (257, 256), (2049, 512), (2049, 4096)])
def test_padding_safe_for_any_vocab(v, block_size):
    """Prime V and 2^k + 1 with near-uniform logits: log V, not log of a padded V."""
    h, w, _, y, _ = _problem(11, np.float32, n=8, d=8, v=v, scale=1e-5)
    got = jax.jit(lambda h, w: jaxent.linear_cross_entropy(h, w, y, block_size=block_size))(h, w)
    exp, _ = _np_linear_ce(h, w, None, y)
    np.testing.assert_allclose(np.asarray(got, np.float64), exp, rtol=1e-6)
    np.testing.assert_allclose(exp, np.log(v), rtol=0, atol=1e-4)  # log(V-1) is 5e-4 off


def _vjp_jit(f):
    """Jitted ``(*args, cot) -> (f(*args), gradients of sum(cot * f))``: one compile per shape."""

    def run(*args):
        out, vjp = jax.vjp(f, *args[:-1])
        return out, vjp(args[-1].astype(out.dtype))

    return jax.jit(run)


@pytest.mark.parametrize("cap", [None, 3.0])
def test_neg_inf_bias_blocks(cap):
    """-inf bias on whole blocks (the first and a middle one), as materialised; float64 numpy."""
    n, d, v, bs = 12, 6, 50, 8
    h, w, b, y, rng = _problem(12, np.float32, n=n, d=d, v=v)
    b = b.at[0:8].set(-jnp.inf).at[24:32].set(-jnp.inf).at[45].set(-jnp.inf)
    y = jnp.asarray(rng.choice(np.r_[8:24, 32:45, 46:50], size=n), jnp.int32)
    y = y.at[5].set(45)  # label on a -inf logit: +inf (also under the soft-cap)
    cot = np.ones(n, np.float32)
    cot[5] = 0.0
    run = _vjp_jit(
        lambda h, w, b: jaxent.linear_cross_entropy(
            h, w, y, bias=b, block_size=bs, logit_softcap=cap
        )
    )
    got, grads = run(h, w, b, jnp.asarray(cot))
    exp, dz = _np_linear_ce(h, w, b, np.asarray(y), cap)
    assert got[5] == np.inf
    keep = np.arange(n) != 5
    np.testing.assert_allclose(np.asarray(got, np.float64)[keep], exp[keep], rtol=1e-5)
    dz = dz * cot[:, None]
    h64, w64 = np.asarray(h, np.float64), np.asarray(w, np.float64)
    for g, e in zip(grads, (dz @ w64.T, h64.T @ dz, dz.sum(0)), strict=True):
        assert np.all(np.isfinite(np.asarray(g)))
        _rel_close(g, e, 1e-5)

    # A bias of -inf everywhere: no class left, loss 0 and gradient 0 (not NaN).
    out, g_all = run(h, w, jnp.full((v,), -jnp.inf, jnp.float32), jnp.ones(n, jnp.float32))
    assert not np.any(np.asarray(out))
    assert not any(np.any(np.asarray(g)) for g in g_all)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_nan_logit_gives_nan_row(smoothing):
    """A NaN in a row's logits makes that row NaN (never 0); the other rows are untouched."""
    h, w, b, y, _ = _problem(13, np.float32)
    run = _vjp_jit(
        lambda h, b: jaxent.linear_cross_entropy(
            h, w, y, bias=b, block_size=32, label_smoothing=smoothing
        )
    )
    ones = jnp.ones(N, jnp.float32)
    got, (gh, _) = run(h.at[3, 2].set(jnp.nan), b, ones)
    ref, _ = run(h, b, ones)
    assert np.isnan(got[3]) and np.all(np.isnan(np.asarray(gh[3])))
    np.testing.assert_array_equal(np.delete(np.asarray(got), 3), np.delete(np.asarray(ref), 3))
    # A NaN bias column is a NaN logit in every row.
    assert np.all(np.isnan(np.asarray(run(h, b.at[70].set(jnp.nan), ones)[0])))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16])
def test_narrow_label_dtypes_do_not_wrap(dtype):
    """int8/uint8/int16 labels with more classes than the dtype holds: same as int32."""
    v = 300
    h, w, _, _, rng = _problem(14, np.float32, n=10, d=4, v=v)
    y32 = rng.integers(0, min(v, np.iinfo(dtype).max + 1), size=10).astype(np.int32)
    f = jax.jit(lambda h, w, y: jaxent.linear_cross_entropy(h, w, y, block_size=64))
    got = f(h, w, jnp.asarray(y32.astype(dtype)))
    exp, _ = _np_linear_ce(h, w, None, y32)
    np.testing.assert_allclose(np.asarray(got, np.float64), exp, rtol=1e-5)


@pytest.mark.parametrize("axis_name", [None, "tp", ("tp", 1)])
def test_vocab_parallel_axis_name_errors(axis_name):
    """None, an unbound name (outside shard_map) or a non-str: a named error, not a NameError."""
    z = np.zeros((2, 4), np.float32)
    y = np.zeros(2, np.int32)
    error = TypeError if isinstance(axis_name, tuple) else ValueError
    with pytest.raises(error, match="axis_name"):
        jaxent.vocab_parallel_cross_entropy(z, y, axis_name)
    with pytest.raises(error, match="axis_name"):
        jaxent.vocab_parallel_linear_cross_entropy(z, z.T, y, axis_name)
