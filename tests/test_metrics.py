"""Mergeable metrics (jaxent.metrics): values against numpy float64 references
of the torchmetrics / lm-eval definitions, the clu.metrics protocol, exact
merging across unequal batches, jit/vmap, an 8-device psum, and
fit_temperature against a grid search.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxent
from jaxent import metrics

IGNORE = -100


# --------------------------------------------------------------------------- references


def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _calibration_ref(z, y, n_bins, norm):
    """torchmetrics' MulticlassCalibrationError (_binning_bucketize + _ce_compute)."""
    p = np.exp(_log_softmax64(z))
    conf, pred = p.max(-1), p.argmax(-1)
    acc = (pred == y).astype(np.float64)
    # torch.bucketize(conf, linspace(0, 1, n + 1), right=True) - 1, float32 boundaries
    bounds = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    idx = np.searchsorted(bounds, conf.astype(np.float32), side="right") - 1
    count = np.bincount(idx, minlength=n_bins + 1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        conf_bin = np.nan_to_num(np.bincount(idx, conf, minlength=n_bins + 1) / count)
        acc_bin = np.nan_to_num(np.bincount(idx, acc, minlength=n_bins + 1) / count)
    prop = count / count.sum()
    if norm == "l1":
        return np.sum(np.abs(acc_bin - conf_bin) * prop)
    if norm == "max":
        return np.max(np.abs(acc_bin - conf_bin))
    return np.sqrt(np.sum((acc_bin - conf_bin) ** 2 * prop))


def _refs(z, y, keep):
    """Reference values over the kept rows (classes last)."""
    z, y = z[keep], y[keep]
    ls = _log_softmax64(z)
    p = np.exp(ls)
    nll = -ls[np.arange(len(y)), y]
    rank = (z > z[np.arange(len(y)), y][:, None]).sum(-1)
    onehot = np.eye(z.shape[-1])[y]
    return {
        "nll": nll.mean(),
        "perplexity": np.exp(nll.mean()),
        "accuracy": np.mean(rank < 1),
        "top3": np.mean(rank < 3),
        "brier": np.mean(np.sum((p - onehot) ** 2, -1)),
        "entropy": np.mean(-np.sum(p * ls, -1)),
        "ece": _calibration_ref(z, y, 15, "l1"),
        "mce": _calibration_ref(z, y, 15, "max"),
        "rmsce": _calibration_ref(z, y, 15, "l2"),
        "nll_sum": nll.sum(),
    }


def _data(seed=0, n=300, k=7, scale=3.0, ignore_frac=0.3):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, k)) * scale).astype(np.float32)
    # labels correlated with the logits so accuracy and calibration are non-trivial
    y = np.where(rng.random(n) < 0.6, z.argmax(-1), rng.integers(0, k, n))
    y = np.where(rng.random(n) < ignore_frac, IGNORE, y)
    return z, y


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("x64", [False, True])
def test_metrics_match_references(x64):
    z, y = _data(1)
    keep = y != IGNORE
    ref = _refs(z.astype(np.float64), y, keep)
    with jax.enable_x64(x64):
        tol = dict(rtol=1e-5, atol=1e-6) if not x64 else dict(rtol=1e-9, atol=1e-12)
        zj, yj = jnp.asarray(z.astype(np.float64) if x64 else z), jnp.asarray(y)
        kw = dict(ignore_index=IGNORE)
        got = {
            "nll": metrics.NegativeLogLikelihood.from_model_output(zj, yj, **kw),
            "perplexity": metrics.Perplexity.from_model_output(zj, yj, **kw),
            "accuracy": metrics.Accuracy.from_model_output(zj, yj, **kw),
            "top3": metrics.Accuracy.from_model_output(zj, yj, top_k=3, **kw),
            "brier": metrics.BrierScore.from_model_output(zj, yj, **kw),
            "entropy": metrics.PredictiveEntropy.from_model_output(zj, yj, **kw),
            "ece": metrics.CalibrationError.from_model_output(zj, yj, **kw),
            "mce": metrics.CalibrationError.from_model_output(zj, yj, norm="max", **kw),
            "rmsce": metrics.CalibrationError.from_model_output(zj, yj, norm="l2", **kw),
        }
        for name, state in got.items():
            np.testing.assert_allclose(state.compute(), ref[name], err_msg=name, **tol)
        bits = metrics.NegativeLogLikelihood.from_model_output(zj, yj, base=2, **kw)
        np.testing.assert_allclose(bits.compute(), ref["nll"] / np.log(2), **tol)
        # lm-eval bits per byte: sum NLL / (ln 2 * sum bytes)
        nbytes = np.random.default_rng(2).integers(1, 6, y.shape)
        bpb = metrics.BitsPerByte.from_model_output(zj, yj, jnp.asarray(nbytes), **kw)
        np.testing.assert_allclose(
            bpb.compute(), ref["nll_sum"] / (np.log(2) * nbytes[keep].sum()), **tol
        )
        total = metrics.BitsPerByte.from_model_output(zj, yj, 1000.0, **kw)
        np.testing.assert_allclose(total.compute(), ref["nll_sum"] / (np.log(2) * 1000), **tol)
        # from_logits: the same values from one pass
        states = metrics.from_logits(zj, yj, ignore_index=IGNORE, top_k=3)
        for name, key in [
            ("nll", "nll"),
            ("top3", "top_k_accuracy"),
            ("ece", "ece"),
            ("mce", "mce"),
            ("rmsce", "rmsce"),
            ("brier", "brier"),
            ("entropy", "entropy"),
            ("accuracy", "accuracy"),
        ]:
            np.testing.assert_allclose(states[key].compute(), ref[name], err_msg=key, **tol)


