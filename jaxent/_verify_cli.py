"""``python -m jaxent verify``: check closed-form derivatives, jaxent's and yours.

Exit status: 0 every derivation (and, with ``--mutate``, every mutant) passed /
was caught; 1 a failure or a surviving mutant; 2 bad usage (unknown option or
name, a module that cannot be imported or registers nothing).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxent import derivations
from jaxent._verify import LOW_PRECISION_DTYPES, VerifyResult, enable_cache, verify

#: Version of the ``--json`` report's layout (see the README, "JSON report").
JSON_SCHEMA = "jaxent.verify/2"

_DESCRIPTION = """\
Checks closed-form derivatives in float64. For each registered derivation
(jaxent's own, or those your --module registers), each input and each
differentiated argument separately, the claim is compared with:
  autodiff   jax.jacrev of the plain definition (error also in ULPs of float64)
  FD         central differences with Richardson extrapolation, over a step sweep
  Taylor     |f(x + h v) - f(x) - h <g, v>| must fall as h^2: slope >= 1.9
  own rule   jax.jacrev / jax.jacfwd of the function (its custom rule)
  symbolic   sympy's derivative of the derivation's expression, if it has one
plus, for custom_jvp rules, second order (Hessian symmetry, forward-over-reverse
= reverse-over-reverse, HVP vs differences of the gradient), jit = eager,
vmap = loop, output dtype = input dtype, and the float32 / bfloat16 / float16
gradient error in ULPs (reported; failed only against a stated budget).

Exit status: 0 all passed, 1 a failure (or a surviving mutant), 2 bad usage.
"""

_EPILOG = """\
examples:
  python -m jaxent verify
  python -m jaxent verify --only softmax_cross_entropy --only 'kl_*'
  python -m jaxent verify --module examples/my_derivation.py --markdown report.md
  python -m jaxent verify --json report.json -v
  python -m jaxent verify --mutate --only 'softmax*'
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``verify`` subcommand to ``python -m jaxent``."""
    p = subparsers.add_parser(
        "verify",
        help="check closed-form derivatives (jaxent's or your module's)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", action="append", metavar="NAME",
                   help="a derivation name or glob (repeatable); NAME also matches NAME[variant]")  # fmt: skip
    p.add_argument("--module", action="append", metavar="NAME_OR_FILE",
                   help="import a module (dotted name or .py file) that registers derivations;"
                   " only what it registers is checked unless --only says otherwise"
                   " (repeatable)")  # fmt: skip
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the full report as JSON to FILE ('-' or no FILE: stdout)")  # fmt: skip
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown report to FILE")
    p.add_argument("--num-random", type=_nonneg_int, default=2, metavar="N",
                   help="random inputs per derivation (default 2)")  # fmt: skip
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the random inputs")
    p.add_argument("--fd-step", type=_pos_float, default=None, metavar="H",
                   help="smallest relative finite-difference step (default 1e-6)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every input's checks, and the Taylor tables of h and remainders")  # fmt: skip
    p.add_argument("--list", action="store_true", help="list the derivations and exit")
    p.add_argument("--mutate", action="store_true",
                   help="mutation score: perturb every closed form and report the share of"
                   " mutants caught; exit 1 if any survives")  # fmt: skip
    p.add_argument("--check-grads-baseline", action="store_true",
                   help="with --mutate: also run jax.test_util.check_grads on each mutant")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _pos_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {s!r}") from None
    if not (math.isfinite(v) and 0 < v < 1e-2):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 0.01), got {s!r}")
    return v


def load_module(spec: str) -> list[str]:
    """Imports ``spec`` (a dotted module name or a ``.py`` path); returns the names it registered.

    A name counts as registered by the module if it is new in the registry or
    its entry was replaced.
    """
    before = dict(derivations.REGISTRY)
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--module {spec}: no such file")
        mod_name = path.stem.replace("-", "_")
        if not mod_name.isidentifier() or mod_name in sys.modules:
            mod_name = "_jaxent_user_" + mod_name
        s = importlib.util.spec_from_file_location(mod_name, path)
        if s is None or s.loader is None:
            raise ImportError(f"--module {spec}: cannot import this file")
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        s.loader.exec_module(module)
    else:
        importlib.import_module(spec)
    return [n for n, d in derivations.REGISTRY.items() if before.get(n) is not d]


def _select(args: argparse.Namespace) -> tuple[list[derivations.Derivation], str | None]:
    user: list[str] = []
    for m in args.module or ():
        try:
            names = load_module(m)
        except Exception as e:  # noqa: BLE001 - reported as a usage error (exit 2)
            return [], f"cannot import --module {m}: {type(e).__name__}: {e}"
        if not names:
            return [], f"--module {m} registered no derivation (call jaxent.derivations.register)"
        user += names
    if args.only:
        selected = derivations.select(args.only)
        if not selected:
            return (
                [],
                f"no derivation matches {args.only}; registered: {', '.join(derivations.REGISTRY)}",
            )
        return selected, None
    if args.module:
        return [derivations.REGISTRY[n] for n in dict.fromkeys(user)], None
    return list(derivations.REGISTRY.values()), None


def _progress(items: list[Any], enabled: bool, desc: str) -> Any:
    if not enabled or not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        return items
    return tqdm(items, desc=desc, file=sys.stderr, leave=False, unit="derivation")


def run(args: argparse.Namespace) -> int:
    """Runs ``python -m jaxent verify``; returns the exit status."""
    selected, err = _select(args)
    if err:
        print(err, file=sys.stderr)
        return 2
    if args.list:
        for d in selected:
            print(f"{d.name}: {d.formula}")
        return 0
    enable_cache()
    if args.mutate:
        return _run_mutate(args, selected)
    kw: dict[str, Any] = {"num_random": args.num_random, "seed": args.seed}
    if args.fd_step is not None:
        kw["fd_step"] = args.fd_step
    start = time.perf_counter()
    results: list[VerifyResult] = []
    bar = _progress(selected, not args.no_progress, "verify")
    for d in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(d.name)
        results.append(verify(d, **kw))
    elapsed = time.perf_counter() - start
    failed = [r.name for r in results if not r.passed]
    payload = {
        "schema": JSON_SCHEMA,
        "passed": not failed,
        "num_derivations": len(results),
        "failed": failed,
        "seconds": round(elapsed, 2),
        "settings": {
            "num_random": args.num_random,
            "seed": args.seed,
            "fd_step": kw.get("fd_step", 1e-6),
        },  # fmt: skip
        "results": [r.to_dict() for r in results],
    }
    if args.json == "-":
        print(json.dumps(payload, indent=2))
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(table(results, args.verbose))
        print(
            f"\n{len(results) - len(failed)}/{len(results)} derivations passed"
            f" (float64; max errors over inputs and arguments; {elapsed:.1f} s)."
        )
        if failed:
            print("FAILED: " + ", ".join(failed))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, elapsed))
    return 1 if failed else 0


# --------------------------------------------------------------------------- formatting


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _slope(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _second(r: VerifyResult) -> float | None:
    vals = [k.error for c in r.details for k in c.checks
            if k.reference in ("hessian_symmetry", "fwd_over_rev", "hvp_fd", "hessian_plain")
            and k.error is not None]  # fmt: skip
    return max(vals) if vals else None


def _ulps(r: VerifyResult, dtype: str) -> float | None:
    vals = [lp.ulps for lp in r.low_precision if lp.dtype == dtype and lp.ulps is not None]
    return max(vals) if vals else None


def _row(r: VerifyResult) -> dict[str, str]:
    ad = r.max_rel_error_autodiff
    return {
        "name": r.name,
        "function": r.function,
        "closed form": r.formula,
        "vs autodiff (ulps)": "-" if ad is None else f"{ad / 2.220446049250313e-16:.1f}",
        "vs FD": _fmt(r.max_rel_error_fd),
        "Taylor slope": _slope(r.min_taylor_slope),
        "vs own rule": _fmt(r.max_rel_error_library),
        "2nd order": _fmt(_second(r)),
        **{f"{dt} ulps": _fmt(_ulps(r, dt)) for dt in LOW_PRECISION_DTYPES},
        "result": "PASS" if r.passed else "FAIL",
    }


_TERMINAL = ("name", "closed form", "vs autodiff (ulps)", "vs FD", "Taylor slope",
             "vs own rule", "2nd order", "result")  # fmt: skip


def table(results: Sequence[VerifyResult], verbose: bool = False) -> str:
    """The terminal table: relative errors (autodiff in ULPs of float64)."""
    rows = [_row(r) for r in results]
    widths = [max(len(c) for c in (h, *(row[h] for row in rows))) for h in _TERMINAL]
    widths[1] = min(widths[1], 40)

    def line(cells: Sequence[str]) -> str:
        out = [(c if len(c) <= w else c[: w - 3] + "...").ljust(w)
               for c, w in zip(cells, widths, strict=True)]  # fmt: skip
        return "  ".join(out).rstrip()

    out = [line(_TERMINAL), line(["-" * w for w in widths])]
    for r, row in zip(results, rows, strict=True):
        out.append(line([row[h] for h in _TERMINAL]))
        if verbose:
            out.append(f"    function: {r.function}")
        if verbose or not r.passed:
            for c in r.details:
                out.append(
                    f"    [{'ok' if c.passed else 'FAIL'}] {c.label}: autodiff"
                    f" {_fmt(c.abs_error_autodiff)}, FD {_fmt(c.abs_error_fd)}, own rule"
                    f" {_fmt(c.abs_error_library)}, Taylor {_slope(c.taylor_slope)}"
                    + (f" ({c.message})" if c.message else "")
                )
                for k in c.checks:
                    if verbose or not k.passed:
                        out.append(
                            f"        {'ok  ' if k.passed else 'FAIL'} {k.argument:>8} {k.reference:<16}"
                            f" {_slope(k.error) if k.reference == 'taylor' else _fmt(k.error)}"
                            f" (tol {k.tolerance:g}) {k.note}".rstrip()
                        )
                        if verbose and k.table:
                            out.append(
                                "            h:         "
                                + " ".join(f"{h:8.1e}" for h, _ in k.table)
                            )
                            out.append(
                                "            remainder: "
                                + " ".join(f"{x:8.1e}" for _, x in k.table)
                            )
            for k in r.checks:
                if verbose or not k.passed:
                    out.append(f"    [{'ok' if k.passed else 'FAIL'}] {k.reference} {k.argument}"
                               + (f": {k.note}" if k.note else ""))  # fmt: skip
            if verbose and r.low_precision:
                out.append("    low precision (ulps of the dtype): " + ", ".join(
                    f"{lp.dtype} {lp.argument} {_fmt(lp.ulps)}" for lp in r.low_precision))  # fmt: skip
    return "\n".join(out)


_MD_COLUMNS = ("name", "function", "vs autodiff (ulps)", "vs FD", "Taylor slope", "vs own rule",
               "2nd order", "float32 ulps", "bfloat16 ulps", "float16 ulps", "result")  # fmt: skip


def markdown(results: Sequence[VerifyResult], seconds: float | None = None) -> str:
    """A Markdown report: a summary table and a per-argument table."""
    n_pass = sum(r.passed for r in results)
    lines = [
        "# Gradient verification report",
        "",
        f"{n_pass}/{len(results)} derivations passed (float64"
        + (f", {seconds:.1f} s" if seconds is not None else "")
        + ").",
        "",
        "Relative errors are max |claim - reference| / max |reference| over inputs and"
        " arguments; *vs autodiff* is in ULPs of float64; *Taylor slope* is the smallest"
        " convergence order of the Taylor remainder (pass >= 1.9); the low-precision"
        " columns are the function's own gradient in that dtype against the float64"
        " closed form, in ULPs of the dtype.",
        "",
        "| " + " | ".join(_MD_COLUMNS) + " |",
        "|" + "---|" * len(_MD_COLUMNS),
    ]
    for r in results:
        row = _row(r)
        row["name"] = f"`{r.name}`"
        row["function"] = f"`{r.function}`"
        lines.append("| " + " | ".join(row[c] for c in _MD_COLUMNS) + " |")
    lines += [
        "",
        "## Per argument and reference (worst input)",
        "",
        "| derivation | argument | reference | error | tolerance | pass |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        worst: dict[tuple[str, str], Any] = {}
        for c in r.details:
            for k in c.checks:
                key = (k.argument, k.reference)
                cur = worst.get(key)
                if cur is None or _worse(k, cur):
                    worst[key] = k
        for (arg, ref), k in worst.items():
            err = _slope(k.error) if ref == "taylor" else _fmt(k.error)
            tol = f">= {k.tolerance}" if ref == "taylor" else f"{k.tolerance:g}"
            lines.append(
                f"| `{r.name}` | `{arg}` | {ref} | {err} | {tol} | {'yes' if k.passed else '**no**'} |"
            )
    for r in results:
        fails = r.failures()
        if fails:
            lines += ["", f"### `{r.name}`: failures", ""] + [f"- {f}" for f in fails]
    return "\n".join(lines) + "\n"


def _worse(a: Any, b: Any) -> bool:
    if a.passed != b.passed:
        return not a.passed
    if a.reference == "taylor":
        return (a.error if a.error is not None else 9.0) < (b.error if b.error is not None else 9.0)
    return (a.error or 0.0) > (b.error or 0.0)


# --------------------------------------------------------------------------- mutation


def _run_mutate(args: argparse.Namespace, selected: list[derivations.Derivation]) -> int:
    from jaxent import _mutate  # noqa: PLC0415

    start = time.perf_counter()
    results = []
    baseline: dict[str, list[bool]] = {}
    for d in _progress(selected, not args.no_progress, "mutate"):
        results.append(_mutate.mutate(d, num_random=args.num_random, seed=args.seed))
        if args.check_grads_baseline:
            baseline[d.name] = _mutate.check_grads_baseline(
                d, num_random=args.num_random, seed=args.seed
            )
    elapsed = time.perf_counter() - start
    total = sum(len(r.counted) for r in results if r.baseline_passed)
    caught = sum(sum(r.counted) for r in results if r.baseline_passed)
    n_equiv = sum(sum(r.equivalent) for r in results if r.baseline_passed)
    broken = [r.name for r in results if not r.baseline_passed]
    by_kind: dict[str, list[int]] = {}
    for r in results:
        if r.baseline_passed:
            for m, c, e in zip(r.mutants, r.caught, r.equivalent, strict=True):
                if e:
                    continue
                by_kind.setdefault(m.kind, [0, 0])
                by_kind[m.kind][0] += int(c)
                by_kind[m.kind][1] += 1
    lines = [f"{'name':<50} mutants  equivalent  caught" + ("  check_grads" if baseline else "")]
    for r in results:
        extra = f"  {sum(baseline[r.name]):>11}" if baseline else ""
        status = (f"{sum(r.equivalent):>10}  {sum(r.counted):>6}" if r.baseline_passed
                  else "  (derivation fails unmutated)")  # fmt: skip
        lines.append(f"{r.name:<50} {len(r.mutants):>7}  {status}{extra}")
        for m in r.survivors if r.baseline_passed else ():
            lines.append(f"    SURVIVED {m.description}")
    share = 100.0 * caught / total if total else 100.0
    kinds = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in by_kind.items())
    lines.append(f"\nmutation score: {caught}/{total} mutants caught ({share:.1f} %; {kinds};"
                 f" {n_equiv} equivalent mutants left out; {elapsed:.1f} s).")  # fmt: skip
    if baseline:
        cg = sum(sum(v) for n, v in baseline.items())
        cg_total = sum(len(v) for v in baseline.values())
        scale = [v[0] for v in baseline.values() if v]
        lines.append(f"jax.test_util.check_grads (float64, rev) catches {cg}/{cg_total};"
                     f" of the 1e-6 scale mutants: {sum(scale)}/{len(scale)}.")  # fmt: skip
    if broken:
        lines.append("derivations failing before mutation: " + ", ".join(broken))
    if args.json:
        payload = {
            "schema": JSON_SCHEMA + "-mutation",
            "caught": caught,
            "total": total,
            "seconds": round(elapsed, 2),
            "results": [
                {"name": r.name, "baseline_passed": r.baseline_passed,
                 "mutants": [{"kind": m.kind, "description": m.description, "caught": c,
                              "caught_by": list(b), "equivalent": r.equivalent[i] if r.equivalent else False,
                              **({"check_grads": baseline[r.name][i]} if baseline else {})}
                             for i, (m, c, b) in enumerate(zip(r.mutants, r.caught, r.caught_by, strict=True))]}
                for r in results
            ],
        }  # fmt: skip
        text = json.dumps(payload, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.json != "-":
        print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("# Mutation score\n\n```\n" + "\n".join(lines) + "\n```\n")
    return 0 if caught == total and not broken else 1
