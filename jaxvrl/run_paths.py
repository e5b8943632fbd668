"""Where a run may write: a path on a local or mounted file system, never a URL.

A run writes its checkpoints (Orbax), logs, metrics, completions, evaluation results, report and
Hugging Face export with Python's file functions (`os.makedirs`, `open`, `os.path.abspath`).
Given `gs://bucket/run` they would write to a directory named `gs:/bucket/run` on each host's own
disk, which no other host sees, which a run on another slice cannot resume from, and which is
lost with the machine. So every path a command writes to is checked before any work, and one
with a URL scheme (`scheme://`) ends the command with one line saying what to do: mount the
bucket on every host (Cloud Storage FUSE, or a Filestore share) and pass the mounted path
(docs/launch.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(path: str) -> str | None:
    """The scheme of a URL (`gs` of `gs://bucket/x`); None for a file system path."""
    match = URL.match(path.strip())
    return match.group(1) if match else None


def refusal(flag: str, path: str) -> str | None:
    """One line refusing `path` (given as `flag`) when it is a URL; None for a file system path."""
    scheme = url_scheme(path)
    if scheme is None:
        return None
    if scheme == "gs":
        bucket, _, rest = path.strip()[len("gs://") :].partition("/")
        mounted = "/".join(p for p in ("/mnt", bucket, rest.strip("/")) if p)
        how = (
            f"mount the bucket on every host (gcsfuse --implicit-dirs {bucket} /mnt/{bucket}) "
            f"or use a Filestore mount, and pass the mounted path ({flag}={mounted})"
        )
    else:
        how = "mount it on every host (a FUSE or NFS mount) and pass the mounted path"
    return (
        f"{flag}={path} is a URL ({scheme}://), which this command cannot write (it writes with "
        f"local file operations, and would create a local directory '{scheme}:'); {how}. "
        "See docs/launch.md"
    )


def run_outputs(workdir: str, config: Any = None) -> dict[str, str]:
    """The places a training or evaluation run writes, by the flag that names each: the run
    directory, the Hugging Face export (`export.hf_dir`) and a synthetic set it builds
    (`data.synthetic.directory`)."""
    paths = {"--workdir": str(workdir or "")}
    if config is None:
        return paths
    export = config.get("export") or {}
    if export.get("hf_dir"):
        paths["--config.export.hf_dir"] = str(export["hf_dir"])
    synthetic = (config.get("data") or {}).get("synthetic") or {}
    if synthetic.get("enabled", False) and synthetic.get("directory"):
        paths["--config.data.synthetic.directory"] = str(synthetic["directory"])
    return paths


def require_local(paths: Mapping[str, str | None]) -> None:
    """Ends the command (`error: ...`, exit status 2) at the first path that is a URL."""
    for flag, path in paths.items():
        line = refusal(flag, str(path or ""))
        if line:
            from jaxvrl import cli

            cli.fail(line)


def require_local_run(workdir: str, config: Any = None) -> None:
    """`require_local` for every place a run writes (`run_outputs`)."""
    require_local(run_outputs(workdir, config))
