"""RL on logits: log_prob_from_logits, kl_estimate (incl. the expected-gradient table), aggregate_loss.

References are numpy float64 (``@pytest.mark.x64``) or float32 inputs checked
at float32 tolerance; verl's ``agg_loss`` is written out in numpy below.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxent

x64 = pytest.mark.x64


def np_log_softmax(z, axis=-1):
    z = np.asarray(z, np.float64)
    m = np.max(z, axis=axis, keepdims=True)
    return z - m - np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True))


# =========================================================================== log_prob_from_logits


class TestLogProb:
    @x64
    @pytest.mark.parametrize("temperature", [None, 0.7, 2.0])
    def test_value_and_grad_vs_numpy(self, temperature):
        rng = np.random.default_rng(0)
        z = rng.normal(0, 3, size=(4, 7))
        y = rng.integers(0, 7, size=4)
        t = 1.0 if temperature is None else temperature
        ls = np_log_softmax(z / t)
        want = ls[np.arange(4), y]
        got = jaxent.log_prob_from_logits(z, y, temperature=temperature)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        g = jax.grad(lambda z: jnp.sum(jaxent.log_prob_from_logits(z, y, temperature=temperature)))(
            z
        )
        want_g = (np.eye(7)[y] - np.exp(ls)) / t
        np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-14)
        # forward mode too (custom_jvp)
        jf = jax.jacfwd(lambda z: jaxent.log_prob_from_logits(z, y, temperature=temperature))(z)
        np.testing.assert_allclose(np.einsum("iik->ik", jf), want_g, rtol=1e-10, atol=1e-14)

    @x64
    def test_temperature_gradient(self):
        z = np.array([0.3, -1.0, 2.0])
        t = 1.5
        # d/dT [z_y/T - lse(z/T)] = -(z_y - E_p[z]) / T^2
        p = np.exp(np_log_softmax(z / t))
        want = -(z[2] - p @ z) / t**2
        got = jax.grad(lambda t: jaxent.log_prob_from_logits(z, np.int32(2), temperature=t))(t)
        np.testing.assert_allclose(got, want, rtol=1e-12)

    def test_float32_jit_vmap_axis(self):
        rng = np.random.default_rng(1)
        z = rng.normal(size=(3, 5, 6)).astype(np.float32)
        y = rng.integers(0, 6, size=(3, 5))
        want = np.take_along_axis(np_log_softmax(z / 0.8), y[..., None], -1)[..., 0]
        f = jax.jit(lambda z, y: jaxent.log_prob_from_logits(z, y, temperature=0.8))
        got = f(z, y)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(jax.vmap(f)(z, y), want, rtol=2e-6, atol=2e-6)
        zt = np.moveaxis(z, -1, 1)
        got_ax = jaxent.log_prob_from_logits(zt, y, axis=1, temperature=0.8)
        np.testing.assert_allclose(got_ax, want, rtol=2e-6, atol=2e-6)

    def test_bfloat16_computes_in_float32(self):
        rng = np.random.default_rng(2)
        z = jnp.asarray(rng.normal(0, 4, size=(8, 50)).astype(np.float32)).astype(jnp.bfloat16)
        y = rng.integers(0, 50, size=8)
        got = jaxent.log_prob_from_logits(z, y, temperature=0.5)
        assert got.dtype == jnp.bfloat16
        ref = np_log_softmax(np.asarray(z.astype(jnp.float32), np.float64) / 0.5)[np.arange(8), y]
        np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), ref, rtol=1e-2)
        g = jax.grad(lambda z: jnp.sum(jaxent.log_prob_from_logits(z, y).astype(jnp.float32)))(z)
        assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g)))

    @x64
    def test_edge_cases(self):
        z = np.array([[1.0, -np.inf, 0.5, -2.0], [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
        mask = np.array([[True] * 4, [True, False, True, True], [False] * 4])

        def f(z, y):
            return jaxent.log_prob_from_logits(z, y, where=mask)

        # -inf label -> -inf; label on a masked class -> -inf; empty row -> 0
        y = np.array([1, 1, 0])
        val = f(z, y)
        assert val[0] == -np.inf and val[1] == -np.inf and val[2] == 0
        assert not np.signbit(val[2])
        grads = jax.jacrev(lambda z: f(z, y))(z)
        assert np.all(np.isfinite(grads))
        p0 = np.exp(np_log_softmax(np.array([1.0, -np.inf, 0.5, -2.0])))
        np.testing.assert_allclose(grads[0, 0], np.eye(4)[1] - p0, rtol=1e-12, atol=1e-15)
        p1 = np.exp(np_log_softmax(np.array([0.0, -np.inf, 2.0, 3.0])))
        np.testing.assert_allclose(grads[1, 1], -p1, rtol=1e-12, atol=1e-15)  # masked class: 0
        np.testing.assert_array_equal(grads[2, 2], 0.0)
        # a row mask removes the row: 0, gradient 0
        rows = np.array([True, False, True])
        zz = np.zeros((3, 4))
        out = jaxent.log_prob_from_logits(zz, np.array([0, 1, 2]), where=rows)
        np.testing.assert_allclose(out, [-np.log(4), 0, -np.log(4)], rtol=1e-12)
        gr = jax.grad(
            lambda z: jnp.sum(jaxent.log_prob_from_logits(z, np.array([0, 1, 2]), where=rows))
        )(zz)
        np.testing.assert_array_equal(gr[1], 0.0)

    def test_out_of_range_label_is_nan(self):
        z = np.zeros((2, 3), np.float32)
        out = jaxent.log_prob_from_logits(z, np.array([0, 3]))
        assert np.isfinite(out[0]) and np.isnan(out[1])

    def test_errors(self):
        z = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="temperature"):
            jaxent.log_prob_from_logits(z, np.array([0, 1]), temperature=0.0)
        with pytest.raises(TypeError, match="labels"):
            jaxent.log_prob_from_logits(z, np.array([0.0, 1.0], np.float32))
        with pytest.raises(TypeError, match="logits"):
            jaxent.log_prob_from_logits(np.zeros((2, 3), int), np.array([0, 1]))


# =========================================================================== kl_estimate


def np_estimates(lp, lq):
    lr = lq - lp
    k3 = np.expm1(lr) - lr
    return {"k1": -lr, "k2": 0.5 * lr**2, "k3": k3, "k3+": k3}


def np_dlog_p(lp, lq):
    """d estimate / d log_p (d/d log_q is its negative)."""
    return {"k1": np.ones_like(lp), "k2": lp - lq, "k3": 1 - np.exp(lq - lp), "k3+": lp - lq}


ESTIMATORS = ["k1", "k2", "k3", "k3+"]


class TestKLEstimate:
    @x64
    @pytest.mark.parametrize("estimator", ESTIMATORS)
    def test_value_and_grad(self, estimator):
        rng = np.random.default_rng(3)
        lp, lq = -rng.exponential(size=(3, 5)), -rng.exponential(size=(3, 5))
        got = jaxent.kl_estimate(lp, lq, estimator=estimator)
        np.testing.assert_allclose(got, np_estimates(lp, lq)[estimator], rtol=1e-12)
        gp, gq = jax.grad(
            lambda a, b: jnp.sum(jaxent.kl_estimate(a, b, estimator=estimator)), argnums=(0, 1)
        )(lp, lq)
        want = np_dlog_p(lp, lq)[estimator]
        np.testing.assert_allclose(gp, want, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gq, -want, rtol=1e-12, atol=1e-15)
        tp = jax.jvp(
            lambda a: jaxent.kl_estimate(a, lq, estimator=estimator), (lp,), (np.ones_like(lp),)
        )[1]
        np.testing.assert_allclose(tp, want, rtol=1e-12, atol=1e-15)

    @x64
    @pytest.mark.parametrize("estimator", ESTIMATORS)
    def test_log_sampler(self, estimator):
        rng = np.random.default_rng(4)
        lp, lq, ls = (-rng.exponential(size=6) for _ in range(3))
        w = np.exp(lp - ls)
        k = np_estimates(lp, lq)[estimator]

        def f(a, b, c):
            return jnp.sum(jaxent.kl_estimate(a, b, estimator=estimator, log_sampler=c))

        np.testing.assert_allclose(
            jaxent.kl_estimate(lp, lq, estimator=estimator, log_sampler=ls), w * k, rtol=1e-12
        )
        gp, gq, gs = jax.grad(f, argnums=(0, 1, 2))(lp, lq, ls)
        a = np_dlog_p(lp, lq)[estimator]
        np.testing.assert_allclose(gp, w * (a + k), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(gq, -w * a, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(gs, 0.0)  # the sampler is held constant

    @pytest.mark.parametrize("estimator", ESTIMATORS)
    def test_where_zeroes_masked_samples(self, estimator):
        lp = np.array([[-0.5, np.nan, -np.inf], [-1.0, -2.0, -0.1]], np.float32)
        lq = np.array([[-0.7, -0.3, -np.inf], [np.nan, -1.0, -0.2]], np.float32)
        keep = np.array([[True, False, False], [False, True, True]])
        out = jaxent.kl_estimate(lp, lq, estimator=estimator, where=keep)
        np.testing.assert_array_equal(np.asarray(out)[~keep], 0.0)
        clean = [np.where(keep, x, -1.0).astype(np.float64) for x in (lp, lq)]
        full = np_estimates(*clean)[estimator]
        np.testing.assert_allclose(np.asarray(out)[keep], full[keep], rtol=1e-5)
        gp, gq = jax.grad(
            lambda a, b: jnp.sum(jaxent.kl_estimate(a, b, estimator=estimator, where=keep)),
            argnums=(0, 1),
        )(lp, lq)
        assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq))
        np.testing.assert_array_equal(np.asarray(gp)[~keep], 0.0)
        np.testing.assert_array_equal(np.asarray(gq)[~keep], 0.0)

    def test_jit_vmap_broadcast_dtype(self):
        rng = np.random.default_rng(5)
        lp = -rng.exponential(size=(4, 3)).astype(np.float32)
        lq = -rng.exponential(size=(3,)).astype(np.float32)
        f = jax.jit(lambda a, b: jaxent.kl_estimate(a, b, estimator="k3+"))
        want = np_estimates(lp.astype(np.float64), lq.astype(np.float64)[None])["k3"]
        np.testing.assert_allclose(f(lp, lq), want, rtol=1e-5)
        np.testing.assert_allclose(jax.vmap(f, (0, None))(lp, lq), want, rtol=1e-5)
        out = jaxent.kl_estimate(
            jnp.asarray(lp).astype(jnp.bfloat16), jnp.asarray(lp).astype(jnp.bfloat16)
        )
        assert out.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)), 0.0)

    def test_errors(self):
        z = np.zeros(3, np.float32)
        with pytest.raises(ValueError, match="estimator"):
            jaxent.kl_estimate(z, z, estimator="k4")
        with pytest.raises(ValueError, match="log_sampler"):
            jaxent.kl_estimate(z, z, log_sampler=np.zeros(4, np.float32))
        with pytest.raises(TypeError, match="where"):
            jaxent.kl_estimate(z, z, where=np.ones(3, np.float32))
        with pytest.raises(ValueError, match="where"):
            jaxent.kl_estimate(z, z, where=np.ones(4, bool))


# --------------------------------------------------------------------------- the table


def _table_gradient(theta, log_ref, estimator, placement):
    """Exact expected gradient over x ~ pi = softmax(theta), 6 outcomes, by enumeration."""
    labels = np.arange(6)

    def objective(th):
        lp = jaxent.log_prob_from_logits(jnp.broadcast_to(th, (6, 6)), labels)
        prob = jax.lax.stop_gradient(jnp.exp(lp))  # the sampling distribution, not differentiated
        if placement == "loss":
            k = jaxent.kl_estimate(lp, log_ref, estimator=estimator)
            return jnp.sum(prob * k)
        if placement == "loss, log_sampler=sg(log_p)":
            k = jaxent.kl_estimate(
                lp, log_ref, estimator=estimator, log_sampler=jax.lax.stop_gradient(lp)
            )
            return jnp.sum(prob * k)
        # reward: REINFORCE with the detached estimate as the (negative) reward
        k = jax.lax.stop_gradient(jaxent.kl_estimate(lp, log_ref, estimator=estimator))
        return jnp.sum(prob * k * lp)

    return np.asarray(jax.grad(objective)(theta))


# (estimator, placement) -> (coefficient of grad D(pi||ref), of grad D(ref||pi)); None: neither
TABLE = {
    ("k1", "loss"): (0, 0),
    ("k1", "reward"): (1, 0),
    ("k2", "loss"): (1, 0),
    ("k2", "reward"): None,
    ("k3", "loss"): (0, 1),
    ("k3", "reward"): (1, -1),
    ("k3+", "loss"): (1, 0),
    ("k3+", "reward"): (1, -1),
    ("k1", "loss, log_sampler=sg(log_p)"): (1, 0),
    ("k2", "loss, log_sampler=sg(log_p)"): None,
    ("k3", "loss, log_sampler=sg(log_p)"): (1, 0),
    ("k3+", "loss, log_sampler=sg(log_p)"): (2, -1),
}


@x64
@pytest.mark.parametrize("case", list(TABLE), ids=lambda c: f"{c[0]}-{c[1]}")
def test_expected_gradient_table(case):
    """The docstring's and README's table, by exact enumeration over a 6-way categorical."""
    estimator, placement = case
    rng = np.random.default_rng(12)
    theta, phi = rng.normal(size=6), rng.normal(size=6)
    pi = np.exp(np_log_softmax(theta))
    log_ref = np_log_softmax(phi)
    ref = np.exp(log_ref)
    k1 = np.log(pi) - log_ref
    grad_forward = pi * (k1 - pi @ k1)  # grad_theta D(pi || ref)
    grad_reverse = pi - ref  # grad_theta D(ref || pi)
    g = _table_gradient(theta, log_ref, estimator, placement)
    coef = TABLE[case]
    if coef is None:  # neither KL nor a combination of the two
        basis = np.stack([grad_forward, grad_reverse], 1)
        fit = basis @ np.linalg.lstsq(basis, g, rcond=None)[0]
        assert np.max(np.abs(fit - g)) > 1e-3
    else:
        want = coef[0] * grad_forward + coef[1] * grad_reverse
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-13)


@x64
def test_table_k2_reward_is_grad_of_expected_k2_minus_its_mean_gradient():
    # The "neither" entries: k2 in the reward is grad E[k2] - E[grad k2] = grad E[k2] - grad D(pi||ref).
    rng = np.random.default_rng(12)
    theta, phi = rng.normal(size=6), rng.normal(size=6)
    log_ref = np_log_softmax(phi)

    def expected_k2(th):
        lp = th - jax.scipy.special.logsumexp(th)
        return jnp.sum(jnp.exp(lp) * 0.5 * (lp - log_ref) ** 2)

    pi = np.exp(np_log_softmax(theta))
    k1 = np.log(pi) - log_ref
    g_e = np.asarray(jax.grad(expected_k2)(theta))
    np.testing.assert_allclose(
        _table_gradient(theta, log_ref, "k2", "reward"), g_e - pi * (k1 - pi @ k1), atol=1e-13
    )
    np.testing.assert_allclose(
        _table_gradient(theta, log_ref, "k2", "loss, log_sampler=sg(log_p)"), g_e, atol=1e-13
    )


# =========================================================================== aggregate_loss


def verl_agg_loss(loss_mat, loss_mask, mode, normalizer=None):
    """verl/trainer/ppo/core_algos.py ``agg_loss`` (January 2026) in numpy, dp_size = 1."""
    loss_mat = np.asarray(loss_mat, np.float64)
    loss_mask = np.asarray(loss_mask, np.float64)
    if mode == "token-mean":
        n = loss_mask.sum() if normalizer is None else normalizer
        return (loss_mat * loss_mask).sum() / n
    if mode == "seq-mean-token-sum":
        seq = (loss_mat * loss_mask).sum(-1)
        seq_mask = (loss_mask.sum(-1) > 0).astype(np.float64)
        n = seq_mask.sum() if normalizer is None else normalizer
        return (seq * seq_mask).sum() / n
    if mode == "seq-mean-token-mean":
        cnt = loss_mask.sum(-1)
        seq = (loss_mat * loss_mask).sum(-1) / (cnt + 1e-8)
        seq_mask = (cnt > 0).astype(np.float64)
        n = seq_mask.sum() if normalizer is None else normalizer
        return (seq * seq_mask).sum() / n
    if mode == "seq-mean-token-sum-norm":
        seq = (loss_mat * loss_mask).sum(-1)
        n = loss_mask.shape[-1] if normalizer is None else normalizer
        return seq.sum() / n
    raise ValueError(mode)


MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _batch(seed, b=5, t=7):
    rng = np.random.default_rng(seed)
    losses = rng.normal(size=(b, t))
    lengths = rng.integers(0, t + 1, size=b)
    lengths[1] = 0  # one empty sequence
    mask = np.arange(t)[None] < lengths[:, None]
    return losses, mask


class TestAggregateLoss:
    @x64
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("normalizer", [None, 13.0])
    def test_vs_verl(self, mode, normalizer):
        losses, mask = _batch(6)
        want = verl_agg_loss(losses, mask, mode, normalizer)
        got = jaxent.aggregate_loss(losses, mask, mode=mode, normalizer=normalizer)
        np.testing.assert_allclose(got, want, rtol=1e-7)  # verl's +1e-8 in seq-mean-token-mean
        # gradient: m c, the mode's factor, against central differences of verl's definition
        g = jax.grad(lambda x: jaxent.aggregate_loss(x, mask, mode=mode, normalizer=normalizer))(
            losses
        )
        fd = np.zeros_like(losses)
        h = 1e-6
        for i in np.ndindex(losses.shape):
            e = np.zeros_like(losses)
            e[i] = h
            fd[i] = (
                verl_agg_loss(losses + e, mask, mode, normalizer)
                - verl_agg_loss(losses - e, mask, mode, normalizer)
            ) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)

    @pytest.mark.parametrize("mode", MODES)
    def test_float32_jit_nan_padding_and_traced_normalizer(self, mode):
        losses, mask = _batch(7)
        lo = np.where(mask, losses, np.nan).astype(np.float32)  # NaN padding is harmless
        f = jax.jit(lambda x, n: jaxent.aggregate_loss(x, mask, mode=mode, normalizer=n))
        got = f(lo, jnp.float32(9.0))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, verl_agg_loss(losses, mask, mode, 9.0), rtol=1e-5)
        g = jax.grad(lambda x: f(x, jnp.float32(9.0)))(lo)
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~mask] == 0)
        # vmap over micro-batches
        stacked = np.stack([lo, lo])
        out = jax.vmap(lambda x: jaxent.aggregate_loss(x, mask, mode=mode))(stacked)
        np.testing.assert_allclose(out, [verl_agg_loss(losses, mask, mode)] * 2, rtol=1e-5)

    @pytest.mark.parametrize("mode", MODES)
    def test_nothing_kept_is_zero(self, mode):
        lo = np.ones((2, 3), np.float32)
        none = np.zeros((2, 3), bool)
        assert float(jaxent.aggregate_loss(lo, none, mode=mode)) == 0.0
        g = jax.grad(lambda x: jaxent.aggregate_loss(x, none, mode=mode))(lo)
        np.testing.assert_array_equal(g, 0.0)

    def test_where_none_keeps_everything(self):
        lo = np.arange(6, dtype=np.float32).reshape(2, 3)
        assert float(jaxent.aggregate_loss(lo, None)) == 2.5

    def test_errors(self):
        lo = np.zeros((2, 3), np.float32)
        m = np.ones((2, 3), bool)
        with pytest.raises(ValueError, match="mode"):
            jaxent.aggregate_loss(lo, m, mode="mean")
        with pytest.raises(ValueError, match="losses"):
            jaxent.aggregate_loss(np.zeros(3, np.float32), None)
        with pytest.raises(ValueError, match="normalizer"):
            jaxent.aggregate_loss(lo, m, normalizer=0.0)
        with pytest.raises(TypeError, match="where"):
            jaxent.aggregate_loss(lo, np.ones((2, 3), np.float32))
