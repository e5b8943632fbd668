"""Metric writers: a progress bar, `WORKDIR/metrics.jsonl` (one JSON object per step with `step`)
and the trackers `metrics.trackers` names: TensorBoard events, Weights & Biases and MLflow (the
same scalars, and the config as run parameters). Only process 0 writes; every process may call."""

from __future__ import annotations

import importlib
import json
import logging
import math
import netrc
import os
import pathlib
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxvrl.cli import ConfigError

log = logging.getLogger(__name__)

# The metrics the progress bar shows, when present, in this order.
PROGRESS_KEYS = ("reward/total", "accuracy", "kl", "loss", "step_time/total")

# The trackers `metrics.trackers` may name, and the modules each one imports.
TRACKER_MODULES = {
    "tensorboard": ("tensorboardX",),
    "wandb": ("wandb",),
    # sqlalchemy and alembic: MLflow's local store (a SQLite file; its file store is retired).
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),
}
# What installs each tracker's modules.
TRACKER_REQUIREMENTS = {
    "tensorboard": "requirements.txt",
    "wandb": "requirements-trackers.txt",
    "mlflow": "requirements-trackers.txt",
}
# Seconds W&B may take to reach its server before the run logs offline instead.
WANDB_INIT_TIMEOUT_S = 30.0
# The trackers' run ids, kept in the run directory so that a resumed run continues the same runs.
TRACKER_RUNS_FILE = "tracker_runs.json"


def check_trackers(config: Any) -> None:
    """Raises ConfigError (one line) for a tracker in `config.metrics.trackers` that is unknown
    or not installed; the trainer calls it before any work."""
    for name in config.metrics.trackers:
        if name not in TRACKER_MODULES:
            known = ", ".join(f"{k!r}" for k in TRACKER_MODULES)
            raise ConfigError(f"metrics.trackers has unknown tracker {name!r} (known: {known})")
        for module in TRACKER_MODULES[name]:
            try:
                importlib.import_module(module)
            except ImportError:
                raise ConfigError(
                    f"metrics.trackers asks for {name!r}, which is not installed: "
                    f"pip install -r {TRACKER_REQUIREMENTS[name]}"
                ) from None


def to_python(value: Any) -> Any:
    """JSON-safe scalar: numpy / jax scalars to float or int, non-finite floats to None."""
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def flat_params(config: Any, prefix: str = "") -> dict[str, Any]:
    """A (nested) config as {dotted.key: value}, the form trackers show as run parameters."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    out: dict[str, Any] = {}
    for key, value in config.items():
        if hasattr(value, "to_dict") or isinstance(value, Mapping):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


class MetricsWriter:
    """Writes one row of scalar metrics per step to every sink."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int | None = None,
        trackers: Sequence[str] = ("tensorboard",),
        run_params: Any = None,
        project: str = "jaxvrl",
        progress: bool = True,
        resume_step: int = 0,
    ):
        """`run_params`: the config, logged flattened as the trackers' run parameters. `project`:
        the W&B project and the MLflow experiment. After a resume (`resume_step` > 0) the
        trackers continue the runs they had."""
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._trackers: list[Any] = []
        self._bar = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step and os.path.exists(self.path):
            self._drop_rows_after(resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        runs_path = os.path.join(workdir, TRACKER_RUNS_FILE)
        runs: dict[str, str] = {}
        if resume_step and os.path.exists(runs_path):
            with open(runs_path) as f:
                runs = json.load(f)
        params = flat_params(run_params) if run_params is not None else {}
        run_name = os.path.basename(os.path.abspath(workdir))
        for name in trackers:
            if name == "tensorboard":
                self._trackers.append(_TensorBoard(workdir, resume_step))
            elif name == "wandb":
                tracker = _WandB(workdir, project, run_name, params, runs.get(name))
                runs[name] = tracker.run_id
                self._trackers.append(tracker)
            elif name == "mlflow":
                tracker = _MLflow(workdir, project, run_name, params, runs.get(name))
                runs[name] = tracker.run_id
                self._trackers.append(tracker)
            else:
                raise ConfigError(f"metrics.trackers has unknown tracker {name!r}")
        if runs:
            with open(runs_path, "w") as f:
                json.dump(runs, f)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=resume_step, dynamic_ncols=True, unit="step"
            )

    def _drop_rows_after(self, step: int) -> None:
        """After a resume, rows of steps that will run again are removed (the run repeats them)."""
        with open(self.path) as f:
            rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(rows)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: to_python(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {
            k: v
            for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        }
        for tracker in self._trackers:
            tracker.write(int(step), scalars)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            shown = {k: row[k] for k in PROGRESS_KEYS if isinstance(row.get(k), int | float)}
            self._bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in shown.items()})

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        for tracker in self._trackers:
            tracker.close()
        if self._bar is not None:
            self._bar.close()


