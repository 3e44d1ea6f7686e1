"""Logs a peer cannot forge or flood: escaped one-line records, capped workflow ids,
rate-limited rejections, and a log file rotated on size as well as hourly."""

from __future__ import annotations

import logging
import re
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from conftest import after_markers, sync, write_json
from service_framework import InlineServices, Service
from service_framework.codec import WORKFLOW_ID_MAX_CHARS, MessageCodec
from service_framework.logs import clip, configure_logging, printable
from service_framework.workflow import flow_of

# The start of every record the framework writes (LOG_FORMAT): a forged line would not
# start like this, or would start like this on a line of its own.
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ \[")
FORGED = "\n2026-01-01 00:00:00,000 ERROR service_framework [w] FORGED \x1b[2J"
FORGED_ESCAPED = "\\n2026-01-01 00:00:00,000 ERROR service_framework [w] FORGED \\x1b[2J"

REPLYER = """
import queue
seen = queue.Queue()

def on_request(args, to_send, config):
    seen.put(args)
    if args['text'] == 'explode':
        raise ValueError('cannot handle ' + args['note'])
    return {'text': args['text']}

connection_models = {'in': {'req': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_request},
    'required_arguments': {'text': str},
    'optional_arguments': {'note': str},
    'required_return_arguments': {'text': str},
}}}
"""


@pytest.fixture
def log_file(tmp_path: Path) -> Any:
    """Framework logging to a file for the test (console off), restored afterwards."""
    path = tmp_path / "svc.log"
    configure_logging(console_loglevel=None, log_path=path, file_loglevel="INFO")
    yield path
    configure_logging(console_loglevel="WARNING")


def ask(zctx: zmq.Context[Any], address: str, request: Any) -> Any:
    """Send one raw request frame (msgpack of ``request``) and return the decoded reply."""
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"tcp://{address}")
    try:
        sock.send(msgspec.msgpack.encode(request))
        return msgspec.msgpack.decode(sock.recv())
    finally:
        sock.close(linger=0)


def assert_one_line_per_record(text: str) -> None:
    """Every line that carries the forged text is a real record (or a traceback's
    exception line) with the text escaped in it: no forged record starts a line."""
    lines = [line for line in text.splitlines() if "FORGED" in line]
    assert lines, text
    for line in lines:
        assert FORGED_ESCAPED in line, line
        assert RECORD.match(line) or line.startswith("ValueError: "), line


def test_peer_text_cannot_forge_log_lines(write_service, run_service, zctx, log_file) -> None:
    service = run_service(
        write_service("svc", REPLYER), addresses={"in": {"req": {"replyer": "127.0.0.1:0"}}}
    )
    address = service.address("req")
    # An unknown key and a workflow id with a newline and a terminal escape in them...
    bad_key = ask(zctx, address, {"v": 1, "workflow_id": "w1", "args": {"text": "a", FORGED: 1}})
    assert bad_key["error"]["type"] == "ValidationError"
    assert "\n" not in bad_key["error"]["message"]
    in_id = ask(zctx, address, {"v": 1, "workflow_id": "id" + FORGED, "args": {"text": "b"}})
    assert in_id["return_args"] == {"text": "b"}
    # ...a handler error quoting the peer's text (logged with its traceback)...
    failed = ask(
        zctx, address, {"v": 1, "workflow_id": "w3", "args": {"text": "explode", "note": FORGED}}
    )
    assert failed["error"]["type"] == "ValueError"
    # ...and a bad frame's id in the rejection line.
    ask(zctx, address, {"v": 1, "workflow_id": "id" + FORGED, "args": {"text": 5}})
    logging.getLogger("user.code").warning("a user line quoting a peer: %s", FORGED)
    service.stop()
    text = log_file.read_text()
    assert_one_line_per_record(text)
    assert "rejected a message [w1]: svc: req.args: unexpected key '" + FORGED_ESCAPED in text
    assert "rejected a message [id" + FORGED_ESCAPED + "]" in text
    assert "raised ValueError: cannot handle " + FORGED_ESCAPED in text
    # The traceback keeps its lines; its exception line is escaped too.
    assert "ValueError: cannot handle " + FORGED_ESCAPED in text.splitlines()


