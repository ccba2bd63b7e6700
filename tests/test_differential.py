"""Differential oracles (issue 9): every public function of the softmax family, the
information measures, the divergences and the cross-entropy losses against an
independent reference, in float32 (the user's default) and float64 (x64).

References are computed in numpy ``longdouble`` (80-bit on x86: 64-bit mantissa,
eps = 1.1e-19) from the *same* arrays jaxent receives (after rounding to the
tested dtype), with the definitions written out; ``test_references_agree_with_scipy``
checks them against scipy/numpy float64 first, so a wrong reference cannot pass.

The generators include what the earlier suites missed: a common shift of the
logits up to +-1e30, nearly equal distributions (relative differences down to
1e-7), identical inputs, zero and subnormal probabilities, K = 1, every integer
label dtype with more classes than it holds; K = 0 and N = 0 have their own tests
(the team rule: K = 0 behaves exactly like a row whose every class is masked).

Tolerance (the same rule for every function, both dtypes):

    |got - ref| <= RTOL(dtype, K) * scale + 4 * tiny(dtype)
    RTOL = ULPS * eps(dtype) * (K + 2),  ULPS = 4 (float32), 128 (float64)

``scale`` is the condition scale of the defining formula, the sum of the
magnitudes of its terms computed from exact inputs (for KL: sum |p_i log(p_i/q_i)|,
for entropy: H itself since every term is >= 0, for log_softmax: |z_i - max z| +
log K + 1, ...): the error bound of any algorithm that evaluates each term to a
few ulps and sums them; it does not grow with a common shift of the logits.
float32: RTOL = 4.8e-7 * (K + 2) (2.9e-6 at K = 4); float64: 2.8e-14 * (K + 2)
(XLA's float64 ``log1p`` on CPU is off by up to 120 ulp, see :data:`ULPS`).
The ``tiny`` term is underflow slack (XLA flushes subnormals to 0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import jensenshannon

import jaxent

LD = np.longdouble
X64 = pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
SHIFTS = [0.0, 30.0, -30.0, 1e4, -1e4, 1e6, -1e6, 1e9, -1e9, 1e30, -1e30]


def _dtype(x64: bool):
    return np.float64 if x64 else np.float32


#: Ulps allowed per term: XLA's CPU ``log``/``exp``/``log1p`` are within 1.5 ulp in
#: float32 but ``log1p`` is off by up to 120 ulp in float64 (measured on 2e5
#: uniform inputs against longdouble), which jaxent inherits.
ULPS = {np.dtype(np.float32): 4, np.dtype(np.float64): 128}


def rtol(dtype, k: int) -> float:
    dtype = np.dtype(dtype)
    return ULPS[dtype] * float(np.finfo(dtype).eps) * (k + 2)


def tiny(dtype) -> float:
    return 4 * float(np.finfo(dtype).tiny)


def assert_close(got, ref, scale, dtype, k, what=""):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, LD)
    scale = np.asarray(scale, LD)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    same_inf = np.isinf(ref) & (got.astype(LD) == ref)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(same_inf, LD(0), np.abs(got.astype(LD) - ref))
        bound = LD(rtol(dtype, k)) * np.where(np.isfinite(scale), scale, 0) + LD(tiny(dtype))
    bad = ~(err <= bound)
    if bad.any():
        i = np.argwhere(bad)[0]
        i = tuple(int(j) for j in i)
        raise AssertionError(
            f"{what}: at {i} got {got[i]!r}, reference {float(ref[i])!r}, error"
            f" {float(err[i]):.3g} > bound {float(bound[i]):.3g}"
            f" ({rtol(dtype, k):.2g} x scale {float(scale[i]):.3g}); dtype"
            f" {np.dtype(dtype).name}, K={k}"
        )


# --------------------------------------------------------------------------- references
#
# Each returns (value, scale) in longdouble, from arrays already rounded to the
# tested dtype. Masked (-inf) logits are allowed; a row of -inf only is K = 0.


def _lse(z):
    z = z.astype(LD)
    m = np.max(z, axis=-1, keepdims=True, initial=-np.inf)
    m0 = np.where(np.isfinite(m), m, LD(0))
    s = np.sum(np.exp(z - m0), axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return (m0 + np.log(s))[..., 0], m0, s


def ref_logsumexp(z):
    lse, m0, _ = _lse(z)
    zf = np.where(np.isfinite(z), np.abs(z), 0).astype(LD)
    return lse, np.max(zf, axis=-1, initial=LD(0)) + 1 + np.log(LD(max(z.shape[-1], 1)))


def ref_log_softmax(z):
    _, m0, s = _lse(z)
    with np.errstate(divide="ignore"):
        out = (z.astype(LD) - m0) - np.log(s)  # not z - lse: lse ~ 1e30 has no digits left
    d = np.where(np.isfinite(z), np.abs(z.astype(LD) - m0), 0)
    return out, d + np.log(LD(max(z.shape[-1], 1))) + 1


def ref_softmax(z):
    ls, sc = ref_log_softmax(z)
    p = np.exp(ls)
    return p, p * sc


def ref_entropy_from_logits(z):
    _, m0, s = _lse(z)
    with np.errstate(divide="ignore"):
        d = np.log(s) - (z.astype(LD) - m0)
    p = np.exp(-d)
    t = np.where(p > 0, p * np.where(p > 0, d, 0), 0)
    scale = np.sum(np.where(p > 0, p * (np.abs(z.astype(LD) - m0) + 1), 0), axis=-1)
    return np.sum(t, axis=-1), scale


def _xlogy(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, LD(0), x * np.log(np.where(x == 0, 1, y)))


def ref_entropy(p):
    p = p.astype(LD)
    h = -np.sum(_xlogy(p, p), axis=-1)
    return h, np.sum(np.abs(_xlogy(p, p)), axis=-1)


def ref_cross_entropy(p, q):
    p, q = p.astype(LD), q.astype(LD)
    t = -_xlogy(p, q)
    return np.sum(t, axis=-1), np.sum(np.abs(t), axis=-1)


def _log_ratio(a, b, diff=None):
    """log(a/b): log1p(diff/b) when a ~ b (``diff = a - b``, exact in longdouble), else log(a/b)."""
    diff = a - b if diff is None else diff
    r = a / b
    near = np.abs(r - 1) < 0.5
    return np.where(near, np.log1p(np.where(near, diff / b, 0)), np.log(r))


def _rel_entr(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(a == 0, LD(0), a * _log_ratio(a, np.where(a == 0, 1, b)))
    return np.where((a > 0) & (b == 0), LD(np.inf), t)


def ref_kl(p, q):
    t = _rel_entr(p.astype(LD), q.astype(LD))
    return np.sum(t, axis=-1), np.sum(np.abs(t), axis=-1)


def ref_js(p, q, beta=0.5):
    p, q = p.astype(LD), q.astype(LD)
    b = LD(beta)
    m = b * p + (1 - b) * q
    # log(p/m) = log1p((1 - b)(p - q)/m): exact differences, no rounding of m inside.
    lp = _log_ratio(p, m, (1 - b) * (p - q))  # p - m, without rounding m
    lq = _log_ratio(q, m, b * (q - p))
    tp = np.where(p == 0, LD(0), p * np.where(p == 0, 0, lp))
    tq = np.where(q == 0, LD(0), q * np.where(q == 0, 0, lq))
    t = b * tp + (1 - b) * tq
    return np.sum(t, axis=-1), np.sum(b * np.abs(tp) + (1 - b) * np.abs(tq), axis=-1)


def ref_softmax_ce(z, y):
    ls, sc = ref_log_softmax(z)
    y = y.astype(LD)
    t = np.where(y == 0, LD(0), -y * np.where(y == 0, 0, ls))
    return np.sum(t, axis=-1), np.sum(np.where(y == 0, 0, np.abs(y) * sc), axis=-1)


# --------------------------------------------------------------------------- strategies

N = 3


@st.composite
def logits_rows(draw, ks=(1, 4, 16)):
    """Logits ``[3, K]`` in [-40, 40] plus a common shift up to +-1e30, some -inf."""
    k = draw(st.sampled_from(ks))
    z = draw(
        hnp.arrays(
            np.float64,
            (N, k),
            elements=st.one_of(
                st.floats(-40, 40, allow_subnormal=False),
                st.sampled_from([0.0, 1.0, -1.0]),
            ),
        )
    )
    shift = draw(st.sampled_from(SHIFTS) | st.floats(-1e30, 1e30))
    z = z + shift
    if k > 1 and draw(st.booleans()):  # rule a class out in some rows (never all)
        cut = draw(hnp.arrays(np.bool_, (N, k)))
        cut[:, 0] = False
        z = np.where(cut, -np.inf, z)
    return z


@st.composite
def distributions(draw, ks=(1, 4, 16), zeros=True):
    """Rows of probabilities ``[3, K]`` with exact zeros and subnormal entries."""
    k = draw(st.sampled_from(ks))
    w = draw(
        hnp.arrays(
            np.float64,
            (N, k),
            elements=st.one_of(
                st.floats(1e-3, 1.0),
                st.sampled_from([0.0, 1e-40, 1e-310] if zeros else [1e-3]),
                st.floats(1e-30, 1e-3),
            ),
        )
    )
    w[:, 0] = np.maximum(w[:, 0], 0.5)  # a row has mass
    return w / w.sum(-1, keepdims=True)


@st.composite
def distribution_pairs(draw):
    """(p, q): independent, nearly equal (relative 1e-1 ... 1e-7), or identical."""
    p = draw(distributions(zeros=True))
    kind = draw(st.sampled_from(["near", "independent", "near", "identical"]))
    if kind == "identical":
        return p, p.copy(), kind
    if kind == "near":
        delta = draw(st.sampled_from([1e-1, 1e-3, 1e-5, 1e-7]))
        r = draw(hnp.arrays(np.float64, p.shape, elements=st.floats(-1, 1)))
        q = p * (1 + delta * r)
        return p, q / q.sum(-1, keepdims=True), kind
    q = draw(distributions(ks=(p.shape[-1],), zeros=True))
    return p, q, kind


def _cast(x, dtype):
    """The array jaxent receives, and the values XLA sees (the reference's input).

    XLA on CPU treats subnormal inputs as 0 (denormals-are-zero: ``jnp.log(1e-40)``
    is ``-inf`` in float32), so the reference sees them as 0 too.
    """
    xn = np.asarray(x).astype(dtype)
    seen = np.where(np.abs(xn) < np.finfo(dtype).tiny, dtype(0), xn)
    return jnp.asarray(xn), seen


@pytest.fixture(autouse=True)
def _quiet_numpy():
    """The references divide by 0 and take log 0 on purpose (warnings are errors)."""
    with np.errstate(all="ignore"):
        yield


# --------------------------------------------------------------------------- references are right


def test_references_agree_with_scipy():
    rng = np.random.default_rng(9)
    z = rng.normal(size=(4, 7)) * 5
    p = rng.dirichlet(np.ones(7), size=4)
    q = rng.dirichlet(np.ones(7), size=4)
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    np.testing.assert_allclose(f(ref_logsumexp(z)[0]), sps.logsumexp(z, axis=-1), rtol=1e-14)
    np.testing.assert_allclose(f(ref_softmax(z)[0]), sps.softmax(z, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(f(ref_log_softmax(z)[0]), sps.log_softmax(z, axis=-1), rtol=1e-13)
    sm = sps.softmax(z, axis=-1)
    np.testing.assert_allclose(
        f(ref_entropy_from_logits(z)[0]), scipy.stats.entropy(sm, axis=-1), rtol=1e-13
    )
    np.testing.assert_allclose(f(ref_entropy(p)[0]), scipy.stats.entropy(p, axis=-1), rtol=1e-14)
    np.testing.assert_allclose(f(ref_kl(p, q)[0]), sps.rel_entr(p, q).sum(-1), rtol=1e-13)
    np.testing.assert_allclose(f(ref_js(p, q)[0]), jensenshannon(p, q, axis=-1) ** 2, rtol=1e-12)
    np.testing.assert_allclose(f(ref_cross_entropy(p, q)[0]), -(p * np.log(q)).sum(-1), rtol=1e-14)
    np.testing.assert_allclose(
        f(ref_softmax_ce(z, p)[0]), -(p * sps.log_softmax(z, axis=-1)).sum(-1), rtol=1e-13
    )


# --------------------------------------------------------------------------- softmax family


@X64
@given(z=logits_rows())
def test_softmax_family_vs_reference(x64, z):
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        zj, zn = _cast(z, dt)
        k = zn.shape[-1]
        lse, sc = ref_logsumexp(zn)
        assert_close(jaxent.logsumexp(zj), lse, sc, dt, k, "logsumexp")
        ls, sc = ref_log_softmax(zn)
        assert_close(jaxent.log_softmax(zj), ls, sc, dt, k, "log_softmax")
        p, sc = ref_softmax(zn)
        assert_close(jaxent.softmax(zj), p, sc, dt, k, "softmax")
        h, sc = ref_entropy_from_logits(zn)
        assert_close(jaxent.entropy_from_logits(zj), h, sc, dt, k, "entropy_from_logits")


@X64
@given(p=distributions(ks=(4,)))
def test_elementwise_vs_reference(x64, p):
    """logit, self_information, binary_entropy on probabilities with 0, 1 and subnormals."""
    dt = _dtype(x64)
    p = np.concatenate([p, np.array([[0.0, 1.0, 0.5, 1e-40]])])
    with jax.enable_x64(x64):
        pj, pn = _cast(p, dt)
        pl = pn.astype(LD)
        with np.errstate(divide="ignore"):
            si = -np.log(pl)
            lg = np.log(pl) - np.log1p(-pl)
            be = -_xlogy(pl, pl) - np.where(pl == 1, LD(0), (1 - pl) * np.log1p(-pl))
        assert_close(jaxent.self_information(pj), si, np.abs(si), dt, 1, "self_information")
        assert_close(jaxent.logit(pj), lg, np.abs(lg) + 1, dt, 1, "logit")
        assert_close(jaxent.binary_entropy(pj), be, be, dt, 1, "binary_entropy")


# --------------------------------------------------------------------------- information measures, divergences


@X64
@given(pq=distribution_pairs())
def test_probability_measures_vs_reference(x64, pq):
    p, q, _ = pq
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        pj, pn = _cast(p, dt)
        qj, qn = _cast(q, dt)
        k = pn.shape[-1]
        h, sc = ref_entropy(pn)
        assert_close(jaxent.entropy(pj), h, sc, dt, k, "entropy")
        ce, sc = ref_cross_entropy(pn, qn)
        assert_close(jaxent.cross_entropy(pj, qj), ce, sc, dt, k, "cross_entropy")
        kl, sc = ref_kl(pn, qn)
        assert_close(jaxent.kl_divergence(pj, qj), kl, sc, dt, k, "kl_divergence")
        js, sc = ref_js(pn, qn)
        got = jaxent.js_divergence(pj, qj)
        assert_close(got, js, sc, dt, k, "js_divergence")
        assert np.all(np.asarray(got) >= 0), ("js_divergence < 0", np.asarray(got))
        js3, sc3 = ref_js(pn, qn, beta=0.25)
        assert_close(jaxent.js_divergence(pj, qj, beta=0.25), js3, sc3, dt, k, "js beta=0.25")


@X64
@given(z=logits_rows(ks=(4, 16)), kind=st.sampled_from(["identical", "near", "shifted", "other"]))
def test_divergences_from_logits_vs_reference(x64, z, kind):
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        pj, pn = _cast(z, dt)
        if kind == "identical":
            qn = pn.copy()
        elif kind == "near":  # a few ulps away
            qn = np.nextafter(np.nextafter(pn, np.inf), np.inf)
        elif kind == "shifted":  # the same distribution, other logits
            qn = (pn + dt(3.0)).astype(dt)
        else:
            qn = pn[::-1].copy()
        qj, qn = _cast(qn, dt)
        k = pn.shape[-1]
        p, _ = ref_softmax(pn)
        q, _ = ref_softmax(qn)
        lp, scp = ref_log_softmax(pn)
        lq, scq = ref_log_softmax(qn)
        # KL from logits: sum p (log p - log q), each log_softmax to its own scale
        with np.errstate(invalid="ignore"):
            t = np.where(p > 0, p * (lp - np.where(p > 0, lq, 0)), LD(0))
        kl = np.sum(t, -1)
        sc = np.sum(np.where(p > 0, p * (np.abs(lp - lq) + scp + scq), 0), -1)
        assert_close(jaxent.kl_divergence_from_logits(pj, qj), kl, sc, dt, k, "kl_from_logits")
        js, scj = ref_js(p, q)
        sc = scj + np.sum(np.where(p + q > 0, (p + q) * (scp + scq), 0), -1)
        got = jaxent.js_divergence_from_logits(pj, qj)
        assert_close(got, js, sc, dt, k, "js_from_logits")
        assert np.all(np.asarray(got) >= 0), ("js_from_logits < 0", np.asarray(got))
        if kind == "identical":
            np.testing.assert_array_equal(np.asarray(jaxent.kl_divergence_from_logits(pj, qj)), 0)
            np.testing.assert_array_equal(np.asarray(got), 0)


@X64
@pytest.mark.parametrize("delta", [1e-2, 1e-4, 1e-6, 1e-9])
def test_kl_and_js_of_nearly_equal_distributions(x64, delta):
    """scipy gh-20710's regime: p ~ q, where log p - log q loses every digit (defect 3)."""
    dt = _dtype(x64)
    if not x64 and delta < 1e-6:
        pytest.skip("below float32 resolution")
    rng = np.random.default_rng(20710)
    p = rng.dirichlet(np.ones(6), size=8)
    q = p * (1 + delta * rng.uniform(-1, 1, size=p.shape))
    q /= q.sum(-1, keepdims=True)
    with jax.enable_x64(x64):
        pj, pn = _cast(p, dt)
        qj, qn = _cast(q, dt)
        kl, sc = ref_kl(pn, qn)
        assert_close(jaxent.kl_divergence(pj, qj), kl, sc, dt, 6, f"kl delta={delta}")
        js, sc = ref_js(pn, qn)
        assert_close(jaxent.js_divergence(pj, qj), js, sc, dt, 6, f"js delta={delta}")


def _mp_kl_from_logits(zp, zq):
    """D(softmax zp || softmax zq) per row at 50 digits, from the exact inputs."""
    mpmath = pytest.importorskip("mpmath")
    out = []
    with mpmath.workdps(50):
        for a, b in zip(zp, zq, strict=True):
            a = [mpmath.mpf(float(x)) for x in a]
            b = [mpmath.mpf(float(x)) for x in b]
            la = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in a))
            lb = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in b))
            terms = (mpmath.exp(x - la) * ((x - la) - (y - lb)) for x, y in zip(a, b, strict=True))
            out.append(LD(str(mpmath.fsum(terms))))
    return np.array(out, LD)