class _TensorBoard:
    """TensorBoard events in WORKDIR/tensorboard; a resumed run purges the steps it repeats."""

    def __init__(self, workdir: str, resume_step: int):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(
            os.path.join(workdir, "tensorboard"), purge_step=resume_step or None
        )

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._writer.close()


def _wandb_has_credentials() -> bool:
    """An API key in the environment or from `wandb login` (~/.netrc, or $NETRC), looked up
    without W&B, whose login prompt would stop an unattended run."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(urllib.parse.urlsplit(url).netloc) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class _WandB:
    """A W&B run in WORKDIR/wandb. Online only where WANDB_MODE says so or W&B has credentials
    (W&B would otherwise ask for a login on the terminal); offline when WANDB_MODE=offline, or
    when the server cannot be reached within WANDB_INIT_TIMEOUT_S (upload later with
    `wandb sync WORKDIR/wandb/offline-run-*`). W&B's own banner and console capture are off."""

    def __init__(self, workdir: str, project: str, run_name: str, params: dict, run_id: str | None):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_has_credentials() else "offline")
        kwargs = dict(
            dir=workdir,
            project=os.environ.get("WANDB_PROJECT", project),
            name=run_name,
            id=run_id,
            resume="allow" if run_id else None,
            config=params,
        )
        settings = dict(silent=True, console="off")
        try:
            self._run = wandb.init(
                mode=mode,
                settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S, **settings),
                **kwargs,
            )
        except wandb.errors.Error as e:
            if mode != "online":
                raise
            # The failed run keeps its id in W&B's service until the service stops.
            wandb.teardown()
            self._run = wandb.init(mode="offline", settings=wandb.Settings(**settings), **kwargs)
            log.warning(
                "W&B could not start online (%s); logging offline (upload later: wandb sync %s)",
                str(e).splitlines()[0],
                self._run.settings.sync_dir,
            )
        else:
            if self._run.offline:
                log.info("W&B logs offline (upload: wandb sync %s)", self._run.settings.sync_dir)
        self.run_id = self._run.id

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._run.log(dict(scalars), step=step)

    def close(self) -> None:
        self._run.finish()


class _MLflow:
    """An MLflow run in the experiment `project`, at MLFLOW_TRACKING_URI when set, else in a
    SQLite store in the run directory (WORKDIR/mlflow.db, which MLflow 3 prefers to its retired
    file store; the full mlflow package's `mlflow ui --backend-store-uri sqlite:///WORKDIR/mlflow.db`
    shows it). MLflow keeps a parameter's first value: a resumed run whose config changed logs
    only its new keys and names the changed ones."""

    def __init__(self, workdir: str, project: str, run_name: str, params: dict, run_id: str | None):
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        workdir = os.path.abspath(workdir)
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        self._client = MlflowClient(tracking_uri=uri or f"sqlite:///{workdir}/mlflow.db")
        logged: dict[str, str] = {}
        if run_id is not None:
            try:
                logged = self._client.get_run(run_id).data.params
                self._client.update_run(run_id, status="RUNNING")
            except MlflowException:
                run_id = None
        if run_id is None:
            experiment = self._client.get_experiment_by_name(project)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                artifacts = None if uri else pathlib.Path(workdir, "mlartifacts").as_uri()
                experiment_id = self._client.create_experiment(project, artifacts)
            run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        self.run_id = run_id
        values = {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("MLflow keeps the run's first values of %s", ", ".join(changed))
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The rows of `WORKDIR/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
