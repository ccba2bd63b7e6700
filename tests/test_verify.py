"""The derivation verifier (jaxent.verify), its registry and `python -m jaxent verify`."""

import dataclasses
import inspect
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
from jaxent import derivations as D
from jaxent.__main__ import main
from jaxent.verify import CaseResult, VerifyResult

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", list(D.REGISTRY))
def test_every_registered_derivation_passes(name):
    # the first-order references only (second order, transforms and low precision have
    # their own tests in test_verify_research.py): one compilation per input structure
    r = jaxent.verify(name, num_random=1, second_order=False, transforms=False, low_precision=False)
    assert r.passed, str(r)
    assert r.max_abs_error_fd is not None or name == "softmax"  # every entry has FD inputs
    if D.REGISTRY[name].edge_cases:
        assert len(r.details) == 1 + len(D.REGISTRY[name].edge_cases)


# Public names that are not differentiable functions of arrays.
NOT_DERIVATIONS = {"verify", "VerifyResult", "derivations", "checked"}


def test_every_public_function_has_a_derivation():
    public = {
        n
        for n, v in vars(jaxent).items()
        if not n.startswith("_") and callable(v) and not inspect.isclass(v)
    } - NOT_DERIVATIONS
    registered = {name.split("[")[0] for name in D.REGISTRY}
    assert public - registered == set()


def test_plain_definitions_do_not_use_jaxent():
    # The references must be written independently of the closed forms' code.
    for d in D.REGISTRY.values():
        names = getattr(d.plain, "__code__", None)
        if names is not None:
            assert "jaxent" not in d.plain.__code__.co_names, d.name


def test_select_matches_exact_glob_and_variants():
    names = [d.name for d in D.select(["softmax_cross_entropy_with_integer_labels"])]
    assert names[0] == "softmax_cross_entropy_with_integer_labels"
    assert len(names) == 3
    assert {d.name for d in D.select(["kl_*"])} >= {"kl_divergence", "kl_estimate[k3]"}
    assert D.select(["no_such_thing"]) == []
    with pytest.raises(KeyError, match="registered"):
        D.get("no_such_thing")


# --------------------------------------------------------------------------- user derivations


def _focal(z, y):
    p = jax.nn.sigmoid(z)
    pt = jnp.where(y == 1, p, 1 - p)
    return -jnp.sum((1 - pt) ** 2 * jnp.log(pt))


def _focal_grad(z, y):
    p = jax.nn.sigmoid(z)
    pt = jnp.where(y == 1, p, 1 - p)
    s = jnp.where(y == 1, 1.0, -1.0)
    return s * (1 - pt) ** 2 * (2 * pt * jnp.log(pt) + pt - 1)


def _focal_grad_wrong(z, y):  # forgot one factor (1 - pt)
    p = jax.nn.sigmoid(z)
    pt = jnp.where(y == 1, p, 1 - p)
    s = jnp.where(y == 1, 1.0, -1.0)
    return s * (1 - pt) * (2 * pt * jnp.log(pt) + pt - 1)


FOCAL_INPUTS = [(np.array([0.3, -2.0, 4.0]), np.array([1, 0, 0]))]


def _sample_focal(rng):
    return rng.normal(size=4) * 2, rng.integers(0, 2, size=4)


def test_user_derivation_that_is_right_passes():
    r = jaxent.verify(_focal, _focal_grad, inputs=FOCAL_INPUTS, sample=_sample_focal)
    assert r.passed
    assert r.name == "_focal"
    assert len(r.details) == 1 + 3
    assert r.max_abs_error_autodiff < 1e-12
    assert r.max_abs_error_fd < 1e-6
    assert r.max_abs_error_library is None  # no custom rule to compare with


def test_user_derivation_that_is_wrong_fails():
    r = jaxent.verify(_focal, _focal_grad_wrong, inputs=FOCAL_INPUTS)
    assert not r.passed and not r
    assert r.max_abs_error_autodiff > 1e-2 and r.max_abs_error_fd > 1e-2
    assert "mismatch vs autodiff, fd" in r.details[0].message
    assert "FAIL" in str(r)


def test_wrong_softmax_cross_entropy_gradient_fails():
    # p - y is only right when the labels sum to 1: the registry's soft labels do not.
    d = D.get("softmax_cross_entropy")
    wrong = dataclasses.replace(
        d,
        closed_form=lambda z, y, mask: (jaxent.softmax(z) - y, -jaxent.log_softmax(z)),
    )
    r = jaxent.verify(wrong, num_random=2, edge_cases=False)
    assert not r.passed
    assert not any(c.passed for c in r.details)
    assert r.max_abs_error_library > 1e-3  # jaxent's own rule disagrees with the claim too


def test_sign_error_in_a_jacobian_fails_and_right_jacobian_passes():
    z = np.array([0.5, -1.0, 2.0])

    def jac(z):
        p = jaxent.softmax(z)
        return jnp.diag(p) - jnp.outer(p, p)

    assert jaxent.verify(jaxent.softmax, jac, inputs=[(z,)]).passed
    assert not jaxent.verify(jaxent.softmax, lambda z: -jac(z), inputs=[(z,)]).passed


