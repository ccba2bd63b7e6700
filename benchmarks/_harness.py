"""Benchmark registry and paired timing (see benchmarks/README.md).

A *case* builds, for a given size (``quick`` or full), a set of named
*implementations* of the same computation; the runner times them side by side
in one process and reports each one's time and the paired ratio of the
reference implementation (``jaxent``) to it.

Timing is *paired*: after compiling and warming every implementation, the
runner makes ``pairs`` rounds; each round calls every implementation once, in
the case's order on even rounds and in reverse order on odd ones (a, b, b, a,
a, b, ...), so a drift of the machine hits both sides of a ratio alike. Each
round gives one ratio ``t_ref / t_impl``; the report is the median ratio over
the rounds and its min-max. A noise-calibration case (one compiled function
timed against itself) measures how far such a ratio strays from 1 on this
machine now; a target whose median ratio lies inside that band around the
limit is a *tie*, not met or missed (:func:`verdict`).

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
import math
import os
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

REFERENCE = "jaxent"
MIN_PAIRS = 9  # a full-size case is never timed with fewer rounds than this
DEFAULT_PAIRS = 10  # even: as many rounds in each order
QUICK_PAIRS = 3
SAMPLE_S = 0.02  # a timed sample repeats a fast call until it lasts about this long
QUICK_SAMPLE_S = 0.002
FLOOR = "floor"  # the name of the implementation a case's `floor=` adds


@dataclass(frozen=True)
class Impl:
    """One implementation of a case: ``fn(*args)`` is what gets timed.

    Attributes:
      fn: a callable; with ``framework="jax"`` a ``jax.jit`` function, which is
        compiled once before timing (its compile time, XLA memory analysis and
        the N×V-sized writes of its optimised HLO are reported).
      args: the positional arguments, built once.
      framework: ``"jax"`` (jitted), ``"eager"`` (an un-jitted JAX call, timed as
        a user calls it), ``"torch"``, or anything else (timed as is).
      nv_elements: the element count above which a buffer counts as N×V-sized;
        default: the largest array argument's.
      setup: called, untimed, before every timed sample (e.g. clearing caches
        and collecting garbage before a compile-time sample).
    """

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    framework: str = "jax"
    nv_elements: int | None = None
    setup: Callable[[], Any] | None = None


@dataclass(frozen=True)
class Case:
    """A registered benchmark.

    Attributes:
      name: unique, ``family/mode/shape/dtype`` style; ``--only`` matches substrings.
      build: ``build(quick) -> {impl name: Impl}``; ``quick`` asks for tiny shapes
        (a smoke test of a few seconds in total). May return ``{}`` for a
        metrics-only case. The dict's order is the order of a round.
      description: one line for the table and the JSON.
      reference: the implementation the ratios are taken of (``t_ref / t_other``).
      repeats: kept for older cases: the number of rounds is
        ``max(repeats, MIN_PAIRS)`` unless ``pairs`` is given.
      memory: also sample the peak resident-set growth during one call.
      targets: ``{peer: max ratio}``: the reference should take at most that
        many times the peer's time. ``"optax|log_softmax"`` names the faster of
        several peers, round by round. Reported as met / missed / tie, never
        asserted.
      metrics: optional ``metrics(result, quick) -> dict`` run after timing,
        for derived numbers (bandwidth, memory curves...).
      memory_targets: ``{impl: max ratio}`` of compiled peak memory (reference / impl).
      default: part of a plain run; ``False`` cases (long sweeps) run only when
        named by ``--only`` or with ``--all``.
      pairs: rounds of the paired timing at full size (``None``: the default, 10).
      floor: ``"read"`` adds an implementation ``floor`` that reads every large
        array argument of the reference once (a row sum); ``"rw"`` one that
        reads them and writes the first in place (donated buffers). The
        reference's ratio to it is reported as its distance from the floor.
      noise: which noise calibration decides this case's ties (``"jit"``,
        ``"eager"``, ``"compile"``; the ``"jit"`` one when that group has none).
      calibrates: set on a noise-calibration case: the group it measures.
      table: ``"loss"`` puts the case, named ``loss/mode/NxV/dtype``, in the
        report's per-mode tables of losses; anything else in its generic table.
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
    pairs: int | None = None
    floor: str | None = None
    noise: str = "jit"
    calibrates: str | None = None
    table: str | None = None


