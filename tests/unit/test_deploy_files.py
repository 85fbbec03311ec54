"""The Dockerfile, compose file and k8s manifests agree with the code they deploy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from proxy.seed.loader import SECURITY
from proxy.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def env_names(text: str) -> set[str]:
    return set(re.findall(r"\b(COUCHGATE_[A-Z_]+)\b", text))


def test_every_couchgate_variable_is_a_setting() -> None:
    texts = [
        p.read_text() for p in [*ROOT.glob("k8s/*.yaml"), ROOT / "docker-compose.yml", ROOT / "Dockerfile"]
    ]
    names = set().union(*(env_names(t) for t in texts))
    assert names, "no COUCHGATE_* variables found"
    unknown = {n for n in names if n.removeprefix("COUCHGATE_").lower() not in Settings.model_fields}
    assert not unknown


def test_probes_and_ports() -> None:
    deployment = yaml.safe_load((ROOT / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/_couchgate/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/_couchgate/ready"
    assert container["ports"][0]["containerPort"] == 5988
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["couchdb"]["image"].startswith("couchdb:3")
    assert compose["services"]["couchgate"]["depends_on"]["couchdb"]["condition"] == "service_healthy"
    for path in ROOT.glob("k8s/*.yaml"):
        assert yaml.safe_load(path.read_text())


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in text and "HEALTHCHECK" in text and "/_couchgate/health" in text
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert 'CMD ["couchgate", "serve"]' in text


def test_dockerfile_healthcheck_follows_the_configured_port() -> None:
    text = (ROOT / "Dockerfile").read_text()
    healthcheck = text[text.index("HEALTHCHECK") :].split("\nCMD", 1)[0]
    assert "COUCHGATE_PORT" in healthcheck and ":5988/" not in healthcheck


def test_compose_sets_up_a_fresh_couchdb() -> None:
    """A fresh couchdb:3 has no system databases and no `medic`: compose makes them."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    couchdb = compose["services"]["couchdb"]
    (config,) = couchdb["configs"]
    assert config["target"].startswith("/opt/couchdb/etc/local.d/")
    ini = compose["configs"][config["source"]]["content"]
    assert "[couchdb]" in ini and re.search(r"^single_node\s*=\s*true$", ini, re.M)
    init = compose["services"]["couchdb-init"]
    assert init["depends_on"]["couchdb"]["condition"] == "service_healthy"
    script = init["command"][0]
    for db in ("_users", "_replicator", "medic"):
        assert db in script
    assert "medic/_security" in script
    assert json.loads(init["environment"]["MEDIC_SECURITY"]) == SECURITY
    depends = compose["services"]["couchgate"]["depends_on"]
    assert depends["couchdb-init"]["condition"] == "service_completed_successfully"
