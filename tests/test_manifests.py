"""The deployment files in manifests/ (and the CVAT nuclio function) against the repository.

No Docker or Kubernetes runs here: each file is parsed, and what it names is checked against
what exists: images (ours at the package's version, third-party ones pinned), ``auralsam2``
command lines (parsed by the real parser), ``module:attr`` import strings, environment
variables (read somewhere in the code), weight names (in the registry), repository paths, and
the Dockerfile they all run.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from auralsam2_core.cli import build_parser
from auralsam2_core.modeling.weights import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OUR_IMAGE = f"auralsam2:{VERSION}"
K8S_API = {"RayJob": "ray.io/v1", "RayService": "ray.io/v1", "Deployment": "apps/v1",
           "Service": "v1", "PersistentVolumeClaim": "v1"}
EXPECTED = ["manifests/label_studio/docker-compose.yml", "manifests/label_studio/k8s.yaml",
            "manifests/ray/rayjob-batch.yaml", "manifests/ray/rayservice.yaml",
            "manifests/service/k8s.yaml", "plugins/cvat/function-gpu.yaml",
            "plugins/cvat/function.yaml"]
FILES = sorted({*ROOT.glob("manifests/**/*.yaml"), *ROOT.glob("manifests/**/*.yml"),
                *ROOT.glob("plugins/cvat/function*.yaml")})
REPO_DIRS = ("auralsam2_core", "auralsam2_service", "plugins", "manifests", "scripts",
             "benchmarks", "tests")
REPO_PATH = re.compile(rf"(?<![\w/.$-])((?:{'|'.join(REPO_DIRS)})/[\w./*-]*[\w*])")
BUILT = {"plugins/cvat/dist": "manifests/cvat/deploy.sh"}  # path -> the script that makes it
CODE_TEXT = "\n".join(p.read_text(encoding="utf-8") for d in
                      ("auralsam2_core", "auralsam2_service", "plugins")
                      for p in (ROOT / d).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def nodes(node, key_path=()):
    """(key path, key, value) for every mapping entry, depth first."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield key_path, k, v
            yield from nodes(v, (*key_path, k))
    elif isinstance(node, list):
        for v in node:
            yield from nodes(v, key_path)


def containers(doc: dict) -> list[dict]:
    """Kubernetes containers / init containers and compose services (things with an image)."""
    found = [v for _, k, v in nodes(doc) if k in ("containers", "initContainers")]
    out = [c for group in found for c in group]
    out += list((doc.get("services") or {}).values())
    return out


def command_lines(doc: dict) -> list[list[str]]:
    """Every ``auralsam2 ...`` argv a file runs: container/compose commands, RayJob
    entrypoints, and ``auralsam2`` calls inside shell strings (split at && ; |)."""
    raw: list[str | list] = []
    for c in containers(doc):
        cmd = c.get("command") or []
        cmd = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        raw.append(cmd + [str(a) for a in c.get("args") or []])
    if doc.get("kind") == "RayJob":
        raw.append(doc["spec"]["entrypoint"])
    argvs = []
    for item in raw:
        text = item if isinstance(item, str) else shlex.join(item)
        for part in re.split(r"&&|;|\|", text):
            argv = shlex.split(part)
            for i, tok in enumerate(argv):  # also `bash -c "auralsam2 ..."` after splitting
                if os.path.basename(tok) == "auralsam2":
                    argvs.append(argv[i:])
                    break
    return argvs


def env_entries(doc: dict) -> list[tuple[str, str | None]]:
    out = []
    for c in containers(doc) + [doc.get("spec") or {}]:
        env = c.get("env") or c.get("environment") or []
        if isinstance(env, dict):  # compose mapping form
            out += [(k, None if v is None else str(v)) for k, v in env.items()]
        else:
            out += [(e["name"], e.get("value")) for e in env if isinstance(e, dict)]
    return out


