"""Multi-device tests on 8 simulated CPU devices (issue 13 adds log-prob/entropy and KL).

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before jax is
imported, so the checks (``tests/_sharding_checks.py``) run once in a
subprocess; each check is reported here as its own test.

* every public loss gives the same values and gradients under ``jax.jit`` on
  arrays sharded over a batch axis with ``NamedSharding`` as unsharded, on a
  mesh of Auto axes and on one of Explicit axes (``jax.make_mesh``'s default);
* ``vocab_parallel_cross_entropy`` and ``vocab_parallel_linear_cross_entropy``
  inside ``shard_map`` with the class axis sharded match the unsharded,
  materialised losses (values and gradients) with at most two collectives,
  also on an Explicit 2-D mesh; ``-inf`` shards, fully ``-inf`` rows and NaN
  logits give what the materialised loss gives; misuse (``axis_name`` None or
  unknown, a replicated class axis) raises a named error.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_sharding_checks.py")
LOSSES = [
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "sigmoid_binary_cross_entropy",
    "binary_cross_entropy",
    "kl_divergence_from_logits",
    "entropy_from_logits",
    "js_divergence_from_logits",
    "kl_divergence",
    "cross_entropy",
    "linear_cross_entropy",
    "linear_cross_entropy_options",
    "label_smoothed_cross_entropy",
]
# Batch sharding under both mesh types: Auto, and Explicit (`jax.make_mesh`'s default).
EXPECTED = [f"batch_sharded[{n}]" for n in LOSSES] + [
    f"batch_sharded_explicit[{n}]" for n in LOSSES
]
EXPECTED += [
    "vocab_parallel[plain]",
    "vocab_parallel[ignore_where]",
    "vocab_parallel[z_loss]",
    "vocab_parallel[smoothing]",
    "vocab_parallel_2d_mesh_bfloat16",
    "vocab_parallel_linear[plain]",
    "vocab_parallel_linear[all]",
    "vocab_parallel_edge_rows",
    "vocab_parallel_misuse",
    "vocab_parallel_explicit_mesh",
    "vocab_parallel_log_prob_and_entropy[plain]",
    "vocab_parallel_log_prob_and_entropy[temperature_where]",
    "vocab_parallel_kl_divergence[plain]",
    "vocab_parallel_kl_divergence[temperature_where]",
    "vocab_parallel_divergences_2d_mesh_bfloat16",
    "vocab_parallel_divergences_edge_rows",
    "vocab_parallel_temperature_on_cross_entropy",
]


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_all_checks_ran(results):
    assert set(EXPECTED) <= set(results), sorted(set(EXPECTED) - set(results))


def test_unlisted_checks_pass(results):
    failed = {k: v for k, v in results.items() if k not in EXPECTED and v != "ok"}
    assert not failed, failed


@pytest.mark.parametrize("name", EXPECTED)
def test_check(results, name):
    assert results[name] == "ok", results[name]