def test_where_equals_ignore_index_and_nd_inputs():
    z, y = _data(3, n=240)
    keep = y != IGNORE
    y0 = np.where(keep, y, 0)
    a = metrics.from_logits(jnp.asarray(z), jnp.asarray(y), ignore_index=IGNORE)
    b = metrics.from_logits(jnp.asarray(z), jnp.asarray(y0), where=jnp.asarray(keep))
    c = metrics.from_logits(  # [batch, time, classes]
        jnp.asarray(z.reshape(8, 30, -1)),
        jnp.asarray(y0.reshape(8, 30)),
        where=jnp.asarray(keep.reshape(8, 30)),
    )
    for k in a:
        np.testing.assert_allclose(a[k].compute(), b[k].compute(), rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(a[k].compute(), c[k].compute(), rtol=1e-6, err_msg=k)


def test_mutual_information_metric():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(5, 40, 6)).astype(np.float32) * 2
    keep = rng.random(40) < 0.7
    per = np.asarray(jaxent.mutual_information(jnp.asarray(z)), np.float64)
    s = metrics.MutualInformation.from_model_output(jnp.asarray(z), where=jnp.asarray(keep))
    np.testing.assert_allclose(s.compute(), per[keep].mean(), rtol=1e-5)
    s2 = metrics.MutualInformation.from_model_output(
        jnp.asarray(np.moveaxis(z, 0, 1)), member_axis=1, where=jnp.asarray(keep), base=2
    )
    np.testing.assert_allclose(s2.compute(), per[keep].mean() / np.log(2), rtol=1e-5)


def test_calibration_confidence_one_and_bins():
    # confidence exactly 1 in float32 goes to torchmetrics' extra bin
    z = np.array([[40.0, 0.0], [40.0, 0.0], [0.3, 0.0], [0.0, 2.0]], np.float32)
    y = np.array([0, 1, 0, 1])
    for norm in ("l1", "l2", "max"):
        s = metrics.CalibrationError.from_model_output(
            jnp.asarray(z), jnp.asarray(y), num_bins=4, norm=norm
        )
        np.testing.assert_allclose(s.compute(), _calibration_ref(z, y, 4, norm), rtol=1e-6)
    count, conf, acc = s.bins()
    assert count.shape == (5,) and int(count[4]) == 2
    np.testing.assert_allclose(acc[4], 0.5)


