"""Static checks of what is deployed but cannot run here (no Docker engine, no cluster):
Envoy configs (`envoy --mode validate`), the compose files (compose specification schema,
build contexts, Dockerfile targets, health-check commands), the images' code and
dependencies, and the Kubernetes manifests (`kubectl kustomize` + `kubernetes-validate
--strict`). Each check is shown to fail on a broken input, so a pass means something.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from packaging.requirements import Requirement

from services.common.local import free_port
from services.launcher import envoy

BIN = Path(sys.executable).parent
ENVOY_YAML = REPO / "deploy" / "envoy" / "envoy.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
REQUIREMENTS = REPO / "deploy" / "docker" / "requirements"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
K8S = REPO / "deploy" / "k8s"
# Proto packages and the service each declares: llmserve.<name>.v1.<Service>.
PROTO_SERVICES = {
    path.parent.parent.name: re.search(r"^service (\w+)", path.read_text(), re.M).group(1)
    for path in (REPO / "protos" / "llmserve").glob("*/v1/*.proto")
    if re.search(r"^service ", path.read_text(), re.M)
}
# Services whose code lands with issue 4; their images are checked once their package exists.
PENDING = {"embedding": "services/embedding", "retrieval": "services/retrieval"}


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---- Envoy ------------------------------------------------------------------------------


def envoy_validate(path: Path) -> subprocess.CompletedProcess:
    return run(envoy.find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "error")


def rendered_local_config(tmp_path: Path) -> Path:
    config = envoy.render_config(
        ENVOY_YAML,
        listen_host="127.0.0.1",
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        upstreams={"registry": ["127.0.0.1:1"], "generation": ["127.0.0.1:2", "127.0.0.1:3"]},
    )
    return envoy.write_config(config, tmp_path / "local.json")


def k8s_envoy_config(tmp_path: Path) -> Path:
    rendered = render_kustomization(tmp_path, "")
    (configmap,) = [
        doc for doc in rendered if doc["kind"] == "ConfigMap" and "envoy.yaml" in doc["data"]
    ]
    path = tmp_path / "k8s-envoy.yaml"
    path.write_text(configmap["data"]["envoy.yaml"])
    return path


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(lambda tmp: ENVOY_YAML, id="compose"),
        pytest.param(rendered_local_config, id="launcher-and-tests"),
        pytest.param(k8s_envoy_config, id="kubernetes-configmap"),
    ],
)
def test_envoy_validates_every_config(tmp_path, config):
    result = envoy_validate(config(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_envoy_validate_rejects_a_broken_config(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(ENVOY_YAML.read_text().replace("cluster: generation", "cluster: nowhere", 1))
    result = envoy_validate(broken)
    assert result.returncode != 0
    assert "nowhere" in result.stdout + result.stderr


def test_envoy_routes_each_proto_package_to_its_cluster_with_health_checks():
    config = yaml.safe_load(ENVOY_YAML.read_text())
    resources = config["static_resources"]
    clusters = {cluster["name"]: cluster for cluster in resources["clusters"]}
    listeners = {listener["name"]: listener for listener in resources["listeners"]}

    def routes(listener):
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        return [r for host in manager["route_config"]["virtual_hosts"] for r in host["routes"]]

    grpc_routes = routes(listeners[envoy.GRPC_LISTENER])
    for package, service in PROTO_SERVICES.items():
        prefix = f"/llmserve.{package}.v1."
        matching = [r for r in grpc_routes if r["match"].get("prefix") == prefix]
        assert matching and matching[0]["route"]["cluster"] == package, prefix
        (check,) = clusters[package]["health_checks"]
        assert check["grpc_health_check"]["service_name"] == f"llmserve.{package}.v1.{service}"
    assert clusters["edge"]["health_checks"][0]["http_health_check"]["path"] == "/health"

    for name, cluster in clusters.items():
        (check,) = cluster["health_checks"]
        # Failover waits for an idle cluster's next check: the default is 60 s.
        assert check["no_traffic_interval"] == "2s", name
        # Panic mode would send traffic to dead hosts once half of them are down.
        assert cluster["common_lb_config"]["healthy_panic_threshold"]["value"] == 0, name
        # Health changes reach the workers at once, not up to 1 s later (the default).
        assert cluster["common_lb_config"]["update_merge_window"] == "0s", name
    for route in routes(listeners[envoy.HTTP_LISTENER]) + grpc_routes:
        # The 15 s default route timeout would cut long streams.
        assert route["route"]["timeout"] == "0s", route["match"]
        assert route["route"]["retry_policy"]["retry_on"], route["match"]
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


# ---- Compose -----------------------------------------------------------------------------


def check_compose_schema(*paths: Path) -> subprocess.CompletedProcess:
    return run(
        str(BIN / "check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        *map(str, paths),
    )


def test_compose_files_validate_against_the_compose_specification():
    result = check_compose_schema(COMPOSE, COMPOSE_GPU)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("start_period:", "start_perod:", 1))
    result = check_compose_schema(broken)
    assert result.returncode != 0 and "start_perod" in result.stdout


def dockerfile_stages() -> dict[str, dict]:
    """stage name -> {parent, env, copies (sources), requirements, user, cmd}."""
    stages: dict[str, dict] = {}
    current = None
    lines = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            current = words[-1]
            stages[current] = {
                "parent": words[1] if len(words) == 4 else None,
                "env": {},
                "copies": [],
                "user": None,
                "cmd": None,
            }
        elif current is None:
            continue
        elif instruction == "COPY":
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            if not any(w.startswith("--from") for w in words):
                stages[current]["copies"] += sources
        elif instruction == "ENV":
            stages[current]["env"].update(w.split("=", 1) for w in words[1:] if "=" in w)
        elif instruction == "USER":
            stages[current]["user"] = words[1]
        elif instruction == "CMD":
            stages[current]["cmd"] = ast.literal_eval(line.split(None, 1)[1])
    return stages


def resolved_stage(name: str) -> dict:
    """A stage with everything it inherits from its parents."""
    stages = dockerfile_stages()
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name]["parent"]
    merged = {"env": {}, "copies": [], "user": None, "cmd": None}
    for stage in reversed(chain):
        merged["env"].update(stage["env"])
        merged["copies"] += stage["copies"]
        merged["user"] = stage["user"] or merged["user"]
        merged["cmd"] = stage["cmd"] or merged["cmd"]
    return merged


def compose_services(path: Path = COMPOSE) -> dict[str, dict]:
    return yaml.safe_load(path.read_text())["services"]


def test_dockerfile_passes_hadolint(tmp_path):
    result = run(str(BIN / "hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install curl\n")
    assert run(str(BIN / "hadolint"), "--no-color", str(sloppy)).returncode != 0


def test_compose_build_contexts_dockerfiles_and_targets_exist():
    stages = dockerfile_stages()
    built = {}
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in compose_services(path).items():
            build = service.get("build")
            if build is None:
                continue
            base = compose_services()[name]["build"]
            context = REPO / build.get("context", base["context"])
            dockerfile = context / build.get("dockerfile", base["dockerfile"])
            assert context.is_dir(), (name, context)
            assert dockerfile.is_file(), (name, dockerfile)
            assert build["target"] in stages, (name, build["target"])
            built[(path.name, name)] = build["target"]
    assert set(built.values()) >= {
        "registry",
        "generation",
        "generation-gpu",
        "embedding",
        "retrieval",
        "edge",
    }
    # Every file a stage copies from the context exists (pending services excepted) and is
    # sent to the builder: .dockerignore excludes everything but what it re-includes.
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    included = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for name, stage in stages.items():
        for source in stage["copies"]:
            assert any(source == i or source.startswith(f"{i}/") for i in included), source
            if source.rstrip("/") in PENDING.values() and not (REPO / source).exists():
                continue
            assert (REPO / source).exists(), (name, source)


@pytest.mark.parametrize("name", sorted(n for n, s in compose_services().items() if "build" in s))
def test_compose_health_check_runs_a_command_its_image_has(name):
    service = compose_services()[name]
    stage = resolved_stage(service["build"]["target"])
    test = service["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"], test
    module_path = REPO / "services" / "common" / "healthcheck.py"
    assert module_path.is_file() and "services/common" in stage["copies"]
    assert stage["user"] == "10001:10001", "images run as the unprivileged user llmserve"
    kind, address = test[4], test[5]
    if kind == "grpc":
        port = address.rsplit(":", 1)[1]
        assert stage["env"][f"{name.upper()}_PORT"] == port
        assert test[6] == f"llmserve.{name}.v1.{PROTO_SERVICES[name]}"
        # The port Envoy's cluster targets is the one the service listens on.
        cluster = next(
            c
            for c in yaml.safe_load(ENVOY_YAML.read_text())["static_resources"]["clusters"]
            if c["name"] == name
        )
        socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert socket["address"]["socket_address"] == {"address": name, "port_value": int(port)}
    else:
        assert kind == "http" and address == f"http://127.0.0.1:{stage['env']['EDGE_PORT']}/health"
    # What the container runs exists too (pending services excepted).
    module = stage["cmd"][stage["cmd"].index("-m") + 1]
    module_dir = REPO / module.replace(".", "/")
    if name in PENDING and not module_dir.exists():
        pytest.skip(f"{module} lands with issue 4")
    assert (module_dir / "__main__.py").is_file(), module


def test_compose_depends_on_waits_for_health_without_cycles():
    services = compose_services()
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_healthy" if "healthcheck" in services[dependency] else None
            if expected:
                assert condition["condition"] == expected, (name, dependency)
    # Topological order exists.
    remaining = {n: set(s.get("depends_on", {})) for n, s in services.items()}
    while remaining:
        ready = [n for n, deps in remaining.items() if not deps & remaining.keys()]
        assert ready, f"depends_on cycle among {sorted(remaining)}"
        for n in ready:
            del remaining[n]


def test_compose_data_lives_on_named_volumes_and_weaviate_needs_a_key():
    document = yaml.safe_load(COMPOSE.read_text())
    services = document["services"]
    assert {"model-cache", "postgres-data", "redis-data", "weaviate-data"} <= set(
        document["volumes"]
    )
    registry_env = resolved_stage("registry")["env"]
    mounts = dict(v.split(":")[:2] for v in services["registry"]["volumes"])
    assert mounts["model-cache"] == registry_env["REGISTRY_CACHE_DIR"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    for reader in ("generation", "embedding"):
        # Artifact paths recorded by the registry must resolve at the same place.
        assert f"model-cache:{registry_env['REGISTRY_CACHE_DIR']}:ro" in services[reader]["volumes"]
    weaviate = services["weaviate"]["environment"]
    assert weaviate["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "false"
    assert weaviate["AUTHENTICATION_APIKEY_ENABLED"] == "true"
    assert "weaviate-data:/var/lib/weaviate" in services["weaviate"]["volumes"]
    # Admin stays on Envoy's loopback; only HTTP and loopback gRPC are published.
    assert all("9901" not in port for port in services["envoy"]["ports"])


def test_compose_registry_replicas_share_postgresql_and_edges_share_redis():
    services = compose_services()
    registry = services["registry"]
    assert registry["deploy"]["replicas"] >= 2
    assert registry["environment"]["REGISTRY_DATABASE_URL"].startswith(
        "postgresql://llmserve:${POSTGRES_PASSWORD:?"
    )
    assert registry["environment"]["REGISTRY_DATABASE_URL"].endswith("@postgres:5432/llmserve")
    assert registry["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert registry["environment"]["REGISTRY_ISSUE_DEV_KEY"] == "false"
    # Uploaded files: in the same PostgreSQL, readable by every retrieval replica.
    retrieval = services["retrieval"]
    assert (
        retrieval["environment"]["RETRIEVAL_DATABASE_URL"]
        == (registry["environment"]["REGISTRY_DATABASE_URL"])
    )
    assert retrieval["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # Replicas are reached through Envoy, whose registry cluster lists every one.
    for name in ("edge", "generation", "embedding"):
        assert services[name]["environment"][f"{name.upper()}_REGISTRY_ADDR"] == "envoy:50050"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert services["edge"]["environment"]["EDGE_REDIS_URL"].startswith(
        "redis://:${REDIS_PASSWORD:?"
    )
    # The edge's usage outbox on a named volume: unshipped records outlive the container.
    data_dir = services["edge"]["environment"]["EDGE_DATA_DIR"]
    assert f"edge-data:{data_dir}" in services["edge"]["volumes"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "--requirepass" in redis["command"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_compose_gpu_override_reserves_an_nvidia_gpu_for_generation():
    generation = compose_services(COMPOSE_GPU)["generation"]
    (device,) = generation["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert generation["environment"]["GENERATION_DEVICE"] == "cuda"
    stage = resolved_stage(generation["build"]["target"])
    assert stage["env"]["GENERATION_DEVICE"] == "cuda"
    gpu_requirements = (REQUIREMENTS / "generation-gpu.txt").read_text()
    assert "onnxruntime-gpu" in gpu_requirements
    assert not re.search(r"^onnxruntime[=<>]", gpu_requirements, re.M)


# ---- Images: code and dependencies --------------------------------------------------------

LOCAL_TOP = {"services", "edge", "llmserve"}


def import_closure(package: str) -> tuple[set[str], set[str]]:
    """Third-party top-level modules and local source dirs that `package` needs, following
    imports through the repository's own modules."""
    todo = [
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / package.replace(".", "/")).rglob("*.py")
    ]
    seen, third_party, local_dirs = set(), set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        base = REPO / module.replace(".", "/")
        path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if not path.exists():
            continue
        parts = path.relative_to(REPO).parts
        local_dirs.add("/".join(parts[:2]) if parts[0] == "services" else parts[0])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "llmserve":
                    third_party.add("google")  # generated stubs need protobuf
                elif top in LOCAL_TOP:
                    todo.append(name)
                elif top not in sys.stdlib_module_names:
                    third_party.add(top)
    return third_party, {d for d in local_dirs if not d.endswith(".py")}


