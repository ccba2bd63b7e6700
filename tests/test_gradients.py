"""Closed-form derivative rules: every transform agrees with autodiff of the plain definition.

* jacfwd / jacrev / jvp / hessian of each registered function against the same
  transform of its plain reference definition (jaxent.derivations), float64;
* jax.test_util.check_grads in float64;
* gradients at -inf, masked and zero-probability points: finite and equal to
  independent numpy values;
* saved residuals: one [N, K] array, never more than autodiff of the plain
  definition (as jax's tests/nn_test.py testSoftmaxGradResiduals).
"""

import contextlib
import io
import re

import _refs
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import scipy.special as sps
from jax.ad_checkpoint import print_saved_residuals

import jaxent
from jaxent import derivations as D

# Pointwise rules only: a stochastic surrogate's claim is its expected gradient
# (checked by `verify`), not its value or pointwise derivatives.
ENTRIES = [d for d in D.REGISTRY.values() if not d.surrogate]
FWD = [d for d in ENTRIES if d.forward_mode]
SECOND = [d for d in FWD if d.second_order is not False]
IDS = [d.name for d in ENTRIES]
FWD_IDS = [d.name for d in FWD]


def _args(d, seed=0):
    return tuple(
        None if a is None else jnp.asarray(a) for a in d.sample(np.random.default_rng(seed))
    )


def _close(a, b, rtol=1e-9, atol=1e-11):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("d", FWD, ids=FWD_IDS)
def test_jacfwd_jacrev_jvp_match_plain(d):
    args = _args(d)
    for transform in (jax.jacfwd, jax.jacrev):
        _close(
            transform(d.function, argnums=d.argnums)(*args),
            transform(d.plain, argnums=d.argnums)(*args),
        )
    rng = np.random.default_rng(1)
    tangents = [jnp.zeros_like(a) if a is not None else None for a in args]
    for a in d.argnums:
        tangents[a] = jnp.asarray(rng.normal(size=np.shape(args[a])))

    def restrict(f):
        return lambda *xs: f(*[xs[d.argnums.index(i)] if i in d.argnums else a
                               for i, a in enumerate(args)])  # fmt: skip

    primals = tuple(args[a] for a in d.argnums)
    tans = tuple(tangents[a] for a in d.argnums)
    out, t = jax.jvp(restrict(d.function), primals, tans)
    out_ref, t_ref = jax.jvp(restrict(d.plain), primals, tans)
    _close((out, t), (out_ref, t_ref))


@pytest.mark.parametrize("d", SECOND, ids=[d.name for d in SECOND])
def test_hessian_matches_plain(d):
    args = _args(d, seed=2)
    a = d.argnums[0]
    _close(
        jax.hessian(d.function, argnums=a)(*args),
        jax.hessian(d.plain, argnums=a)(*args),
        rtol=1e-8,
        atol=1e-10,
    )


@pytest.mark.parametrize("d", ENTRIES, ids=IDS)
def test_check_grads(d):
    args = _args(d, seed=3)
    nums = d.argnums

    def f(*xs):
        full = list(args)
        for i, x in zip(nums, xs, strict=True):
            full[i] = x
        return d.function(*full)

    # order 1: second derivatives are compared exactly in test_hessian_matches_plain.
    modes = ["fwd", "rev"] if d.forward_mode else ["rev"]
    jax.test_util.check_grads(
        f, tuple(args[i] for i in nums), order=1, modes=modes, eps=1e-5, atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("d", [d for d in ENTRIES if not d.forward_mode], ids=lambda d: d.name)
def test_custom_vjp_functions_reverse_mode_matches_plain(d):
    args = _args(d, seed=4)
    _close(
        jax.jacrev(d.function, argnums=d.argnums)(*args),
        jax.jacrev(d.plain, argnums=d.argnums)(*args),
    )


def test_jit_and_vmap_of_gradients():
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(6, 4)))
    lab = jnp.asarray(rng.integers(0, 4, size=6))
    f = lambda z, y: jaxent.softmax_cross_entropy_with_integer_labels(z, y)  # noqa: E731
    g_batch = jax.jit(jax.grad(lambda z: f(z, lab).sum()))(z)
    g_rows = jax.vmap(jax.grad(f))(z, lab)
    _close(g_batch, g_rows)
    _close(g_batch, _refs.softmax(z) - np.eye(4)[lab])


# --------------------------------------------------------------------------- closed forms vs numpy