# --------------------------------------------------------------------------- merging


def _split(z, y, sizes):
    out, start = [], 0
    for n in sizes:
        out.append((z[start : start + n], y[start : start + n]))
        start += n
    return out


def test_merge_is_exact_across_unequal_batches():
    z, y = _data(5, n=300)
    # three batches with very different numbers of kept tokens
    y[:100] = np.where(np.arange(100) < 90, IGNORE, y[:100])  # 10 kept
    y[100:150] = np.where(y[100:150] == IGNORE, 0, y[100:150])  # 50 kept
    ref = _refs(z.astype(np.float64), y, y != IGNORE)
    batches = _split(z, y, [100, 50, 150])
    kinds = {
        "perplexity": lambda zz, yy: metrics.Perplexity.from_model_output(
            zz, yy, ignore_index=IGNORE
        ),
        "nll": lambda zz, yy: metrics.NegativeLogLikelihood.from_model_output(
            zz, yy, ignore_index=IGNORE
        ),
        "accuracy": lambda zz, yy: metrics.Accuracy.from_model_output(zz, yy, ignore_index=IGNORE),
        "mce": lambda zz, yy: metrics.CalibrationError.from_model_output(
            zz, yy, norm="max", ignore_index=IGNORE
        ),
        "ece": lambda zz, yy: metrics.CalibrationError.from_model_output(
            zz, yy, ignore_index=IGNORE
        ),
        "brier": lambda zz, yy: metrics.BrierScore.from_model_output(zz, yy, ignore_index=IGNORE),
    }
    for name, make in kinds.items():
        states = [make(jnp.asarray(a), jnp.asarray(b)) for a, b in batches]
        merged = states[0].merge(states[1]).merge(states[2])
        np.testing.assert_allclose(merged.compute(), ref[name], rtol=2e-5, err_msg=name)
        # merging in another order, and from empty
        empty = type(states[0]).empty(**({"norm": "max"} if name == "mce" else {}))
        other = empty.merge(states[2]).merge(states[0].merge(states[1]))
        np.testing.assert_allclose(other.compute(), merged.compute(), rtol=1e-6, err_msg=name)
    # averaging batch perplexities (metrax-style, by batch) would be wrong here
    ppl = [kinds["perplexity"](jnp.asarray(a), jnp.asarray(b)).compute() for a, b in batches]
    assert abs(float(np.mean(ppl)) - ref["perplexity"]) > 0.05 * ref["perplexity"]


def test_reduce_over_stacked_axis_and_vmap_jit():
    z, y = _data(6, n=240)
    zb, yb = jnp.asarray(z.reshape(4, 60, -1)), jnp.asarray(y.reshape(4, 60))
    make = jax.jit(lambda a, b: metrics.from_logits(a, b, ignore_index=IGNORE))
    stacked = jax.vmap(make)(zb, yb)
    whole = metrics.from_logits(jnp.asarray(z), jnp.asarray(y), ignore_index=IGNORE)
    for k in whole:
        reduced = stacked[k].reduce()
        assert jax.tree.structure(reduced) == jax.tree.structure(whole[k])
        np.testing.assert_allclose(reduced.compute(), whole[k].compute(), rtol=1e-5, err_msg=k)
    # states pass through jit as pytrees; configuration is static metadata
    s = jax.jit(lambda a: a.merge(a))(whole["mce"])
    assert s.norm == "max" and s.num_bins == 15


