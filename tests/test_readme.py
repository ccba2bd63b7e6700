"""Every code block of the README runs as written, on its own (issue 15).

Each ```python block is executed in a fresh namespace: no block relies on
names from another. A block that sets ``XLA_FLAGS`` (simulated devices) runs
in its own process, since the flag only takes effect before jax is imported.
Shell and output blocks are not code; any other language tag fails the test.
"""

import pathlib
import re
import subprocess
import sys

import jax
import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
RUNNABLE_LANGS = {"python"}
NOT_CODE = {"", "bash", "markdown", "text", "console"}


def test_readme_has_examples():
    assert len(BLOCKS) >= 10


def test_every_code_block_is_a_runnable_python_block():
    langs = re.findall(r"^```(\w*)\n", TEXT, flags=re.M)
    other = {lang for lang in langs if lang not in RUNNABLE_LANGS | NOT_CODE}
    assert not other, f"code blocks that the tests do not run: {sorted(other)}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    code = BLOCKS[index]
    name = f"README.md[python block {index}]"
    if "XLA_FLAGS" in code:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    # The user's default configuration, not the suite's strict one.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(code, name, "exec"), {"__name__": "__readme__"})
