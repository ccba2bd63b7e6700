"""Per-example evaluation functions: brier_score, ensemble_log_softmax,
predictive_entropy, mutual_information (jaxent/_evaluation.py).

References are written out in numpy float64 from their definitions (TFP's
``brier_score`` + 1, the BALD definition H(mean p) - mean H(p_m)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxent

ENSEMBLE = [jaxent.ensemble_log_softmax, jaxent.predictive_entropy, jaxent.mutual_information]


# --------------------------------------------------------------------------- references


def _softmax64(z):
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(z - m)
    s = e.sum(-1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def _brier_ref(z, y):
    p = _softmax64(z)
    onehot = np.eye(z.shape[-1])[y]
    return np.sum((p - onehot) ** 2, axis=-1)


def _entropy_ref(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1)


def _ensemble_ref(z):
    """members on axis 0, classes last: (log pbar, H(pbar), MI)."""
    p = _softmax64(z)
    pbar = p.mean(0)
    with np.errstate(divide="ignore"):
        lbar = np.log(pbar)
    h = _entropy_ref(pbar)
    return lbar, h, h - _entropy_ref(p).mean(0)


def _members(seed, m=4, n=6, k=5, scale=3.0):
    return np.random.default_rng(seed).normal(size=(m, n, k)) * scale


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("x64", [False, True])
def test_brier_matches_reference(x64):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 9)) * 4
    y = rng.integers(0, 9, 7)
    with jax.enable_x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        out = jaxent.brier_score(jnp.asarray(z, dt), jnp.asarray(y))
        assert out.dtype == dt
        np.testing.assert_allclose(out, _brier_ref(z, y), rtol=1e-12 if x64 else 2e-6, atol=1e-6)


def test_brier_confident_and_axis():
    # p_y = 1 - 1e-9: B ~ 2e-18, far below float32 rounding of 1 (no cancellation).
    z = np.array([[np.log(1e-9), 0.0]])
    out = jaxent.brier_score(jnp.asarray(z, jnp.float32), jnp.array([1]))
    np.testing.assert_allclose(out, _brier_ref(z, [1]), rtol=1e-3)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(5, 3, 4)).astype(np.float32)
    y = rng.integers(0, 5, (3, 4))
    np.testing.assert_allclose(
        jaxent.brier_score(jnp.asarray(z), jnp.asarray(y), axis=0),
        _brier_ref(np.moveaxis(z, 0, -1), y),
        rtol=1e-5,
    )


def test_brier_masks_and_bad_labels():
    z = jnp.array([[0.0, 1.0, -jnp.inf], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    y = jnp.array([2, 5, 0])
    out = jaxent.brier_score(z, y, where=jnp.array([True, True, False]))
    p = _softmax64(np.array([0.0, 1.0, -np.inf]))
    np.testing.assert_allclose(out[0], 1 + np.sum(p**2), rtol=1e-6)  # label on a -inf class
    assert np.isnan(out[1])  # label out of range
    assert out[2] == 0  # removed row
    cls_mask = jnp.array([True, False, True])
    out = jaxent.brier_score(z[1:2], jnp.array([0]), where=cls_mask[None])
    np.testing.assert_allclose(out, _brier_ref(np.array([[0.0, -np.inf, 2.0]]), [0]), rtol=1e-6)


@pytest.mark.parametrize("x64", [False, True])
def test_ensemble_functions_match_reference(x64):
    z = _members(2)
    lbar, h, mi = _ensemble_ref(z)
    with jax.enable_x64(x64):
        dt = jnp.float64 if x64 else jnp.float32
        tol = dict(rtol=1e-11, atol=1e-12) if x64 else dict(rtol=2e-5, atol=2e-6)
        zj = jnp.asarray(z, dt)
        np.testing.assert_allclose(jaxent.ensemble_log_softmax(zj), lbar, **tol)
        np.testing.assert_allclose(jaxent.predictive_entropy(zj), h, **tol)
        np.testing.assert_allclose(jaxent.mutual_information(zj), mi, **tol)
        np.testing.assert_allclose(jaxent.mutual_information(zj, base=2), mi / np.log(2), **tol)
        for f in ENSEMBLE:
            assert f(zj).dtype == dt


def test_ensemble_axes():
    z = _members(3, m=3, n=4, k=6).astype(np.float32)
    lbar, h, mi = _ensemble_ref(z)
    # classes on axis 0, members on axis 2: [K, N, M]
    zt = jnp.asarray(np.transpose(z, (2, 1, 0)))
    np.testing.assert_allclose(
        jaxent.ensemble_log_softmax(zt, axis=0, member_axis=2), lbar.T, rtol=2e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        jaxent.predictive_entropy(zt, axis=0, member_axis=-1), h, rtol=2e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        jaxent.mutual_information(zt, axis=0, member_axis=2), mi, rtol=2e-5, atol=1e-6
    )


def test_identical_members_give_exactly_zero_mutual_information():
    z = np.random.default_rng(4).normal(size=(1, 50, 11)).astype(np.float32) * 10
    zj = jnp.asarray(np.repeat(z, 7, axis=0))
    assert np.all(np.asarray(jaxent.mutual_information(zj)) == 0)
    np.testing.assert_array_equal(
        jaxent.ensemble_log_softmax(zj), jaxent.log_softmax(jnp.asarray(z[0]))
    )


def test_mutual_information_bounds():
    z = jnp.asarray(_members(5, m=3, n=200, k=4, scale=8.0), jnp.float32)
    mi = np.asarray(jaxent.mutual_information(z))
    assert np.all(mi >= 0)
    assert np.all(mi <= np.log(3) + 1e-6)
    assert np.all(mi <= np.asarray(jaxent.predictive_entropy(z)) + 1e-6)


def test_ensemble_masks_and_infinities():
    z = _members(6, m=3, n=4, k=5).astype(np.float32)
    z[:, 0, 1] = -np.inf  # a class no member allows
    z[1, 1, :] = -np.inf  # member 1 has no class on example 1: left out
    zj = jnp.asarray(z)
    lbar = np.asarray(jaxent.ensemble_log_softmax(zj))
    assert lbar[0, 1] == -np.inf
    ref = _ensemble_ref(z[:, :1])
    np.testing.assert_allclose(lbar[0], ref[0][0], rtol=1e-5)
    kept = z[[0, 2], 1:2]
    for f, r in zip(ENSEMBLE, _ensemble_ref(kept), strict=True):
        np.testing.assert_allclose(np.asarray(f(zj))[1], r[0], rtol=2e-5, atol=1e-6)
    # row mask: removing member 0 of example 2 equals leaving it out
    where = np.ones((3, 4), bool)
    where[0, 2] = False
    for f, r in zip(ENSEMBLE, _ensemble_ref(z[1:, 2:3]), strict=True):
        np.testing.assert_allclose(
            np.asarray(f(zj, where=jnp.asarray(where)))[2], r[0], rtol=2e-5, atol=1e-6
        )
    # an example with no member left
    empty = np.zeros((3, 4), bool)
    assert np.all(np.asarray(jaxent.ensemble_log_softmax(zj, where=jnp.asarray(empty))) == -np.inf)
    assert np.all(np.asarray(jaxent.predictive_entropy(zj, where=jnp.asarray(empty))) == 0)
    assert np.all(np.asarray(jaxent.mutual_information(zj, where=jnp.asarray(empty))) == 0)
    # huge logits
    big = jnp.asarray(np.array([[[3e38, 0.0]], [[0.0, 3e38]]], np.float32))
    np.testing.assert_allclose(jaxent.mutual_information(big), [np.log(2)], rtol=1e-6)


# --------------------------------------------------------------------------- transforms


def test_jit_and_vmap():
    z = jnp.asarray(_members(7), jnp.float32)
    y = jnp.asarray(np.random.default_rng(7).integers(0, 5, 6))

    def all3(x):
        return tuple(f(x) for f in ENSEMBLE)

    eager = all3(z)
    # jit, and vmap over examples (axis 1), equal the batched call
    for got in (jax.jit(all3)(z), jax.jit(jax.vmap(all3, in_axes=1))(z)):
        for g, e in zip(got, eager, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        jax.vmap(jaxent.brier_score)(z, jnp.broadcast_to(y, (4, 6))),
        jaxent.brier_score(z, jnp.broadcast_to(y, (4, 6))),
        rtol=1e-6,
    )


@pytest.mark.x64
def test_gradients_float64():
    rng = np.random.default_rng(8)
    z = jnp.asarray(rng.normal(size=(3, 4, 5)))
    y = jnp.asarray(rng.integers(0, 5, 4))
    check_grads(jax.jit(lambda x: jaxent.brier_score(x, y)), (z[0],), 1, modes=["fwd", "rev"])
    for f in ENSEMBLE:
        check_grads(jax.jit(f), (z,), order=1, modes=["fwd", "rev"])

    # gradient equals autodiff of the plain definition
    def plain_mi(x):
        p = jax.nn.softmax(x, axis=-1)
        ent = lambda q: -jnp.sum(q * jnp.log(q), axis=-1)  # noqa: E731
        return ent(p.mean(0)) - ent(p).mean(0)

    np.testing.assert_allclose(
        jax.jit(jax.grad(lambda x: jnp.sum(jaxent.mutual_information(x))))(z),
        jax.jit(jax.grad(lambda x: jnp.sum(plain_mi(x))))(z),
        rtol=1e-10,
        atol=1e-12,
    )


def test_gradients_finite_at_masked_and_neg_inf():
    z = _members(9, m=3, n=2, k=4).astype(np.float32)
    z[0, 0, 1] = -np.inf
    z[:, 1, 2] = -np.inf
    zj = jnp.asarray(z)
    where = jnp.asarray(np.array([True, False, True, True]))[None, None, :]

    @jax.jit
    def grads(x):
        def total(x):
            return (
                jnp.sum(jaxent.predictive_entropy(x, where=where))
                + jnp.sum(jaxent.mutual_information(x, where=where)),
                jnp.sum(jnp.exp(jaxent.ensemble_log_softmax(x))),
                jnp.sum(jaxent.brier_score(x[0], jnp.array([0, 1]))),
            )

        return jax.jacrev(total)(x)

    g_masked, g_ens, g_brier = grads(zj)
    assert np.all(np.isfinite(g_masked)) and np.all(np.asarray(g_masked)[:, :, 1] == 0)
    assert np.all(np.isfinite(g_ens))
    assert np.all(np.isfinite(g_brier)) and g_brier[0, 0, 1] == 0
    # identical members: MI is at its minimum, gradient 0
    same = jnp.asarray(np.repeat(z[:1, :1, [0, 2, 3]], 3, axis=0))
    g = jax.jit(jax.grad(lambda x: jnp.sum(jaxent.mutual_information(x))))(same)
    np.testing.assert_allclose(g, 0, atol=1e-7)


# --------------------------------------------------------------------------- errors


def test_errors():
    z = jnp.zeros((3, 4, 5))
    with pytest.raises(TypeError, match="labels"):
        jaxent.brier_score(z[0], jnp.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        jaxent.brier_score(z[0], jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="logits"):
        jaxent.brier_score(jnp.zeros((4, 5), jnp.int32), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="member_axis"):
        jaxent.mutual_information(z, axis=-1, member_axis=2)
    with pytest.raises(ValueError, match="member_axis"):
        jaxent.predictive_entropy(z, member_axis=5)
    with pytest.raises(ValueError, match="member axis"):
        jaxent.ensemble_log_softmax(jnp.zeros(5))
    with pytest.raises(TypeError, match="member_logits"):
        jaxent.mutual_information(jnp.zeros((3, 5), jnp.int32))
    with pytest.raises(ValueError, match="base"):
        jaxent.predictive_entropy(z, base=1)


def test_low_precision_inputs_compute_in_float32():
    z = _members(10, m=3, n=4, k=6).astype(np.float32)
    ref = np.asarray(jaxent.predictive_entropy(jnp.asarray(z)))
    for dt in (jnp.bfloat16, jnp.float16):
        zl = jnp.asarray(z).astype(dt)
        out = jaxent.predictive_entropy(zl)
        assert out.dtype == dt
        exact = _ensemble_ref(np.asarray(zl.astype(jnp.float32)))[1]
        np.testing.assert_allclose(np.asarray(out, np.float64), exact, rtol=1e-2)
    assert ref.dtype == np.float32
