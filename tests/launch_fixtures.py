"""Stand-ins for the launch tests (test_launch.py, test_launch_slurm.py): small bash scripts first
on PATH that record the arguments and environment they receive."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

skip_without_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# An override a shell would mangle: spaces, quotes of both kinds, braces, a dollar, a backslash.
HOSTILE = """--config.data.prompt=Say "hi" {x} 'y' $HOME \\n"""


def executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def records(path: Path) -> list[str]:
    """Arguments a stand-in wrote NUL-separated."""
    return path.read_text().split("\0")[:-1]


def read_environ(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in records(path))


def base_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    env.update(extra)
    return env