@X64
@pytest.mark.parametrize("name", ["kl_divergence_from_logits", "js_divergence_from_logits"])
@pytest.mark.parametrize("delta", [1e-2, 1e-4, 1e-6, 1e-9])
@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_divergences_from_logits_of_nearly_equal_distributions(x64, name, delta, offset):
    """The same from logits: log_softmax(z_p) - log_softmax(z_q) must not cancel away.

    lse(z_p) - lse(z_q) = log1p(E_q[expm1(z_p - z_q)]) keeps the relative accuracy,
    so the bound's scale is that of the probabilities' formula.
    """
    dt = _dtype(x64)
    if not x64 and delta < 1e-6:
        pytest.skip("below float32 resolution")
    rng = np.random.default_rng(20710)
    p = rng.dirichlet(np.ones(6), size=8)
    q = p * (1 + delta * rng.uniform(-1, 1, size=p.shape))
    with jax.enable_x64(x64):
        zp, zpn = _cast(np.log(p), dt)
        zq, zqn = _cast(np.log(q) + offset, dt)  # a row offset: m_a - m_b is not small
        lp, lq = ref_log_softmax(zpn)[0], ref_log_softmax(zqn)[0]
        pl, ql = np.exp(lp), np.exp(lq)
        if name == "kl_divergence_from_logits":
            # The value from mpmath at 50 digits: sum p (lp - lq) in longdouble
            # cancels to ~1e-19 absolute, as large as D itself at delta = 1e-9.
            t = pl * (lp - lq)
            want, sc = _mp_kl_from_logits(zpn, zqn), np.sum(np.abs(t), -1)
        else:
            want, sc = ref_js(pl, ql)
        got = getattr(jaxent, name)(zp, zq)
        assert_close(got, want, sc, dt, 6, f"{name} delta={delta}")


