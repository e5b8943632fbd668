"""The persistent compilation cache of a run, and the seconds a process spends compiling.

A restarted, resumed or evaluated run compiles the programs an earlier one compiled; with
`train.compilation_cache_dir` set (default `~/.cache/jaxvrl/compilation_cache`, "" = off) each
compiled program is written there and later loaded instead of compiled. Every program is cached
whatever its compile time (JAX's own threshold of 1 s would leave most of the demo's programs out).
The key is JAX's: the program, the devices, the compile options, the JAX and XLA versions; a
program that changed is compiled anew.

Compile time is read from JAX's monitoring events: `backend` is the XLA compile of a program, or
its load from the cache (one event wraps both); `lowering` the tracing to a jaxpr and its
lowering to StableHLO, which no cache saves.
"""

from __future__ import annotations

import dataclasses
import os

import jax

DEFAULT_DIR = "~/.cache/jaxvrl/compilation_cache"

_BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"
_LOWERING_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)
_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def enable(directory: str) -> str | None:
    """Points JAX's persistent compilation cache at `directory` (`~` expanded; "" turns the cache
    off); JAX's own JAX_COMPILATION_CACHE_DIR, when set, takes the place of the default directory.
    Call before the process compiles anything. Returns the directory used, or None."""
    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if directory == DEFAULT_DIR and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        directory = os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


@dataclasses.dataclass
class CompileTime:
    """This process's compile seconds and cache hits since `watch()` was first called."""

    backend_seconds: float = 0.0
    lowering_seconds: float = 0.0
    programs: int = 0
    cache_hits: int = 0

    def metrics(self) -> dict[str, float | int]:
        return {
            "compile/seconds": self.backend_seconds,
            "compile/lowering_seconds": self.lowering_seconds,
            "compile/programs": self.programs,
            "compile/cache_hits": self.cache_hits,
        }


_TOTALS: CompileTime | None = None


def watch() -> CompileTime:
    """The process's running totals (listeners registered once per process)."""
    global _TOTALS
    if _TOTALS is None:
        totals = CompileTime()

        def on_duration(event: str, seconds: float, **_) -> None:
            if event == _BACKEND_EVENT:
                totals.backend_seconds += seconds
                totals.programs += 1
            elif event in _LOWERING_EVENTS:
                totals.lowering_seconds += seconds

        def on_event(event: str, **_) -> None:
            if event == _HIT_EVENT:
                totals.cache_hits += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)
        _TOTALS = totals
    return _TOTALS
