"""softmax, log_softmax, logsumexp, logit: values, masks, transforms, numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
from _refs import log_softmax as ref_log_softmax
from _refs import softmax as ref_softmax

import jaxent


def logits(seed, shape=(4, 7), scale=3.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


class TestValues:
    def test_softmax_matches_scipy_f64(self):
        z = logits(0)
        np.testing.assert_allclose(jaxent.softmax(z), sps.softmax(z, axis=-1), rtol=1e-12)

    def test_log_softmax_matches_scipy_f64(self):
        z = logits(1)
        np.testing.assert_allclose(jaxent.log_softmax(z), ref_log_softmax(z), rtol=1e-12)

    def test_logsumexp_matches_scipy_f64(self):
        z = logits(2)
        np.testing.assert_allclose(jaxent.logsumexp(z), sps.logsumexp(z, axis=-1), rtol=1e-12)
        out = jaxent.logsumexp(z, keepdims=True)
        assert out.shape == (4, 1)

    def test_float32_relative_1e6(self):
        z = logits(3).astype(np.float32)
        out = jaxent.softmax(z)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, sps.softmax(z.astype(np.float64), -1), rtol=1e-6)
        np.testing.assert_allclose(
            jaxent.logsumexp(z), sps.logsumexp(z.astype(np.float64), -1), rtol=1e-6
        )

    @pytest.mark.parametrize("axis", [0, 1, -2])
    def test_axis_equals_moveaxis(self, axis):
        z = logits(4, (5, 6, 3))
        for fn in (jaxent.softmax, jaxent.log_softmax):
            moved = np.moveaxis(np.asarray(fn(np.moveaxis(z, axis, -1))), -1, axis)
            np.testing.assert_allclose(fn(z, axis=axis), moved, rtol=1e-12)
        np.testing.assert_allclose(
            jaxent.logsumexp(z, axis=axis), sps.logsumexp(z, axis=axis), rtol=1e-12
        )

    def test_logit_inverts_sigmoid(self):
        p = np.random.default_rng(5).uniform(0.01, 0.99, size=20)
        np.testing.assert_allclose(jaxent.logit(p), sps.logit(p), rtol=1e-12)
        np.testing.assert_allclose(jax.nn.sigmoid(jaxent.logit(p)), p, rtol=1e-12)
        assert jaxent.logit(0.0) == -np.inf and jaxent.logit(1.0) == np.inf

    def test_logit_grad(self):
        p = np.random.default_rng(6).uniform(0.05, 0.95, size=6)
        g = jax.vmap(jax.grad(jaxent.logit))(p)
        np.testing.assert_allclose(g, 1 / (p * (1 - p)), rtol=1e-12)


class TestMasks:
    def test_where_equals_dropping_entries(self):
        z = logits(7, (3, 6))
        where = np.array([True, False, True, True, False, True])
        out = jaxent.softmax(z, where=where[None, :])
        np.testing.assert_allclose(out[:, where], sps.softmax(z[:, where], axis=-1), rtol=1e-12)
        np.testing.assert_array_equal(out[:, ~where], 0)
        ls = jaxent.log_softmax(z, where=where[None, :])
        np.testing.assert_allclose(ls[:, where], ref_log_softmax(z[:, where]), rtol=1e-12)
        assert np.all(np.isneginf(ls[:, ~where]))
        np.testing.assert_allclose(
            jaxent.logsumexp(z, where=where[None, :]), sps.logsumexp(z[:, where], -1), rtol=1e-12
        )

    def test_row_mask_and_fully_masked_rows(self):
        z = logits(8, (3, 4))
        rows = np.array([True, False, True])
        p = jaxent.softmax(z, where=rows)
        np.testing.assert_array_equal(p[1], 0)
        np.testing.assert_allclose(p[0], sps.softmax(z[0]), rtol=1e-12)
        assert np.all(np.isneginf(jaxent.log_softmax(z, where=rows)[1]))
        assert np.isneginf(jaxent.logsumexp(z, where=rows)[1])

    def test_masked_gradients_are_zero_and_finite(self):
        z = logits(9, (3, 4))
        where = np.array([[True, True, False, True], [False] * 4, [True] * 4])

        def f(z):
            return (
                jnp.sum(jaxent.softmax(z, where=where) ** 2)
                + jnp.sum(jnp.where(where, jaxent.log_softmax(z, where=where), 0))
                + jnp.sum(jnp.where(jnp.isfinite(lse := jaxent.logsumexp(z, where=where)), lse, 0))
            )

        g = jax.grad(f)(z)
        assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(np.asarray(g)[~where], 0)

    def test_where_equals_minus_inf(self):
        z = logits(10, (2, 5))
        where = np.array([[True, False, True, True, True], [True, True, True, False, False]])
        z_inf = np.where(where, z, -np.inf)
        np.testing.assert_allclose(jaxent.softmax(z, where=where), jaxent.softmax(z_inf))
        np.testing.assert_allclose(jaxent.logsumexp(z, where=where), jaxent.logsumexp(z_inf))


class TestNumerics:
    @pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
    def test_minus_inf_logits(self, dtype):
        z = jnp.array([[0.0, -jnp.inf, 1.0], [-jnp.inf, -jnp.inf, -jnp.inf]], dtype)
        p = jaxent.softmax(z)
        np.testing.assert_allclose(p[0], ref_softmax(np.array([0.0, -np.inf, 1.0])), rtol=1e-6)
        np.testing.assert_array_equal(p[1], 0)
        assert np.isneginf(jaxent.logsumexp(z)[1])
        for fn in (
            lambda z: jnp.sum(jaxent.softmax(z) * jnp.arange(3.0, dtype=dtype)[None, :]),
            lambda z: jnp.sum(jnp.where(jnp.isfinite(ls := jaxent.log_softmax(z)), ls, 0)),
            lambda z: jnp.sum(jnp.where(jnp.isfinite(l := jaxent.logsumexp(z)), l, 0)),
        ):
            g = jax.grad(fn)(z)
            assert np.all(np.isfinite(g)), g

    @pytest.mark.parametrize("big", [1e4, 3e38])
    def test_huge_logits(self, big):
        z = jnp.array([[big, -big, 0.0], [big, big, -big]], jnp.float32)
        p = jaxent.softmax(z)
        assert np.all(np.isfinite(p))
        np.testing.assert_allclose(p, [[1, 0, 0], [0.5, 0.5, 0]], atol=1e-7)
        lse = jaxent.logsumexp(z)
        np.testing.assert_allclose(lse, [big, big + np.log(2)], rtol=1e-6)
        g = jax.grad(lambda z: jnp.sum(jaxent.logsumexp(z)))(z)
        assert np.all(np.isfinite(g))

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_low_precision_computes_in_f32_and_returns_input_dtype(self, dtype):
        z64 = logits(11, (2, 32768), scale=4.0)
        z = jnp.asarray(z64, dtype)
        exact = sps.logsumexp(np.asarray(z, np.float64), axis=-1)
        out = jaxent.logsumexp(z)
        assert out.dtype == dtype
        np.testing.assert_allclose(np.asarray(out, np.float64), exact, rtol=1e-2)
        p = jaxent.softmax(z)
        assert p.dtype == dtype
        np.testing.assert_allclose(np.asarray(p, np.float64).sum(-1), 1.0, rtol=1e-2)


class TestTransforms:
    def test_jit_vmap_agree(self):
        z = logits(12, (5, 6))
        for fn in (jaxent.softmax, jaxent.log_softmax, jaxent.logsumexp):
            plain = fn(z)
            np.testing.assert_allclose(jax.jit(fn)(z), plain, rtol=1e-12)
            np.testing.assert_allclose(jax.vmap(fn)(z), plain, rtol=1e-12)

    def test_softmax_jacobian_is_diag_p_minus_ppT(self):
        z = logits(13, (5,))
        p = sps.softmax(z)
        expected = np.diag(p) - np.outer(p, p)
        np.testing.assert_allclose(jax.jacfwd(jaxent.softmax)(z), expected, atol=1e-14)
        np.testing.assert_allclose(jax.jacrev(jaxent.softmax)(z), expected, atol=1e-14)
        np.testing.assert_allclose(jax.grad(jaxent.logsumexp)(z), p, rtol=1e-12)
        np.testing.assert_allclose(jax.hessian(jaxent.logsumexp)(z), expected, atol=1e-14)
