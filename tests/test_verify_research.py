"""Issue 14: the verifier as a research instrument.

Per-argument results, Richardson / Taylor references, second order, transforms,
low precision, KL-estimator expectations, symbolic derivations, mutation score,
user modules on the command line, reports and exit codes, argument errors.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxent
from jaxent import _mutate
from jaxent import derivations as D
from jaxent.verify import Check, LowPrecision, symbolic_gradient

ROOT = Path(__file__).resolve().parents[1]


def _checks(result, reference):
    return [k for c in result.details for k in c.checks if k.reference == reference]


# --------------------------------------------------------------------------- invalid arguments


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fd_step": 0}, "fd_step"),
        ({"fd_step": -1e-6}, "fd_step"),
        ({"fd_step": float("nan")}, "fd_step"),
        ({"fd_step": 0.5}, "fd_step"),
        ({"rtol": -1.0}, "rtol"),
        ({"fd_atol": float("inf")}, "fd_atol"),
        ({"num_random": -1}, "num_random"),
        ({"argnums": (-1,)}, "argnums"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        jaxent.verify(jnp.sin, jnp.cos, inputs=[(np.ones(2),)], **kwargs)


# --------------------------------------------------------------------------- per argument


def _ce_two_args(z, w):
    # w: a small per-class scale; dL/dw is ~100x smaller than dL/dz
    return -jnp.sum(0.01 * w * jax.nn.log_softmax(z))


def _ce_two_args_grad(z, w):
    p = jax.nn.softmax(z)
    return 0.01 * (jnp.sum(w) * p - w), -0.01 * jax.nn.log_softmax(z)


def test_a_small_argument_error_is_reported_on_that_argument():
    z = np.array([0.3, -1.0, 2.0, 0.5])
    w = np.array([1.0, 0.5, 2.0, 1.5])

    def wrong(z, w):  # 1 % error in the small gradient only
        gz, gw = _ce_two_args_grad(z, w)
        return gz, gw * 1.01

    ok = jaxent.verify(_ce_two_args, _ce_two_args_grad, inputs=[(z, w)], argnums=(0, 1))
    assert ok.passed
    bad = jaxent.verify(_ce_two_args, wrong, inputs=[(z, w)], argnums=(0, 1))
    assert not bad.passed
    failed = {(k.argument, k.reference) for k in bad.details[0].checks if not k.passed}
    assert ("w", "autodiff") in failed and ("w", "fd") in failed
    assert not any(arg == "z" for arg, _ in failed)
    # the error on w, relative to w's own gradient, is the injected 1 %
    (ad_w,) = [k for k in bad.details[0].checks if k.reference == "autodiff" and k.argument == "w"]
    assert 0.009 < ad_w.error < 0.011


# --------------------------------------------------------------------------- Taylor and Richardson


def _cube(x):
    return jnp.sum(jnp.sin(x) * x**2)


def _cube_grad(x):
    return jnp.cos(x) * x**2 + 2 * x * jnp.sin(x)


def test_taylor_slope_is_two_for_a_right_gradient_and_about_one_for_a_wrong_one():
    x = np.array([0.7, -1.3, 2.1])
    right = jaxent.verify(_cube, _cube_grad, inputs=[(x,)])
    (t,) = _checks(right, "taylor")
    assert t.passed and abs(t.error - 2.0) < 0.05 and len(t.table) == 10
    hs = [h for h, _ in t.table]
    assert hs == sorted(hs, reverse=True)
    wrong = jaxent.verify(_cube, lambda x: _cube_grad(x) * (1 + 1e-4), inputs=[(x,)],
                          rtol=1.0, fd_rtol=1.0)  # fmt: skip
    (t,) = _checks(wrong, "taylor")
    assert not t.passed and t.error < 1.3  # slope falls to 1: the remainder is O(h)
    assert not wrong.passed  # the Taylor test alone fails it (the tolerances were opened)


def test_taylor_reports_a_linear_function_as_exact():
    r = jaxent.verify(
        lambda x: jnp.sum(3.0 * x), lambda x: jnp.full_like(x, 3.0), inputs=[(np.ones(3),)]
    )
    (t,) = _checks(r, "taylor")
    assert t.passed and t.error is None and "rounding" in t.note


def test_richardson_fd_is_accurate_to_about_1e_10():
    r = jaxent.verify(_cube, _cube_grad, inputs=[(np.array([0.7, -1.3, 2.1]),)])
    (fd,) = _checks(r, "fd")
    assert fd.passed and fd.error < 1e-9 and "Richardson" in fd.note


# --------------------------------------------------------------------------- second order


def _exp_sum_plain(x):
    return jnp.sum(jnp.exp(x))


@jax.custom_jvp
def _exp_sum_first_order_only(x):
    return jnp.sum(jnp.exp(x))


@_exp_sum_first_order_only.defjvp
def _exp_sum_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # right first derivative, but stop_gradient kills the second
    return _exp_sum_first_order_only(x), jnp.sum(jax.lax.stop_gradient(jnp.exp(x)) * dx)


def test_second_order_checks_catch_a_rule_without_a_second_derivative():
    x = np.array([0.1, -0.4, 0.8])
    r = jaxent.verify(_exp_sum_first_order_only, jnp.exp, inputs=[(x,)], plain=_exp_sum_plain)
    c = r.details[0]
    by_ref = {k.reference: k for k in c.checks}
    assert by_ref["autodiff"].passed and by_ref["library_rev"].passed  # first order is right
    assert not by_ref["hessian_plain"].passed and not by_ref["hvp_fd"].passed
    assert by_ref["hessian_symmetry"].passed and by_ref["fwd_over_rev"].passed
    assert not r.passed


def test_registered_custom_jvp_rule_has_second_order_checks():
    r = jaxent.verify("softmax_cross_entropy", num_random=1, low_precision=False)
    refs = {k.reference for k in r.details[0].checks}
    assert {"hessian_symmetry", "fwd_over_rev", "hvp_fd", "hessian_plain"} <= refs
    assert r.passed
    # edge cases (-inf logits) are not given second-order checks
    assert not any(k.reference == "hvp_fd" for k in r.details[1].checks)


# --------------------------------------------------------------------------- transforms and dtypes


def _square_sum(z):
    return jnp.sum(z**2)


def test_output_dtype_check_fails_a_function_that_upcasts():
    d = D.Derivation(
        name="upcasting", formula="2 z", latex="",
        function=lambda z: jnp.sum(z.astype(jnp.float32) ** 2),
        closed_form=lambda z: (2 * z,), plain=_square_sum, argnums=(0,),
        sample=lambda rng: (rng.normal(size=3),),
    )  # fmt: skip
    r = jaxent.verify(d, num_random=1)
    dtype = {k.argument: k for k in r.checks if k.reference == "dtype"}
    assert dtype["float32"].passed
    assert not dtype["bfloat16"].passed and "float32" in dtype["bfloat16"].note
    assert {k.reference for k in r.checks} >= {"jit", "vmap"}
    assert not r.passed


def test_low_precision_is_measured_and_failed_only_against_a_budget():
    base = dict(
        name="square", formula="2 z", latex="", function=lambda z: jnp.sum(z * z),
        closed_form=lambda z: (2 * z,), plain=_square_sum, argnums=(0,),
        sample=lambda rng: (rng.normal(size=4),),
    )  # fmt: skip
    r = jaxent.verify(D.Derivation(**base), num_random=2)
    lows = {lp.dtype: lp for lp in r.low_precision}
    assert set(lows) == {"float32", "bfloat16", "float16"}
    assert all(isinstance(lp, LowPrecision) and lp.passed is None for lp in lows.values())
    # 2 z is exact in every binary format: the gradient has no rounding error
    assert lows["bfloat16"].ulps == 0.0 and r.passed
    lossy = dict(base, function=lambda z: jnp.sum(jnp.exp(z)), closed_form=lambda z: (jnp.exp(z),),
                 plain=lambda z: jnp.sum(jnp.exp(z)))  # fmt: skip
    r = jaxent.verify(D.Derivation(**lossy, low_precision_ulps={"float16": 1e-3}), num_random=2)
    lows = {lp.dtype: lp for lp in r.low_precision}
    assert lows["float16"].ulps > 1e-3 and lows["float16"].passed is False and not r.passed
    assert lows["float32"].passed is None


# --------------------------------------------------------------------------- KL estimators in expectation


EXPECTED = [n for n in D.REGISTRY if n.startswith("kl_estimate[") and n.endswith("expected]")]


def test_kl_estimator_expectations_are_registered():
    assert {"k1 as a loss", "k1 in the reward", "k2 as a loss", "k3 as a loss"} <= {
        n[len("kl_estimate[") :].split(",")[0] for n in EXPECTED
    }


@pytest.mark.parametrize("name", EXPECTED)
def test_kl_estimator_expected_gradient(name):
    r = jaxent.verify(name, num_random=2, transforms=False, low_precision=False)
    assert r.passed, str(r)
    assert r.max_abs_error_library < 1e-14


def _kl_grad_numpy(a, b):
    p = np.exp(a - a.max())
    p /= p.sum()
    q = np.exp(b - b.max())
    q /= q.sum()
    delta = np.log(p) - np.log(q)
    return p * (delta - np.sum(p * delta)), p - q


def test_k3_as_a_loss_follows_the_reverse_kl_not_the_forward_one():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=5), rng.normal(size=5)
    fwd, rev = _kl_grad_numpy(a, b)  # independent numpy values of both directions
    assert np.max(np.abs(fwd - rev)) > 1e-2
    d = D.get("kl_estimate[k3 as a loss, expected]")
    with jax.enable_x64(True):
        got = jax.grad(d.function)(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(got), rev, rtol=1e-10, atol=1e-14)
    # claiming the forward KL's gradient for k3 fails, against the surrogate's own gradient
    claim = jax.jit(lambda a, b: (jax.grad(D._kl_logits_plain)(a, b, None),))
    wrong = dataclasses.replace(d, closed_form=claim)
    r = jaxent.verify(wrong, num_random=1, transforms=False, low_precision=False)
    assert not r.passed and not _checks(r, "library_rev")[0].passed


# --------------------------------------------------------------------------- symbolic


def test_symbolic_derivation_reproduces_seed_000():
    sympy = pytest.importorskip("sympy")
    d = D.get("softmax_cross_entropy")
    expr, symbols, grads = symbolic_gradient(d)
    z, y, _ = symbols
    s = sum(sympy.exp(zi) for zi in z)
    for i, g in enumerate(grads[0]):  # dL/dz_i = (sum y) p_i - y_i, seed 000's p - y
        assert sympy.simplify(g - (sum(y) * sympy.exp(z[i]) / s - y[i])) == 0
    r = jaxent.verify(d, num_random=2, transforms=False, low_precision=False)
    sym = _checks(r, "symbolic")
    assert len(sym) == 2 * 3  # z and y on 2 random inputs and the one finite, unmasked edge case
    assert all(k.passed and k.error < 1e-14 for k in sym)


def test_symbolic_reference_catches_a_wrong_closed_form():
    pytest.importorskip("sympy")
    d = D.get("softmax_cross_entropy")
    wrong = dataclasses.replace(
        d, closed_form=lambda z, y, mask: (jaxent.softmax(z) - y, -jaxent.log_softmax(z))
    )
    r = jaxent.verify(wrong, num_random=1, edge_cases=False, transforms=False, low_precision=False)
    (sym_z, sym_y) = _checks(r, "symbolic")
    assert not sym_z.passed and sym_y.passed


# --------------------------------------------------------------------------- mutation


def test_mutation_catches_every_mutant_of_kl_divergence():
    m = _mutate.mutate(D.get("kl_divergence"), num_random=2)
    kinds = {x.kind for x in m.mutants}
    assert kinds == {"scale", "drop", "sign", "swap"}
    assert m.baseline_passed and all(m.caught), m.survivors
    (scale,) = [b for x, b in zip(m.mutants, m.caught_by, strict=True) if x.kind == "scale"]
    assert "autodiff" in scale  # a 1e-6 relative error is caught


def test_check_grads_misses_the_1e_6_mutant_the_verifier_catches():
    d = D.get("logsumexp")
    names = [x.kind for x in _mutate.mutants_of(d)]
    cg = _mutate.check_grads_baseline(d)
    assert cg[names.index("scale")] is False
    assert all(_mutate.mutate(d).caught)


# --------------------------------------------------------------------------- the CLI


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "jaxent", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )  # fmt: skip


def test_cli_user_module_to_markdown_and_json(tmp_path):
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    proc = _cli("verify", "--module", "examples/my_derivation.py", "--markdown", str(md),
                "--json", str(js), "--num-random", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "focal_loss" in proc.stdout and "1/1 derivations passed" in proc.stdout
    text = md.read_text()
    assert "| `focal_loss` | `my_derivation.focal_loss` |" in text
    assert "| `focal_loss` | `z` | taylor |" in text and "jaxent.derivations" not in text
    out = json.loads(js.read_text())
    assert out["schema"] == "jaxent.verify/2" and out["passed"] is True
    (res,) = out["results"]
    assert res["function"] == "my_derivation.focal_loss"
    check = res["details"][0]["checks"][0]
    assert set(check) >= {"reference", "argument", "error", "tolerance", "passed"}
    assert {c["reference"] for c in res["details"][0]["checks"]} >= {
        "autodiff", "fd", "taylor", "library_rev", "library_fwd", "hvp_fd"}  # fmt: skip
    assert {lp["dtype"] for lp in res["low_precision"]} == {"float32", "bfloat16", "float16"}


WRONG_MODULE = '''
import jax, jax.numpy as jnp
from jaxent.derivations import derivation

def tce(z, y):  # temperature-scaled cross-entropy, T = 2
    return -jnp.sum(y * jax.nn.log_softmax(z / 2.0))

@derivation(plain=tce, sample=lambda rng: (rng.normal(size=4), rng.dirichlet([1.0] * 4)))
def tce_grad(z, y):
    """forgot the 1/T"""
    return jnp.sum(y) * jax.nn.softmax(z / 2.0) - y
'''


def test_cli_exit_codes_wrong_module_and_bad_usage(tmp_path):
    f = tmp_path / "wrong_tce.py"
    f.write_text(WRONG_MODULE)
    proc = _cli("verify", "--module", str(f), "--num-random", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tce_grad" in proc.stdout and "FAILED: tce_grad" in proc.stdout
    assert (
        "FAIL" in proc.stdout
        and "wrong_tce.tce" in _cli("verify", "--module", str(f), "-v", "--num-random", "1").stdout
    )  # noqa: E501
    for bad in (["verify", "--num-random", "-1"], ["verify", "--bogus"], ["nothing"],
                ["verify", "--module", str(tmp_path / "missing.py")],
                ["verify", "--only", "no_such_derivation"]):  # fmt: skip
        proc = _cli(*bad)
        assert proc.returncode == 2, (bad, proc.stderr)


def test_cli_help_is_plain_text():
    proc = _cli("--help")
    assert proc.returncode == 0 and "verify" in proc.stdout and "\x1b" not in proc.stdout
    proc = _cli("verify", "--help")
    assert proc.returncode == 0
    for word in ("--module", "--json", "--markdown", "--mutate", "Taylor", "Exit status"):
        assert word in proc.stdout


def test_cli_mutate_reports_the_score():
    proc = _cli("verify", "--mutate", "--only", "logit", "--only", "self_information")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mutation score:" in proc.stdout and "(100.0 %" in proc.stdout


def test_check_dataclass_fields():
    assert [f.name for f in dataclasses.fields(Check)][:6] == [
        "reference", "argument", "error", "abs_error", "tolerance", "passed"]  # fmt: skip
