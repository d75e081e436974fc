"""GPU-aware policy for rendered manifests: what a schema cannot say about a Triton deployment.

Every check takes rendered objects (dicts, as kustomize printed them) and returns a list of
problems, each naming the object (`Kind/name: …`) and what to change. Facts come from the GPU
catalog and the pinned versions (build/catalog.py); nothing here repeats a GPU fact.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import catalog
import layout
import yaml

from . import access, capacity, cold_start, gateway, images, monitoring, pin_gate
from .k8s_objects import by_kind, containers, env_value, find, flag_value, pod_spec, quantity, ref

ACCELERATOR_LABEL = capacity.ACCELERATOR_LABEL
GPU_RESOURCE = pin_gate.GPU_RESOURCE
TRITON_CONTAINER = "triton"
FETCH_CONTAINER = cold_start.FETCH_CONTAINER
PIN_FILE = "model-pin.yaml"
READY_PATH = "/v2/health/ready"
# What of Triton's HTTP API the Ingress may route: inference, model metadata and health. Not its admin
# API (/v2/repository load and unload, /v2/logging, /v2/trace, shared memory), which every user the
# load balancer lets in would reach.
TRITON_PUBLIC_PATHS = {("Prefix", "/v2/models"), ("Prefix", "/v2/health"), ("Exact", "/v2")}
LIVE_PATH = "/v2/health/live"


@dataclass(frozen=True)
class ServingContext:
    """What the repository says about where an overlay runs, beyond the overlay itself."""

    namespace: str | None  # the namespace the ApplicationSet deploys this overlay to
    project: dict | None  # the AppProject its Application belongs to
    node_pools: list[dict] | None  # the rendered ContainerNodePools
    compute_classes: list[dict] | None = None  # the rendered ComputeClasses (gitops/nodepools)
    application: dict | None = None  # the ApplicationSet (or Application) that syncs this overlay
    runbook: Path | None = None  # docs/runbook.md, whose sections annotations may name


def _same_quantity(a: object, b: object) -> bool:
    try:
        return a is not None and b is not None and quantity(a) == quantity(b)
    except ValueError:
        return False


# --- checks that hold in every rendered directory -------------------------------------------


def check_autoscaling(objects: list[dict]) -> list[str]:
    """minReplicas >= 1, and no `replicas` on what an HPA scales (Argo CD and the HPA would fight)."""
    problems = []
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        spec = hpa.get("spec", {})
        if spec.get("minReplicas", 1) < 1:
            problems.append(
                f"{ref(hpa)}: minReplicas is {spec['minReplicas']}; it must be at least 1 "
                "(scale to zero puts node provisioning and model load in a user's request)"
            )
        target = spec.get("scaleTargetRef", {})
        scaled = find(objects, target.get("kind", ""), target.get("name", ""))
        if scaled is not None and "replicas" in scaled.get("spec", {}):
            problems.append(
                f"{ref(scaled)}: sets spec.replicas, but {ref(hpa)} owns the replica count; remove replicas"
            )
    return problems


def check_node_pools(objects: list[dict]) -> list[str]:
    """Each GPU node pool's machine type is the catalog's for its GPU and count, tainted for GPUs."""
    problems = []
    for pool in by_kind(objects, "ContainerNodePool"):
        node = pool.get("spec", {}).get("nodeConfig", {})
        accelerators = node.get("guestAccelerator", [])
        if not accelerators:
            continue
        for accelerator in accelerators:
            label, count = accelerator.get("type"), accelerator.get("count")
            gpu = catalog.gpu_by_accelerator(label)
            if gpu is None:
                problems.append(f"{ref(pool)}: guestAccelerator type {label!r} {_unknown_accelerator()}")
                continue
            expected = gpu.machine_types.get(count)
            if expected is None:
                problems.append(
                    f"{ref(pool)}: {count} × {label} per node is not a shape build/gpus.toml knows for "
                    f"{gpu.name} (GPUs per node: {_options(gpu)})"
                )
            elif node.get("machineType") != expected:
                problems.append(
                    f"{ref(pool)}: machineType {node.get('machineType')!r} does not carry {count} × {label}; "
                    f"build/gpus.toml says {expected}"
                )
        taints = node.get("taint", [])
        if not any(t.get("key") == GPU_RESOURCE and t.get("effect") == "NO_SCHEDULE" for t in taints):
            problems.append(f"{ref(pool)}: GPU nodes need the taint {GPU_RESOURCE}=present:NO_SCHEDULE")
        if not pool.get("spec", {}).get("autoscaling"):
            problems.append(f"{ref(pool)}: no autoscaling; give the pool min and max node counts")
    return problems


def check_everywhere(objects: list[dict]) -> list[str]:
    return (
        check_autoscaling(objects)
        + check_node_pools(objects)
        + capacity.check_node_pools(objects)
        + capacity.check_compute_classes(objects)
        # Argo CD projects, credentials in env vars, Job network and run-time installs
        + access.check(objects)
    )


# --- checks for a serving overlay ---------------------------------------------------------------


def _unknown_accelerator() -> str:
    known = ", ".join(g.accelerator for g in catalog.gpus().values() if g.accelerator)
    return f"is not in the GPU catalog build/gpus.toml (known: {known})"


def _options(gpu: catalog.Gpu) -> str:
    return ", ".join(str(n) for n in gpu.gpus_per_node_options)


def _gpu_count(obj: dict, container: dict) -> tuple[int, list[str]]:
    resources = container.get("resources", {})
    request = resources.get("requests", {}).get(GPU_RESOURCE)
    limit = resources.get("limits", {}).get(GPU_RESOURCE)
    if request is None and limit is None:
        return 0, []
    if not _same_quantity(request, limit):
        # The request is what the scheduler places; count by it so one mistake gives one message.
        count = request if request is not None else limit
        return int(count) if str(count).isdigit() else 0, [
            f"{ref(obj)}: container {container.get('name')} requests {GPU_RESOURCE} {request} but limits it "
            f"to {limit}; GPU requests and limits must be equal"
        ]
    return int(quantity(limit)), []


def _check_gpu(obj: dict, pod: dict, triton: dict) -> tuple[catalog.Gpu | None, int, list[str]]:
    """The overlay's GPU (from its nodeSelector; none means the cpu target) and GPU count."""
    problems = []
    count = 0
    for container in containers(pod):
        n, errors = _gpu_count(obj, container)
        problems += errors
        if container is triton:
            count = n
        elif n:
            problems.append(f"{ref(obj)}: container {container.get('name')} requests GPUs; only triton may")
    label = pod.get("nodeSelector", {}).get(ACCELERATOR_LABEL)
    if label is None:
        if count:
            problems.append(
                f"{ref(obj)}: requests {count} {GPU_RESOURCE} but has no nodeSelector {ACCELERATOR_LABEL}; "
                "say which GPU it needs"
            )
            return None, count, problems
        return catalog.gpu("cpu"), 0, problems
    gpu = catalog.gpu_by_accelerator(label)
    if gpu is None:
        problems.append(f"{ref(obj)}: nodeSelector {ACCELERATOR_LABEL}: {label} {_unknown_accelerator()}")
        return None, count, problems
    if count == 0:
        problems.append(
            f"{ref(obj)}: selects {label} nodes but container triton requests no {GPU_RESOURCE}; "
            f"request the pinned build's tp × pp (at most {max(gpu.machine_types)})"
        )
    elif count > max(gpu.machine_types):
        # A pod may take fewer GPUs than its node carries (pods share the node), never more.
        problems.append(
            f"{ref(obj)}: requests {count} {GPU_RESOURCE}, but the largest {gpu.name} node carries "
            f"{max(gpu.machine_types)} (build/gpus.toml machine_types: {_options(gpu)}); request at most that"
        )
    return gpu, count, problems


