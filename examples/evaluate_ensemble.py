"""Batch evaluation of an ensemble: 5 MLPs on scikit-learn's digits.

Trains five 64 -> 128 -> 10 MLPs (different seeds; the training loop of
``label_smoothing_digits.py``, without smoothing), then evaluates the ensemble
on the test set in jitted batches of 128 with a ragged last batch (450 test
images: 3 full batches and one of 66), accumulating mergeable
:mod:`jaxent.metrics` states: NLL, perplexity, accuracy, ECE, Brier score,
predictive entropy and mutual information (BALD), for each member and for
the ensemble's mean prediction. It fits a temperature on a held-out half
with :func:`jaxent.metrics.fit_temperature`, and saves the member logits to
``.npy`` files that ``python -m jaxent evaluate`` reads::

  python examples/evaluate_ensemble.py --out /tmp/digits
  python -m jaxent evaluate /tmp/digits/member_logits.npy /tmp/digits/labels.npy \\
      --member-axis 0 --plot /tmp/digits/reliability.png

The notebook ``notebooks/evaluation.ipynb`` imports the functions below.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import label_smoothing_digits as lsd  # noqa: E402  (the training loop and the data)

import jaxent  # noqa: E402
from jaxent import metrics  # noqa: E402

NUM_MEMBERS = 5
BATCH = 128


def train_ensemble(num_members: int = NUM_MEMBERS, epochs: int = 60, seed: int = 0):
    """Trains ``num_members`` MLPs (one compilation, different keys); returns params and data."""
    x_train, y_train, x_test, y_test = lsd.load_data(seed)
    train = lsd.make_train_fn(x_train, y_train, epochs=epochs)
    keys = jax.random.split(jax.random.key(seed), num_members)
    params = [train(k, jnp.zeros(()))[0] for k in keys]
    return params, (x_test, y_test)


def member_logits(params: list[dict[str, jax.Array]], x: np.ndarray) -> np.ndarray:
    """``[members, examples, classes]`` logits."""
    return np.stack([np.asarray(lsd.mlp_apply(p, jnp.asarray(x))) for p in params])


@jax.jit
def _update(z, y, keep):
    """The states of one padded batch: the mean prediction's metrics, MI, and each member's NLL."""
    log_p = jaxent.ensemble_log_softmax(z, axis=-1, member_axis=0)
    states = metrics.from_logits(log_p, y, where=keep)
    states["mutual_information"] = metrics.MutualInformation.from_model_output(z, where=keep)
    states["member_nll"] = jax.vmap(
        lambda zm: metrics.NegativeLogLikelihood.from_model_output(zm, y, where=keep)
    )(z)
    return states


def evaluate(z: np.ndarray, y: np.ndarray, batch: int = BATCH) -> dict[str, Any]:
    """Streams ``z [M, N, K]`` in batches (the last one padded and masked) and merges the states."""
    total = None
    n = z.shape[1]
    for start in range(0, n, batch):
        zb, yb = z[:, start : start + batch], y[start : start + batch]
        pad = batch - yb.shape[0]
        keep = np.arange(batch) < yb.shape[0]
        zb = np.pad(zb, [(0, 0), (0, pad), (0, 0)])
        yb = np.pad(yb, (0, pad))
        states = _update(jnp.asarray(zb), jnp.asarray(yb), jnp.asarray(keep))
        total = states if total is None else jax.tree.map(jnp.add, total, states)
    return total


def summary(states: dict[str, Any]) -> dict[str, float]:
    """The computed values (the member NLLs are per member: stacked states)."""
    out = {k: float(v.compute()) for k, v in states.items() if k != "member_nll"}
    out["member_nll"] = [float(v) for v in states["member_nll"].compute()]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="directory for the .npy logits and labels")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    params, (x_test, y_test) = train_ensemble(epochs=args.epochs)
    z = member_logits(params, x_test)
    res = summary(evaluate(z, y_test))
    print(f"{NUM_MEMBERS} members trained and evaluated in {time.perf_counter() - t0:.1f} s")
    print("member NLL:          " + ", ".join(f"{v:.4f}" for v in res["member_nll"]))
    for key in ("nll", "perplexity", "accuracy", "ece", "brier", "entropy", "mutual_information"):
        print(f"ensemble {key:<20} {res[key]:.4f}")
    # temperature scaling of the ensemble, fitted on one half and checked on the other
    log_p = np.asarray(jaxent.ensemble_log_softmax(jnp.asarray(z)))
    half = len(y_test) // 2
    t = float(metrics.fit_temperature(jnp.asarray(log_p[:half]), jnp.asarray(y_test[:half])))
    for name, scale in (("before", 1.0), (f"after (T = {t:.3f})", t)):
        s = metrics.from_logits(jnp.asarray(log_p[half:] / scale), jnp.asarray(y_test[half:]))
        print(
            f"held-out half {name}: NLL {float(s['nll'].compute()):.4f},"
            f" ECE {float(s['ece'].compute()):.4f}"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "member_logits.npy", z.astype(np.float32))
        np.save(out / "labels.npy", y_test.astype(np.int64))
        print(f"saved {out / 'member_logits.npy'} {z.shape} and {out / 'labels.npy'}")


if __name__ == "__main__":
    main()
