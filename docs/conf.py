"""Sphinx configuration: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

Sphinx with myst-nb, as optax and flax: autodoc + autosummary give a page per
public symbol (formulas from the docstrings' ``.. math::`` blocks), napoleon
reads the Google-style "Args:" sections, and myst-nb executes the notebooks and
the executable pages at build time (a cell error fails the build).
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

project = "jaxent"
author = "jaxent maintainers"
copyright = "2026, jaxent maintainers"  # noqa: A001
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "_generated_benchmarks.md"]
templates_path = ["_templates"]
html_theme = "furo"
html_title = "jaxent"

autosummary_generate = True
autodoc_typehints = "none"  # the "Args:" sections say what each argument is
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# MathJax from its CDN on the published site; JAXENT_DOCS_MATHJAX=file:///.../tex-chtml.js
# renders the math offline (e.g. a copy from `npm pack mathjax@3`, for screenshots).
mathjax_path = os.environ.get(
    "JAXENT_DOCS_MATHJAX", "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"
)
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 300
nb_execution_show_tb = True

# The notebooks import from examples/ relative to notebooks/; their kernels here
# run in docs/notebooks/, so put examples/ on the kernels' path.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT / "examples"), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
)

# The notebooks live in notebooks/ (executed by the test suite too): copy them in.
_nb_out = pathlib.Path(__file__).parent / "notebooks"
_nb_out.mkdir(exist_ok=True)
for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy2(nb, _nb_out / nb.name)

# The benchmarks page: generated from the newest benchmark run's JSON.
_results = sorted((ROOT / "benchmarks" / "results").glob("*.json"), key=lambda p: p.stat().st_mtime)
_bench = pathlib.Path(__file__).parent / "_generated_benchmarks.md"
if _results:
    _table = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(_results[-1])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    _table = re.sub(r"(?m)^#### ", "## ", _table)  # the report's sections, as page sections
    _bench.write_text(f"Generated from `benchmarks/results/{_results[-1].name}`.\n\n{_table}")
else:
    _bench.write_text("No benchmark run recorded: run `python -m benchmarks`.\n")


# Docstrings state their formulas twice: in plain text for help() (with |x| for
# absolute values and set sizes) and in ``.. math::`` for this site. In reST a
# bare |x| is a substitution reference: escape the bars outside math and literals.
_LITERAL = re.compile(r"(``.*?``|:math:`[^`]*`|`[^`]*`)")


def _escape_bars(line: str) -> str:
    parts = _LITERAL.split(line)
    return "".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


def _plain_bars(app, what, name, obj, options, lines):
    in_math, indent = False, 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        width = len(line) - len(line.lstrip())
        if stripped.startswith(".. math::"):
            in_math, indent = True, width
            continue
        if in_math:
            if stripped and width <= indent:
                in_math = False
            else:
                continue
        if "|" in line:
            lines[i] = _escape_bars(line)


def _families() -> dict[str, list[str]]:
    """Public name -> the other names of its family, read from api.rst's autosummary lists."""
    groups: list[list[str]] = []
    current: list[str] | None = None
    for line in (pathlib.Path(__file__).parent / "api.rst").read_text().splitlines():
        if line.startswith(".. autosummary::"):
            current = []
            groups.append(current)
        elif current is not None and line.startswith("   ") and not line.strip().startswith(":"):
            current.append(line.strip())
        elif current is not None and line and not line.startswith(" "):
            current = None
    return {n: [m for m in g if m != n] for g in groups for n in g}


_FAMILY = _families()


def _see_also(app, what, name, obj, options, lines):
    """Every public symbol's page ends with "See also": the other members of its family."""
    short = name.rsplit(".", 1)[-1]
    if what not in ("function", "class") or short not in _FAMILY or not _FAMILY[short]:
        return
    if any(line.strip().lower().startswith(("see also", ".. seealso")) for line in lines):
        return  # the docstring has its own
    module = name.rsplit(".", 1)[0]
    refs = ", ".join(f":obj:`~{module}.{n}`" for n in _FAMILY[short])
    lines += ["", f".. seealso:: {refs}"]


def setup(app):
    app.connect("autodoc-process-docstring", _plain_bars)
    app.connect("autodoc-process-docstring", _see_also)
