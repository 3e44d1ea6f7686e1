"""Service files written for 0.0.20 run unchanged.

The files below use only what 0.0.20's users wrote: the seed page's model layout,
``service_framework.utils.constants``/``logging_utils`` imports, a ``setup_config``
that casts its own strings, a subscriber using ``on_new_message``, an external request
with ``func_to_call`` and ``None`` return models, a seed-shaped config file, relative
``./`` paths and ``-key value`` config.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

REPLYER = '''
""" File to house a replyer service """
from logging import getLogger
from service_framework.utils.constants import PACKAGE_LOGGER_NAME

LOG = getLogger(PACKAGE_LOGGER_NAME)


def on_new_request(args, to_send, config):
    LOG.info('Got payload: %s', args)
    return {'echoed': args['to_echo']}


connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {
                'connection_function': on_new_request,
            },
            'optional_creation_arguments': {},
            'required_connection_arguments': {},
            'optional_connection_arguments': {},
            'required_arguments': {
                'to_echo': str,
            },
            'optional_arguments': {},
            'required_return_arguments': {
                'echoed': str,
            },
            'optional_return_arguments': {},
        }
    }
}
'''

REQUESTER = '''
""" File to house a requester service """
from service_framework.utils.logging_utils import get_logger

LOG = get_logger()


def setup_config(config):
    config['num_req_to_send'] = int(config['num_req_to_send'])
    return config


def main(to_send, config):
    for num in range(config['num_req_to_send']):
        payload = {'to_echo': config['greeting'] + ' - ' + str(num)}
        returned = to_send('request', payload)
        print(returned['echoed'])
        to_send('notify', {'message': returned['echoed']})
    print(to_send('log_it', {'line': 'done'}))


def log_line(line):
    return 'logged ' + line


config_model = {
    'required': {
        'num_req_to_send': int,
        'greeting': str,
    },
    'optional': {},
}

connection_models = {
    'out': {
        'request': {
            'connection_type': 'requester',
            'required_arguments': {
                'to_echo': str,
            },
            'required_return_arguments': {
                'echoed': str,
            },
        },
        'notify': {
            'connection_type': 'publisher',
            'optional_creation_arguments': {'topic': 'echoes', 'is_x_pub': True},
            'required_arguments': {'message': str},
        },
        'log_it': {
            'connection_type': 'external_request',
            'required_creation_arguments': {
                'func_to_call': log_line,
            },
            'optional_creation_arguments': {},
            'required_connection_arguments': {},
            'optional_connection_arguments': {},
            'required_arguments': {
                'line': str,
            },
            'optional_arguments': {},
            'required_return_arguments': None,
            'optional_return_arguments': None,
        },
    }
}
'''

SUBSCRIBER = '''
""" A subscriber as 0.0.20 documented it (which 0.0.20 itself could not start) """
from service_framework import get_logger

LOG = get_logger()


def on_new_message(args, to_send, config):
    LOG.info('SUBSCRIBED %s', args['message'])


connection_models = {
    'in': {
        'echoes': {
            'connection_type': 'subscriber',
            'required_creation_arguments': {
                'on_new_message': on_new_message,
            },
            'optional_creation_arguments': {'topic': 'echoes', 'is_binder': True},
            'required_arguments': {'message': str},
        }
    }
}
'''


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_a_0_0_20_system_runs_unchanged(tmp_path: Path, cli) -> None:
    services = tmp_path / "services"
    write(services / "replyer_service.py", REPLYER)
    write(services / "requester_service.py", REQUESTER)
    write(services / "subscriber_service.py", SUBSCRIBER)
    write(tmp_path / "replyer_addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    write(tmp_path / "subscriber_addresses.json", {"in": {"echoes": {"subscriber": "127.0.0.1:0"}}})
    # A config file in the seed's {"required": ..., "optional": ...} shape.
    write(tmp_path / "requester_config.json", {"required": {"greeting": "Hello"}, "optional": {}})

    replyer = cli("-s", "./services/replyer_service.py", "-a", "./replyer_addresses.json")
    subscriber = cli("-s", "./services/subscriber_service.py", "-a", "./subscriber_addresses.json")
    reply_at = replyer.ready()["reply"]
    sub_at = subscriber.ready()["echoes"]
    write(
        tmp_path / "requester_addresses.json",
        {
            "in": {},
            "out": {
                "request": {"requester": reply_at},
                "notify": {"publisher": sub_at},
            },
        },
    )
    requester = cli(
        "-s",
        "./services/requester_service.py",
        "-a",
        "./requester_addresses.json",
        "-c",
        "./requester_config.json",
        "-m",
        "-num_req_to_send",  # single-dash config, a string cast by setup_config
        "3",
    )
    assert requester.finish(timeout=30) == 0, requester.log()
    assert requester.stdout().splitlines() == [
        "Hello - 0",
        "Hello - 1",
        "Hello - 2",
        "logged done",
    ]
    replyer.wait_for(r"Got payload: \{'to_echo': 'Hello - 2'\}")
    # The publisher waited wait_after_creation_s (0.5 s) after connecting, so the
    # binding subscriber hears every message.
    subscriber.wait_for(r"SUBSCRIBED Hello - 2")
    for process in (replyer, subscriber):
        process.signal(signal.SIGINT)
        assert process.finish() == 0


@pytest.mark.parametrize(
    "spelling", ["--num_req_to_send", "-num_req_to_send", "--num_req_to_send="]
)
def test_config_pair_spellings(tmp_path: Path, cli, spelling: str) -> None:
    write(
        tmp_path / "count.py",
        "config_model = {'required': {'num_req_to_send': int}}\n"
        "def main(to_send, config):\n    print(config['num_req_to_send'] + 1)\n",
    )
    args = [spelling + "41"] if spelling.endswith("=") else [spelling, "41"]
    process = cli("-s", "count.py", "-m", *args)
    assert process.finish() == 0, process.log()
    assert process.stdout().strip() == "42"


# --------------------------------------------------------------------------- bare pairs

COUNT = (
    "config_model = {'required': {'num_req_to_send': int}, 'optional': {'greeting': str}}\n"
    "def main(to_send, config):\n"
    "    print(config['num_req_to_send'] + 1, config.get('greeting'))\n"
)


@pytest.mark.parametrize(
    "args",
    [
        ["-s", "count.py", "-m", "num_req_to_send", "41", "greeting", "hi"],
        # 0.0.20 let the pairs come first, and mixed them with the other spellings.
        ["num_req_to_send", "41", "-s", "count.py", "--greeting", "hi", "-m"],
        ["-s", "count.py", "greeting=hi", "-m", "num_req_to_send", "41"],
    ],
)
def test_bare_config_pairs_are_converted_like_flagged_ones(
    tmp_path: Path, cli, args: list[str]
) -> None:
    write(tmp_path / "count.py", COUNT)
    process = cli(*args)
    assert process.finish() == 0, process.log()
    assert process.stdout().strip() == "42 hi"


@pytest.mark.parametrize(
    "args",
    [
        ["-s", "count.py", "-m", "num_req_to_send"],
        ["-s", "count.py", "num_req_to_send", "-m"],  # a framework flag is never a value
    ],
)
def test_a_bare_key_without_value_is_one_clear_error(tmp_path: Path, cli, args: list[str]) -> None:
    write(tmp_path / "count.py", COUNT)
    process = cli(*args)
    assert process.finish() == 2
    assert process.lines == [
        "service_framework: error: config key 'num_req_to_send' has no value "
        "(expected num_req_to_send VALUE)"
    ]


def test_version_prints_the_version_and_exits_0(tmp_path: Path, cli) -> None:
    from importlib.metadata import version

    import service_framework

    process = cli("--version")
    assert process.finish() == 0, process.log()
    assert process.stdout().strip() == f"service_framework {version('service-framework')}"
    assert service_framework.__version__ == version("service-framework")


# ------------------------------------------------------- config without config_model

# The seed page's inline example passes {'response_text': 'TO_SEND'} to a replyer that
# declares no config_model; the replyer sets its default in setup_config.
SEED_REPLYER = """
def setup_config(config):
    config.setdefault('response_text', 'DEFAULT')
    return config

