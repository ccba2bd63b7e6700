"""Forward passes at the fused limit (issue 10): no N x K array is written.

``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`` is
the scratch memory of the compiled forward pass; a pass that writes an
upcast copy, a select or a log-softmax of the logits needs N*K*4 bytes of
it. Each f32 forward here must stay below 5 % of that (row statistics only).
The shape is the benchmark's, 4096 x 32768, lowered from abstract shapes
(nothing is allocated): XLA:CPU's fusion decisions depend on the shape, and
at small shapes it writes an N x K array even for optax's own loss.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _refs import compiled_programs

import jaxent

N, K = 4096, 32768
NK4 = N * K * 4


def _inputs(dtype=jnp.float32):
    x = jax.ShapeDtypeStruct((N, K), dtype)
    return x, x, jax.ShapeDtypeStruct((N,), jnp.int32)


def _temp_fraction(f, *args):
    compiled = jax.jit(f).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / NK4


CASES = {
    "softmax_cross_entropy": lambda x, y, l: jaxent.softmax_cross_entropy(x, y),
    "integer_labels": lambda x, y, l: jaxent.softmax_cross_entropy_with_integer_labels(x, l),
    "integer_labels_all_options": lambda x, y, l: jaxent.softmax_cross_entropy_with_integer_labels(
        x, l, ignore_index=-100, class_weights=jnp.ones(K), z_loss=1e-4
    ),
    "label_smoothed_uniform": lambda x, y, l: jaxent.label_smoothed_cross_entropy(x, l, 0.1),
    "label_smoothed_off_target": lambda x, y, l: jaxent.label_smoothed_cross_entropy(
        x, l, 0.1, convention="off_target"
    ),
    "label_smoothed_soft_labels": lambda x, y, l: jaxent.label_smoothed_cross_entropy(
        x, y, 0.1, convention="off_target"
    ),
    "with_label_smoothing": lambda x, y, l: jaxent.with_label_smoothing(
        jaxent.softmax_cross_entropy, 0.1
    )(x, l),
    "kl_divergence_from_logits": lambda x, y, l: jaxent.kl_divergence_from_logits(x, 0.5 * x),
    "entropy_from_logits": lambda x, y, l: jaxent.entropy_from_logits(x),
    "js_divergence_from_logits": lambda x, y, l: jaxent.js_divergence_from_logits(x, 0.5 * x),
}


# Cases whose forward is known to write an N x K array (strict xfail, naming the open issue).
_OPEN: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=_OPEN[n])) if n in _OPEN else n
        for n in sorted(CASES)
    ],
)
def test_f32_forward_writes_no_n_by_k_array(name):
    x, y, labels = _inputs()
    frac = _temp_fraction(CASES[name], x, y, labels)
    assert frac < 0.05, f"{name}: the compiled forward needs {frac:.2f} x N*K*4 temp bytes"


def test_the_measurement_sees_an_n_by_k_write():
    x, y, _ = _inputs()
    assert _temp_fraction(optax.losses.softmax_cross_entropy, x, y) < 0.05  # optax: fused
    assert _temp_fraction(lambda x: jnp.sum(jnp.where(x > 0, x, 0.0), axis=1), x) >= 0.9


@pytest.mark.parametrize(
    "name",
    [
        "softmax_cross_entropy",
        "integer_labels",
        "label_smoothed_uniform",
        "kl_divergence_from_logits",
        "entropy_from_logits",
    ],
)
def test_eager_call_is_one_compiled_dispatch(name):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    y = jax.nn.softmax(jnp.asarray(rng.normal(size=(16, 10)), jnp.float32))
    labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    compiled = compiled_programs(CASES[name], x, y, labels)
    # the public function and the 0.5 * x of the KL case's inputs, nothing op by op
    assert len(compiled) <= (2 if name == "kl_divergence_from_logits" else 1), compiled


def test_traced_call_is_inlined():
    """Inside an outer trace the inner jit is skipped: its primal is never traced."""
    x, y, labels = _inputs()
    jaxpr = jax.make_jaxpr(CASES["softmax_cross_entropy"])(x, y, labels).jaxpr
    assert "jit" not in [e.primitive.name for e in jaxpr.eqns]


def test_bf16_integer_labels_write_no_f32_copy():
    x, _, labels = _inputs(jnp.bfloat16)
    assert _temp_fraction(CASES["integer_labels"], x, None, labels) < 0.05


_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) (\w[\w-]*)\((.*?)\)")


def _late_row_statistic_uses(hlo_text: str) -> list[str]:
    """Instructions of a fused computation that, after its last reduction,
    use a value computed before it other than constants.

    That shape (a row statistic such as ``s`` reused after the final sum,
    ``... / s``) compiles on XLA:CPU to a fusion that ran 10x slower than the
    same chain ending in its last reduction (entropy from logits at
    4096 x 32768 f32, measured): the forwards keep every row term inside the
    last sum instead.
    """
    bad = []
    for block in hlo_text.split("\n\n"):
        lines = block.splitlines()
        if not lines or not lines[0].startswith("%fused_computation"):
            continue
        rows = [m.groups() for m in map(_INSTR.match, lines[1:]) if m]
        reduces = [i for i, (_, _, op, _) in enumerate(rows) if op == "reduce"]
        if len(reduces) < 2:
            continue
        last = reduces[-1]
        constant = {
            name
            for name, _, op, args in rows
            if op in ("constant", "parameter") or (op == "broadcast" and "constant" in args)
        }
        late = {rows[last][0]}
        for name, _, _, args in rows[last + 1 :]:
            used = re.findall(r"%([\w.-]+)", args)
            early = [u for u in used if u not in late and u not in constant]
            if early:
                bad.append(f"{lines[0].split()[0]}: {name} uses {early}")
            late.add(name)
    return bad


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_ends_in_its_last_reduction(name, dtype):
    x, y, labels = _inputs(dtype)
    text = jax.jit(CASES[name]).lower(x, y, labels).compile().as_text()
    assert _late_row_statistic_uses(text) == []


def test_the_late_use_check_sees_the_slow_form():
    def slow(x):
        m = jnp.max(x, axis=1, keepdims=True)
        e = jnp.exp(x - m)
        s = jnp.sum(e, axis=1, keepdims=True)
        return jnp.sum(e * (x - m), axis=1) / s[:, 0]

    x, _, _ = _inputs()
    assert _late_row_statistic_uses(jax.jit(slow).lower(x).compile().as_text())
