"""What a user sees on the terminal from the command-line tools: one line for a mistake in the
command (an unknown config key, a value of the wrong type, a missing model directory or data file)
with exit status 2, one line for any other error that ends a run (exit status 1; the traceback
goes to the run's log file), and library logging kept in the run's log file rather than on screen.

    app.run(cli.guard(main), flags_parser=cli.parse_flags)

The C++ libraries' log lines (XLA, libtpu, CUDA stubs, gloo), held off the terminal from the
start by `jaxvrl.native_logs.hold()`, go to the log file once `open_log_file` opens it.
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

from jaxvrl import native_logs

log = logging.getLogger(__name__)

# Exit status of a command-line mistake (as argparse uses).
USAGE_ERROR = 2

# Exit status of any other error that ends a run.
RUN_ERROR = 1

# Loggers whose INFO lines a user wants on the terminal: stage boundaries, evaluations, resumes.
CONSOLE_INFO_LOGGERS = ("jaxvrl.train", "jaxvrl.eval", "jaxvrl.evaluate")
# Loggers whose warnings are ours (shown on the terminal); other libraries' warnings go to the log
# file only, their errors to both.
OUR_LOGGERS = ("jaxvrl", "model", "configs", "__main__")

# The log file of this process once `open_log_file` has opened it (tracebacks are written there).
_log_path: str | None = None


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


def root_cause(error: BaseException) -> BaseException:
    """The error a chain of wrappers was raised from (`raise ... from`, or raised while handling),
    stopping at the first one of ours that names its cause (a pipeline error names the record)."""
    from jaxvrl.data.batching import PipelineError

    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, PipelineError | ConfigError):
            return error
        nxt = error.__cause__ or error.__context__
        if nxt is None:
            return error
        error = nxt
    return error


def error_line(error: BaseException) -> str:
    """One line naming an error: its message (the file, for an OSError), after its type where
    the message may not say what went wrong (not one of ours)."""
    from jaxvrl.data.batching import PipelineError

    message = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    if not isinstance(error, _user_errors() + (PipelineError,)):
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message or type(error).__name__


def _log_traceback(error: BaseException, on_terminal: bool) -> None:
    """The full traceback, to the log file only; where there is none yet, on the terminal if
    `on_terminal` (an error that is not a mistake in the command)."""
    if _log_path is not None:
        log.error("stopped by", exc_info=error, extra={"console": False})
    elif on_terminal:
        import traceback

        traceback.print_exception(error, file=sys.stderr)


def _mesh():
    from jaxvrl.parallel import mesh

    return mesh


def guard(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """Wraps an absl main so that a run ends with one line on the terminal: a user's mistake
    found while running (a missing model directory, data file or checkpoint; bad data in strict
    mode; an unusable config value) with status 2, any other error (one raised in the data
    pipeline names the record) with status 1. The traceback goes to the log file."""

    @functools.wraps(main)
    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:  # noqa: BLE001 - every error ends the run with one line
            cause = root_cause(e)
            status = USAGE_ERROR if isinstance(cause, _user_errors()) else RUN_ERROR
            _log_traceback(e, on_terminal=status == RUN_ERROR)
            # A mistake in the command needs no traceback; any other error names where it is.
            where = f" (traceback in {_log_path})" if _log_path and status == RUN_ERROR else ""
            # Only a run that has loaded JAX can be multi-host (and name a lost process).
            mesh = _mesh() if "jax" in sys.modules else None
            line = (mesh and mesh.lost_process_line(e)) or error_line(cause)
            print(f"error: {line}{where}", file=sys.stderr, flush=True)
            if mesh is not None:
                mesh.exit_now(status)  # at once in a multi-host run; sys.exit otherwise
            sys.exit(status)

    return wrapped


class _ConsoleFilter(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        if self.level <= logging.INFO:
            return record.levelno >= self.level
        if record.levelno >= max(self.level, logging.ERROR):
            return True
        if record.levelno >= logging.INFO and record.name.startswith(CONSOLE_INFO_LOGGERS):
            return True
        return record.name.startswith(OUR_LOGGERS) and record.levelno >= self.level


class _StartupStash(logging.Filter):
    """On the terminal's handler until the log file opens: other libraries' records (JAX's
    plugin discovery, say) are kept for the file instead of shown."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(OUR_LOGGERS):
            return True
        self.records.append(record)
        return False


def setup_console(console_level: str = "warning") -> int:
    """Terminal: our warnings, every library's errors, and the trainer's own INFO lines (stages,
    evaluations); `--verbosity=0` (or `console_level="info"`) shows every library's INFO and
    warnings. Until `open_log_file`, other libraries' lines are held for the file. Returns the
    console's logging level."""
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
    # The terminal, also while native_logs holds descriptor 2.
    if isinstance(handler, logging.StreamHandler):
        handler.setStream(sys.stderr)
    else:
        handler.python_handler.stream = sys.stderr
    for f in list(handler.filters):
        if isinstance(f, _ConsoleFilter | _StartupStash):
            handler.removeFilter(f)
    handler.addFilter(_ConsoleFilter(level))
    if level > logging.INFO:
        handler.addFilter(_StartupStash())
    return level


class _ThroughRoot(logging.Filter):
    """On a library logger with a terminal handler of its own: its records go through the root
    logger's handlers (ours) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger().handle(record)
        return False


def _adopt_transformers_logging() -> None:
    """transformers logs to a terminal handler of its own (from its import on: "[transformers]
    PyTorch was not found ..." without PyTorch); its records go through our handlers instead."""
    logger = logging.getLogger("transformers")
    through_root = _ThroughRoot()
    logger.addFilter(through_root)  # what its import logs
    try:
        from transformers.utils import logging as transformers_logging
    finally:
        logger.removeFilter(through_root)
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()


def open_log_file(workdir: str | None, console_level: int = logging.WARNING) -> str | None:
    """The log file WORKDIR/train.log (process 0: train.log, others: train.<process>.log): every
    logger at INFO, Python's warnings, the library lines held since start-up and, unless the
    console shows INFO, the C++ libraries' lines (`jaxvrl.native_logs`). Returns its path."""
    global _log_path
    root = logging.getLogger()
    index = 0
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        import jax

        index = jax.process_index()  # starts the backends (still held: plugin discovery logs)
    stashes = [f for h in root.handlers for f in h.filters if isinstance(f, _StartupStash)]
    for h in root.handlers:
        for f in stashes:
            h.removeFilter(f)
    if not workdir:
        native_logs.release()
        return None
    path = os.path.join(workdir, "train.log" if index == 0 else f"train.{index}.log")
    file_handler = logging.FileHandler(path)
    file_handler.setLevel(logging.INFO)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    for record in (r for stash in stashes for r in stash.records):
        if record.levelno >= file_handler.level:
            file_handler.handle(record)
    logging.captureWarnings(True)  # library warnings: the "py.warnings" logger, the file only
    _adopt_transformers_logging()
    if console_level <= logging.INFO:
        native_logs.release()  # every line on the terminal, as asked
    else:
        native_logs.route(path)
    _log_path = path
    return path
