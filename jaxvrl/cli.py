"""What a user sees on the terminal from the command-line tools: one line for a mistake in the
command (an unknown config key, a value of the wrong type, a missing model directory or data file)
with exit status 2, and library INFO logging kept in the run's log file rather than on screen.

    app.run(cli.guard(main), flags_parser=cli.parse_flags)
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import flags
from absl import logging as absl_logging

log = logging.getLogger(__name__)

# Exit status of a command-line mistake (as argparse uses).
USAGE_ERROR = 2

# Loggers whose INFO lines a user wants on the terminal: stage boundaries, evaluations, resumes.
CONSOLE_INFO_LOGGERS = ("jaxvrl.train", "jaxvrl.eval", "jaxvrl.evaluate")


class ConfigError(ValueError):
    """A config value that cannot work (named in the message)."""


def fail(message: str) -> NoReturn:
    """Prints `error: message` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


def _user_errors() -> tuple[type[BaseException], ...]:
    from jaxvrl.data.batching import DataError

    return (FileNotFoundError, NotADirectoryError, IsADirectoryError, DataError, ConfigError)


def nearest_key(config: Any, dotted: str) -> str | None:
    """The valid config key closest to `dotted` (e.g. "rl.temprature" -> "rl.temperature"),
    walking the ConfigDict as far as the key's valid prefix goes."""
    parts = dotted.split(".")
    node, prefix = config, []
    for part in parts:
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part in keys:
            node = node[part]
            prefix.append(part)
            continue
        match = difflib.get_close_matches(part, keys, n=1, cutoff=0.5)
        return ".".join([*prefix, match[0]]) if match else None
    return None


def _override_keys(argv: Sequence[str], flag: str) -> list[str]:
    out = []
    for arg in argv[1:]:
        name = arg.lstrip("-").split("=", 1)[0]
        if name.startswith(flag + "."):
            out.append(name[len(flag) + 1 :])
    return out


def _load_config(argv: Sequence[str], flag: str) -> Any:
    """The config file named by --flag=PATH[:arg], loaded as config_flags would (for hints)."""
    import importlib.util

    for arg in argv[1:]:
        name, _, value = arg.lstrip("-").partition("=")
        if name == flag and value:
            path, _, config_arg = value.partition(":")
            spec = importlib.util.spec_from_file_location("_jaxvrl_cli_config", path)
            if spec is None or spec.loader is None:
                return None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.get_config(config_arg) if config_arg else module.get_config()
    return None


def unknown_key_message(argv: Sequence[str], error: BaseException, flag: str = "config") -> str:
    """One line naming the override that names no config field and the nearest valid key."""
    raw = str(error)
    leaf = (re.findall(r"[A-Za-z_]\w*", raw) or ["?"])[0]
    keys = _override_keys(argv, flag)
    culprit = next((k for k in keys if k.split(".")[-1] == leaf), None)
    if culprit is None:
        culprit = next((k for k in keys if leaf in k.split(".")), leaf)
    hint = None
    try:
        config = _load_config(argv, flag)
        if config is not None:
            hint = nearest_key(config, culprit)
    except Exception:  # noqa: BLE001 - the hint is a courtesy; the error line stands without it.
        hint = None
    if hint is None:
        said = re.search(r'Did you mean "(\w+)"', raw)
        if said:
            hint = ".".join([*culprit.split(".")[:-1], said.group(1)])
    message = f"unknown config key {culprit!r}"
    return message + (f" (did you mean {hint!r}?)" if hint else "")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a mistaken override ends the program with one line and status 2
    (config_flags raises a bare AttributeError for an unknown key, with a long traceback)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        fail(unknown_key_message(argv, e))
    except flags.Error as e:
        fail(str(e).replace("flag --", "--"))


def guard(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """Wraps an absl main so that a user's mistake found while running (a missing model
    directory, data file or checkpoint; bad data in strict mode; an unusable config value) ends
    it with one line and status 2. The traceback still goes to the log file, if there is one."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except _user_errors() as e:
            log.debug("stopped by", exc_info=True)
            message = str(e)
            if isinstance(e, OSError) and e.filename and e.filename not in message:
                message = f"{message}: {e.filename}"
            fail(message or type(e).__name__)

    return wrapped


class _ConsoleFilter(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        return record.levelno >= logging.INFO and record.name.startswith(CONSOLE_INFO_LOGGERS)


def setup_logging(workdir: str | None, console_level: str = "warning") -> str | None:
    """Terminal: warnings and errors, plus the trainer's own INFO lines (stages, evaluations);
    `--verbosity=0` (or `console_level="info"`) shows every library's INFO. The log file
    WORKDIR/train.log (process 0: train.log, others: train.<process>.log) keeps everything at
    INFO. Returns the log file's path."""
    level = logging.getLevelName(str(console_level).upper())
    if not isinstance(level, int):
        raise ConfigError(f"metrics.console_log_level {console_level!r} is not a logging level")
    if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        level = absl_logging.ABSL_TO_STANDARD.get(
            min(flags.FLAGS.verbosity, absl_logging.INFO), logging.INFO
        )
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = absl_logging.get_absl_handler()
    if handler not in root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    handler.setLevel(logging.NOTSET)
    for f in list(handler.filters):
        if isinstance(f, _ConsoleFilter):
            handler.removeFilter(f)
    handler.addFilter(_ConsoleFilter(level))
    if not workdir:
        return None
    os.makedirs(workdir, exist_ok=True)
    import jax

    index = jax.process_index()
    path = os.path.join(workdir, "train.log" if index == 0 else f"train.{index}.log")
    file_handler = logging.FileHandler(path)
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    return path
