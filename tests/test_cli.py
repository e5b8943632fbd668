"""Command-line mistakes end with one line and exit status 2 (jaxvrl/cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from demo_fixtures import QUICK_COMPILE, trainer_env

from configs import demo
from jaxvrl import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(tmp_path, *overrides):
    env = trainer_env(JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = QUICK_COMPILE  # one device, as a user's run
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxvrl.train",
            "--config=configs/demo.py",
            f"--workdir={tmp_path / 'run'}",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_nearest_key_walks_the_config_as_far_as_the_key_is_valid():
    config = demo.get_config()
    assert cli.nearest_key(config, "rl.temprature") == "rl.temperature"
    assert cli.nearest_key(config, "rl.dynamic_sampling.max_extra_round") == (
        "rl.dynamic_sampling.max_extra_rounds"
    )
    assert cli.nearest_key(config, "optim.learnin_rate") == "optim.learning_rate"
    assert cli.nearest_key(config, "zzzz.qqqq") is None


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "--config.rl.temprature=0.7",
            "error: unknown config key 'rl.temprature' (did you mean 'rl.temperature'?)",
        ),
        (
            "--config.rl.temperature=warm",
            "error: --config.rl.temperature=warm: could not convert string to float: 'warm'",
        ),
        (
            "--config.model.path=/nonexistent/model",
            "error: model.path '/nonexistent/model' has no config.json",
        ),
    ],
)
def test_a_mistaken_command_prints_one_line_and_exits_2(tmp_path, override, expected):
    result = _train(tmp_path, override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _error_lines(result) == [expected]
    assert "Traceback" not in result.stderr


def test_a_missing_record_file_stops_the_run_before_any_training(tmp_path):
    result = _train(tmp_path, "--config.sft.train_files=/nonexistent/cold_start.json")
    assert result.returncode == 2, result.stderr[-2000:]
    assert _error_lines(result) == [
        "error: sft.train_files: record file /nonexistent/cold_start.json does not exist"
    ]
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_the_terminal_shows_our_warnings_and_every_error_but_not_library_warnings():
    import logging

    from jaxvrl.cli import _ConsoleFilter

    def shown(name: str, level: int, console: int = logging.WARNING) -> bool:
        return _ConsoleFilter(console).filter(logging.LogRecord(name, level, "", 0, "", (), None))

    assert shown("jaxvrl.data.pipeline", logging.WARNING)
    assert shown("jaxvrl.train", logging.INFO)  # stage lines
    assert not shown("jaxvrl.rollout.sampler", logging.INFO)
    assert not shown("orbax.checkpoint", logging.WARNING)
    assert not shown("py.warnings", logging.WARNING)
    assert shown("jax._src.xla_bridge", logging.ERROR)
    assert shown("orbax.checkpoint", logging.INFO, console=logging.INFO)  # asked for everything


def test_transformers_records_go_through_our_handlers_not_its_own(caplog, capsys):
    import logging

    from jaxvrl import cli

    cli._adopt_transformers_logging()
    logging.getLogger("transformers.tokenization_utils_base").warning("a library warning")
    assert "a library warning" in caplog.text  # the root's handlers (the log file) have it
    assert "a library warning" not in capsys.readouterr().err  # its own terminal handler not
