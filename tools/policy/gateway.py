"""Rules for the OpenAI gateway container in a rendered serving overlay (gitops/base/deployment.yaml).

The gateway is the pod's second container, reached through the same Ingress (`/v1`, `/health`, and
nothing else of its port: not its `/metrics`), certificate, IAP and Cloud Armor policy as Triton.
Each check returns problems naming the object and what to change; tools/policy/serving.py runs them
for every serving overlay. The read-only root, HOME, non-root and capability rules hold for every
container and are checked there.
"""

from __future__ import annotations

import json

from .k8s_objects import by_kind, env_value, find, flag_value, ref

CONTAINER = "gateway"
PORT_NAME = "openai"
READY_PATH = "/health/ready"
LIVE_PATH = "/health/live"
API_PREFIX = "/v1"
# What of the gateway's port the Ingress may route: the API and the health check benchmarks call. Not
# /metrics, which answers without a key and names every client's key and its usage.
PUBLIC_PATHS = {("Prefix", API_PREFIX), ("Exact", "/health")}
METRICS_PATH = "/metrics"
# prometheus_client's multiprocess mode: where uvicorn's worker processes share their metric values.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The external Application Load Balancer's proxies and health checkers (as in components/network-policy).
LB_RANGES = ("35.191.0.0/16", "130.211.0.0/22")
# The stand-in project of this repository's examples (gitops/base `images:`, gitops/nodepools/cluster.yaml):
# an image in its registry was never pushed by anyone.
EXAMPLE_PROJECT = "example-project"
DIGEST = "@sha256:"


