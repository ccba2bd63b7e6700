"""Test configuration shared by the whole suite.

The suite runs in the user's configuration: float32 (x64 **off**), and every
test runs under

* ``jax.numpy_dtype_promotion("strict")``: every upcast in the library must be
  explicit (bfloat16/float16 paths included);
* ``jax.numpy_rank_promotion("raise")``: silent broadcasting bugs surface as
  errors (as in equinox's tests);
* warnings as errors (``filterwarnings = ["error"]`` in ``pyproject.toml``).

float64 is opt-in:

* ``@pytest.mark.x64`` (or ``pytestmark = pytest.mark.x64`` in a module) runs a
  test inside ``jax.enable_x64(True)``; the modules listed in
  :data:`X64_MODULES` (written against float64 references to 1e-12) get the
  marker here until they carry it themselves;
* the differential and dtype tests run both configurations themselves: they
  are parametrised over ``x64`` and enter ``jax.enable_x64(x64)`` inside the test;
* ``JAXENT_TEST_X64=all pytest`` runs every test under x64 (a second CI job,
  for a soak; not needed for coverage).

Create jnp arrays inside the test (not at import time): an array created at
import time is float32 whatever the test's configuration.

Hypothesis profiles (shared by ``tests/properties`` and the differential tests):

* ``ci`` (default): derandomized (the same examples on every run, no flaky
  failures), enough examples per law to matter within the suite's time budget.
* ``long``: ``JAXENT_HYPOTHESIS_PROFILE=long pytest tests/properties``, 50x the
  examples, randomized; for a soak before a release.
* ``dev``: a handful of examples, for editing the tests.
"""

from __future__ import annotations

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

# Modules whose tests compare with float64 references at 1e-12 and build their
# inputs as float64 numpy arrays: they run under x64. Every other module runs
# in the default configuration (float32).
X64_MODULES = frozenset(
    {
        "test_gradients.py",
        "test_information.py",
        "test_losses.py",
        "test_smoothing.py",
        "test_softmax.py",
        "test_large_vocab.py",
        "test_sharding.py",
        "test_verify.py",
    }
)

_ALL_X64 = os.environ.get("JAXENT_TEST_X64", "") == "all"


def pytest_configure(config):
    config.addinivalue_line("markers", "x64: run the test under jax.enable_x64(True)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in X64_MODULES:
            item.add_marker(pytest.mark.x64)


@pytest.fixture(autouse=True)
def jax_config(request):
    """Strict dtype promotion, rank promotion "raise", and x64 only where marked."""
    x64 = _ALL_X64 or request.node.get_closest_marker("x64") is not None
    with (
        jax.enable_x64(x64),
        jax.numpy_dtype_promotion("strict"),
        jax.numpy_rank_promotion("raise"),
    ):
        yield x64


_COMMON = dict(
    deadline=None,  # the first example of each shape compiles
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=1500, **_COMMON)
settings.register_profile("dev", max_examples=5, derandomize=True, **_COMMON)
settings.load_profile(os.environ.get("JAXENT_HYPOTHESIS_PROFILE", "ci"))
