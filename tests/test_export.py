"""``service_framework export``: the example system as native files for Kubernetes, Compose,
systemd and a Procfile - each validated offline by the engine's own schema or tool - with
its key facts (ports, hosts, replicas, probes, secrets) checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from service_framework.export import to_yaml
from service_framework.security import create_keypair

yaml = pytest.importorskip("yaml")  # PyYAML, to read the files back (kubernetes-validate's)

EXAMPLE = REPO / "examples" / "orders"


def export(target: str, topology: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "service_framework",
            "export",
            target,
            str(topology),
            "-o",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def exported(target: str, topology: Path, out: Path) -> Path:
    result = export(target, topology, out)
    assert result.returncode == 0, result.stderr
    return out


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", name, *args], capture_output=True, text=True, timeout=120
    )


def documents(path: Path) -> dict[str, dict[str, Any]]:
    """``kind/name`` -> document, for every document in a multi-document YAML file."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(path.read_text())}


def copy_example(tmp_path: Path, edit: dict[str, str] | None = None) -> Path:
    """The example system in ``tmp_path`` (its services and topology), optionally edited."""
    shutil.copytree(EXAMPLE / "services", tmp_path / "system" / "services")
    text = (EXAMPLE / "system.toml").read_text()
    for old, new in (edit or {}).items():
        assert old in text
        text = text.replace(old, new)
    topology = tmp_path / "system" / "system.toml"
    topology.write_text(text)
    return topology


# --------------------------------------------------------------------------- k8s


def test_k8s_is_a_valid_kustomize_base_with_the_systems_facts(tmp_path) -> None:
    topology = copy_example(
        tmp_path, {'file = "services/trader.py"': 'file = "services/trader.py"\nreplicas = 3'}
    )
    out = exported("k8s", topology, tmp_path / "k8s")
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert resources == ["pricing.yaml", "router.yaml", "ledger.yaml", "trader.yaml"]
    validated = tool("kubernetes_validate", "--strict", *(str(out / name) for name in resources))
    assert validated.returncode == 0, validated.stdout + validated.stderr

    router = documents(out / "router.yaml")
    service = router["Service/router"]["spec"]
    assert service["clusterIP"] == "None"  # headless: the name resolves to every pod
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [
        (47812, 47812),
        (47813, 47813),
    ]
    addresses = json.loads(router["ConfigMap/router-config"]["data"]["addresses.json"])
    assert addresses == {
        "in": {"place": {"replyer": "*:47812"}},
        "out": {"fills": {"publisher": "*:47813"}},
    }
    deployment = router["Deployment/router"]["spec"]
    assert deployment["replicas"] == 1
    container = deployment["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "service_framework",
        "-s",
        "/app/services/router.py",
        "-a",
        "/etc/service_framework/addresses.json",
    ]
    assert [p["containerPort"] for p in container["ports"]] == [47812, 47813]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["exec"]["command"] == ["service_framework", "probe", "--quiet"]
    assert {
        "name": "SERVICE_FRAMEWORK_PROBE_FILE",
        "value": "/run/service_framework/heartbeat",
    } in container["env"]

    trader = documents(out / "trader.yaml")
    assert "Service/trader" not in trader  # it only connects: nothing to reach it by
    trader_spec = trader["Deployment/trader"]["spec"]
    assert trader_spec["replicas"] == 3  # connectors scale
    trader_container = trader_spec["template"]["spec"]["containers"][0]
    assert trader_container["command"][-3:] == ["-c", "/etc/service_framework/config.json", "-m"]
    config = trader["ConfigMap/trader-config"]["data"]
    assert json.loads(config["config.json"]) == {"orders": 5}
    assert json.loads(config["addresses.json"])["out"] == {
        "quote": {"requester": "pricing:47811"},
        "place": {"requester": "router:47812"},
        "positions": {"requester": "ledger:47814"},
    }
    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.startswith("# The image every service of 'orders' runs")
    assert "\nCOPY . /app\n" in dockerfile
    assert 'ENTRYPOINT ["service_framework"]' in dockerfile


