"""Benchmark registry and timing utilities (see benchmarks/README.md).

A *case* builds, for a given size (``quick`` or full), a set of named
*implementations* of the same computation; the runner times them side by side
in one process (compiled, warm, interleaved repeats, median) and reports each
one's time and the ratio of the reference implementation (``jaxent``) to it.

Adding a case, in a new ``benchmarks/cases_<topic>.py``::

    from benchmarks._harness import Case, Impl, register

    def _build(quick: bool) -> dict[str, Impl]:
        x = ...
        return {"jaxent": Impl(jax.jit(f), (x,)), "optax": Impl(jax.jit(g), (x,))}

    register(Case("topic/what/shape", _build, description="...", targets={"optax": 1.05}))
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax

REFERENCE = "jaxent"


@dataclass(frozen=True)
class Impl:
    """One implementation of a case: ``fn(*args)`` is what gets timed.

    Attributes:
      fn: a callable; a ``jax.jit`` function is compiled once before timing
        (and its compiled memory analysed when the case asks for memory).
      args: the positional arguments, built once.
      framework: ``"jax"``, ``"torch"`` or anything else (informational).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    framework: str = "jax"


@dataclass(frozen=True)
class Case:
    """A registered benchmark.

    Attributes:
      name: unique, ``family/mode/shape/dtype`` style; ``--only`` matches substrings.
      build: ``build(quick) -> {impl name: Impl}``; ``quick`` asks for tiny shapes
        (a smoke test of a few seconds in total). May return ``{}`` for a
        metrics-only case.
      description: one line for the table and the JSON.
      reference: the implementation the ratios are taken of (``t_ref / t_other``).
      repeats: timed repeats per implementation (full size); quick uses 2.
      memory: also report XLA's compiled memory analysis of jitted implementations
        and the peak resident-set growth during one call.
      targets: ``{impl: max ratio}``: the reference must take at most that
        many times the implementation's time (reported, never asserted).
      metrics: optional ``metrics(result, quick) -> dict`` run after timing,
        for derived numbers (bandwidth fractions, memory curves...).
      memory_targets: ``{impl: max ratio}`` of compiled peak memory (reference / impl).
      default: part of a plain run; ``False`` cases (long sweeps) run only when
        named by ``--only`` or with ``--all``.
    """

    name: str
    build: Callable[[bool], dict[str, Impl]]
    description: str = ""
    reference: str = REFERENCE
    repeats: int = 5
    memory: bool = False
    targets: dict[str, float] = field(default_factory=dict)
    memory_targets: dict[str, float] = field(default_factory=dict)
    metrics: Callable[[dict[str, Any], bool], dict[str, Any]] | None = None
    default: bool = True


REGISTRY: dict[str, Case] = {}


def register(case: Case) -> Case:
    """Adds a case to the registry (names must be unique)."""
    if case.name in REGISTRY:
        raise ValueError(f"benchmark case {case.name!r} is registered twice")
    REGISTRY[case.name] = case
    return case


# --------------------------------------------------------------------------- utilities


def block(out: Any) -> Any:
    """Waits for every JAX array in ``out`` (torch CPU results are already there)."""
    for leaf in jax.tree_util.tree_leaves(out):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return out


def rss_bytes() -> int:
    """The process's current resident set size (Linux ``/proc/self/statm``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        return 0


def release_memory() -> None:
    """Returns freed heap memory to the OS (glibc ``malloc_trim``), so that RSS
    growth is measured from a low baseline rather than from earlier cases' pools."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def peak_rss_growth(thunk: Callable[[], Any], interval_s: float = 0.002) -> tuple[Any, int]:
    """Runs ``thunk`` while sampling RSS; returns (its result, peak growth in bytes)."""
    release_memory()
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = block(thunk())
    finally:
        done.set()
        t.join()
    peak[0] = max(peak[0], rss_bytes())
    return out, peak[0] - base


def compiled_memory(fn: Any, args: tuple[Any, ...]) -> tuple[Any, dict[str, int] | None]:
    """Compiles a ``jax.jit`` function; returns (executable, memory analysis or None).

    ``peak_bytes`` = arguments + outputs + temporaries - aliased: what XLA holds
    at once for one call. ``temp_bytes`` is the working memory alone.
    """
    if not hasattr(fn, "lower"):
        return fn, None
    compiled = fn.lower(*args).compile()
    ma = compiled.memory_analysis()
    if ma is None:
        return compiled, None
    mem = {
        "argument_bytes": int(ma.argument_size_in_bytes),
        "output_bytes": int(ma.output_size_in_bytes),
        "temp_bytes": int(ma.temp_size_in_bytes),
        "alias_bytes": int(ma.alias_size_in_bytes),
    }
    mem["peak_bytes"] = (
        mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"] - mem["alias_bytes"]
    )
    return compiled, mem


def time_interleaved(
    impls: dict[str, Impl], repeats: int, memory: bool = False
) -> dict[str, dict[str, Any]]:
    """Times implementations side by side: compile, one warm call, then rounds.

    Each round calls every implementation once, in turn, so slow drifts of the
    machine (thermal, other processes) affect all of them alike. Reports the
    median and minimum over ``repeats`` rounds.
    """
    runners: dict[str, Callable[[], Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, impl in impls.items():
        t0 = time.perf_counter()
        fn, mem = (
            compiled_memory(impl.fn, impl.args) if impl.framework == "jax" else (impl.fn, None)
        )
        compile_s = time.perf_counter() - t0
        args = impl.args
        runners[name] = lambda f=fn, a=args: f(*a)
        entry: dict[str, Any] = {"framework": impl.framework, "compile_s": compile_s}
        if memory:
            # The warm-up call, with its peak RSS growth sampled.
            _, growth = peak_rss_growth(runners[name])
            entry["memory"] = dict(mem or {}, rss_growth_bytes=growth)
        else:
            block(runners[name]())
        results[name] = entry
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            block(run())
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        results[name].update(
            median_s=statistics.median(ts), min_s=min(ts), times_s=[round(t, 6) for t in ts]
        )
    return results


def run_case(case: Case, quick: bool) -> dict[str, Any]:
    """Builds and times one case; returns its JSON-ready result."""
    impls = case.build(quick)
    repeats = 2 if quick else case.repeats
    timed = time_interleaved(impls, repeats, memory=case.memory) if impls else {}
    out: dict[str, Any] = {
        "description": case.description,
        "reference": case.reference,
        "repeats": repeats,
        "impls": timed,
        "ratios": {},
        "targets": {},
    }
    ref = timed.get(case.reference)
    if ref is not None:
        for name, r in timed.items():
            if name != case.reference:
                out["ratios"][name] = ref["median_s"] / r["median_s"]
        for name, limit in case.targets.items():
            if name in out["ratios"]:
                value = out["ratios"][name]
                out["targets"][f"time vs {name}"] = {
                    "max": limit,
                    "value": value,
                    "met": value <= limit,
                }
        for name, limit in case.memory_targets.items():
            a, b = ref.get("memory") or {}, (timed.get(name) or {}).get("memory") or {}
            if "peak_bytes" in a and "peak_bytes" in b:
                value = a["peak_bytes"] / b["peak_bytes"]
                out["targets"][f"peak memory vs {name}"] = {
                    "max": limit,
                    "value": value,
                    "met": value <= limit,
                }
    if case.metrics is not None:
        out["metrics"] = case.metrics(out, quick)
    return out
