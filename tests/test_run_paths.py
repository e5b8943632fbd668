"""Run directories: a URL where a command writes is refused before any work, in one line
(jaxvrl/run_paths.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from launch_fixtures import REPO, skip_without_bash

from jaxvrl import run_paths

pytestmark = skip_without_bash


# ------------------------------------------------------------------------------------------------
# Run directories: a URL is refused before any work (jaxvrl/run_paths.py).


def test_a_url_is_refused_in_one_line_that_says_what_to_do():
    line = run_paths.refusal("--workdir", "gs://my-bucket/runs/r1")
    assert line is not None and "\n" not in line
    assert line.startswith("--workdir=gs://my-bucket/runs/r1 is a URL (gs://)")
    assert "gcsfuse --implicit-dirs my-bucket /mnt/my-bucket" in line
    assert "Filestore" in line and "(--workdir=/mnt/my-bucket/runs/r1)" in line
    assert "mount it on every host" in run_paths.refusal("--out", "s3://b/x")
    for path in ("/runs/r1", "runs/r1", "./gs/x", "C:/x", "", "mnt/gs:/x"):
        assert run_paths.refusal("--workdir", path) is None, path


def test_the_places_a_run_writes_include_the_export_and_a_synthetic_set():
    from configs import demo

    config = demo.get_config()
    config.export.hf_dir = "gs://b/hf"
    paths = run_paths.run_outputs("/runs/r1", config)
    assert paths["--workdir"] == "/runs/r1"
    assert paths["--config.export.hf_dir"] == "gs://b/hf"
    assert paths["--config.data.synthetic.directory"] == str(config.data.synthetic.directory)


def test_require_local_ends_the_command_with_status_2(capsys):
    run_paths.require_local({"--workdir": "/runs/r1", "--out": ""})  # nothing to refuse
    with pytest.raises(SystemExit) as exit_:
        run_paths.require_local({"--workdir": "/runs/r1", "--out": "gs://b/hf"})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out=gs://b/hf is a URL") and err.count("\n") == 1


def test_no_command_creates_a_local_gs_directory(tmp_path, monkeypatch, capsys):
    """python -m jaxvrl.train and jaxvrl.evaluate (started in an empty directory), and the
    checkpoint export and evaluation report, given a gs:// path, end with status 2 and one line,
    and nothing named gs: appears anywhere."""
    from jaxvrl import checkpoint, evaluate

    config = f"--config={REPO / 'configs/demo.py'}"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    procs = {}
    for module in ("jaxvrl.train", "jaxvrl.evaluate"):
        cwd = tmp_path / module
        cwd.mkdir()
        procs[module] = subprocess.Popen(
            [sys.executable, "-m", module, config, "--workdir=gs://b/runs/r1"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    in_process = {
        "export": lambda: checkpoint.main(["export", "--workdir=/r", "--out=gs://b/hf"]),
        "report": lambda: evaluate.cli(["report", "--workdir=gs://b/runs/r1"]),
    }
    for name, command in in_process.items():
        with pytest.raises(SystemExit) as exit_:
            command()
        assert exit_.value.code == 2, name
        err = capsys.readouterr().err
        flag = "--out=gs://b/hf" if name == "export" else "--workdir=gs://b/runs/r1"
        assert err.startswith(f"error: {flag} is a URL (gs://)") and err.count("\n") == 1
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (name, err)
        assert len(errors) == 1, (name, err)
        assert errors[0].startswith("error: --workdir=gs://b/runs/r1 is a URL (gs://)"), err
    made = [p for p in tmp_path.rglob("*") if p.name.startswith("gs:")]
    assert made == [] and not (REPO / "gs:").exists()
