"""Checked mode (``jaxent.checked``): run-time validation built on checkify."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxent
from jaxent import _checked

RNG_SEED = 20240606
INF = np.inf


def _rng():
    return np.random.default_rng(RNG_SEED)


def _dist(shape, rng):
    x = rng.random(shape) + 0.05
    return x / x.sum(-1, keepdims=True)


def _public_functions():
    return sorted(
        n
        for n in dir(jaxent)
        if not n.startswith("_")
        and inspect.isfunction(getattr(jaxent, n))
        and getattr(jaxent, n).__module__.startswith("jaxent._")
        and n not in ("checked", "verify")
    )


# --------------------------------------------------------------------------- valid / invalid cases
#
# name -> (valid kwargs, [(bad kwargs overrides, expected message), ...])


def _cases():
    rng = _rng()
    z = rng.normal(size=(4, 5))
    p, q = _dist((4, 5), rng), _dist((4, 5), rng)
    labels = np.array([0, 4, 2, 1])
    u = rng.random((4, 5))
    nan_z = z.copy()
    nan_z[1, 2] = np.nan
    inf_z = z.copy()
    inf_z[2, 0] = INF
    bad_p = p.copy()
    bad_p[3, 1] = -0.25
    unnorm = p.copy()
    unnorm[2] = [0.125, 0.125, 0.125, 0.125, 0.0]
    logits_bad = [
        ({"logits": nan_z}, "logits[1, 2] = nan is not a valid logit"),
        ({"logits": inf_z}, "logits[2, 0] = inf is not a valid logit"),
    ]
    dist_bad = [
        ({"p": bad_p}, "p[3, 1] = -0.25 is not a probability in [0, 1]"),
        ({"q": unnorm}, "sum(q[2, :]) = 0.5 is not 1 within atol=0.001"),
    ]
    unit_bad = [({"p": u + 1.0}, "p[0, 0] = ")]
    h, w = rng.normal(size=(4, 3)), rng.normal(size=(3, 6))
    return {
        "softmax": ({"logits": z}, logits_bad),
        "log_softmax": ({"logits": z}, logits_bad),
        "logsumexp": ({"logits": z}, logits_bad),
        "entropy_from_logits": ({"logits": z}, logits_bad),
        "logit": ({"p": u}, unit_bad),
        "self_information": ({"p": u}, unit_bad),
        "binary_entropy": ({"p": u}, unit_bad),
        "entropy": ({"p": p}, [({"p": bad_p}, "p[3, 1] = -0.25")]),
        "cross_entropy": ({"p": p, "q": q}, dist_bad),
        "kl_divergence": ({"p": p, "q": q}, dist_bad),
        "js_divergence": ({"p": p, "q": q}, dist_bad),
        "kl_divergence_from_logits": (
            {"p_logits": z, "q_logits": z[::-1]},
            [({"q_logits": inf_z}, "q_logits[2, 0] = inf")],
        ),
        "js_divergence_from_logits": (
            {"p_logits": z, "q_logits": z[::-1]},
            [({"p_logits": nan_z}, "p_logits[1, 2] = nan")],
        ),
        "kl_divergence_diag_gaussian": (
            {"mean_p": z, "std_p": u + 0.1, "mean_q": z[::-1], "std_q": u[::-1] + 0.1},
            [
                ({"std_q": np.where(np.arange(5) == 3, 0.0, u + 0.1)}, "std_q[0, 3] = 0.0 must"),
                ({"mean_p": inf_z}, "mean_p[2, 0] = inf is not finite"),
            ],
        ),
        "kl_estimate": (
            {"log_p": -u, "log_q": -u[::-1]},
            [({"log_q": np.where(u > 0.5, np.nan, -u)}, "log_q[")],
        ),
        "softmax_cross_entropy": (
            {"logits": z, "labels": p},
            logits_bad + [({"labels": unnorm}, "sum(labels[2, :]) = 0.5")],
        ),
        "softmax_cross_entropy_with_integer_labels": (
            {"logits": z, "labels": labels},
            logits_bad
            + [
                ({"labels": np.array([0, 1, 7, 2])}, "labels[2] = 7 is out of range [0, 5)"),
                ({"labels": np.array([0, -1, 2, 2])}, "labels[1] = -1 is out of range [0, 5)"),
                ({"class_weights": np.array([1.0, 2, -1, 1, 1])}, "class_weights[2] = -1.0"),
            ],
        ),
        "sigmoid_binary_cross_entropy": (
            {"logits": z, "labels": u},
            [({"logits": nan_z}, "logits[1, 2] = nan is NaN"), ({"labels": u + 2}, "labels[0, 0]")],
        ),
        "binary_cross_entropy": (
            {"probs": u, "labels": u[::-1]},
            [({"probs": -u}, "probs[0, 0] = ")],
        ),
        "weighted_mean": (
            {"losses": u, "weights": u},
            [({"weights": -u}, "weights[0, 0] = "), ({"losses": nan_z}, "losses[1, 2] = nan")],
        ),
        "smooth_labels": (
            {"labels": labels, "epsilon": 0.1, "num_classes": 5},
            [({"labels": np.array([0, 9, 1, 1])}, "labels[1] = 9 is out of range [0, 5)")],
        ),
        "label_smoothed_cross_entropy": (
            {"logits": z, "labels": labels, "epsilon": 0.1},
            logits_bad + [({"labels": np.array([5, 1, 1, 1])}, "labels[0] = 5 is out of range")],
        ),
        "with_label_smoothing": (
            {"loss_fn": jaxent.softmax_cross_entropy, "epsilon": 0.1},
            [({"epsilon": jnp.asarray(1.5)}, "epsilon = 1.5 is not a smoothing factor")],
        ),
        "optimal_logit_gap": (
            {"epsilon": 0.1, "num_classes": 5},
            [({"epsilon": jnp.asarray(-0.5)}, "epsilon = -0.5 is not a smoothing factor")],
        ),
        "linear_cross_entropy": (
            {"hidden": h, "weight": w, "labels": labels},
            [({"labels": np.array([0, 1, 6, 1])}, "labels[2] = 6 is out of range [0, 6)")],
        ),
    }


CASES = _cases()


# Structural arguments: static, validated at trace time by the function itself.
NOT_RUNTIME = {
    "axis",
    "member_axis",
    "where",
    "ignore_index",
    "num_classes",
    "convention",
    "estimator",
    "mode",
    "normalizer",
    "normalized",
    "keepdims",
    "tail",
    "block_size",
    "axis_name",
    "losses_are_weighted",
    "loss_fn",
}


def test_every_argument_of_every_public_function_is_validated():
    """Each parameter is run-time checked or is a structural (trace-time) one."""
    unchecked = {}
    for name in _public_functions():
        fn = getattr(jaxent, name)
        table = _checked.validators_of(fn)
        params = inspect.signature(fn).parameters
        assert set(table) <= set(params)
        rest = [p for p in params if p not in table and p not in NOT_RUNTIME]
        if rest:
            unchecked[name] = rest
        jaxent.checked(fn)  # every public function can be wrapped
    assert not unchecked, f"arguments without a run-time check: {unchecked}"


def test_per_function_overrides_name_real_arguments():
    for name, table in _checked.VALIDATORS.items():
        params = inspect.signature(getattr(jaxent, name)).parameters
        assert set(table) <= set(params), (name, set(table) - set(params))


@pytest.mark.parametrize("name", sorted(CASES))
def test_valid_input_passes_and_matches(name):
    fn = getattr(jaxent, name, None)
    if fn is None:
        pytest.skip(f"{name} is not public yet")
    good, _ = CASES[name]
    got = jaxent.checked(fn)(**good)
    want = fn(**good)
    if callable(want):
        return
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize(
    "name,i",
    [(n, i) for n in sorted(CASES) for i in range(len(CASES[n][1]))],
)
def test_invalid_input_raises_naming_argument_and_index(name, i):
    fn = getattr(jaxent, name, None)
    if fn is None:
        pytest.skip(f"{name} is not public yet")
    good, bad = CASES[name]
    override, message = bad[i]
    with pytest.raises(checkify.JaxRuntimeError, match=None) as info:
        jaxent.checked(fn)(**{**good, **override})
    assert message in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


def test_message_example_from_the_issue():
    ce = jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels)
    labels = jnp.array([0, 1, 2, 12, 3])
    with pytest.raises(ValueError, match=r"labels\[3\] = 12 is out of range \[0, 10\)"):
        ce(jnp.zeros((5, 10)), labels)


def test_ignore_index_and_row_mask_are_not_errors():
    ce = jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels)
    z = jnp.zeros((3, 4))
    ce(z, jnp.array([0, -100, 3]), ignore_index=-100)
    ce(z, jnp.array([0, 9, 3]), where=jnp.array([True, False, True]))
    with pytest.raises(ValueError, match=r"labels\[1\] = -100 is out of range \[0, 4\) and is not"):
        ce(z, jnp.array([0, -100, 3]), ignore_index=-1)


def test_masked_entries_and_rows_are_skipped():
    kl = jaxent.checked(jaxent.kl_divergence)
    p = jnp.array([[0.5, 0.5, jnp.nan], [0.3, 0.3, 0.3]])
    q = jnp.array([[0.25, 0.75, 7.0], [0.3, 0.3, 0.3]])
    rows = jnp.array([True, False])
    entries = jnp.array([[True, True, False], [True, True, True]])
    kl(p, q, where=entries & rows[:, None])  # entries: drops the NaN, rows: the bad row
    with pytest.raises(ValueError, match=r"sum\(p\[1, :\]\)"):
        kl(p, q, where=entries)
    # a fully masked row is skipped; logits removed by `where` may be anything
    sm = jaxent.checked(jaxent.softmax)
    sm(jnp.array([[0.0, jnp.inf, jnp.nan]]), where=jnp.array([[True, False, False]]))


def test_other_axis_reports_colon_at_the_class_axis():
    ent = jaxent.checked(jaxent.entropy)
    p = jnp.full((3, 2, 4), 0.25).at[1, 1, :].set(0.1)
    with pytest.raises(ValueError, match=r"sum\(p\[1, 1, :\]\) = 0\.4"):
        ent(p)
    with pytest.raises(ValueError, match=r"sum\(p\[:, 0, 0\]\) = 0\.75"):
        ent(p, axis=0)


def test_atol_and_half_precision_default():
    ent = jaxent.checked(jaxent.entropy)
    p = jnp.array([0.5, 0.505])
    with pytest.raises(ValueError, match="atol=0.001"):
        ent(p)
    jaxent.checked(jaxent.entropy, atol=0.01)(p)
    jaxent.checked(jaxent.entropy)(p.astype(jnp.bfloat16))  # 1e-2 for half types


def test_unknown_function_raises_valueerror_at_wrap_time():
    with pytest.raises(ValueError, match="does not know"):
        jaxent.checked(jnp.sum)

    def softmax(logits):  # same name, not jaxent's
        return logits

    with pytest.raises(ValueError, match="does not know"):
        jaxent.checked(softmax)
    with pytest.raises(ValueError, match="under_trace"):
        jaxent.checked(jaxent.softmax, under_trace="never")


def test_disabled_is_the_function_itself():
    assert jaxent.checked(jaxent.softmax, enabled=False) is jaxent.softmax


def test_signature_is_preserved():
    fn = jaxent.softmax_cross_entropy_with_integer_labels
    assert inspect.signature(jaxent.checked(fn)) == inspect.signature(fn)
    assert jaxent.checked(fn).__name__ == fn.__name__


def test_under_jit_raises_at_run_time():
    ce = jax.jit(jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels))
    z = jnp.zeros((5, 10))
    np.testing.assert_allclose(ce(z, jnp.array([0, 1, 2, 3, 4])), np.log(10.0) * np.ones(5))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"labels\[3\] = 12 is out of range"):
        jax.block_until_ready(ce(z, jnp.array([0, 1, 2, 12, 4])))


def test_under_jit_with_static_argnames():
    ce = jax.jit(
        jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels),
        static_argnames=("axis", "ignore_index"),
    )
    z = jnp.zeros((4, 3))
    ce(z.T, jnp.array([0, 1, 2, -1]), axis=0, ignore_index=-1)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"labels\[3\] = -1 is out of range"):
        jax.block_until_ready(ce(z.T, jnp.array([0, 1, 2, -1]), axis=0))


def test_under_checkify_mode():
    ce = jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels, under_trace="checkify")
    f = checkify.checkify(jax.jit(ce))
    err, _ = f(jnp.zeros((3, 4)), jnp.array([0, 1, 3]))
    err.throw()
    err, _ = f(jnp.zeros((3, 4)), jnp.array([0, 4, 3]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels\[1\] = 4 is out of range"):
        err.throw()


def test_grad_and_vmap_pass_through():
    ce = jaxent.softmax_cross_entropy_with_integer_labels
    cce = jaxent.checked(ce)
    z = jnp.asarray(_rng().normal(size=(3, 4)))
    y = jnp.array([0, 3, 1])
    g = jax.grad(lambda z: cce(z, y).sum())(z)
    np.testing.assert_array_equal(g, jax.grad(lambda z: ce(z, y).sum())(z))
    v = jax.vmap(cce)(z[:, None], y[:, None])
    np.testing.assert_allclose(v[:, 0], ce(z, y), rtol=1e-6)
    with pytest.raises(Exception, match=r"labels\[0\] = 7 is out of range"):
        jax.block_until_ready(jax.jit(jax.vmap(cce))(z[:, None], jnp.array([[0], [7], [1]])))


def test_traced_epsilon_is_checked():
    lsce = jaxent.checked(jaxent.label_smoothed_cross_entropy)
    z, y = jnp.zeros((2, 3)), jnp.array([0, 2])
    f = jax.jit(lambda e: lsce(z, y, e))
    f(0.1)
    with pytest.raises(jax.errors.JaxRuntimeError, match="epsilon = 1.5 is not a smoothing"):
        jax.block_until_ready(f(1.5))


def test_vocab_parallel_labels_checked_inside_shard_map():
    from jax.sharding import Mesh, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:1]), ("v",))
    ce = jaxent.checked(jaxent.vocab_parallel_cross_entropy)

    def f(z, y):
        return ce(z, y, "v")

    g = jax.jit(
        jax.shard_map(
            f,
            mesh=mesh,
            in_specs=(PartitionSpec(None, "v"), PartitionSpec()),
            out_specs=PartitionSpec(),
        )
    )
    z = jnp.zeros((3, 8))
    np.testing.assert_allclose(g(z, jnp.array([0, 7, 3])), np.log(8.0) * np.ones(3), rtol=1e-6)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"labels\[1\] = 8 is out of range"):
        jax.block_until_ready(g(z, jnp.array([0, 8, 3])))


# --------------------------------------------------------------------------- issue 9: defects 11, 15


@pytest.mark.parametrize(
    "fn, kwargs, arg, bad, message",
    [
        (
            "softmax_cross_entropy_with_integer_labels",
            {"logits": np.zeros((2, 3), np.float32), "labels": np.array([0, 2])},
            "z_loss",
            -1.0,
            "z_loss = -1.0 must be >= 0",
        ),
        (
            "softmax_cross_entropy_with_integer_labels",
            {"logits": np.zeros((2, 3), np.float32), "labels": np.array([0, 2])},
            "logit_softcap",
            0.0,
            "logit_softcap = 0.0 must be finite and > 0",
        ),
        (
            "js_divergence",
            {"p": np.full((2, 3), 1 / 3, np.float32), "q": np.full((2, 3), 1 / 3, np.float32)},
            "beta",
            1.5,
            "beta = 1.5 must be in [0, 1]",
        ),
        (
            "entropy",
            {"p": np.full((2, 3), 1 / 3, np.float32)},
            "base",
            1.0,
            "base = 1.0 must be finite, > 0 and != 1",
        ),
        (
            "entropy",
            {"p": np.full((2, 3), 1 / 3, np.float32)},
            "base",
            -2.0,
            "base = -2.0 must be finite, > 0 and != 1",
        ),
        (
            "linear_cross_entropy",
            {
                "hidden": np.ones((2, 3), np.float32),
                "weight": np.ones((3, 4), np.float32),
                "labels": np.array([0, 3]),
            },
            "z_loss",
            -0.5,
            "z_loss = -0.5 must be >= 0",
        ),
        (
            "log_prob_from_logits",
            {"logits": np.zeros((2, 3), np.float32), "labels": np.array([0, 2])},
            "temperature",
            0.0,
            "temperature = 0.0 must be finite and > 0",
        ),
    ],
)
def test_traced_hyperparameters_are_checked(fn, kwargs, arg, bad, message):
    """A traced hyper-parameter escapes the trace-time check; checked mode catches it."""
    f = getattr(jaxent, fn, None)
    if f is None or arg not in inspect.signature(f).parameters:
        pytest.skip(f"{fn} has no `{arg}`")
    g = jax.jit(lambda v: jaxent.checked(f)(**kwargs, **{arg: v}))
    good = {"beta": 0.5, "base": 2.0}.get(arg, 0.5)
    jax.block_until_ready(g(np.float32(good)))
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        jax.block_until_ready(g(np.float32(bad)))
    assert message in str(info.value), str(info.value)


def test_weighted_mean_skips_rows_removed_by_where():
    wm = jaxent.checked(jaxent.weighted_mean)
    losses = np.array([1.0, np.nan, 3.0], np.float32)
    keep = np.array([True, False, True])
    got = wm(losses, where=keep)
    np.testing.assert_allclose(np.asarray(got), 2.0, rtol=1e-6)
    wm(losses, weights=np.array([1.0, -5.0, 1.0], np.float32), where=keep)  # removed weight
    with pytest.raises(ValueError, match=r"losses\[1\] = nan is NaN"):
        wm(losses)
    with pytest.raises(ValueError, match=r"weights\[1\] = -5.0 must be >= 0"):
        wm(np.ones(3, np.float32), weights=np.array([1.0, -5.0, 1.0], np.float32))


def test_kl_estimate_rejects_minus_inf_log_p_of_a_drawn_sample():
    ke = jaxent.checked(jaxent.kl_estimate)
    log_p = np.array([-1.0, -np.inf, -2.0], np.float32)
    log_q = np.array([-1.5, -1.0, -2.5], np.float32)
    with pytest.raises(ValueError, match=r"log_p\[1\] = -inf is not the finite log-probability"):
        ke(log_p, log_q)
    ke(log_p[::2], np.array([-1.5, -np.inf], np.float32))  # q(x) = 0: KL is +inf, a value
    params = inspect.signature(jaxent.kl_estimate).parameters
    if "where" in params:  # padding removed by the mask is not checked
        ke(log_p, log_q, where=np.array([True, False, True]))
    if "log_sampler" in params:
        with pytest.raises(ValueError, match=r"log_sampler\[0\] = -inf"):
            ke(log_p[::2], log_q[::2], log_sampler=np.array([-np.inf, -1.0], np.float32))


def test_narrow_integer_labels_are_compared_without_wrapping():
    """int8 labels against K = 300: label 100 is valid, -1 is reported (not wrapped)."""
    sl = jaxent.checked(jaxent.smooth_labels)
    sl(np.array([100, 10], np.int8), 0.1, num_classes=300)
    with pytest.raises(ValueError, match=r"labels\[1\] = -1 is out of range \[0, 300\)"):
        sl(np.array([100, -1], np.int8), 0.1, num_classes=300)
    ce = jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels)
    z = np.zeros((2, 300), np.float32)
    ce(z, np.array([255, 3], np.uint8))
    ce(z, np.array([7, -100], np.int16), ignore_index=np.int64(-100))


def test_under_jit_the_message_comes_first(capfd):
    """The one-line message is the first thing printed, before any traceback.

    JAX logs a failed callback with its traceback, and the runtime's error
    text starts with XLA's ``INTERNAL: CpuCallback error ...`` and the Python
    stack: the message naming the argument and the index is printed first on
    stderr, JAX's log record of it is dropped, and the error ends with it.
    """
    ce = jax.jit(jaxent.checked(jaxent.softmax_cross_entropy_with_integer_labels))
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        jax.block_until_ready(ce(jnp.zeros((5, 10)), jnp.array([0, 1, 2, 12, 4])))
    err = capfd.readouterr().err
    first = err.lstrip().splitlines()[0]
    assert first == "jaxent.checked: labels[3] = 12 is out of range [0, 10) (`check` failed)", err
    assert "Traceback" not in err and "callback failed" not in err, err
    text = str(info.value).rstrip()
    assert text.endswith("labels[3] = 12 is out of range [0, 10) (`check` failed)"), text
