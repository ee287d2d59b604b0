"""``rawcap``: one command line for every service.

Each service package contributes its commands through ``<package>.cli.add_commands``; this
module only owns the global options, configuration loading, error reporting and the event
loop. A command whose package has not landed yet is still listed and exits non-zero saying
so, rather than pretending to work.

Start-up imports only what the command line needs: when it names a command, only the module
providing that command is imported (``rawcap pcap export`` never loads the Kubernetes client,
the dissector or the object store); ``rawcap --help`` and a command nobody provides load them
all, so that help and "invalid choice" list every command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from schemas.errors import RawcapError

if TYPE_CHECKING:
    from .config import Config

__all__ = ("build_parser", "main")

#: (module providing add_commands, commands it provides, issue that brings them)
COMMAND_MODULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("rawcap.stack.cli", ("stack",), "local stack"),
    ("capture.cli", ("capture",), "capture agent"),
    ("enrich.cli", ("k8s-watch", "enrich", "flows"), "Kubernetes layer"),
    ("archiver.cli", ("archive",), "archiver"),
    ("dissector.cli", ("dissect", "calls", "dissection"), "delayed dissection"),
    ("forensics.cli", ("consume", "pcap", "snapshot"), "forensics"),
    ("history.cli", ("trends", "anomalies"), "historical investigations"),
)

#: ``inspect.CO_COROUTINE`` (``inspect`` itself costs a few ms of start-up).
_CO_COROUTINE = 0x80

#: Options whose value may start with "-" (relative times like ``--from -5m``).
TIME_OPTIONS = ("--from", "--to", "--since", "--until", "--baseline")

DESCRIPTION = """\
Continuous L4 packet capture for Kubernetes, streamed over Kafka.