def test_softmax_cross_entropy_gradient_is_sum_y_times_p_minus_y():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(5, 7))
    y = rng.dirichlet(np.ones(7), size=5) * rng.uniform(0.5, 2, size=(5, 1))
    g = jax.grad(lambda z: jaxent.softmax_cross_entropy(z, jnp.asarray(y)).sum())(jnp.asarray(z))
    _close(g, y.sum(-1, keepdims=True) * _refs.softmax(z) - y)


@pytest.mark.parametrize("labels", ["soft", "integer"])
def test_hessian_of_cross_entropy_is_diag_p_minus_ppT(labels):
    rng = np.random.default_rng(7)
    z = rng.normal(size=6)
    if labels == "soft":
        y = jnp.asarray(rng.dirichlet(np.ones(6)))
        f = lambda z: jaxent.softmax_cross_entropy(z, y)  # noqa: E731
    else:
        f = lambda z: jaxent.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(2))  # noqa: E731
    p = _refs.softmax(z)
    expected = np.diag(p) - np.outer(p, p)
    for h in (jax.hessian(f)(jnp.asarray(z)), jax.jacrev(jax.jacrev(f))(jnp.asarray(z))):
        _close(h, expected)


def test_integer_labels_gradient_with_weights_ignore_index_and_z_loss():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(6, 5))
    lab = np.array([0, -100, 4, 2, -100, 1])
    cw = rng.uniform(0.5, 2, size=5)
    zl = 0.1
    f = lambda z: jaxent.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        z, jnp.asarray(lab), ignore_index=-100, class_weights=jnp.asarray(cw), z_loss=zl
    ).sum()
    p = _refs.softmax(z)
    lse = sps.logsumexp(z, axis=-1, keepdims=True)
    keep = (lab != -100)[:, None]
    w = cw[np.clip(lab, 0, 4)][:, None]
    onehot = np.eye(5)[np.clip(lab, 0, 4)]
    expected = np.where(keep, w * (p - onehot) + 2 * zl * lse * p, 0.0)
    _close(jax.grad(f)(jnp.asarray(z)), expected)
    _close(jax.jacfwd(f)(jnp.asarray(z)), expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sigmoid_bce_gradient_keeps_tiny_values(dtype):
    # PyTorch returns 0.0 at z = 50, y = 1; the true value is -sigmoid(-50) = -1.93e-22.
    z = jnp.asarray([50.0, -50.0, 80.0, -80.0], dtype)
    y = jnp.asarray([1.0, 0.0, 1.0, 0.0], dtype)
    g = jax.grad(lambda z: jaxent.sigmoid_binary_cross_entropy(z, y).sum())(z)
    expected = np.array([-sps.expit(-50.0), sps.expit(-50.0), -sps.expit(-80.0), sps.expit(-80)])
    assert g.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float64), expected, rtol=1e-6)
    assert float(g[0]) != 0.0


def test_sigmoid_bce_pos_weight_gradient():
    rng = np.random.default_rng(9)
    z, y = rng.normal(size=8) * 4, rng.uniform(size=8)
    w = rng.uniform(0.5, 3, size=8)
    g = jax.grad(
        lambda z: jaxent.sigmoid_binary_cross_entropy(z, jnp.asarray(y), pos_weight=w).sum()
    )(jnp.asarray(z))
    _close(g, (1 - y) * sps.expit(z) - w * y * sps.expit(-z))


def test_entropy_from_logits_and_kl_from_logits_gradients():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    p, q = _refs.softmax(a), _refs.softmax(b)
    h = -(p * np.log(p)).sum(-1, keepdims=True)
    g = jax.grad(lambda z: jaxent.entropy_from_logits(z).sum())(jnp.asarray(a))
    _close(g, -p * (np.log(p) + h))
    d = (p * np.log(p / q)).sum(-1, keepdims=True)
    ga, gb = jax.grad(lambda a, b: jaxent.kl_divergence_from_logits(a, b).sum(), argnums=(0, 1))(
        jnp.asarray(a), jnp.asarray(b)
    )
    _close(ga, p * (np.log(p) - np.log(q) - d))
    _close(gb, q - p)


# --------------------------------------------------------------------------- special points


Z = np.array([[1.0, -np.inf, 0.5, -2.0, -np.inf], [0.3, 0.1, -0.2, 2.0, 1.0]])
MASK = np.array([[True, True, True, True, True], [True, False, True, False, True]])


def _finite_grads(f, *args, argnums=0):
    g = jax.grad(lambda *a: jnp.sum(f(*a)), argnums=argnums)(*args)
    for leaf in jax.tree.leaves(g):
        assert np.all(np.isfinite(np.asarray(leaf))), g
    return g


