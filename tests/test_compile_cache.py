"""The persistent compilation cache (jaxvrl/compile_cache.py): a second process loads the
programs a first one compiled, "" turns the cache off, and the compile-time totals count both.
Each case runs in its own interpreter: JAX sets its cache up once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from configs import base
from jaxvrl import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAMS = """
import json, sys
import jax, jax.numpy as jnp
from jaxvrl import compile_cache
used = compile_cache.enable(sys.argv[1])
totals = compile_cache.watch()
x = jnp.arange(64.0).reshape(8, 8)
jax.jit(lambda a: a @ a.T)(x).block_until_ready()
jax.jit(lambda a: jnp.tanh(a).sum(0))(x).block_until_ready()
print(json.dumps({"used": used, **totals.metrics()}))
"""


def run_programs(directory: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAMS, directory],
        cwd=REPO, env={**environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_program_the_first_compiled(tmp_path):
    cache = str(tmp_path / "cache")
    first = run_programs(cache)
    assert first["used"] == cache
    assert first["compile/programs"] >= 2 and first["compile/cache_hits"] == 0
    assert os.listdir(cache)
    second = run_programs(cache)
    assert second["compile/cache_hits"] == second["compile/programs"] == first["compile/programs"]
    assert second["compile/seconds"] >= 0 and second["compile/lowering_seconds"] > 0


def test_an_empty_directory_turns_the_cache_off(tmp_path):
    got = run_programs("", HOME=str(tmp_path), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"))
    assert got["used"] is None and got["compile/cache_hits"] == 0
    assert os.listdir(tmp_path) == []


def test_jax_own_variable_takes_the_default_directorys_place(tmp_path):
    got = run_programs(compile_cache.DEFAULT_DIR, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"))
    assert got["used"] == str(tmp_path / "jax") and os.listdir(tmp_path / "jax")
    explicit = run_programs(str(tmp_path / "mine"), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"))
    assert explicit["used"] == str(tmp_path / "mine")


def test_the_base_config_defaults_to_the_user_cache_directory():
    assert base.get_config().train.compilation_cache_dir == compile_cache.DEFAULT_DIR
