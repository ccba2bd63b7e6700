"""Multi-device tests on 8 simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before jax is
imported, so the checks (``tests/_sharding_checks.py``) run once in a
subprocess; each check is reported here as its own test.

* every public loss gives the same values and gradients under ``jax.jit`` on
  arrays sharded over a batch axis with ``NamedSharding`` as unsharded;
* ``vocab_parallel_cross_entropy`` and ``vocab_parallel_linear_cross_entropy``
  inside ``shard_map`` with the class axis sharded match the unsharded,
  materialised losses (values and gradients) with at most two collectives.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_sharding_checks.py")
EXPECTED = [
    "batch_sharded[softmax_cross_entropy]",
    "batch_sharded[softmax_cross_entropy_with_integer_labels]",
    "batch_sharded[sigmoid_binary_cross_entropy]",
    "batch_sharded[binary_cross_entropy]",
    "batch_sharded[kl_divergence_from_logits]",
    "batch_sharded[entropy_from_logits]",
    "batch_sharded[js_divergence_from_logits]",
    "batch_sharded[kl_divergence]",
    "batch_sharded[cross_entropy]",
    "batch_sharded[linear_cross_entropy]",
    "vocab_parallel[plain]",
    "vocab_parallel[ignore_where]",
    "vocab_parallel[z_loss]",
    "vocab_parallel[smoothing]",
    "vocab_parallel_2d_mesh_bfloat16",
    "vocab_parallel_linear[plain]",
    "vocab_parallel_linear[all]",
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


@pytest.mark.parametrize("name", EXPECTED + ["batch_sharded[label_smoothed_cross_entropy]"])
def test_check(results, name):
    if name not in results:
        pytest.skip(f"{name} not available in this version of jaxent")
    assert results[name] == "ok", results[name]