REGISTRY: dict[str, Case] = {}


def register(case: Case) -> Case:
    """Adds a case to the registry (names must be unique)."""
    if case.name in REGISTRY:
        raise ValueError(f"benchmark case {case.name!r} is registered twice")
    if case.floor not in (None, "read", "rw"):
        raise ValueError(f"floor must be None, 'read' or 'rw', got {case.floor!r}")
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


def _memory_stats(compiled: Any) -> dict[str, int] | None:
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    mem = {
        "argument_bytes": int(ma.argument_size_in_bytes),
        "output_bytes": int(ma.output_size_in_bytes),
        "temp_bytes": int(ma.temp_size_in_bytes),
        "alias_bytes": int(ma.alias_size_in_bytes),
    }
    mem["peak_bytes"] = (
        mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"] - mem["alias_bytes"]
    )
    return mem


def compiled_memory(fn: Any, args: tuple[Any, ...]) -> tuple[Any, dict[str, int] | None]:
    """Compiles a ``jax.jit`` function; returns (executable, memory analysis or None).

    ``peak_bytes`` = arguments + outputs + temporaries - aliased: what XLA holds
    at once for one call. ``temp_bytes`` is the working memory alone.
    """
    if not hasattr(fn, "lower"):
        return fn, None
    compiled = fn.lower(*args).compile()
    return compiled, _memory_stats(compiled)


# --------------------------------------------------------------------------- HLO: N×V writes