def test_logits_functions_at_minus_inf_and_masked_entries():
    z = jnp.asarray(Z)
    removed = np.isinf(Z) | ~MASK
    p = _refs.softmax(Z, where=MASK)
    y = jnp.asarray(np.where(removed, 0.0, 0.25))
    for f in (
        lambda z: jaxent.logsumexp(z, where=MASK),
        lambda z: jaxent.entropy_from_logits(z, where=MASK),
        lambda z: jaxent.softmax_cross_entropy(z, y, where=MASK),
        lambda z: jaxent.softmax_cross_entropy_with_integer_labels(
            z, jnp.array([0, 2]), where=MASK
        ),
        lambda z: jaxent.kl_divergence_from_logits(z, jnp.zeros_like(z), where=MASK),
        lambda z: jaxent.js_divergence_from_logits(z, jnp.zeros_like(z), where=MASK),
        lambda z: jaxent.softmax(z, where=MASK)[:, 0],
        lambda z: jaxent.log_softmax(z, where=MASK)[:, 0],
    ):
        g = np.asarray(_finite_grads(f, z))
        np.testing.assert_array_equal(g[removed], 0.0)
    g = _finite_grads(lambda z: jaxent.softmax_cross_entropy(z, y, where=MASK), z)
    _close(g, y.sum(-1, keepdims=True) * p - y)


def test_fully_masked_rows_give_zero_loss_and_zero_gradient():
    z = jnp.asarray(np.random.default_rng(11).normal(size=(2, 4)))
    rows = jnp.array([False, True])
    y = jnp.full((2, 4), 0.25)
    for f in (
        lambda z: jaxent.softmax_cross_entropy(z, y, where=rows),
        lambda z: jaxent.softmax_cross_entropy_with_integer_labels(
            z, jnp.array([1, 1]), where=rows
        ),
        lambda z: jaxent.entropy_from_logits(z, where=rows),
        lambda z: jaxent.kl_divergence_from_logits(z, -z, where=rows),
    ):
        assert float(f(z)[0]) == 0.0
        g = _finite_grads(f, z)
        np.testing.assert_array_equal(np.asarray(g[0]), 0.0)
    h = jax.hessian(lambda z: jnp.sum(f(z)))(z)  # the last one: KL from logits
    assert np.all(np.isfinite(np.asarray(h)))
    np.testing.assert_array_equal(np.asarray(h[0]), 0.0)


def test_probability_functions_at_zero_probabilities():
    p = np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    q = np.array([0.2, 0.3, 0.3, 0.2, 0.0])
    pj, qj = jnp.asarray(p), jnp.asarray(q)
    g = _finite_grads(jaxent.entropy, pj)
    _close(g, np.where(p > 0, -(np.log(np.where(p > 0, p, 1)) + 1), 0.0))
    gp, gq = _finite_grads(jaxent.kl_divergence, pj, qj, argnums=(0, 1))
    _close(gp, np.where(p > 0, np.log(np.where(p > 0, p / np.where(q > 0, q, 1), 1)) + 1, 0))
    _close(gq, np.where(p > 0, -p / np.where(q > 0, q, 1), 0.0))
    gp, gq = _finite_grads(jaxent.cross_entropy, pj, qj, argnums=(0, 1))
    # dH/dp_i = -log q_i, 0 at the p = q = 0 corner; dH/dq_i = -p_i/q_i, 0 where p_i = 0.
    _close(gp, np.where(q > 0, -np.log(np.where(q > 0, q, 1)), 0.0))
    _close(gq, np.where(p > 0, -p / np.where(q > 0, q, 1), 0.0))
    beta = 0.5
    gp, gq = _finite_grads(jaxent.js_divergence, pj, qj, argnums=(0, 1))
    m = beta * p + (1 - beta) * q
    with np.errstate(divide="ignore", invalid="ignore"):
        exp_p = np.where(p > 0, beta * np.log(p / m), np.where(q > 0, -beta, 0.0))
    _close(gp, exp_p)
    g = _finite_grads(jaxent.binary_entropy, jnp.array([0.0, 1.0, 0.5]))
    _close(g, np.array([1.0, -1.0, 0.0]), atol=1e-15)


def test_kl_from_logits_infinite_rows_have_zero_p_gradient():
    a = jnp.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    b = jnp.array([[0.0, -jnp.inf, 1.0], [0.5, 0.0, 1.0]])
    assert np.isinf(float(jaxent.kl_divergence_from_logits(a, b)[0]))
    ga, gb = _finite_grads(
        lambda a, b: jnp.where(jnp.isfinite(jaxent.kl_divergence_from_logits(a, b)),
                               jaxent.kl_divergence_from_logits(a, b), 0.0),
        a, b, argnums=(0, 1),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(ga[0]), 0.0)
    p, q = _refs.softmax(np.asarray(a)), _refs.softmax(np.asarray(b))
    _close(gb[1], q[1] - p[1])


