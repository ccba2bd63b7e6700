"""Extreme values x dtypes x every public function.

For each dtype in {float16, bfloat16, float32, float64} and each public
function, one batch holds one edge case per row (ordinary values, +-1e4,
+-"huge", -inf entries, a fully masked row, zero probabilities, one-hot
targets) and a second call covers K = 1. For every row:

* the value and the gradient (a VJP with a fixed random cotangent) contain no
  NaN (the inputs are all inside the domain), and are finite wherever the
  float64 result is finite;
* the output dtype is the documented one (the promoted input dtype);
* value and gradient equal the float64 computation *on the same rounded
  inputs*, cast to the dtype, within a per-dtype tolerance (TOL below). The
  float64 path is itself checked against numpy/scipy definitions in
  ``tests/properties`` and the family tests, and directly here at the extremes
  (``test_float64_extremes_match_numpy``).

"Huge" is 3e38 for float32/bfloat16/float64 and 6e4 for float16, whose
largest finite value is 65504 (3e38 is not representable there).

The module runs under x64 (``pytestmark``): its reference is jaxent's own
float64 path. Every input is typed explicitly, so the low-precision rows test
the same code as in the default configuration; the default (x64 off)
configuration itself is covered by ``tests/test_differential.py``, which runs
both. A public function without a SPECS entry still gets the generic check
``test_new_functions_keep_the_input_dtype`` (inputs built from argument names).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_static_checks
from scipy import special

import jaxent

pytestmark = pytest.mark.x64

DTYPES = {
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "float32": jnp.float32,
    "float64": jnp.float64,
}
#: (rtol, atol) of value and gradient against float64 on the same rounded inputs.
#: The output is rounded once to the dtype (2^-11 for float16, 2^-8 for bfloat16),
#: computation runs in >= float32.
TOL = {
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
    "float32": (2e-5, 2e-5),
    "float64": (1e-12, 1e-12),
}
HUGE = {"float16": 6e4, "bfloat16": 3e38, "float32": 3e38, "float64": 3e38}
NINF = -np.inf
K = 5
SEED = 7


def _rng():
    return np.random.default_rng(SEED)


# --------------------------------------------------------------------------- edge-case rows


def logit_rows(h):
    """Rows of logits (K = 5); the row names index the failure messages."""
    rng = _rng()
    return {
        "ordinary": rng.normal(size=K) * 2,
        "pm1e4": np.array([1e4, -1e4, 0.0, 5e3, -5e3]),
        "pm_huge": np.array([h, -h, 0.0, h / 2, -h / 2]),
        "neg_inf": np.array([0.0, NINF, 1.0, NINF, 2.0]),
        "masked_row": rng.normal(size=K),  # removed by the row mask
        "one_hot_like": np.array([60.0, 0.0, 0.0, 0.0, 0.0]),
    }


def prob_rows():
    rng = _rng()
    x = rng.random(K) + 0.1
    return {
        "ordinary": x / x.sum(),
        "zeros": np.array([0.5, 0.0, 0.25, 0.0, 0.25]),
        "one_hot": np.array([0.0, 0.0, 1.0, 0.0, 0.0]),
        "near_one_hot": np.array([1 - 4e-3, 1e-3, 1e-3, 1e-3, 1e-3]),
        "masked_row": np.full(K, 0.2),
        "near_uniform": np.array([0.2, 0.2 + 1e-3, 0.2 - 1e-3, 0.2, 0.2]),
    }


def prob_rows_q():
    rng = _rng()
    x = rng.random(K) + 0.1
    y = x[::-1] / x.sum()
    return {
        "ordinary": y,
        "zeros": np.array([0.25, 0.25, 0.0, 0.25, 0.25]),  # q = 0 where p > 0 -> +inf
        "one_hot": np.array([0.1, 0.1, 0.6, 0.1, 0.1]),
        "near_one_hot": np.array([0.2, 0.2, 0.2, 0.2, 0.2]),
        "masked_row": np.array([1.0, 0.0, 0.0, 0.0, 0.0]),
        "near_uniform": np.array([0.2, 0.2, 0.2, 0.2 + 1e-3, 0.2 - 1e-3]),
    }


def _stack(d):
    return list(d), np.stack(list(d.values()))


ROW_MASK = np.array([n != "masked_row" for n in logit_rows(1.0)])
INT_LABELS = np.array([0, 1, 2, 1, 0, 0])  # neg_inf row: label on a -inf logit -> +inf


# --------------------------------------------------------------------------- specs
#
# A spec returns (row names, float args (differentiated), other args, kwargs) for
# (dtype name, K=1?). float args are float64 numpy arrays, rounded to the dtype
# by the test.


def _logits1(dt, k1):
    if k1:
        h = HUGE[dt]
        return (
            ["ordinary", "pm1e4", "pm_huge", "neg_inf"],
            [np.array([[0.3], [1e4], [-h], [NINF]])],
            [],
            {},
        )
    names, z = _stack(logit_rows(HUGE[dt]))
    return names, [z], [], {"where": ROW_MASK}


def _logits2(dt, k1):
    names, (z,), _, kw = _logits1(dt, k1)
    return names, [z, z[:, ::-1].copy()], [], kw


def _probs2(dt, k1):
    if k1:
        return ["k1"], [np.array([[1.0]]), np.array([[1.0]])], [], {}
    names, p = _stack(prob_rows())
    _, q = _stack(prob_rows_q())
    return names, [p, q], [], {"where": ROW_MASK}


def _probs1(dt, k1):
    names, (p, _), _, kw = _probs2(dt, k1)
    return names, [p], [], kw


def _softmax_ce(dt, k1):
    names, (z,), _, kw = _logits1(dt, k1)
    if k1:
        return names, [z, np.ones_like(z)], [], kw
    _, y = _stack(prob_rows())
    return names, [z, y], [], kw


def _int_ce(dt, k1):
    names, (z,), _, kw = _logits1(dt, k1)
    labels = np.zeros(len(names), np.int32) if k1 else INT_LABELS.astype(np.int32)
    return names, [z], [labels], kw


def _elementwise_p(dt, k1):
    names = ["ordinary", "zero", "one", "tiny", "half", "near_one"]
    p = np.array([0.3, 0.0, 1.0, 1e-30, 0.5, 1 - 1e-3])
    return names, [p], [], {}


def _bce(dt, k1):
    names, (p,), _, _ = _elementwise_p(dt, k1)
    y = np.array([0.7, 0.0, 1.0, 0.0, 1.0, 1.0])
    return names, [p, y], [], {}


def _sigmoid_bce(dt, k1):
    h = HUGE[dt]
    names = ["ordinary", "z50_y1", "zm50_y0", "pm1e4", "m1e4", "huge", "m_huge", "ninf", "pinf"]
    z = np.array([0.5, 50.0, -50.0, 1e4, -1e4, h, -h, NINF, np.inf])
    y = np.array([0.3, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    return names, [z, y], [], {}


def _gaussian(dt, k1):
    h = HUGE[dt]
    rng = _rng()
    names = ["ordinary", "pm1e4", "pm_huge", "tiny_std"]
    mp = np.stack([rng.normal(size=K), np.full(K, 1e4), np.full(K, h / 4), np.zeros(K)])
    mq = np.stack([rng.normal(size=K), np.full(K, -1e4), np.full(K, -h / 4), np.full(K, 1e-2)])
    sp = np.stack([rng.random(K) + 0.5, np.ones(K), np.ones(K), np.full(K, 1e-2)])
    sq = np.stack([rng.random(K) + 0.5, np.full(K, 2.0), np.ones(K), np.full(K, 2e-2)])
    return names, [mp, sp, mq, sq], [], {}


def _kl_estimate(dt, k1):
    names = ["ordinary", "big", "q_ninf", "equal"]
    lp = np.array([-0.7, -3.0, -0.5, -1.2])
    lq = np.array([-1.1, -1e4, NINF, -1.2])
    return names, [lp, lq], [], {}


def _weighted_mean(dt, k1):
    names = ["all"]
    lo = np.array([[0.5, 1e4, 0.0, 3.0]])
    w = np.array([[1.0, 0.5, 0.0, 2.0]])
    return names, [lo], [], {"weights": w}


def _smooth_labels(dt, k1):
    names, (p,), _, _ = _probs1(dt, k1)
    return names, [p], [], {"epsilon": 0.1}


def _label_smoothed_ce(dt, k1):
    names, (z,), (labels,), kw = _int_ce(dt, k1)
    return names, [z], [labels], {**kw, "epsilon": 0.1}


def _linear_ce(dt, k1):
    rng = _rng()
    names = ["ordinary", "pm1e4", "masked_row", "neg_big"]
    h = np.stack([rng.normal(size=3), np.array([1e2, -1e2, 0.0]), rng.normal(size=3), -np.ones(3)])
    w = rng.normal(size=(3, 1 if k1 else K)) * 0.5
    w[:, 0] = 1.0 if k1 else w[:, 0]
    w[0, :] = 100.0  # row pm1e4 gets logits of +-1e4
    return names, [h, w], [np.zeros(4, np.int32)], {"where": np.array([1, 1, 0, 1], bool)}


SPECS = {
    "softmax": (jaxent.softmax, _logits1),
    "log_softmax": (jaxent.log_softmax, _logits1),
    "logsumexp": (jaxent.logsumexp, _logits1),
    "entropy_from_logits": (jaxent.entropy_from_logits, _logits1),
    "kl_divergence_from_logits": (jaxent.kl_divergence_from_logits, _logits2),
    "js_divergence_from_logits": (jaxent.js_divergence_from_logits, _logits2),
    "entropy": (jaxent.entropy, _probs1),
    "cross_entropy": (jaxent.cross_entropy, _probs2),
    "kl_divergence": (jaxent.kl_divergence, _probs2),
    "js_divergence": (jaxent.js_divergence, _probs2),
    "softmax_cross_entropy": (jaxent.softmax_cross_entropy, _softmax_ce),
    "softmax_cross_entropy_with_integer_labels": (
        jaxent.softmax_cross_entropy_with_integer_labels,
        _int_ce,
    ),
    "logit": (jaxent.logit, _elementwise_p),
    "self_information": (jaxent.self_information, _elementwise_p),
    "binary_entropy": (jaxent.binary_entropy, _elementwise_p),
    "binary_cross_entropy": (jaxent.binary_cross_entropy, _bce),
    "sigmoid_binary_cross_entropy": (jaxent.sigmoid_binary_cross_entropy, _sigmoid_bce),
    "kl_divergence_diag_gaussian": (jaxent.kl_divergence_diag_gaussian, _gaussian),
    "kl_estimate": (jaxent.kl_estimate, _kl_estimate),
    "weighted_mean": (jaxent.weighted_mean, _weighted_mean),
    "smooth_labels": (jaxent.smooth_labels, _smooth_labels),
    "label_smoothed_cross_entropy": (jaxent.label_smoothed_cross_entropy, _label_smoothed_ce),
    "linear_cross_entropy": (jaxent.linear_cross_entropy, _linear_ce),
}
#: Functions that are covered elsewhere in this file rather than by SPECS.
OTHER = {
    "with_label_smoothing": "test_with_label_smoothing_matrix",
    "optimal_logit_gap": "test_optimal_logit_gap_dtypes",
    "vocab_parallel_cross_entropy": "needs shard_map over devices: tests/test_large_vocab.py",
    "vocab_parallel_linear_cross_entropy": "needs shard_map: tests/test_large_vocab.py",
    "vocab_parallel_log_prob_and_entropy": "needs shard_map: tests/test_sharding.py (bf16 mesh)",
    "vocab_parallel_kl_divergence": "needs shard_map: tests/test_sharding.py (bf16 mesh)",
}


def test_every_public_function_is_in_the_matrix():
    import inspect

    public = {
        n
        for n in dir(jaxent)
        if not n.startswith("_")
        and inspect.isfunction(getattr(jaxent, n))
        and getattr(jaxent, n).__module__.startswith("jaxent._")
        and n not in ("checked", "verify")
    }
    assert set(SPECS) | set(OTHER) <= public | {"kl_estimate"}, set(SPECS) - public
    generic = public - set(SPECS) - set(OTHER)
    assert generic <= set(test_static_checks.PUBLIC), generic - set(test_static_checks.PUBLIC)


def _generic():
    import inspect

    return sorted(
        n
        for n in test_static_checks.PUBLIC
        if n not in SPECS and n not in OTHER and inspect.isfunction(getattr(jaxent, n))
    )


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", _generic())
def test_new_functions_keep_the_input_dtype(name, dt):
    """Functions without a SPECS entry: no NaN, floating outputs in the input dtype."""
    dtype = DTYPES[dt]
    out = test_static_checks._call(name, _dtype=dtype)
    if callable(out):
        return
    for leaf in jax.tree.leaves(out):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype, (name, leaf.dtype)
            assert not np.isnan(np.asarray(leaf, np.float64)).any(), (name, leaf)


def _run(name, floats, others, kw, ct):
    """jit(value and VJP): compiled once per function, static kwargs and shapes/dtypes."""
    arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
    static = tuple(sorted((k, v) for k, v in kw.items() if k not in arrays))
    f = _jitted(name, static, tuple(arrays))
    return f(floats, others, ct, *arrays.values())


@functools.cache
def _jitted(name, static, array_names):
    fn = SPECS[name][0]

    def f(floats, others, ct, *arrays):
        kw = {**dict(static), **dict(zip(array_names, arrays, strict=True))}
        out, vjp = jax.vjp(lambda *xs: fn(*xs, *others, **kw), *floats)
        return out, vjp(ct.astype(out.dtype))

    return jax.jit(f)


def _check(name, dt, k1):
    fn, spec = SPECS[name]
    names, floats, others, kw = spec(dt, k1)
    dtype = DTYPES[dt]
    low = [jnp.asarray(x, dtype) for x in floats]
    ref_in = [jnp.asarray(np.asarray(x, np.float64)) for x in low]
    out_shape = jax.eval_shape(lambda *xs: fn(*xs, *others, **kw), *ref_in).shape
    # +-1: exact in every dtype, so an overflowing gradient stays +-inf.
    ct = np.random.default_rng(SEED).choice([-1.0, 1.0], size=out_shape)
    ct_low = jnp.asarray(ct, dtype)
    ref, ref_g = _run(name, ref_in, others, kw, jnp.asarray(np.asarray(ct_low, float)))
    out, g = _run(name, low, others, kw, ct_low)
    rtol, atol = TOL[dt]

    assert out.dtype == dtype, (name, dt, out.dtype)
    assert all(gi.dtype == dtype for gi in g), (name, dt, [gi.dtype for gi in g])
    assert not np.isnan(np.asarray(ref)).any(), f"{name}: float64 value is NaN: {ref}"
    # The reference is rounded to the dtype: overflow there is the right answer.
    ref, out = _rounded(ref, dtype), np.asarray(out, np.float64)
    _compare(name, dt, "value", names, out, ref, rtol, atol)
    # The gradient of linear_cross_entropy in `hidden` sums W_ij (p_j - y_j) with
    # |W_ij| up to 100: its absolute error scales with |W|, not with the result.
    atol = atol * (100.0 if name == "linear_cross_entropy" else 1.0)
    for i, (gi, ri) in enumerate(zip(g, ref_g, strict=True)):
        assert not np.isnan(np.asarray(ri)).any(), f"{name}: float64 gradient {i} is NaN: {ri}"
        ri, gi = _rounded(ri, dtype), np.asarray(gi, np.float64)
        _compare(name, dt, f"grad[{i}]", names, gi, ri, rtol, atol)


def _rounded(x, dtype):
    return np.asarray(jnp.asarray(x).astype(dtype), np.float64)


def _compare(name, dt, what, names, got, ref, rtol, atol):
    got = np.broadcast_to(got, ref.shape)
    rows = got.reshape(len(names), -1) if got.ndim and got.shape[0] == len(names) else None
    if rows is None:
        rows, refs, names = got.reshape(1, -1), ref.reshape(1, -1), ["all"]
    else:
        refs = ref.reshape(len(names), -1)
    # The reference is cast to the dtype first: overflow there is the right answer.
    for row, r, n in zip(rows, refs, names, strict=True):
        assert not np.isnan(row).any(), f"{name} {dt} {what} row {n!r}: NaN in {row}"
        scale = np.max(np.abs(r[np.isfinite(r)]), initial=1.0)
        np.testing.assert_allclose(
            row, r, rtol=rtol, atol=atol * scale, err_msg=f"{name} {dt} {what} row {n!r}"
        )


@pytest.mark.parametrize("dt", list(DTYPES))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_matrix(name, dt):
    _check(name, dt, k1=False)
    if SPECS[name][1] in (_logits1, _logits2, _probs1, _probs2, _softmax_ce, _int_ce):
        _check(name, dt, k1=True)


@pytest.mark.parametrize("dt", list(DTYPES))
def test_with_label_smoothing_matrix(dt):
    dtype = DTYPES[dt]
    names, (z,), (labels,), kw = _int_ce(dt, False)
    loss = jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, 0.1)
    direct = jaxent.label_smoothed_cross_entropy(jnp.asarray(z, dtype), labels, 0.1, **kw)
    got = jax.jit(lambda z: loss(z, labels, **kw))(jnp.asarray(z, dtype))
    # Issue 9, defect 13: the wrapped loss returns the logits' dtype, as
    # label_smoothed_cross_entropy does.
    assert got.dtype == direct.dtype == dtype
    rtol, atol = TOL[dt]
    _compare(
        "with_label_smoothing",
        dt,
        "value",
        names,
        np.asarray(got, float),
        np.asarray(direct, float),
        rtol,
        atol,
    )


@pytest.mark.parametrize("dt", list(DTYPES))
def test_optimal_logit_gap_dtypes(dt):
    eps = np.array([0.1, 0.5, 1e-3])
    got = [float(jaxent.optimal_logit_gap(jnp.asarray(e, DTYPES[dt]), 10)) for e in eps]
    e = np.asarray(jnp.asarray(eps, DTYPES[dt]), np.float64)
    want = np.log1p(10 * (1 - e) / e)
    np.testing.assert_allclose(got, want, rtol=TOL[dt][0])
    assert float(jaxent.optimal_logit_gap(0.0, 10)) == np.inf


# --------------------------------------------------------------------------- float64 vs numpy


def _np_lse(z):
    m = np.max(z, -1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        return (np.log(np.sum(np.exp(z - m), -1, keepdims=True)) + m)[..., 0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's own inf - inf in the reference
def test_float64_extremes_match_numpy():
    names, z = _stack(logit_rows(3e38))
    keep = ROW_MASK
    lse = np.where(keep, _np_lse(z), NINF)
    np.testing.assert_allclose(jaxent.logsumexp(z, where=keep), lse, rtol=1e-14)
    sm = np.where(keep[:, None], np.exp(z - np.where(keep, lse, 0)[:, None]), 0)
    np.testing.assert_allclose(jaxent.softmax(z, where=keep), sm, rtol=1e-14, atol=1e-300)
    zy = z[np.arange(len(z)), INT_LABELS]
    ce = np.where(keep, lse - zy, 0)
    got = jaxent.softmax_cross_entropy_with_integer_labels(z, INT_LABELS, where=keep)
    np.testing.assert_allclose(got, ce, rtol=1e-14)
    _, p = _stack(prob_rows())
    _, q = _stack(prob_rows_q())
    kl = np.where(keep, special.rel_entr(p, q).sum(-1), 0)
    np.testing.assert_allclose(jaxent.kl_divergence(p, q, where=keep), kl, rtol=1e-13)
    ent = np.where(keep, special.entr(p).sum(-1), 0)
    np.testing.assert_allclose(jaxent.entropy(p, where=keep), ent, rtol=1e-13)
    zs = np.array([50.0, -50.0, 1e4, 3e38, NINF])
    ys = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    want = np.where(ys != 1, (1 - ys) * np.logaddexp(0, zs), 0) + np.where(
        ys != 0, ys * np.logaddexp(0, -zs), 0
    )
    np.testing.assert_allclose(jaxent.sigmoid_binary_cross_entropy(zs, ys), want, rtol=1e-14)
