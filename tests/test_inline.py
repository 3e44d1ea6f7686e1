"""InlineServices: the seed page's API, fan-out, chains, one-reply rule, validation."""

from __future__ import annotations

import importlib
import sys

import pytest

from service_framework import (
    InlineServices,
    RemoteError,
    UnknownConnectionError,
    ValidationError,
)

REQUESTER = """
results = []

def setup_config(config):
    config['num_req_to_send'] = int(config.get('num_req_to_send', 2))
    return config

def main(to_send, config):
    for n in range(config['num_req_to_send']):
        results.append(to_send('request', {'to_echo': f'hello {n}'}))
    return len(results)

config_model = {'optional': {'num_req_to_send': int}}
connection_models = {'out': {'request': {
    'connection_type': 'requester',
    'required_arguments': {'to_echo': str},
    'required_return_arguments': {'echoed': str},
}}}
"""

REPLYER = """
from service_framework.workflow import current_workflow_id
seen = []

def on_request(args, to_send, config):
    seen.append((args, current_workflow_id()))
    return {'echoed': config.get('response_text', '') + args['to_echo']}

config_model = {'optional': {'response_text': str}}
connection_models = {'in': {'reply': {
    'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on_request},
    'required_arguments': {'to_echo': str},
    'required_return_arguments': {'echoed': str},
}}}
"""


@pytest.fixture
def paths(write_service):
    return {
        "requester": str(write_service("requester", REQUESTER)),
        "replyer": str(write_service("replyer", REPLYER)),
    }


def inline() -> InlineServices:
    return InlineServices(console_loglevel="WARNING")


def test_seed_example_from_paths(paths) -> None:
    services = inline()
    services.set_main_service("requester", paths["requester"])
    services.add_service("replyer", paths["replyer"])
    services.add_relation("requester", "request", "replyer", "reply")
    assert services.start() == 2
    requester = services.get_service_module("requester")
    assert requester.results == [{"echoed": "hello 0"}, {"echoed": "hello 1"}]


def test_by_module_with_configs_and_paths_accepted(paths, tmp_path, monkeypatch) -> None:
    # Another test's service file may be imported as "replyer" already: import this one.
    monkeypatch.delitem(sys.modules, "replyer", raising=False)
    sys.path.insert(0, str(tmp_path))
    try:
        replyer = importlib.import_module("replyer")
    finally:
        sys.path.remove(str(tmp_path))
    services = inline()
    # The seed page passes a path to *_by_module; that works too.
    services.set_main_service_by_module("requester", paths["requester"], {"num_req_to_send": 3})
    services.add_service_by_module("replyer", replyer, {"response_text": "TO_SEND "})
    services.add_relation("requester", "request", "replyer", "reply")
    services.start()
    assert services.get_service_module("requester").results[-1] == {"echoed": "TO_SEND hello 2"}
    assert services.get_service_config("requester") == {"num_req_to_send": 3}
    assert services.get_service_config("replyer") == {"response_text": "TO_SEND "}
    assert services.get_service_module("replyer") is replyer


def test_misuse_raises_value_error(paths) -> None:
    services = inline()
    with pytest.raises(ValueError, match="no main service"):
        services.start()
    services.set_main_service("requester", paths["requester"])
    with pytest.raises(ValueError, match="main service is already set to 'requester'"):
        services.set_main_service("other", paths["requester"])
    with pytest.raises(ValueError, match="already added"):
        services.add_service("requester", paths["replyer"])
    import json

    with pytest.raises(ValueError, match=r"expected a path to a \.py file, got the module json"):
        services.add_service("mod", json)  # type: ignore[arg-type]
    services.add_service("replyer", paths["replyer"])
    with pytest.raises(ValueError, match="no service named 'ghost'"):
        services.add_relation("requester", "request", "ghost", "reply")
    with pytest.raises(ValueError, match="has no outbound connection 'nope'"):
        services.add_relation("requester", "nope", "replyer", "reply")
    with pytest.raises(ValueError, match="has no inbound connection 'nope'"):
        services.add_relation("requester", "request", "replyer", "nope")
    with pytest.raises(ValueError, match="no service named 'ghost'"):
        services.get_service_config("ghost")
    with pytest.raises(ValueError, match="no service named 'ghost'"):
        services.get_service_module("ghost")
    services.add_relation("requester", "request", "replyer", "reply")
    with pytest.raises(ValueError, match="already exists"):
        services.add_relation("requester", "request", "replyer", "reply")