def test_oversized_workflow_id_is_refused_and_its_log_line_is_short(
    write_service, run_service, zctx, log_file
) -> None:
    service = run_service(
        write_service("svc", REPLYER), addresses={"in": {"req": {"replyer": "127.0.0.1:0"}}}
    )
    huge = "w" * (4 * 1024 * 1024)
    reply = ask(zctx, service.address("req"), {"v": 1, "workflow_id": huge, "args": {"text": "x"}})
    assert reply["error"] == {
        "type": "DecodeError",
        "message": "workflow_id of 4,194,304 characters is longer than the 256-character cap",
    }
    assert reply["workflow_id"] == ""  # not echoed
    assert service.module.seen.empty()  # the handler never ran
    # An id at the cap is a normal request.
    at_cap = "w" * WORKFLOW_ID_MAX_CHARS
    reply = ask(
        zctx, service.address("req"), {"v": 1, "workflow_id": at_cap, "args": {"text": "y"}}
    )
    assert reply["return_args"] == {"text": "y"} and reply["workflow_id"] == at_cap
    service.stop()
    lines = [line for line in log_file.read_text().splitlines() if "rejected a" in line]
    assert len(lines) == 1 and len(lines[0]) < 300, lines
    assert service.runtime.stats()["req"].rejected == 1


def test_rejections_are_logged_rate_limited_and_counted_exactly(
    write_service, run_service, zctx, log_file
) -> None:
    service = run_service(
        write_service("svc", REPLYER), addresses={"in": {"req": {"replyer": "127.0.0.1:0"}}}
    )
    sock = zctx.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(f"tcp://{service.address('req')}")
    held = re.compile(r"\(([\d,]+) more rejected since the last such line\)$")

    def reject_one() -> list[str]:
        sock.send(b"\xc1 not msgpack")
        assert msgspec.msgpack.decode(sock.recv())["error"]["type"] == "DecodeError"
        return [line for line in log_file.read_text().splitlines() if "rejected a mess" in line]

    sent = 0
    for _ in range(300):
        lines = reject_one()
        sent += 1
    # A burst, then a few lines a second: far fewer lines than rejections.
    assert 20 <= len(lines) < 100
    # The next line written says how many were not logged (the line is written before the
    # reply is sent, so the count is exact once it is there).
    while not held.search(lines[-1]):
        assert sent < 10_000, "no line ever reported the rejections it held back"
        lines = reject_one()
        sent += 1
    sock.close(linger=0)
    assert service.runtime.stats()["req"].rejected == sent
    reported = sum(int(m.group(1).replace(",", "")) for m in map(held.search, lines) if m)
    assert len(lines) + reported == sent


def test_framework_ids_stay_within_the_cap_however_deep_the_chain() -> None:
    codec = MessageCodec.workflow_id_of
    root = "a1b2c3d4e5f6-1"
    flow = flow_of(root)
    for hop in range(400):
        for _ in range(hop % 12):
            flow.next_call_id()  # other calls made from the same message
        flow = flow.child()
        assert len(flow.id) <= WORKFLOW_ID_MAX_CHARS
        assert flow.id.startswith(root)
    assert "~" in flow.id  # folded on the way, still greppable by its root
    frame = MessageCodec.encode_request({}, flow.id)
    assert codec(frame) == flow.id


def test_clip_and_printable() -> None:
    assert printable("plain text, é and ü") == "plain text, é and ü"
    assert (
        printable("a\nb\r\tc\x1b[0m\x85\u2028\u202e") == "a\\nb\\r\\tc\\x1b[0m\\x85\\u2028\\u202e"
    )
    assert clip("x" * 1000, 10) == "xxxxxxxxxx...(1,000 chars)"
    assert clip(ValueError("v\n"), 10) == "v\\n"


# --------------------------------------------------------------------------- rotation

TALKER = """
import logging
log = logging.getLogger('talker')

config_model = {'required': {'lines': int}}
connection_models = {'in': {}, 'out': {}}

def main(to_send, config):
    for i in range(config['lines']):
        log.info('line %05d %s', i, 'x' * 60)
"""


def records(paths: list[Path]) -> list[str]:
    return [line for path in paths for line in path.read_text().splitlines() if " talker " in line]