# Ops that produce no new buffer: views, tuples, constants, parameters.
_NO_WRITE = {
    "parameter",
    "get-tuple-element",
    "tuple",
    "bitcast",
    "constant",
    "after-all",
    "opt-barrier",
    "copy-done",
    "partition-id",
    "replica-id",
}
# Ops whose called computations are executed as separate programs (their
# buffers are real); every other `calls=`/`to_apply=` (fusions, reduce
# regions, sorts) runs inside one op and writes nothing of its own.
_CONTROL = {"while", "call", "conditional", "async-start"}
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_COMP_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLED = re.compile(
    r"(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _split_instruction(line: str) -> tuple[str, str, str] | None:
    """``%name = TYPE opcode(...)`` -> (name, type, opcode)."""
    s = line.strip()
    if s.startswith("ROOT "):
        s = s[5:]
    if "=" not in s or not s.startswith("%"):
        return None
    name, rest = s.split("=", 1)
    rest = rest.strip()
    if rest.startswith("("):  # a tuple type: find its closing parenthesis
        depth, end = 0, len(rest)
        for end, ch in enumerate(rest, start=1):  # noqa: B007 - `end` is used below
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        typ, rest = rest[:end], rest[end:].strip()
    else:
        typ, _, rest = rest.partition(" ")
    opcode = rest.split("(", 1)[0].strip()
    return name.strip().lstrip("%"), typ, opcode


def nv_writes(hlo_text: str, threshold: int) -> list[str]:
    """The buffers of at least ``threshold`` elements an optimised HLO program writes.

    Method: walk the entry computation and the computations it runs as
    separate programs (``while`` bodies and conditions, ``call``,
    ``conditional`` branches), never the insides of fusions or reduction
    regions (they stream through registers and write only the fusion's
    result). Every instruction there other than a view (``parameter``,
    ``bitcast``, ``get-tuple-element``, ``tuple``, ``constant``...) writes its
    result to memory; each array in that result with at least ``threshold``
    elements is listed as ``"opcode dtype[shape]"`` (a multi-output fusion
    writing two N×V arrays is listed twice). The program's own N×V outputs
    (a gradient) are included: they are writes any implementation must make.
    """
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMP_HEAD.match(line)
            if m and "=" not in line.split("{", 1)[0].split("(", 1)[0]:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        comps[current].append(line)
    if entry is None:
        return []
    found: list[str] = []
    seen: set[str] = set()
    stack = [entry]
    while stack:
        comp = stack.pop()
        if comp in seen or comp not in comps:
            continue
        seen.add(comp)
        for line in comps[comp]:
            parts = _split_instruction(line)
            if parts is None:
                continue
            _, typ, opcode = parts
            if opcode in _CONTROL:
                stack.extend(_CALLED.findall(line))
                for group in _BRANCHES.findall(line):
                    stack.extend(b.strip().lstrip("%") for b in group.split(","))
            if opcode in _NO_WRITE or opcode in _CONTROL:
                continue
            for dtype, dims in _SHAPE.findall(typ):
                n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
                if n >= threshold:
                    found.append(f"{opcode} {dtype}[{dims}]")
    return found


def _largest_array(args: tuple[Any, ...]) -> int:
    sizes = [
        int(math.prod(a.shape)) for a in jax.tree_util.tree_leaves(args) if hasattr(a, "shape")
    ]
    return max(sizes, default=0)


def _nbytes(tree: Any) -> int:
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        if hasattr(leaf, "dtype") and hasattr(leaf, "shape"):
            total += int(math.prod(leaf.shape)) * int(getattr(leaf.dtype, "itemsize", 0))
    return total


# --------------------------------------------------------------------------- floors


def _floor_impl(kind: str, ref: Impl) -> Impl:
    """The floor of a case: the least memory traffic its reference must make.

    ``"read"``: one row sum over every array argument of at least a tenth of
    the largest one's size, accumulated in float32, in one jitted function:
    each element is read once, nothing of that size is written.
    ``"rw"``: the same reads and an in-place write of the first such array:
    ``x = y - x`` (or ``1 - x``) with ``x`` donated, so the output reuses the
    input's buffer (no fresh pages to fault in), fed back call after call (a
    private copy: the case's arrays are never donated).
    """
    threshold = max(1, (ref.nv_elements or _largest_array(ref.args)) // 10)
    big = [a for a in ref.args if hasattr(a, "shape") and math.prod(a.shape) >= threshold]
    if not big:
        raise ValueError("floor= needs an array argument")
    if kind == "read":

        def read(*xs):
            return sum(jnp.sum(x, axis=-1, dtype=jnp.float32) for x in xs)

        return Impl(jax.jit(read), tuple(big))

    def rw(x, *others):
        y = others[0] if others else jnp.ones((), x.dtype)
        return (y - x).astype(x.dtype)

    step = jax.jit(rw, donate_argnums=0)
    state = [jnp.array(big[0], copy=True)]
    others = tuple(big[1:])

    def run():
        state[0] = step(state[0], *others)
        return state[0]

    run.lower = lambda: step.lower(state[0], *others)  # type: ignore[attr-defined]
    return Impl(
        run, (), framework="jax-donated", nv_elements=ref.nv_elements or _largest_array(ref.args)
    )


# --------------------------------------------------------------------------- paired timing


def _prepare(name: str, impl: Impl, memory: bool) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Compiles (jitted impls), warms up, analyses; returns (runner, entry)."""
    entry: dict[str, Any] = {"framework": impl.framework}
    t0 = time.perf_counter()
    fn, mem, hlo = impl.fn, None, None
    if impl.framework == "jax" and hasattr(impl.fn, "lower"):
        compiled = impl.fn.lower(*impl.args).compile()
        fn, mem, hlo = compiled, _memory_stats(compiled), compiled.as_text()
    elif impl.framework == "jax-donated":
        compiled = impl.fn.lower().compile()
        mem, hlo = _memory_stats(compiled), compiled.as_text()
    entry["compile_s"] = time.perf_counter() - t0
    args = impl.args

    def runner(f=fn, a=args):
        return f(*a)

    if mem is not None:
        entry["memory"] = dict(mem)
    if hlo is not None:
        threshold = impl.nv_elements or _largest_array(impl.args)
        if threshold:
            writes = nv_writes(hlo, threshold)
            entry["nv_writes"] = len(writes)
            entry["nv_ops"] = writes
            entry["nv_threshold"] = threshold
    out = block(runner())  # first call (caches, page faults)
    entry["out_bytes"] = _nbytes(out)
    if memory:
        _, growth = peak_rss_growth(runner)
        entry.setdefault("memory", {})["rss_growth_bytes"] = growth
    return runner, entry


def _calibrate_number(runner: Callable[[], Any], sample_s: float, impl: Impl) -> int:
    """How many calls make one sample last about ``sample_s`` (1 for slow calls):
    from the fastest of up to three calls."""
    best = math.inf
    for _ in range(3):
        if impl.setup is not None:
            impl.setup()
        t0 = time.perf_counter()
        block(runner())
        best = min(best, time.perf_counter() - t0)
        if best >= sample_s:
            return 1
    return min(10_000, max(1, math.ceil(sample_s / max(best, 1e-7))))


def _sample(runner: Callable[[], Any], number: int, impl: Impl) -> float:
    if impl.setup is not None:
        impl.setup()
    t0 = time.perf_counter()
    out = None
    for _ in range(number):
        out = runner()
    block(out)
    return (time.perf_counter() - t0) / number


def time_paired(
    impls: dict[str, Impl], pairs: int, memory: bool = False, sample_s: float = SAMPLE_S
) -> dict[str, dict[str, Any]]:
    """Times implementations side by side in alternating order (a, b, b, a, ...).

    Every implementation is compiled, called once (and once more to choose how
    many calls one sample holds: fast calls are repeated until a sample lasts
    ``sample_s``; the same ``Impl`` object listed twice, as in the noise
    calibration, gets the same count), then ``pairs`` rounds are made, each
    calling every implementation once, forward on even rounds and in reverse on
    odd ones. ``times_s[i]`` of every implementation comes from round ``i``.
    """
    runners: dict[str, Callable[[], Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    numbers: dict[str, int] = {}
    by_impl: dict[int, int] = {}
    for name, impl in impls.items():
        runners[name], results[name] = _prepare(name, impl, memory)
        if id(impl) not in by_impl:
            by_impl[id(impl)] = _calibrate_number(runners[name], sample_s, impl)
        numbers[name] = by_impl[id(impl)]
    order = list(impls)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for i in range(pairs):
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(_sample(runners[name], numbers[name], impls[name]))
    for name, ts in times.items():
        results[name].update(
            number=numbers[name],
            median_s=statistics.median(ts),
            min_s=min(ts),
            max_s=max(ts),
            times_s=[float(f"{t:.6g}") for t in ts],
        )
    return results


# Older name, same measurement.
def time_interleaved(
    impls: dict[str, Impl], repeats: int, memory: bool = False
) -> dict[str, dict[str, Any]]:
    """Alias of :func:`time_paired` (kept for older callers)."""
    return time_paired(impls, repeats, memory)


def _peer_times(timed: dict[str, dict[str, Any]], peer: str) -> list[float] | None:
    """Round-by-round times of a peer; ``"a|b"``: the faster of a and b in each round."""
    names = peer.split("|")
    if not all(n in timed for n in names):
        return None
    return [min(ts) for ts in zip(*(timed[n]["times_s"] for n in names), strict=True)]


def ratio_stats(ref: list[float], other: list[float]) -> dict[str, Any]:
    """Paired ratios ``ref[i] / other[i]``: median, min, max and every sample."""
    rs = [a / b for a, b in zip(ref, other, strict=True) if b > 0]
    return {
        "median": statistics.median(rs),
        "min": min(rs),
        "max": max(rs),
        "samples": [float(f"{r:.5g}") for r in rs],
    }


def noise_band(calibration: dict[str, Any] | None) -> tuple[float, float] | None:
    """The tie band from a calibration case's result: its paired ratios' min and
    max (a function against itself), widened to include 1."""
    if not calibration or "error" in calibration:
        return None
    stats = next(iter(calibration.get("ratio_stats", {}).values()), None)
    if stats is None:
        return None
    return min(stats["min"], 1.0), max(stats["max"], 1.0)


def verdict(value: float, limit: float, band: tuple[float, float] | None) -> str:
    """``"met"``, ``"missed"`` or ``"tie"`` for a median ratio against its limit.

    A measured ratio is the true one times a noise factor within the band
    ``[lo, hi]`` of the calibration case, so the true ratio lies in
    ``[value / hi, value / lo]``: met when all of that is at most ``limit``,
    missed when all of it is above, a tie otherwise. Without a band (no
    calibration ran) the median alone decides.
    """
    lo, hi = band if band else (1.0, 1.0)
    if value / lo <= limit:
        return "met"
    if value / hi > limit:
        return "missed"
    return "tie"


def _target_entry(stats: dict[str, Any], limit: float, band: tuple[float, float] | None) -> dict:
    v = verdict(stats["median"], limit, band)
    return {
        "max": limit,
        "value": stats["median"],
        "range": [stats["min"], stats["max"]],
        "band": list(band) if band else None,
        "verdict": v,
        "met": {"met": True, "missed": False}.get(v),
    }


def run_case(
    case: Case, quick: bool, bands: dict[str, tuple[float, float]] | None = None
) -> dict[str, Any]:
    """Builds and times one case; returns its JSON-ready result.

    ``bands`` maps a noise group to its tie band (from the calibration cases
    already run); targets are judged against the case's group's band.
    """
    impls = dict(case.build(quick))
    if impls and case.floor and case.reference in impls:
        impls[FLOOR] = _floor_impl(case.floor, impls[case.reference])
    pairs = QUICK_PAIRS if quick else (case.pairs or max(case.repeats, DEFAULT_PAIRS))
    if not quick:
        pairs = max(pairs, MIN_PAIRS)
    sample_s = QUICK_SAMPLE_S if quick else SAMPLE_S
    timed = time_paired(impls, pairs, memory=case.memory, sample_s=sample_s) if impls else {}
    bands = bands or {}
    band = bands.get(case.noise, bands.get("jit"))
    out: dict[str, Any] = {
        "description": case.description,
        "reference": case.reference,
        "pairs": pairs,
        "order": "alternating",
        "floor": case.floor,
        "noise_group": case.calibrates or case.noise,
        "calibrates": case.calibrates,
        "table": case.table,
        "impls": timed,
        "ratios": {},
        "ratio_stats": {},
        "targets": {},
    }
    ref = timed.get(case.reference)
    if ref is not None:
        ref_impl = impls[case.reference]
        # The least traffic of the computation: its inputs read, its outputs written.
        io_bytes = _nbytes(ref_impl.args) + ref.get("out_bytes", 0)
        out["io_bytes"] = io_bytes
        out["arg_shapes"] = [
            f"{a.dtype}{list(a.shape)}" for a in ref_impl.args if hasattr(a, "shape")
        ]
        for r in timed.values():
            if io_bytes and r["median_s"] > 0 and r["framework"] != "eager":
                r["gbps"] = io_bytes / r["median_s"] / 1e9
        peers = [n for n in timed if n != case.reference]
        peers += [t for t in case.targets if "|" in t]
        for name in peers:
            other = _peer_times(timed, name)
            if other is None:
                continue
            stats = ratio_stats(ref["times_s"], other)
            out["ratio_stats"][name] = stats
            out["ratios"][name] = stats["median"]
        for name, limit in case.targets.items():
            if name in out["ratio_stats"]:
                out["targets"][f"time vs {name}"] = _target_entry(
                    out["ratio_stats"][name], limit, band
                )
        for name, limit in case.memory_targets.items():
            a, b = ref.get("memory") or {}, (timed.get(name) or {}).get("memory") or {}
            if "peak_bytes" in a and "peak_bytes" in b:
                value = a["peak_bytes"] / b["peak_bytes"]
                out["targets"][f"peak memory vs {name}"] = {
                    "max": limit,
                    "value": value,
                    "verdict": "met" if value <= limit else "missed",
                    "met": value <= limit,
                }
    if case.metrics is not None:
        out["metrics"] = case.metrics(out, quick)
    return out