# --------------------------------------------------------------------------- residuals


def _residuals(f, *args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_saved_residuals(f, *args)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    shapes = []
    for ln in lines:
        m = re.match(r"\w+\[([\d,]*)\]", ln)
        shapes.append(tuple(int(s) for s in m.group(1).split(",") if s) if m else ())
    return shapes


N, C = 4, 7
_RNG = np.random.default_rng(12)
_Zr = jnp.asarray(_RNG.normal(size=(N, C)))
_Yr = jnp.asarray(_RNG.dirichlet(np.ones(C), size=N))
_LAB = jnp.asarray([0, 3, 6, 2])

RESIDUAL_CASES = {
    "softmax": (lambda z: jaxent.softmax(z), lambda z: D._plain_softmax(z), _Zr),
    "log_softmax": (lambda z: jaxent.log_softmax(z), lambda z: D._plain_log_softmax(z), _Zr),
    "logsumexp": (lambda z: jaxent.logsumexp(z), lambda z: D._plain_lse(z), _Zr),
    "softmax_cross_entropy": (
        lambda z: jaxent.softmax_cross_entropy(z, _Yr),
        lambda z: -jnp.sum(_Yr * D._plain_log_softmax(z), -1),
        _Zr,
    ),
    "softmax_cross_entropy_with_integer_labels": (
        lambda z: jaxent.softmax_cross_entropy_with_integer_labels(z, _LAB),
        lambda z: D._plain_lse(z)[:, 0] - jnp.take_along_axis(z, _LAB[:, None], 1)[:, 0],
        _Zr,
    ),
    "entropy_from_logits": (
        lambda z: jaxent.entropy_from_logits(z),
        lambda z: -jnp.sum(D._plain_softmax(z) * D._plain_log_softmax(z), -1),
        _Zr,
    ),
    "kl_divergence_from_logits[q_logits]": (
        lambda b: jaxent.kl_divergence_from_logits(_Zr, b),
        lambda b: jnp.sum(
            D._plain_softmax(_Zr) * (D._plain_log_softmax(_Zr) - D._plain_log_softmax(b)), -1
        ),  # noqa: E501
        -_Zr,
    ),
    "kl_divergence_from_logits[p_logits]": (
        lambda a: jaxent.kl_divergence_from_logits(a, _Zr),
        lambda a: jnp.sum(
            D._plain_softmax(a) * (D._plain_log_softmax(a) - D._plain_log_softmax(_Zr)), -1
        ),  # noqa: E501
        -_Zr,
    ),
    "js_divergence_from_logits": (
        lambda a: jaxent.js_divergence_from_logits(a, _Zr),
        lambda a: jax.vmap(lambda x, y: D._plain_js(D._plain_softmax(x), D._plain_softmax(y), 0.5))(
            a, _Zr
        ),  # noqa: E501
        -_Zr,
    ),
    "entropy": (lambda p: jaxent.entropy(p), lambda p: -jnp.sum(p * jnp.log(p), -1), _Yr),
    "kl_divergence": (
        lambda p: jaxent.kl_divergence(p, _Yr[::-1]),
        lambda p: jnp.sum(p * jnp.log(p / _Yr[::-1]), -1),
        _Yr,
    ),
    "sigmoid_binary_cross_entropy": (
        lambda z: jaxent.sigmoid_binary_cross_entropy(z, _Yr),
        lambda z: (1 - _Yr) * jax.nn.softplus(z) + _Yr * jax.nn.softplus(-z),
        _Zr,
    ),
}
RESIDUAL_CASES["binary_cross_entropy"] = (
    lambda p: jaxent.binary_cross_entropy(p, _Yr),
    lambda p: -(_Yr * jnp.log(p) + (1 - _Yr) * jnp.log1p(-p)),
    _Yr[::-1],
)


@pytest.mark.parametrize("name", list(RESIDUAL_CASES))
def test_saves_one_full_size_residual(name):
    f, _, x = RESIDUAL_CASES[name]
    full = [s for s in _residuals(f, x) if s == x.shape]
    assert len(full) == 1, _residuals(f, x)


@pytest.mark.parametrize("name", list(RESIDUAL_CASES))
def test_saves_no_more_than_autodiff_of_the_plain_definition(name):
    f, plain, x = RESIDUAL_CASES[name]
    mine, ref = _residuals(f, x), _residuals(plain, x)
    assert len(mine) <= len(ref)
    assert sum(int(np.prod(s)) for s in mine) <= sum(int(np.prod(s)) for s in ref)
