"""Types that resolve (issue 15): a user's script type-checks against the installed jaxent.

After the README's install (``pip install -e ".[dev]"``, a hatchling editable
install: a plain ``.pth`` path that type checkers follow), pyright run on a
script *outside* the repository must resolve ``import jaxent`` and find no
error. CI also runs ``python -m pyright`` on the package in standard mode.
"""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pyright", reason="pyright is in the dev extra: pip install -e '.[dev]'")

USER_SCRIPT = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp
    import jaxent
    from jaxent import metrics

    logits = jnp.array([[2.0, 0.5, -1.0]])
    labels = jnp.array([0])
    loss: jax.Array = jaxent.softmax_cross_entropy_with_integer_labels(logits, labels)
    kl: jax.Array = jaxent.kl_divergence_from_logits(logits, logits, temperature=2.0)
    lp, ent = jaxent.linear_log_prob_and_entropy(jnp.ones((2, 3)), jnp.zeros((3, 4)), labels)
    state = metrics.Accuracy.from_model_output(logits=logits, labels=labels)
    state = state.merge(state)
    result = jaxent.verify("softmax", num_random=1)
    passed: bool = result.passed
    """
)


def test_pyright_resolves_jaxent_from_a_user_script(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # outside the repository: only the installed package can resolve
        timeout=300,
        check=False,
    )
    report = json.loads(proc.stdout)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert not errors, json.dumps(errors, indent=1)
    assert report["summary"]["filesAnalyzed"] == 1
