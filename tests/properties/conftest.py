"""The property suite's hypothesis profiles live in ``tests/conftest.py``.

They are shared with the differential tests (``tests/test_differential.py``):
``JAXENT_HYPOTHESIS_PROFILE=long pytest tests/properties`` still selects the
soak profile.
"""
