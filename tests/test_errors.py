"""Bad input fails at trace time with a TypeError/ValueError naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxent

Z = np.zeros((3, 4), np.float32)
P = np.full((3, 4), 0.25, np.float32)
LABELS = np.array([0, 1, 2])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        # integer logits
        (
            lambda: jaxent.softmax(np.zeros((2, 3), np.int32)),
            TypeError,
            "`logits` must be a floating",
        ),
        (lambda: jaxent.log_softmax(np.zeros(3, np.int32)), TypeError, "`logits`"),
        (lambda: jaxent.logsumexp(np.zeros(3, bool)), TypeError, "`logits`"),
        (lambda: jaxent.softmax_cross_entropy(np.zeros((3, 4), int), P), TypeError, "`logits`"),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(np.zeros((3, 4), int), LABELS),
            TypeError,
            "`logits`",
        ),
        (
            lambda: jaxent.sigmoid_binary_cross_entropy(np.zeros(3, int), np.zeros(3)),
            TypeError,
            "`logits`",
        ),
        (lambda: jaxent.entropy_from_logits(np.zeros(3, int)), TypeError, "`logits`"),
        (lambda: jaxent.kl_divergence_from_logits(np.zeros(3, int), Z[0]), TypeError, "`p_logits`"),
        (lambda: jaxent.kl_divergence_from_logits(Z[0], np.zeros(4, int)), TypeError, "`q_logits`"),
        (lambda: jaxent.kl_estimate(np.zeros(3, int), np.zeros(3)), TypeError, "`log_p`"),
        (
            lambda: jaxent.kl_divergence_diag_gaussian(np.zeros(3, int), 1.0, 0.0, 1.0),
            TypeError,
            "`mean_p`",
        ),
        # integer labels required / float labels rejected
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(Z, LABELS.astype(float)),
            TypeError,
            "`labels` must be an integer",
        ),
        # shape mismatches
        (
            lambda: jaxent.softmax_cross_entropy(Z, P[:, :3]),
            ValueError,
            "`logits` and `labels` must have the same shape",
        ),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(Z, LABELS[:2]),
            ValueError,
            "`labels` must have the shape",
        ),
        (lambda: jaxent.kl_divergence(P, P[:2]), ValueError, "`p` and `q`"),
        (lambda: jaxent.cross_entropy(P, P[:, :2]), ValueError, "`p` and `q`"),
        (lambda: jaxent.js_divergence(P, P.T), ValueError, "`p` and `q`"),
        (
            lambda: jaxent.kl_divergence_from_logits(Z, Z[:2]),
            ValueError,
            "`p_logits` and `q_logits`",
        ),
        (lambda: jaxent.binary_cross_entropy(P, P[0, :3]), ValueError, "`probs` and `labels`"),
        (
            lambda: jaxent.sigmoid_binary_cross_entropy(Z, np.zeros((3, 5))),
            ValueError,
            "`logits` with shape",
        ),
        (
            lambda: jaxent.sigmoid_binary_cross_entropy(Z, P, pos_weight=np.ones(5)),
            ValueError,
            "`pos_weight`",
        ),
        (lambda: jaxent.kl_estimate(np.zeros(3), np.zeros(4)), ValueError, "`log_p` with shape"),
        (
            lambda: jaxent.kl_divergence_diag_gaussian(
                np.zeros(3), np.ones(2), np.zeros(3), np.ones(3)
            ),
            ValueError,
            "broadcast together",
        ),
        (lambda: jaxent.weighted_mean(np.zeros(3), weights=np.zeros(4)), ValueError, "`weights`"),
        (lambda: jaxent.softmax(Z, where=np.ones(5, bool)), ValueError, "`where`"),
        (lambda: jaxent.softmax(Z, where=np.ones((2, 4), bool)), ValueError, "`where`"),
        (
            lambda: jaxent.entropy(P, where=np.ones((1, 1, 1, 4), bool)),
            ValueError,
            "`where` must have the rank",
        ),
        (
            lambda: jaxent.softmax(Z, where=np.ones((3, 4), np.float32)),
            TypeError,
            "`where` must be a boolean",
        ),
        # axis out of range
        (lambda: jaxent.softmax(Z, axis=2), ValueError, "`axis`=2 is out of range"),
        (lambda: jaxent.logsumexp(Z, axis=-3), ValueError, "`axis`"),
        (lambda: jaxent.entropy(P, axis=5), ValueError, "`axis`"),
        (lambda: jaxent.kl_divergence(P, P, axis=2), ValueError, "`axis`"),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(Z, LABELS, axis=3),
            ValueError,
            "`axis`",
        ),
        (
            lambda: jaxent.kl_divergence_diag_gaussian(np.zeros(3), 1.0, 0.0, 1.0, axis=1),
            ValueError,
            "`axis`",
        ),
        (lambda: jaxent.softmax(Z, axis=(0, 1)), TypeError, "`axis` must be a single int"),
        (lambda: jaxent.softmax(np.float32(1.0)), ValueError, "`axis`"),
        # base
        (
            lambda: jaxent.entropy(P, base=0),
            ValueError,
            "`base` must be a finite number > 0 and != 1",
        ),
        (lambda: jaxent.entropy(P, base=-2), ValueError, "`base`"),
        (lambda: jaxent.kl_divergence(P, P, base=1), ValueError, "`base`"),
        (lambda: jaxent.self_information(P, base=1.0), ValueError, "`base`"),
        (lambda: jaxent.binary_entropy(P, base=float("inf")), ValueError, "`base`"),
        (lambda: jaxent.entropy_from_logits(Z, base="two"), TypeError, "`base`"),
        (
            lambda: jaxent.js_divergence(P, P, base=np.ones(2)),
            ValueError,
            "`base` must be a scalar",
        ),
        # options and hyper-parameters
        (
            lambda: jaxent.kl_estimate(np.zeros(3), np.zeros(3), estimator="k4"),
            ValueError,
            "Unknown `estimator`='k4'",
        ),
        (lambda: jaxent.js_divergence(P, P, beta=1.5), ValueError, "`beta` must be in"),
        (lambda: jaxent.js_divergence_from_logits(Z, Z, beta=-0.1), ValueError, "`beta`"),
        (lambda: jaxent.js_divergence(P, P, beta=True), TypeError, "`beta`"),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(
                Z, LABELS, class_weights=np.ones(3)
            ),
            ValueError,
            "`class_weights` must have shape \\(4,\\)",
        ),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(
                Z, LABELS, class_weights=np.ones(4, int)
            ),
            TypeError,
            "`class_weights`",
        ),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(Z, LABELS, ignore_index=1.5),
            TypeError,
            "`ignore_index`",
        ),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(Z, LABELS, z_loss=-1.0),
            ValueError,
            "`z_loss`",
        ),
        (
            lambda: jaxent.softmax_cross_entropy_with_integer_labels(Z, LABELS, logit_softcap=0.0),
            ValueError,
            "`logit_softcap`",
        ),
        (lambda: jaxent.softmax(np.zeros(3, np.complex64)), TypeError, "`logits`"),
        (lambda: jaxent.entropy(np.zeros(3, np.complex64)), TypeError, "`p` must be real"),
    ],
)
def test_bad_input_message(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_errors_raise_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="`base`"):
        jax.jit(lambda p: jaxent.entropy(p, base=1))(P)
    with pytest.raises(ValueError, match="`axis`"):
        jax.jit(lambda z: jaxent.softmax(z, axis=4))(Z)


def test_traced_base_and_beta_are_accepted():
    out = jax.jit(lambda p, b: jaxent.entropy(p, base=b))(P, 2.0)
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)
    out = jax.jit(
        lambda z, zl: jaxent.softmax_cross_entropy_with_integer_labels(z, LABELS, z_loss=zl)
    )(Z, 0.1)
    lse = np.log(4.0)
    np.testing.assert_allclose(out, lse + 0.1 * lse**2, rtol=1e-6)


def test_integer_probabilities_are_promoted():
    assert jaxent.entropy(np.array([1, 0])).dtype == jnp.result_type(float)
    np.testing.assert_allclose(
        jaxent.softmax_cross_entropy(Z, np.eye(4, dtype=int)[LABELS]), np.log(4.0), rtol=1e-6
    )