def test_every_expected_file_is_there_and_documented():
    assert [rel(p) for p in FILES] == EXPECTED
    readme = (ROOT / "manifests" / "README.md").read_text()
    for f in EXPECTED:
        if f.startswith("manifests/"):
            assert f.removeprefix("manifests/") in readme, f"{f} is not in manifests/README.md"


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_parses_with_known_kinds(path):
    for doc in docs(path):
        if "apiVersion" in doc:  # Kubernetes
            assert doc["kind"] in K8S_API, f"{rel(path)}: unexpected kind {doc['kind']}"
            assert doc["apiVersion"] == K8S_API[doc["kind"]]
            assert doc["metadata"]["name"]
        elif "services" in doc:  # Docker Compose
            for name, svc in doc["services"].items():
                assert "image" in svc, f"{rel(path)}: service {name} has no image"
        else:  # nuclio function
            assert doc["metadata"]["name"] and doc["spec"]["handler"] and doc["spec"]["runtime"]
            # on CVAT's Docker network, or http://cvat-server:8080 does not resolve
            assert doc["spec"]["platform"]["attributes"]["network"] == "cvat_cvat"


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(ch.isdigit() for ch in tag)


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_images_are_ours_at_this_version_or_pinned(path):
    images = [(kp, v) for doc in docs(path) for kp, k, v in nodes(doc)
              if k == "baseImage" or (k == "image" and kp[-1:] != ("build",))]  # not nuclio's
    # spec.build.image: that is the name nuclio gives the image it builds
    assert images, f"{rel(path)} names no image"
    for _, image in images:
        if image.split(":")[0] == "auralsam2":
            assert image == OUR_IMAGE, f"{rel(path)}: {image} (the package is {VERSION})"
        else:
            assert _pinned(image), f"{rel(path)}: third-party image {image} is not pinned"
        if image.startswith("heartexlabs/label-studio:"):
            tested = re.search(r'label-studio==([\d.]+)',
                               (ROOT / "scripts/setup.d/40-labelstudio.sh").read_text())[1]
            assert image.endswith(f":{tested}"), "not the Label Studio the tests run"


def test_ray_manifests_use_the_pinned_ray():
    pin = re.search(r"RAY_VERSION:-([\d.]+)", (ROOT / "scripts/setup.d/50-ray.sh").read_text())[1]
    for name in ("rayjob-batch.yaml", "rayservice.yaml"):
        [doc] = docs(ROOT / "manifests" / "ray" / name)
        spec = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
        assert spec["rayVersion"] == pin


def test_commands_are_registered_subcommands_with_valid_flags():
    parser = build_parser()
    used = set()
    for path in FILES:
        for argv in (a for doc in docs(path) for a in command_lines(doc)):
            try:
                args = parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{rel(path)}: `{shlex.join(argv)}` does not parse")
            used.add(args.command)
            if args.command == "download":
                assert set(args.names) <= set(REGISTRY), f"{rel(path)}: unknown weights"
    # the files really run these (a broken collector would find none)
    assert used == {"batch", "download", "labelstudio", "serve"}
    [doc] = docs(ROOT / "manifests/ray/rayjob-batch.yaml")
    [argv] = [a for a in command_lines(doc) if a[1] == "batch"]
    assert argv[:6] == ["auralsam2", "batch", "/data/manifest.txt", "--out", "/data/results",
                        "--ray"]


def _resolve(import_string: str, package: str | None = None):
    module, _, attr = import_string.partition(":")
    return getattr(importlib.import_module(module, package), attr)


def test_nuclio_handlers_and_build_imports_resolve():
    for path in ROOT.glob("plugins/cvat/function*.yaml"):
        [doc] = docs(path)
        handler = doc["spec"]["handler"]  # relative to the function's folder
        assert callable(_resolve(f"auralsam2_plugins.cvat.{handler}"))
        checks = [m[1] for _, k, v in nodes(doc) if k == "value" and isinstance(v, str)
                  for m in re.finditer(r'python -c "import ([^"]+)"', v)]
        assert checks, f"{rel(path)}: no build-time import check found"
        for module in ",".join(checks).split(","):
            importlib.import_module(module.strip())


def test_rayservice_imports_the_serve_app_and_its_args_fit_the_cluster(monkeypatch):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    from ray import serve

    import auralsam2_service.ray_serve as rs

    [doc] = docs(ROOT / "manifests/ray/rayservice.yaml")
    [app] = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    builder = _resolve(app["import_path"])
    assert builder is rs.build_app
    assert isinstance(builder(app["args"]), serve.Application)

    seen = {}

    class Recorder:
        @staticmethod
        def options(**kw):
            seen.update(kw)
            return Recorder

        @staticmethod
        def bind(overrides):
            seen["overrides"] = overrides

    monkeypatch.setattr(rs, "AuralSAM2Service", Recorder)
    builder(app["args"])
    [workers] = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert seen["num_replicas"] == workers["replicas"] == workers["maxReplicas"]
    assert seen["ray_actor_options"]["num_gpus"] == float(limits["nvidia.com/gpu"])
    with pytest.raises(ValueError, match="unknown build_app arguments"):
        builder({"replica": "2"})


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_env_vars_are_read_by_the_code_and_weights_are_known(path):
    readme = (ROOT / "manifests" / "README.md").read_text() + (ROOT / "README.md").read_text()
    for doc in docs(path):
        for name, value in env_entries(doc):
            if name.startswith(("AURALSAM2_", "LABEL_STUDIO_", "CVAT_")):
                quoted = re.compile(rf"[\"']{name}[\"']")  # a whole name, not a prefix
                assert quoted.search(CODE_TEXT) or re.search(rf"\b{name}\b", _script_text()), \
                    f"{rel(path)}: {name} is read nowhere"
            if name.endswith("_CHECKPOINT") and value:
                assert value in REGISTRY, f"{rel(path)}: {name}={value} is not a registry name"
        for _, k, v in nodes(doc):
            if k == "secretKeyRef":
                assert v["name"] in readme, f"{rel(path)}: Secret {v['name']} is undocumented"


