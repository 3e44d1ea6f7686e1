"""Model parsing: every mistake is a start-up error naming service, connection and key."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service_framework import ModelError
from service_framework.connections import CONNECTION_TYPES, InboundConnection
from service_framework.models import (
    ConnectionModel,
    parse_config_model,
    parse_connection_models,
)


def handler(args: Any, to_send: Any, config: Any) -> None:
    return None


def replyer(**overrides: Any) -> dict[str, Any]:
    return {
        "connection_type": "replyer",
        "required_creation_arguments": {"connection_function": handler},
        **overrides,
    }


def parse(models: Any, **kwargs: Any) -> Any:
    return parse_connection_models("pricing", models, **kwargs)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([], "pricing: connection_models must be a dict with 'in' and/or 'out', got list"),
        ({"inbound": {}}, "pricing: connection_models has unknown side 'inbound'"),
        ({"in": []}, "pricing: connection_models['in'] must be a dict of name: model, got list"),
        ({"in": {"quote": "replyer"}}, "pricing: connection 'quote': the model must be a dict"),
        (
            {"in": {"quote": replyer(required_args={})}},
            "pricing: connection 'quote': unknown model key 'required_args' (allowed: "
            "connection_type, required_creation_arguments",
        ),
        (
            {"in": {"quote": {"required_arguments": {}}}},
            "pricing: connection 'quote': missing required model key 'connection_type'",
        ),
        (
            {"in": {"quote": {"connection_type": "replier"}}},
            "pricing: connection 'quote': unknown connection_type 'replier' (known: "
            "external_target, publisher, puller, pusher, replyer, requester, subscriber, timer)",
        ),
        (
            {"out": {"quote": replyer()}},
            "pricing: connection 'quote': a replyer is an 'in' connection but is declared "
            "under 'out'",
        ),
        (
            {"in": {"quote": {"connection_type": "replyer"}}},
            "pricing: connection 'quote': missing required creation argument "
            "'connection_function' for a replyer",
        ),
        (
            {"in": {"quote": replyer(optional_creation_arguments={"timeout_s": 1})}},
            "pricing: connection 'quote': unknown creation argument 'timeout_s' for a replyer "
            "(allowed: connection_function, socket_options)",
        ),
        (
            {"in": {"quote": replyer(required_creation_arguments={"connection_function": 3})}},
            "pricing: connection 'quote': creation arguments: expected Callable, got int at "
            "$.connection_function",
        ),
        (
            {
                "in": {
                    "quote": replyer(
                        required_creation_arguments={"connection_function": lambda args: None}
                    )
                }
            },
            "pricing: connection 'quote': handler <lambda>(args) cannot be called with the "
            "three arguments (args, to_send, config)",
        ),
        (
            {
                "out": {
                    "ask": {
                        "connection_type": "requester",
                        "optional_creation_arguments": {"timeout_s": 0},
                    }
                }
            },
            "pricing: connection 'ask': creation argument 'timeout_s' must be > 0, got 0",
        ),
        (
            {
                "out": {
                    "ask": {
                        "connection_type": "requester",
                        "optional_creation_arguments": {"retries": -1},
                    }
                }
            },
            "pricing: connection 'ask': creation argument 'retries' must be >= 0, got -1",
        ),
        (
            {
                "out": {
                    "ask": {
                        "connection_type": "requester",
                        "optional_creation_arguments": {"timeout_s": "5"},
                    }
                }
            },
            "pricing: connection 'ask': creation arguments: expected int | float, got str at "
            "$.timeout_s",
        ),
        (
            {
                "out": {
                    "fills": {
                        "connection_type": "publisher",
                        "optional_creation_arguments": {"topic": 5},
                    }
                }
            },
            "pricing: connection 'fills': creation arguments: expected str, got int at $.topic",
        ),
        (
            {"in": {"quote": replyer(optional_creation_arguments={"socket_options": {"hwm": 5}})}},
            "pricing: connection 'quote': unknown socket option 'hwm' (known: ",
        ),
        (
            {"in": {"quote": replyer(required_arguments={"qty": [int, str]})}},
            "pricing: connection 'quote': required_arguments/optional_arguments: $.qty: a list "
            "spec holds exactly one item spec",
        ),
        (
            {"in": {"quote": replyer(required_arguments={"qty": 3})}},
            "pricing: connection 'quote': required_arguments/optional_arguments: $.qty: 3 is "
            "not a type spec",
        ),
        (
            {
                "in": {
                    "quote": replyer(required_arguments={"a": int}, optional_arguments={"a": int})
                }
            },
            "pricing: connection 'quote': required_arguments/optional_arguments: key 'a' is "
            "both required and optional",
        ),
        (
            {"in": {"quote": replyer(required_arguments={"when": complex})}},
            "pricing: connection 'quote': arguments: key 'when': type complex cannot be sent "
            "as msgpack",
        ),
        (
            {"in": {"quote": replyer(required_return_arguments={"p": str | bytes})}},
            "pricing: connection 'quote': return arguments: key 'p': str | bytes cannot be "
            "told apart in msgpack",
        ),
        (
            {"in": {"quote": replyer()}, "out": {"quote": {"connection_type": "requester"}}},
            "pricing: connection 'quote' is declared twice",
        ),
        (
            {"in": {"quote": replyer(required_arguments=[str])}},
            "pricing: connection 'quote': model key 'required_arguments' must be a dict of key: "
            "spec, got list",
        ),
    ],
)
def test_bad_models_name_service_connection_and_key(models: Any, message: str) -> None:
    with pytest.raises(ModelError, match="^" + re.escape(message)):
        parse(models)
    with pytest.raises(ValueError):  # code written for 0.0.20 catches ValueError
        parse(models)


def test_setup_connections_for_an_undeclared_connection_is_an_error() -> None:
    with pytest.raises(
        ModelError, match="setup_connections returned arguments for undeclared connection 'ghost'"
    ):
        parse({"in": {"quote": replyer()}}, extra_creation_arguments={"ghost": {}})


def test_setup_connections_arguments_are_merged_and_checked() -> None:
    models = parse(
        {"out": {"ask": {"connection_type": "requester"}}},
        extra_creation_arguments={"ask": {"timeout_s": 2.5, "retries": 1}},
    )
    assert dict(models.outbound["ask"].creation_arguments) == {"timeout_s": 2.5, "retries": 1}
    with pytest.raises(ModelError, match="unknown creation argument 'tiemout_s'"):
        parse(
            {"out": {"ask": {"connection_type": "requester"}}},
            extra_creation_arguments={"ask": {"tiemout_s": 2}},
        )


def test_accepted_0_0_20_names_are_normalised() -> None:
    models = parse(
        {
            "in": {
                "fills": {
                    "connection_type": "subscriber",
                    "required_creation_arguments": {"on_new_message": handler},
                },
                # 0.0.20 accepted (and ignored) these on a replyer.
                "quote": replyer(optional_creation_arguments={"topic": "t", "is_x_pub": False}),
            },
            "out": {
                "cancel": {
                    "connection_type": "external_request",
                    "required_creation_arguments": {"func_to_call": "json.dumps"},
                }
            },
        }
    )
    assert models.inbound["fills"].handler is handler
    assert dict(models.inbound["quote"].creation_arguments) == {"connection_function": handler}
    cancel = models.outbound["cancel"]
    assert cancel.connection_type == "external_target"
    import json

    assert cancel.creation_arguments["target"] is json.dumps


def test_connection_arguments_merge_into_the_message_model() -> None:
    models = parse(
        {
            "in": {
                "quote": replyer(
                    required_connection_arguments={"session": str},
                    required_arguments={"qty": int},
                    optional_connection_arguments={"trace": bool},
                )
            }
        }
    )
    args = models.inbound["quote"].args
    assert args.check({"session": "s", "qty": 1})
    assert args.check({"session": "s", "qty": 1, "trace": True})
    assert not args.check({"qty": 1})


def test_models_are_plain_introspectable_values() -> None:
    models = parse({"in": {"quote": replyer(required_arguments={"qty": int})}})
    model = models.inbound["quote"]
    assert isinstance(model, ConnectionModel)
    assert (model.service, model.name, model.side, model.connection_type) == (
        "pricing",
        "quote",
        "in",
        "replyer",
    )
    assert model.kind is CONNECTION_TYPES["replyer"]
    assert issubclass(model.kind, InboundConnection)
    assert model.source["required_arguments"] == {"qty": int}
    assert model.args.node.describe() == "dict with keys 'qty'"
    assert "pricing.quote in replyer" in repr(model)
    with pytest.raises(TypeError):
        model.creation_arguments["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("config_model", "message"),
    [
        ([], "pricing: config_model must be a dict with 'required' and/or 'optional', got list"),
        ({"needed": {}}, "pricing: config_model has unknown key 'needed'"),
        (
            {"required": {"x": [int, int]}},
            "pricing: config_model: $.x: a list spec holds exactly one",
        ),
        (
            {"required": {1: int}},
            "pricing: config_model: required config_model key 1 must be a str",
        ),
    ],
)
def test_bad_config_models(config_model: Any, message: str) -> None:
    with pytest.raises(ModelError, match="^" + re.escape(message)):
        parse_config_model("pricing", config_model)