# --------------------------------------------------------------------------- losses


@X64
@given(z=logits_rows(), data=st.data())
def test_cross_entropy_losses_vs_reference(x64, z, data):
    dt = _dtype(x64)
    k = z.shape[-1]
    labels = data.draw(hnp.arrays(np.int64, (N,), elements=st.integers(0, k - 1)))
    w = data.draw(distributions(ks=(k,)))
    with jax.enable_x64(x64):
        zj, zn = _cast(z, dt)
        yj, yn = _cast(w, dt)
        ce, sc = ref_softmax_ce(zn, yn)
        assert_close(jaxent.softmax_cross_entropy(zj, yj), ce, sc, dt, k, "softmax_ce")
        onehot = np.eye(k, dtype=dt)[labels]
        ce, sc = ref_softmax_ce(zn, onehot)
        got = jaxent.softmax_cross_entropy_with_integer_labels(zj, jnp.asarray(labels))
        assert_close(got, ce, sc, dt, k, "softmax_ce_with_integer_labels")
        eps = 0.1
        sm = (1 - eps) * onehot.astype(LD) + LD(eps) / k
        ce, sc = ref_softmax_ce(zn, sm)
        got = jaxent.label_smoothed_cross_entropy(zj, jnp.asarray(labels), eps)
        assert_close(got, ce, sc, dt, k, "label_smoothed_cross_entropy")


