"""Cross-entropy losses and weighted_mean against numpy/PyTorch formulas and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special as sps
from _refs import int_ce, sigmoid_bce, softmax_ce

import jaxent


def data(seed, n=6, k=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2, size=(n, k))
    y = rng.dirichlet(np.ones(k), size=n)
    labels = rng.integers(0, k, size=n)
    return z, y, labels


class TestSoftLabels:
    def test_matches_reference_and_optax(self):
        z, y, _ = data(0)
        out = jaxent.softmax_cross_entropy(z, y)
        np.testing.assert_allclose(out, softmax_ce(z, y), rtol=1e-12)
        np.testing.assert_allclose(out, optax.losses.softmax_cross_entropy(z, y), rtol=1e-12)

    def test_gradient_is_sum_y_p_minus_y(self):
        z, y, _ = data(1)
        y = y * 1.7  # unnormalised labels: (sum y) p - y
        g = jax.grad(lambda z: jnp.sum(jaxent.softmax_cross_entropy(z, y)))(z)
        np.testing.assert_allclose(g, y.sum(-1, keepdims=True) * sps.softmax(z, -1) - y, atol=1e-14)

    def test_gradient_wrt_labels(self):
        z, y, _ = data(2)
        g = jax.grad(lambda y: jnp.sum(jaxent.softmax_cross_entropy(z, y)))(y)
        np.testing.assert_allclose(g, -sps.log_softmax(z, -1), rtol=1e-12)

    def test_where_axis_jit_vmap(self):
        z, y, _ = data(3, n=4, k=6)
        keep = np.array([True, True, False, True, True, False])
        out = jaxent.softmax_cross_entropy(z, y, where=keep[None])
        np.testing.assert_allclose(out, softmax_ce(z[:, keep], y[:, keep]), rtol=1e-12)
        np.testing.assert_allclose(
            jaxent.softmax_cross_entropy(z.T, y.T, axis=0), softmax_ce(z, y), rtol=1e-12
        )
        np.testing.assert_allclose(
            jax.jit(jaxent.softmax_cross_entropy)(z, y), softmax_ce(z, y), rtol=1e-12
        )
        np.testing.assert_allclose(
            jax.vmap(jaxent.softmax_cross_entropy)(z, y), softmax_ce(z, y), rtol=1e-12
        )

    def test_minus_inf_logit_is_finite_where_optax_is_nan(self):
        z = jnp.array([[0.0, -jnp.inf, 1.0]])
        y = jnp.array([[0.5, 0.0, 0.5]])
        assert np.isnan(optax.losses.softmax_cross_entropy(z, y)[0])  # the anchor's bug
        v, g = jax.value_and_grad(lambda z: jnp.sum(jaxent.softmax_cross_entropy(z, y)))(z)
        np.testing.assert_allclose(v, softmax_ce(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]))[0])
        assert np.all(np.isfinite(g)) and g[0, 1] == 0

    def test_label_mass_on_minus_inf_is_plus_inf(self):
        z = jnp.array([[0.0, -jnp.inf, 1.0]])
        y = jnp.array([[0.2, 0.3, 0.5]])
        v, g = jax.value_and_grad(lambda z: jnp.sum(jaxent.softmax_cross_entropy(z, y)))(z)
        assert v == np.inf and np.all(np.isfinite(g))

    def test_fully_masked_row_is_zero(self):
        z, y, _ = data(4, n=3, k=4)
        where = np.array([True, False, True])
        v, g = jax.value_and_grad(
            lambda z: jnp.sum(jaxent.softmax_cross_entropy(z, y, where=where))
        )(z)
        np.testing.assert_allclose(v, softmax_ce(z[where], y[where]).sum(), rtol=1e-12)
        np.testing.assert_array_equal(g[1], 0)
        z_inf = np.array(z)
        z_inf[1] = -np.inf
        out = jaxent.softmax_cross_entropy(z_inf, y)  # all -inf: an empty row
        assert out[1] == 0 and not np.signbit(out[1])
        g = jax.grad(lambda z: jnp.sum(jaxent.softmax_cross_entropy(z, y)))(z_inf)
        np.testing.assert_array_equal(g[1], 0)


class TestIntegerLabels:
    def test_matches_pytorch_formula_and_optax(self):
        z, _, labels = data(5)
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, labels)
        np.testing.assert_allclose(out, int_ce(z, labels), rtol=1e-12)
        np.testing.assert_allclose(
            out, optax.losses.softmax_cross_entropy_with_integer_labels(z, labels), rtol=1e-12
        )

    def test_equals_one_hot(self):
        z, _, labels = data(6)
        np.testing.assert_allclose(
            jaxent.softmax_cross_entropy_with_integer_labels(z, labels),
            jaxent.softmax_cross_entropy(z, np.eye(5)[labels]),
            rtol=1e-12,
        )

    def test_class_weights_ignore_index_and_weighted_mean(self):
        z, _, labels = data(7, n=8)
        labels[[1, 4]] = -100
        cw = np.array([0.5, 2.0, 1.0, 3.0, 0.25])
        out = jaxent.softmax_cross_entropy_with_integer_labels(
            z, labels, ignore_index=-100, class_weights=cw
        )
        np.testing.assert_allclose(out, int_ce(z, labels, cw, ignore_index=-100), rtol=1e-12)
        keep = labels != -100
        # PyTorch reduction="mean": sum of weighted losses / sum of weights of kept rows.
        expected_mean = out.sum() / cw[labels[keep]].sum()
        mean = jaxent.weighted_mean(
            out, weights=cw[np.where(keep, labels, 0)], where=keep, losses_are_weighted=True
        )
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
        plain = jaxent.softmax_cross_entropy_with_integer_labels(z, labels, ignore_index=-100)
        mean2 = jaxent.weighted_mean(plain, weights=cw[np.where(keep, labels, 0)], where=keep)
        np.testing.assert_allclose(mean2, expected_mean, rtol=1e-12)

    def test_gradient_closed_form(self):
        z, _, labels = data(8)
        labels[2] = -1
        cw = np.linspace(0.5, 1.5, 5)
        g = jax.grad(
            lambda z: jnp.sum(
                jaxent.softmax_cross_entropy_with_integer_labels(
                    z, labels, ignore_index=-1, class_weights=cw
                )
            )
        )(z)
        lab = np.clip(labels, 0, 4)
        w = np.where(labels == -1, 0.0, cw[lab])[:, None]
        expected = w * (sps.softmax(z, -1) - np.eye(5)[lab])
        np.testing.assert_allclose(g, expected, atol=1e-14)
        np.testing.assert_array_equal(g[2], 0)

    def test_z_loss_and_softcap(self):
        z, _, labels = data(9)
        c, zl = 3.0, 1e-2
        zc = c * np.tanh(z / c)
        lse = sps.logsumexp(zc, -1)
        expected = lse - zc[np.arange(6), labels] + zl * lse**2
        fn = lambda z: jaxent.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            z, labels, z_loss=zl, logit_softcap=c
        )
        np.testing.assert_allclose(fn(z), expected, rtol=1e-12)
        g = jax.grad(lambda z: jnp.sum(fn(z)))(z)
        p = sps.softmax(zc, -1)
        dz_c = p - np.eye(5)[labels] + 2 * zl * lse[:, None] * p
        np.testing.assert_allclose(g, dz_c * (1 - np.tanh(z / c) ** 2), atol=1e-13)

    def test_out_of_range_label_is_nan_not_a_wrong_class(self):
        z, _, labels = data(10)
        labels[3] = 7
        labels[4] = -2
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, labels)
        assert np.isnan(out[3]) and np.isnan(out[4])
        assert np.all(np.isfinite(np.delete(np.asarray(out), [3, 4])))

    def test_masks(self):
        z, _, labels = data(11, n=4, k=6)
        labels = np.array([0, 1, 3, 5])
        keep = np.array([True, False, True, True, True, True])
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, labels, where=keep[None])
        ls = sps.log_softmax(z[:, keep], -1)
        np.testing.assert_allclose(
            np.asarray(out)[[0, 2, 3]], -ls[[0, 2, 3], [0, 2, 4]], rtol=1e-12
        )
        assert out[1] == np.inf  # the label's class is removed: -log 0
        rows = np.array([True, False, True, False])
        v, g = jax.value_and_grad(
            lambda z: jnp.sum(
                jaxent.softmax_cross_entropy_with_integer_labels(z, labels, where=rows)
            )
        )(z)
        np.testing.assert_array_equal(g[~rows], 0)
        np.testing.assert_allclose(v, int_ce(z, labels)[rows].sum(), rtol=1e-12)

    def test_minus_inf_and_huge_logits(self):
        z = jnp.array(
            [[0.0, -jnp.inf, 2.0], [-jnp.inf] * 3, [3e38, -3e38, 0.0], [1e4, -1e4, 0.0]],
            jnp.float32,
        )
        labels = jnp.array([0, 1, 0, 2])
        v, g = jax.value_and_grad(
            lambda z: jnp.sum(jaxent.softmax_cross_entropy_with_integer_labels(z, labels))
        )(z)
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, labels)
        np.testing.assert_allclose(out[0], -sps.log_softmax([0.0, 2.0])[0], rtol=1e-6)
        assert out[1] == 0 and out[2] == 0 and out[3] == pytest.approx(1e4, rel=1e-6)
        assert np.all(np.isfinite(g))

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_low_precision_32k(self, dtype):
        rng = np.random.default_rng(12)
        z = jnp.asarray(rng.normal(scale=3, size=(2, 32768)), dtype)
        labels = rng.integers(0, 32768, size=2)
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, labels)
        assert out.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(out, np.float64), int_ce(np.asarray(z, np.float64), labels), rtol=1e-2
        )
        g = jax.grad(
            lambda z: jnp.sum(jaxent.softmax_cross_entropy_with_integer_labels(z, labels))
        )(z)
        assert g.dtype == dtype and np.all(np.isfinite(np.asarray(g, np.float32)))


class TestBinary:
    def test_sigmoid_bce_matches_pytorch_formula(self):
        rng = np.random.default_rng(13)
        z = rng.normal(scale=4, size=(5, 3))
        y = rng.uniform(size=(5, 3))
        pw = np.array([1.0, 2.0, 0.5])
        np.testing.assert_allclose(
            jaxent.sigmoid_binary_cross_entropy(z, y), sigmoid_bce(z, y), rtol=1e-12
        )
        np.testing.assert_allclose(
            jaxent.sigmoid_binary_cross_entropy(z, y, pos_weight=pw),
            sigmoid_bce(z, y, pw),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            jaxent.sigmoid_binary_cross_entropy(z, y),
            optax.losses.sigmoid_binary_cross_entropy(z, y),
            rtol=1e-12,
        )

    def test_sigmoid_bce_gradient_keeps_tiny_values(self):
        g = jax.grad(jaxent.sigmoid_binary_cross_entropy)(jnp.float32(50.0), jnp.float32(1.0))
        np.testing.assert_allclose(g, -np.exp(-50.0) / (1 + np.exp(-50.0)), rtol=1e-5)
        assert g != 0
        g0 = jax.grad(jaxent.sigmoid_binary_cross_entropy)(jnp.float32(-50.0), jnp.float32(0.0))
        np.testing.assert_allclose(g0, sps.expit(-50.0), rtol=1e-5)

    def test_sigmoid_bce_gradient_with_pos_weight(self):
        rng = np.random.default_rng(14)
        z, y, pw = rng.normal(size=4), rng.uniform(size=4), rng.uniform(0.5, 3, size=4)
        g = jax.grad(lambda z: jnp.sum(jaxent.sigmoid_binary_cross_entropy(z, y, pos_weight=pw)))(z)
        np.testing.assert_allclose(g, (1 - y) * sps.expit(z) - pw * y * sps.expit(-z), rtol=1e-12)

    def test_sigmoid_bce_infinite_logits(self):
        z = jnp.array([-jnp.inf, jnp.inf, -jnp.inf, jnp.inf, 3e38, -3e38], jnp.float32)
        y = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0], jnp.float32)
        out = jaxent.sigmoid_binary_cross_entropy(z, y)
        np.testing.assert_array_equal(out, [0, 0, np.inf, np.inf, 0, 0])
        g = jax.grad(lambda z: jnp.sum(jaxent.sigmoid_binary_cross_entropy(z, y)))(z)
        assert not np.any(np.isnan(g))

    def test_binary_cross_entropy_from_probs(self):
        p = np.array([0.1, 0.5, 0.9, 0.0, 1.0, 0.0])
        y = np.array([1.0, 0.0, 0.3, 0.0, 1.0, 1.0])
        out = jaxent.binary_cross_entropy(p, y)
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = -(
                np.where(y > 0, y * np.log(p), 0) + np.where(y < 1, (1 - y) * np.log1p(-p), 0)
            )
        np.testing.assert_allclose(out, expected, rtol=1e-12)
        assert out[-1] == np.inf
        g = jax.grad(lambda p: jnp.sum(jaxent.binary_cross_entropy(p, y[:5])))(p[:5])
        with np.errstate(divide="ignore", invalid="ignore"):
            expected_g = np.where(y[:5] < 1, (1 - y[:5]) / (1 - p[:5]), 0) - np.where(
                y[:5] > 0, y[:5] / p[:5], 0
            )
        np.testing.assert_allclose(g, expected_g, rtol=1e-12)


class TestWeightedMean:
    def test_plain_and_empty(self):
        losses = np.array([1.0, 2.0, 3.0, 4.0])
        assert jaxent.weighted_mean(losses) == 2.5
        np.testing.assert_allclose(
            jaxent.weighted_mean(losses, weights=np.array([1.0, 0, 1, 2])), 12 / 4
        )
        keep = np.zeros(4, bool)
        v, g = jax.value_and_grad(lambda l: jaxent.weighted_mean(l, where=keep))(losses)
        assert v == 0 and np.all(g == 0)

    def test_ignores_inf_in_removed_rows(self):
        losses = jnp.array([1.0, jnp.inf, 3.0])
        assert jaxent.weighted_mean(losses, where=np.array([True, False, True])) == 2.0


def test_forward_mode_is_nan_free_at_minus_inf_logits():
    z = jnp.array([1.0, -jnp.inf, 0.5])
    y = jnp.array([0.7, 0.0, 0.3])
    jz, jy = jax.jacfwd(jaxent.softmax_cross_entropy, argnums=(0, 1))(z, y)
    assert np.all(np.isfinite(jz)) and np.all(np.isfinite(jy))
    np.testing.assert_allclose(jz, sps.softmax([1.0, -np.inf, 0.5]) - y, atol=1e-15)
    np.testing.assert_allclose(
        jy, [-sps.log_softmax([1.0, 0.5])[0], 0.0, -sps.log_softmax([1.0, 0.5])[1]]
    )
    p = jnp.array([0.0, 0.3, 1.0])
    lab = jnp.array([0.0, 1.0, 1.0])
    jp, jl = jax.jacfwd(jaxent.binary_cross_entropy, argnums=(0, 1))(p, lab)
    assert not np.any(np.isnan(jp)) and np.all(np.isfinite(jl))


# --------------------------------------------------------------------------- issues 9-12


def np_int_ce(z, labels, w=None):
    """float64 numpy: w_y (lse(z) - z_y), the PyTorch formula."""
    z = np.asarray(z, np.float64)
    ls = sps.log_softmax(z, axis=-1)
    out = -ls[np.arange(len(labels)), labels]
    return out if w is None else w[labels] * out


class TestNarrowLabelDtypes:
    """Issue 9, defect 5: labels compare in a wide dtype, whatever their own."""

    @pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32])
    def test_more_classes_than_the_dtype_holds(self, dtype):
        k = 300 if np.iinfo(dtype).max < 300 else 70000
        rng = np.random.default_rng(30)
        z = rng.normal(size=(3, k)).astype(np.float32)
        labels = np.array([0, 10, min(np.iinfo(dtype).max, k - 1)], dtype)
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, labels)
        np.testing.assert_allclose(out, np_int_ce(z, labels.astype(np.int64)), rtol=1e-5)
        ls = jaxent.label_smoothed_cross_entropy(z, labels, 0.0)
        np.testing.assert_allclose(ls, np_int_ce(z, labels.astype(np.int64)), rtol=1e-5)

    def test_int16_labels_with_gpt2_vocabulary(self):
        z = np.zeros((2, 50257), np.float32)
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, np.array([5, 30000], np.int16))
        np.testing.assert_allclose(out, np.log(50257), rtol=1e-6)

    def test_negative_int8_ignore_index(self):
        z = np.random.default_rng(31).normal(size=(2, 300)).astype(np.float32)
        labels = np.array([-100, 7], np.int8)
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, labels, ignore_index=-100)
        np.testing.assert_allclose(out, [0.0, np_int_ce(z[1:], [7])[0]], rtol=1e-5)


class TestLabelEdgeRules:
    def test_out_of_range_label_is_nan_even_with_zero_last_weight(self):
        # Issue 9, defect 6: clipping used to read the last class weight (0) and give 0.
        z = np.random.default_rng(32).normal(size=(3, 4))
        w = np.array([1.0, 2.0, 0.5, 0.0])
        out = jaxent.softmax_cross_entropy_with_integer_labels(
            z, np.array([1, 7, -3]), class_weights=w
        )
        np.testing.assert_allclose(out[0], np_int_ce(z[:1], [1], w)[0], rtol=1e-12)
        assert np.isnan(out[1]) and np.isnan(out[2])
        g = jax.grad(
            lambda z: jnp.sum(
                jaxent.softmax_cross_entropy_with_integer_labels(z, np.array([7]), class_weights=w)
            )
        )(z[:1])
        assert np.all(np.isnan(g))

    def test_softcap_keeps_minus_inf_logits_ruled_out(self):
        # Issue 9, defect 7: c tanh(-inf / c) = -c made a ruled-out class live.
        c = 3.0
        z = np.array([[0.5, -np.inf, 2.0, -1.0]])
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, np.array([1]), logit_softcap=c)
        assert out[0] == np.inf
        capped = c * np.tanh(np.array([[0.5, 2.0, -1.0]]) / c)
        out = jaxent.softmax_cross_entropy_with_integer_labels(z, np.array([2]), logit_softcap=c)
        np.testing.assert_allclose(out, np_int_ce(capped, [1]), rtol=1e-12)
        g = jax.grad(
            lambda z: jnp.sum(
                jaxent.softmax_cross_entropy_with_integer_labels(z, np.array([2]), logit_softcap=c)
            )
        )(z)
        assert g[0, 1] == 0 and np.all(np.isfinite(g))

    @pytest.mark.parametrize("k", [0, 5])
    def test_empty_class_axis_and_no_rows(self, k):
        # Issue 9, defect 4: K = 0 is a row with every class removed (0, gradient 0);
        # N = 0 gives an empty result.
        for n in (0, 3):
            z = np.zeros((n, k), np.float32)
            y = np.zeros((n, k), np.float32)
            labels = np.zeros(n, np.int32)
            for f in (
                lambda z, y=y: jaxent.softmax_cross_entropy(z, y),
                lambda z, lab=labels: jaxent.softmax_cross_entropy_with_integer_labels(z, lab),
                lambda z, lab=labels: jaxent.label_smoothed_cross_entropy(z, lab, 0.1),
                lambda z, y=y: jaxent.label_smoothed_cross_entropy(
                    z, y, 0.1, convention="off_target"
                ),
            ):
                out = f(z)
                assert out.shape == (n,)
                if k == 0:
                    np.testing.assert_array_equal(out, 0)
                    g = jax.grad(lambda z, f=f: f(z).sum())(z)
                    np.testing.assert_array_equal(g, 0)


def _every_loss(z, which):
    """Each softmax cross-entropy of jaxent on the same logits (label 0 / uniform labels)."""
    n, k = z.shape
    y = jnp.full((n, k), 1.0 / k, z.dtype)
    labels = jnp.zeros(n, jnp.int32)
    return {
        "soft": jaxent.softmax_cross_entropy(z, y),
        "int": jaxent.softmax_cross_entropy_with_integer_labels(z, labels),
        "int_options": jaxent.softmax_cross_entropy_with_integer_labels(
            z, labels, z_loss=1e-3, class_weights=jnp.ones(k, z.dtype), logit_softcap=30.0
        ),
        "smoothed": jaxent.label_smoothed_cross_entropy(z, labels, 0.1),
        "smoothed_off_target": jaxent.label_smoothed_cross_entropy(
            z, labels, 0.1, convention="off_target"
        ),
        "smoothed_soft": jaxent.label_smoothed_cross_entropy(z, y, 0.1),
        "wrapped": jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, 0.1)(z, labels),
    }[which]


LOSSES = ["soft", "int", "int_options", "smoothed", "smoothed_off_target", "smoothed_soft",
          "wrapped"]  # fmt: skip


@pytest.mark.parametrize("which", LOSSES)
def test_nan_or_plus_inf_logit_gives_a_nan_row_never_zero(which):
    # Issue 10: the empty-row guard `s > 0` is False for NaN and turned NaN rows into 0.
    z = np.random.default_rng(33).normal(size=(4, 5)).astype(np.float32)
    z[0, 2] = np.nan
    z[1, 4] = np.inf
    z[2, :] = -np.inf  # an empty row stays 0
    z = jnp.asarray(z)
    out = _every_loss(z, which)
    assert np.isnan(out[0]) and np.isnan(out[1])
    assert out[2] == 0 and np.isfinite(out[3])
    g = jax.grad(lambda z: jnp.sum(jnp.where(jnp.arange(4) == 0, _every_loss(z, which), 0)))(z)
    assert np.isnan(g[0]).any()


class TestBaseAndTemperature:
    def test_base_on_every_cross_entropy(self):
        # Issue 11: base= as on entropy (None = nats).
        rng = np.random.default_rng(34)
        z = rng.normal(size=(3, 4))
        y = rng.dirichlet(np.ones(4), 3)
        labels = np.array([0, 3, 1])
        p = rng.uniform(0.1, 0.9, size=4)
        yb = rng.uniform(size=4)
        calls = [
            (lambda **kw: jaxent.softmax_cross_entropy(z, y, **kw), softmax_ce(z, y)),
            (
                lambda **kw: jaxent.softmax_cross_entropy_with_integer_labels(z, labels, **kw),
                np_int_ce(z, labels),
            ),
            (
                lambda **kw: jaxent.label_smoothed_cross_entropy(z, labels, 0.0, **kw),
                np_int_ce(z, labels),
            ),
            (
                lambda **kw: jaxent.sigmoid_binary_cross_entropy(z[0], yb, **kw),
                sigmoid_bce(z[0], yb),
            ),
            (
                lambda **kw: jaxent.binary_cross_entropy(p, yb, **kw),
                -(yb * np.log(p) + (1 - yb) * np.log1p(-p)),
            ),
        ]
        for f, nats in calls:
            np.testing.assert_allclose(f(), nats, rtol=1e-12)
            np.testing.assert_allclose(f(base=2), nats / np.log(2), rtol=1e-12)
            np.testing.assert_allclose(f(base=10.0), nats / np.log(10), rtol=1e-12)
            with pytest.raises(ValueError, match="base"):
                f(base=1)

    def test_temperature_divides_the_logits_without_t_squared(self):
        # Issue 12: softmax(z / T), the result not multiplied by T^2.
        rng = np.random.default_rng(35)
        z = rng.normal(scale=3, size=(3, 6))
        y = rng.dirichlet(np.ones(6), 3)
        labels = np.array([5, 0, 2])
        t = 2.5
        np.testing.assert_allclose(
            jaxent.softmax_cross_entropy(z, y, temperature=t), softmax_ce(z / t, y), rtol=1e-12
        )
        np.testing.assert_allclose(
            jaxent.softmax_cross_entropy_with_integer_labels(z, labels, temperature=t),
            np_int_ce(z / t, labels),
            rtol=1e-12,
        )
        g = jax.grad(lambda z: jnp.sum(jaxent.softmax_cross_entropy(z, y, temperature=t)))(z)
        np.testing.assert_allclose(g, (sps.softmax(z / t, -1) - y) / t, rtol=1e-10, atol=1e-14)
        with pytest.raises(ValueError, match="temperature"):
            jaxent.softmax_cross_entropy(z, y, temperature=0.0)


@pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16])
def test_half_precision_under_strict_promotion(dt):
    # Issue 9, defect 13 (the suite runs under strict promotion; explicit here too).
    rng = np.random.default_rng(36)
    z = jnp.asarray(rng.normal(size=(3, 5)), dt)
    labels = jnp.array([0, 4, 2])
    y = jnp.asarray(rng.dirichlet(np.ones(5), 3), dt)
    with jax.numpy_dtype_promotion("strict"):
        for which in LOSSES:
            out = _every_loss(z, which)
            assert out.dtype == dt, which
        g = jax.grad(
            lambda z: (
                jaxent.softmax_cross_entropy_with_integer_labels(
                    z, labels, class_weights=jnp.ones(5, jnp.float32), z_loss=1e-3
                )
                .astype(jnp.float32)
                .sum()
            )
        )(z)
        assert g.dtype == dt
        ref = np_int_ce(np.asarray(z, np.float64), np.asarray(labels))
        np.testing.assert_allclose(
            np.asarray(jaxent.softmax_cross_entropy_with_integer_labels(z, labels), np.float64),
            ref,
            rtol=1e-2,
        )
        assert jaxent.softmax_cross_entropy(z, y).dtype == dt