def _check_requests(obj: dict, triton: dict, gpu: catalog.Gpu, count: int) -> list[str]:
    per = max(count, 1)
    requests = triton.get("resources", {}).get("requests", {})
    problems = []
    for resource, each, unit in (("cpu", gpu.pod_cpu, ""), ("memory", gpu.pod_memory_gib, "Gi")):
        expected = f"{each * per}{unit}"
        actual = requests.get(resource)
        if not _same_quantity(actual, expected):
            problems.append(
                f"{ref(obj)}: container triton requests {resource} {actual}, but build/gpus.toml gives "
                f"{gpu.name} pods {each}{unit} per GPU × {per} = {expected}"
            )
    return problems


def _check_probes(obj: dict, triton: dict) -> list[str]:
    problems = []
    if "startupProbe" not in triton:
        problems.append(f"{ref(obj)}: container triton has no startupProbe (engine load takes minutes)")
    for probe, path in (("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)):
        actual = triton.get(probe, {}).get("httpGet", {}).get("path")
        if actual != path:
            problems.append(f"{ref(obj)}: container triton {probe} must be httpGet {path} (has {actual})")
    readiness = cold_start.facts()["triton"]["python_model_readiness"]
    for probe in ("startupProbe", "readinessProbe"):
        spec = triton.get(probe, {})
        timeout = spec.get("timeoutSeconds", readiness["kubernetes_default_timeout_seconds"])
        if spec.get("httpGet", {}).get("path") == READY_PATH and timeout <= readiness["is_ready_timeout_seconds"]:
            problems.append(
                f"{ref(obj)}: container triton {probe} gives {READY_PATH} {timeout} s, but Triton may take "
                f"{readiness['is_ready_timeout_seconds']} s asking the ensemble's is_ready (tools/policy/"
                "upstream_facts.toml triton.python_model_readiness); a slow, healthy check would fail the probe; "
                f"set timeoutSeconds to {readiness['is_ready_timeout_seconds'] + 1}"
            )
    return problems


def _check_security(obj: dict, pod: dict) -> list[str]:
    problems = []
    context = pod.get("securityContext", {})
    if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
        problems.append(f"{ref(obj)}: pod must run as non-root (securityContext runAsNonRoot: true, runAsUser 1000)")
    pod_seccomp = context.get("seccompProfile", {}).get("type")
    for container in containers(pod):
        sc = container.get("securityContext", {})
        name = container.get("name")
        if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False or sc.get("privileged"):
            problems.append(f"{ref(obj)}: container {name} runs as root or privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{ref(obj)}: container {name} must set allowPrivilegeEscalation: false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{ref(obj)}: container {name} must drop capabilities ALL")
        if sc.get("seccompProfile", {}).get("type", pod_seccomp) != "RuntimeDefault":
            problems.append(f"{ref(obj)}: container {name} needs seccompProfile RuntimeDefault")
    return problems


def _check_repository_path(deployment: dict, pod: dict, triton: dict) -> list[str]:
    """Triton serves the copied build from the path its engines were configured for."""
    path = layout.POD_MODEL_REPOSITORY
    if f"--model-repository={path}" not in triton.get("args", []):
        return [
            f"{ref(deployment)}: container triton must serve --model-repository={path}, the path built engines "
            "are configured for (build/layout.py POD_MODEL_REPOSITORY)"
        ]
    served = {m.get("name") for m in triton.get("volumeMounts", []) if m.get("mountPath") == path}
    fetch = next((c for c in pod.get("initContainers", []) if c.get("name") == FETCH_CONTAINER), {})
    copied = {m.get("name") for m in fetch.get("volumeMounts", []) if m.get("mountPath") == path}
    if not served or served != copied:
        return [f"{ref(deployment)}: {FETCH_CONTAINER} and triton must mount the same volume at {path}"]
    return []


def _int_flag(args: list[str], flag: str, default: int) -> int:
    value = flag_value(args, flag)
    return int(value) if value and value.isdigit() else default


@dataclass(frozen=True)
class DrainPreStop:
    """The serving pod's preStop, gitops/base/drain.py, as a container's lifecycle runs it."""

    script: str
    settle: int  # --settle-seconds
    quiet_timeout: int  # --quiet-timeout-seconds
    metrics_port: int
    http_port: int


DRAIN_FLAGS = ("--settle-seconds", "--quiet-timeout-seconds", "--metrics-port", "--http-port")


def drain_prestop(container: dict) -> DrainPreStop | None:
    """The container's preStop if it runs drain.py with every flag a number; None otherwise."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(command) < 2 or command[0] != "python3" or not str(command[1]).endswith("/drain.py"):
        return None
    values = [flag_value(command[2:], flag) for flag in DRAIN_FLAGS]
    if not all(value and value.isdigit() for value in values):
        return None
    return DrainPreStop(command[1], *(int(value) for value in values))


def _check_drain_wiring(deployment: dict, pod: dict, triton: dict, drain: DrainPreStop) -> list[str]:
    """drain.py reads this Triton's ports, and every container that runs it has it mounted."""
    problems = []
    args = triton.get("args", [])
    # 8002 and 8000: tritonserver's own defaults for the two flags
    for flag, read, default in (("--metrics-port", drain.metrics_port, 8002), ("--http-port", drain.http_port, 8000)):
        served = _int_flag(args, flag, default)
        if read != served:
            problems.append(f"{ref(deployment)}: the preStop's drain.py reads {flag}={read}, but Triton serves on "
                            f"{served} ({flag}); it would never see what is in flight")
    folder = drain.script.rpartition("/")[0]
    config_maps = {v.get("name") for v in pod.get("volumes", []) if "configMap" in v}
    for container in pod.get("containers", []):
        if drain_prestop(container) is None:
            continue
        mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts", [])}
        if mounts.get(folder) not in config_maps:
            problems.append(f"{ref(deployment)}: container {container.get('name')} runs {drain.script} in its preStop "
                            f"but mounts no ConfigMap at {folder}: the hook would fail at once and SIGTERM come "
                            "without the drain")
    return problems


def _check_drain(objects: list[dict], deployment: dict, pod: dict, triton: dict) -> list[str]:
    """Shutdown numbers that constrain each other (gitops/base/deployment.yaml explains them)."""
    # tritonserver's own default for --exit-timeout-secs is 30.
    exit_timeout = _int_flag(triton.get("args", []), "--exit-timeout-secs", 30)
    drain = drain_prestop(triton)
    problems = []
    if drain is None:
        command = triton.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        problems.append(
            f"{ref(deployment)}: container triton's preStop must run drain.py (gitops/base/drain.py) with "
            f"{', '.join(f'{flag}=N' for flag in DRAIN_FLAGS)} (has {command}): on SIGTERM Triton refuses the new "
            "connections each ensemble request still needs, so the pod must wait for nothing in flight first"
        )
        drain = DrainPreStop("", 0, 0, 0, 0)
    else:
        problems += _check_drain_wiring(deployment, pod, triton, drain)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    problems += capacity.check_grace(deployment, grace, drain.settle, drain.quiet_timeout, exit_timeout)
    served = drain.quiet_timeout + exit_timeout
    for config in by_kind(objects, "BackendConfig"):
        timeout = config.get("spec", {}).get("timeoutSec", 30)
        if timeout > served:
            problems.append(
                f"{ref(config)}: timeoutSec {timeout} lets a stream run longer than the pod drains on shutdown "
                f"(the preStop's --quiet-timeout-seconds {drain.quiet_timeout} + Triton's --exit-timeout-secs "
                f"{exit_timeout} in {ref(deployment)} = {served}); raise the drain or lower the timeout"
            )
    return problems


def _backend_config(service: dict, port: dict) -> str | None:
    annotation = service.get("metadata", {}).get("annotations", {}).get("cloud.google.com/backend-config")
    if not annotation:
        return None
    mapping = json.loads(annotation)
    ports = mapping.get("ports", {})
    by_port = ports.get(port.get("name")) or ports.get(str(port.get("number")))
    if by_port is None and port.get("name"):
        # The Ingress may name the Service port by name while the annotation keys it by number.
        for service_port in service.get("spec", {}).get("ports", []):
            if service_port.get("name") == port.get("name"):
                by_port = ports.get(str(service_port.get("port")))
    return by_port or mapping.get("default")


def _ingress_backends(ingress: dict) -> Iterator[dict]:
    spec = ingress.get("spec", {})
    if "defaultBackend" in spec:
        yield spec["defaultBackend"].get("service", {})
    for rule in spec.get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            yield path.get("backend", {}).get("service", {})


def _by_path(entry: tuple[str, str]) -> str:
    return entry[1]


def _check_public_paths(ingress: dict) -> list[str]:
    problems = []
    for rule in ingress.get("spec", {}).get("rules", []):
        for path in rule.get("http", {}).get("paths", []):
            port = path.get("backend", {}).get("service", {}).get("port", {})
            if port.get("name") != "http" and port.get("number") != 8000:
                continue
            if (path.get("pathType"), path.get("path")) not in TRITON_PUBLIC_PATHS:
                allowed = ", ".join(f"{kind} {route}" for kind, route in sorted(TRITON_PUBLIC_PATHS, key=_by_path))
                problems.append(
                    f"{ref(ingress)}: routes {path.get('pathType')} {path.get('path')} to Triton's HTTP port, which "
                    "takes its admin API there too (/v2/repository loads and unloads models, /v2/logging, "
                    f"/v2/trace, shared memory) for every user the load balancer lets in; route only {allowed}"
                )
    return problems


def check_ingress(objects: list[dict]) -> list[str]:
    """An HTTPS-only GKE Ingress with a certificate, a redirect, and authentication at the LB."""
    ingresses = by_kind(objects, "Ingress")
    if not ingresses:
        return ["no Ingress: a serving overlay is reached only through the TLS Ingress (components/tls-ingress)"]
    problems = []
    for ingress in ingresses:
        annotations = ingress.get("metadata", {}).get("annotations", {})
        name = ref(ingress)
        if (annotations.get("kubernetes.io/ingress.class") or ingress["spec"].get("ingressClassName")) != "gce":
            problems.append(f"{name}: must use the GKE Ingress class gce")
        if annotations.get("kubernetes.io/ingress.allow-http") != "false":
            problems.append(f'{name}: serves plain HTTP; set annotation kubernetes.io/ingress.allow-http: "false"')
        certificates = [c.strip() for c in annotations.get("networking.gke.io/managed-certificates", "").split(",")]
        certificates = [c for c in certificates if c]
        if not certificates and not ingress["spec"].get("tls"):
            problems.append(f"{name}: has no TLS certificate (annotation networking.gke.io/managed-certificates)")
        for certificate in certificates:
            if find(objects, "ManagedCertificate", certificate) is None:
                problems.append(f"{name}: names ManagedCertificate/{certificate}, which is not rendered")
        frontend_name = annotations.get("networking.gke.io/v1beta1.FrontendConfig")
        frontend = find(objects, "FrontendConfig", frontend_name or "")
        if frontend is None:
            problems.append(f"{name}: needs a FrontendConfig (annotation networking.gke.io/v1beta1.FrontendConfig)")
        elif not frontend.get("spec", {}).get("redirectToHttps", {}).get("enabled"):
            problems.append(f"{ref(frontend)}: must redirect HTTP to HTTPS (redirectToHttps.enabled: true)")
        problems += _check_public_paths(ingress)
        # one verdict per backend, however many paths route to it
        backends = {json.dumps(b, sort_keys=True): b for b in _ingress_backends(ingress)}.values()
        for backend in backends:
            service = find(objects, "Service", backend.get("name", ""))
            if service is None:
                problems.append(f"{name}: routes to Service/{backend.get('name')}, which is not rendered")
                continue
            config_name = _backend_config(service, backend.get("port", {}))
            config = find(objects, "BackendConfig", config_name or "")
            if config is None:
                problems.append(
                    f"{ref(service)}: has no BackendConfig for the port {name} uses "
                    "(annotation cloud.google.com/backend-config); the backend would have no authentication"
                )
                continue
            spec = config.get("spec", {})
            if not gateway.authenticates(config):
                problems.append(
                    f"{ref(config)}: no authentication in front of Triton; enable iap or set a Cloud Armor "
                    "securityPolicy"
                )
            # The gateway's port has its own health check (tools/gateway.py).
            gateway_port = backend.get("port", {}).get("name") == gateway.PORT_NAME
            if not gateway_port and spec.get("healthCheck", {}).get("requestPath") != READY_PATH:
                problems.append(f"{ref(config)}: healthCheck.requestPath must be {READY_PATH}")
    return problems


def check_network_policy(objects: list[dict]) -> list[str]:
    for policy in by_kind(objects, "NetworkPolicy"):
        spec = policy.get("spec", {})
        if spec.get("podSelector") in ({}, None) and "Ingress" in spec.get("policyTypes", []) and not spec.get(
            "ingress"
        ):
            return []
    return ["no NetworkPolicy denies ingress by default (components/network-policy)"]


def read_pin(path: Path) -> tuple[dict[str, str] | None, list[str]]:
    """The data of an overlay's model-pin.yaml, or why it cannot be used."""
    if not path.is_file():
        return None, [f"{PIN_FILE} is missing; pin a published build with tools/pin.py"]
    pin = next((d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)), {})
    data = pin.get("data") or {}
    keys = pin_gate.PIN_KEYS
    missing = [key for key in keys if key not in data]
    if pin.get("kind") != "ConfigMap" or pin.get("metadata", {}).get("name") != "model-pin" or missing:
        return None, [
            f"{PIN_FILE}: not a ConfigMap named model-pin with data keys {', '.join(keys)} "
            f"(missing: {', '.join(missing) or 'none'}); rewrite it with tools/pin.py"
        ]
    return {key: str(data[key]) for key in keys}, []


def check_pin(
    pin: dict[str, str], deployment: dict, gpu: catalog.Gpu, count: int, triton: dict, pod: dict
) -> list[str]:
    """The compatibility gate (tools/policy/pin_gate.py), and the pin's URI where the init container fetches it."""
    image = images.as_built(triton.get("image", ""))
    problems = pin_gate.problems(pin, f"this overlay's {ref(deployment)}", gpu, count, image)
    if not (pin["uri"].startswith("gs://") and pin["uri"].endswith(f"/{pin['build_id']}/")):
        problems.append(f"model-pin uri {pin['uri']!r} must be gs://…/<model>/{pin['build_id']}/ (its build_id)")
    fetch = next((c for c in pod.get("initContainers", []) if c.get("name") == FETCH_CONTAINER), {})
    uri = env_value(fetch, "MODEL_URI")
    if uri != pin["uri"]:
        problems.append(
            f"{ref(deployment)}: init container {FETCH_CONTAINER} fetches {uri!r}, not the pinned {pin['uri']!r}; "
            "include the model-pin component"
        )
    return problems


def check_project(objects: list[dict], context: ServingContext) -> list[str]:
    """Every object lands where the ApplicationSet sends it and is a kind its AppProject allows."""
    problems = []
    project = context.project or {}
    spec = project.get("spec", {})
    allowed = {(k.get("group", ""), k.get("kind")) for k in spec.get("namespaceResourceWhitelist", [])}
    destinations = [d.get("namespace", "") for d in spec.get("destinations", [])]
    namespaces = set()
    for obj in objects:
        group = obj.get("apiVersion", "").rpartition("/")[0]
        namespace = obj.get("metadata", {}).get("namespace")
        if obj.get("kind") == "Namespace":
            namespace = obj.get("metadata", {}).get("name")
            if context.project is not None and not access.cluster_resource_permitted(
                project, group, "Namespace", namespace or ""
            ):
                problems.append(
                    f"{ref(obj)}: AppProject/{project['metadata']['name']} does not allow this Namespace "
                    "(clusterResourceWhitelist, by name); Argo CD would refuse to sync it"
                )
        elif context.project is not None and (group, obj.get("kind")) not in allowed:
            problems.append(
                f"{ref(obj)}: kind {group or 'core'}/{obj.get('kind')} is not in the namespaceResourceWhitelist of "
                f"AppProject/{project['metadata']['name']}; Argo CD would refuse to sync it"
            )
        namespaces.add(namespace or "")
    for namespace in sorted(namespaces):
        if context.namespace is not None and namespace != context.namespace:
            problems.append(
                f"objects are in namespace {namespace!r}, but the ApplicationSet deploys this overlay to "
                f"{context.namespace!r}; set `namespace: {context.namespace}` in its kustomization"
            )
        elif context.project is not None and not any(fnmatch.fnmatch(namespace, d) for d in destinations):
            problems.append(
                f"objects are in namespace {namespace!r}, which is not a destination of "
                f"AppProject/{project['metadata']['name']}"
            )
    return problems


def _check_node_pool_exists(deployment: dict, gpu: catalog.Gpu, count: int, pools: list[dict]) -> list[str]:
    for pool in pools:
        for accelerator in pool.get("spec", {}).get("nodeConfig", {}).get("guestAccelerator", []):
            if accelerator.get("type") == gpu.accelerator and accelerator.get("count", 0) >= count:
                return []
    smallest = min(n for n in gpu.machine_types if n >= count)
    return [
        f"{ref(deployment)}: no ContainerNodePool in gitops/nodepools has nodes with {count} × {gpu.accelerator} "
        f"or more (build/gpus.toml: {gpu.machine_types[smallest]} carries {smallest}); add one so the cluster "
        "autoscaler can place this pod"
    ]


def _check_hpa_for(objects: list[dict], deployment: dict) -> list[str]:
    """The HPA scales on a Managed Prometheus series a rendered Rules object records: every runtime's
    waiting requests are a sum of the pod's scrapes (components/monitoring rules.yaml), and a series
    nothing records would leave the HPA without a metric."""
    hpas = capacity.hpas_for(objects, deployment)
    if not hpas:
        return [f"{ref(deployment)}: no HorizontalPodAutoscaler scales it (components/autoscaling)"]
    problems = []
    recorded = monitoring.recorded(objects)
    for hpa in hpas:
        for metric in hpa["spec"].get("metrics", []):
            family, _, scraped = metric.get("pods", {}).get("metric", {}).get("name", "").partition("|")
            if family != "prometheus.googleapis.com":
                continue
            if not by_kind(objects, "PodMonitoring"):
                problems.append(
                    f"{ref(hpa)}: scales on a Managed Prometheus metric, but no PodMonitoring scrapes Triton"
                )
            scraped = scraped.partition("|")[0]
            if scraped not in recorded:
                problems.append(
                    f"{ref(hpa)}: scales on {scraped}, which no Rules object here records (the HPA would find no "
                    f"metric on some runtimes, or miss waiting requests); scale on "
                    f"{' or '.join(sorted(recorded)) or 'the series the monitoring component records'} "
                    "(docs/manifests.md, Autoscaling)"
                )
    return problems


def check_serving(objects: list[dict], pin_path: Path, context: ServingContext) -> list[str]:
    """Everything a serving overlay must be, including the pin gate."""
    problems = []
    deployments = by_kind(objects, "Deployment")
    if not deployments:
        return ["no Deployment: a serving overlay must render the Triton Deployment (gitops/base)"]
    pin, pin_problems = read_pin(pin_path)
    problems += pin_problems
    stand_in = pin_gate.is_stand_in(pin_path.read_text()) if pin_path.is_file() else True
    for deployment in deployments:
        pod = pod_spec(deployment)
        on_spot = False
        triton = next((c for c in pod.get("containers", []) if c.get("name") == TRITON_CONTAINER), None)
        if triton is None:
            problems.append(f"{ref(deployment)}: no container named {TRITON_CONTAINER}")
            continue
        gpu, count, gpu_problems = _check_gpu(deployment, pod, triton)
        problems += gpu_problems
        if gpu is not None:
            if count <= max(gpu.machine_types):
                problems += _check_requests(deployment, triton, gpu, count)
                problems += capacity.check_node_fit(deployment, gpu, count)
                if count and context.node_pools is not None:
                    classes = context.compute_classes or []
                    problems += _check_node_pool_exists(deployment, gpu, count, context.node_pools)
                    problems += capacity.check_spot(
                        objects, deployment, pod, gpu.accelerator, context.node_pools, classes
                    )
                    problems += capacity.check_serving_nodes(
                        deployment, pod, gpu, pin, context.node_pools, classes, cold_start.cold_start_sum(gpu, triton)
                    )
                    on_spot = bool(capacity.spot_offers(pod, gpu.accelerator, context.node_pools, classes))
            if pin is not None:
                problems += check_pin(pin, deployment, gpu, count, triton, pod)
        if images.as_built(triton.get("image", "")) != catalog.triton_image():
            problems.append(
                f"{ref(deployment)}: container triton runs {triton.get('image')!r}, but build/versions.toml pins "
                f"{catalog.triton_image()!r} at {images.triton_digest()}, copied into Artifact Registry "
                "(…/nvidia/tritonserver@ that digest); change the `images:` entry in gitops/base"
            )
        problems += _check_repository_path(deployment, pod, triton)
        problems += _check_probes(deployment, triton)
        problems += _check_drain(objects, deployment, pod, triton)
        problems += capacity.check_disruption_budget(objects, deployment)
        if gpu is not None:
            cold = cold_start.cold_start_sum(gpu, triton)
            problems += capacity.check_single_replica(objects, deployment, cold, context.runbook, on_spot)
        problems += _check_security(deployment, pod)
        problems += gateway.check(objects, deployment, pod, triton) + gateway.check_image(deployment, pod, stand_in)
        # Cold start, prunes, the fetch step, local disk (tools/policy/cold_start.py).
        problems += cold_start.check(objects, deployment, pod, triton, gpu, pin, context.application)
        problems += _check_hpa_for(objects, deployment)
    problems += cold_start.check_slow_kinds_last(objects)
    problems += check_network_policy(objects)
    problems += check_ingress(objects)
    problems += check_project(objects, context)
    return problems