@X64
@given(
    z=hnp.arrays(np.float64, (8,), elements=st.floats(-100, 100) | st.sampled_from([0.0, 50.0])),
    y=hnp.arrays(np.float64, (8,), elements=st.floats(0, 1) | st.sampled_from([0.0, 1.0])),
)
def test_binary_losses_vs_reference(x64, z, y):
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        zj, zn = _cast(z, dt)
        yj, yn = _cast(y, dt)
        zl, yl = zn.astype(LD), yn.astype(LD)
        # softplus(x) = log1p(exp(x)), stable form
        sp = lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))  # noqa: E731
        t = yl * sp(-zl) + (1 - yl) * sp(zl)
        got = jaxent.sigmoid_binary_cross_entropy(zj, yj)
        assert_close(got, t, t, dt, 1, "sigmoid_binary_cross_entropy")
        pj, pn = _cast(1 / (1 + np.exp(-zl)), dt)
        pl = pn.astype(LD)
        with np.errstate(divide="ignore"):
            b = -_xlogy(yl, pl) - np.where(yl == 1, LD(0), (1 - yl) * np.log1p(-pl))
        got = jaxent.binary_cross_entropy(pj, yj)
        assert_close(got, b, b, dt, 1, "binary_cross_entropy")


# --------------------------------------------------------------------------- integer label dtypes


