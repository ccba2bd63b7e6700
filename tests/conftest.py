"""Test configuration shared by the whole suite.

* float64 is enabled so references and closed forms can be compared to 1e-12;
  tests of float32/bfloat16/float16 behaviour pass explicit dtypes.
* Rank promotion raises (as equinox's tests do): silent broadcasting bugs in
  the library surface as errors.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
