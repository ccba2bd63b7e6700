"""Issue 9/10/12 regressions for the softmax kernel, entropy, KL, JS and total variation.

Every expected value comes from an independent float64 reference (numpy, scipy,
mpmath values quoted from scipy's own tests), never from jaxent. Inputs are
built explicitly in float32, or inside ``jax.enable_x64(True)`` for float64
checks, so the module passes whether x64 is globally on or off.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
from _refs import compiled_programs
from jax.test_util import check_grads
from scipy.spatial.distance import jensenshannon

import jaxent

F32 = np.float32


def _softmax64(z, axis=-1):
    return sps.softmax(np.asarray(z, np.float64), axis=axis)


def _ref_entropy(z):
    return -np.sum(sps.xlogy(_softmax64(z), _softmax64(z)), axis=-1)


def _ref_entropy_grad(z):
    p = _softmax64(z)
    logp = sps.log_softmax(np.asarray(z, np.float64), axis=-1)
    h = -np.sum(p * logp, axis=-1, keepdims=True)
    return -p * (logp + h)


def _rel_entr_sum(p, q):
    return np.sum(sps.rel_entr(p, q), axis=-1)


def _ref_js(p, q, beta):
    m = beta * p + (1 - beta) * q
    return beta * _rel_entr_sum(p, m) + (1 - beta) * _rel_entr_sum(q, m)


# --------------------------------------------------------------------------- defect 2: shift


class TestEntropyShiftInvariance:
    @pytest.mark.parametrize("c", [1e9, -1e9, 3e38, -3e38])
    def test_equal_logits_any_shift_is_log_k(self, c):
        z = np.full((11,), c, F32)
        out = jaxent.entropy_from_logits(z)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(float(out), np.log(11.0), rtol=2e-7)

    def test_gradient_at_large_shift(self):
        z = np.array([1e6, 1e6 + 1, 1e6 - 1], F32)  # exactly representable in float32
        g = jax.grad(jaxent.entropy_from_logits)(z)
        np.testing.assert_allclose(g, _ref_entropy_grad(z), rtol=1e-6, atol=1e-7)

    @pytest.mark.parametrize("c", [0.0, 30.0, 1e4, 1e6, -1e6, 1e30, -1e30])
    def test_value_and_gradient_do_not_depend_on_the_shift(self, c):
        rng = np.random.default_rng(90)
        base = rng.normal(scale=2.0, size=(4, 37))
        z = (base + c).astype(F32)
        # The reference takes the float32 logits as given (their rounding is the input).
        z64 = np.asarray(z, np.float64)
        out = jaxent.entropy_from_logits(z)
        np.testing.assert_allclose(out, _ref_entropy(z64), rtol=2e-6)
        g = jax.grad(lambda x: jnp.sum(jaxent.entropy_from_logits(x)))(z)
        np.testing.assert_allclose(g, _ref_entropy_grad(z64), rtol=1e-4, atol=2e-6)

    def test_float64_shift(self):
        with jax.enable_x64(True):
            rng = np.random.default_rng(91)
            z = rng.normal(size=(3, 9)) + 1e12
            np.testing.assert_allclose(jaxent.entropy_from_logits(z), _ref_entropy(z), rtol=1e-12)


# --------------------------------------------------------------------------- defect 1: JS >= 0


class TestJensenShannonNonNegative:
    def test_identical_inputs_give_exactly_zero(self):
        rng = np.random.default_rng(10)
        with jax.enable_x64(True):
            p = rng.dirichlet(np.ones(7), size=200)
            p[:, 0] = 0.0
            p /= p.sum(-1, keepdims=True)
            out = np.asarray(jaxent.js_divergence(p, p))
            assert np.all(out == 0.0)
            np.testing.assert_array_equal(jensenshannon(p, p, axis=-1), 0.0)
            uni = np.full((3,), 1 / 3)
            assert float(jaxent.js_divergence(uni, uni)) == 0.0
            z = rng.normal(size=(200, 7))
            assert np.all(np.asarray(jaxent.js_divergence_from_logits(z, z)) == 0.0)
        p32 = rng.dirichlet(np.ones(7), size=200).astype(F32)
        assert np.all(np.asarray(jaxent.js_divergence(p32, p32)) == 0.0)
        z32 = rng.normal(size=(200, 7)).astype(F32)
        assert np.all(np.asarray(jaxent.js_divergence_from_logits(z32, z32)) == 0.0)

    @pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
    def test_never_negative_on_random_rows(self, beta):
        rng = np.random.default_rng(11)
        p = rng.dirichlet(np.ones(9), size=500).astype(F32)
        q = (p * (1 + 1e-4 * rng.normal(size=p.shape))).astype(F32)
        assert np.all(np.asarray(jaxent.js_divergence(p, q, beta=beta)) >= 0)
        a = rng.normal(size=(500, 9)).astype(F32)
        b = (a + 1e-4 * rng.normal(size=a.shape)).astype(F32)
        assert np.all(np.asarray(jaxent.js_divergence_from_logits(a, b, beta=beta)) >= 0)

    def test_sqrt_is_scipy_distance_with_finite_gradient(self):
        rng = np.random.default_rng(12)
        with jax.enable_x64(True):
            p = rng.dirichlet(np.ones(6), size=5)
            q = rng.dirichlet(np.ones(6), size=5)
            dist = jnp.sqrt(jaxent.js_divergence(p, q))
            np.testing.assert_allclose(dist, jensenshannon(p, q, axis=-1), rtol=1e-12)
            g = jax.grad(lambda a, b: jnp.sum(jnp.sqrt(jaxent.js_divergence(a, b))))(p, q)
            assert np.all(np.isfinite(g))
            z, w = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
            gz = jax.grad(lambda a: jnp.sum(jnp.sqrt(jaxent.js_divergence_from_logits(a, w))))(z)
            assert np.all(np.isfinite(gz))


# --------------------------------------------------------------------------- defect 3: p ~ q


class TestNearlyEqualDistributions:
    # scipy's tests for gh-20710 (x, y, x log(x/y) from mpmath at 30 digits).
    GH20710 = [
        (0.9456657713430001, 0.9456657713430094, -9.325873406851269e-15),
        (0.48066098564791515, 0.48066098564794774, -3.258504577274724e-14),
        (0.786048657854401, 0.7860486578542367, 1.6431300764454033e-13),
        # (4.0, 2.22e-308) is left out: 2.22e-308 is subnormal, which XLA on CPU
        # flushes to 0 (README, known limits).
        (1e-200, 1e200, -9.210340371976183e-198),
    ]

    def test_gh20710_terms(self):
        with jax.enable_x64(True):
            x = np.array([[c[0]] for c in self.GH20710])
            y = np.array([[c[1]] for c in self.GH20710])
            expected = np.array([c[2] for c in self.GH20710])
            np.testing.assert_allclose(jaxent.kl_divergence(x, y), expected, rtol=1e-12)
            np.testing.assert_allclose(_rel_entr_sum(x, y), expected, rtol=1e-12)

    def test_kl_matches_rel_entr_when_p_close_to_q(self):
        rng = np.random.default_rng(30)
        with jax.enable_x64(True):
            q = rng.dirichlet(np.ones(5), size=50)
            for eps in (1e-4, 1e-7):
                # A perturbation that keeps p normalised: sum of the terms has
                # no cancellation beyond the reference's own.
                p = q * np.exp(eps * rng.normal(size=q.shape))
                p /= p.sum(-1, keepdims=True)
                np.testing.assert_allclose(
                    jaxent.kl_divergence(p, q), _rel_entr_sum(p, q), rtol=1e-8
                )

    def test_js_near_equal_against_mpmath(self):
        mpmath = pytest.importorskip("mpmath")
        mpmath.mp.dps = 40
        rng = np.random.default_rng(31)
        with jax.enable_x64(True):
            p = rng.dirichlet(np.ones(4), size=3)
            q = p * (1 + 1e-9 * rng.normal(size=p.shape))
            expected = []
            for pr, qr in zip(p, q, strict=True):
                tot = mpmath.mpf(0)
                for a, b in zip(pr, qr, strict=True):
                    a, b = mpmath.mpf(a), mpmath.mpf(b)
                    m = (a + b) / 2
                    tot += (a * mpmath.log(a / m) + b * mpmath.log(b / m)) / 2
                expected.append(float(tot))
            np.testing.assert_allclose(jaxent.js_divergence(p, q), expected, rtol=1e-10)


# --------------------------------------------------------------------------- defect 4: K=0, N=0


class TestEmptyAxes:
    def test_empty_class_axis_is_a_fully_masked_row(self):
        z = np.zeros((3, 0), F32)
        p = np.zeros((3, 0), F32)
        np.testing.assert_array_equal(jaxent.logsumexp(z), np.full(3, -np.inf))
        assert jaxent.softmax(z).shape == (3, 0)
        assert jaxent.log_softmax(z).shape == (3, 0)
        for fn in (
            jaxent.entropy_from_logits,
            lambda x: jaxent.kl_divergence_from_logits(x, x),
            lambda x: jaxent.js_divergence_from_logits(x, x),
            lambda x: jaxent.total_variation_from_logits(x, x),
        ):
            out = fn(z)
            np.testing.assert_array_equal(out, np.zeros(3))
            g = jax.grad(lambda x, fn=fn: jnp.sum(fn(x)))(z)
            assert g.shape == (3, 0)
        for fn in (
            jaxent.entropy,
            lambda x: jaxent.cross_entropy(x, x),
            lambda x: jaxent.kl_divergence(x, x),
            lambda x: jaxent.js_divergence(x, x),
            lambda x: jaxent.total_variation(x, x),
        ):
            np.testing.assert_array_equal(fn(p), np.zeros(3))

    def test_zero_rows_give_an_empty_result(self):
        z = np.zeros((0, 5), F32)
        for fn in (
            jaxent.logsumexp,
            jaxent.entropy_from_logits,
            lambda x: jaxent.kl_divergence_from_logits(x, x),
            lambda x: jaxent.js_divergence_from_logits(x, x),
            lambda x: jaxent.total_variation_from_logits(x, x),
            jaxent.entropy,
            lambda x: jaxent.kl_divergence(x, x),
            lambda x: jaxent.js_divergence(x, x),
        ):
            assert fn(z).shape == (0,)
        assert jaxent.softmax(z).shape == (0, 5)


# --------------------------------------------------------------------------- defect 8: Gaussian


def test_gaussian_kl_point_mass_q_is_plus_inf():
    mu = np.zeros(2, F32)
    out = jaxent.kl_divergence_diag_gaussian(mu, np.ones(2, F32), mu, np.array([1, 0], F32))
    assert float(out) == np.inf
    # Same point mass on both sides: that dimension contributes 0.
    same = jaxent.kl_divergence_diag_gaussian(mu, np.array([1, 0], F32), mu, np.array([1, 0], F32))
    assert float(same) == 0.0
    g = jax.grad(
        lambda m: jaxent.kl_divergence_diag_gaussian(m, np.ones(2, F32), mu, np.array([1, 0], F32))
    )(mu)
    assert not np.any(np.isnan(g))


# --------------------------------------------------------------------------- NaN is never 0


class TestNanAndInfLogits:
    def test_nan_in_a_kept_logit_gives_nan(self):
        a = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], F32)
        bad = a.copy()
        bad[0, 1] = np.nan
        for fn in (
            lambda x, y: jaxent.kl_divergence_from_logits(x, y),
            lambda x, y: jaxent.kl_divergence_from_logits(y, x),
            lambda x, y: jaxent.js_divergence_from_logits(x, y),
            lambda x, y: jaxent.entropy_from_logits(x),
        ):
            out = np.asarray(fn(bad, a))
            assert np.isnan(out[0]) and np.isfinite(out[1])

    def test_plus_inf_logit_gives_nan(self):
        a = np.array([[0.0, np.inf, 2.0]], F32)
        b = np.zeros((1, 3), F32)
        assert np.isnan(jaxent.entropy_from_logits(a)[0])
        assert np.isnan(jaxent.kl_divergence_from_logits(a, b)[0])

    def test_nan_in_masked_entry_is_ignored(self):
        a = np.array([[0.0, np.nan, 2.0]], F32)
        b = np.zeros((1, 3), F32)
        where = np.array([[True, False, True]])
        ref = _rel_entr_sum(_softmax64(a[:, [0, 2]]), _softmax64(b[:, [0, 2]]))
        np.testing.assert_allclose(
            jaxent.kl_divergence_from_logits(a, b, where=where), ref, rtol=1e-6
        )


# --------------------------------------------------------------------------- KL from logits


class TestKLFromLogits:
    def test_values_and_both_gradients_float64(self):
        rng = np.random.default_rng(40)
        with jax.enable_x64(True):
            a, b = rng.normal(size=(4, 9)) * 3, rng.normal(size=(4, 9)) * 3
            a[0, 2] = -np.inf
            p, q = _softmax64(a), _softmax64(b)
            np.testing.assert_allclose(
                jaxent.kl_divergence_from_logits(a, b), _rel_entr_sum(p, q), rtol=1e-12
            )
            gb = jax.grad(lambda y: jnp.sum(jaxent.kl_divergence_from_logits(a, y)))(b)
            np.testing.assert_allclose(gb, q - p, atol=1e-14)
            ga = jax.grad(lambda x: jnp.sum(jaxent.kl_divergence_from_logits(x, b)))(a)
            d = _rel_entr_sum(p, q)[:, None]
            logr = np.where(p > 0, sps.log_softmax(a, -1) - sps.log_softmax(b, -1), 0)
            np.testing.assert_allclose(ga, p * (logr - d), atol=1e-13)

    def test_shift_invariance_float32(self):
        rng = np.random.default_rng(41)
        a, b = rng.normal(size=(3, 20)), rng.normal(size=(3, 20))
        ref = _rel_entr_sum(_softmax64(a.astype(F32)), _softmax64(b.astype(F32)))
        for c in (0.0, 1e4, -1e6):
            out = jaxent.kl_divergence_from_logits((a + c).astype(F32), (b - c).astype(F32))
            ref_c = _rel_entr_sum(_softmax64((a + c).astype(F32)), _softmax64((b - c).astype(F32)))
            np.testing.assert_allclose(out, ref_c, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            jaxent.kl_divergence_from_logits(a.astype(F32), b.astype(F32)), ref, rtol=1e-5
        )

    def test_fully_masked_p_row_is_zero(self):
        a = np.array([[-np.inf, -np.inf], [0.0, 1.0]], F32)
        b = np.zeros((2, 2), F32)
        out = np.asarray(jaxent.kl_divergence_from_logits(a, b))
        assert out[0] == 0.0 and np.isfinite(out[1])
        g = jax.grad(lambda y: jnp.sum(jaxent.kl_divergence_from_logits(a, y)))(b)
        np.testing.assert_array_equal(np.asarray(g)[0], 0.0)


class TestFusedForwardSupport:
    """The select-free forwards (issue 10) keep the support convention and signs.

    KL from logits and JS (beta in [1/4, 3/4], unnormalised) have a forward
    without selects; ``-inf`` logits on one side, on both, and at whole rows
    must still give the float64 references (scipy), ``+inf`` where p > 0 = q.
    """

    A = np.array(
        [
            [0.0, -np.inf, 1.0, -2.0],  # q = 0 < p at class 0 (row 1): KL = +inf
            [-np.inf, 0.5, 1.0, -np.inf],  # p = 0 at 0 (term q), both -inf at 3
            [2.0, 2.0, 2.0, 2.0],
        ]
    )
    B = np.array(
        [
            [1.0, 0.0, 0.5, 3.0],
            [0.3, 0.5, -1.0, -np.inf],
            [0.0, 0.0, 0.0, 0.0],  # identical distribution, other logits: 0
        ]
    )

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_kl_support(self, dtype):
        b = self.B.copy()
        b[0, 0] = -np.inf
        with jax.enable_x64(dtype == np.float64):
            got = np.asarray(
                jaxent.kl_divergence_from_logits(self.A.astype(dtype), b.astype(dtype))
            )
        ref = _rel_entr_sum(_softmax64(self.A), _softmax64(b))
        assert got[0] == np.inf and ref[0] == np.inf
        np.testing.assert_allclose(got[1], ref[1], rtol=50 * np.finfo(dtype).eps)
        assert got[2] == 0.0

    @pytest.mark.parametrize("beta", [0.25, 0.5, 0.75])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_js_support(self, beta, dtype):
        with jax.enable_x64(dtype == np.float64):
            a, b = self.A.astype(dtype), self.B.astype(dtype)
            got = np.asarray(jaxent.js_divergence_from_logits(a, b, beta=beta))
            swapped = np.asarray(jaxent.js_divergence_from_logits(b, a, beta=1 - beta))
        ref = _ref_js(_softmax64(self.A), _softmax64(self.B), beta)
        # 200 ulps: the general (select) path is off by the same 85 ulps here (float64).
        np.testing.assert_allclose(got, ref, rtol=200 * np.finfo(dtype).eps)
        np.testing.assert_allclose(swapped, ref, rtol=200 * np.finfo(dtype).eps)
        assert got[2] == 0.0
        if beta == 0.5:
            d = jensenshannon(_softmax64(self.A), _softmax64(self.B), axis=-1)
            # scipy's distance is a square root: its square carries ~1e-14.
            np.testing.assert_allclose(got, d**2, rtol=max(200 * np.finfo(dtype).eps, 1e-12))

    def test_js_fused_and_general_paths_agree_near_p_equal_q(self):
        # beta = 0.5 (select-free) against a traced beta (the general path),
        # both against the float64 reference, on rows with p ~ q.
        rng = np.random.default_rng(43)
        a = rng.normal(size=(6, 50)) * 2
        b = a + 1e-3 * rng.normal(size=a.shape) + 0.7
        ref = _ref_js(_softmax64(a.astype(F32)), _softmax64(b.astype(F32)), 0.5)
        fused = jaxent.js_divergence_from_logits(a.astype(F32), b.astype(F32))
        general = jax.jit(lambda x, y, t: jaxent.js_divergence_from_logits(x, y, beta=t))(
            a.astype(F32), b.astype(F32), F32(0.5)
        )
        for got in (fused, general):
            np.testing.assert_allclose(got, ref, rtol=2e-3)

    def test_nan_row_stays_nan(self):
        a = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], F32)
        b = np.zeros((2, 3), F32)
        for fn in (jaxent.kl_divergence_from_logits, jaxent.js_divergence_from_logits):
            for x, y in ((a, b), (b, a)):
                out = np.asarray(fn(x, y))
                assert np.isnan(out[0]) and np.isfinite(out[1]), (fn.__name__, out)


# --------------------------------------------------------------------------- issue 12


class TestTemperature:
    def test_divides_every_logit_and_does_not_rescale(self):
        rng = np.random.default_rng(50)
        with jax.enable_x64(True):
            a, b = rng.normal(size=(3, 8)) * 4, rng.normal(size=(3, 8)) * 4
            t = 2.5
            pa, pb = _softmax64(a / t), _softmax64(b / t)
            np.testing.assert_allclose(
                jaxent.kl_divergence_from_logits(a, b, temperature=t),
                _rel_entr_sum(pa, pb),
                rtol=1e-12,
            )
            np.testing.assert_allclose(
                jaxent.js_divergence_from_logits(a, b, temperature=t),
                jensenshannon(pa, pb, axis=-1) ** 2,
                rtol=1e-12,
            )
            np.testing.assert_allclose(
                jaxent.entropy_from_logits(a, temperature=t), _ref_entropy(a / t), rtol=1e-12
            )
            np.testing.assert_allclose(
                jaxent.total_variation_from_logits(a, b, temperature=t),
                0.5 * np.abs(pa - pb).sum(-1),
                rtol=1e-12,
            )
            # Gradient in the student's logits: (q - p) / T.
            g = jax.grad(lambda y: jnp.sum(jaxent.kl_divergence_from_logits(a, y, temperature=t)))(
                b
            )
            np.testing.assert_allclose(g, (pb - pa) / t, atol=1e-14)

    def test_traced_temperature(self):
        a = np.array([[1.0, 2.0, 0.0]], F32)
        f = jax.jit(lambda t: jaxent.entropy_from_logits(a, temperature=t))
        np.testing.assert_allclose(f(jnp.float32(2.0)), _ref_entropy(a / 2.0), rtol=1e-6)

    @pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
    def test_non_positive_temperature_is_a_trace_time_error(self, bad):
        a = np.zeros((2, 3), F32)
        for fn in (
            lambda: jaxent.entropy_from_logits(a, temperature=bad),
            lambda: jaxent.kl_divergence_from_logits(a, a, temperature=bad),
            lambda: jaxent.js_divergence_from_logits(a, a, temperature=bad),
            lambda: jaxent.total_variation_from_logits(a, a, temperature=bad),
        ):
            with pytest.raises(ValueError, match="temperature"):
                fn()


class TestNormalizedJSD:
    """TRL's generalized_jsd_loss written out in numpy (p = teacher, q = student)."""

    @staticmethod
    def trl(p_teacher, q_student, beta):
        if beta == 0:
            return _rel_entr_sum(p_teacher, q_student)
        if beta == 1:
            return _rel_entr_sum(q_student, p_teacher)
        m = beta * p_teacher + (1 - beta) * q_student
        return beta * _rel_entr_sum(p_teacher, m) + (1 - beta) * _rel_entr_sum(q_student, m)

    @pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
    def test_matches_trl_and_endpoints(self, beta):
        rng = np.random.default_rng(60)
        with jax.enable_x64(True):
            a, b = rng.normal(size=(4, 7)) * 2, rng.normal(size=(4, 7)) * 2
            p, q = _softmax64(a), _softmax64(b)
            scale = 1.0 if beta in (0.0, 1.0) else beta * (1 - beta)
            expected = self.trl(p, q, beta) / scale
            np.testing.assert_allclose(
                jaxent.js_divergence(p, q, beta=beta, normalized=True), expected, rtol=1e-11
            )
            np.testing.assert_allclose(
                jaxent.js_divergence_from_logits(a, b, beta=beta, normalized=True),
                expected,
                rtol=1e-11,
            )
            unnorm = 0.0 if beta in (0.0, 1.0) else self.trl(p, q, beta)
            np.testing.assert_allclose(
                jaxent.js_divergence(p, q, beta=beta), unnorm, rtol=1e-11, atol=1e-300
            )

    def test_continuous_at_the_endpoints(self):
        rng = np.random.default_rng(61)
        with jax.enable_x64(True):
            a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
            p, q = _softmax64(a), _softmax64(b)
            near0 = jaxent.js_divergence_from_logits(a, b, beta=1e-7, normalized=True)
            near1 = jaxent.js_divergence(p, q, beta=1 - 1e-7, normalized=True)
            np.testing.assert_allclose(near0, _rel_entr_sum(p, q), rtol=1e-5)
            np.testing.assert_allclose(near1, _rel_entr_sum(q, p), rtol=1e-5)

    @pytest.mark.parametrize(("beta", "normalized"), [(0.0, True), (0.3, False), (1.0, True)])
    def test_gradients_jit_vmap(self, beta, normalized):
        rng = np.random.default_rng(62)
        with jax.enable_x64(True):
            a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))

            def f(x, y):
                return jaxent.js_divergence_from_logits(x, y, beta=beta, normalized=normalized)

            check_grads(f, (a, b), order=1, modes=["fwd", "rev"], eps=1e-6)
            p, q = _softmax64(a), _softmax64(b)

            def g(x, y):
                return jaxent.js_divergence(x, y, beta=beta, normalized=normalized)

            check_grads(g, (p, q), order=1, modes=["fwd", "rev"], eps=1e-6)
            np.testing.assert_allclose(jax.jit(f)(a, b), f(a, b), rtol=1e-13)
            np.testing.assert_allclose(jax.vmap(f)(a, b), f(a, b), rtol=1e-13)

    def test_beta_outside_unit_interval_is_rejected(self):
        p = np.full((3,), 1 / 3, F32)
        for bad in (-0.1, 1.1):
            with pytest.raises(ValueError, match="beta"):
                jaxent.js_divergence(p, p, beta=bad)
            with pytest.raises(ValueError, match="beta"):
                jaxent.js_divergence_from_logits(p, p, beta=bad, normalized=True)