def test_wrong_custom_rule_is_caught_against_its_plain_definition():
    @jax.custom_jvp
    def f(x):
        return jnp.sum(jnp.exp(x))

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return f(x), jnp.sum(2 * jnp.exp(x) * dx)  # wrong factor 2

    x = np.array([0.1, -0.3])
    r = jaxent.verify(f, jnp.exp, inputs=[(x,)], plain=lambda x: jnp.sum(jnp.exp(x)))
    assert not r.passed
    c = r.details[0]
    assert c.abs_error_autodiff < 1e-12 and c.abs_error_fd < 1e-6
    assert c.abs_error_library > 0.5
    assert "library" in c.message


def test_tuple_argnums():
    def f(p, q):
        return jnp.sum(p * jnp.log(p / q))

    def grads(p, q):
        return jnp.log(p / q) + 1, -p / q

    p, q = np.array([0.2, 0.8]), np.array([0.5, 0.5])
    r = jaxent.verify(f, grads, inputs=[(p, q)], argnums=(0, 1))
    assert r.passed
    r = jaxent.verify(f, lambda p, q: grads(p, q)[::-1], inputs=[(p, q)], argnums=(0, 1))
    assert not r.passed


def test_nan_in_the_claim_fails():
    r = jaxent.verify(
        lambda x: jnp.sum(x**2), lambda x: jnp.where(x > 0, 2 * x, jnp.nan), inputs=[(np.ones(2),)]
    )
    assert r.passed
    r = jaxent.verify(lambda x: jnp.sum(x**2), lambda x: x * jnp.nan, inputs=[(np.ones(2),)])
    assert not r.passed and "claim has NaN" in r.details[0].message


def test_runs_in_float64():
    seen = []

    def grad(x):
        seen.append(x.dtype)
        return jnp.cos(x)

    r = jaxent.verify(lambda x: jnp.sum(jnp.sin(x)), grad, inputs=[(np.float32([0.1, 2.0]),)])
    assert r.passed and seen == [jnp.float64]
    assert r.max_abs_error_autodiff < 1e-15  # float32 would give ~1e-8


def test_result_is_frozen_and_json_serialisable():
    r = jaxent.verify("kl_divergence", num_random=1)
    assert isinstance(r, VerifyResult) and all(isinstance(c, CaseResult) for c in r.details)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.passed = False  # type: ignore[misc]
    d = json.loads(json.dumps(r.to_dict()))
    assert d["name"] == "kl_divergence" and d["passed"] is True
    assert [c["label"] for c in d["details"]][:2] == ["random 0", "zero probabilities"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="derivative"):
        jaxent.verify(jnp.sin)
    with pytest.raises(ValueError, match="inputs"):
        jaxent.verify(jnp.sin, jnp.cos)
    with pytest.raises(KeyError):
        jaxent.verify("not_a_derivation")
    with pytest.raises(TypeError):
        jaxent.verify(3)


# --------------------------------------------------------------------------- the CLI


def _run_cli(*args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "jaxent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_cli_json_output():
    proc = _run_cli("verify", "--json", "--only", "softmax", "--only", "entropy", "--num-random", "1")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    names = [r["name"] for r in out["results"]]
    assert names == ["softmax", "entropy"]
    assert out["passed"] is True and out["failed"] == [] and out["num_derivations"] == 2
    assert all(r["passed"] and r["max_abs_error_autodiff"] < 1e-10 for r in out["results"])
    assert out["results"][0]["details"][0]["label"] == "random 0"


def test_cli_table_and_unknown_name():
    proc = _run_cli("verify", "--only", "logsumexp")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "closed"]
    assert lines[2].startswith("logsumexp") and lines[2].rstrip().endswith("PASS")
    assert "1/1 derivations passed" in proc.stdout
    proc = _run_cli("verify", "--only", "no_such_thing")
    assert proc.returncode == 2 and "registered" in proc.stderr


def test_cli_leaves_the_global_x64_flag_alone():
    code = (
        "import jax, jaxent; r = jaxent.verify('logit', num_random=1);"
        " print(r.passed, jax.config.jax_enable_x64, jax.numpy.zeros(1).dtype)"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="0")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert proc.stdout.split() == ["True", "False", "float32"], proc.stderr


def test_cli_exits_nonzero_on_a_failing_derivation(monkeypatch, capsys):
    d = D.get("logsumexp")
    wrong = dataclasses.replace(
        d, name="logsumexp[wrong]", closed_form=lambda z, mask: (jnp.exp(z),)
    )
    monkeypatch.setitem(D.REGISTRY, wrong.name, wrong)
    assert main(["verify", "--only", "logsumexp*", "--num-random", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: logsumexp[wrong]" in out
    assert "[FAIL] random 0" in out
