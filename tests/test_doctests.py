"""Every public function and class of jaxent has an example, and every example runs (issue 15).

The examples are the ``>>>`` blocks of the docstrings of ``jaxent.__all__``,
of the public names of ``jaxent.metrics``, ``jaxent.checked`` and
``jaxent.derivations``, and of their methods. Each docstring is one test, run
by :mod:`doctest` in the user's default configuration (float32, standard dtype
and rank promotion), so what the docstring prints is what a user sees.
"""

import doctest
import inspect
import types

import jax
import pytest

import jaxent
import jaxent.derivations
import jaxent.metrics

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public(module, names):
    for name in names:
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType):
            continue
        yield f"{module.__name__}.{name}", obj


def _objects():
    seen = set()
    out = {}
    sources = [
        (jaxent, jaxent.__all__),
        (jaxent.metrics, jaxent.metrics.__all__),
        (jaxent.derivations, ["Case", "Derivation", "derivation", "register"]),
    ]
    for module, names in sources:
        for qual, obj in _public(module, names):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            out[qual] = obj
    return out


OBJECTS = _objects()
FINDER = doctest.DocTestFinder(recurse=True, exclude_empty=True)


def _tests(qual, obj):
    return [t for t in FINDER.find(obj, qual, globs={}) if t.examples]


def test_every_public_function_and_class_has_an_example():
    missing = [q for q, obj in OBJECTS.items() if not _tests(q, obj)]
    assert not missing, f"no >>> example in the docstring of: {missing}"


@pytest.mark.parametrize("qual", sorted(OBJECTS))
def test_docstring_examples_run(qual):
    tests = _tests(qual, OBJECTS[qual])
    if not tests:
        pytest.skip("no example (test_every_public_function_and_class_has_an_example fails)")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for test in tests:
            runner.run(test, out=report.append, clear_globs=True)
    assert runner.failures == 0, "\n".join(report)


def test_the_public_namespace_is_explicit():
    """``__all__`` lists exactly the public names of ``jaxent`` (no stray imports)."""
    public = {n for n in dir(jaxent) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(jaxent, n))}
    assert set(jaxent.__all__) == public - modules - {"annotations"}


PLAIN_EXEMPT = {"checked", "verify"}  # wrappers, not formulas


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in jaxent.__all__
        if inspect.isfunction(getattr(jaxent, n)) and n not in PLAIN_EXEMPT
    ),
)
def test_docstring_has_a_plain_text_formula_for_help(name):
    """``help(f)`` shows raw LaTeX; each function also states its formula in plain text."""
    doc = inspect.getdoc(getattr(jaxent, name)) or ""
    head = doc.split("Args:")[0]
    plain = [
        line
        for line in head.splitlines()
        if "=" in line and "\\" not in line and ":math:" not in line and "``" not in line
    ]
    assert plain, f"{name}: no plain-text formula line before Args:"