class TestTotalVariation:
    def test_values_against_numpy(self):
        rng = np.random.default_rng(70)
        with jax.enable_x64(True):
            p = rng.dirichlet(np.ones(6), size=4)
            q = rng.dirichlet(np.ones(6), size=4)
            np.testing.assert_allclose(
                jaxent.total_variation(p, q), 0.5 * np.abs(p - q).sum(-1), rtol=1e-13
            )
            where = np.array([True, False, True, True, False, True])
            np.testing.assert_allclose(
                jaxent.total_variation(p, q, where=where[None, :]),
                0.5 * np.abs(p - q)[:, where].sum(-1),
                rtol=1e-13,
            )
        p32, q32 = p.astype(F32), q.astype(F32)
        out = jaxent.total_variation(p32, q32)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, 0.5 * np.abs(p32 - q32).sum(-1), rtol=1e-6)

    def test_closed_form_gradient_and_ties(self):
        with jax.enable_x64(True):
            p = np.array([0.5, 0.3, 0.2])
            q = np.array([0.2, 0.3, 0.5])
            gp, gq = jax.grad(jaxent.total_variation, argnums=(0, 1))(p, q)
            np.testing.assert_allclose(gp, [0.5, 0.0, -0.5])
            np.testing.assert_allclose(gq, [-0.5, 0.0, 0.5])
            tangent = np.array([0.1, -0.2, 0.1])
            _, jv = jax.jvp(lambda x: jaxent.total_variation(x, q), (p,), (tangent,))
            np.testing.assert_allclose(jv, 0.5 * np.sum(np.sign(p - q) * tangent))

    def test_from_logits_gradient_jit_vmap(self):
        rng = np.random.default_rng(71)
        with jax.enable_x64(True):
            a, b = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
            p, q = _softmax64(a), _softmax64(b)
            np.testing.assert_allclose(
                jaxent.total_variation_from_logits(a, b), 0.5 * np.abs(p - q).sum(-1), rtol=1e-13
            )
            g = jax.grad(lambda x: jnp.sum(jaxent.total_variation_from_logits(x, b)))(a)
            s = 0.5 * np.sign(p - q)
            np.testing.assert_allclose(g, p * (s - np.sum(p * s, -1, keepdims=True)), atol=1e-14)
            f = jaxent.total_variation_from_logits
            np.testing.assert_allclose(jax.jit(f)(a, b), f(a, b), rtol=1e-14)
            np.testing.assert_allclose(jax.vmap(f)(a, b), f(a, b), rtol=1e-14)
            # -inf logits: ruled-out classes, no NaN.
            a2 = a.copy()
            a2[:, 0] = -np.inf
            g2 = jax.grad(lambda x: jnp.sum(jaxent.total_variation_from_logits(x, b)))(a2)
            assert np.all(np.isfinite(g2))