def _probe_problems(deployment: dict, gateway: dict, port: int) -> list[str]:
    problems = []
    for probe, path in (("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)):
        get = gateway.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in (PORT_NAME, port):
            problems.append(f"{ref(deployment)}: container {CONTAINER} {probe} must be httpGet {path} on port "
                            f"{PORT_NAME} (has {get.get('path')} on {get.get('port')})")
    return problems


def _wiring_problems(deployment: dict, gateway: dict, triton: dict) -> list[str]:
    """It calls this pod's Triton and reads the build Triton serves, from the same volume, read-only."""
    problems, name = [], ref(deployment)
    args, triton_args = gateway.get("args", []), triton.get("args", [])
    http = flag_value(triton_args, "--http-port") or "8000"
    if flag_value(args, "--triton") != f"127.0.0.1:{http}":
        problems.append(f"{name}: container {CONTAINER} must call this pod's Triton's HTTP port: "
                        f"--triton=127.0.0.1:{http} (has {flag_value(args, '--triton')})")
    served = flag_value(triton_args, "--model-repository")
    if flag_value(args, "--repository") != served:
        problems.append(f"{name}: container {CONTAINER} must read the build Triton serves: --repository={served} "
                        f"(has {flag_value(args, '--repository')})")
    triton_volume = {m.get("mountPath"): m.get("name") for m in triton.get("volumeMounts", [])}.get(served)
    mount = next((m for m in gateway.get("volumeMounts", []) if m.get("mountPath") == served), None)
    # Where triton mounts nothing at its repository path, policy/serving.py says so.
    if triton_volume and (mount is None or mount.get("name") != triton_volume or mount.get("readOnly") is not True):
        problems.append(f"{name}: container {CONTAINER} must mount volume {triton_volume} at {served} read-only, "
                        "as triton does")
    return problems


def _keys_problems(deployment: dict, pod: dict, gateway: dict) -> list[str]:
    """Its API keys come from a Secret mounted read-only, and optional: a missing Secret must not keep the
    pod from starting (the gateway then asks for no key, behind IAP as before)."""
    folder = flag_value(gateway.get("args", []), "--api-keys-dir")
    if folder is None:
        return []
    name = ref(deployment)
    mount = next((m for m in gateway.get("volumeMounts", []) if m.get("mountPath") == folder), None)
    if mount is None:
        return [f"{name}: container {CONTAINER} reads API keys from {folder} (--api-keys-dir) but mounts nothing "
                "there: mount the Secret gateway-api-keys there read-only"]
    problems = []
    if mount.get("readOnly") is not True:
        problems.append(f"{name}: container {CONTAINER} must mount its API keys ({mount.get('name')} at {folder}) "
                        "read-only")
    volume = next((v for v in pod.get("volumes", []) if v.get("name") == mount.get("name")), {})
    secret = volume.get("secret")
    if secret is None:
        problems.append(f"{name}: volume {mount.get('name')} at {folder} (the gateway's API keys) must be a Secret "
                        "volume, so the keys stay out of git and out of ConfigMaps")
    elif secret.get("optional") is not True:
        problems.append(f"{name}: volume {mount.get('name')} (Secret {secret.get('secretName')}, the gateway's API "
                        "keys) must be optional: true, or a pod without the Secret never starts")
    return problems


def _metrics_problems(deployment: dict, pod: dict, gateway: dict) -> list[str]:
    """Several workers write their metrics to files in PROMETHEUS_MULTIPROC_DIR: a memory-backed emptyDir
    mounted writable there (the root filesystem is read-only), so a scrape adds up every worker."""
    if int(flag_value(gateway.get("args", []), "--workers") or "1") <= 1:
        return []
    name, folder = ref(deployment), env_value(gateway, MULTIPROC_ENV)
    if folder is None:
        return [f"{name}: container {CONTAINER} runs several workers but sets no {MULTIPROC_ENV}: set it to a folder "
                "where a memory-backed emptyDir is mounted, in which the workers share their metrics"]
    mount = next((m for m in gateway.get("volumeMounts", []) if m.get("mountPath") == folder), None)
    volume = next((v for v in pod.get("volumes", []) if mount and v.get("name") == mount.get("name")), {})
    empty_dir = volume.get("emptyDir")
    if mount is None or mount.get("readOnly") or empty_dir is None:
        return [f"{name}: container {CONTAINER} keeps its workers' metrics in {folder} ({MULTIPROC_ENV}) but mounts no "
                "writable emptyDir there: the read-only root filesystem would fail every worker at start"]
    if empty_dir.get("medium") != "Memory" or "sizeLimit" not in empty_dir:
        return [f"{name}: volume {volume['name']} ({MULTIPROC_ENV} of container {CONTAINER}) must be an emptyDir "
                "with medium: Memory and a sizeLimit: the workers write it on every request, and it counts against "
                "the container's memory"]
    return []


def _resource_problems(deployment: dict, gateway: dict) -> list[str]:
    resources = gateway.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    if "cpu" in requests and "memory" in requests and "memory" in limits:
        return []
    return [f"{ref(deployment)}: container {CONTAINER} needs cpu and memory requests and a memory limit "
            "(it shares the pod, and its node, with Triton)"]


def _drain_problems(deployment: dict, gateway: dict, triton: dict) -> list[str]:
    """Open streams pass through the gateway: it must drain as long as Triton and stop taking work as late."""
    problems = []
    drain = flag_value(triton.get("args", []), "--exit-timeout-secs") or "30"
    if flag_value(gateway.get("args", []), "--drain-seconds") != drain:
        problems.append(f"{ref(deployment)}: container {CONTAINER} must drain as long as Triton: "
                        f"--drain-seconds={drain} (Triton's --exit-timeout-secs; has "
                        f"{flag_value(gateway.get('args', []), '--drain-seconds')})")
    pre_stop = triton.get("lifecycle", {}).get("preStop")
    if gateway.get("lifecycle", {}).get("preStop") != pre_stop:
        problems.append(f"{ref(deployment)}: container {CONTAINER} needs triton's preStop ({pre_stop}), so the load "
                        "balancer stops sending it requests, and its streams to Triton end, before it stops taking "
                        "them")
    return problems


def _service_port(objects: list[dict], port: int) -> tuple[dict | None, dict | None]:
    for service in by_kind(objects, "Service"):
        for entry in service.get("spec", {}).get("ports", []):
            if entry.get("targetPort") in (PORT_NAME, port):
                return service, entry
    return None, None


def _is_gateway(backend: dict, service: dict, entry: dict) -> bool:
    return (backend.get("name") == service["metadata"]["name"]
            and backend.get("port", {}) in ({"name": entry.get("name")}, {"number": entry.get("port")}))


def _gateway_paths(ingress: dict, service: dict, entry: dict) -> list[tuple[str, str]]:
    """(pathType, path) of every route to the gateway's port; the default backend as ("default", "")."""
    spec = ingress.get("spec", {})
    found = [("default", "")] if _is_gateway(spec.get("defaultBackend", {}).get("service", {}), service, entry) else []
    for rule in spec.get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            if _is_gateway(path.get("backend", {}).get("service", {}), service, entry):
                found.append((path.get("pathType"), path.get("path")))
    return found


def _route_problems(ingress: dict, service: dict, entry: dict) -> list[str]:
    """/v1 reaches the gateway, and nothing else of its port does: not /metrics."""
    paths = _gateway_paths(ingress, service, entry)
    problems = []
    if ("Prefix", API_PREFIX) not in paths:
        problems.append(f"{ref(ingress)}: no path {API_PREFIX} (pathType Prefix) to {ref(service)} port "
                        f"{entry.get('name')}: OpenAI clients would reach Triton instead of the gateway")
    allowed = ", ".join(f"{kind} {path}" for kind, path in sorted(PUBLIC_PATHS))
    for kind, path in paths:
        if (kind, path) not in PUBLIC_PATHS:
            where = "its default backend" if kind == "default" else f"{kind} {path}"
            problems.append(f"{ref(ingress)}: routes {where} to the gateway's port, which also serves {METRICS_PATH} "
                            f"(every client's key name and usage, asked for no key) to whoever the load balancer "
                            f"lets in; route only {allowed}")
    return problems


def _backend_config(objects: list[dict], service: dict, key: str) -> dict | None:
    annotation = service.get("metadata", {}).get("annotations", {}).get("cloud.google.com/backend-config")
    ports = json.loads(annotation).get("ports", {}) if annotation else {}
    name = ports.get(key)
    return find(objects, "BackendConfig", name or "")


def _authentication(config: dict) -> tuple:
    spec = config.get("spec", {})
    return spec.get("iap"), spec.get("securityPolicy")


def authenticates(config: dict) -> bool:
    """IAP or a Cloud Armor policy in front of the backend."""
    spec = config.get("spec", {})
    return bool(spec.get("iap", {}).get("enabled") or spec.get("securityPolicy", {}).get("name"))


def _edge_problems(objects: list[dict], port: int) -> list[str]:
    """The Service port, the Ingress route, its BackendConfig (health check, authentication)."""
    if not by_kind(objects, "Ingress"):
        return []  # no Ingress at all is policy/serving.py's message
    service, entry = _service_port(objects, port)
    if service is None:
        return [f"no Service has a port with targetPort {PORT_NAME}: the Ingress cannot reach the gateway "
                "(gitops/base/service.yaml)"]
    problems = [p for ingress in by_kind(objects, "Ingress") for p in _route_problems(ingress, service, entry)]
    config = _backend_config(objects, service, entry.get("name", ""))
    triton_config = _backend_config(objects, service, "http")
    if config is None:
        return [*problems, f"{ref(service)}: no BackendConfig for port {entry.get('name')} (annotation "
                f"cloud.google.com/backend-config); the gateway's backend would have no health check or "
                "authentication"]
    check = config.get("spec", {}).get("healthCheck", {})
    if check.get("requestPath") != READY_PATH or check.get("port") != port:
        problems.append(f"{ref(config)}: healthCheck must be {READY_PATH} on port {port}, the gateway's "
                        f"(has {check.get('requestPath')} on {check.get('port')})")
    # Where Triton's backend has no authentication, policy/serving.py says so.
    if triton_config is not None and authenticates(triton_config) and (
            _authentication(config) != _authentication(triton_config)):
        problems.append(f"{ref(config)}: iap and securityPolicy must be {ref(triton_config)}'s: /v1 needs the "
                        "same authentication as the rest of the endpoint")
    return problems


def _admits_lb(rule: dict, port: int) -> bool:
    cidrs = {peer.get("ipBlock", {}).get("cidr") for peer in rule.get("from", [])}
    ports = {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}
    return set(LB_RANGES) <= cidrs and (("TCP", port) in ports or ("TCP", PORT_NAME) in ports)


def _network_problems(objects: list[dict], port: int) -> list[str]:
    policies = by_kind(objects, "NetworkPolicy")
    if not policies or any(_admits_lb(rule, port) for p in policies for rule in p.get("spec", {}).get("ingress", [])):
        return []  # no policy at all is policy/serving.py's message
    return [f"no NetworkPolicy lets the load balancer ({', '.join(LB_RANGES)}) reach the gateway on TCP {port}: "
            "every /v1 request and health check would be dropped (components/network-policy)"]


def check_image(deployment: dict, pod: dict, stand_in_pin: bool) -> list[str]:
    """Once an overlay pins a real build, its gateway is an image someone pushed, pinned by digest.

    The repository's overlays pin stand-in builds (pin_gate.EXAMPLE_MARK) and the base's example
    gateway image, which renders but was never pushed; the first real pin is where both must be real,
    so the repository's own checks pass and a user's first deployable commit is held to it."""
    gateway = next((c for c in pod.get("containers", []) if c.get("name") == CONTAINER), None)
    if gateway is None or stand_in_pin:
        return []
    image = gateway.get("image", "")
    wrong = [w for w, bad in ((f"in the example registry of {EXAMPLE_PROJECT}", f"/{EXAMPLE_PROJECT}/" in image),
                              ("not pinned by digest", DIGEST not in image)) if bad]
    if not wrong:
        return []
    return [f"{ref(deployment)}: container {CONTAINER} runs {image!r}, {' and '.join(wrong)}, but this overlay pins a "
            "real build (model-pin.yaml is no stand-in); build and push the gateway image and pin it by digest in "
            "the overlay's `images:` (docs/runbook.md, step 8)"]


def check(objects: list[dict], deployment: dict, pod: dict, triton: dict) -> list[str]:
    gateway = next((c for c in pod.get("containers", []) if c.get("name") == CONTAINER), None)
    if gateway is None:
        return [f"{ref(deployment)}: no container {CONTAINER}: nothing serves the OpenAI API (/v1) "
                "(gitops/base/deployment.yaml)"]
    port = next((p.get("containerPort") for p in gateway.get("ports", []) if p.get("name") == PORT_NAME), None)
    if port is None:
        return [f"{ref(deployment)}: container {CONTAINER} has no port named {PORT_NAME}"]
    return (_probe_problems(deployment, gateway, port) + _wiring_problems(deployment, gateway, triton)
            + _keys_problems(deployment, pod, gateway) + _metrics_problems(deployment, pod, gateway)
            + _resource_problems(deployment, gateway)
            + _drain_problems(deployment, gateway, triton)
            + _edge_problems(objects, port) + _network_problems(objects, port))
