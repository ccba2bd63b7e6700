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
        and n != "checked"
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


def test_every_public_function_has_validators():
    public = _public_functions()
    missing = [n for n in public if n not in _checked.VALIDATORS]
    assert not missing, f"no validators for {missing}"
    for name, table in _checked.VALIDATORS.items():
        if hasattr(jaxent, name):
            params = inspect.signature(getattr(jaxent, name)).parameters
            assert set(table) <= set(params), (name, set(table) - set(params))


def test_every_public_function_has_a_case():
    skip = {"vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"}
    missing = [n for n in _public_functions() if n not in CASES and n not in skip]
    assert not missing


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
    np.testing.assert_allclose(v[:, 0], ce(z, y), rtol=1e-12)
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
