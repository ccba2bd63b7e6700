"""Benchmarks of jaxent against its peers; see benchmarks/README.md."""

import os

# PyTorch (an optional peer) reads this when its OpenMP runtime loads: with the
# default (active) policy its idle worker threads spin between calls and steal
# the cores the JAX implementations are being timed on. It must be set before
# torch is imported, so it is set here, before any case module is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