def test_clu_style_collection():
    """A minimal stand-in for clu.metrics.Collection: it calls exactly these methods."""

    class Collection:
        def __init__(self, metrics_):
            self.metrics = metrics_

        @classmethod
        def single_from_model_output(cls, types, **kwargs):
            return cls({k: t.from_model_output(**kwargs) for k, t in types.items()})

        @classmethod
        def empty(cls, types):
            return cls({k: t.empty() for k, t in types.items()})

        def merge(self, other):
            return Collection({k: v.merge(other.metrics[k]) for k, v in self.metrics.items()})

        def reduce(self):
            return Collection({k: v.reduce() for k, v in self.metrics.items()})

        def compute(self):
            return {k: v.compute() for k, v in self.metrics.items()}

    types = {
        "nll": metrics.NegativeLogLikelihood,
        "ppl": metrics.Perplexity,
        "acc": metrics.Accuracy,
        "ece": metrics.CalibrationError,
        "brier": metrics.BrierScore,
    }
    z, y = _data(7, n=120, ignore_frac=0.0)
    total = Collection.empty(types)
    for a, b in _split(z, y, [20, 100]):
        # clu passes every model output to every metric: extras are ignored
        batch = Collection.single_from_model_output(
            types, logits=jnp.asarray(a), labels=jnp.asarray(b), loss=jnp.zeros(())
        )
        total = total.merge(batch)
    ref = _refs(z.astype(np.float64), y, np.ones(len(y), bool))
    out = total.compute()
    for k, r in [
        ("nll", "nll"),
        ("ppl", "perplexity"),
        ("acc", "accuracy"),
        ("ece", "ece"),
        ("brier", "brier"),
    ]:
        np.testing.assert_allclose(out[k], ref[r], rtol=2e-5, err_msg=k)


def test_merge_errors_and_config_checks():
    a = metrics.CalibrationError.empty(num_bins=10)
    with pytest.raises(ValueError, match="configurations"):
        a.merge(metrics.CalibrationError.empty(num_bins=15))
    with pytest.raises(TypeError, match="cannot merge"):
        metrics.Perplexity.empty().merge(metrics.NegativeLogLikelihood.empty())
    with pytest.raises(ValueError, match="norm"):
        metrics.CalibrationError.empty(norm="l3")
    with pytest.raises(ValueError, match="top_k"):
        metrics.Accuracy.empty(top_k=0)
    z, y = jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32)
    with pytest.raises(TypeError, match="labels"):
        metrics.Accuracy.from_model_output(z, jnp.zeros(4))
    with pytest.raises(ValueError, match="labels"):
        metrics.Accuracy.from_model_output(z, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="where"):
        metrics.Accuracy.from_model_output(z, y, where=jnp.ones((5,), bool))
    with pytest.raises(ValueError, match="num_bytes"):
        metrics.BitsPerByte.from_model_output(z, y, jnp.ones(3))
    with pytest.raises(ValueError, match="base"):
        metrics.NegativeLogLikelihood.empty(base=1)
    assert np.isnan(metrics.Perplexity.empty().compute())


# --------------------------------------------------------------------------- devices


PSUM_SCRIPT = textwrap.dedent(
    """
    import json, numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P
    from jaxent import metrics
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    z = rng.normal(size=(8, 37, 11)).astype(np.float32) * 3
    y = rng.integers(0, 11, (8, 37))
    keep = rng.random((8, 37)) < np.linspace(0.1, 0.9, 8)[:, None]  # unequal per device
    ens = rng.normal(size=(8, 3, 37, 11)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("d",))

    def per_device(z, y, k, e):
        s = metrics.from_logits(z[0], y[0], where=k[0])
        s["mi"] = metrics.MutualInformation.from_model_output(e[0], where=k[0])
        return jax.tree.map(lambda x: jax.lax.psum(x, "d"), s)

    f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("d"), out_specs=P()))
    got = f(jnp.asarray(z), jnp.asarray(y), jnp.asarray(keep), jnp.asarray(ens))
    whole = metrics.from_logits(
        jnp.asarray(z.reshape(-1, 11)), jnp.asarray(y.reshape(-1)), where=jnp.asarray(keep.reshape(-1)))
    whole["mi"] = metrics.MutualInformation.from_model_output(
        jnp.asarray(np.moveaxis(ens, 1, 0).reshape(3, -1, 11)), where=jnp.asarray(keep.reshape(-1)))
    print(json.dumps({k: [float(got[k].compute()), float(whole[k].compute())] for k in whole}))
    """
)