def test_a_connection_without_relation_is_a_clear_error(paths) -> None:
    services = inline()
    services.set_main_service("requester", paths["requester"])
    with pytest.raises(ValueError, match=r"requester\.request has no relation: call add_relation"):
        services.start()


def test_unknown_connection_name(paths, write_service) -> None:
    main = write_service("bad_main", REQUESTER.replace("to_send('request'", "to_send('requst'"))
    services = inline()
    services.set_main_service("requester", str(main))
    services.add_service("replyer", paths["replyer"])
    services.add_relation("requester", "request", "replyer", "reply")
    with pytest.raises(UnknownConnectionError, match=r"no outbound connection 'requst'.*'request'"):
        services.start()


def test_arguments_validated_by_sender_and_receiver(write_service, paths) -> None:
    # The sender's model allows `extra`; the receiver's does not: over the wire the
    # receiver rejects it, and so does inline - as a RemoteError from the far side.
    loose = REQUESTER.replace(
        "'required_arguments': {'to_echo': str},",
        "'required_arguments': {'to_echo': str}, 'optional_arguments': {'extra': int},",
    )
    loose = loose.replace("{'to_echo': f'hello {n}'}", "{'to_echo': f'hello {n}', 'extra': 1}")
    services = inline()
    services.set_main_service("requester", str(write_service("loose", loose)))
    services.add_service("replyer", paths["replyer"])
    services.add_relation("requester", "request", "replyer", "reply")
    with pytest.raises(RemoteError) as caught:
        services.start()
    assert caught.value.remote_type == "ValidationError"
    assert "replyer: reply.args: unexpected key 'extra' at $" in caught.value.remote_message
    assert services.get_service_module("replyer").seen == []

    strict = inline()
    bad = REQUESTER.replace("{'to_echo': f'hello {n}'}", "{'to_echo': n}")
    strict.set_main_service("requester", str(write_service("bad_args", bad)))
    strict.add_service("replyer", paths["replyer"])
    strict.add_relation("requester", "request", "replyer", "reply")
    with pytest.raises(ValidationError, match=r"requester: request\.args: expected str, got int"):
        strict.start()


def test_return_validated_on_both_sides(write_service, paths) -> None:
    wrong = REPLYER.replace("return {'echoed':", "return {'echoed': 1, 'x':")
    services = inline()
    services.set_main_service("requester", paths["requester"])
    services.add_service("replyer", str(write_service("wrong", wrong)))
    services.add_relation("requester", "request", "replyer", "reply")
    with pytest.raises(RemoteError) as caught:
        services.start()
    assert caught.value.remote_type == "ValidationError"
    assert "replyer: reply.return_args:" in caught.value.remote_message

    # Receiver fine, but the requester's own return model disagrees: a local error.
    narrow = REQUESTER.replace(
        "'required_return_arguments': {'echoed': str}",
        "'required_return_arguments': {'echoed': int}",
    )
    services = inline()
    services.set_main_service("requester", str(write_service("narrow", narrow)))
    services.add_service("replyer", paths["replyer"])
    services.add_relation("requester", "request", "replyer", "reply")
    with pytest.raises(
        ValidationError, match=r"requester: request\.return_args: expected int, got str"
    ):
        services.start()


def test_handler_error_is_a_remote_error(write_service, paths) -> None:
    failing = REPLYER.replace("seen.append(", "raise KeyError('nope'); seen.append(")
    services = inline()
    services.set_main_service("requester", paths["requester"])
    services.add_service("replyer", str(write_service("failing", failing)))
    services.add_relation("requester", "request", "replyer", "reply")
    with pytest.raises(RemoteError) as caught:
        services.start()
    assert caught.value.remote_type == "KeyError"
    assert isinstance(caught.value.__cause__, KeyError)


def test_more_than_one_reply_is_a_runtime_error(write_service, paths) -> None:
    services = inline()
    services.set_main_service("requester", paths["requester"])
    services.add_service("one", paths["replyer"])
    services.add_service("two", str(write_service("replyer_two", REPLYER)))
    services.add_relation("requester", "request", "one", "reply")
    services.add_relation("requester", "request", "two", "reply")
    with pytest.raises(RuntimeError, match="2 handlers that each returned a reply"):
        services.start()