def requirement_names(filename: str) -> dict[str, str]:
    """distribution name (normalized) -> specifier, following -r includes."""
    found = {}
    for line in (REQUIREMENTS / filename).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found.update(requirement_names(line[3:].strip()))
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?(.*)", line)
        found[normalize(match.group(1))] = match.group(3).strip()
    return found


def with_dependencies(names: set[str]) -> set[str]:
    """`names` and what pip installs along with them (their declared requirements, as the
    versions in this environment declare them)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalize(requirement.name))
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stage_requirements(target: str, weights: bool = False) -> dict[str, str]:
    """Requirements the stage installs with their dependencies, or (weights=True) the weight
    packages it installs with --no-deps."""
    files = [Path(c).name for c in resolved_stage(target)["copies"] if c.endswith(".txt")]
    merged = {}
    for filename in files:
        if ("weights" in filename) == weights:
            merged.update(requirement_names(filename))
    return merged


# The service image targets and the package each runs.
IMAGE_PACKAGES = {
    "registry": "services.registry",
    "generation": "services.generation",
    "generation-gpu": "services.generation",
    "embedding": "services.embedding",
    "retrieval": "services.retrieval",
    "edge": "edge",
}


@pytest.mark.parametrize("target", sorted(IMAGE_PACKAGES))
def test_each_image_has_the_code_and_dependencies_its_service_imports(target):
    package = IMAGE_PACKAGES[target]
    if not (REPO / package.replace(".", "/")).is_dir():
        pytest.skip(f"{package} lands with issue 4")
    third_party, local_dirs = import_closure(package)
    stage = resolved_stage(target)
    copied = {c.rstrip("/") for c in stage["copies"]}
    assert local_dirs <= copied, f"{target} image lacks {sorted(local_dirs - copied)}"
    installed = set(stage_requirements(target))
    # onnxruntime-gpu provides the `onnxruntime` module.
    if "onnxruntime-gpu" in installed:
        installed.add("onnxruntime")
    installed = with_dependencies(installed) | set(stage_requirements(target, weights=True))
    distributions = packages_distributions()
    for module in sorted(third_party):
        providers = {normalize(d) for d in distributions.get(module, [module])}
        assert providers & installed, (
            f"{target} image imports {module} but installs none of {providers}"
        )


def pyproject_specifiers() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = {}
    for requirement in project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?(.*)", requirement)
        specs[normalize(match.group(1))] = match.group(3).strip()
    return specs


def test_image_requirements_pin_what_pyproject_pins():
    specs = pyproject_specifiers()
    for path in REQUIREMENTS.glob("*.txt"):
        if "weights" in path.name:
            continue
        for name, spec in requirement_names(path.name).items():
            counterpart = "onnxruntime" if name == "onnxruntime-gpu" else name
            if counterpart in specs:
                assert spec == specs[counterpart], (path.name, name, spec, specs[counterpart])
    # The weight packages match the Makefile's --no-deps pins.
    makefile = (REPO / "Makefile").read_text()
    for line in (REQUIREMENTS / "registry-weights.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert line.strip() in makefile, line


def test_import_closure_sees_what_a_service_needs():
    # The check above is only as good as this: it must see onnxruntime behind generation.
    third_party, local_dirs = import_closure("services.generation")
    assert {"onnxruntime", "tokenizers", "grpc", "google"} <= third_party
    assert {"services/common", "services/generation"} <= local_dirs


# ---- Kubernetes ---------------------------------------------------------------------------


SECRET_FILES = ("admin-token", "weaviate-api-key", "postgres-password", "redis-password")


def render_kustomization(tmp_path: Path, overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed on this machine")
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "deploy", copy / "deploy")
    secrets = copy / "deploy" / "k8s" / "base" / "secrets"
    secrets.mkdir(exist_ok=True)
    for name in SECRET_FILES:
        (secrets / name).write_text(f"test-{name}")
    result = run(kubectl, "kustomize", str(copy / "deploy" / "k8s" / overlay))
    assert result.returncode == 0, result.stderr
    (tmp_path / "rendered.yaml").write_text(result.stdout)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess:
    return run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(path))


@pytest.mark.parametrize("overlay", ["", "overlays/gpu"], ids=["cpu", "gpu"])
def test_kubernetes_manifests_render_and_validate_strictly(tmp_path, overlay):
    documents = render_kustomization(tmp_path, overlay)
    result = kubernetes_validate(tmp_path / "rendered.yaml")
    assert result.returncode == 0, result.stdout + result.stderr

    by_kind: dict[str, dict[str, dict]] = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "llmserve", doc["metadata"]["name"]
    deployments = by_kind["Deployment"]
    assert set(deployments) == {
        "registry",
        "generation",
        "embedding",
        "retrieval",
        "envoy",
    }
    for name, service in PROTO_SERVICES.items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        port = container["ports"][0]["containerPort"]
        assert container["readinessProbe"]["grpc"] == {
            "port": port,
            "service": f"llmserve.{name}.v1.{service}",
        }
        assert container["livenessProbe"]["grpc"]["port"] == port
        assert deployments[name]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    # Envoy must see each replica: headless Services for what it balances.
    for name in ("generation", "embedding", "retrieval", "edge"):
        assert by_kind["Service"][name]["spec"]["clusterIP"] == "None", name
    assert set(by_kind["HorizontalPodAutoscaler"]) == {"generation", "embedding", "registry"}
    assert set(by_kind["StatefulSet"]) == {"weaviate", "postgres", "redis", "edge"}
    (secret,) = by_kind["Secret"].values()
    assert set(secret["data"]) == set(SECRET_FILES)
    (configmap,) = by_kind["ConfigMap"].values()
    assert configmap["data"]["envoy.yaml"] == ENVOY_YAML.read_text()
    if overlay:
        (container,) = deployments["generation"]["spec"]["template"]["spec"]["containers"]
        assert container["image"].startswith("llmserve/generation-gpu:")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"name": "GENERATION_DEVICE", "value": "cuda"} in container["env"]


def env_of(workload: dict) -> dict[str, dict]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {variable["name"]: variable for variable in container["env"]}


def secret_ref(variable: dict) -> str:
    """The Secret key a variable comes from (never a literal in the manifest)."""
    ref = variable["valueFrom"]["secretKeyRef"]
    assert ref["name"].startswith("llmserve-secrets"), ref
    return ref["key"]


def test_kubernetes_registry_replicas_share_postgresql_and_edges_share_redis(tmp_path):
    documents = render_kustomization(tmp_path, "")
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    registry = by_kind["Deployment"]["registry"]
    # Several replicas, autoscaled, each reachable by Envoy, one kept through a node drain.
    assert registry["spec"]["replicas"] >= 2
    assert "strategy" not in registry["spec"]  # a rolling update, not Recreate
    hpa = by_kind["HorizontalPodAutoscaler"]["registry"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "registry" and hpa["minReplicas"] >= 2
    assert by_kind["Service"]["registry"]["spec"]["clusterIP"] == "None"
    assert by_kind["PodDisruptionBudget"]["registry"]["spec"]["minAvailable"] == 1
    # The database URLs take the password from the Secret, through an env reference (the
    # registry's, and the retrieval replicas' that keep uploaded files there).
    for name, url in (
        ("registry", "REGISTRY_DATABASE_URL"),
        ("retrieval", "RETRIEVAL_DATABASE_URL"),
    ):
        env = env_of(by_kind["Deployment"][name])
        assert secret_ref(env["POSTGRES_PASSWORD"]) == "postgres-password"
        assert env[url]["value"] == (
            "postgresql://llmserve:$(POSTGRES_PASSWORD)@postgres:5432/llmserve"
        )
        assert list(env).index("POSTGRES_PASSWORD") < list(env).index(url)
    assert "REGISTRY_DB_PATH" not in env_of(registry)
    assert env_of(registry)["REGISTRY_ISSUE_DEV_KEY"]["value"] == "false"
    # The callers reach the replicas through Envoy.
    for name in ("edge", "generation", "embedding"):
        workloads = by_kind["StatefulSet"] if name == "edge" else by_kind["Deployment"]
        caller = env_of(workloads[name])
        assert caller[f"{name.upper()}_REGISTRY_ADDR"]["value"] == "envoy:50050"
    edge_set = by_kind["StatefulSet"]["edge"]
    edge = env_of(edge_set)
    assert secret_ref(edge["REDIS_PASSWORD"]) == "redis-password"
    assert edge["EDGE_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    # Each edge's usage outbox on a claim of its own, which outlives the pod.
    (claim,) = edge_set["spec"]["volumeClaimTemplates"]
    (container,) = edge_set["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == edge["EDGE_DATA_DIR"]["value"]

    # PostgreSQL and Redis: a persistent volume where they keep data, probes, the Secret.
    for name, data_dir, password_var in (
        ("postgres", "/var/lib/postgresql/data", "POSTGRES_PASSWORD"),
        ("redis", "/data", "REDIS_PASSWORD"),
    ):
        statefulset = by_kind["StatefulSet"][name]
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == data_dir
        assert container["readinessProbe"]["exec"] and container["livenessProbe"]["exec"]
        assert secret_ref(env_of(statefulset)[password_var]).endswith("-password")
        assert by_kind["Service"][name]["spec"]["ports"][0]["port"] in (5432, 6379)
    redis_args = by_kind["StatefulSet"]["redis"]["spec"]["template"]["spec"]["containers"][0]
    assert redis_args["args"][redis_args["args"].index("--appendonly") + 1] == "yes"
    # No secret value anywhere but in the Secret.
    rendered = (tmp_path / "rendered.yaml").read_text()
    for name in SECRET_FILES:
        assert rendered.count(base64.b64encode(f"test-{name}".encode()).decode()) == 1
        assert f"test-{name}" not in rendered


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path):
    broken = tmp_path / "broken.yaml"
    manifest = yaml.safe_load((K8S / "base" / "namespace.yaml").read_text())
    manifest["spec"] = {"finalizers": ["kubernetes"], "replicas": 3}
    broken.write_text(yaml.safe_dump(manifest))
    result = kubernetes_validate(broken)
    assert result.returncode != 0 and "replicas" in result.stdout + result.stderr


# ---- The health-check command the images run -----------------------------------------------


async def healthcheck(*args: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.common.healthcheck", *args, cwd=REPO
    )
    return await asyncio.wait_for(process.wait(), 60)


async def test_healthcheck_command_speaks_grpc_health(registry_server):
    assert await healthcheck("grpc", registry_server) == 0
    assert await healthcheck("grpc", registry_server, "llmserve.registry.v1.RegistryService") == 0
    assert await healthcheck("grpc", registry_server, "llmserve.nothing.v1.Nothing") == 1
    assert await healthcheck("grpc", f"127.0.0.1:{free_port()}", "--timeout", "1") == 1


async def test_healthcheck_command_checks_http_200():
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert await healthcheck("http", f"{base}/health") == 0
        assert await healthcheck("http", f"{base}/broken") == 1
    finally:
        server.shutdown()


def test_images_run_the_envoy_version_tested_here():
    version = run(envoy.find_envoy(), "--version").stdout
    tested = re.search(r"/(\d+\.\d+\.\d+)/", version).group(1)
    assert compose_services()["envoy"]["image"] == f"envoyproxy/envoy:v{tested}"
    (deployment, *_) = load_yaml_documents(K8S / "base" / "envoy.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"envoyproxy/envoy:v{tested}"


def test_documented_registry_backup_is_consistent_while_the_registry_writes(tmp_path, chat_model):
    """docs/deploy.md backs up the live WAL database with SQLite's online backup."""
    import dataclasses
    import sqlite3

    from services.registry.store import RegistryStore

    store = RegistryStore(tmp_path / "registry.db")
    try:
        store.add_model(chat_model)
        store.add_model(dataclasses.replace(chat_model, name="second"))
        # The commits sit in registry.db-wal: a plain copy of registry.db would miss them.
        assert (tmp_path / "registry.db-wal").stat().st_size > 0
        docs = (REPO / "docs" / "deploy.md").read_text()
        assert "sqlite3.connect('/var/lib/llmserve/registry.db').backup(" in docs
        sqlite3.connect(tmp_path / "registry.db").backup(sqlite3.connect(tmp_path / "backup.db"))
    finally:
        store.close()
    restored = RegistryStore(tmp_path / "backup.db")
    try:
        assert {m.name for m in restored.list_models()} == {chat_model.name, "second"}
    finally:
        restored.close()