def curve_example(tmp_path: Path) -> tuple[Path, Path]:
    """The example with CURVE on every service: the binders admit the two services that
    connect to them (trader, and ledger for the router's fills)."""
    keys = tmp_path / "system" / "keys"
    for name in ("pricing", "router", "ledger", "trader"):
        create_keypair(keys, name)
    (keys / "clients").mkdir()
    for client in ("ledger", "trader"):
        shutil.copy(keys / f"{client}.key", keys / "clients" / f"{client}.key")
    edits = {}
    for name in ("pricing", "router", "ledger"):
        line = f'file = "services/{name}.py"'
        edits[line] = (
            f'{line}\ncurve = {{ secret_key = "keys/{name}.key_secret", '
            'authorized_keys = "keys/clients" }'
        )
    edits["main = true"] = (
        'main = true\ncurve = { secret_key = "keys/trader.key_secret", allow_any = true }'
    )
    return copy_example(tmp_path, edits), keys


def test_k8s_curve_keys_come_from_secrets_mounted_as_files(tmp_path) -> None:
    topology, keys = curve_example(tmp_path)
    out = exported("k8s", topology, tmp_path / "k8s")
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    generators = {g["name"]: g["files"] for g in kustomization["secretGenerator"]}
    assert generators == {
        "orders-curve-servers": [
            "keys/public/pricing.key",
            "keys/public/router.key",
            "keys/public/ledger.key",
        ],
        "pricing-curve": ["keys/pricing/pricing.key_secret"],
        "pricing-authorized": [
            "keys/pricing/authorized/ledger.key",
            "keys/pricing/authorized/trader.key",
        ],
        "router-curve": ["keys/router/router.key_secret"],
        "router-authorized": [
            "keys/router/authorized/ledger.key",
            "keys/router/authorized/trader.key",
        ],
        "ledger-curve": ["keys/ledger/ledger.key_secret"],
        "ledger-authorized": [
            "keys/ledger/authorized/ledger.key",
            "keys/ledger/authorized/trader.key",
        ],
        "trader-curve": ["keys/trader/trader.key_secret"],
    }
    # Public keys are copied next to the manifests; secret keys never are.
    assert (out / "keys/public/pricing.key").read_bytes() == (keys / "pricing.key").read_bytes()
    assert (out / "keys/pricing/authorized/trader.key").exists()
    assert not list(out.rglob("*_secret"))
    assert "keys/*/*_secret" in (out / ".gitignore").read_text()

    pricing = documents(out / "pricing.yaml")["Deployment/pricing"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pricing["volumes"]}
    assert volumes["curve"]["secret"]["secretName"] == "pricing-curve"
    assert volumes["authorized"]["secret"]["secretName"] == "pricing-authorized"
    command = pricing["containers"][0]["command"]
    assert (
        command[command.index("--curve_secret_key") + 1]
        == "/etc/service_framework/curve/pricing.key_secret"
    )
    assert (
        command[command.index("--curve_authorized_keys") + 1] == "/etc/service_framework/authorized"
    )

    trader = documents(out / "trader.yaml")
    spec = trader["Deployment/trader"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["curve-servers"] == "/etc/service_framework/servers"
    assert "--curve_allow_any" in spec["containers"][0]["command"]
    quote = json.loads(trader["ConfigMap/trader-config"]["data"]["addresses.json"])["out"]["quote"]
    assert quote == {
        "requester": "pricing:47811",
        "server_public_key": "/etc/service_framework/servers/pricing.key",
    }
    resources = [str(out / name) for name in kustomization["resources"]]
    validated = tool("kubernetes_validate", "--strict", *resources)
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_exports_are_deterministic(tmp_path) -> None:
    for target in ("k8s", "compose", "systemd", "procfile"):
        first = exported(target, EXAMPLE / "system.toml", tmp_path / f"{target}-1")
        second = exported(target, EXAMPLE / "system.toml", tmp_path / f"{target}-2")
        names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
        assert names == sorted(
            p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file()
        )
        for name in names:
            a, b = (first / name).read_text(), (second / name).read_text()
            assert a.replace(f"{target}-1", "X") == b.replace(f"{target}-2", "X"), name


# --------------------------------------------------------------------------- compose


def test_compose_is_valid_against_the_compose_spec(tmp_path) -> None:
    topology = copy_example(
        tmp_path, {'file = "services/trader.py"': 'file = "services/trader.py"\nreplicas = 2'}
    )
    out = exported("compose", topology, tmp_path / "system" / "deploy" / "compose")
    checked = tool(
        "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(out / "compose.yaml")
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    compose = yaml.safe_load((out / "compose.yaml").read_text())
    services = compose["services"]
    assert list(services) == ["pricing", "router", "ledger", "trader"]
    assert services["pricing"]["build"] == {
        "context": "../..",
        "dockerfile": "deploy/compose/Dockerfile",
    }
    assert services["router"]["expose"] == ["47812", "47813"]
    assert services["ledger"]["depends_on"] == {"router": {"condition": "service_healthy"}}
    assert services["trader"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("pricing", "router", "ledger")
    }
    assert services["trader"]["deploy"] == {"replicas": 2}
    assert services["trader"]["restart"] == "no"  # main mode: it ends when main returns
    assert services["ledger"]["healthcheck"]["test"] == [
        "CMD",
        "service_framework",
        "probe",
        "--quiet",
        "--connected",
    ]
    assert services["ledger"]["configs"] == [
        {"source": "ledger-addresses", "target": "/etc/service_framework/addresses.json"}
    ]
    config_file = out / compose["configs"]["ledger-addresses"]["file"]
    assert json.loads(config_file.read_text()) == {
        "in": {"fills": {"subscriber": "router:47813"}, "positions": {"replyer": "*:47814"}},
        "out": {},
    }
    assert (out / "Dockerfile").exists()


# --------------------------------------------------------------------------- systemd


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path) -> None:
    out = exported("systemd", EXAMPLE / "system.toml", tmp_path / "units")
    units = sorted(out.glob("*.service")) + sorted(out.glob("*.target"))
    assert [u.name for u in units] == [
        "orders-ledger.service",
        "orders-pricing.service",
        "orders-router.service",
        "orders-trader.service",
        "orders.target",
    ]
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=out,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == "", verified.stderr  # not even a warning (e.g. an unknown key)
    ledger = (out / "orders-ledger.service").read_text()
    assert "After=network-online.target orders-router.service\n" in ledger
    python = f"{sys.executable} -m service_framework"
    assert (
        f"ExecStartPre={python} probe --quiet --connected --wait_s 120 /run/orders/router.probe\n"
        in ledger
    )
    assert (
        f"-a {out.resolve()}/config/ledger.addresses.json --probe_file /run/orders/ledger.probe\n"
        in ledger
    )
    trader = (out / "orders-trader.service").read_text()
    assert " -m --probe_file" in trader and "Restart=no\n" in trader
    target = (out / "orders.target").read_text()
    assert (
        "Wants=orders-pricing.service orders-router.service orders-ledger.service "
        "orders-trader.service\n" in target
    )


def test_systemd_connector_replicas_are_a_template_unit(tmp_path) -> None:
    topology = copy_example(
        tmp_path, {'file = "services/trader.py"': 'file = "services/trader.py"\nreplicas = 2'}
    )
    out = exported("systemd", topology, tmp_path / "units")
    assert (out / "orders-trader@.service").exists()
    target = (out / "orders.target").read_text()
    assert "orders-trader@1.service orders-trader@2.service" in target
    assert (
        "--probe_file /run/orders/trader.%i.probe" in (out / "orders-trader@.service").read_text()
    )


# --------------------------------------------------------------------------- procfile


def test_procfile_parses_with_honcho_and_waits_for_binders(tmp_path) -> None:
    environ = pytest.importorskip("honcho.environ")
    out = exported("procfile", EXAMPLE / "system.toml", tmp_path / "procfile")
    procfile = environ.parse_procfile((out / "Procfile").read_text())
    assert list(procfile.processes) == ["pricing", "router", "ledger", "trader"]
    assert procfile.processes["pricing"].startswith("exec service_framework -s ")
    assert procfile.processes["trader"].startswith(
        "service_framework probe --quiet --connected --wait_s 120 run/pricing.probe "
        "run/router.probe run/ledger.probe && exec service_framework -s "
    )
    # Paths are relative to the Procfile's directory, where honcho runs the commands.
    pricing = procfile.processes["pricing"].split()
    service_file = out / pricing[pricing.index("-s") + 1]
    assert service_file.resolve() == (EXAMPLE / "services" / "pricing.py").resolve()
    addresses = out / pricing[pricing.index("-a") + 1]
    assert json.loads(addresses.read_text()) == {
        "in": {"quote": {"replyer": "127.0.0.1:47811"}},
        "out": {},
    }


def test_a_services_env_prefix_reaches_its_command_line(tmp_path) -> None:
    environ = pytest.importorskip("honcho.environ")
    topology = copy_example(
        tmp_path,
        {'file = "services/pricing.py"': 'file = "services/pricing.py"\nenv_prefix = "PRICING_"'},
    )
    out = exported("procfile", topology, tmp_path / "procfile")
    procfile = environ.parse_procfile((out / "Procfile").read_text())
    assert "--env_prefix PRICING_" in procfile.processes["pricing"]
    assert "--env_prefix" not in procfile.processes["router"]


# --------------------------------------------------------------------------- errors


def test_a_binder_with_replicas_cannot_run_on_one_host(tmp_path) -> None:
    topology = copy_example(
        tmp_path, {'file = "services/router.py"': 'file = "services/router.py"\nreplicas = 2'}
    )
    result = export("procfile", topology, tmp_path / "out")
    assert result.returncode == 2
    assert (
        "router binds port(s) 47812, 47813, so it cannot run 2 replicas on one host"
        in result.stderr
    )
    # On Kubernetes it can: connectors reach every pod through the headless Service.
    assert export("k8s", topology, tmp_path / "k8s").returncode == 0


def test_an_unknown_target_is_a_usage_error(tmp_path) -> None:
    result = export("nomad", EXAMPLE / "system.toml", tmp_path / "out")
    assert result.returncode == 2
    assert "invalid choice: 'nomad'" in result.stderr


# --------------------------------------------------------------------------- YAML


def test_to_yaml_round_trips_through_a_yaml_parser() -> None:
    data = {
        "plain": "service_framework",
        "flag": "-s",
        "image": "orders:latest",
        "looks_like_bool": "yes",
        "looks_like_number": "47811",
        "time": "12:30",
        "spaces": "a b: c",
        "empty": "",
        "block": '{\n  "a": 1\n}\n',
        "none": None,
        "numbers": [1, 2.5, True],
        "nested": [{"name": "x", "items": []}, {"name": "y", "map": {}}],
        "*:47814": "key needs quotes",
    }
    assert yaml.safe_load(to_yaml(data)) == data


def test_compose_curve_keys_are_secrets(tmp_path) -> None:
    topology, _ = curve_example(tmp_path)
    out = exported("compose", topology, tmp_path / "compose")
    checked = tool(
        "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(out / "compose.yaml")
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    compose = yaml.safe_load((out / "compose.yaml").read_text())
    assert compose["secrets"]["pricing-curve"] == {"file": "./keys/pricing/pricing.key_secret"}
    trader_secrets = {s["source"]: s["target"] for s in compose["services"]["trader"]["secrets"]}
    assert trader_secrets["pricing-public-key"] == "/etc/service_framework/servers/pricing.key"
    assert trader_secrets["trader-curve"] == "/etc/service_framework/curve/trader.key_secret"
    assert (out / "keys/public/pricing.key").exists()
    assert not list(out.rglob("*_secret"))
