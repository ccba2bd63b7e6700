"""Benchmark runner: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Discovers every ``benchmarks/cases_*.py`` module (each registers its cases
with :func:`benchmarks._harness.register`), runs the selected cases with a
progress bar, prints a table and writes JSON to ``benchmarks/results/``.

Options: ``--quick`` (tiny shapes, a smoke test), ``--only NAME`` (substring
of case names, repeatable; also selects opt-in cases), ``--all`` (include the
opt-in cases), ``--memory-curve`` (only the linear cross-entropy memory-vs-V
curve), ``--no-calibration``, ``--list``, ``--out PATH``.

The noise-calibration cases of the groups the selected cases need run first;
their band decides which targets are ties. ``python -m benchmarks.report
RESULTS.json`` turns the JSON into the README's markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess
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


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def format_table(results: dict[str, Any]) -> str:
    """The human-readable report of a run (the README table: ``python -m benchmarks.report``)."""
    lines = []
    header = (
        f"{'case':<44} {'impl':<12} {'median':>10} {'ref/impl [min-max]':>22} "
        f"{'GB/s':>6} {'temp':>10} {'NxV w':>5}  notes"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for name, res in results["cases"].items():
        if "error" in res:
            lines.append(f"{name:<44} ERROR: {res['error'].strip().splitlines()[-1]}")
            continue
        first = True
        for impl, r in res["impls"].items():
            if impl == res["reference"]:
                ratio_s = "ref"
            elif impl in res.get("ratio_stats", {}):
                st = res["ratio_stats"][impl]
                ratio_s = f"{st['median']:.3f} [{st['min']:.2f}-{st['max']:.2f}]"
            else:
                ratio_s = ""
            mem = r.get("memory") or {}
            temp = _fmt_bytes(mem["temp_bytes"]) if "temp_bytes" in mem else ""
            nv = str(r["nv_writes"]) if "nv_writes" in r else ""
            gbps = f"{r['gbps']:.1f}" if r.get("gbps") else ""
            notes = []
            if "rss_growth_bytes" in mem:
                notes.append(f"rss +{_fmt_bytes(mem['rss_growth_bytes'])}")
            if "peak_bytes" in mem:
                notes.append(f"peak {_fmt_bytes(mem['peak_bytes'])}")
            if r.get("number", 1) > 1:
                notes.append(f"x{r['number']}/sample")
            lines.append(
                f"{name if first else '':<44} {impl:<12} {_fmt_time(r['median_s']):>10} "
                f"{ratio_s:>22} {gbps:>6} {temp:>10} {nv:>5}  {', '.join(notes)}"
            )
            first = False
        for peer, st in res.get("ratio_stats", {}).items():
            if "|" in peer:
                lines.append(
                    f"{'':<44}   vs faster of {peer}: {st['median']:.3f} "
                    f"[{st['min']:.2f}-{st['max']:.2f}]"
                )
        for tname, t in res.get("targets", {}).items():
            band = t.get("band")
            band_s = f", noise band {band[0]:.2f}-{band[1]:.2f}" if band else ""
            lines.append(
                f"{'':<44}   target {tname}: {t['value']:.3f} <= {t['max']}: "
                f"{t['verdict'].upper()}{band_s}"
            )
        for k, v in (res.get("metrics") or {}).items():
            if isinstance(v, float):
                v = f"{v:.3f}"
            elif isinstance(v, dict | list):
                v = json.dumps(v)
            lines.append(f"{'' if not first else name:<44}   {k}: {v}")
            first = False
    return "\n".join(lines)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    out: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        out["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out["dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def machine_meta(quick: bool, modules: list[str]) -> dict[str, Any]:
    """Who, where and what: the header of a run's JSON."""
    now = datetime.datetime.now(datetime.UTC)
    meta: dict[str, Any] = {
        "timestamp": now.isoformat(timespec="seconds"),
        "quick": quick,
        "modules": modules,
        "argv": sys.argv[1:],
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "optax": _version("optax"),
        "numpy": _version("numpy"),
        "torch": None,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_total_bytes": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "pairs_min": _harness.MIN_PAIRS,
        "order": "alternating rounds: a, b, ..., b, a, ...",
        **_git(),
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        meta["torch"] = torch.__version__
        meta["torch_threads"] = torch.get_num_threads()
    return meta


def select(only: list[str], all_: bool, calibrate: bool) -> list[_harness.Case]:
    """The cases to run, noise calibrations of the needed groups first."""
    chosen = [
        c
        for n, c in _harness.REGISTRY.items()
        if (any(o in n for o in only) if only else (c.default or all_))
    ]
    calib = [c for c in chosen if c.calibrates]
    rest = [c for c in chosen if not c.calibrates]
    if calibrate:
        groups = {c.noise for c in rest} | {"jit"} if rest else set()
        have = {c.calibrates for c in calib}
        for c in _harness.REGISTRY.values():
            if c.calibrates in groups - have:
                calib.append(c)
                have.add(c.calibrates)
    return calib + rest


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
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="skip the noise-calibration cases (targets are then judged on the median alone)",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)

    modules = discover()
    only = list(args.only) + (["lce_memory_curve"] if args.memory_curve else [])
    cases = select(only, args.all, not args.no_calibration)
    if args.list:
        for c in cases:
            print(f"{c.name:<48} {c.description}{'' if c.default else '  [opt-in]'}")
        return 0
    if not cases:
        print(f"no case matches {only}; see --list", file=sys.stderr)
        return 2

    meta = machine_meta(args.quick, modules)
    results: dict[str, Any] = {"meta": meta, "cases": {}}
    out = args.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS_DIR / f"{'quick' if args.quick else 'full'}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    bands: dict[str, tuple[float, float]] = {}
    t_start = time.perf_counter()
    bar = _progress(cases, desc="benchmarks", unit="case")
    for case in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(case.name)
        try:
            res = _harness.run_case(case, args.quick, bands)
            if case.calibrates:
                band = _harness.noise_band(res)
                if band is not None:
                    bands[case.calibrates] = band
            results["cases"][case.name] = res
        except Exception:  # noqa: BLE001 - one failing case must not lose the others
            results["cases"][case.name] = {"error": traceback.format_exc()}
        jax.clear_caches()
        meta["noise_bands"] = {k: list(v) for k, v in bands.items()}
        meta["total_s"] = time.perf_counter() - t_start
        out.write_text(json.dumps(results, indent=1, default=float))  # after every case
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    out.write_text(json.dumps(results, indent=1, default=float))
    print(format_table(results))
    print(f"\n{len(cases)} cases in {meta['total_s']:.1f} s; JSON written to {out}")
    print(f"load average at start {meta['loadavg_start']}, at end {meta['loadavg_end']}")
    print(f"README table: python -m benchmarks.report {out}")
    return 1 if any("error" in r for r in results["cases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