def on_new_request(args, to_send, config):
    return {'echoed': config['response_text'] + ' ' + args['to_echo']}

connection_models = {
    'in': {
        'reply': {
            'connection_type': 'replyer',
            'required_creation_arguments': {'connection_function': on_new_request},
            'required_arguments': {'to_echo': str},
            'required_return_arguments': {'echoed': str},
        }
    }
}
"""

SEED_REQUESTER = """
results = []

def main(to_send, config):
    results.append(to_send('request', {'to_echo': 'hello'}))

connection_models = {
    'out': {
        'request': {
            'connection_type': 'requester',
            'required_arguments': {'to_echo': str},
            'required_return_arguments': {'echoed': str},
        }
    }
}
"""

SEED_OUT = {
    "connection_type": "requester",
    "optional_creation_arguments": {"timeout_s": 10},
    "required_arguments": {"to_echo": str},
    "required_return_arguments": {"echoed": str},
}


@pytest.mark.parametrize(
    ("replyer_config", "expected"),
    [({"response_text": "TO_SEND"}, "TO_SEND hello"), (None, "DEFAULT hello")],
)
def test_seed_inline_example_config_without_config_model(
    tmp_path: Path, replyer_config: dict[str, str] | None, expected: str
) -> None:
    from service_framework import InlineServices

    write(tmp_path / "requester_service.py", SEED_REQUESTER)
    write(tmp_path / "replyer_service.py", SEED_REPLYER)
    inline = InlineServices(console_loglevel="WARNING")
    inline.set_main_service_by_module("requester", str(tmp_path / "requester_service.py"))
    inline.add_service_by_module("replyer", str(tmp_path / "replyer_service.py"), replyer_config)
    inline.add_relation("requester", "request", "replyer", "reply")
    inline.start()
    assert inline.get_service_module("requester").results == [{"echoed": expected}]
    assert inline.get_service_config("replyer")["response_text"] == expected.split()[0]


def test_config_without_config_model_on_the_command_line(tmp_path: Path, cli, client) -> None:
    write(tmp_path / "replyer_service.py", SEED_REPLYER)
    write(tmp_path / "a.json", {"in": {"reply": {"replyer": "127.0.0.1:0"}}})
    given = cli("-s", "replyer_service.py", "-a", "a.json", "--response_text", "TO_SEND")
    default = cli("-s", "replyer_service.py", "-a", "a.json")
    for process, expected in ((given, "TO_SEND hello"), (default, "DEFAULT hello")):
        address = process.ready()["reply"]
        runtime = client({"out": {"r": SEED_OUT}}, {"out": {"r": {"requester": address}}})
        assert runtime.to_send("r", {"to_echo": "hello"}) == {"echoed": expected}


def test_config_without_config_model_through_service(tmp_path: Path, client) -> None:
    from service_framework import Service

    write(tmp_path / "replyer_service.py", SEED_REPLYER)
    service = Service(
        tmp_path / "replyer_service.py",
        addresses={"in": {"reply": {"replyer": "127.0.0.1:0"}}},
        config={"response_text": "TO_SEND", "anything": [1, 2]},  # unvalidated
        console_loglevel="WARNING",
    )
    with service:
        service.run_service()
        address = service.endpoints["in"]["reply"][0]
        runtime = client({"out": {"r": SEED_OUT}}, {"out": {"r": {"requester": address}}})
        assert runtime.to_send("r", {"to_echo": "hello"}) == {"echoed": "TO_SEND hello"}


# --------------------------------------------------------------- utils.utils helpers


def test_utils_path_and_name_helpers_give_0_0_20_results() -> None:
    from service_framework.utils.utils import (
        convert_path_to_import,
        snake_case_to_capital_case,
    )

    # Expected values are what 0.0.20's own functions return for these inputs.
    paths = {
        "./a/b.py": "a.b",
        "../x.py": "..x",
        "a/../b.py": "a..b",
        "./../c/d.py": "..c.d",
        "./a": "",
        "services/echo_service.py": "services.echo_service",
    }
    assert {path: convert_path_to_import(path) for path in paths} == paths
    names = {"this_is_an_example": "ThisIsAnExample", "aBc_d": "AbcD", "_a__b": "AB", "": ""}
    assert {name: snake_case_to_capital_case(name) for name in names} == names


def test_utils_json_and_import_helpers(tmp_path: Path, monkeypatch) -> None:
    import sys

    from service_framework import InlineServices
    from service_framework.utils.utils import (
        get_json_from_rel_path,
        import_python_file_from_cwd,
        import_python_file_from_module,
    )

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the helpers extend it, as 0.0.20 did
    package = "compat_utils_pkg"
    for name in [n for n in sys.modules if n.startswith(package)]:
        monkeypatch.delitem(sys.modules, name)
    write(tmp_path / package / "__init__.py", "")
    write(tmp_path / package / "replyer_service.py", SEED_REPLYER)
    write(tmp_path / "addresses.json", {"in": {"reply": {"replyer": "127.0.0.1:1"}}})

    assert get_json_from_rel_path("./addresses.json") == {
        "in": {"reply": {"replyer": "127.0.0.1:1"}}
    }
    assert get_json_from_rel_path(None) == {} and get_json_from_rel_path("") == {}
    with pytest.raises(FileNotFoundError):
        get_json_from_rel_path("./absent.json")

    module = import_python_file_from_cwd(f"./{package}/replyer_service.py")
    try:
        assert module.__name__ == f"{package}.replyer_service"  # by dotted name, as 0.0.20
        assert import_python_file_from_module(f"{package}.replyer_service") is module
        # A user's test loads the service and hands the module to InlineServices.
        inline = InlineServices(console_loglevel="WARNING")
        inline.add_service_by_module("replyer", module, {"response_text": "T"})
        assert inline.get_service_module("replyer") is module
    finally:
        for name in [n for n in sys.modules if n.startswith(package)]:
            del sys.modules[name]


SIGNALS = """
import os, signal, sys
from service_framework.utils.utils import add_sig_handler

