"""``python -m jaxent evaluate LOGITS LABELS``: batch evaluation of saved logits.

Reads ``.npy`` (memory-mapped for its header; each batch's bytes are read
with ``pread`` into one batch buffer, so resident memory stays flat however
large the file) or
``.npz`` logits (read whole: use ``.npy`` for files larger than memory) and
integer labels, streams fixed-size batches (the last one
padded and masked) through one jitted update sharded over all local devices,
merges the metric states on the host in float64, and prints a table (or JSON)
of NLL, perplexity, bits per token, accuracy, top-5 accuracy, ECE, MCE, Brier
score and predictive entropy, plus mutual information with ``--member-axis``.
``--plot FILE.png`` writes the reliability diagram.

Layout: the class axis is the last axis of the logits; with ``--member-axis A``
axis ``A`` holds ensemble members (the metrics are those of the members' mean
prediction). The labels have the shape of the logits without the class (and
member) axis. Batches are taken along the first example axis.

Bad input (a missing file, wrong shapes, float labels, labels out of range,
NaN or +inf logits) gives a one-line ``error: FILE: problem`` on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


class InputError(Exception):
    """A problem with an input file: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- loading


def _load(path: str, role: str) -> np.ndarray:
    """Opens ``path`` (.npy memory-mapped, .npz: its ``role`` array or its only array)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected a .npy or .npz file")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if role in keys:
                    return z[role]
                if len(keys) == 1:
                    return z[keys[0]]
                raise InputError(
                    f"{path}: .npz holds {keys}; expected an array named {role!r} or a single array"
                )
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is an input error
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{path}: cannot read as .npy/.npz ({msg})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: expected one array, got {type(arr).__name__}")
    return arr


def _release(arr: np.ndarray) -> None:
    """Drops the resident pages of a memory-mapped array (they stay in the page cache)."""
    mm = getattr(arr, "_mmap", None)
    if mm is None:
        base = getattr(arr, "base", None)
        mm = base if isinstance(base, mmap.mmap) else None
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # closed, or not supported
            pass


def _read_slice(arr: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    """``arr[..., start:stop, ...]`` (along ``axis``) as a new in-memory array.

    For a C-ordered memory-mapped ``.npy`` the bytes are read with ``os.pread``
    (one read per contiguous chunk), so no page of the file is ever mapped into
    the process: resident memory holds one batch whatever the file's size.
    Anything else is sliced and copied, and its mapped pages released.
    """
    filename = getattr(arr, "filename", None)
    if (
        isinstance(arr, np.memmap)
        and filename
        and arr.flags.c_contiguous
        and getattr(arr, "offset", None) is not None
        and hasattr(os, "preadv")
    ):
        shape = arr.shape
        outer = int(np.prod(shape[:axis], dtype=np.int64))
        inner = int(np.prod(shape[axis + 1 :], dtype=np.int64)) * arr.dtype.itemsize
        chunk = (stop - start) * inner
        out = np.empty((outer, chunk), np.uint8)
        fd = os.open(filename, os.O_RDONLY)
        try:
            for i in range(outer):
                pos = arr.offset + (i * shape[axis] + start) * inner
                view = memoryview(out[i])
                got = 0
                while got < chunk:
                    n = os.preadv(fd, [view[got:]], pos + got)
                    if n <= 0:
                        raise InputError(f"{filename}: file is shorter than its header says")
                    got += n
        finally:
            os.close(fd)
        new_shape = (*shape[:axis], stop - start, *shape[axis + 1 :])
        return out.view(arr.dtype).reshape(new_shape)
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start, stop)
    out = np.array(arr[tuple(index)])
    _release(arr)
    return out


class Layout:
    """Shapes of the inputs: members, example axes, classes."""

    def __init__(self, logits: np.ndarray, labels: np.ndarray, args: argparse.Namespace):
        lp, yp = args.logits, args.labels
        if logits.dtype.kind != "f":
            raise InputError(
                f"{lp}: logits must be floating point (float16/32/64), got dtype {logits.dtype}"
            )
        if labels.dtype.kind not in "iu":
            raise InputError(
                f"{yp}: labels must be integer class indices, got dtype {labels.dtype}"
                + (" (float labels: cast them to int)" if labels.dtype.kind == "f" else "")
            )
        self.member_axis = None
        shape = list(logits.shape)
        min_ndim = 2 if args.member_axis is None else 3
        if logits.ndim < min_ndim:
            what = (
                "[examples..., classes]"
                if args.member_axis is None
                else ("a member axis, example axes and a class axis (last)")
            )
            raise InputError(f"{lp}: logits need {what}, got shape {logits.shape}")
        if args.member_axis is not None:
            a = args.member_axis
            if not -logits.ndim <= a < logits.ndim:
                raise InputError(
                    f"{lp}: --member-axis {a} is out of range for logits of shape {logits.shape}"
                )
            a %= logits.ndim
            if a == logits.ndim - 1:
                raise InputError(f"{lp}: --member-axis {a} is the class axis (the last)")
            self.member_axis = a
            del shape[a]
        self.num_classes = int(logits.shape[-1])
        self.example_shape = tuple(shape[:-1])
        if tuple(labels.shape) != self.example_shape:
            raise InputError(
                f"{yp}: labels have shape {labels.shape}, expected {self.example_shape} (the"
                f" logits' shape {logits.shape} without the class"
                + (" and member axes)" if self.member_axis is not None else " axis)")
            )
        if self.num_classes < 1:
            raise InputError(f"{lp}: logits have no class (shape {logits.shape})")
        self.num_members = 1 if self.member_axis is None else int(logits.shape[self.member_axis])
        self.rows = self.example_shape[0] if self.example_shape else 1
        self.row_size = int(np.prod(self.example_shape[1:], dtype=np.int64))
        # the first example axis in the logits' numbering
        self.batch_axis = 0 if self.member_axis != 0 else 1

    def batches(
        self, logits: np.ndarray, labels: np.ndarray, batch_rows: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(start, logits [M?, R, K] float32/64, labels [R])`` per batch, unpadded."""
        for start in range(0, self.rows, batch_rows):
            stop = min(start + batch_rows, self.rows)
            z = _read_slice(logits, self.batch_axis, start, stop)
            if z.dtype != np.float32:  # float16 is computed in float32; float64 too
                z = z.astype(np.float32)
            y = _read_slice(labels, 0, start, stop).reshape(-1)
            if self.member_axis is not None:
                z = np.moveaxis(z, self.member_axis, 0)
                z = z.reshape(self.num_members, -1, self.num_classes)
            else:
                z = z.reshape(-1, self.num_classes)
            yield start, z, y