The node agent (capture) fills a bounded FIFO buffer and ships zstd batches to
rawcap.packets; consumers (archive, dissect, enrich, forensics) scale on their own.
Configuration: --config values.yaml < RAWCAP_* environment < flags.
Times: ISO-8601 (2026-11-23T10:00:00Z), now, or relative (-5m, -1h30m).
"""


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    d: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config", metavar="VALUES.yaml", default=d,
                        help="values file (Helm-chart keys: tap.*, kafka.*, archive.*, ...)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT", default=d,
                        help="Kafka bootstrap servers (env RAWCAP_BOOTSTRAP)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default=d, help="log level (default info)")
    parser.add_argument("--log-format", choices=("text", "json"), default=d,
                        help="log format on stderr (default text)")


def _not_available(name: str, what: str) -> Any:
    def run(args: argparse.Namespace, cfg: Config) -> int:
        raise RawcapError(f"'rawcap {name}' is not available yet: the {what} has not landed")

    return run


def _config_show(args: argparse.Namespace, cfg: Config) -> int:
    import json

    import yaml

    cfg = cfg.masked()  # passwords are never printed
    if args.json:
        print(json.dumps(cfg.as_dict(), default=str))
    else:
        sys.stdout.write(yaml.safe_dump(cfg.as_tree(), sort_keys=True))
        if args.sources:
            for key, value in cfg.as_dict().items():
                print(f"# {key} = {value!r}  ({cfg.source(key)})")
    return 0


#: Global options that take a value (``--config FILE``), for :func:`_command_of`.
_VALUE_OPTIONS = ("--config", "--bootstrap", "--log-level", "--log-format")


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of a command line (its first positional argument), if any."""
    it = iter(argv)
    for arg in it:
        if arg == "--":
            return next(it, None)
        if arg in _VALUE_OPTIONS:
            next(it, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``argv``, only the modules its command needs are imported."""
    command = _command_of(argv) if argv is not None else None
    modules = COMMAND_MODULES
    if command is not None:
        modules = tuple(m for m in COMMAND_MODULES if command in m[1]) or (
            () if command == "config" else COMMAND_MODULES
        )
    parser = argparse.ArgumentParser(
        prog="rawcap", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(parser, suppress=False)
    parent = argparse.ArgumentParser(add_help=False)
    _global_options(parent, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for module_name, names, what in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            for name in names:
                p = sub.add_parser(name, parents=[parent], help=f"(not available yet: {what})",
                                   description=f"rawcap {name}: not available yet ({what}).")
                p.set_defaults(func=_not_available(name, what), placeholder=True)
            continue
        module.add_commands(sub, parent)

    config = sub.add_parser("config", parents=[parent], help="show the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", parents=[parent],
                                 help="print the effective configuration (defaults < file < env < flags)")
    show.add_argument("--json", action="store_true", help="one JSON object with dotted keys")
    show.add_argument("--sources", action="store_true", help="also say where each value came from")
    show.set_defaults(func=_config_show)
    return parser


def _is_async(func: Any) -> bool:
    """``inspect.iscoroutinefunction`` without importing ``inspect``."""
    import functools

    while isinstance(func, functools.partial):
        func = func.func
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    return code is not None and bool(code.co_flags & _CO_COROUTINE)


def _fix_time_args(argv: Sequence[str]) -> list[str]:
    """Join ``--from -5m`` into ``--from=-5m``: argparse would take ``-5m`` for an option."""
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg in TIME_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and argv[i + 1][1:2].isdigit():
            out.append(f"{arg}={argv[i + 1]}")
            next(it, None)
        else:
            out.append(arg)
    return out


#: How long :func:`_exit_now` waits for other non-daemon threads to end.
_THREADS_GRACE = 0.2


def _exit_now(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown, when that is safe.

    A finished command that opted in (``set_defaults(fast_exit=True)``: ``pcap export``) has
    closed and renamed its output and stopped its clients and threads; what is left for
    finalization is freeing every object and module one by one (a large heap of fetch buffers
    and the imported modules; docs/forensics.md has what it cost), which changes nothing
    outside the process. So: flush what Python still buffers (stdout, stderr, logging
    handlers) and ``os._exit``. Other non-daemon threads are waited for, as finalization
    would, but for ``_THREADS_GRACE`` seconds only (AnyIO's idle workers are told to stop
    when the event loop closes and end right after it); one still running then means work
    this function knows nothing about, and the normal exit follows. So it does when stdout
    cannot be flushed (the normal exit then reports it as before; a reader that went away
    raises ``BrokenPipeError`` for the caller's handler), and with the test hook ``no-fast-exit``.
    """
    import threading
    import time

    from .hooks import hook

    main = threading.main_thread()
    if hook("no-fast-exit") or threading.current_thread() is not main:
        return
    deadline = time.monotonic() + _THREADS_GRACE
    for t in threading.enumerate():
        if t is not main and not t.daemon:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError:
        return
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()  # flushes (and closes) every handler, as atexit would
    try:
        sys.stderr.flush()
    except OSError:
        pass  # nobody reads stderr any more: nothing a normal exit could do about it either
    os._exit(code)


def _kafka_refusal(exc: BaseException, cfg: Config | None) -> str | None:
    """Why Kafka refused (a wrong password, an untrusted CA, a denied topic), in one line;
    None for any other error (rawcap/kafka/_diag.py, imported only when Kafka was used)."""
    if cfg is None or ("aiokafka" not in sys.modules and "Kafka" not in str(exc)):
        return None
    from .kafka import kafka_cause

    return kafka_cause(exc, cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code. With ``argv`` None (the process's own command
    line, the ``rawcap`` script), a command that opted in ends the process right here on
    success (:func:`_exit_now`) instead of returning."""
    own_process = argv is None
    argv = _fix_time_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "placeholder", False):
        parser.error("unrecognized arguments: " + " ".join(unknown))
    cfg = None
    try:
        from .config import load_config
        from .log import setup_logging

        overrides = {"kafka.bootstrap": getattr(args, "bootstrap", None),
                     "log.level": getattr(args, "log_level", None),
                     "log.format": getattr(args, "log_format", None)}
        cfg = load_config(getattr(args, "config", None) or os.environ.get("RAWCAP_CONFIG"),
                          overrides)
        setup_logging(cfg.get("log.level"), cfg.get("log.format"),
                      service=getattr(args, "service", False))
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            # What a command starts before the event loop and its own modules are imported
            # (set_defaults(prepare=...)): pcap export's Kafka lookups run in a thread
            # meanwhile, so the broker answers while this process is still setting up.
            prepare(args, cfg)
        func = args.func
        if _is_async(func) and getattr(args, "plain_asyncio", False):
            # A command that needs nothing of anyio's runner (set_defaults(plain_asyncio=True):
            # pcap export) runs on asyncio's own: anyio.run imports anyio's asyncio backend,
            # ~25 ms of start-up. anyio still works inside it, where a fallback path uses it.
            import asyncio

            code = asyncio.run(func(args, cfg))
        elif _is_async(func):
            import anyio

            code = anyio.run(func, args, cfg)
        else:
            code = func(args, cfg)
        code = int(code or 0)
        if own_process and getattr(args, "fast_exit", False):
            _exit_now(code)
        return code
    except RawcapError as exc:
        print(f"rawcap: error: {_kafka_refusal(exc, cfg) or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        cause = _kafka_refusal(exc, cfg)
        if cause is None:
            raise
        print(f"rawcap: error: {cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Reader went away (``| head``): not an error; keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
