"""Property-based tests: the information-theory laws of the seeds, on generated inputs.

Shapes come from a fixed list (``KS``, with ``ROWS`` rows) so every jitted
function compiles once per shape; hypothesis draws the distribution family
(Dirichlet, near-one-hot, near-uniform, with zeros, one-hot, or raw elements
for small K) and a seed for the bulk values. Everything runs in float64
(``pytestmark = pytest.mark.x64``: ``tests/conftest.py`` enters
``jax.enable_x64(True)`` for each test); references are numpy/scipy.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special

import jaxent

KS = (1, 2, 3, 7, 64, 4096)
ROWS = 3
TOL = 1e-9
LOG2 = math.log(2.0)


pytestmark = pytest.mark.x64


def test_runs_under_x64():
    assert jnp.zeros(()).dtype == jnp.float64, "tests/conftest.py enables x64 for this module"


# --------------------------------------------------------------------------- strategies

DIST_STYLES = ("dirichlet", "near_one_hot", "near_uniform", "zeros", "one_hot", "elements")


def _make_dist(draw, k: int) -> np.ndarray:
    style = draw(st.sampled_from(DIST_STYLES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    note(f"K={k} style={style}")
    if style == "elements" and k <= 7:
        # XLA on CPU flushes subnormals to zero: a q_i < 2.2e-308 counts as 0.
        elems = st.floats(0, 1, allow_subnormal=False)
        x = draw(hnp.arrays(np.float64, (ROWS, k), elements=elems))
        x[:, 0] += x.sum(-1) == 0
    elif style == "dirichlet":
        x = rng.dirichlet(np.full(k, draw(st.sampled_from([0.05, 1.0, 20.0]))), size=ROWS)
    elif style == "near_one_hot":
        x = np.full((ROWS, k), 1e-12)
        x[np.arange(ROWS), rng.integers(0, k, ROWS)] = 1.0
    elif style == "near_uniform":
        x = 1 + 1e-6 * rng.random((ROWS, k))
    elif style == "zeros":
        x = rng.random((ROWS, k)) * (rng.random((ROWS, k)) < 0.5)
        x[np.arange(ROWS), rng.integers(0, k, ROWS)] += 0.5
    else:
        x = np.zeros((ROWS, k))
        x[np.arange(ROWS), rng.integers(0, k, ROWS)] = 1.0
    x = x / x.sum(-1, keepdims=True)
    # XLA on CPU flushes subnormals to zero (README, "Known limits"), also in the
    # intermediates of the references (p / 2): values below 1e-300 are made 0.
    return np.where(x < 1e-300, 0.0, x)


@st.composite
def distributions(draw, k: int | None = None) -> np.ndarray:
    return _make_dist(draw, draw(st.sampled_from(KS)) if k is None else k)


@st.composite
def dist_pairs(draw) -> tuple[np.ndarray, np.ndarray]:
    k = draw(st.sampled_from(KS))
    return _make_dist(draw, k), _make_dist(draw, k)


LOGIT_STYLES = ("normal", "tiny", "large", "huge", "neg_inf", "empty_row")


@st.composite
def logits(draw, k: int | None = None, finite: bool = False) -> np.ndarray:
    k = draw(st.sampled_from(KS)) if k is None else k
    styles = LOGIT_STYLES[:4] if finite else LOGIT_STYLES
    style = draw(st.sampled_from(styles))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    note(f"K={k} logits style={style}")
    scale = {"tiny": 1e-3, "large": 1e4, "huge": 1e300}.get(style, 3.0)
    z = rng.normal(size=(ROWS, k)) * scale
    if style == "huge":
        z = np.clip(z, -1e307, 1e307)
    if style in ("neg_inf", "empty_row"):
        z[rng.random((ROWS, k)) < 0.4] = -np.inf
        z[0, rng.integers(0, k)] = 0.0  # row 0 keeps a class
        if style == "empty_row":
            z[-1] = -np.inf
    return z


@st.composite
def logits_and_mask(draw) -> tuple[np.ndarray, np.ndarray]:
    z = draw(logits(finite=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random(z.shape) < draw(st.sampled_from([0.3, 0.7, 1.0]))
    mask[-1] = mask[-1] & draw(st.booleans())  # sometimes a fully masked row
    return z, mask


# --------------------------------------------------------------------------- references (numpy)


def np_entropy(p):
    return special.entr(p).sum(-1)


def np_kl(p, q):
    return special.rel_entr(p, q).sum(-1)


def np_ce(p, q):
    with np.errstate(divide="ignore"):
        return -np.where(p > 0, p * np.log(np.where(p > 0, q, 1)), 0).sum(-1)


def np_log_softmax(z):
    m = np.max(z, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = z - m - np.log(np.sum(np.exp(z - m), -1, keepdims=True))
    return np.where(np.isneginf(z), -np.inf, out)  # empty rows: all -inf


# --------------------------------------------------------------------------- jitted library calls

J = {
    name: jax.jit(getattr(jaxent, name))
    for name in (
        "entropy",
        "cross_entropy",
        "kl_divergence",
        "js_divergence",
        "softmax",
        "log_softmax",
        "logsumexp",
        "entropy_from_logits",
        "kl_divergence_from_logits",
        "js_divergence_from_logits",
        "softmax_cross_entropy",
        "softmax_cross_entropy_with_integer_labels",
    )
}


@functools.cache
def jgrad(name: str, argnums: int | tuple[int, ...] = 0):
    fn = getattr(jaxent, name)
    return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=argnums))


# --------------------------------------------------------------------------- laws


@given(dist_pairs())
def test_gibbs_inequality_and_decomposition(pq):
    """D(p||q) >= 0; D(p||p) = 0; D(p||q) = H(p, q) - H(p) >= 0; H(p, p) = H(p)."""
    p, q = pq
    d, h, hpq = J["kl_divergence"](p, q), J["entropy"](p), J["cross_entropy"](p, q)
    np.testing.assert_allclose(d, np_kl(p, q), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hpq, np_ce(p, q), rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(d) >= -TOL)
    assert np.all(np.asarray(hpq) >= np.asarray(h) - TOL)
    finite = np.isfinite(np.asarray(hpq))
    np.testing.assert_allclose(np.asarray(d)[finite], (hpq - h)[finite], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(J["kl_divergence"](p, p), 0, atol=TOL)
    np.testing.assert_allclose(J["cross_entropy"](p, p), h, rtol=1e-12, atol=1e-12)
    # equality only at p = q
    differ = np.abs(p - q).max(-1) > 1e-3
    assert np.all(np.asarray(d)[differ] > 0)


@given(distributions())
def test_entropy_bounds(p):
    """0 <= H(p) <= log K, equal to scipy.stats.entropy."""
    h = np.asarray(J["entropy"](p))
    np.testing.assert_allclose(h, np_entropy(p), rtol=1e-10, atol=1e-12)
    assert np.all(h >= -TOL) and np.all(h <= math.log(p.shape[-1]) + TOL)


@given(dist_pairs())
def test_kl_is_asymmetric_and_each_order_is_right(pq):
    p, q = pq
    np.testing.assert_allclose(J["kl_divergence"](q, p), np_kl(q, p), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(J["kl_divergence"](p, q), np_kl(p, q), rtol=1e-10, atol=1e-12)


def test_kl_asymmetry_example():
    p, q = np.array([0.9, 0.1]), np.array([0.5, 0.5])
    assert abs(float(jaxent.kl_divergence(p, q)) - float(jaxent.kl_divergence(q, p))) > 0.1


@given(dist_pairs(), st.sampled_from([0.5, 0.1, 0.9]))
def test_jensen_and_js(pq, beta):
    """JS = H(m) - beta H(p) - (1-beta) H(q) >= 0 (Jensen); symmetric, <= log 2 at 1/2."""
    p, q = pq
    js = np.asarray(J["js_divergence"](p, q, beta=beta))
    m = beta * p + (1 - beta) * q
    jensen_gap = np_entropy(m) - beta * np_entropy(p) - (1 - beta) * np_entropy(q)
    np.testing.assert_allclose(js, jensen_gap, rtol=1e-8, atol=1e-10)
    assert np.all(js >= 0), js  # exactly: sqrt(JS) is a distance
    if beta == 0.5:
        np.testing.assert_allclose(js, J["js_divergence"](q, p), rtol=1e-12, atol=1e-14)
        assert np.all(js <= LOG2 + TOL)


@given(logits(), st.floats(-1e3, 1e3))
def test_softmax_shift_invariance_and_normalisation(z, c):
    p = np.asarray(J["softmax"](z))
    np.testing.assert_allclose(J["softmax"](z + c), p, rtol=1e-9, atol=1e-12)
    nonempty = np.isfinite(z).any(-1)
    np.testing.assert_allclose(p.sum(-1)[nonempty], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(p[~nonempty], 0.0)
    assert not np.isnan(p).any()
    lp = np.asarray(J["log_softmax"](z))
    assert not np.isnan(lp).any()
    if np.abs(z[np.isfinite(z)]).max(initial=0) < 1e6:
        np.testing.assert_allclose(lp, np_log_softmax(z), rtol=1e-12, atol=1e-12)


@given(
    hnp.arrays(np.float64, (ROWS, 7), elements=st.integers(-64, 64).map(lambda i: i / 8)),
    st.sampled_from([2.0**m for m in (5, 10, 20, 30, 40)] + [-(2.0**m) for m in (5, 20, 40)]),
)
def test_shift_invariance(z, c):
    """f(z + c) = f(z) for every row function of the logits (z + c is exact here).

    Relative 1e-12, whatever c (issue 9, defect 2: entropy_from_logits lost
    digits as c grew); the divergences of a distribution with itself are exactly 0.
    """
    zc = z + c
    assert np.array_equal(zc - c, z)  # the shift itself is exact
    for name in ("entropy_from_logits", "log_softmax", "softmax"):
        a, b = np.asarray(J[name](z)), np.asarray(J[name](zc))
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13, err_msg=f"{name} c={c}")
    y = special.softmax(z[::-1], -1)
    a = np.asarray(J["softmax_cross_entropy"](z, y))
    np.testing.assert_allclose(J["softmax_cross_entropy"](zc, y), a, rtol=1e-12, err_msg=f"c={c}")
    for name in ("kl_divergence_from_logits", "js_divergence_from_logits"):
        a = np.asarray(J[name](z, z[::-1]))
        np.testing.assert_allclose(J[name](zc, z[::-1]), a, rtol=1e-12, atol=1e-15, err_msg=name)
        same = np.asarray(J[name](z, zc))  # the same distribution, other logits
        np.testing.assert_allclose(same, 0.0, atol=1e-15, err_msg=f"{name}(z, z + {c})")
        assert np.all(same >= 0), (name, same)
    gz = jgrad("entropy_from_logits")(z)
    np.testing.assert_allclose(jgrad("entropy_from_logits")(zc), gz, rtol=1e-11, atol=1e-14)


@given(dist_pairs())
def test_divergence_of_a_distribution_with_itself_is_zero(pq):
    """D(p||p) = JS(p, p) = 0 exactly (not -2e-16), from probabilities and from logits."""
    p, _ = pq
    for name in ("kl_divergence", "js_divergence"):
        np.testing.assert_array_equal(np.asarray(J[name](p, p)), 0.0, err_msg=name)
    with np.errstate(divide="ignore"):
        z = np.log(p)
    for name in ("kl_divergence_from_logits", "js_divergence_from_logits"):
        np.testing.assert_array_equal(np.asarray(J[name](z, z)), 0.0, err_msg=name)
    d = np.asarray(J["js_divergence"](p, p, beta=0.3))
    np.testing.assert_array_equal(d, 0.0)
    np.testing.assert_array_equal(np.sqrt(d), 0.0)  # the distance is finite


@given(logits(), distributions())
def test_softmax_ce_gradient_sums_to_zero(z, y):
    if z.shape != y.shape:
        y = _make_dist_like(z)
    g = np.asarray(jgrad("softmax_cross_entropy")(z, y))
    assert not np.isnan(g).any()
    scale = np.abs(g).max(initial=1.0)
    np.testing.assert_allclose(g.sum(-1)[np.isfinite(z).any(-1)], 0, atol=1e-12 * scale + 1e-12)


def _make_dist_like(z):
    rng = np.random.default_rng(0)
    y = rng.random(z.shape)
    return y / y.sum(-1, keepdims=True)


# --------------------------------------------------------------------------- closed form = autodiff


def plain_entropy(p):
    a = p > 0
    return -jnp.sum(jnp.where(a, p * jnp.log(jnp.where(a, p, 1)), 0), -1)


def plain_ce(p, q):
    # H is linear in p: dH/dp_i = -log q_i wherever q_i > 0, also at p_i = 0.
    a = (p > 0) | (q > 0)
    return -jnp.sum(jnp.where(a, p * jnp.log(jnp.where(a, q, 1)), 0), -1)


def plain_kl(p, q):
    a = p > 0
    lp, lq = jnp.log(jnp.where(a, p, 1)), jnp.log(jnp.where(a, q, 1))
    return jnp.sum(jnp.where(a, p * (lp - lq), 0), -1)


def plain_js(p, q):
    m = (p + q) / 2
    return (plain_kl(p, m) + plain_kl(q, m)) / 2


def plain_softmax_ce(z, y):
    return -jnp.sum(y * jax.nn.log_softmax(z), -1)


def plain_lse(z):
    m = jax.lax.stop_gradient(jnp.max(z, -1, keepdims=True))
    return jnp.log(jnp.sum(jnp.exp(z - m), -1)) + m[..., 0]


def plain_entropy_logits(z):
    return plain_entropy(jax.nn.softmax(z))


def plain_kl_logits(a, b):
    return plain_kl(jax.nn.softmax(a), jax.nn.softmax(b))


PLAIN = {
    "entropy": (plain_entropy, 1),
    "cross_entropy": (plain_ce, 2),
    "kl_divergence": (plain_kl, 2),
    "js_divergence": (plain_js, 2),
}
PLAIN_LOGITS = {
    "softmax_cross_entropy": (plain_softmax_ce, 2),
    "logsumexp": (plain_lse, 1),
    "entropy_from_logits": (plain_entropy_logits, 1),
    "kl_divergence_from_logits": (plain_kl_logits, 2),
}


@functools.cache
def plain_grad(fn, n):
    return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(n))))


@given(st.sampled_from(sorted(PLAIN)), dist_pairs())
def test_closed_form_gradients_equal_autodiff_probs(name, pq):
    """On the support of p with q > 0 the custom JVP equals autodiff of the definition."""
    p, q = pq
    q = np.where(p > 0, np.maximum(q, 1e-3), q)
    q = q / q.sum(-1, keepdims=True)
    plain, n = PLAIN[name]
    args = (p, q)[:n]
    got = jgrad(name, tuple(range(n)))(*args)
    want = plain_grad(plain, n)(*args)
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        ok = np.isfinite(w)
        np.testing.assert_allclose(np.asarray(g)[ok], w[ok], rtol=1e-7, atol=1e-9)
        assert not np.isnan(np.asarray(g)).any()


@given(st.sampled_from(sorted(PLAIN_LOGITS)), logits(finite=True), st.integers(0, 2**32 - 1))
def test_closed_form_gradients_equal_autodiff_logits(name, z, seed):
    if np.abs(z).max() > 1e6:
        z = z / np.abs(z).max() * 50  # autodiff of the plain definition overflows there
    rng = np.random.default_rng(seed)
    plain, n = PLAIN_LOGITS[name]
    if name == "softmax_cross_entropy":
        y = rng.random(z.shape)
        args = (z, y / y.sum(-1, keepdims=True))
    elif n == 2:
        args = (z, rng.normal(size=z.shape) * 2)
    else:
        args = (z,)
    got = jgrad(name, tuple(range(n)))(*args)
    want = plain_grad(plain, n)(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- transforms


@given(dist_pairs())
def test_jit_vmap_plain_agree(pq):
    p, q = pq
    for name in ("kl_divergence", "cross_entropy", "js_divergence"):
        fn = getattr(jaxent, name)
        plain = np.asarray(fn(p, q))
        np.testing.assert_allclose(J[name](p, q), plain, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(_vmapped(name)(p, q), plain, rtol=1e-12, atol=1e-14)


@functools.cache
def _vmapped(name):
    return jax.jit(jax.vmap(getattr(jaxent, name)))


@given(logits_and_mask())
def test_where_equals_dropping_masked_entries(zm):
    z, mask = zm
    lse = np.asarray(J["logsumexp"](z, where=mask))
    h = np.asarray(J["entropy_from_logits"](z, where=mask))
    sm = np.asarray(J["softmax"](z, where=mask))
    for r in range(z.shape[0]):
        kept = z[r][mask[r]]
        if kept.size == 0:
            assert lse[r] == -np.inf and h[r] == 0 and np.all(sm[r] == 0)
            continue
        np.testing.assert_allclose(lse[r], special.logsumexp(kept), rtol=1e-12)
        ref = special.softmax(kept)
        np.testing.assert_allclose(sm[r][mask[r]], ref, rtol=1e-10, atol=1e-300)
        assert np.all(sm[r][~mask[r]] == 0)
        np.testing.assert_allclose(h[r], np_entropy(ref), rtol=1e-9, atol=1e-12)
    g = np.asarray(_grad_lse_where(z, mask))
    assert not np.isnan(g).any() and np.all(g[~mask] == 0)


@jax.jit
def _grad_lse_where(z, mask):
    return jax.grad(lambda z: jnp.sum(jnp.where(mask.any(-1), jaxent.logsumexp(z, where=mask), 0)))(
        z
    )


@given(logits(), st.integers(0, 2**32 - 1))
def test_integer_labels_equal_one_hot(z, seed):
    k = z.shape[-1]
    labels = np.random.default_rng(seed).integers(0, k, z.shape[0])
    onehot = np.eye(k)[labels]
    a = np.asarray(J["softmax_cross_entropy_with_integer_labels"](z, labels))
    b = np.asarray(J["softmax_cross_entropy"](z, onehot))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    ga = np.asarray(jgrad("softmax_cross_entropy_with_integer_labels")(z, labels))
    gb = np.asarray(jgrad("softmax_cross_entropy")(z, onehot))
    np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-12)


@given(dist_pairs(), st.sampled_from([2, 10, math.e, 0.5, 7.5]))
def test_base_b_equals_nats_over_log_b(pq, b):
    p, q = pq
    lb = math.log(b)
    for name, args in (
        ("entropy", (p,)),
        ("cross_entropy", (p, q)),
        ("kl_divergence", (p, q)),
        ("js_divergence", (p, q)),
    ):
        nats = np.asarray(J[name](*args))
        np.testing.assert_allclose(J[name](*args, base=b), nats / lb, rtol=1e-12, atol=1e-15)
