"""Label smoothing on a real (small) training run: an MLP on scikit-learn's digits.

Trains a 64 -> 128 -> 10 MLP with ``optax.adamw`` in an ordinary functional
loop (one ``jax.jit``-compiled training function), once without and once with
label smoothing through :func:`jaxent.with_label_smoothing`, and reports test
accuracy, negative log-likelihood, expected calibration error and the logit
gap :math:`z_y - \\mathrm{mean}_{j \\ne y} z_j` against
:func:`jaxent.optimal_logit_gap`.

Run ``python examples/label_smoothing_digits.py`` (about 10 s on a CPU); the
notebook ``notebooks/label_smoothing.ipynb`` imports the functions below and
draws the reliability diagrams and gap histograms.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jaxent

NUM_CLASSES = 10
Params = dict[str, jax.Array]


# --------------------------------------------------------------------------- data and model


def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1797 8x8 digits (bundled with scikit-learn), scaled to [0, 1], split 75/25."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


def init_mlp(key: jax.Array, sizes: tuple[int, ...] = (64, 128, NUM_CLASSES)) -> Params:
    """He-initialised MLP parameters."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        params[f"w{i}"] = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in)
        params[f"b{i}"] = jnp.zeros((n_out,))
    return params


def mlp_apply(params: Params, x: jax.Array) -> jax.Array:
    """Logits of the MLP (ReLU hidden layers)."""
    n_layers = len(params) // 2
    h = x
    for i in range(n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            h = jax.nn.relu(h)
    return h


# --------------------------------------------------------------------------- training


def make_train_fn(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    convention: str = "uniform",
    epochs: int = 100,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
):
    """A jitted ``train(key, epsilon) -> params``.

    ``epsilon`` is a traced argument: one compilation serves every smoothing
    factor, and the loss is built inside the step with
    ``jaxent.with_label_smoothing(jaxent.softmax_cross_entropy, epsilon)``.
    """
    x_train = jnp.asarray(x_train)
    y_train = jnp.asarray(y_train)
    n = x_train.shape[0]
    steps_per_epoch = n // batch_size
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_fn(params, x, y, epsilon):
        smoothed_ce = jaxent.with_label_smoothing(
            jaxent.softmax_cross_entropy, epsilon, convention=convention
        )
        return jnp.mean(smoothed_ce(mlp_apply(params, x), y))

    def step(carry, batch_idx):
        params, opt_state, epsilon = carry
        x, y = x_train[batch_idx], y_train[batch_idx]
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, epsilon)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, epsilon), loss

    def epoch(carry, key):
        perm = jax.random.permutation(key, n)[: steps_per_epoch * batch_size]
        carry, losses = jax.lax.scan(step, carry, perm.reshape(steps_per_epoch, batch_size))
        return carry, jnp.mean(losses)

    @jax.jit
    def train(key: jax.Array, epsilon: jax.Array) -> tuple[Params, jax.Array]:
        init_key, data_key = jax.random.split(key)
        params = init_mlp(init_key)
        carry = (params, optimizer.init(params), epsilon)
        (params, _, _), losses = jax.lax.scan(epoch, carry, jax.random.split(data_key, epochs))
        return params, losses

    return train


# --------------------------------------------------------------------------- metrics


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> dict[str, np.ndarray]:
    """Confidence (max probability) histogram: per-bin count, accuracy and mean confidence."""
    conf = probs.max(-1)
    correct = probs.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, num_bins - 1)
    count = np.bincount(idx, minlength=num_bins)
    acc = np.bincount(idx, weights=correct, minlength=num_bins) / np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf, minlength=num_bins) / np.maximum(count, 1)
    return {"edges": edges, "count": count, "accuracy": acc, "confidence": mean_conf}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    r"""Expected calibration error with equal-width bins.

    .. math::
      \mathrm{ECE} = \sum_b \frac{n_b}{N} |\mathrm{acc}_b - \mathrm{conf}_b|
    """
    b = reliability_bins(probs, labels, num_bins)
    return float(np.sum(b["count"] / len(labels) * np.abs(b["accuracy"] - b["confidence"])))


