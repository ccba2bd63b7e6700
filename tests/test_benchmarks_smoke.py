"""Smoke tests of the benchmark harness and the README table generator.

A few ``--quick`` cases run in a subprocess; only the structure of the JSON and
of the generated markdown is checked, never timings. The pieces whose output
does not depend on timing (the N×V-write count of a compiled program, the
met / missed / tie verdict, the README rewrite) are checked exactly.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from benchmarks import _harness, report

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    "ce_int/fwd/4096x32768/float32",
    "kl_logits/eager/",
    "lce/fwdbwd/",
    "lce_memory_curve/",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)]
    for c in CASES:
        cmd += ["--only", c]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, out


def test_quick_run_writes_expected_json(quick_run):
    data, stdout, _ = quick_run
    meta = data["meta"]
    assert meta["quick"] is True
    assert {"timestamp", "jax", "jaxlib", "optax", "commit", "cpu", "total_s", "modules"} <= set(
        meta
    )
    assert meta["omp_wait_policy"] == "PASSIVE"
    assert "cases_cross_entropy" in meta["modules"]
    cases = data["cases"]
    # The calibrations of the groups the selected cases need ran first.
    assert list(cases)[:2] == ["noise/jit/4096x32768/float32", "noise/eager/128x10/float32"]
    assert set(meta["noise_bands"]) == {"jit", "eager"}
    assert len(cases) == 6, sorted(cases)

    ce = cases["ce_int/fwd/4096x32768/float32"]
    assert {"jaxent", "optax", "log_softmax", "floor"} <= set(ce["impls"])
    for r in ce["impls"].values():
        assert {"median_s", "min_s", "max_s", "times_s", "compile_s", "number"} <= set(r)
        assert len(r["times_s"]) == ce["pairs"] == _harness.QUICK_PAIRS
    for name in ("jaxent", "optax", "floor"):
        assert ce["impls"][name]["nv_threshold"] == 64 * 512
        assert "temp_bytes" in ce["impls"][name]["memory"]
    assert ce["impls"]["floor"]["nv_writes"] == 0  # a row sum writes nothing N×V
    stats = ce["ratio_stats"]["optax|log_softmax"]
    assert stats["min"] <= stats["median"] <= stats["max"]
    assert len(stats["samples"]) == ce["pairs"]
    target = ce["targets"]["time vs optax|log_softmax"]
    assert target["max"] == 1.05 and target["verdict"] in {"met", "missed", "tie"}
    assert target["band"] == meta["noise_bands"]["jit"]

    eager = next(v for k, v in cases.items() if k.startswith("kl_logits/eager/"))
    assert eager["impls"]["jaxent"]["framework"] == "eager"
    assert eager["targets"]["time vs optax"]["band"] == meta["noise_bands"]["eager"]

    lce = next(v for k, v in cases.items() if k.startswith("lce/"))
    for impl in ("jaxent", "materialised"):
        mem = lce["impls"][impl]["memory"]
        assert {"peak_bytes", "temp_bytes", "rss_growth_bytes"} <= set(mem)
    assert "peak memory vs materialised" in lce["targets"]

    curve = next(v for k, v in cases.items() if k.startswith("lce_memory_curve/"))["metrics"]
    assert len(curve["V"]) == len(curve["linear_temp_MiB"]) == len(curve["materialised_peak_MiB"])
    assert "ref/impl [min-max]" in stdout


def test_report_renders_the_run(quick_run, tmp_path):
    data, _, path = quick_run
    md = report.render(data, "quick.json")
    assert "`--quick` run" in md
    assert "#### Forward only" in md and "#### Eager" in md and "#### Other cases" in md
    assert "| `ce_int` | float32 |" in md
    assert "`lce_memory_curve/" in md
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
    assert report.main([str(path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and "| `ce_int` | float32 |" in text
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{report.END}\nafter\n")


def test_report_on_a_small_json():
    times = [1.0, 1.1, 0.9]
    data = {
        "meta": {"timestamp": "t", "jax": "0", "quick": False, "noise_bands": {"jit": [0.9, 1.1]}},
        "cases": {
            "kl_logits/fwd/8x16/float32": {
                "reference": "jaxent",
                "table": "loss",
                "impls": {
                    "jaxent": {"median_s": 0.002, "times_s": times, "nv_writes": 0},
                    "optax": {"median_s": 0.001, "times_s": times, "nv_writes": 2},
                },
                "ratio_stats": {"optax": {"median": 2.0, "min": 1.5, "max": 2.5}},
                "targets": {"time vs optax": {"max": 1.05, "value": 2.0, "verdict": "missed"}},
            }
        },
    }
    md = report.render(data)
    row = next(line for line in md.splitlines() if line.startswith("| `kl_logits`"))
    assert "**2.00** (1.50–2.50)" in row and "≤ 1.05: missed" in row and "0 / 2" in row


def test_nv_writes_counts_materialised_buffers():
    z = jax.ShapeDtypeStruct((32, 64), jnp.float32)

    def writes(fn):
        return _harness.nv_writes(jax.jit(fn).lower(z).compile().as_text(), 32 * 64)

    assert writes(lambda x: jnp.sum(x, axis=-1)) == []  # a read, nothing N×V written
    assert writes(lambda x: jnp.exp(x)) == ["fusion f32[32,64]"]  # the output itself
    assert len(writes(lambda x: (jnp.exp(x), jnp.sin(x)))) == 2
    # Buffers written inside a while loop's body count (the loop is walked into).
    in_loop = writes(lambda x: jnp.sum(jax.lax.fori_loop(0, 3, lambda i, y: jnp.exp(y), x), -1))
    assert len(in_loop) >= 1


def test_verdict_is_a_tie_inside_the_noise_band():
    band = (0.9, 1.1)
    assert _harness.verdict(0.8, 1.0, band) == "met"
    assert _harness.verdict(1.3, 1.0, band) == "missed"
    assert _harness.verdict(0.95, 1.0, band) == "tie"
    assert _harness.verdict(1.05, 1.0, band) == "tie"
    assert _harness.verdict(1.05, 1.0, None) == "missed"
    assert _harness.noise_band({"ratio_stats": {"b": {"min": 0.95, "max": 1.2}}}) == (0.95, 1.2)