def _label_dtypes(x64):
    out = [np.int8, np.uint8, np.int16, np.uint16, np.int32]
    return out + ([np.int64] if x64 else [])


@X64
def test_every_integer_label_dtype_with_more_classes_than_it_holds(x64):
    """int8/uint8/int16 labels with K beyond the dtype's range must not wrap (defect 5)."""
    dt = _dtype(x64)
    rng = np.random.default_rng(5)
    with jax.enable_x64(x64):
        for ldt in _label_dtypes(x64):
            hi = int(np.iinfo(ldt).max)
            k = min(hi + 45, 70000)  # more classes than the dtype holds (K >= 172)
            top = min(hi, k - 1)
            labels = np.array([0, top, top // 2, 1], ldt)
            zn = rng.normal(size=(4, k)).astype(dt)
            ls, sc = ref_log_softmax(zn)
            rows = np.arange(4)
            want = -ls[rows, labels.astype(np.int64)]
            got = jaxent.softmax_cross_entropy_with_integer_labels(
                jnp.asarray(zn), jnp.asarray(labels)
            )
            assert_close(got, want, sc[rows, labels.astype(np.int64)], dt, k, f"ce {ldt}")
            eps = 0.1
            got = jaxent.smooth_labels(jnp.asarray(labels), eps, num_classes=k)
            want = np.full((4, k), eps / k)
            want[rows, labels.astype(np.int64)] += 1 - eps
            np.testing.assert_allclose(
                np.asarray(got, np.float64), want, rtol=rtol(dt, 1), atol=0, err_msg=f"{ldt}"
            )
            got = jaxent.label_smoothed_cross_entropy(jnp.asarray(zn), jnp.asarray(labels), eps)
            ce, sc2 = ref_softmax_ce(zn, want)
            assert_close(got, ce, sc2, dt, k, f"label_smoothed_cross_entropy {ldt}")


@X64
def test_signed_narrow_label_minus_one_is_out_of_range(x64):
    """-1 in an int8 label stays -1 (out of range: a NaN row), never class 255."""
    with jax.enable_x64(x64):
        z = jnp.zeros((2, 300), _dtype(x64))
        got = np.asarray(
            jaxent.softmax_cross_entropy_with_integer_labels(z, jnp.array([-1, 3], jnp.int8))
        )
        assert np.isnan(got[0]) and np.isclose(got[1], math.log(300), rtol=1e-6), got


# --------------------------------------------------------------------------- K = 0 and N = 0


def _k0_cases(dt):
    z = jnp.zeros((2, 0), dt)
    p = jnp.zeros((2, 0), dt)
    y = jnp.array([0, 0])
    return [
        ("logsumexp", lambda z: jaxent.logsumexp(z), z, -np.inf),
        ("entropy_from_logits", lambda z: jaxent.entropy_from_logits(z), z, 0.0),
        ("entropy", lambda p: jaxent.entropy(p), p, 0.0),
        ("cross_entropy", lambda p: jaxent.cross_entropy(p, p), p, 0.0),
        ("kl_divergence", lambda p: jaxent.kl_divergence(p, p), p, 0.0),
        ("js_divergence", lambda p: jaxent.js_divergence(p, p), p, 0.0),
        ("kl_divergence_from_logits", lambda z: jaxent.kl_divergence_from_logits(z, z), z, 0.0),
        ("js_divergence_from_logits", lambda z: jaxent.js_divergence_from_logits(z, z), z, 0.0),
        ("softmax_cross_entropy", lambda z: jaxent.softmax_cross_entropy(z, z), z, 0.0),
        (
            "softmax_cross_entropy_with_integer_labels",
            lambda z: jaxent.softmax_cross_entropy_with_integer_labels(
                z, y, where=jnp.array([False, False])
            ),
            z,
            0.0,
        ),
    ]


@X64
@pytest.mark.parametrize("i", range(10))
def test_empty_class_axis_is_a_fully_masked_row(x64, i):
    """K = 0: the value of a row whose every class is masked, gradient 0 (team rule)."""
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        name, f, x, want = _k0_cases(dt)[i]
        got = np.asarray(f(x))
        assert got.shape == (2,), (name, got.shape)
        np.testing.assert_array_equal(got, np.full(2, want), err_msg=name)
        if np.isfinite(want):
            g = jax.grad(lambda x: jnp.sum(f(x)))(x)
            assert g.shape == x.shape, name
        # and a fully masked row of K = 3 gives the same value
        xm = jnp.zeros((2, 3), dt)
        mask = jnp.zeros((2, 3), bool)
        if name in ("logsumexp", "entropy_from_logits", "entropy"):
            fn = getattr(jaxent, name)
            np.testing.assert_array_equal(np.asarray(fn(xm, where=mask)), got, err_msg=name)


@X64
def test_softmax_of_empty_class_axis_is_empty(x64):
    with jax.enable_x64(x64):
        z = jnp.zeros((2, 0), _dtype(x64))
        assert jaxent.softmax(z).shape == (2, 0)
        assert jaxent.log_softmax(z).shape == (2, 0)


@X64
def test_no_rows_gives_an_empty_result(x64):
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        z = jnp.zeros((0, 5), dt)
        p = jnp.full((0, 5), 0.2, dt)
        for name, out in [
            ("logsumexp", jaxent.logsumexp(z)),
            ("entropy_from_logits", jaxent.entropy_from_logits(z)),
            ("entropy", jaxent.entropy(p)),
            ("kl_divergence", jaxent.kl_divergence(p, p)),
            ("js_divergence", jaxent.js_divergence(p, p)),
            ("softmax_cross_entropy", jaxent.softmax_cross_entropy(z, p)),
            (
                "softmax_cross_entropy_with_integer_labels",
                jaxent.softmax_cross_entropy_with_integer_labels(z, jnp.zeros((0,), jnp.int32)),
            ),
        ]:
            assert out.shape == (0,), (name, out.shape)
            assert out.dtype == dt, (name, out.dtype)


# --------------------------------------------------------------------------- shift invariance, from the issue


@X64
@pytest.mark.parametrize("c", SHIFTS)
def test_entropy_from_logits_equal_logits_any_shift(x64, c):
    """11 equal logits give log 11 whatever their common value (defect 2)."""
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        z = jnp.full((11,), c, dt)
        got = float(jaxent.entropy_from_logits(z))
        assert abs(got - math.log(11)) <= rtol(dt, 11) * math.log(11), (c, got)


@X64
@pytest.mark.parametrize("c", [0.0, 30.0, 1e4, 1e6])
def test_entropy_from_logits_gradient_any_shift(x64, c):
    """dH/dz_i = -p_i (log p_i + H), the same at every shift c (defect 2)."""
    dt = _dtype(x64)
    with jax.enable_x64(x64):
        base = np.array([0.0, 1.0, -1.0])
        zn = (base + c).astype(dt)
        p, _ = ref_softmax(zn)
        h, _ = ref_entropy_from_logits(zn)
        want = -p * (np.log(p) + h)
        got = jax.grad(lambda z: jaxent.entropy_from_logits(z))(jnp.asarray(zn))
        d = np.abs(zn.astype(LD) - np.max(zn)) + 1
        assert_close(got, want, np.abs(want) + p * d, dt, 3, f"grad entropy c={c}")


# --------------------------------------------------------------------------- where broadcasting


@X64
def test_where_broadcasts_as_jax_nn_softmax(x64):
    """A mask with the input's rank broadcasts like ``jax.nn.softmax``'s ``where``
    (a ``[1, 1, T, T]`` causal mask on ``[B, H, T, T]`` scores); one rank less is
    a row mask."""
    dt = _dtype(x64)
    rng = np.random.default_rng(4)
    with jax.enable_x64(x64):
        z = jnp.asarray(rng.normal(size=(2, 3, 5, 5)).astype(dt))
        causal = jnp.asarray(np.tril(np.ones((5, 5), bool))[None, None])
        want = jax.nn.softmax(z, where=causal)
        got = jaxent.softmax(z, where=causal)
        np.testing.assert_allclose(got, want, rtol=rtol(dt, 5), atol=tiny(dt))
        want = jax.nn.log_softmax(z, where=causal)
        got = jaxent.log_softmax(z, where=causal)
        ok = np.broadcast_to(np.asarray(causal), z.shape)
        np.testing.assert_allclose(np.asarray(got)[ok], np.asarray(want)[ok], rtol=rtol(dt, 5))
        lse = jaxent.logsumexp(z, where=causal)
        ref = jax.scipy.special.logsumexp(jnp.where(causal, z, -jnp.inf), axis=-1)
        np.testing.assert_allclose(lse, ref, rtol=rtol(dt, 5))
        # one rank less: rows; False removes the row (0 for entropy and losses)
        rows = jnp.asarray(rng.random((2, 1, 5)) < 0.5)
        h = jaxent.entropy_from_logits(z, where=rows)
        h_all = jaxent.entropy_from_logits(z)
        np.testing.assert_array_equal(
            np.asarray(h), np.where(np.broadcast_to(rows, h.shape), np.asarray(h_all), 0)
        )