def test_several_replyers_share_the_workflow_id_and_count_their_own_calls(
    write_service, paths
) -> None:
    relay = """
from service_framework.workflow import current_workflow_id
ids = []
def on_relay(args, to_send, config):
    ids.append(current_workflow_id())
    answer = to_send('down', args)
    return answer if config.get('answers') else None
config_model = {'optional': {'answers': bool}}
connection_models = {
    'in': {'reply': {'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': on_relay},
        'required_arguments': {'to_echo': str}, 'optional_return_arguments': {'echoed': str}}},
    'out': {'down': {'connection_type': 'requester',
        'required_arguments': {'to_echo': str}, 'required_return_arguments': {'echoed': str}}},
}
"""
    services = inline()
    services.set_main_service("requester", paths["requester"], {"num_req_to_send": 1})
    services.add_service("quiet", str(write_service("quiet", relay)))
    services.add_service("answering", str(write_service("answering", relay)), {"answers": True})
    services.add_service("leaf", paths["replyer"])
    services.add_relation("requester", "request", "quiet", "reply")
    services.add_relation("requester", "request", "answering", "reply")
    services.add_relation("quiet", "down", "leaf", "reply")
    services.add_relation("answering", "down", "leaf", "reply")
    services.start()
    assert services.get_service_module("requester").results == [{"echoed": "hello 0"}]
    (quiet_id,) = services.get_service_module("quiet").ids
    assert services.get_service_module("answering").ids == [quiet_id]
    leaf_ids = [wid for _, wid in services.get_service_module("leaf").seen]
    assert leaf_ids == [f"{quiet_id}_1", f"{quiet_id}_1"]


PUBLISHER = """
def main(to_send, config):
    for n in range(3):
        assert to_send('fills', {'n': n}) is None
connection_models = {'out': {'fills': {
    'connection_type': 'publisher', 'optional_creation_arguments': {'topic': 'fills'},
    'required_arguments': {'n': int}}}}
"""

SUBSCRIBER = """
got = []
def on_fill(args, to_send, config):
    got.append(args['n'])
    if args['n'] == 1:
        raise RuntimeError('subscriber failure is logged, not raised')
    return {'ignored': True}
connection_models = {'in': {'fills': {
    'connection_type': 'subscriber',
    'required_creation_arguments': {'on_new_message': on_fill},
    'optional_creation_arguments': {'topic': 'fills'},
    'required_arguments': {'n': int}}}}
"""


def test_publisher_fans_out_to_every_subscriber(write_service) -> None:
    services = inline()
    services.set_main_service("pub", str(write_service("pub", PUBLISHER)))
    services.add_service("a", str(write_service("sub_a", SUBSCRIBER)))
    services.add_service("b", str(write_service("sub_b", SUBSCRIBER)))
    services.add_relation("pub", "fills", "a", "fills")
    services.add_relation("pub", "fills", "b", "fills")
    services.start()
    assert services.get_service_module("a").got == [0, 1, 2]
    assert services.get_service_module("b").got == [0, 1, 2]


def test_incompatible_relations_are_refused(write_service, paths) -> None:
    services = inline()
    services.set_main_service("pub", str(write_service("pub", PUBLISHER)))
    services.add_service("replyer", paths["replyer"])
    services.add_service(
        "other",
        str(write_service("sub_other", SUBSCRIBER.replace("'topic': 'fills'", "'topic': 'other'"))),
    )
    with pytest.raises(ValueError, match=r"needs a subscriber, but replyer\.reply is a replyer"):
        services.add_relation("pub", "fills", "replyer", "reply")
    with pytest.raises(
        ValueError, match=r"subscribes to topic 'other' but pub\.fills publishes on 'fills'"
    ):
        services.add_relation("pub", "fills", "other", "fills")


