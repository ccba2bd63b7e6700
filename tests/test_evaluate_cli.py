"""``python -m jaxent evaluate``: run in subprocesses on small files.

Values are checked against numpy float64 references; bad files must give a
one-line error naming the file, exit status 2 and no traceback; peak memory
must not grow with the file.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

IGNORE = -100


def _run(*args, env_extra=None, timeout=240):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "jaxent", "evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    n, k = 203, 12  # 203 rows: ragged last batch for every batch size tried
    z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    y = np.where(rng.random(n) < 0.6, z.argmax(-1), rng.integers(0, k, n))
    y = np.where(rng.random(n) < 0.2, IGNORE, y)
    members = (z[None] + rng.normal(size=(4, n, k)) * 2).astype(np.float32)
    paths = {
        "z": d / "z.npy",
        "y": d / "y.npy",
        "npz": d / "both.npz",
        "members": d / "m.npy",
        "yfloat": d / "yf.npy",
        "yshort": d / "ys.npy",
        "ybad": d / "yb.npy",
        "znan": d / "znan.npy",
        "z1d": d / "z1.npy",
        "txt": d / "x.txt",
    }
    np.save(paths["z"], z)
    np.save(paths["y"], y)
    np.savez(paths["npz"], logits=z, labels=y)
    np.save(paths["members"], members)
    np.save(paths["yfloat"], y.astype(np.float32))
    np.save(paths["yshort"], y[:-1])
    yb = y.copy()
    yb[150] = k
    np.save(paths["ybad"], yb)
    zn = z.copy()
    zn[170, 3] = np.nan
    np.save(paths["znan"], zn)
    np.save(paths["z1d"], z[:, 0])
    paths["txt"].write_text("not an array")
    return {"paths": paths, "z": z, "y": y, "members": members, "dir": d}


def _reference(z, y):
    keep = y != IGNORE
    z, y = z[keep], y[keep]
    ls = _log_softmax64(z)
    nll = -ls[np.arange(len(y)), y]
    rank = (z > z[np.arange(len(y)), y][:, None]).sum(-1)
    p = np.exp(ls)
    # torchmetrics' binning: bucketize(conf, linspace(0, 1, 16), right=True) - 1
    conf, correct = p.max(-1), (p.argmax(-1) == y).astype(np.float64)
    idx = np.searchsorted(np.linspace(0, 1, 16, dtype=np.float32), conf.astype(np.float32), "right")
    count = np.bincount(idx - 1, minlength=16)
    gap = np.abs(np.bincount(idx - 1, correct - conf, minlength=16))
    return {
        "ece": gap.sum() / len(y),
        "mce": np.max(gap / np.maximum(count, 1)),
        "examples": int(keep.sum()),
        "nll": nll.mean(),
        "perplexity": np.exp(nll.mean()),
        "bits_per_token": nll.mean() / np.log(2),
        "accuracy": np.mean(rank == 0),
        "top5_accuracy": np.mean(rank < 5),
        "brier": np.mean(np.sum((p - np.eye(z.shape[1])[y]) ** 2, -1)),
        "predictive_entropy": np.mean(-np.sum(p * ls, -1)),
    }


def test_json_matches_reference_for_every_batch_size(files):
    p = files["paths"]
    ref = _reference(files["z"], files["y"])
    outs = []
    for bs in (64, 203):
        r = _run(p["z"], p["y"], "--ignore-index", IGNORE, "--batch-size", bs, "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    for out in outs:
        assert out["examples"] == ref["examples"]
        for key, val in ref.items():
            np.testing.assert_allclose(out[key], val, rtol=2e-5, atol=1e-7, err_msg=key)
    for key in ("ece", "mce", "nll", "accuracy"):
        np.testing.assert_allclose(outs[0][key], outs[1][key], rtol=1e-6)


def test_table_progress_plot_and_npz(files):
    p = files["paths"]
    png = files["dir"] / "reliability.png"
    r = _run(p["npz"], p["npz"], "--ignore-index", IGNORE, "--batch-size", 50, "--plot", png)
    assert r.returncode == 0, r.stderr
    for label in (
        "NLL",
        "perplexity",
        "bits per token",
        "accuracy",
        "top-5 accuracy",
        "ECE",
        "MCE",
        "Brier",
        "predictive entropy",
    ):
        assert label in r.stdout, label
    assert "mutual information" not in r.stdout
    assert "evaluate" in r.stderr and "row" in r.stderr  # the tqdm progress bar
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_member_axis(files):
    p = files["paths"]
    m = files["members"]
    r = _run(
        p["members"],
        p["y"],
        "--member-axis",
        0,
        "--ignore-index",
        IGNORE,
        "--json",
        "--quiet",
        "--batch-size",
        100,
        env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    keep = files["y"] != IGNORE
    probs = np.exp(_log_softmax64(m))
    pbar = probs.mean(0)
    ent = lambda q: -np.sum(q * np.log(q), -1)  # noqa: E731
    mi = (ent(pbar) - ent(probs).mean(0))[keep].mean()
    np.testing.assert_allclose(out["mutual_information"], mi, rtol=1e-4)
    ref = _reference(np.log(pbar), files["y"])
    for key in ("nll", "accuracy", "brier", "predictive_entropy"):
        np.testing.assert_allclose(out[key], ref[key], rtol=2e-5, err_msg=key)


BAD_CASES = {  # case: (logits key, labels key, the file named, a word of the problem)
    "missing": ("missing", "y", "logits", "no such file"),
    "txt": ("txt", "y", "logits", "cannot read"),
    "float_labels": ("z", "yfloat", "labels", "integer"),
    "short_labels": ("z", "yshort", "labels", "shape"),
    "out_of_range": ("z", "ybad", "labels", "out of range"),
    "nan": ("znan", "y", "logits", "NaN"),
    "one_dim": ("z1d", "y", "logits", "shape"),
}

DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from jaxent.__main__ import main
    out = {}
    for name, argv in json.loads(sys.argv[1]).items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except BaseException as e:  # an escaped exception is a failure of the test
                rc = f"raised {type(e).__name__}: {e}"
        out[name] = [rc, err.getvalue()]
    print(json.dumps(out))
    """
)


