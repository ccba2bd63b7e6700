"""Log-prob/entropy, KL and JS from hidden states (issue 13): against numpy in float64.

The references materialise the logits ``(h W + b) / T`` in numpy float64 and
use scipy's ``logsumexp``; gradients come from the closed forms written in
numpy (chained through ``z = (h W + b) / T`` by hand), never from jaxent.
Cases: random inputs with and without bias and temperature, row masks
(including every row of a block of rows removed), a prime V with a block
size that does not divide it and near-uniform logits, ``-inf`` bias columns,
bf16 inputs, every combination of the two outputs' cotangents, the JS
endpoints, trace-time errors, and compiled memory flat in V.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxent

N, D, V = 12, 6, 53  # V prime, not a multiple of BLOCK
BLOCK = 16


def _draw(seed, n=N, d=D, v=V, scale=1.0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d))
    w = rng.normal(size=(d, v)) * scale
    b = rng.normal(size=v)
    return rng, h, w, b


def _log_softmax(z):
    return z - logsumexp(z, axis=1, keepdims=True)


def _xlogy_rows(p, lp):
    return np.where(p > 0, p * np.where(p > 0, lp, 0.0), 0.0)


def _logits(h, w, b, t):
    return (h @ w + (0 if b is None else b)) / t


# ------------------------------------------------------------- numpy references


def ref_lpent(h, w, b, y, t=1.0, keep=None, g_lp=None, g_ent=None):
    """Values and (dh, dw, db) of sum(g_lp * lp + g_ent * H)."""
    z = _logits(h, w, b, t)
    ls = _log_softmax(z)
    p = np.exp(ls)
    n = len(y)
    lp = ls[np.arange(n), y]
    ent = -_xlogy_rows(p, ls).sum(1)
    keep = np.ones(n, bool) if keep is None else keep
    g_lp = np.ones(n) if g_lp is None else g_lp
    g_ent = np.ones(n) if g_ent is None else g_ent
    g_lp, g_ent = np.where(keep, g_lp, 0), np.where(keep, g_ent, 0)
    onehot = np.eye(z.shape[1])[y]
    dz = g_lp[:, None] * (onehot - p) + g_ent[:, None] * _xlogy_rows(p, -ls - ent[:, None])
    du = dz / t
    return (np.where(keep, lp, 0), np.where(keep, ent, 0)), (du @ w.T, h.T @ du, du.sum(0))


def ref_kl(ha, wa, ba, hb, wb, bb, t=1.0, keep=None):
    la = _log_softmax(_logits(ha, wa, ba, t))
    lb = _log_softmax(_logits(hb, wb, bb, t))
    p, q = np.exp(la), np.exp(lb)
    kl = _xlogy_rows(p, la - lb).sum(1)
    keep = np.ones(len(kl), bool) if keep is None else keep
    g = keep.astype(float)[:, None]
    da = g * _xlogy_rows(p, la - lb - kl[:, None]) / t
    db = g * (q - p) / t
    grads = (da @ wa.T, ha.T @ da, da.sum(0), db @ wb.T, hb.T @ db, db.sum(0))
    return np.where(keep, kl, 0), grads


def ref_js(ha, wa, ba, hb, wb, bb, beta, normalized, t=1.0, keep=None):
    la = _log_softmax(_logits(ha, wa, ba, t))
    lb = _log_softmax(_logits(hb, wb, bb, t))
    p, q = np.exp(la), np.exp(lb)
    m = beta * p + (1 - beta) * q
    lm = np.log(m)
    kl_pm = _xlogy_rows(p, la - lm).sum(1)
    kl_qm = _xlogy_rows(q, lb - lm).sum(1)
    js = beta * kl_pm + (1 - beta) * kl_qm
    # dJS/dp = beta log(p/m), dJS/dq = (1 - beta) log(q/m); chained through the softmax.
    ga = beta * (la - lm)
    gb = (1 - beta) * (lb - lm)
    da = p * (ga - (p * ga).sum(1, keepdims=True))
    db = q * (gb - (q * gb).sum(1, keepdims=True))
    if normalized:
        js, da, db = js / (beta * (1 - beta)), da / (beta * (1 - beta)), db / (beta * (1 - beta))
    keep = np.ones(len(js), bool) if keep is None else keep
    da, db = da * keep[:, None] / t, db * keep[:, None] / t
    grads = (da @ wa.T, ha.T @ da, da.sum(0), db @ wb.T, hb.T @ db, db.sum(0))
    return np.where(keep, js, 0), grads


def ref_kl_pq(la, lb):
    p = np.exp(la)
    return _xlogy_rows(p, la - lb).sum(1)


# ------------------------------------------------------------- helpers


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-10) if dtype == jnp.float64 else dict(rtol=2e-5, atol=1e-5)


def _as(dtype, *xs):
    return [None if x is None else jnp.asarray(x, dtype) for x in xs]


def _dtypes():
    return [
        pytest.param(jnp.float32, id="f32"),
        pytest.param(jnp.float64, id="f64", marks=pytest.mark.x64),
    ]


# ------------------------------------------------------------- log-prob and entropy


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [None, 0.7])
def test_log_prob_and_entropy_match_numpy(dtype, bias, temperature):
    rng, h, w, b = _draw(0)
    b = b if bias else None
    y = rng.integers(0, V, N)
    (lp_ref, ent_ref), grads_ref = ref_lpent(h, w, b, y, temperature or 1.0)
    jh, jw, jb = _as(dtype, h, w, b)

    def f(h, w, b):
        lp, ent = jaxent.linear_log_prob_and_entropy(
            h, w, jnp.asarray(y), bias=b, temperature=temperature, block_size=BLOCK
        )
        return jnp.sum(lp) + jnp.sum(ent), (lp, ent)

    argnums = (0, 1, 2) if bias else (0, 1)
    (_, (lp, ent)), grads = jax.value_and_grad(f, argnums=argnums, has_aux=True)(jh, jw, jb)
    np.testing.assert_allclose(lp, lp_ref, **_tol(dtype))
    np.testing.assert_allclose(ent, ent_ref, **_tol(dtype))
    for got, want in zip(grads, grads_ref, strict=False):
        np.testing.assert_allclose(got, want, **_tol(dtype))


@pytest.mark.parametrize("which", ["log_prob", "entropy", "both_weighted"])
def test_log_prob_and_entropy_any_cotangents(which):
    rng, h, w, b = _draw(1)
    y = rng.integers(0, V, N)
    g_lp = {"log_prob": rng.normal(size=N), "entropy": np.zeros(N)}.get(which, rng.normal(size=N))
    g_ent = {"log_prob": np.zeros(N), "entropy": rng.normal(size=N)}.get(which, rng.normal(size=N))
    _, grads_ref = ref_lpent(h, w, b, y, 1.0, None, g_lp, g_ent)
    jh, jw, jb = _as(jnp.float32, h, w, b)

    def f(h, w, b):
        lp, ent = jaxent.linear_log_prob_and_entropy(h, w, jnp.asarray(y), bias=b, block_size=BLOCK)
        if which == "log_prob":
            return jnp.sum(lp * g_lp.astype(np.float32))  # the entropy's cotangent is a symbolic 0
        if which == "entropy":
            return jnp.sum(ent * g_ent.astype(np.float32))
        return jnp.sum(lp * g_lp.astype(np.float32)) + jnp.sum(ent * g_ent.astype(np.float32))

    for got, want in zip(jax.grad(f, (0, 1, 2))(jh, jw, jb), grads_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_prime_vocabulary_near_uniform_is_log_v_not_log_of_padded():
    h = np.ones((4, 3))
    w = np.random.default_rng(2).normal(size=(3, V)) * 1e-4  # near-uniform logits
    lp, ent = jaxent.linear_log_prob_and_entropy(
        jnp.asarray(h, jnp.float32),
        jnp.asarray(w, jnp.float32),
        jnp.zeros(4, int),
        block_size=BLOCK,
    )
    np.testing.assert_allclose(ent, np.log(V), rtol=1e-5)
    np.testing.assert_allclose(lp, -np.log(V), rtol=1e-3)


def test_masked_rows_and_a_fully_masked_block_of_rows_give_zero():
    rng, h, w, b = _draw(3)
    y = rng.integers(0, V, N)
    keep = np.ones(N, bool)
    keep[:6] = False  # a whole block of rows
    keep[9] = False
    (lp_ref, ent_ref), grads_ref = ref_lpent(h, w, b, y, 1.0, keep)
    jh, jw, jb = _as(jnp.float32, h, w, b)

    def f(h, w, b):
        lp, ent = jaxent.linear_log_prob_and_entropy(
            h, w, jnp.asarray(y), bias=b, where=jnp.asarray(keep), block_size=BLOCK
        )
        return jnp.sum(lp) + jnp.sum(ent), (lp, ent)

    (_, (lp, ent)), grads = jax.value_and_grad(f, (0, 1, 2), has_aux=True)(jh, jw, jb)
    np.testing.assert_array_equal(np.asarray(lp)[~keep], 0)
    np.testing.assert_array_equal(np.asarray(ent)[~keep], 0)
    np.testing.assert_allclose(lp, lp_ref, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(ent, ent_ref, rtol=2e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(grads[0])[~keep], 0)
    for got, want in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_everything_masked_gives_zeros_and_zero_gradients():
    rng, h, w, b = _draw(4)
    y = rng.integers(0, V, N)

    def f(h, w):
        lp, ent = jaxent.linear_log_prob_and_entropy(
            h, w, jnp.asarray(y), where=jnp.zeros(N, bool), block_size=BLOCK
        )
        return jnp.sum(lp) + jnp.sum(ent)

    jh, jw = _as(jnp.float32, h, w)
    assert float(f(jh, jw)) == 0.0
    for g in jax.grad(f, (0, 1))(jh, jw):
        np.testing.assert_array_equal(g, 0)


def test_minus_inf_bias_columns_follow_zero_log_zero():
    rng, h, w, b = _draw(5)
    b[[0, 17, 40, 52]] = -np.inf  # in several blocks, including the ragged last one
    y = rng.integers(0, V, N)
    y[np.isin(y, [0, 17, 40, 52])] = 3
    y[0] = 40  # a label on a -inf logit: log_prob = -inf, finite gradient
    (lp_ref, ent_ref), _ = ref_lpent(h, w, np.where(np.isinf(b), -1e300, b), y)
    lp_ref[0] = -np.inf
    jh, jw, jb = _as(jnp.float32, h, w, b)
    lp, ent = jaxent.linear_log_prob_and_entropy(jh, jw, jnp.asarray(y), bias=jb, block_size=BLOCK)
    np.testing.assert_allclose(lp, lp_ref, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(ent, ent_ref, rtol=2e-5, atol=1e-5)
    g = jax.grad(
        lambda h, w, b: jnp.sum(
            jaxent.linear_log_prob_and_entropy(h, w, jnp.asarray(y), bias=b, block_size=BLOCK)[1]
        ),
        (0, 1, 2),
    )(jh, jw, jb)
    for x in g:
        assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(np.asarray(g[2])[[0, 17, 40, 52]], 0)


def test_out_of_range_label_makes_log_prob_nan_not_the_entropy():
    rng, h, w, b = _draw(6)
    y = rng.integers(0, V, N)
    y[2] = V + 5
    lp, ent = jaxent.linear_log_prob_and_entropy(
        *_as(jnp.float32, h, w), jnp.asarray(y), block_size=BLOCK
    )
    assert np.isnan(lp[2]) and np.all(np.isfinite(np.delete(np.asarray(lp), 2)))
    assert np.all(np.isfinite(ent))


def _exact_problem(seed):
    """h W exact in float32 (small integers times multiples of 1/8), so c + h W is too."""
    rng = np.random.default_rng(seed)
    h = rng.integers(-3, 4, size=(N, D)).astype(float)
    w = rng.integers(-16, 17, size=(D, V)) / 8.0
    return rng, h, w


def test_shift_of_the_logits_costs_no_accuracy():
    """A common shift c of every logit (a bias of c) changes nothing (issue 9, defect 2).

    The logits are exactly representable before and after the shift, so any
    error would be the function's own.
    """
    rng, h, w = _exact_problem(7)
    y = rng.integers(0, V, N)
    (lp_ref, ent_ref), _ = ref_lpent(h, w, None, y)
    for c in (1e4, -(2.0**16)):
        lp, ent = jaxent.linear_log_prob_and_entropy(
            *_as(jnp.float32, h, w),
            jnp.asarray(y),
            bias=jnp.full(V, c, jnp.float32),
            block_size=BLOCK,
        )
        np.testing.assert_allclose(ent, ent_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(lp, lp_ref, rtol=1e-5, atol=1e-5)


def test_bf16_inputs_are_computed_in_float32():
    rng, h, w, b = _draw(8)
    y = rng.integers(0, V, N)
    hb, wb = (jnp.asarray(x, jnp.bfloat16) for x in (h, w))
    h32, w32 = (np.asarray(x.astype(jnp.float32), np.float64) for x in (hb, wb))
    (lp_ref, ent_ref), grads_ref = ref_lpent(h32, w32, None, y)
    lp, ent = jaxent.linear_log_prob_and_entropy(hb, wb, jnp.asarray(y), block_size=BLOCK)
    assert lp.dtype == ent.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(lp, np.float64), lp_ref, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(ent, np.float64), ent_ref, rtol=1e-2, atol=2e-2)
    grads = jax.grad(
        lambda h, w: sum(
            jnp.sum(o.astype(jnp.float32))
            for o in jaxent.linear_log_prob_and_entropy(h, w, jnp.asarray(y), block_size=BLOCK)
        ),
        (0, 1),
    )(hb, wb)
    for got, want in zip(grads, grads_ref, strict=False):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=5e-2, atol=5e-2)


def test_leading_row_axes_are_kept():
    rng, h, w, b = _draw(9, n=12)
    y = rng.integers(0, V, 12)
    (lp_ref, _), _ = ref_lpent(h, w, None, y)
    lp, ent = jaxent.linear_log_prob_and_entropy(
        jnp.asarray(h.reshape(3, 4, D), jnp.float32),
        jnp.asarray(w, jnp.float32),
        jnp.asarray(y.reshape(3, 4)),
    )
    assert lp.shape == ent.shape == (3, 4)
    np.testing.assert_allclose(lp.reshape(-1), lp_ref, rtol=2e-5, atol=1e-5)


# ------------------------------------------------------------- KL and JS


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("temperature", [None, 2.0])
def test_kl_matches_numpy_with_gradients_to_all_six(dtype, temperature):
    rng, ha, wa, ba = _draw(10)
    _, hb, wb, bb = _draw(11, d=4)  # the student head may have another hidden size
    keep = rng.random(N) > 0.25
    kl_ref, grads_ref = ref_kl(ha, wa, ba, hb, wb, bb, temperature or 1.0, keep)
    args = _as(dtype, ha, wa, ba, hb, wb, bb)

    def f(ha, wa, ba, hb, wb, bb):
        kl = jaxent.linear_kl_divergence(
            ha,
            wa,
            hb,
            wb,
            p_bias=ba,
            q_bias=bb,
            temperature=temperature,
            where=jnp.asarray(keep),
            block_size=BLOCK,
        )
        return jnp.sum(kl), kl

    (_, kl), grads = jax.value_and_grad(f, argnums=tuple(range(6)), has_aux=True)(*args)
    np.testing.assert_allclose(kl, kl_ref, **_tol(dtype))
    for got, want in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(got, want, **_tol(dtype))


def test_kl_teacher_under_stop_gradient_trains_only_the_student():
    rng, ha, wa, _ = _draw(12)
    _, hb, wb, _ = _draw(13)
    _, grads_ref = ref_kl(ha, wa, None, hb, wb, None)
    args = _as(jnp.float32, ha, wa, hb, wb)

    def loss(hb, wb, ha, wa):
        teacher_h, teacher_w = jax.lax.stop_gradient(ha), jax.lax.stop_gradient(wa)
        return jnp.sum(jaxent.linear_kl_divergence(teacher_h, teacher_w, hb, wb, block_size=BLOCK))

    dhb, dwb = jax.grad(loss, (0, 1))(args[2], args[3], args[0], args[1])
    np.testing.assert_allclose(dhb, grads_ref[3], rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(dwb, grads_ref[4], rtol=2e-5, atol=1e-5)


def test_kl_of_identical_heads_is_zero_and_is_shift_invariant():
    rng, h, w = _exact_problem(14)
    _, h2, w2 = _exact_problem(15)
    jh, jw, jh2, jw2 = _as(jnp.float32, h, w, h2, w2)
    kl_ref, _ = ref_kl(h, w, None, h2, w2, None)
    for c in (0.0, 1e4, -(2.0**16)):
        shift = jnp.full(V, c, jnp.float32)
        same = jaxent.linear_kl_divergence(jh, jw, jh, jw, q_bias=shift, block_size=BLOCK)
        np.testing.assert_allclose(same, 0, atol=1e-6)
        kl = jaxent.linear_kl_divergence(jh, jw, jh2, jw2, p_bias=shift, block_size=BLOCK)
        np.testing.assert_allclose(kl, kl_ref, rtol=1e-5, atol=1e-5)


def test_kl_minus_inf_columns():
    rng, ha, wa, ba = _draw(15)
    _, hb, wb, bb = _draw(16)
    ba[[3, 50]] = -np.inf  # p = 0 there: nothing, whatever q is
    bb[[3, 20]] = -np.inf  # q = 0 where p > 0 (column 20): +inf
    args = _as(jnp.float32, ha, wa, ba, hb, wb, bb)
    kl = jaxent.linear_kl_divergence(
        args[0], args[1], args[3], args[4], p_bias=args[2], q_bias=args[5], block_size=BLOCK
    )
    assert np.all(np.isposinf(kl))
    bb[20] = 0.0
    args = _as(jnp.float32, ha, wa, ba, hb, wb, bb)
    kl_ref, _ = ref_kl(ha, wa, np.where(np.isinf(ba), -1e300, ba), hb, wb,
                       np.where(np.isinf(bb), -1e300, bb))  # fmt: skip
    kl = jaxent.linear_kl_divergence(
        args[0], args[1], args[3], args[4], p_bias=args[2], q_bias=args[5], block_size=BLOCK
    )
    np.testing.assert_allclose(kl, kl_ref, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize(
    "beta, normalized",
    [(0.5, False), (0.2, False), (0.3, True), (0.0, True), (1.0, True), (0.0, False), (1.0, False)],
)
def test_js_matches_numpy_and_its_endpoints(beta, normalized):
    rng, ha, wa, ba = _draw(17)
    _, hb, wb, bb = _draw(18)
    args = _as(jnp.float32, ha, wa, ba, hb, wb, bb)

    def f(ha, wa, ba, hb, wb, bb):
        js = jaxent.linear_js_divergence(
            ha, wa, hb, wb, beta=beta, normalized=normalized, p_bias=ba, q_bias=bb, block_size=BLOCK
        )
        return jnp.sum(js), js

    (_, js), grads = jax.value_and_grad(f, argnums=tuple(range(6)), has_aux=True)(*args)
    la = _log_softmax(_logits(ha, wa, ba, 1.0))
    lb = _log_softmax(_logits(hb, wb, bb, 1.0))
    if normalized and beta == 0.0:  # D(p || q)
        np.testing.assert_allclose(js, ref_kl_pq(la, lb), rtol=2e-5, atol=1e-5)
    elif normalized and beta == 1.0:  # D(q || p)
        np.testing.assert_allclose(js, ref_kl_pq(lb, la), rtol=2e-5, atol=1e-5)
    elif beta in (0.0, 1.0):
        np.testing.assert_array_equal(js, 0)
    else:
        js_ref, grads_ref = ref_js(ha, wa, ba, hb, wb, bb, beta, normalized)
        np.testing.assert_allclose(js, js_ref, rtol=2e-5, atol=1e-6)
        for got, want in zip(grads, grads_ref, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.x64
def test_js_float64_with_temperature_and_mask():
    rng, ha, wa, ba = _draw(19)
    _, hb, wb, bb = _draw(20, d=3)
    keep = rng.random(N) > 0.3
    js_ref, grads_ref = ref_js(ha, wa, ba, hb, wb, bb, 0.35, True, 1.5, keep)
    args = _as(jnp.float64, ha, wa, ba, hb, wb, bb)

    def f(ha, wa, ba, hb, wb, bb):
        js = jaxent.linear_js_divergence(
            ha, wa, hb, wb, beta=0.35, normalized=True, p_bias=ba, q_bias=bb,
            temperature=1.5, where=jnp.asarray(keep), block_size=BLOCK,
        )  # fmt: skip
        return jnp.sum(js), js

    (_, js), grads = jax.value_and_grad(f, argnums=tuple(range(6)), has_aux=True)(*args)
    np.testing.assert_allclose(js, js_ref, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_js_of_identical_heads_is_exactly_zero_with_zero_gradient():
    _, h, w, b = _draw(21)
    jh, jw = _as(jnp.float32, h, w)
    js, g = jax.value_and_grad(lambda w: jnp.sum(jaxent.linear_js_divergence(jh, w, jh, jw)))(jw)
    assert float(js) == 0.0
    np.testing.assert_array_equal(g, 0)


def test_nan_logit_gives_nan_rows():
    _, h, w, b = _draw(22)
    h[1, 0] = np.nan
    args = _as(jnp.float32, h, w)
    lp, ent = jaxent.linear_log_prob_and_entropy(*args, jnp.zeros(N, int), block_size=BLOCK)
    kl = jaxent.linear_kl_divergence(*args, *args, block_size=BLOCK)
    js = jaxent.linear_js_divergence(*args, *args, block_size=BLOCK)
    for out in (lp, ent, kl, js):
        assert np.isnan(out[1]) and np.all(np.isfinite(np.delete(np.asarray(out), 1)))


# ------------------------------------------------------------- temperature on CE


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_linear_cross_entropy_temperature_divides_the_logits(temperature):
    rng, h, w, b = _draw(23)
    y = rng.integers(0, V, N)
    z = _logits(h, w, b, temperature)
    ref = logsumexp(z, axis=1) - z[np.arange(N), y]
    got = jaxent.linear_cross_entropy(
        *_as(jnp.float32, h, w), jnp.asarray(y), bias=jnp.asarray(b, jnp.float32),
        temperature=temperature, block_size=BLOCK,
    )  # fmt: skip
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-5)


# ------------------------------------------------------------- errors


def _valid():
    _, h, w, _ = _draw(24)
    return _as(jnp.float32, h, w)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h, w[:-1], jnp.zeros(N, int)), ValueError, "weight"),
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h.astype(int), w, jnp.zeros(N, int)), TypeError, "hidden"),
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h, w, jnp.zeros(N)), TypeError, "labels"),
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h, w, jnp.zeros(N - 1, int)), ValueError, "labels"),
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h, w, jnp.zeros(N, int), temperature=0.0), ValueError, "temperature"),
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h, w, jnp.zeros(N, int), block_size=0), ValueError, "block_size"),
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h, w, jnp.zeros(N, int), block_size=2.5), TypeError, "block_size"),
        (lambda h, w: jaxent.linear_log_prob_and_entropy(h, w, jnp.zeros(N, int), bias=jnp.zeros(3)), ValueError, "bias"),
        (lambda h, w: jaxent.linear_kl_divergence(h, w, h[:-1], w), ValueError, "q_hidden"),
        (lambda h, w: jaxent.linear_kl_divergence(h, w, h, w[:, :-1]), ValueError, "q_weight"),
        (lambda h, w: jaxent.linear_kl_divergence(h, w, h, w, temperature=-1.0), ValueError, "temperature"),
        (lambda h, w: jaxent.linear_kl_divergence(h, w, h, w, p_bias=jnp.zeros(2)), ValueError, "p_bias"),
        (lambda h, w: jaxent.linear_js_divergence(h, w, h, w, beta=1.5), ValueError, "beta"),
        (lambda h, w: jaxent.linear_js_divergence(h, w, h, w, normalized=1), TypeError, "normalized"),
        (lambda h, w: jaxent.linear_cross_entropy(h, w, jnp.zeros(N, int), temperature=0.0), ValueError, "temperature"),
    ],
)  # fmt: skip
def test_trace_time_errors_name_the_argument(call, error, match):
    h, w = _valid()
    with pytest.raises(error, match=match):
        call(h, w)


# ------------------------------------------------------------- memory


def _temp_bytes(f, *shapes):
    return jax.jit(f).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kind", ["lpent", "kl", "js"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_compiled_memory_is_flat_in_v_and_holds_no_n_by_v_array(kind, dtype):
    n, d = 256, 64

    def f(h, w, y):
        if kind == "lpent":
            lp, ent = jaxent.linear_log_prob_and_entropy(h, w, y, block_size=512)
            return jnp.sum(lp.astype(jnp.float32)) + jnp.sum(ent.astype(jnp.float32))
        fn = jaxent.linear_kl_divergence if kind == "kl" else jaxent.linear_js_divergence
        teacher_h, teacher_w = jax.lax.stop_gradient(h * 0.5), jax.lax.stop_gradient(w)
        return jnp.sum(fn(teacher_h, teacher_w, h, w, block_size=512).astype(jnp.float32))

    g = jax.value_and_grad(f, (0, 1))
    temps = {}
    for v in (8192, 65536):
        shapes = (
            jax.ShapeDtypeStruct((n, d), dtype),
            jax.ShapeDtypeStruct((d, v), dtype),
            jax.ShapeDtypeStruct((n,), jnp.int32),
        )
        temps[v] = _temp_bytes(g, *shapes)
        hlo = jax.jit(g).lower(*shapes).compile().as_text()
        assert f"[{n},{v}]" not in hlo, f"an [N, V] array in the compiled {kind}"
    assert temps[65536] < 1.3 * temps[8192], temps
    assert temps[65536] < n * 65536 * 4 / 8, temps


@pytest.mark.parametrize("kind", ["kl", "js"])
def test_two_heads_everything_masked_gives_zeros_and_zero_gradients(kind):
    """No kept row: no block is visited (the loops run 0 times), outputs and gradients 0."""
    _, h, w, _ = _draw(25)
    _, h2, w2, _ = _draw(26)
    fn = jaxent.linear_kl_divergence if kind == "kl" else jaxent.linear_js_divergence
    args = _as(jnp.float32, h, w, h2, w2)

    def f(*a):
        return jnp.sum(fn(*a, where=jnp.zeros(N, bool), block_size=BLOCK))

    assert float(f(*args)) == 0.0
    for g in jax.grad(f, (0, 1, 2, 3))(*args):
        np.testing.assert_array_equal(g, 0)
