"""Hypothesis profiles of the property suite.

* ``ci`` (default): derandomized (the same examples on every run, no flaky
  failures), enough examples per law to matter within the suite's time budget.
* ``long``: ``JAXENT_HYPOTHESIS_PROFILE=long pytest tests/properties``, 50x the
  examples, randomized; for a soak before a release.
* ``dev``: a handful of examples, for editing the tests.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None,  # the first example of each shape compiles
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=1500, **_COMMON)
settings.register_profile("dev", max_examples=5, derandomize=True, **_COMMON)
settings.load_profile(os.environ.get("JAXENT_HYPOTHESIS_PROFILE", "ci"))
