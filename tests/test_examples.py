"""The tiny language-model example trains, then distils through linear_kl_divergence (issue 13)."""

import importlib.util
import math
from pathlib import Path

import jax

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tiny_language_model.py"


def _load():
    spec = importlib.util.spec_from_file_location("tiny_language_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_language_model_trains_and_distils():
    example = _load()
    chars, _, _ = example.dataset()
    with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes an int32 count with floats
        r = example.main(steps=80)
    uniform = math.log(len(chars))
    # The teacher learns from hidden states (linear_cross_entropy) ...
    assert r["teacher_first_loss"] > uniform - 0.5
    assert r["teacher_last_loss"] < 0.7 * r["teacher_first_loss"]
    assert r["teacher_heldout_ce"] < 0.75 * uniform
    # ... and the student learns from the teacher's head alone (linear_kl_divergence).
    assert r["student_last_loss"] < 0.5 * r["student_first_loss"]
    assert r["student_heldout_ce"] < 0.85 * uniform
    assert r["top1_agreement"] > 0.3
