"""Metric writers: the scalars of each step and the config reach W&B (offline) and MLflow (a local
store in the run directory), read back with the libraries' own readers; a resumed run continues
the same tracker runs; a tracker that is unknown or not installed is a one-line ConfigError."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import base
from jaxvrl import metrics
from jaxvrl.cli import ConfigError

STEPS = {
    1: {"loss": 0.5, "reward/total": 0.25, "accuracy": 1 / 3, "stage": "rl"},
    2: {"loss": np.float32(0.125), "reward/total": 0.75, "accuracy": 2 / 3, "kl": float("nan")},
    3: {"loss": 1e-7, "reward/total": 1.0, "accuracy": 1.0, "compilations/train": 2},
}


def scalars(step: int) -> dict[str, float]:
    """A step's numbers as metrics.jsonl holds them (strings and non-finite values left out)."""
    row = {k: metrics.to_python(v) for k, v in STEPS[step].items()}
    return {k: v for k, v in row.items() if isinstance(v, int | float)}


@pytest.fixture
def offline_trackers(monkeypatch):
    """W&B offline and MLflow in the run directory, without network or a user's settings."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("MLFLOW_TRACKING_URI", "WANDB_PROJECT", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)


def write_steps(workdir, config, steps, resume_step=0):
    writer = metrics.MetricsWriter(
        str(workdir),
        trackers=("wandb", "mlflow"),
        run_params=config,
        progress=False,
        resume_step=resume_step,
    )
    for step in steps:
        writer.write(step, STEPS[step])
    writer.close()


def wandb_records(workdir) -> list[dict]:
    """Every W&B offline run's records, as W&B's own reader (`wandb leet inspect`) prints them."""
    runs = sorted(p for p in os.listdir(workdir / "wandb") if p.startswith("offline-run-"))
    records = []
    for run in runs:
        out = subprocess.run(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", workdir / "wandb" / run],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        records += [json.loads(line) for line in out.splitlines()]
    return records


def wandb_history(records) -> dict[int, dict[str, float]]:
    return {
        int(r["history"]["step"]["num"]): {
            k: v for k, v in r["history"]["item"].items() if not k.startswith("_")
        }
        for r in records
        if r["type"] == "history"
    }


def mlflow_client(workdir):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")


def mlflow_history(client, run_id) -> dict[int, dict[str, float]]:
    history: dict[int, dict[str, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            history.setdefault(m.step, {})[key] = m.value
    return history


def tracker_runs(workdir) -> dict[str, str]:
    with open(workdir / metrics.TRACKER_RUNS_FILE) as f:
        return json.load(f)


def test_wandb_and_mlflow_hold_each_steps_scalars_and_the_config(tmp_path, offline_trackers):
    config = base.get_config()
    write_steps(tmp_path, config, [1, 2, 3])
    expected = {step: scalars(step) for step in STEPS}
    params = metrics.flat_params(config)
    assert params["metrics.trackers"] == ["tensorboard"] and params["rl.temperature"] == 1.0

    records = wandb_records(tmp_path)
    assert wandb_history(records) == expected
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    logged_config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    assert logged_config == json.loads(json.dumps(params))
    assert run["run_id"] == tracker_runs(tmp_path)["wandb"]

    client = mlflow_client(tmp_path)
    run_id = tracker_runs(tmp_path)["mlflow"]
    assert mlflow_history(client, run_id) == expected
    assert client.get_run(run_id).data.params == {k: str(v) for k, v in params.items()}
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_resumed_run_continues_the_same_tracker_runs(tmp_path, offline_trackers):
    config = base.get_config()
    write_steps(tmp_path, config, [1, 2])
    first = tracker_runs(tmp_path)
    config.rl.steps += 10  # a changed value: MLflow keeps the first
    write_steps(tmp_path, config, [3], resume_step=2)
    assert tracker_runs(tmp_path) == first

    records = wandb_records(tmp_path)
    assert {r["run"]["run_id"] for r in records if r["type"] == "run"} == {first["wandb"]}
    assert wandb_history(records) == {step: scalars(step) for step in STEPS}

    client = mlflow_client(tmp_path)
    assert mlflow_history(client, first["mlflow"]) == {step: scalars(step) for step in STEPS}
    assert client.get_run(first["mlflow"]).data.params["rl.steps"] == str(
        base.get_config().rl.steps
    )
    assert len(client.search_runs([client.get_experiment_by_name("jaxvrl").experiment_id])) == 1


def test_the_default_tracker_is_tensorboard_and_needs_nothing_optional():
    config = base.get_config()
    assert config.metrics.trackers == ("tensorboard",)
    metrics.check_trackers(config)


def test_an_unknown_tracker_is_a_one_line_config_error():
    config = base.get_config()
    config.metrics.trackers = ("tensorboard", "comet")
    with pytest.raises(ConfigError, match="unknown tracker 'comet'") as error:
        metrics.check_trackers(config)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("tracker, module", [("wandb", "wandb"), ("mlflow", "sqlalchemy")])
def test_a_tracker_not_installed_is_a_one_line_config_error(monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    config = base.get_config()
    config.metrics.trackers = ("tensorboard", tracker)
    with pytest.raises(ConfigError) as error:
        metrics.check_trackers(config)
    assert str(error.value) == (
        f"metrics.trackers asks for {tracker!r}, which is not installed: "
        "pip install -r requirements-trackers.txt"
    )


def test_wandb_logs_offline_when_its_server_cannot_be_reached(
    tmp_path, offline_trackers, monkeypatch, caplog
):
    with socket.socket() as s:  # a local port nothing listens on: no W&B server there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setattr(metrics, "WANDB_INIT_TIMEOUT_S", 1.0)
    writer = metrics.MetricsWriter(str(tmp_path), trackers=("wandb",), progress=False)
    writer.write(1, STEPS[1])
    writer.close()
    assert "W&B could not start online" in caplog.text
    monkeypatch.setenv("WANDB_MODE", "offline")  # the reader's own mode
    assert wandb_history(wandb_records(tmp_path)) == {1: scalars(1)}
