"""k8s/ manifests against the Kubernetes API schemas (kubernetes-validate, shipped with its
schemas: works offline), and docker-compose.yml with `docker compose config` where docker
compose exists, else against the Compose Specification schema (check-jsonschema's copy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = "1.30.0"  # the oldest version the manifests must work on
MANIFESTS = sorted(ROOT.glob("k8s/*.yaml"))


def resources(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_k8s_manifests_are_valid(path: Path) -> None:
    for resource in resources(path):
        if resource["kind"] == "Kustomization":
            for listed in resource["resources"]:
                assert (ROOT / "k8s" / listed).is_file(), listed
            continue
        kubernetes_validate.validate(resource, KUBERNETES, strict=True)


def test_an_invalid_manifest_is_refused() -> None:
    (deployment,) = resources(ROOT / "k8s" / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "http"}]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["replica"] = 3  # a typo: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0


def compose_problems(path: Path) -> str | None:
    """None when the compose file is valid, else what is wrong."""
    if docker_compose():
        env = {"COUCHDB_PASSWORD": "x", "COUCHGATE_JWT_SECRET": "x" * 32, "PATH": "/usr/bin:/bin"}
        done = subprocess.run(["docker", "compose", "-f", str(path), "config", "--quiet"],
                              capture_output=True, text=True, env=env, check=False)  # fmt: skip
    else:
        checker = Path(sys.executable).with_name("check-jsonschema")
        done = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(path)],
                              capture_output=True, text=True, check=False)  # fmt: skip
    return None if done.returncode == 0 else done.stdout + done.stderr


def test_the_compose_file_is_valid() -> None:
    assert compose_problems(ROOT / "docker-compose.yml") is None


def test_an_invalid_compose_file_is_refused(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose["services"]["couchgate"]["ports"] = "5988:5988"  # must be a list
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    problems = compose_problems(broken)
    assert problems is not None and "ports" in problems
