"""Orbax checkpoints of a run: the train state (parameters, optimizer state, step), the PRNG key and
the data iterator's state, saved asynchronously every N steps, the last K kept, and restored from
the newest complete checkpoint in the workdir. Orbax writes each step to a temporary directory and
renames it when complete, so a run killed mid-save resumes from the previous step.

Also the command-line export of a checkpointed step to a Hugging Face directory:

    python -m jaxvrl.checkpoint export --workdir=RUN_DIR [--step=N] --out=HF_DIR \
        --base=ORIGINAL_HF_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxvrl import run_paths

log = logging.getLogger(__name__)


def _encode_data_state(state: Any) -> dict[str, Any]:
    if state is None:
        return {"kind": "none"}
    if isinstance(state, bytes):
        return {"kind": "bytes", "value": state.decode("utf-8")}
    return {"kind": "json", "value": state}


def _decode_data_state(raw: dict[str, Any]) -> Any:
    if raw["kind"] == "none":
        return None
    if raw["kind"] == "bytes":
        return raw["value"].encode("utf-8")
    return raw["value"]


def data_state_for_process(saved: Any, batch_size: int, count: int, index: int) -> Any:
    """The data-iterator state of process `index` of `count` from a checkpoint's (the trainer
    saves {"processes": [every process's state]}; older checkpoints hold one state): its own
    where the run had as many processes; else (a slice of another size) its block of the same
    global position, which holds exactly when no record was skipped (skips shift each process's
    stream by its own count)."""
    if not isinstance(saved, dict) or "processes" not in saved:
        states = [saved]  # a checkpoint of the single-process layout
    else:
        states = saved["processes"]
    n, i = count, index
    if len(states) == n:
        return states[i]
    old = states[0]
    if not isinstance(old, dict) or "next_index" not in old.get("parent", {}):
        raise ValueError(
            f"the checkpoint was written by {len(states)} processes and this run has {n}: "
            "its data state can be carried over only with data.num_workers = 0"
        )
    batches = old["parent"]["next_index"] // (batch_size // len(states))
    counts = [json.loads(s["skip_counts"]) for s in states]
    skips: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            skips[k] = skips.get(k, 0) + v
    log.warning(
        "resuming %d processes from a checkpoint of %d: each starts at global batch %d",
        n,
        len(states),
        batches,
    )
    return {
        "parent": {**old["parent"], "next_index": batches * (batch_size // n)},
        "skip_counts": json.dumps(dict(sorted(skips.items())) if i == 0 else {}),
    }


class Checkpointer:
    """Saves and restores (train state, PRNG key, data-iterator state) in `workdir/checkpoints`."""

    def __init__(
        self,
        workdir: str,
        *,
        save_every: int = 100,
        keep: int = 3,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=save_every,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(
        self, step: int, state: Any, rng: jax.Array, data_state: Any = None, force: bool = False
    ) -> bool:
        """Starts saving when `step` is due (or `force`); returns whether it saved."""
        meta = {
            "step": int(step),
            "rng": np.asarray(jax.random.key_data(rng)).tolist(),
            "rng_impl": str(jax.random.key_impl(rng)),
            "data_state": _encode_data_state(data_state),
        }
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, jax.Array, Any, int]:
        """Restores `step` (default: newest) onto the shardings of `abstract_state` (a pytree of
        jax.ShapeDtypeStruct with shardings). Returns (state, rng, data_state, step)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        meta = restored["meta"]
        impl = meta.get("rng_impl", "threefry2x32")
        rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32), impl=_impl_name(impl))
        return restored["state"], rng, _decode_data_state(meta["data_state"]), int(meta["step"])

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters of `step` (a partial restore: optimizer state, reference model
        and data state stay on disk), onto the shardings of `abstract_params`."""
        # The step's "state" item read directly: a second (read-only) manager on the directory
        # would warn on every use, and the run's own manager binds "state" to its save handler.
        path = ocp.step.find_step_path(self.directory, ocp.step.standard_name_format(), step=step)
        item = {"params": abstract_params}
        with ocp.PyTreeCheckpointer() as reader:
            restored = reader.restore(
                path / "state",
                args=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                ),
            )
        return restored["params"]

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are complete."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _impl_name(impl: str) -> str:
    # str(key_impl) looks like "PRNGImpl(name=threefry2x32, ...)" or just the name.
    for name in ("threefry2x32", "rbg", "unsafe_rbg"):
        if name in impl:
            return name
    return "threefry2x32"


def run_model_config(workdir: str) -> tuple[Any, bool, dict[str, Any]]:
    """A run's model as its model_config.json records it: (ModelConfig, scan_layers, the file's
    contents)."""
    from model.config import ModelConfig

    with open(os.path.join(workdir, "model_config.json")) as f:
        run_model = json.load(f)
    scan = bool(run_model.get("scan_layers", False))  # runs before 2026-12-05: unrolled
    return ModelConfig.from_hf_dict(run_model["hf_config"]), scan, run_model


def restore_model(workdir: str, step: int | None = None) -> tuple[Any, int, dict[str, Any]]:
    """The model of a run's checkpointed step (the newest when `step` is None), built from the
    run's model_config.json: (model, step, that file's contents)."""
    from flax import nnx

    from model.qwen2_vl import Qwen2VL

    config, scan, run_model = run_model_config(workdir)
    abstract = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0), scan_layers=scan))
    graphdef, params = nnx.split(abstract, nnx.Param)
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
        model = nnx.merge(graphdef, checkpointer.restore_params(step, params))
    finally:
        checkpointer.close()
    return model, step, run_model


def export_step(workdir: str, out: str, base: str | None = None, step: int | None = None) -> int:
    """Writes the parameters of a checkpointed step as a Hugging Face directory (hub layout,
    config.json, tokenizer files of the run's model directory). Returns the step exported."""
    from model.hf import save_pretrained

    model, step, run_model = restore_model(workdir, step)
    save_pretrained(model, out, tokenizer_dir=base or run_model.get("tokenizer_dir"))
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a checkpointed step to Hugging Face.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a step's parameters as a Hugging Face directory")
    exp.add_argument("--workdir", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument("--step", type=int, default=None)
    exp.add_argument("--base", default=None, help="directory whose tokenizer files to copy")
    args = parser.parse_args(argv)
    run_paths.require_local({"--workdir": args.workdir, "--out": args.out})
    step = export_step(args.workdir, args.out, args.base, args.step)
    print(f"exported step {step} of {args.workdir} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