def test_log_file_rolls_over_at_the_size_cap(cli, write_service, tmp_path) -> None:
    service = write_service("talker", TALKER)
    addresses = write_json(tmp_path / "addresses.json", {"in": {}, "out": {}})
    log = tmp_path / "logs" / "talker.log"
    args = ["-s", str(service), "-a", str(addresses), "-m", "-cl", "WARNING", "-l", str(log)]
    process = cli(*args, "--log_max_bytes", "2000", "-bc", "100", "--lines", "300")
    assert process.finish() == 0, process.log()
    backups = sorted(log.parent.glob("talker.log.*"))
    # ~130 bytes a line: 300 lines are ~39 kB, so about twenty files of <= 2000 bytes.
    assert len(backups) >= 15, backups
    assert all(re.fullmatch(r"talker\.log\.\d{4}-\d\d-\d\d_\d\d\.\d+", p.name) for p in backups)
    for path in [log, *backups]:
        assert path.stat().st_size <= 2000, path
    # Nothing lost, nothing repeated: every line once, in order across the parts.
    parts = [*sorted(backups, key=lambda p: int(p.name.rsplit(".", 1)[1])), log]
    assert [line.split(" line ")[1][:5] for line in records(parts)] == [
        f"{i:05d}" for i in range(300)
    ]


def test_size_rotation_keeps_backup_count_files(cli, write_service, tmp_path) -> None:
    service = write_service("talker", TALKER)
    addresses = write_json(tmp_path / "addresses.json", {"in": {}, "out": {}})
    log = tmp_path / "talker.log"
    args = ["-s", str(service), "-a", str(addresses), "-m", "-cl", "WARNING", "-l", str(log)]
    process = cli(*args, "--log_max_bytes", "2000", "-bc", "3", "--lines", "300")
    assert process.finish() == 0, process.log()
    backups = sorted(tmp_path.glob("talker.log.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    assert len(backups) == 3
    # The newest lines are the ones kept, and the last one is in the current file.
    assert records([*backups, log])[-1].split(" line ")[1][:5] == "00299"


def test_log_max_bytes_on_the_object_interfaces(tmp_path, write_service) -> None:
    inline_log, service_log = tmp_path / "inline.log", tmp_path / "service.log"
    try:
        inline = InlineServices(console_loglevel=None, log_path=inline_log, log_max_bytes=500)
        driver = types.ModuleType("talker_driver")

        def talk(to_send: Any, config: Any) -> None:
            for i in range(30):
                logging.getLogger("talker").warning("line %d %s", i, "y" * 50)

        driver.main = talk  # type: ignore[attr-defined]
        inline.set_main_service_by_module("driver", driver)
        inline.start()
        service = Service(
            write_service("talker", TALKER),
            addresses={"in": {}, "out": {}},
            config={"lines": 30},
            console_loglevel=None,
            log_path=service_log,
            log_max_bytes=500,
        )
        assert service.run_service_as_main_blocking() == 0
    finally:
        configure_logging(console_loglevel="WARNING")
    for log in (inline_log, service_log):
        assert list(tmp_path.glob(log.name + ".*")), log
        assert log.stat().st_size <= 500
    with pytest.raises(ValueError, match="log_max_bytes must be an int >= 0"):
        InlineServices(console_loglevel=None, log_max_bytes=-1)
    configure_logging(console_loglevel="WARNING")


ODD_SUBSCRIBER = """
import queue
received = queue.Queue()

class Odd(Exception):
    def __str__(self):
        raise RuntimeError('no text')

def on_tick(args, to_send, config):
    if args['n'] == 1:
        raise Odd()
    received.put(args)

connection_models = {'in': {'ticks': {
    'connection_type': 'subscriber',
    'required_creation_arguments': {'connection_function': on_tick},
    'optional_creation_arguments': {'is_binder': True},
    'required_arguments': {'n': int},
}}}
"""


def test_an_error_whose_str_fails_is_still_logged(
    write_service, run_service, zctx, log_file
) -> None:
    service = run_service(
        write_service("svc", ODD_SUBSCRIBER),
        addresses={"in": {"ticks": {"subscriber": "127.0.0.1:0"}}},
    )
    raw = zctx.socket(zmq.PUB)
    raw.connect(f"tcp://{service.address('ticks')}")
    received = service.module.received

    def frame(n: int) -> bytes:
        return msgspec.msgpack.encode(["", 1, "w", {"n": n}, None])

    sync(lambda marker: raw.send(frame(marker["n"])), received, {"n": 0})
    raw.send(frame(1))  # the handler raises an exception that cannot be shown
    raw.send(frame(2))
    assert after_markers(received, {"n": 0}) == {"n": 2}  # and the service goes on
    raw.close(linger=0)
    service.stop()
    assert service.runtime.stats()["ticks"].failed == 1
    assert "handler of connection 'ticks' raised Odd: <Odd whose str() failed>" in (
        log_file.read_text()
    )
