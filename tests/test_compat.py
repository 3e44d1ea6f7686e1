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