def test_psum_over_8_simulated_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", PSUM_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(res) >= {"nll", "ece", "mce", "brier", "entropy", "top_k_accuracy", "mi"}
    for k, (sharded, whole) in res.items():
        np.testing.assert_allclose(sharded, whole, rtol=1e-5, err_msg=k)


# --------------------------------------------------------------------------- temperature


def _nll_at(z, y, t):
    ls = _log_softmax64(z / t)
    return -ls[np.arange(len(y)), y].mean()


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_fit_temperature_matches_grid_search(scale):
    rng = np.random.default_rng(8)
    z = rng.normal(size=(400, 10)) * scale
    y = np.where(rng.random(400) < 0.5, z.argmax(-1), rng.integers(0, 10, 400))
    z32 = z.astype(np.float32)
    t = float(jax.jit(metrics.fit_temperature)(jnp.asarray(z32), jnp.asarray(y)))
    # brute force: a log-spaced grid, then a finer one around its best point
    grid = np.exp(np.linspace(np.log(0.01), np.log(100), 2001))
    best = grid[np.argmin([_nll_at(z32, y, g) for g in grid])]
    fine = np.linspace(best * 0.99, best * 1.01, 2001)
    best = fine[np.argmin([_nll_at(z32, y, g) for g in fine])]
    np.testing.assert_allclose(t, best, rtol=2e-4)
    assert _nll_at(z32, y, t) <= _nll_at(z32, y, best) + 1e-7


def test_fit_temperature_masks_and_edge_cases():
    rng = np.random.default_rng(9)
    z = rng.normal(size=(200, 5)).astype(np.float32) * 2
    y = np.where(rng.random(200) < 0.6, z.argmax(-1), rng.integers(0, 5, 200))
    keep = rng.random(200) < 0.5
    t_where = metrics.fit_temperature(jnp.asarray(z), jnp.asarray(y), where=jnp.asarray(keep))
    t_sub = metrics.fit_temperature(jnp.asarray(z[keep]), jnp.asarray(y[keep]))
    np.testing.assert_allclose(t_where, t_sub, rtol=1e-5)
    y_ign = np.where(keep, y, IGNORE)
    t_ign = metrics.fit_temperature(jnp.asarray(z), jnp.asarray(y_ign), ignore_index=IGNORE)
    np.testing.assert_allclose(t_ign, t_sub, rtol=1e-5)
    # a -inf class: same as removing it
    zi = np.concatenate([z, np.full((200, 1), -np.inf, np.float32)], -1)
    np.testing.assert_allclose(
        metrics.fit_temperature(jnp.asarray(zi), jnp.asarray(y)),
        metrics.fit_temperature(jnp.asarray(z), jnp.asarray(y)),
        rtol=1e-5,
    )
    # labels always on the smallest logit: worse than uniform, T = inf
    assert np.isinf(metrics.fit_temperature(jnp.asarray(z), jnp.asarray(z.argmin(-1))))
    # always right with a margin: NLL falls to 0 as T -> 0; the fit stops where it is 0
    t0 = float(metrics.fit_temperature(jnp.asarray(z), jnp.asarray(z.argmax(-1))))
    assert 0 < t0 < 0.01 and _nll_at(z, z.argmax(-1), t0) < 1e-6
    assert np.isnan(metrics.fit_temperature(jnp.asarray(z), jnp.asarray(y + 5)))


def test_blocked_and_flat_kernels_agree():
    """The CPU kernel loops over row blocks (last block clamped); other backends run flat."""
    from jaxent.metrics import _row_summary

    rng = np.random.default_rng(10)
    z = jnp.asarray(rng.normal(size=(7, 37, 3000)).astype(np.float32) * 4)  # 259 rows, ragged
    y = jnp.asarray(rng.integers(0, 3000, (7, 37)))
    a = _row_summary(z, y, blocked=True)
    b = _row_summary(z, y, blocked=False)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