def test_bad_files_exit_2_with_one_line(files):
    p = {**files["paths"], "missing": files["dir"] / "nope.npy"}
    common = ["--ignore-index", str(IGNORE), "--batch-size", "64", "--quiet"]
    # one case through the real entry point: no traceback reaches the terminal
    r = _run(p["missing"], p["y"], *common)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"error: {p['missing']}: no such file"
    # every case in one interpreter (main() in-process, stderr captured)
    argvs = {
        name: ["evaluate", str(p[zk]), str(p[yk]), *common]
        for name, (zk, yk, _, _) in BAD_CASES.items()
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (zk, yk, which, problem) in BAD_CASES.items():
        rc, err = res[name]
        assert rc == 2, (name, rc, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1, (name, err)
        named = str(p[zk] if which == "logits" else p[yk])
        assert lines[0].startswith(f"error: {named}:") and problem in lines[0], (name, lines[0])


def test_sharded_over_8_devices_matches(files):
    p = files["paths"]
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    a = _run(
        p["z"],
        p["y"],
        "--ignore-index",
        IGNORE,
        "--batch-size",
        30,
        "--json",
        "--quiet",
        env_extra=flags,
    )
    assert a.returncode == 0, a.stderr
    out = json.loads(a.stdout)
    ref = _reference(files["z"], files["y"])
    for key, val in ref.items():
        np.testing.assert_allclose(out[key], val, rtol=2e-5, atol=1e-7, err_msg=key)


RSS = textwrap.dedent(
    """
    import sys
    from jaxent._evaluate_cli import main
    rc = main(["evaluate", sys.argv[1], sys.argv[2], "--batch-size", "256", "--quiet", "--json"])
    # VmHWM: this process's peak RSS (ru_maxrss would include the parent's RSS at fork)
    with open("/proc/self/status") as f:
        hwm = [line.split()[1] for line in f if line.startswith("VmHWM")][0]
    print("MAXRSS", hwm, file=sys.stderr)
    sys.exit(rc)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_flat_in_file_size(tmp_path):
    """16 MiB and 80 MiB of logits, 1 MiB batches: the peak RSS must not follow the file."""
    rng = np.random.default_rng(1)
    peaks = []
    for n in (8192, 40960):
        z = np.lib.format.open_memmap(tmp_path / f"z{n}.npy", "w+", np.float32, (n, 512))
        for i in range(0, n, 4096):
            z[i : i + 4096] = rng.normal(size=(min(4096, n - i), 512))
        z.flush()
        del z
        np.save(tmp_path / f"y{n}.npy", rng.integers(0, 512, n))
        r = subprocess.run(
            [sys.executable, "-c", RSS, str(tmp_path / f"z{n}.npy"), str(tmp_path / f"y{n}.npy")],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        assert r.returncode == 0, r.stderr
        peaks.append(int(r.stderr.split("MAXRSS")[1].split()[0]) * 1024)
    grown = peaks[1] - peaks[0]
    assert grown < 24 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB for 64 MiB more logits"
