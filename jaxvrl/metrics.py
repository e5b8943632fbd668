"""Metric writers: a progress bar, TensorBoard events and `WORKDIR/metrics.jsonl` (one JSON object
per step with `step`). Only process 0 writes; every process may call."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

# The metrics the progress bar shows, when present, in this order.
PROGRESS_KEYS = ("reward/total", "accuracy", "kl", "loss", "step_time/total")


def to_python(value: Any) -> Any:
    """JSON-safe scalar: numpy / jax scalars to float or int, non-finite floats to None."""
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Writes one row of scalar metrics per step to every sink."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int | None = None,
        tensorboard: bool = True,
        progress: bool = True,
        resume_step: int = 0,
    ):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step and os.path.exists(self.path):
            self._drop_rows_after(resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(
                os.path.join(workdir, "tensorboard"), purge_step=resume_step or None
            )
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
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            shown = {k: row[k] for k in PROGRESS_KEYS if isinstance(row.get(k), int | float)}
            self._bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in shown.items()})

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The rows of `WORKDIR/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