def test_cvat_deploy_script_passes_only_variables_the_function_reads():
    """deploy.sh's --env names and mounted secrets (NAME_FILE) are read by plugins/cvat."""
    script = (ROOT / "manifests/cvat/deploy.sh").read_text()
    plain = set(re.findall(r'--env "([A-Z0-9_]+)=', script))
    secrets = set(re.findall(r"^mount_secret ([A-Z0-9_]+) ", script, re.M))
    assert {"CVAT_URL", "CVAT_ORG"} <= plain
    assert {"CVAT_ACCESS_TOKEN", "CVAT_PASSWORD", "AURALSAM2_CVAT_WEBHOOK_SECRET"} == secrets
    cvat_code = "\n".join(p.read_text() for p in (ROOT / "plugins/cvat").glob("*.py"))
    for name in plain:
        assert f'"{name}"' in cvat_code, f"deploy.sh passes {name}, read nowhere"
    for name in secrets:  # read as NAME or NAME_FILE (auralsam2_core.env.secret)
        assert re.search(rf'_?secret\(env, "{name}"\)', cvat_code), f"{name} is read nowhere"


def _script_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "scripts").rglob("*.sh"))


@pytest.mark.parametrize("path", [*FILES, ROOT / "Dockerfile", ROOT / "manifests/README.md"],
                         ids=rel)
def test_repository_paths_they_mention_exist(path):
    text = path.read_text(encoding="utf-8")
    for ref in REPO_PATH.findall(text):
        if ref in BUILT:  # an output of a script in the repository, not a source
            assert ref in (ROOT / BUILT[ref]).read_text()
            continue
        assert list(ROOT.glob(ref)), f"{rel(path)} mentions {ref}, which does not exist"
    if path.suffix == ".md":
        for link in re.findall(r"\]\(([^)#:]+)\)", text):  # relative markdown links
            assert (path.parent / link).exists(), f"{rel(path)}: broken link {link}"
    for doc in docs(path) if path.suffix in (".yaml", ".yml") else []:
        for svc in (doc.get("services") or {}).values():
            build = svc.get("build")
            if build:  # compose build context relative to the compose file
                assert (path.parent / build["context"] / build["dockerfile"]).is_file()
                assert (path.parent / build["context"]).resolve() == ROOT


def test_dockerfile_builds_from_existing_paths_without_the_test_only_servers():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim-bookworm"
    for ln in lines:
        op, *args = ln.split()
        if op in ("COPY", "ADD"):
            for src in [a for a in args if not a.startswith("--")][:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "bash scripts/setup.sh" in text
    for switch, script in (("AURALSAM2_NO_LABEL_STUDIO_SERVER=1", "40-labelstudio.sh"),
                           ("AURALSAM2_NO_BROWSER=1", "20-fiftyone.sh")):
        assert switch in text
        assert switch.split("=")[0] in (ROOT / "scripts/setup.d" / script).read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".venv-labelstudio", ".git"} <= set(ignored)  # the image makes its own


def test_label_studio_server_switch_skips_the_server_venv(tmp_path):
    """AURALSAM2_NO_LABEL_STUDIO_SERVER=1 (the image) makes no server venv; pip is stubbed."""
    ls_venv = tmp_path / "ls-venv"
    env = {**os.environ, "PIP": "true", "VENV": str(tmp_path / "venv"),
           "AURALSAM2_LS_VENV": str(ls_venv), "AURALSAM2_NO_LABEL_STUDIO_SERVER": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts/setup.d/40-labelstudio.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "no Label Studio server venv" in r.stdout and not ls_venv.exists()