calls = []
add_sig_handler(lambda signum, frame: calls.append(('first', signum)))
add_sig_handler(lambda signum, frame: calls.append(('second', signum)))
add_sig_handler(lambda signum, frame: print('term handler ran', flush=True), is_sigint=False)
try:
    print('ready', flush=True)
    signal.pause()
except KeyboardInterrupt:  # Python's own SIGINT handler, reached through the chain
    print(calls, 'then KeyboardInterrupt', flush=True)
print('waiting for SIGTERM', flush=True)
signal.pause()
print('not reached: SIGTERM ends the process, as it would have by default', flush=True)
"""


def test_add_sig_handler_chains_to_the_previous_handler(tmp_path: Path) -> None:
    import subprocess
    import sys

    write(tmp_path / "signals.py", SIGNALS)
    child = subprocess.Popen(
        [sys.executable, str(tmp_path / "signals.py")],
        stdout=subprocess.PIPE,
        text=True,
        # A runner started in the background may have SIGINT ignored, and the child
        # would inherit that; give it the usual start (Python's own SIGINT handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGINT)
        assert child.stdout.readline() == (
            f"[('second', {int(signal.SIGINT)}), ('first', {int(signal.SIGINT)})] "
            "then KeyboardInterrupt\n"
        )
        assert child.stdout.readline() == "waiting for SIGTERM\n"
        child.send_signal(signal.SIGTERM)
        assert child.wait(20) == -signal.SIGTERM
        assert child.stdout.read() == "term handler ran\n"
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
