"""Smoke test of the benchmark runner: a few ``--quick`` cases in a subprocess.

Only the structure of the JSON is checked, never timings.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    "ce_int/fwdbwd/4096x32768/float32",
    "lce/fwdbwd/",
    "lce_memory_curve/",
]


def test_quick_run_writes_expected_json(tmp_path):
    out = tmp_path / "quick.json"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)]
    for c in CASES:
        cmd += ["--only", c]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True
    assert {"timestamp", "jax", "total_s", "modules"} <= set(data["meta"])
    assert "cases_cross_entropy" in data["meta"]["modules"]
    cases = data["cases"]
    assert len(cases) == 3, sorted(cases)

    ce = cases["ce_int/fwdbwd/4096x32768/float32"]
    assert {"jaxent", "optax", "log_softmax"} <= set(ce["impls"])
    for r in ce["impls"].values():
        assert {"median_s", "min_s", "times_s", "compile_s"} <= set(r)
    assert {"optax", "log_softmax"} <= set(ce["ratios"])
    assert set(ce["targets"]["time vs optax"]) == {"max", "value", "met"}

    lce = next(v for k, v in cases.items() if k.startswith("lce/"))
    for impl in ("jaxent", "materialised"):
        mem = lce["impls"][impl]["memory"]
        assert {"peak_bytes", "temp_bytes", "rss_growth_bytes"} <= set(mem)
    assert "peak memory vs materialised" in lce["targets"]

    curve = next(v for k, v in cases.items() if k.startswith("lce_memory_curve/"))["metrics"]
    assert len(curve["V"]) == len(curve["linear_temp_MiB"]) == len(curve["materialised_peak_MiB"])
    assert "median ms" in proc.stdout
