"""The per-app images (apps/<app>/Dockerfile + docker_image, built by build-support/images.sh): every
Switchyard image the cluster manifests and the compose file run is one an app builds, under the
same name; each Dockerfile starts from the BASE_IMAGE build argument and runs as the manifests'
user; the recsys image's pip pins are setup-recsys.sh's. Building and starting the images is
`./switchyard images` (a container engine and the package index, not a unit test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "apps"
OWN = "switchyard/"


def _docker_images() -> dict[str, str]:
    """App directory → the `repository` of its docker_image target."""
    found = {}
    for build in sorted(APPS.glob("*/BUILD")):
        text = build.read_text()
        if "docker_image(" in text:
            m = re.search(r'repository="([^"]+)"', text)
            assert m, f"{build}: docker_image without a repository (Pants would name the image after the target)"
            found[build.parent.name] = m.group(1)
    return found


def _manifest_images() -> set[str]:
    names = set()
    for path in [*sorted((ROOT / "infra" / "k8s" / "base").glob("*.yaml")), ROOT / "infra" / "compose" / "compose.yml"]:
        for doc in yaml.safe_load_all(path.read_text()):
            names.update(_images_in(doc))
    # compose: ${SWITCHYARD_IMAGE_PREFIX:-switchyard}/api:${SWITCHYARD_TAG:-dev} → switchyard/api:dev
    resolved = {re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", n) for n in names}
    return {n.rsplit(":", 1)[0] if ":" in n.rsplit("/", 1)[-1] else n for n in resolved if n.startswith(OWN)}


def _images_in(node: object) -> set[str]:
    if isinstance(node, dict):
        own = {node["image"]} if isinstance(node.get("image"), str) else set()
        return own.union(*(_images_in(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_images_in(v) for v in node))
    return set()


def test_every_image_the_manifests_run_is_built_by_its_app() -> None:
    built = _docker_images()
    assert {"api", "worker-llm", "worker-vision", "worker-recsys"} <= set(built)
    for app, repository in built.items():
        assert repository == f"{OWN}{app}", (app, repository)
    wanted = _manifest_images()
    assert wanted, "no switchyard/* image found in infra/k8s or infra/compose"
    assert wanted <= set(built.values()), f"images without an app that builds them: {sorted(wanted - set(built.values()))}"


@pytest.mark.parametrize("app", sorted(_docker_images()))
def test_dockerfile_takes_its_base_as_an_argument_and_runs_as_the_manifests_user(app: str) -> None:
    text = (APPS / app / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${BASE_IMAGE}" for f in froms), froms
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11[.\w-]*$", text, re.M), "docker's default base: a CPython 3.11 image"
    assert re.search(r"^USER 10001$", text, re.M)
    workers = (ROOT / "infra" / "k8s" / "base" / "workers.yaml").read_text() + (ROOT / "infra" / "k8s" / "base" / "api.yaml").read_text()
    assert set(re.findall(r"runAsUser: (\d+)", workers)) == {"10001"}
    # The pex is bind-mounted while the venv is made, never copied into a layer.
    assert "COPY apps." not in text and "--mount=type=bind,source=apps." in text


def _setup_recsys_pins() -> dict[str, str]:
    script = (ROOT / "build-support" / "setup-recsys.sh").read_text()
    versions = dict(re.findall(r'^([A-Z_]+)_VERSION="([^"]+)"', script, re.M))
    block = re.search(r"^DATA_PKGS=\((.*?)\)", script, re.M | re.S)
    worker = re.search(r"^WORKER_PKGS=\((.*?)\)", script, re.M | re.S)
    assert block and worker
    specs = re.findall(r'"([^"]+)"', block.group(1) + worker.group(1))
    pins = {}
    for spec in specs:
        name, version = spec.split("==")
        pins[name] = re.sub(r"\$([A-Z_]+)_VERSION", lambda m: versions[m.group(1)], version)
    return pins


def test_recsys_image_pins_are_setup_recsys_pins() -> None:
    setup = _setup_recsys_pins()
    lines = [ln.strip() for ln in (APPS / "worker-recsys" / "requirements.txt").read_text().splitlines()]
    image = dict(ln.split("==") for ln in lines if ln and not ln.startswith("#"))
    assert image, "empty requirements.txt"
    for name, version in image.items():
        assert setup.get(name) == version, f"{name}=={version} in the image, {setup.get(name)} in setup-recsys.sh"
    # What the image leaves out is training only.
    assert set(setup) - set(image) == {"scipy", "lightgbm", "onnx", "onnxmltools"}