def test_eager_calls_are_one_dispatch():
    """The public logits functions stage one compiled call (as ``jax.nn.log_softmax``)."""
    a = jnp.zeros((2, 3), jnp.float32)
    for fn in (
        lambda x: jaxent.entropy_from_logits(x),
        lambda x: jaxent.kl_divergence_from_logits(x, x, temperature=2.0),
        lambda x: jaxent.js_divergence_from_logits(x, x, beta=0.0, normalized=True),
        lambda x: jaxent.total_variation_from_logits(x, x),
    ):
        assert len(compiled_programs(fn, a)) == 1


@pytest.mark.parametrize(
    "beta, normalized", [(0.0, True), (1.0, True), (1e-3, True), (0.999, True)]
)
def test_js_near_its_kl_endpoints_keeps_relative_accuracy(beta, normalized):
    """log(m/p) = log1p(a expm1(d)) lost every digit at a ~ 1, d << 0 (p >> q):
    the normalised JS at beta = 0 was D(p||q) to only 6e-4 (found by issue 13's
    two-head tests). Reference: scipy in float64 on the same float32 logits."""
    rng = np.random.default_rng(17)
    a = (rng.normal(size=(16, 53)) * 3).astype(F32)
    b = (rng.normal(size=(16, 53)) * 3).astype(F32)
    p, q = _softmax64(a), _softmax64(b)
    m = beta * p + (1 - beta) * q
    ref = beta * _rel_entr_sum(p, m) + (1 - beta) * _rel_entr_sum(q, m)
    if beta == 0.0:
        ref = _rel_entr_sum(p, q)
    elif beta == 1.0:
        ref = _rel_entr_sum(q, p)
    else:
        ref = ref / (beta * (1 - beta))
    got = jaxent.js_divergence_from_logits(a, b, beta=beta, normalized=normalized)
    np.testing.assert_allclose(got, ref, rtol=2e-5)


def test_js_endpoints_unnormalised_are_exactly_zero():
    rng = np.random.default_rng(18)
    a, b = (rng.normal(size=(2, 8, 31)) * 4).astype(F32)
    for beta in (0.0, 1.0):
        np.testing.assert_array_equal(jaxent.js_divergence_from_logits(a, b, beta=beta), 0)
