"""Information measures and divergences against scipy in float64, seeds' worked numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import scipy.stats
from _refs import kl as ref_kl
from _refs import softmax as ref_softmax
from _refs import xlogy
from scipy.spatial.distance import jensenshannon

import jaxent


def dists(seed, shape=(5, 6), zeros=False):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(shape[-1], 0.7), size=shape[:-1])
    if zeros:
        p[..., 0] = 0.0
        p /= p.sum(-1, keepdims=True)
    return p


class TestAgainstScipy:
    @pytest.mark.parametrize("base", [None, 2, 10, 0.5])
    def test_entropy(self, base):
        p = dists(0, zeros=True)
        np.testing.assert_allclose(
            jaxent.entropy(p, base=base), scipy.stats.entropy(p, base=base, axis=-1), rtol=1e-12
        )

    def test_self_information_bits(self):
        p = np.array([0.5, 0.25, 1.0, 1 / 6])
        np.testing.assert_allclose(jaxent.self_information(p, base=2), -np.log2(p), rtol=1e-12)
        assert jaxent.self_information(0.0) == np.inf

    def test_cross_entropy(self):
        p, q = dists(1, zeros=True), dists(2)
        np.testing.assert_allclose(jaxent.cross_entropy(p, q), -np.sum(xlogy(p, q), -1), rtol=1e-12)

    def test_kl(self):
        p, q = dists(3, zeros=True), dists(4)
        np.testing.assert_allclose(jaxent.kl_divergence(p, q), ref_kl(p, q), rtol=1e-12)
        np.testing.assert_allclose(
            jaxent.kl_divergence(p, q, base=2),
            scipy.stats.entropy(p, q, base=2, axis=-1),
            rtol=1e-12,
        )

    def test_js(self):
        p, q = dists(5, zeros=True), dists(6)
        np.testing.assert_allclose(
            jaxent.js_divergence(p, q), jensenshannon(p, q, axis=-1) ** 2, rtol=1e-12
        )
        np.testing.assert_allclose(
            jaxent.js_divergence(p, q, base=2),
            jensenshannon(p, q, axis=-1, base=2) ** 2,
            rtol=1e-12,
        )

    @pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
    def test_generalised_js(self, beta):
        p, q = dists(7), dists(8, zeros=True)
        m = beta * p + (1 - beta) * q
        expected = beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)
        np.testing.assert_allclose(jaxent.js_divergence(p, q, beta=beta), expected, rtol=1e-12)
        with np.errstate(divide="ignore"):  # log 0 = -inf: a ruled-out class
            a, b = np.log(p), np.log(q)
        np.testing.assert_allclose(
            jaxent.js_divergence_from_logits(a, b, beta=beta), expected, rtol=1e-10
        )

    def test_from_logits(self):
        rng = np.random.default_rng(9)
        a, b = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
        p, q = sps.softmax(a, -1), sps.softmax(b, -1)
        np.testing.assert_allclose(
            jaxent.entropy_from_logits(a), scipy.stats.entropy(p, axis=-1), rtol=1e-12
        )
        np.testing.assert_allclose(jaxent.kl_divergence_from_logits(a, b), ref_kl(p, q), rtol=1e-12)
        np.testing.assert_allclose(
            jaxent.js_divergence_from_logits(a, b), jensenshannon(p, q, axis=-1) ** 2, rtol=1e-12
        )

    def test_binary_entropy(self):
        p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
        expected = scipy.stats.entropy(np.stack([p, 1 - p]), axis=0)
        np.testing.assert_allclose(jaxent.binary_entropy(p), expected, atol=1e-15)
        np.testing.assert_allclose(jaxent.binary_entropy(0.5, base=2), 1.0, rtol=1e-12)

    def test_float32_relative_1e6(self):
        p = dists(10).astype(np.float32)
        q = dists(11).astype(np.float32)
        p64, q64 = p.astype(np.float64), q.astype(np.float64)
        out = jaxent.kl_divergence(p, q)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, ref_kl(p64, q64), rtol=1e-5)
        np.testing.assert_allclose(jaxent.entropy(p), scipy.stats.entropy(p64, axis=-1), rtol=1e-6)


class TestGaussianAndEstimators:
    def test_gaussian_kl_matches_scipy_integral(self):
        rng = np.random.default_rng(12)
        mp, mq = rng.normal(size=3), rng.normal(size=3)
        sp, sq = rng.uniform(0.5, 2, size=3), rng.uniform(0.5, 2, size=3)
        expected = np.sum(np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5)
        np.testing.assert_allclose(
            jaxent.kl_divergence_diag_gaussian(mp, sp, mq, sq), expected, rtol=1e-12
        )
        # Independent numeric check of one coordinate by quadrature.
        x = np.linspace(mp[0] - 12 * sp[0], mp[0] + 12 * sp[0], 200001)
        dens_p = scipy.stats.norm.pdf(x, mp[0], sp[0])
        integrand = dens_p * (
            scipy.stats.norm.logpdf(x, mp[0], sp[0]) - scipy.stats.norm.logpdf(x, mq[0], sq[0])
        )
        kl0 = np.trapezoid(integrand, x)
        np.testing.assert_allclose(
            jaxent.kl_divergence_diag_gaussian(mp[:1], sp[:1], mq[:1], sq[:1]), kl0, rtol=1e-6
        )

    def test_kl_estimators_are_unbiased_or_nonnegative(self):
        rng = np.random.default_rng(13)
        # p = N(0, 1), q = N(0.3, 1): D(p||q) = 0.045.
        x = rng.normal(size=400_000)
        log_p = scipy.stats.norm.logpdf(x, 0, 1)
        log_q = scipy.stats.norm.logpdf(x, 0.3, 1)
        true = 0.3**2 / 2
        k1 = jaxent.kl_estimate(log_p, log_q, estimator="k1")
        k3 = jaxent.kl_estimate(log_p, log_q, estimator="k3")
        k2 = jaxent.kl_estimate(log_p, log_q, estimator="k2")
        np.testing.assert_allclose(np.mean(k1), true, rtol=0.05)
        np.testing.assert_allclose(np.mean(k3), true, rtol=0.05)
        np.testing.assert_allclose(np.mean(k2), true, rtol=0.1)
        assert np.all(np.asarray(k3) >= 0)
        log_r = log_q - log_p
        np.testing.assert_allclose(k3, np.expm1(log_r) - log_r, rtol=1e-10, atol=1e-16)


class TestSeeds:
    def test_seed004_kldivloss_batchmean(self):
        # nn.KLDivLoss(reduction="batchmean")(log(1/3,1/3,1/3), [9/25,12/25,4/25]) = 0.0853
        q = jnp.full((1, 3), 1 / 3, jnp.float32)
        p = jnp.array([[9 / 25, 12 / 25, 4 / 25]], jnp.float32)
        out = jnp.sum(jaxent.kl_divergence(p, q)) / p.shape[0]
        assert round(float(out), 4) == 0.0853

    def test_seed004_ce_minus_entropy_equals_kl_from_logits(self):
        inp = jnp.array([[-0.1, 0.2, -0.4, 0.3]], jnp.float32)  # q(x)
        tgt = jnp.array([[-0.7, 0.1, -0.1, 0.1]], jnp.float32)  # p(x)
        p = jaxent.softmax(tgt)
        h_pq = jaxent.softmax_cross_entropy(inp, p)
        h_p = jaxent.softmax_cross_entropy(tgt, p)
        assert round(float(h_pq[0]), 4) == 1.3832
        assert round(float(h_p[0]), 4) == 1.3443
        kl = jaxent.kl_divergence_from_logits(tgt, inp)
        np.testing.assert_allclose(kl, h_pq - h_p, rtol=1e-5)
        assert round(float(kl[0]), 4) == 0.0389
        # The seed's elementwise KLDivLoss(reduction='none') terms, summed.
        terms = [-0.0635, 0.0116, 0.1097, -0.0190]
        np.testing.assert_allclose(float(kl[0]), sum(terms), atol=2e-4)

    def test_seed000_gradient_is_p_minus_y(self):
        z = np.array([0.3286, 0.4247, 1.5101, -0.4628, -0.6365])
        y = np.array([1.0, 0, 0, 0, 0])
        g = jax.grad(lambda z: jaxent.softmax_cross_entropy(z, y))(z)
        np.testing.assert_allclose(g, sps.softmax(z) - y, rtol=1e-12)

    def test_seed004_ce_example(self):
        # nn.CrossEntropyLoss() on the seed's 3x5 input and labels [0, 2, 0] = 1.7296
        z = jnp.array(
            [
                [0.3286, 0.4247, 1.5101, -0.4628, -0.6365],
                [-0.1079, -0.6032, -1.1911, -0.1564, 0.9218],
                [1.5526, -0.2029, 0.7564, -2.0878, -1.1310],
            ],
            jnp.float32,
        )
        labels = jnp.array([0, 2, 0])
        loss = jaxent.softmax_cross_entropy_with_integer_labels(z, labels)
        assert round(float(jnp.mean(loss)), 4) == 1.7296
        onehot = jax.nn.one_hot(labels, 5)
        np.testing.assert_allclose(jaxent.softmax_cross_entropy(z, onehot), loss, rtol=1e-6)


class TestIdentities:
    def test_kl_is_ce_minus_entropy(self):
        p, q = dists(14, zeros=True), dists(15)
        np.testing.assert_allclose(
            jaxent.kl_divergence(p, q),
            jaxent.cross_entropy(p, q) - jaxent.entropy(p),
            atol=1e-13,
        )

    def test_where_equals_dropping_entries(self):
        p, q = dists(16), dists(17)
        keep = np.array([True, True, False, True, False, True])
        for fn, ref in (
            (jaxent.kl_divergence, lambda p, q: ref_kl(p, q)),
            (jaxent.cross_entropy, lambda p, q: -np.sum(xlogy(p, q), -1)),
        ):
            np.testing.assert_allclose(
                fn(p, q, where=keep[None, :]), ref(p[:, keep], q[:, keep]), rtol=1e-12
            )
        rows = np.array([True, False, True, True, False])
        out = jaxent.kl_divergence(p, q, where=rows)
        np.testing.assert_array_equal(out[~rows], 0)

    def test_logits_masks(self):
        rng = np.random.default_rng(18)
        a, b = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
        keep = np.array([True, False, True, True, True, False])
        pa, pb = ref_softmax(a[:, keep]), ref_softmax(b[:, keep])
        np.testing.assert_allclose(
            jaxent.kl_divergence_from_logits(a, b, where=keep[None]), ref_kl(pa, pb), rtol=1e-12
        )
        np.testing.assert_allclose(
            jaxent.entropy_from_logits(a, where=keep[None]),
            scipy.stats.entropy(pa, axis=-1),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            jaxent.js_divergence_from_logits(a, b, where=keep[None]),
            jensenshannon(pa, pb, axis=-1) ** 2,
            rtol=1e-10,
        )

    def test_jit_and_vmap(self):
        p, q = dists(19), dists(20)
        for fn in (jaxent.kl_divergence, jaxent.cross_entropy, jaxent.js_divergence):
            plain = fn(p, q)
            np.testing.assert_allclose(jax.jit(fn)(p, q), plain, rtol=1e-12)
            np.testing.assert_allclose(jax.vmap(fn)(p, q), plain, rtol=1e-12)
        np.testing.assert_allclose(jax.vmap(jaxent.entropy)(p), jaxent.entropy(p), rtol=1e-12)
        a = np.log(p)
        for fn in (jaxent.kl_divergence_from_logits, jaxent.js_divergence_from_logits):
            np.testing.assert_allclose(
                jax.jit(fn)(a, a[::-1]), jax.vmap(fn)(a, a[::-1]), rtol=1e-12
            )


class TestNumerics:
    def test_zero_probabilities_value_and_gradients(self):
        p = jnp.array([0.5, 0.0, 0.5])
        q = jnp.array([0.5, 0.0, 0.5])
        assert float(jaxent.kl_divergence(p, q)) == 0.0
        gp, gq = jax.grad(jaxent.kl_divergence, argnums=(0, 1))(p, q)
        np.testing.assert_allclose(gp, [1.0, 0.0, 1.0])
        np.testing.assert_allclose(gq, [-1.0, 0.0, -1.0])
        for fn in (
            jaxent.entropy,
            lambda p: jaxent.cross_entropy(p, q),
            lambda p: jaxent.js_divergence(p, q),
        ):
            g = jax.grad(fn)(p)
            assert np.all(np.isfinite(g)), g

    def test_support_mismatch_is_plus_inf_not_nan(self):
        p = jnp.array([0.5, 0.5, 0.0])
        q = jnp.array([1.0, 0.0, 0.0])
        assert float(jaxent.kl_divergence(p, q)) == np.inf
        assert float(jaxent.cross_entropy(p, q)) == np.inf
        assert np.isfinite(float(jaxent.js_divergence(p, q)))
        gq = jax.grad(jaxent.kl_divergence, argnums=1)(p, q)
        assert not np.any(np.isnan(gq))

    def test_logits_with_minus_inf(self):
        a = jnp.array([[0.0, -jnp.inf, 1.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
        b = jnp.array([[1.0, 2.0, -jnp.inf], [0.0, 0.0, 0.0]])
        kl = jaxent.kl_divergence_from_logits(a, b)
        assert float(kl[0]) == np.inf and float(kl[1]) == 0.0
        assert float(jaxent.kl_divergence_from_logits(b[:1], a[:1])[0]) == np.inf
        h = jaxent.entropy_from_logits(a)
        np.testing.assert_allclose(h[0], scipy.stats.entropy(sps.softmax([0.0, 1.0])), rtol=1e-12)
        assert float(h[1]) == 0.0
        for fn in (jaxent.kl_divergence_from_logits, jaxent.js_divergence_from_logits):
            ga, gb = jax.grad(lambda a, b, fn=fn: jnp.sum(fn(a, b)), argnums=(0, 1))(a, b)
            assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))
        g = jax.grad(lambda a: jnp.sum(jaxent.entropy_from_logits(a)))(a)
        assert np.all(np.isfinite(g))

    def test_kl_logits_gradient_in_q_is_q_minus_p(self):
        rng = np.random.default_rng(21)
        a, b = rng.normal(size=6), rng.normal(size=6)
        g = jax.grad(jaxent.kl_divergence_from_logits, argnums=1)(a, b)
        np.testing.assert_allclose(g, sps.softmax(b) - sps.softmax(a), atol=1e-14)

    @pytest.mark.parametrize("big", [1e4, 3e38])
    def test_huge_logits(self, big):
        a = jnp.array([[big, -big, 0.0]], jnp.float32)
        b = jnp.array([[0.0, big, -big]], jnp.float32)
        for fn in (jaxent.entropy_from_logits, lambda a: jaxent.js_divergence_from_logits(a, b)):
            v, g = jax.value_and_grad(lambda a, fn=fn: jnp.sum(fn(a)))(a)
            assert np.isfinite(v) and np.all(np.isfinite(g))
        kl = jaxent.kl_divergence_from_logits(b, a)
        assert np.isfinite(kl[0]) or kl[0] == np.inf

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_low_precision_32k_row(self, dtype):
        rng = np.random.default_rng(22)
        a = jnp.asarray(rng.normal(scale=3, size=(2, 32768)), dtype)
        b = jnp.asarray(rng.normal(scale=3, size=(2, 32768)), dtype)
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        p, q = sps.softmax(a64, -1), sps.softmax(b64, -1)
        for out, ref in (
            (jaxent.entropy_from_logits(a), scipy.stats.entropy(p, axis=-1)),
            (jaxent.kl_divergence_from_logits(a, b), ref_kl(p, q)),
            (jaxent.js_divergence_from_logits(a, b), jensenshannon(p, q, axis=-1) ** 2),
        ):
            assert out.dtype == dtype
            np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=1e-2)
