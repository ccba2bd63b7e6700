"""The softmax cross-entropy engine (jaxent._engine) against a float64 numpy reference.

The reference builds the dense target vector a = t e_y + coef (w * 1_R) + scale (w * u)
and evaluates L = A lse(z) - <a, z> + lam lse^2, dL/dz = (A + 2 lam lse) softmax(z) - a
in numpy float64; the engine never builds a. Dense rows, vocabulary blocks (streamed and
combined) and shards (pmax/psum under a named vmap axis) must all agree with it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps

from jaxent import _engine as eng

pytestmark = pytest.mark.x64

N, K = 5, 11


def reference(z, labels, t, coef, w, u, scale, keep, lam, mask, exclude_true):
    """numpy float64: (loss, gradient) of the dense target; masked classes are removed."""
    z = np.where(mask, z, -np.inf)
    a = np.zeros_like(z)
    rows = np.arange(z.shape[0])
    if labels is not None:
        a[rows, labels] += t
    if coef is not None:
        sel = mask.copy()
        if exclude_true:
            sel[rows, labels] = False
        a += coef[:, None] * w[None, :] * sel
    if u is not None:
        a += scale[:, None] * w[None, :] * u * mask
    lse = sps.logsumexp(z, axis=1)
    mass = a.sum(1)
    zz = np.where(a != 0, z, 0.0)
    loss = mass * lse - (a * zz).sum(1) + lam * lse**2
    grad = (mass + 2 * lam * lse)[:, None] * np.exp(z - lse[:, None]) - a
    return np.where(keep, loss, 0.0), np.where(keep[:, None], grad, 0.0)


def case(seed, *, labels=True, spread=True, soft=True, exclude_true=False, masked=True):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3, size=(N, K))
    lab = rng.integers(0, K, N) if labels else None
    mask = rng.random((N, K)) > 0.2 if masked else np.ones((N, K), bool)
    if lab is not None:
        mask[np.arange(N), lab] = True
    d = dict(
        labels=lab,
        t=rng.uniform(0.5, 1.5, N) if labels else None,
        coef=rng.uniform(0.0, 0.1, N) if spread else None,
        w=rng.uniform(0.5, 2.0, K),
        u=rng.dirichlet(np.ones(K), N) if soft else None,
        scale=rng.uniform(0.2, 1.0, N) if soft else None,
        keep=rng.random(N) > 0.2,
        lam=0.01,
    )
    return z, d, mask


def target(d, spread_weights=True):
    col = (slice(None), None)
    return eng.Target(
        labels=None if d["labels"] is None else jnp.asarray(d["labels"])[col],
        t=None if d["t"] is None else jnp.asarray(d["t"])[col],
        coef=None if d["coef"] is None else jnp.asarray(d["coef"])[col],
        weights=jnp.asarray(d["w"]) if spread_weights else None,
        soft=None if d["u"] is None else jnp.asarray(d["u"]),
        scale=None if d["scale"] is None else jnp.asarray(d["scale"])[col],
        keep=jnp.asarray(d["keep"])[col],
        z_loss=jnp.asarray(d["lam"]),
    )


def ref(z, d, mask, exclude_true):
    return reference(
        z, d["labels"], d["t"], d["coef"], d["w"], d["u"], d["scale"], d["keep"],
        d["lam"], mask, exclude_true,
    )  # fmt: skip


PARTS = [
    dict(labels=True, spread=False, soft=False),
    dict(labels=True, spread=True, soft=False),
    dict(labels=True, spread=True, soft=False, exclude_true=True),
    dict(labels=False, spread=False, soft=True),
    dict(labels=False, spread=True, soft=True),
    dict(labels=True, spread=True, soft=True, masked=False),
]


@pytest.mark.parametrize("parts", PARTS)
def test_dense_value_and_gradient(parts):
    z, d, mask = case(0, **parts)
    ex = parts.get("exclude_true", False)
    tgt = target(d)
    want_l, want_g = ref(z, d, mask, ex)

    def f(x):
        return eng.dense_loss(x, tgt, axis=1, mask=jnp.asarray(mask), exclude_true=ex)[:, 0]

    np.testing.assert_allclose(f(jnp.asarray(z)), want_l, rtol=1e-12, atol=1e-13)
    g = jax.grad(lambda x: f(x).sum())(jnp.asarray(z))
    np.testing.assert_allclose(g, np.where(mask, want_g, 0), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("parts", PARTS)
@pytest.mark.parametrize("block", [1, 4])
def test_blocks_stream_and_combine_to_the_dense_rule(parts, block):
    z, d, mask = case(1, **parts)
    ex = parts.get("exclude_true", False)
    want_l, want_g = ref(z, d, mask, ex)
    st = None
    for start in range(0, K, block):
        cols = slice(start, start + block)
        tb = target(d)._replace(
            weights=jnp.asarray(d["w"][cols]),
            soft=None if d["u"] is None else jnp.asarray(d["u"][:, cols]),
        )
        part = eng.partial_stats(
            jnp.asarray(z[:, cols]), tb, axis=1, exclude_true=ex, start=start,
            mask=jnp.asarray(mask[:, cols]),
        )  # fmt: skip
        st = part if st is None else eng.combine(st, part)
    loss, lse = eng.loss_from_stats(st, target(d))
    np.testing.assert_allclose(loss[:, 0], want_l, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(
        np.where(d["keep"], lse[:, 0], 0),
        np.where(d["keep"], sps.logsumexp(np.where(mask, z, -np.inf), 1), 0),
        rtol=1e-13,
    )
    for start in range(0, K, block):
        cols = slice(start, start + block)
        tb = target(d)._replace(
            weights=jnp.asarray(d["w"][cols]),
            soft=None if d["u"] is None else jnp.asarray(d["u"][:, cols]),
        )
        g = eng.grad_logits(
            jnp.asarray(z[:, cols]), tb, lse, st, axis=1, exclude_true=ex, start=start,
            mask=jnp.asarray(mask[:, cols]),
        )  # fmt: skip
        np.testing.assert_allclose(g, np.where(mask, want_g, 0)[:, cols], rtol=1e-10, atol=1e-13)


def test_shards_combine_with_pmax_psum():
    # Four vocabulary shards as a named vmap axis: pmax/psum behave as under shard_map.
    z, d, mask = case(2, labels=True, spread=True, soft=False, masked=False)
    z = np.concatenate([z, np.full((N, 1), -np.inf)], axis=1)  # a -inf column: 12 = 4 x 3
    d["w"] = np.ones(K + 1)
    want_l, _ = reference(
        z, d["labels"], d["t"], d["coef"], d["w"], None, None, d["keep"], d["lam"],
        np.isfinite(z), False,
    )  # fmt: skip
    # The spread puts coef on the -inf class too: the reference's +inf where coef > 0.
    want_l = np.where(d["keep"] & (d["coef"] > 0), np.inf, want_l)
    shards = jnp.asarray(z.reshape(N, 4, 3).transpose(1, 0, 2))
    tgt = target(d, spread_weights=False)

    def local(zs, r):
        st = eng.partial_stats(zs, tgt, axis=1, start=r * 3)
        st = eng.combine_across(st, "v")
        return eng.loss_from_stats(st, tgt)[0][:, 0]

    out = jax.vmap(local, axis_name="v")(shards, jnp.arange(4))
    for r in range(4):
        np.testing.assert_allclose(out[r], want_l, rtol=1e-12)


def test_a_whole_block_of_minus_inf_and_an_empty_row():
    z = np.array([[-np.inf, -np.inf, 0.5, 1.0], [-np.inf, -np.inf, -np.inf, -np.inf]])
    tgt = eng.Target(labels=jnp.array([[2], [0]]), t=jnp.ones((2, 1)))
    a = eng.partial_stats(jnp.asarray(z[:, :2]), tgt, axis=1, start=0)
    b = eng.partial_stats(jnp.asarray(z[:, 2:]), tgt, axis=1, start=2)
    loss, _ = eng.loss_from_stats(eng.combine(a, b), tgt)
    np.testing.assert_allclose(loss[0, 0], sps.logsumexp([0.5, 1.0]) - 0.5, rtol=1e-13)
    assert loss[1, 0] == 0  # empty row: 0, not NaN


def test_nan_and_plus_inf_give_a_nan_row_dense_and_blocked():
    z = np.array([[0.0, np.nan, 1.0, 2.0], [0.0, np.inf, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
    tgt = eng.Target(
        labels=jnp.array([[0], [0], [0]]), t=jnp.ones((3, 1)), coef=jnp.full((3, 1), 0.1)
    )
    dense = eng.dense_loss(jnp.asarray(z), tgt, axis=1)[:, 0]
    st = eng.combine(
        eng.partial_stats(jnp.asarray(z[:, :2]), tgt, axis=1, start=0),
        eng.partial_stats(jnp.asarray(z[:, 2:]), tgt, axis=1, start=2),
    )
    blocked = eng.loss_from_stats(st, tgt)[0][:, 0]
    for out in (dense, blocked):
        assert np.isnan(out[0]) and np.isnan(out[1]) and np.isfinite(out[2])


def test_softcap_keeps_minus_inf_and_rejects_plus_inf():
    x = jnp.array([-jnp.inf, -1e3, 0.0, 2.0, jnp.inf])
    out = eng.softcap(x, jnp.asarray(5.0))
    np.testing.assert_allclose(out[1:4], 5 * np.tanh(np.array([-1e3, 0.0, 2.0]) / 5))
    assert out[0] == -np.inf and np.isnan(out[4])
    g = jax.grad(lambda x: eng.softcap(x, jnp.asarray(5.0))[1:4].sum())(x)
    np.testing.assert_allclose(g[1:4], 1 - np.tanh(np.array([-1e3, 0.0, 2.0]) / 5) ** 2)
