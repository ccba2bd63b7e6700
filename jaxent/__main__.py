"""Command line: ``python -m jaxent verify``.

``verify`` checks every registered closed-form derivative (see
:mod:`jaxent.derivations`) against autodiff of its plain definition, central
finite differences and jaxent's own derivative, in float64, prints a table and
exits with status 1 if any fails::

  python -m jaxent verify                    # all derivations
  python -m jaxent verify --only softmax_cross_entropy --only 'kl_*'
  python -m jaxent verify --json             # machine-readable
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from jaxent import derivations
from jaxent.verify import VerifyResult, verify_all


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _table(results: Sequence[VerifyResult], verbose: bool) -> str:
    header = ("name", "closed form", "vs autodiff", "vs FD", "vs jaxent", "result")
    rows = [
        (
            r.name,
            r.formula,
            _fmt(r.max_abs_error_autodiff),
            _fmt(r.max_abs_error_fd),
            _fmt(r.max_abs_error_library),
            "PASS" if r.passed else "FAIL",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    widths[1] = min(widths[1], 60)

    def line(row: Sequence[str]) -> str:
        cells = [
            (c if len(c) <= w else c[: w - 3] + "...").ljust(w)
            for c, w in zip(row, widths, strict=True)
        ]
        return "  ".join(cells).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    for r, row in zip(results, rows, strict=True):
        out.append(line(row))
        if verbose or not r.passed:
            out.extend(
                f"    [{'ok' if c.passed else 'FAIL'}] {c.label}: autodiff"
                f" {_fmt(c.abs_error_autodiff)}, FD {_fmt(c.abs_error_fd)}, jaxent"
                f" {_fmt(c.abs_error_library)}" + (f" ({c.message})" if c.message else "")
                for c in r.details
            )
    return "\n".join(out)


def _cmd_verify(args: argparse.Namespace) -> int:
    selected = derivations.select(args.only)
    if not selected:
        names = ", ".join(derivations.REGISTRY)
        print(f"no derivation matches {args.only}; registered: {names}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = verify_all(args.only, num_random=args.num_random, seed=args.seed)
    elapsed = time.perf_counter() - start
    failed = [r.name for r in results if not r.passed]
    if args.json:
        payload = {
            "passed": not failed,
            "num_derivations": len(results),
            "failed": failed,
            "seconds": round(elapsed, 2),
            "results": [r.to_dict() for r in results],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(_table(results, args.verbose))
        print(
            f"\n{len(results) - len(failed)}/{len(results)} derivations passed"
            f" (float64; max abs errors; {elapsed:.1f} s)."
        )
        if failed:
            print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jaxent``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jaxent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "verify",
        help="check every closed-form derivative against autodiff and finite differences",
        description="Checks each registered closed-form derivative in float64 against"
        " autodiff of its plain definition, central finite differences and jaxent's own"
        " derivative (jacrev and jacfwd), on random and edge-case inputs.",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="a derivation name or glob (repeatable); NAME also matches NAME[variant]",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--num-random", type=int, default=2, help="random inputs per derivation")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("-v", "--verbose", action="store_true", help="show every input's errors")
    p.add_argument("--list", action="store_true", help="list the derivations and exit")
    args = parser.parse_args(argv)
    if args.list:
        for d in derivations.select(args.only):
            print(f"{d.name}: {d.formula}")
        return 0
    return _cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main())
