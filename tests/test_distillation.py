"""sparse_kl_divergence against float64 numpy references (value, closed-form gradients, FD)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxent

x64 = pytest.mark.x64
V, K = 9, 4


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    finite = z > -np.inf
    if not finite.any():
        return np.full_like(z, -np.inf)
    m = z[finite].max()
    return z - m - np.log(np.sum(np.exp(z[finite] - m)))


def ref_row(z, idx, t, tail, mask=None, temperature=1.0):
    """One row, float64, written from the definitions (no jaxent)."""
    z = np.asarray(z, np.float64) / temperature
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    entries = [(int(i), float(lt)) for i, lt in zip(idx, t, strict=True) if 0 <= i < len(z)]
    log_q_full = np_log_softmax(z)
    q_full = np.exp(log_q_full)
    if tail == "renormalize":
        if not entries:
            return 0.0
        lp = np_log_softmax(np.array([lt for _, lt in entries]))
        lq = np_log_softmax(np.array([z[i] for i, _ in entries]))
        return sum(np.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True) if a > -np.inf)
    in_set = np.zeros(len(z), bool)
    for i, _ in entries:
        in_set[i] = True
    total = 0.0
    for i, lt in entries:
        if lt > -np.inf:
            total += np.exp(lt) * (lt - log_q_full[i])
    p_tail = max(1.0 - sum(np.exp(lt) for _, lt in entries), 0.0)
    q_tail = q_full[~in_set].sum()
    if p_tail > 0:
        total += p_tail * (np.log(p_tail) - np.log(q_tail)) if q_tail > 0 else np.inf
    return total


def ref_grad_z(z, idx, t, tail, temperature=1.0):
    """Closed forms of d/dz, written out independently (one row, no mask)."""
    z = np.asarray(z, np.float64) / temperature
    g = np.zeros(len(z))
    valid = [(int(i), float(lt)) for i, lt in zip(idx, t, strict=True) if 0 <= i < len(z)]
    sm = np.exp(np_log_softmax(z))
    if tail == "renormalize":
        sel = [i for i, _ in valid]
        q = sm[sel] / sm[sel].sum()
        p = np.exp(np_log_softmax(np.array([lt for _, lt in valid])))
        for j, i in enumerate(sel):
            g[i] += q[j] - p[j]
        return g / temperature
    in_set = np.zeros(len(z), bool)
    p_sum = 0.0
    for i, lt in valid:
        in_set[i] = True
        g[i] -= np.exp(lt)
        p_sum += np.exp(lt)
    p_tail = max(1.0 - p_sum, 0.0)
    q_tail = sm[~in_set].sum()
    g += sm * (p_sum + p_tail)
    g[~in_set] -= sm[~in_set] * p_tail / q_tail
    return g / temperature


def sample(seed, b=3, distinct=True):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, size=(b, V))
    teacher = rng.normal(0, 2, size=(b, V))
    lt = np.stack([np_log_softmax(r) for r in teacher])
    idx = np.argsort(-lt, axis=-1)[:, :K]
    t = np.take_along_axis(lt, idx, -1)
    return z, idx, t


TAILS = ["renormalize", "bucket"]


@x64
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("temperature", [None, 2.0])
def test_value_and_gradients_vs_numpy(tail, temperature):
    z, idx, t = sample(0)
    temp = 1.0 if temperature is None else temperature
    want = [ref_row(z[b], idx[b], t[b], tail, temperature=temp) for b in range(3)]
    got = jaxent.sparse_kl_divergence(z, idx, t, tail=tail, temperature=temperature)
    np.testing.assert_allclose(got, want, rtol=1e-12)

    def f(z, t):
        return jnp.sum(jaxent.sparse_kl_divergence(z, idx, t, tail=tail, temperature=temperature))

    gz, gt = jax.grad(f, argnums=(0, 1))(z, t)
    want_gz = np.stack([ref_grad_z(z[b], idx[b], t[b], tail, temp) for b in range(3)])
    np.testing.assert_allclose(gz, want_gz, rtol=1e-10, atol=1e-14)
    # teacher gradient and forward mode against central differences of the reference
    h = 1e-6
    fd_t = np.zeros_like(t)
    for i in np.ndindex(t.shape):
        e = np.zeros_like(t)
        e[i] = h
        b = i[0]
        fd_t[i] = (
            ref_row(z[b], idx[b], (t + e)[b], tail, temperature=temp)
            - ref_row(z[b], idx[b], (t - e)[b], tail, temperature=temp)
        ) / (2 * h)
    np.testing.assert_allclose(gt, fd_t, rtol=1e-6, atol=1e-8)
    v = np.random.default_rng(1).normal(size=z.shape)
    jvp = jax.jvp(lambda z: f(z, t), (z,), (v,))[1]
    np.testing.assert_allclose(jvp, np.sum(want_gz * v), rtol=1e-10)


@x64
@pytest.mark.parametrize("tail", TAILS)
def test_padding_neg_inf_teacher_and_axis(tail):
    z, idx, t = sample(2)
    idx = idx.copy()
    t = t.copy()
    idx[0, 3] = -1  # padding: dropped from both sides
    idx[1, 2] = V  # out of range: dropped
    t[2, 3] = -np.inf  # zero teacher mass: 0 log 0
    want = [ref_row(z[b], idx[b], t[b], tail) for b in range(3)]
    got = jaxent.sparse_kl_divergence(z, idx, t, tail=tail)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    g = jax.grad(lambda z: jnp.sum(jaxent.sparse_kl_divergence(z, idx, t, tail=tail)))(z)
    want_g = np.stack([ref_grad_z(z[b], idx[b], t[b], tail) for b in range(3)])
    np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-14)
    # axis=0 equals moveaxis
    got0 = jaxent.sparse_kl_divergence(z.T, idx.T, t.T, axis=0, tail=tail)
    np.testing.assert_allclose(got0, want, rtol=1e-12)


@x64
@pytest.mark.parametrize("tail", TAILS)
def test_masks_and_infinite_values(tail):
    z, idx, t = sample(3)
    mask = np.ones((3, V), bool)
    mask[0, idx[0, 0]] = False  # a teacher class removed from the student: +inf
    mask[1, :] = True
    mask[2, [j for j in range(V) if j not in idx[2]][:2]] = False  # outside S only
    got = jaxent.sparse_kl_divergence(z, idx, t, where=mask, tail=tail)
    want = [ref_row(z[b], idx[b], t[b], tail, mask=mask[b]) for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == np.inf
    g = jax.jacrev(lambda z: jaxent.sparse_kl_divergence(z, idx, t, where=mask, tail=tail))(z)
    assert np.all(np.isfinite(g))
    for b in range(3):  # removed classes get 0
        np.testing.assert_array_equal(g[b, b][~mask[b]], 0.0)
    gt = jax.grad(lambda t: jnp.sum(jaxent.sparse_kl_divergence(z, idx, t, where=mask, tail=tail)))(
        t
    )
    assert np.all(np.isfinite(gt)) and np.all(gt[0] == 0)
    # a -inf student logit behaves like a removed class
    z_inf = np.where(mask, z, -np.inf)
    np.testing.assert_allclose(
        jaxent.sparse_kl_divergence(z_inf, idx, t, tail=tail), got, rtol=1e-12
    )
    # row mask: 0 with gradient 0
    rows = np.array([True, False, True])
    out = jaxent.sparse_kl_divergence(z, idx, t, where=rows, tail=tail)
    assert out[1] == 0
    gr = jax.grad(lambda z: jnp.sum(jaxent.sparse_kl_divergence(z, idx, t, where=rows, tail=tail)))(
        z
    )
    np.testing.assert_array_equal(gr[1], 0.0)


@pytest.mark.parametrize("tail", TAILS)
def test_float32_jit_vmap_and_bfloat16(tail):
    z, idx, t = sample(4, b=6)
    want = np.array([ref_row(z[b], idx[b], t[b], tail) for b in range(6)])
    z32, t32 = z.astype(np.float32), t.astype(np.float32)
    f = jax.jit(lambda z, i, t: jaxent.sparse_kl_divergence(z, i, t, tail=tail))
    got = f(z32, idx, t32)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(f)(z32, idx, t32), want, rtol=1e-5, atol=1e-6)
    # bfloat16 in, bfloat16 out, computed in float32: the gradient of the rounded
    # inputs matches float64 closely (the student close to the teacher).
    zb = jnp.asarray(z32).astype(jnp.bfloat16)
    tb = jnp.asarray(t32).astype(jnp.bfloat16)
    out = jaxent.sparse_kl_divergence(zb, idx, tb, tail=tail)
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
    g = jax.grad(
        lambda z: jnp.sum(jaxent.sparse_kl_divergence(z, idx, tb, tail=tail).astype(jnp.float32))
    )(zb)
    zr = np.asarray(zb.astype(jnp.float32), np.float64)
    tr = np.asarray(tb.astype(jnp.float32), np.float64)
    want_g = np.stack([ref_grad_z(zr[b], idx[b], tr[b], tail) for b in range(6)])
    np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), want_g, atol=1e-2)


def test_errors():
    z = np.zeros((2, V), np.float32)
    idx = np.zeros((2, K), np.int32)
    t = np.zeros((2, K), np.float32)
    with pytest.raises(ValueError, match="tail"):
        jaxent.sparse_kl_divergence(z, idx, t, tail="drop")
    with pytest.raises(ValueError, match="teacher_indices"):
        jaxent.sparse_kl_divergence(z, idx[:1], t[:1])
    with pytest.raises(ValueError, match="teacher_log_probs"):
        jaxent.sparse_kl_divergence(z, idx, t[:, :2])
    with pytest.raises(TypeError, match="teacher_indices"):
        jaxent.sparse_kl_divergence(z, t, t)
    with pytest.raises(ValueError, match="temperature"):
        jaxent.sparse_kl_divergence(z, idx, t, temperature=-1.0)
