"""Which client-library lines reach stderr: one-shot commands print one error line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from rawcap.log import setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root, client = logging.getLogger(), logging.getLogger("aiokafka")
    handlers, level, client_level = root.handlers[:], root.level, client.level
    yield
    root.handlers[:], root.level = handlers, level
    client.setLevel(client_level)


@pytest.mark.parametrize(("level", "service", "shown"), [
    ("info", False, False),   # export, consume: rawcap's one line says it all
    ("debug", False, True),   # unless asked for everything
    ("info", True, True),     # capture, archive...: aiokafka's retries are the live signal
])
def test_client_errors_are_kept_out_of_one_shot_commands(level: str, service: bool,
                                                         shown: bool) -> None:
    setup_logging(level, service=service)
    assert logging.getLogger("aiokafka").isEnabledFor(logging.ERROR) is shown
    assert logging.getLogger("rawcap.export").isEnabledFor(logging.ERROR)


@pytest.mark.parametrize(("argv", "service"), [
    (["capture", "--iface", "eth0"], True),
    (["archive", "--url", "file:///tmp/a"], True),
    (["enrich"], True),
    (["k8s-watch"], True),
    (["dissect", "--follow"], True),
    (["pcap", "export", "--from", "-5m", "-o", "x.pcapng"], False),
    (["consume", "--from", "-5m"], False),
])
def test_long_running_commands_are_services(argv: list[str], service: bool) -> None:
    from rawcap.cli import _fix_time_args, build_parser

    argv = _fix_time_args(argv)
    args, _ = build_parser(argv).parse_known_args(argv)
    assert getattr(args, "service", False) is service