def logit_gaps(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per example :math:`z_y - \\mathrm{mean}_{j\\ne y} z_j` (the quantity the optimum fixes)."""
    logits = np.asarray(logits, np.float64)
    z_y = logits[np.arange(len(labels)), labels]
    others = (logits.sum(-1) - z_y) / (logits.shape[-1] - 1)
    return z_y - others


def evaluate(params: Params, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Accuracy, NLL (plain cross-entropy, no smoothing), ECE and logit gaps."""
    logits = np.asarray(mlp_apply(params, jnp.asarray(x)), np.float64)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    nll = np.asarray(jaxent.softmax_cross_entropy_with_integer_labels(logits, y))
    return {
        "accuracy": float(np.mean(probs.argmax(-1) == y)),
        "nll": float(np.mean(nll)),
        "ece": expected_calibration_error(probs, y),
        "gaps": logit_gaps(logits, y),
        "probs": probs,
        "labels": y,
    }


def run(
    epsilons: tuple[float, ...] = (0.0, 0.1),
    *,
    convention: str = "uniform",
    seed: int = 0,
    epochs: int = 100,
) -> dict[float, dict[str, Any]]:
    """Trains once per smoothing factor (same data, initialisation and batches)."""
    x_train, y_train, x_test, y_test = load_data(seed)
    train = make_train_fn(x_train, y_train, convention=convention, epochs=epochs)
    results = {}
    for eps in epsilons:
        start = time.perf_counter()
        params, losses = train(jax.random.key(seed), jnp.float32(eps))
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        test = evaluate(params, x_test, y_test)
        train_metrics = evaluate(params, x_train, y_train)
        results[eps] = {
            "params": params,
            "train_loss": np.asarray(losses),
            "test": test,
            "train": train_metrics,
            "optimal_gap": float(jaxent.optimal_logit_gap(eps, NUM_CLASSES, convention=convention)),
            "seconds": seconds,
        }
    return results


def results_table(results: dict[float, dict[str, Any]]) -> str:
    """A markdown table of the runs."""
    rows = [
        "| epsilon | test accuracy | test NLL | test ECE | median train gap | median test gap"
        " | optimal gap |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for eps, r in results.items():
        t = r["test"]
        rows.append(
            f"| {eps:g} | {t['accuracy']:.4f} | {t['nll']:.4f} | {t['ece']:.4f}"
            f" | {np.median(r['train']['gaps']):.2f} | {np.median(t['gaps']):.2f}"
            f" | {r['optimal_gap']:.2f} |"
        )
    return "\n".join(rows)


# --------------------------------------------------------------------------- plots


def plot_reliability(ax, result: dict[str, Any], title: str) -> None:
    """Reliability diagram: accuracy per confidence bin, mean confidence, bin sizes."""
    b = reliability_bins(result["probs"], result["labels"])
    edges = b["edges"]
    width = edges[1] - edges[0]
    has = b["count"] > 0
    centers = edges[:-1] + width / 2
    ax.bar(
        edges[:-1][has],
        b["accuracy"][has],
        width=width,
        align="edge",
        alpha=0.7,
        edgecolor="k",
        label="accuracy",
    )
    ax.plot(centers[has], b["confidence"][has], "o", color="tab:red", label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE = {result['ece']:.4f}")
    ax.legend(loc="upper left", fontsize="small")
    frac = ax.twinx()
    frac.step(edges[:-1], b["count"] / b["count"].sum(), where="post", color="0.4", lw=1)
    frac.set_yscale("log")
    frac.set_ylim(1e-3, 2)
    frac.set_ylabel("fraction of examples (grey, log)", color="0.4")


def plot_gaps(ax, results: dict[float, dict[str, Any]], split: str = "train") -> None:
    """Histograms of the logit gap per run, with the optimal gap of each smoothed run."""
    for eps, r in results.items():
        gaps = r[split]["gaps"]
        ax.hist(gaps, bins=40, alpha=0.5, label=f"epsilon = {eps:g}")
        if np.isfinite(r["optimal_gap"]):
            ax.axvline(r["optimal_gap"], color="k", ls="--", lw=1)
            ax.annotate(
                f"optimal gap {r['optimal_gap']:.2f}",
                (r["optimal_gap"], ax.get_ylim()[1] * 0.9),
                rotation=90,
                ha="left",
                va="top",
            )
    ax.set_xlabel(r"logit gap $z_y - \mathrm{mean}_{j \neq y} z_j$ (" + split + " set)")
    ax.set_ylabel("examples")
    ax.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--convention", default="uniform", choices=["uniform", "off_target"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="save the figures to this PNG path")
    args = parser.parse_args()
    start = time.perf_counter()
    results = run(
        (0.0, args.epsilon), convention=args.convention, seed=args.seed, epochs=args.epochs
    )
    print(results_table(results))
    runs = ", ".join(f"{r['seconds']:.1f} s" for r in results.values())
    print(f"total {time.perf_counter() - start:.1f} s (training runs, the first compiles: {runs})")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        for ax, (eps, r) in zip(axes[:2], results.items(), strict=True):
            plot_reliability(ax, r["test"], f"epsilon = {eps:g}")
        plot_gaps(axes[2], results)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
