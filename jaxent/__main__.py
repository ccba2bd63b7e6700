"""Command line of jaxent: ``python -m jaxent COMMAND``.

verify
  checks every registered closed-form derivative (jaxent's own, and those a
  ``--module`` of yours registers) against autodiff of its plain definition,
  Richardson finite differences, the Taylor-remainder slope, the function's
  own derivative, second order and low precision; exits 0 if all pass, 1 if
  any fails, 2 on bad usage::

    python -m jaxent verify
    python -m jaxent verify --only softmax_cross_entropy --only 'kl_*'
    python -m jaxent verify --module examples/my_derivation.py --markdown report.md
    python -m jaxent verify --json report.json --mutate

Other commands register themselves here (see ``_SUBCOMMANDS``): a module
with ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that add a subcommand: ``add_parser(subparsers)`` and ``run(args) -> int``.
#: A missing module is skipped, so a command can be added without touching this file twice.
_SUBCOMMANDS = ("jaxent._verify_cli", "jaxent._evaluate_cli")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="python -m jaxent",
        description="jaxent's command line.",
        epilog="Run 'python -m jaxent COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name in _SUBCOMMANDS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        before = set(sub.choices)
        mod.add_parser(sub)
        for cmd in set(sub.choices) - before:
            modules[cmd] = mod
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jaxent``; returns the exit status (0 pass, 1 fail, 2 usage)."""
    parser, modules = _parser()
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args))  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