def test_chains_pass_workflow_ids_on(write_service, paths) -> None:
    relay = """
from service_framework.workflow import current_workflow_id
ids = []
def on_relay(args, to_send, config):
    ids.append(current_workflow_id())
    first = to_send('down', args)
    to_send('down', args)
    return first
connection_models = {
    'in': {'reply': {'connection_type': 'replyer',
        'required_creation_arguments': {'connection_function': on_relay},
        'required_arguments': {'to_echo': str}, 'required_return_arguments': {'echoed': str}}},
    'out': {'down': {'connection_type': 'requester',
        'required_arguments': {'to_echo': str}, 'required_return_arguments': {'echoed': str}}},
}
"""
    services = inline()
    services.set_main_service("requester", paths["requester"], {"num_req_to_send": 1})
    services.add_service("relay", str(write_service("relay", relay)))
    services.add_service("leaf", paths["replyer"], {"response_text": "leaf:"})
    services.add_relation("requester", "request", "relay", "reply")
    services.add_relation("relay", "down", "leaf", "reply")
    services.start()
    assert services.get_service_module("requester").results == [{"echoed": "leaf:hello 0"}]
    (relay_id,) = services.get_service_module("relay").ids
    leaf_ids = [wid for _, wid in services.get_service_module("leaf").seen]
    assert leaf_ids == [f"{relay_id}_1", f"{relay_id}_2"]


def test_external_targets_are_called_for_real(write_service) -> None:
    source = """
calls = []
class Client:
    def cancel_order(self, order_id):
        calls.append(order_id)
        return {'order_id': order_id}
CbproClient = Client()
def main(to_send, config):
    return to_send('cancel', {'order_id': 'o-1'})
connection_models = {'out': {'cancel': {
    'connection_type': 'external_target',
    'required_creation_arguments': {'target': 'CbproClient.cancel_order'},
    'required_arguments': {'order_id': str},
    'required_return_arguments': {'order_id': str}}}}
"""
    services = inline()
    services.set_main_service("ext", str(write_service("ext", source)))
    assert services.start() == {"order_id": "o-1"}
    assert services.get_service_module("ext").calls == ["o-1"]


def test_init_functions_run_before_main(write_service) -> None:
    first = """
order = []
def init_function(to_send, config):
    order.append('init first')
def main(to_send, config):
    order.append('main')
"""
    second = """
import sys
def init_function(to_send, config):
    sys.modules[config['log_module']].order.append('init second')
config_model = {'required': {'log_module': str}}
"""
    services = inline()
    services.set_main_service("first", str(write_service("first", first)))
    services.add_service("second", str(write_service("second", second)), {"log_module": "first"})
    services.start()
    assert services.get_service_module("first").order == ["init first", "init second", "main"]


def test_config_is_validated_when_a_service_is_added(paths) -> None:
    services = inline()
    with pytest.raises(ValidationError, match=r"replyer: config: expected str, got int"):
        services.add_service("replyer", paths["replyer"], {"response_text": 5})


def test_models_that_cannot_travel_the_wire_fail_inline_too(write_service) -> None:
    # A deployment would fail at start-up; inline must not hide that.
    source = """
class Custom:
    pass
def on(args, to_send, config):
    return {}
connection_models = {'in': {'r': {'connection_type': 'replyer',
    'required_creation_arguments': {'connection_function': on},
    'required_arguments': {'obj': Custom}}}}
"""
    services = inline()
    with pytest.raises(
        ValueError,
        match="connection 'r': arguments: key 'obj': type Custom cannot be sent as msgpack",
    ):
        services.add_service("custom", str(write_service("custom", source)))


def test_after_inline_calls_this_thread_is_outside_any_workflow(paths) -> None:
    from service_framework.workflow import current_workflow_id, outgoing_flow

    services = inline()
    services.set_main_service("requester", paths["requester"])
    services.add_service("replyer", paths["replyer"])
    services.add_relation("requester", "request", "replyer", "reply")
    services.start()
    ids = [wid for _, wid in services.get_service_module("replyer").seen]
    assert len(set(ids)) == 2 and "-" not in ids  # each top-level call: a new workflow
    # The thread that ran them is idle again: no current id, and a send starts afresh.
    assert current_workflow_id() is None
    assert "_" not in outgoing_flow().id


def test_logging_is_set_up_by_start_not_by_the_constructor(write_service, tmp_path) -> None:
    import logging
    import types

    root = logging.getLogger()
    before = list(root.handlers)
    log = tmp_path / "inline.log"
    services = InlineServices(console_loglevel=None, log_path=log)
    assert root.handlers == before  # building it (e.g. to check relations) changes nothing
    driver = types.ModuleType("quiet_driver")
    driver.main = lambda to_send, config: logging.getLogger("driver").warning("ran")  # type: ignore[attr-defined]
    services.set_main_service_by_module("driver", driver)
    try:
        services.start()
        assert root.handlers != before
        assert "ran" in log.read_text()
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
