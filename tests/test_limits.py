"""Memory a peer can make a replyer hold: measured on a CLI process.

A replyer's socket queues at most ``rcvhwm`` complete requests per peer (its default is 8)
plus the one libzmq is reading, each at most ``max_message_bytes``; a peer sending
more is held back by TCP, never buffered. See the README's Guarantees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from conftest import write_json
from service_framework.codec import MessageCodec

CAP = 256 * 1024
FRAME = 250_000  # under the cap, so the replyer keeps the connection

HOLDING_REPLYER = f"""
import threading
from service_framework import get_logger
LOG = get_logger()
release = threading.Event()

def on_request(args, to_send, config):
    LOG.info('holding')
    release.wait(120)  # busy for the whole test: requests queue behind this one
    return args

connection_models = {{'in': {{'reply': {{
    'connection_type': 'replyer',
    'required_creation_arguments': {{'connection_function': on_request}},
    'optional_creation_arguments': {{'socket_options': {{'max_message_bytes': {CAP}}}}},
    'required_arguments': {{'text': str}},
    'required_return_arguments': {{'text': str}},
}}}}}}
"""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_flooding_peer_makes_a_busy_replyer_hold_at_most_rcvhwm_requests(
    write_service, tmp_path, cli, zctx
) -> None:
    write_service("holding", HOLDING_REPLYER)
    write_json(tmp_path / "addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    replyer = cli("-s", "holding.py", "-a", "addresses.json")
    address = replyer.ready()["reply"]
    peer: zmq.Socket[Any] = zctx.socket(zmq.DEALER)  # a peer that does not wait for replies
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.SNDHWM, 1)
    peer.setsockopt(zmq.SNDTIMEO, 2000)
    try:
        peer.connect(f"tcp://{address}")
        peer.send_multipart([b"", MessageCodec.encode_request({"text": "first"}, "w")])
        replyer.wait_for("holding")
        pid = replyer.popen.pid
        before = rss_bytes(pid)
        offered = 400  # 100 MB: far more than the bound
        sent = 0
        try:
            for _ in range(offered):
                peer.send_multipart([b"", b"x" * FRAME])
                sent += 1
        except zmq.Again:
            pass  # held back: the replyer's queue for this peer is full, and TCP with it
        grown = rss_bytes(pid) - before
    finally:
        peer.close(linger=0)
    bound = (8 + 1) * CAP  # (rcvhwm + 1) x max_message_bytes
    print(f"peer sent {sent} x {FRAME} bytes before being held back; replyer RSS +{grown:,}")
    assert sent < offered, "the peer was never held back"
    # Some slack for libzmq's own buffers and the allocator; the unbounded case is 10x this.
    assert grown < bound + 8 * 1024 * 1024, (grown, bound)
    assert replyer.popen.poll() is None
