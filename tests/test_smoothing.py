"""Label smoothing: smooth_labels, label_smoothed_cross_entropy, with_label_smoothing,
optimal_logit_gap.

References are independent float64 numpy: optax for the "uniform" convention,
hand-written formulas for "off_target", and PyTorch's ``F.cross_entropy`` with
``label_smoothing`` written out (torch itself is not imported).
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest
import scipy.special as sps

import jaxent

CONVENTIONS = ["uniform", "off_target"]


# --------------------------------------------------------------------------- references


def rand_logits(seed, shape=(5, 7), scale=2.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


def rand_labels(seed, n, k):
    return np.random.default_rng(seed).integers(0, k, size=n)


def ref_smooth(onehot, eps, convention, k=None):
    """The two conventions for probability labels, float64."""
    y = np.asarray(onehot, np.float64)
    k = y.shape[-1] if k is None else k
    if convention == "uniform":
        return (1 - eps) * y + eps / k
    if k == 1:
        return y
    return (1 - eps) * y + eps / (k - 1) * (1 - y)


def ref_log_softmax(z, mask=None):
    z = np.asarray(z, np.float64)
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    with np.errstate(invalid="ignore"):
        return sps.log_softmax(z, axis=-1)


def ref_ce(z, target, mask=None):
    """-sum_c target_c log softmax(z)_c over kept classes, 0 log 0 = 0."""
    lp = ref_log_softmax(z, mask)
    keep = target != 0 if mask is None else (target != 0) & mask
    with np.errstate(invalid="ignore"):
        return -np.sum(np.where(keep, target * np.where(keep, lp, 0), 0), axis=-1)


def torch_label_smoothing_ce(z, labels, eps, weight=None, ignore_index=-100):
    """PyTorch's F.cross_entropy(z, labels, weight, ignore_index, label_smoothing=eps,
    reduction="none") for class-index targets (aten cross_entropy_loss_label_smoothing):

        (1 - eps) * nll_loss(log_softmax(z), labels, weight) + eps / K * smooth_loss,
        nll_loss_n = -w[y_n] log p_{n, y_n},  smooth_loss_n = -sum_j w_j log p_{n, j},

    both 0 on rows whose label is ignore_index.
    """
    z = np.asarray(z, np.float64)
    n, k = z.shape
    lp = sps.log_softmax(z, axis=-1)
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    ignored = labels == ignore_index
    lab = np.where(ignored, 0, labels)
    nll = np.where(ignored, 0.0, -w[lab] * lp[np.arange(n), lab])
    smooth = np.where(ignored, 0.0, -np.sum(lp * w, axis=-1))
    return (1 - eps) * nll + eps / k * smooth


def onehot(labels, k):
    return np.eye(k)[labels]


# --------------------------------------------------------------------------- smooth_labels


class TestSmoothLabels:
    @pytest.mark.parametrize("eps", [0.0, 0.1, 0.7])
    def test_uniform_equals_optax(self, eps):
        rng = np.random.default_rng(0)
        y = onehot(rng.integers(0, 6, size=8), 6)
        soft = rng.dirichlet(np.ones(6), size=8)
        for lab in (y, soft):
            np.testing.assert_allclose(
                jaxent.smooth_labels(lab, eps), optax.smooth_labels(lab, eps), rtol=1e-14
            )

    @pytest.mark.parametrize("eps", [0.0, 0.1, 0.7])
    def test_off_target_matches_hand_formula(self, eps):
        rng = np.random.default_rng(1)
        soft = rng.dirichlet(np.ones(5), size=4)
        np.testing.assert_allclose(
            jaxent.smooth_labels(soft, eps, convention="off_target"),
            ref_smooth(soft, eps, "off_target"),
            rtol=1e-14,
        )
        # one-hot: 1 - eps on the true class, eps / (K - 1) elsewhere, rows sum to 1
        out = np.asarray(jaxent.smooth_labels(np.eye(5), eps, convention="off_target"))
        expected = np.full((5, 5), eps / 4)
        np.fill_diagonal(expected, 1 - eps)
        np.testing.assert_allclose(out, expected, rtol=1e-14)
        np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-14)

    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_integer_labels_equal_one_hot(self, convention):
        labels = np.array([[0, 3], [2, 1]])
        out = jaxent.smooth_labels(labels, 0.2, num_classes=4, convention=convention)
        assert out.shape == (2, 2, 4)
        np.testing.assert_allclose(out, ref_smooth(onehot(labels, 4), 0.2, convention), 1e-14)
        # axis is where the class axis goes, as in jax.nn.one_hot
        out0 = jaxent.smooth_labels(labels, 0.2, num_classes=4, convention=convention, axis=0)
        np.testing.assert_allclose(out0, np.moveaxis(np.asarray(out), -1, 0), rtol=1e-14)

    def test_probability_label_axis(self):
        y = np.random.default_rng(2).dirichlet(np.ones(3), size=4).T  # classes on axis 0
        for conv in CONVENTIONS:
            np.testing.assert_allclose(
                jaxent.smooth_labels(y, 0.3, convention=conv, axis=0),
                ref_smooth(y.T, 0.3, conv).T,
                rtol=1e-14,
            )

    def test_out_of_range_integer_label_is_nan_row(self):
        out = np.asarray(jaxent.smooth_labels(np.array([1, 4, -1]), 0.1, num_classes=4))
        assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1:]))

    def test_single_class(self):
        # off_target with K = 1: no off-target class, all mass stays on the true class.
        out = jaxent.smooth_labels(np.array([0, 0]), 0.3, num_classes=1, convention="off_target")
        np.testing.assert_array_equal(out, np.ones((2, 1)))
        out = jaxent.smooth_labels(np.array([0]), 0.3, num_classes=1)
        np.testing.assert_allclose(out, [[1.0]], rtol=1e-15)

    def test_dtypes(self):
        y = jnp.eye(3, dtype=jnp.bfloat16)
        out = jaxent.smooth_labels(y, 0.1)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(out, np.float64), ref_smooth(np.eye(3), 0.1, "uniform"), rtol=1e-2
        )
        assert jaxent.smooth_labels(np.eye(3, dtype=np.float32), 0.1).dtype == jnp.float32
        assert jaxent.smooth_labels(np.eye(3, dtype=bool), 0.1).dtype == jnp.result_type(float)

    def test_traced_epsilon(self):
        f = jax.jit(lambda e: jaxent.smooth_labels(np.eye(4), e, convention="off_target"))
        np.testing.assert_allclose(f(0.2), ref_smooth(np.eye(4), 0.2, "off_target"), rtol=1e-14)

    def test_errors(self):
        y = np.eye(3)
        for bad in (-0.1, 1.0, 1.5, float("nan")):
            with pytest.raises(ValueError, match="epsilon"):
                jaxent.smooth_labels(y, bad)
        with pytest.raises(TypeError, match="epsilon"):
            jaxent.smooth_labels(y, True)
        with pytest.raises(ValueError, match="num_classes"):
            jaxent.smooth_labels(np.array([0, 1]), 0.1)
        with pytest.raises(ValueError, match="convention"):
            jaxent.smooth_labels(y, 0.1, convention="torch")
        with pytest.raises(ValueError, match="num_classes"):
            jaxent.smooth_labels(np.array([0]), 0.1, num_classes=0)
        with pytest.raises(ValueError, match="num_classes"):
            jaxent.smooth_labels(y, 0.1, num_classes=4)
        with pytest.raises(TypeError, match="labels"):
            jaxent.smooth_labels(y.astype(complex), 0.1)
        with pytest.raises(ValueError, match="axis"):
            jaxent.smooth_labels(y, 0.1, axis=2)


# --------------------------------------------------------------------------- the loss


class TestLossValues:
    @pytest.mark.parametrize("eps", [0.0, 0.1, 0.45])
    def test_uniform_equals_optax(self, eps):
        z = rand_logits(3)
        y = onehot(rand_labels(3, 5, 7), 7)
        expected = optax.softmax_cross_entropy(z, optax.smooth_labels(y, eps))
        np.testing.assert_allclose(
            jaxent.label_smoothed_cross_entropy(z, y, eps), expected, rtol=1e-12
        )
        np.testing.assert_allclose(
            jaxent.label_smoothed_cross_entropy(z, rand_labels(3, 5, 7), eps), expected, rtol=1e-12
        )

    @pytest.mark.parametrize(
        "weighted,ignore", [(False, None), (True, None), (False, -100), (True, 2)]
    )
    def test_uniform_equals_pytorch_formula(self, weighted, ignore):
        rng = np.random.default_rng(4)
        z = rand_logits(4, (6, 5))
        labels = rng.integers(0, 5, size=6)
        if ignore is not None:
            labels[[1, 4]] = ignore
        w = rng.uniform(0.2, 2.0, size=5) if weighted else None
        out = jaxent.label_smoothed_cross_entropy(
            z, labels, 0.15, ignore_index=ignore, class_weights=w
        )
        expected = torch_label_smoothing_ce(z, labels, 0.15, w, -100 if ignore is None else ignore)
        np.testing.assert_allclose(out, expected, rtol=1e-12)
        if ignore is not None:
            np.testing.assert_array_equal(np.asarray(out)[[1, 4]], 0.0)

    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_matches_float64_reference(self, convention):
        rng = np.random.default_rng(5)
        z = rand_logits(5, (6, 4))
        labels = rng.integers(0, 4, size=6)
        w = rng.uniform(0.2, 2.0, size=4)
        target = ref_smooth(onehot(labels, 4), 0.3, convention)
        for lab in (labels, onehot(labels, 4)):
            np.testing.assert_allclose(
                jaxent.label_smoothed_cross_entropy(z, lab, 0.3, convention=convention),
                ref_ce(z, target),
                rtol=1e-12,
            )
            np.testing.assert_allclose(
                jaxent.label_smoothed_cross_entropy(
                    z, lab, 0.3, convention=convention, class_weights=w
                ),
                ref_ce(z, target * w),
                rtol=1e-12,
            )

    def test_soft_labels(self):
        rng = np.random.default_rng(6)
        z = rand_logits(6, (3, 5))
        soft = rng.dirichlet(np.ones(5), size=3)
        for conv in CONVENTIONS:
            np.testing.assert_allclose(
                jaxent.label_smoothed_cross_entropy(z, soft, 0.2, convention=conv),
                ref_ce(z, ref_smooth(soft, 0.2, conv)),
                rtol=1e-12,
            )

    def test_epsilon_zero_is_plain_cross_entropy(self):
        z = rand_logits(7)
        labels = rand_labels(7, 5, 7)
        ls = ref_log_softmax(z)
        for conv in CONVENTIONS:
            np.testing.assert_allclose(
                jaxent.label_smoothed_cross_entropy(z, labels, 0.0, convention=conv),
                -ls[np.arange(5), labels],
                rtol=1e-12,
            )

    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_class_mask_equals_boolean_indexing(self, convention):
        rng = np.random.default_rng(8)
        z = rand_logits(8, (4, 6))
        mask = rng.random((4, 6)) < 0.7
        labels = np.array([int(rng.choice(np.flatnonzero(m))) for m in mask])
        out = jaxent.label_smoothed_cross_entropy(z, labels, 0.2, convention=convention, where=mask)
        out_hot = jaxent.label_smoothed_cross_entropy(
            z, onehot(labels, 6), 0.2, convention=convention, where=mask
        )
        for i in range(4):  # K counts the kept classes of the row
            kept = np.flatnonzero(mask[i])
            y = onehot(np.searchsorted(kept, labels[i]), kept.size)
            expected = ref_ce(z[i, kept], ref_smooth(y, 0.2, convention))
            np.testing.assert_allclose(out[i], expected, rtol=1e-12)
            np.testing.assert_allclose(out_hot[i], expected, rtol=1e-12)

    def test_row_mask_and_axis(self):
        z = rand_logits(9, (3, 4, 5))
        labels = np.random.default_rng(9).integers(0, 5, size=(3, 4))
        rows = np.array([[True, False, True, True]] * 3)
        base = np.asarray(jaxent.label_smoothed_cross_entropy(z, labels, 0.1))
        out = jaxent.label_smoothed_cross_entropy(z, labels, 0.1, where=rows)
        np.testing.assert_allclose(out, np.where(rows, base, 0), rtol=1e-14)
        moved = jaxent.label_smoothed_cross_entropy(np.moveaxis(z, -1, 1), labels, 0.1, axis=1)
        np.testing.assert_allclose(moved, base, rtol=1e-13)

    def test_out_of_range_label_is_nan_row(self):
        z = rand_logits(10, (3, 4))
        out = np.asarray(
            jaxent.label_smoothed_cross_entropy(z, np.array([1, 4, -1]), 0.1, ignore_index=-1)
        )
        assert np.isfinite(out[0]) and np.isnan(out[1]) and out[2] == 0

    def test_bfloat16_computes_in_float32(self):
        z = jnp.asarray(rand_logits(11), jnp.bfloat16)
        labels = rand_labels(11, 5, 7)
        out = jaxent.label_smoothed_cross_entropy(z, labels, 0.1)
        assert out.dtype == jnp.bfloat16
        f32 = jaxent.label_smoothed_cross_entropy(z.astype(jnp.float32), labels, 0.1)
        assert f32.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(out), np.asarray(f32.astype(jnp.bfloat16)))
        grad = jax.grad(lambda x: jaxent.label_smoothed_cross_entropy(x, labels, 0.1).sum())(z)
        assert grad.dtype == jnp.bfloat16

    def test_errors(self):
        z = rand_logits(12, (2, 3))
        with pytest.raises(TypeError, match="logits"):
            jaxent.label_smoothed_cross_entropy(np.ones((2, 3), int), np.array([0, 1]), 0.1)
        with pytest.raises(ValueError, match="labels"):
            jaxent.label_smoothed_cross_entropy(z, np.array([0, 1, 2]), 0.1)
        with pytest.raises(ValueError, match="labels"):
            jaxent.label_smoothed_cross_entropy(z, np.eye(3), 0.1)
        with pytest.raises(ValueError, match="epsilon"):
            jaxent.label_smoothed_cross_entropy(z, np.array([0, 1]), 1.0)
        with pytest.raises(ValueError, match="convention"):
            jaxent.label_smoothed_cross_entropy(z, np.array([0, 1]), 0.1, convention="t5x")
        with pytest.raises(ValueError, match="ignore_index"):
            jaxent.label_smoothed_cross_entropy(z, np.eye(3)[:2], 0.1, ignore_index=0)
        with pytest.raises(ValueError, match="class_weights"):
            jaxent.label_smoothed_cross_entropy(z, np.array([0, 1]), 0.1, class_weights=np.ones(4))


# --------------------------------------------------------------------------- derivatives


def plain_loss(z, target):
    """The plain definition -sum target * log_softmax(z), differentiated by autodiff."""
    return -jnp.sum(target * jax.nn.log_softmax(z, axis=-1), axis=-1)


class TestDerivatives:
    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_gradient_is_softmax_minus_smoothed_labels(self, convention):
        z = rand_logits(13)
        labels = rand_labels(13, 5, 7)
        target = ref_smooth(onehot(labels, 7), 0.2, convention)
        p = sps.softmax(z, axis=-1)
        for lab in (labels, onehot(labels, 7)):
            g = jax.grad(
                lambda x, lab=lab: jaxent.label_smoothed_cross_entropy(
                    x, lab, 0.2, convention=convention
                ).sum()
            )(z)
            np.testing.assert_allclose(g, p - target, rtol=1e-10, atol=1e-14)

    def test_weighted_gradient(self):
        # sum(a) p - a with a = w * smoothed labels
        rng = np.random.default_rng(14)
        z = rand_logits(14)
        labels = rand_labels(14, 5, 7)
        w = rng.uniform(0.5, 2, size=7)
        a = w * ref_smooth(onehot(labels, 7), 0.2, "off_target")
        p = sps.softmax(z, axis=-1)
        g = jax.grad(
            lambda x: jaxent.label_smoothed_cross_entropy(
                x, labels, 0.2, convention="off_target", class_weights=w
            ).sum()
        )(z)
        np.testing.assert_allclose(g, a.sum(-1, keepdims=True) * p - a, rtol=1e-10, atol=1e-14)

    @pytest.mark.parametrize("convention", CONVENTIONS)
    @pytest.mark.parametrize("integer", [True, False])
    def test_jacfwd_and_hessian_match_plain_definition(self, convention, integer):
        rng = np.random.default_rng(15)
        z = rand_logits(15, (3, 4))
        labels = rng.integers(0, 4, size=3)
        w = rng.uniform(0.5, 2, size=4)
        target = jnp.asarray(ref_smooth(onehot(labels, 4), 0.3, convention) * w)
        lab = labels if integer else onehot(labels, 4)

        def f(x):
            return jaxent.label_smoothed_cross_entropy(
                x, lab, 0.3, convention=convention, class_weights=w
            )

        np.testing.assert_allclose(f(z), plain_loss(z, target), rtol=1e-12)
        np.testing.assert_allclose(
            jax.jacfwd(f)(z), jax.jacfwd(plain_loss)(z, target), rtol=1e-10, atol=1e-14
        )
        np.testing.assert_allclose(
            jax.jacrev(f)(z), jax.jacrev(plain_loss)(z, target), rtol=1e-10, atol=1e-14
        )

        def total(x):
            return f(x).sum()

        np.testing.assert_allclose(
            jax.hessian(total)(z),
            jax.hessian(lambda x: plain_loss(x, target).sum())(z),
            rtol=1e-10,
            atol=1e-14,
        )
        if integer:  # the reduction kernel, against finite differences too
            jax.test_util.check_grads(total, (z,), order=2, modes=["rev"])

    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_gradient_in_epsilon_weights_and_soft_labels(self, convention):
        rng = np.random.default_rng(16)
        z = rand_logits(16, (3, 5))
        labels = rng.integers(0, 5, size=3)
        w = rng.uniform(0.5, 2, size=5)
        soft = rng.dirichlet(np.ones(5), size=3)

        def ours(eps, w, y):
            return jaxent.label_smoothed_cross_entropy(
                z, y, eps, convention=convention, class_weights=w
            ).sum()

        def plain(eps, w, y):
            if convention == "uniform":
                t = (1 - eps) * y + eps / 5
            else:
                t = (1 - eps) * y + eps / 4 * (1 - y)
            return plain_loss(z, t * w[None]).sum()

        for y_int, y in ((labels, onehot(labels, 5)), (None, soft)):
            lab = y if y_int is None else y_int
            g = jax.grad(ours, argnums=(0, 1))(0.2, w, lab)
            ref = jax.grad(plain, argnums=(0, 1))(0.2, w, y)
            for a, b in zip(g, ref, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10)
        np.testing.assert_allclose(
            jax.grad(ours, argnums=2)(0.2, w, soft),
            jax.grad(plain, argnums=2)(0.2, w, soft),
            rtol=1e-10,
        )

    def test_integer_labels_build_no_class_sized_array_outside_the_kernel(self):
        # Integer labels go straight to the reduction kernel: no one-hot or
        # smoothed [N, K] array is built from them.
        z = rand_logits(17, (4, 6))
        labels = rand_labels(17, 4, 6)
        for conv in CONVENTIONS:
            jaxpr = jax.make_jaxpr(
                lambda x, conv=conv: jaxent.label_smoothed_cross_entropy(
                    x, labels, 0.1, convention=conv
                )
            )(z).jaxpr
            while [e.primitive.name for e in jaxpr.eqns] == ["jit"]:  # one compiled call
                jaxpr = jaxpr.eqns[0].params["jaxpr"].jaxpr
            names = [e.primitive.name for e in jaxpr.eqns]
            assert "custom_jvp_call" in names
            outer = [v.aval.shape for e in jaxpr.eqns for v in e.outvars]
            assert (4, 6) not in outer
            if conv == "uniform":  # lse - (1 - eps) z_y - eps mean(z): no class index grid
                kernel = jaxpr.eqns[names.index("custom_jvp_call")].params["call_jaxpr"]
                assert "iota" not in [e.primitive.name for e in kernel.eqns]


# --------------------------------------------------------------------------- transforms, numerics


class TestTransformsAndNumerics:
    def test_jit_vmap(self):
        z = rand_logits(18, (3, 5, 6))
        labels = np.random.default_rng(18).integers(0, 6, size=(3, 5))
        base = jaxent.label_smoothed_cross_entropy(z, labels, 0.1, convention="off_target")
        f = functools.partial(jaxent.label_smoothed_cross_entropy, convention="off_target")
        np.testing.assert_allclose(jax.jit(f)(z, labels, 0.1), base, rtol=1e-14)
        np.testing.assert_allclose(
            jax.vmap(f, in_axes=(0, 0, None))(z, labels, 0.1), base, rtol=1e-14
        )
        # epsilon traced (a schedule) and vmapped
        eps = np.array([0.0, 0.1, 0.2])
        out = jax.jit(jax.vmap(f))(z, labels, eps)
        for i, e in enumerate(eps):
            np.testing.assert_allclose(out[i], f(z[i], labels[i], float(e)), rtol=1e-14)

    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_minus_inf_logits(self, convention):
        z = np.array([[0.0, -np.inf, 1.0], [-np.inf, 0.0, 1.0], [0.0, -np.inf, 1.0]])
        labels = np.array([0, 0, 0])
        for lab in (labels, onehot(labels, 3)):
            # smoothing mass on a -inf logit: +inf, the true value
            out = np.asarray(
                jaxent.label_smoothed_cross_entropy(z, lab, 0.1, convention=convention)
            )
            np.testing.assert_array_equal(out, [np.inf, np.inf, np.inf])
            # without smoothing the -inf off-target logit costs nothing
            out0 = jaxent.label_smoothed_cross_entropy(z, lab, 0.0, convention=convention)
            np.testing.assert_allclose(out0[0], -ref_log_softmax(z)[0, 0], rtol=1e-14)
            g = jax.grad(
                lambda x, lab=lab: jaxent.label_smoothed_cross_entropy(
                    x, lab, 0.1, convention=convention
                ).sum()
            )(z)
            assert np.all(np.isfinite(g))

    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_masked_classes_fully_masked_rows_ignored_rows(self, convention):
        z = np.array([[1.0, -np.inf, 0.5, 2.0], [0.3, 0.1, -0.2, 0.0], [-np.inf] * 4, [1.0] * 4])
        mask = np.array([[True, False, True, True], [False] * 4, [True] * 4, [True] * 4])
        labels = np.array([0, 1, 2, -100])

        def f(x, lab):
            return jaxent.label_smoothed_cross_entropy(
                x, lab, 0.2, convention=convention, where=mask, ignore_index=-100
            )

        out = np.asarray(f(z, labels))
        g = np.asarray(jax.grad(lambda x: f(x, labels).sum())(z))
        assert np.isfinite(out[0])  # masked class at -inf stays finite
        np.testing.assert_array_equal(out[1:], 0.0)  # fully masked, all -inf, ignored
        assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(g[0, 1], 0.0)
        np.testing.assert_array_equal(g[1:], 0.0)
        # the gradient of the kept row is softmax - smoothed labels over the kept classes
        kept = np.array([0, 2, 3])
        p = sps.softmax(z[0, kept])
        np.testing.assert_allclose(
            g[0, kept], p - ref_smooth(onehot(0, 3), 0.2, convention), rtol=1e-12
        )
        h = jax.hessian(lambda x: f(x, labels).sum())(z)
        assert np.all(np.isfinite(np.asarray(h)))

    def test_single_class(self):
        z = np.array([[3.0], [-1.0]])
        for conv in CONVENTIONS:
            f = functools.partial(jaxent.label_smoothed_cross_entropy, convention=conv)
            np.testing.assert_array_equal(f(z, np.array([0, 0]), 0.3), 0.0)
            g = jax.grad(lambda x, f=f: f(x, np.array([0, 0]), 0.3).sum())(z)
            np.testing.assert_allclose(g, 0.0, atol=1e-15)
        # a single kept class through `where` behaves the same
        z2 = rand_logits(19, (2, 3))
        mask = np.array([[True, False, False], [False, True, False]])
        out = jaxent.label_smoothed_cross_entropy(
            z2, np.array([0, 1]), 0.3, convention="off_target", where=mask
        )
        np.testing.assert_array_equal(out, 0.0)


# --------------------------------------------------------------------------- wrapper


class TestWithLabelSmoothing:
    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_wraps_optax_loss(self, convention):
        z = rand_logits(20)
        labels = rand_labels(20, 5, 7)
        loss = jaxent.with_label_smoothing(
            optax.losses.softmax_cross_entropy, 0.1, convention=convention
        )
        expected = ref_ce(z, ref_smooth(onehot(labels, 7), 0.1, convention))
        np.testing.assert_allclose(loss(z, labels), expected, rtol=1e-12)
        np.testing.assert_allclose(loss(z, onehot(labels, 7)), expected, rtol=1e-12)
        np.testing.assert_allclose(jax.jit(loss)(z, labels), expected, rtol=1e-12)
        np.testing.assert_allclose(jax.vmap(loss)(z, labels), expected, rtol=1e-12)
        g = jax.grad(lambda x: loss(x, labels).sum())(z)
        p = sps.softmax(z, axis=-1)
        np.testing.assert_allclose(
            g, p - ref_smooth(onehot(labels, 7), 0.1, convention), rtol=1e-10, atol=1e-14
        )

    def test_wraps_jaxent_loss_and_keeps_signature(self):
        loss = jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, 0.2, num_classes=4)
        # Its own name and docstring (issue 9, defect 14), the inner loss's signature.
        assert loss.__name__ == loss.__qualname__ == "label_smoothed_softmax_cross_entropy"
        assert "epsilon=0.2" in loss.__doc__ and "eps/K" in loss.__doc__
        assert inspect.signature(loss) == inspect.signature(jaxent.softmax_cross_entropy)
        z = rand_logits(21, (4, 3))  # classes on axis 0
        labels = np.array([0, 3, 1])
        out = loss(z, labels, axis=0)
        np.testing.assert_allclose(
            out, ref_ce(z.T, ref_smooth(onehot(labels, 4), 0.2, "uniform")), rtol=1e-12
        )
        np.testing.assert_allclose(
            out,
            jaxent.label_smoothed_cross_entropy(z, labels, 0.2, axis=0),
            rtol=1e-12,
        )

    def test_traced_epsilon_schedule(self):
        z = rand_logits(22)
        labels = rand_labels(22, 5, 7)

        @jax.jit
        def step_loss(z, step):
            eps = 0.2 * jnp.minimum(step / 10.0, 1.0)
            return jaxent.with_label_smoothing(optax.losses.softmax_cross_entropy, eps)(z, labels)

        for step in (0, 5, 20):
            eps = 0.2 * min(step / 10, 1)
            np.testing.assert_allclose(
                step_loss(z, step),
                ref_ce(z, ref_smooth(onehot(labels, 7), eps, "uniform")),
                rtol=1e-12,
            )

    def test_errors(self):
        ce = optax.losses.softmax_cross_entropy
        with pytest.raises(ValueError, match="epsilon"):
            jaxent.with_label_smoothing(ce, -0.5)
        with pytest.raises(ValueError, match="convention"):
            jaxent.with_label_smoothing(ce, 0.1, convention="ε/K")
        with pytest.raises(ValueError, match="num_classes"):
            jaxent.with_label_smoothing(ce, 0.1, num_classes=0)
        with pytest.raises(TypeError, match="loss_fn"):
            jaxent.with_label_smoothing("ce", 0.1)
        with pytest.raises(ValueError, match="num_classes"):
            jaxent.with_label_smoothing(ce, 0.1, num_classes=5)(np.zeros((2, 3)), np.array([0, 1]))


# --------------------------------------------------------------------------- optimal gap


class TestOptimalLogitGap:
    def test_closed_form(self):
        # uniform: log((1 - e + e/K) / (e/K)); off_target: log((1 - e)(K - 1) / e)
        np.testing.assert_allclose(
            jaxent.optimal_logit_gap(0.1, 10), np.log(0.91 / 0.01), rtol=1e-12
        )
        np.testing.assert_allclose(
            jaxent.optimal_logit_gap(0.1, 10, convention="off_target"),
            np.log(0.9 * 9 / 0.1),
            rtol=1e-12,
        )
        for conv in CONVENTIONS:
            assert jaxent.optimal_logit_gap(0.0, 10, convention=conv) == np.inf
        # traced epsilon
        np.testing.assert_allclose(
            jax.jit(jaxent.optimal_logit_gap, static_argnums=1)(0.1, 10), np.log(91), rtol=1e-12
        )

    @pytest.mark.parametrize("convention", CONVENTIONS)
    def test_minimising_the_loss_reaches_the_gap(self, convention):
        k, eps = 6, 0.2
        labels = np.array([2])

        def loss(z):
            return jaxent.label_smoothed_cross_entropy(z, labels, eps, convention=convention).sum()

        opt = optax.lbfgs()

        @jax.jit
        def run(z):
            def body(carry, _):
                z, state = carry
                value, grad = optax.value_and_grad_from_state(loss)(z, state=state)
                updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=loss)
                return (optax.apply_updates(z, updates), state), None

            (z, _), _ = jax.lax.scan(body, (z, opt.init(z)), None, length=50)
            return z

        # optax.lbfgs itself mixes int32 and int64 under x64 (not jaxent's code).
        with jax.numpy_dtype_promotion("standard"):
            z = run(jnp.zeros((1, k)))
        others = np.delete(np.asarray(z[0]), 2)
        np.testing.assert_allclose(others, others.mean(), atol=1e-6)
        np.testing.assert_allclose(
            z[0, 2] - others.mean(),
            jaxent.optimal_logit_gap(eps, k, convention=convention),
            rtol=1e-6,
        )

    def test_errors(self):
        with pytest.raises(ValueError, match="num_classes"):
            jaxent.optimal_logit_gap(0.1, 1)
        with pytest.raises(TypeError, match="num_classes"):
            jaxent.optimal_logit_gap(0.1, 2.5)
        with pytest.raises(ValueError, match="epsilon"):
            jaxent.optimal_logit_gap(1.0, 10)
        with pytest.raises(ValueError, match="convention"):
            jaxent.optimal_logit_gap(0.1, 10, convention="x")


# --------------------------------------------------------------------------- issue 9 regressions


class TestIssue9:
    def test_smooth_labels_narrow_dtype_does_not_wrap(self):
        # Defect 5: int8 label 10 with 300 classes put mass on 10 and 266 (10 + 256).
        out = np.asarray(jaxent.smooth_labels(np.array([10], np.int8), 0.1, num_classes=300))
        want = ref_smooth(onehot(np.array([10]), 300), 0.1, "uniform")
        np.testing.assert_allclose(out, want, rtol=1e-6)
        assert out[0, 266] == out[0, 0]

    def test_narrow_dtype_label_smoothed_loss(self):
        z = rand_logits(40, (2, 300))
        labels = np.array([10, 290], np.int16)
        for conv in CONVENTIONS:
            want = ref_ce(z, ref_smooth(onehot(labels.astype(np.int64), 300), 0.2, conv))
            out = jaxent.label_smoothed_cross_entropy(
                z, labels.astype(np.uint16), 0.2, convention=conv
            )
            np.testing.assert_allclose(out, want, rtol=1e-12)

    def test_wrapper_rejects_integer_label_losses(self):
        # Defect 14: optax's integer-label loss used to fail deep inside optax.
        for fn in (
            optax.losses.softmax_cross_entropy_with_integer_labels,
            jaxent.softmax_cross_entropy_with_integer_labels,
        ):
            with pytest.raises(TypeError, match="label_smoothed_cross_entropy") as err:
                jaxent.with_label_smoothing(fn, 0.1)
            assert "soft-label loss" in str(err.value)

    def test_wrapper_ignore_index_and_where_drop_rows(self):
        z = rand_logits(41, (4, 6))
        labels = np.array([1, -100, 5, 0])
        keep = labels != -100
        want = ref_ce(z[keep], ref_smooth(onehot(labels[keep], 6), 0.1, "uniform"))
        for ce in (optax.losses.softmax_cross_entropy, jaxent.softmax_cross_entropy):
            loss = jaxent.with_label_smoothing(ce, 0.1, ignore_index=-100)
            out = loss(z, labels)
            np.testing.assert_allclose(out[keep], want, rtol=1e-12)
            assert out[1] == 0
            g = jax.grad(lambda x, loss=loss: loss(x, labels).sum())(z)
            np.testing.assert_array_equal(g[1], 0)
        # Without ignore_index: a NaN row, removable with the inner loss's row mask.
        plain = jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, 0.1)
        assert np.isnan(plain(z, labels)[1])
        out = plain(z, np.where(keep, labels, 0), where=keep)
        np.testing.assert_allclose(out[keep], want, rtol=1e-12)

    def test_wrapper_has_its_own_name_and_docstring(self):
        loss = jaxent.with_label_smoothing(
            optax.losses.softmax_cross_entropy, 0.3, convention="off_target"
        )
        assert loss.__name__ == "label_smoothed_softmax_cross_entropy"
        assert "epsilon=0.3" in loss.__doc__ and "eps/(K - 1)" in loss.__doc__
        assert loss.__doc__ != optax.losses.softmax_cross_entropy.__doc__

    @pytest.mark.parametrize("dt", [jnp.bfloat16, jnp.float16])
    def test_wrapper_returns_the_logits_dtype(self, dt):
        # Defect 13: bfloat16 logits gave a float32 loss.
        z = jnp.asarray(rand_logits(42, (3, 5)), dt)
        labels = np.array([0, 4, 2])
        with jax.numpy_dtype_promotion("strict"):
            for ce in (optax.losses.softmax_cross_entropy, jaxent.softmax_cross_entropy):
                out = jaxent.with_label_smoothing(ce, 0.1)(z, labels)
                assert out.dtype == dt
                want = ref_ce(
                    np.asarray(z, np.float64), ref_smooth(onehot(labels, 5), 0.1, "uniform")
                )
                np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=2e-2)

    def test_wrapper_fast_path_equals_the_one_hot_path(self):
        z = rand_logits(43, (3, 7))
        labels = np.array([6, 0, 3])
        fast = jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, 0.2)(z, labels)
        slow = jaxent.with_label_smoothing(lambda x, y: jaxent.softmax_cross_entropy(x, y), 0.2)
        np.testing.assert_allclose(fast, slow(z, labels), rtol=1e-12)
        np.testing.assert_allclose(
            fast, ref_ce(z, ref_smooth(onehot(labels, 7), 0.2, "uniform")), rtol=1e-12
        )