# --------------------------------------------------------------------------- the update


def _make_update(num_bins: int, members: bool, base2: bool = False):
    """A jitted ``update(z, y, keep) -> (states, bad logits count)`` for one padded batch."""
    import jax
    import jax.numpy as jnp

    import jaxent
    from jaxent import metrics

    del base2

    def update(z, y, keep):
        bad = jnp.sum(jnp.isnan(z) | (z == jnp.inf), dtype=jnp.int32)
        if members:
            log_p = jaxent.ensemble_log_softmax(z, axis=-1, member_axis=0)
            states = metrics.from_logits(log_p, y, where=keep, num_bins=num_bins, top_k=5)
            states["mutual_information"] = metrics.MutualInformation.from_model_output(
                z, member_axis=0, where=keep
            )
        else:
            states = metrics.from_logits(z, y, where=keep, num_bins=num_bins, top_k=5)
        return states, bad

    return jax.jit(update)


def _shard(arrays: Sequence[np.ndarray], batch_dims: Sequence[int]):
    """Puts each array on all local devices, split along its batch dimension."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.local_devices()
    if len(devices) == 1:
        return [jax.device_put(a, devices[0]) for a in arrays]
    mesh = Mesh(np.array(devices), ("batch",))
    out = []
    for a, d in zip(arrays, batch_dims, strict=True):
        spec: list[str | None] = [None] * a.ndim
        spec[d] = "batch"
        out.append(jax.device_put(a, NamedSharding(mesh, PartitionSpec(*spec))))
    return out


def _add(total: Any, state: Any) -> Any:
    """Host-side merge in float64/int64 (every leaf of every state is a sum)."""
    import jax

    def up(x):
        x = np.asarray(x)
        return x.astype(np.float64 if x.dtype.kind == "f" else np.int64)

    state = jax.tree.map(up, state)
    if total is None:
        return state
    return jax.tree.map(np.add, total, state)


# --------------------------------------------------------------------------- results


ROWS = [
    ("nll", "NLL (nats/token)"),
    ("perplexity", "perplexity"),
    ("bits_per_token", "bits per token"),
    ("accuracy", "accuracy"),
    ("top5_accuracy", "top-5 accuracy"),
    ("ece", "ECE (l1, {bins} bins)"),
    ("mce", "MCE (max)"),
    ("brier", "Brier score"),
    ("predictive_entropy", "predictive entropy (nats)"),
    ("mutual_information", "mutual information (nats)"),
]


def _results(states: dict[str, Any]) -> dict[str, float]:
    import jax

    with jax.enable_x64(True):
        out = {k: float(v.compute()) for k, v in states.items()}
    res = {
        "nll": out["nll"],
        "perplexity": out["perplexity"],
        "bits_per_token": out["nll"] / math.log(2),
        "accuracy": out["accuracy"],
        "top5_accuracy": out["top_k_accuracy"],
        "ece": out["ece"],
        "mce": out["mce"],
        "brier": out["brier"],
        "predictive_entropy": out["entropy"],
    }
    if "mutual_information" in out:
        res["mutual_information"] = out["mutual_information"]
    return res


def _table(res: dict[str, float], bins: int) -> str:
    lines = []
    for key, label in ROWS:
        if key in res:
            lines.append(f"{label.format(bins=bins):<28}{res[key]:.6g}")
    return "\n".join(lines)


def _plot(cal: Any, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count, conf, acc = (np.asarray(a, np.float64) for a in cal.bins())
    n = cal.num_bins
    width = 1.0 / n
    left = np.arange(n + 1) * width
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    nonempty = count > 0
    sel = nonempty[:n]
    ax.bar(
        left[:n][sel],
        acc[:n][sel],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    ax.bar(
        left[:n][sel],
        conf[:n][sel],
        width=width,
        align="edge",
        fill=False,
        edgecolor="tab:red",
        linewidth=1.5,
        label="mean confidence",
    )
    if nonempty[n]:  # confidence exactly 1 (its own bin, as in torchmetrics)
        ax.plot(
            [1.0],
            [acc[n]],
            "o",
            color="tab:blue",
            clip_on=False,
            label=f"confidence = 1 ({int(count[n])})",
        )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    axh.bar(
        left[:n][sel], count[:n][sel], width=width, align="edge", color="gray", edgecolor="black"
    )
    if count.max() > 0:
        axh.set_yscale("log")
    axh.set_xlabel("confidence (max probability)")
    axh.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``evaluate`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate saved logits against labels (NLL, accuracy, calibration, ...)",
        description=textwrap.fill(
            (__doc__ or "").split("\n\n")[1].replace("\n", " ").replace("``", ""), width=79
        ),
        epilog=(
            "examples:\n"
            "  python -m jaxent evaluate logits.npy labels.npy\n"
            "  python -m jaxent evaluate logits.npy labels.npy --ignore-index -100 --json\n"
            "  python -m jaxent evaluate ensemble.npy labels.npy --member-axis 0 --plot rel.png\n"
            "\nexit status: 0 done, 2 bad usage (unreadable files, shapes that do not fit)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logits", metavar="LOGITS", help=".npy (memory-mapped) or .npz logits")
    p.add_argument("labels", metavar="LABELS", help=".npy or .npz integer labels")
    p.add_argument(
        "--ignore-index",
        type=int,
        default=None,
        metavar="I",
        help="label value to leave out (e.g. -100)",
    )
    p.add_argument("--bins", type=int, default=15, help="calibration bins (default 15)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="rows of the first example axis per batch (default: about 64 MiB of logits)",
    )
    p.add_argument(
        "--member-axis",
        type=int,
        default=None,
        metavar="A",
        help="axis of the logits that holds ensemble members",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="write a reliability diagram")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _evaluate(args: argparse.Namespace) -> tuple[dict[str, float], Any, int]:
    if args.bins < 1:
        raise InputError(f"--bins must be >= 1, got {args.bins}")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    logits = _load(args.logits, "logits")
    labels = _load(args.labels, "labels")
    lay = Layout(logits, labels, args)
    import jax

    bytes_per_row = max(
        1, lay.row_size * lay.num_members * lay.num_classes * max(logits.dtype.itemsize, 4)
    )
    batch_rows = args.batch_size or max(1, (64 << 20) // bytes_per_row)
    batch_rows = min(batch_rows, max(lay.rows, 1))
    n_dev = len(jax.local_devices())
    padded = -(-batch_rows * lay.row_size // n_dev) * n_dev  # flattened rows, per batch
    update = _make_update(args.bins, lay.member_axis is not None)
    total = None
    kept = 0
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        tqdm = None
    bar = None
    if tqdm is not None and not args.quiet:
        bar = tqdm(total=lay.rows, unit="row", file=sys.stderr, desc="evaluate", leave=False)
    try:
        for start, z, y in lay.batches(logits, labels, batch_rows):
            keep = np.ones(y.shape, bool)
            if args.ignore_index is not None:
                keep &= y != args.ignore_index
            bad = keep & ((y < 0) | (y >= lay.num_classes))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                row = start + i // max(lay.row_size, 1)
                raise InputError(
                    f"{args.labels}: label {int(y[i])} out of range [0, {lay.num_classes})"
                    f" at example row {row}"
                    + (
                        ""
                        if args.ignore_index is None
                        else f" (--ignore-index {args.ignore_index})"
                    )
                )
            r = y.shape[0]
            pad = padded - r
            yb = np.pad(np.where(keep, y, 0).astype(np.int32), (0, pad))
            kb = np.pad(keep, (0, pad))
            zb = np.pad(z, [(0, 0)] * (z.ndim - 2) + [(0, pad), (0, 0)])
            member = lay.member_axis is not None
            zb, yb, kb = _shard([zb, yb, kb], [1 if member else 0, 0, 0])
            states, nbad = update(zb, yb, kb)
            if int(nbad):
                raise InputError(
                    f"{args.logits}: NaN or +inf logits in example rows {start} to"
                    f" {start + r // max(lay.row_size, 1) - 1}"
                )
            total = _add(total, states)
            kept += int(keep.sum())
            if bar is not None:
                bar.update(r // max(lay.row_size, 1))
    finally:
        if bar is not None:
            bar.close()
    if total is None or kept == 0:
        raise InputError(f"{args.labels}: no example left to evaluate")
    return _results(total), total["ece"], kept


def run(args: argparse.Namespace) -> int:
    """Runs ``evaluate``; returns the exit status (2 for bad input)."""
    start = time.perf_counter()
    try:
        res, cal, kept = _evaluate(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    try:
        return _report(args, res, cal, kept, elapsed)
    except BrokenPipeError:  # e.g. `| head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _report(args: argparse.Namespace, res: dict[str, float], cal: Any, kept: int, elapsed: float):
    if args.plot:
        title = f"reliability: ECE {res['ece']:.4f}, {kept} examples"
        try:
            _plot(cal, args.plot, title)
        except OSError as e:
            print(f"error: {args.plot}: cannot write the plot ({e.strerror or e})", file=sys.stderr)
            return 2
    if args.json:
        payload = {
            "logits": args.logits,
            "labels": args.labels,
            "examples": kept,
            "bins": args.bins,
            "seconds": round(elapsed, 3),
            **res,
        }
        print(json.dumps(payload, indent=2))
    else:
        print(_table(res, args.bins))
        print(
            f"\n{kept} examples in {elapsed:.1f} s" + (f"; plot: {args.plot}" if args.plot else "")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``evaluate`` on its own (``python -m jaxent._evaluate_cli LOGITS LABELS ...``)."""
    parser = argparse.ArgumentParser(prog="python -m jaxent")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
