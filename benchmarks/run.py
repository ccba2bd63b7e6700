"""Benchmark runner: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Discovers every ``benchmarks/cases_*.py`` module (each registers its cases
with :func:`benchmarks._harness.register`), runs the selected cases with a
progress bar, prints a table and writes JSON to ``benchmarks/results/``.

Options: ``--quick`` (tiny shapes, a smoke test), ``--only NAME`` (substring
of case names, repeatable; also selects opt-in cases), ``--all`` (include the
opt-in cases), ``--memory-curve`` (only the linear cross-entropy memory-vs-V
curve), ``--list``, ``--out PATH``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from benchmarks import _harness  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def discover() -> list[str]:
    """Imports every ``benchmarks.cases_*`` module; returns their names."""
    pkg_dir = Path(__file__).resolve().parent
    names = []
    for info in sorted(pkgutil.iter_modules([str(pkg_dir)]), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            importlib.import_module(f"benchmarks.{info.name}")
            names.append(info.name)
    return names


def _progress(items: list[Any], **kw: Any):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dev dependency
        return items
    return tqdm(items, **kw)


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GiB"


def format_table(results: dict[str, Any]) -> str:
    """The human-readable report of a run."""
    lines = []
    header = f"{'case':<44} {'impl':<12} {'median ms':>10} {'ref/impl':>9}  memory / notes"
    lines.append(header)
    lines.append("-" * len(header))
    for name, res in results["cases"].items():
        if "error" in res:
            lines.append(f"{name:<44} ERROR: {res['error'].splitlines()[-1]}")
            continue
        first = True
        for impl, r in res["impls"].items():
            ratio = res["ratios"].get(impl)
            ratio_s = "ref" if impl == res["reference"] else (f"{ratio:.3f}" if ratio else "")
            notes = ""
            mem = r.get("memory")
            if mem:
                parts = []
                if "peak_bytes" in mem:
                    parts.append(
                        f"peak {_fmt_bytes(mem['peak_bytes'])} (temp {_fmt_bytes(mem['temp_bytes'])})"
                    )
                parts.append(f"rss +{_fmt_bytes(mem['rss_growth_bytes'])}")
                notes = ", ".join(parts)
            lines.append(
                f"{name if first else '':<44} {impl:<12} {r['median_s'] * 1e3:>10.2f} {ratio_s:>9}  {notes}"
            )
            first = False
        for tname, t in res.get("targets", {}).items():
            mark = "MET" if t["met"] else "MISSED"
            lines.append(f"{'':<44}   target {tname}: {t['value']:.3f} <= {t['max']} {mark}")
        for k, v in (res.get("metrics") or {}).items():
            if isinstance(v, float):
                v = f"{v:.3f}"
            elif isinstance(v, dict):
                v = json.dumps(v)
            lines.append(f"{'' if not first else name:<44}   {k}: {v}")
            first = False
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run cases containing NAME"
    )
    parser.add_argument(
        "--memory-curve",
        action="store_true",
        help="only the memory-vs-V curve of linear cross-entropy",
    )
    parser.add_argument(
        "--all", action="store_true", help="also the opt-in cases (e.g. the block-size sweep)"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)

    modules = discover()
    only = list(args.only) + (["lce_memory_curve"] if args.memory_curve else [])
    cases = [
        c
        for n, c in _harness.REGISTRY.items()
        if (any(o in n for o in only) if only else (c.default or args.all))
    ]
    if args.list:
        for c in cases:
            print(f"{c.name:<48} {c.description}{'' if c.default else '  [opt-in]'}")
        return 0
    if not cases:
        print(f"no case matches {only}; see --list", file=sys.stderr)
        return 2

    meta = {
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "modules": modules,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
    except ImportError:
        meta["torch"] = None
    results: dict[str, Any] = {"meta": meta, "cases": {}}
    t_start = time.perf_counter()
    bar = _progress(cases, desc="benchmarks", unit="case")
    for case in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(case.name)
        try:
            results["cases"][case.name] = _harness.run_case(case, args.quick)
        except Exception:  # noqa: BLE001 - one failing case must not lose the others
            results["cases"][case.name] = {"error": traceback.format_exc()}
        jax.clear_caches()
    meta["total_s"] = time.perf_counter() - t_start
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    out = args.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS_DIR / f"{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    print(format_table(results))
    print(f"\n{len(cases)} cases in {meta['total_s']:.1f} s; JSON written to {out}")
    print(f"load average at start {meta['loadavg_start']}, at end {meta['loadavg_end']}")
    return 1 if any("error" in r for r in results["cases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
