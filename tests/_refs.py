"""Independent float64 references (numpy/scipy only, never jaxent code)."""

import numpy as np
import scipy.special as sps


def softmax(z, axis=-1, where=None):
    z = np.asarray(z, np.float64)
    if where is not None:
        z = np.where(where, z, -np.inf)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(z - m)
    s = e.sum(axis=axis, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1), 0)


def log_softmax(z, axis=-1):
    return sps.log_softmax(np.asarray(z, np.float64), axis=axis)


def xlogy(x, y):
    """x * log(y) with 0 * log(anything) = 0."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    out = np.zeros_like(x)
    nz = x != 0
    with np.errstate(divide="ignore"):
        out[nz] = x[nz] * np.log(y[nz])
    return out


def softmax_ce(z, y, axis=-1):
    return -np.sum(xlogy(y, softmax(z, axis)), axis=axis)


def int_ce(z, labels, weights=None, ignore_index=None):
    """PyTorch's F.cross_entropy(..., reduction='none') written out."""
    z = np.asarray(z, np.float64)
    ls = log_softmax(z)
    n = np.arange(z.shape[0])
    lab = np.clip(labels, 0, z.shape[-1] - 1)
    w = np.ones(z.shape[0]) if weights is None else np.asarray(weights, np.float64)[lab]
    loss = -w * ls[n, lab]
    if ignore_index is not None:
        loss = np.where(labels == ignore_index, 0.0, loss)
    return loss


def sigmoid_bce(z, y, pos_weight=1.0):
    """PyTorch's binary_cross_entropy_with_logits formula, in float64."""
    z = np.asarray(z, np.float64)
    log_sig = -np.logaddexp(0, -z)
    log_1msig = -np.logaddexp(0, z)
    return -(pos_weight * y * log_sig + (1 - y) * log_1msig)


def kl(p, q, axis=-1):
    return np.sum(sps.rel_entr(p, q), axis=axis)


def compiled_programs(fn, *args):
    """The XLA programs compiled by one call of ``fn(*args)`` from empty caches.

    An eager call of a public function should compile one program (one
    dispatch, as ``jax.nn.log_softmax``); op-by-op execution compiles one per
    primitive.
    """
    import logging

    import jax

    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Collect(level=logging.DEBUG)
    logger = logging.getLogger("jax")
    jax.clear_caches()
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            jax.block_until_ready(fn(*args))
    finally:
        logger.removeHandler(handler)
    return [m for m in messages if "XLA compilation" in m]
