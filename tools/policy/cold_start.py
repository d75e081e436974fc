"""Cold start, sync waves and prunes, the model fetch and the pod's local disk: the rules Argo CD,
Kubernetes and GKE apply to a serving overlay, checked on the rendered objects.

The budgets come from the GPU catalog (build/gpus.toml cold_start); what Argo CD and Kubernetes do
with them comes from tools/policy/upstream_facts.toml, which names the upstream source of each rule. Every
problem names the object and the numbers on both sides.
"""

from __future__ import annotations

import math
import tomllib
from functools import cache
from pathlib import Path

import catalog

from . import gateway
from .k8s_objects import by_kind, containers, env_value, quantity, ref

FACTS_FILE = Path(__file__).resolve().with_name("upstream_facts.toml")
WAVE_ANNOTATION = "argocd.argoproj.io/sync-wave"
HOOK_ANNOTATION = "argocd.argoproj.io/hook"
SYNC_OPTIONS_ANNOTATION = "argocd.argoproj.io/sync-options"
FUSE_ANNOTATION = "gke-gcsfuse/volumes"
FUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
FETCH_CONTAINER = "fetch-model"
BUILD_VOLUME = "build"
MODELS_VOLUME = "models"
DEADLINE_ENV = "FETCH_DEADLINE_SECONDS"
# Local disk over the build's bytes: file system blocks, and room for a slightly bigger pin.
STORAGE_MARGIN = 1.25
# Kubernetes' probe defaults (core/v1 Probe): periodSeconds 10, failureThreshold 3.
PROBE_PERIOD_DEFAULT = 10
PROBE_FAILURES_DEFAULT = 3


@cache
def facts() -> dict:
    return tomllib.loads(FACTS_FILE.read_text())


def _argocd() -> str:
    return f"Argo CD {facts()['argocd']['version']}"


def _volume(pod: dict, name: str) -> dict:
    return next((v for v in pod.get("volumes", []) if v.get("name") == name), {})


def _gib(n: float) -> str:
    """A quantity of at least n bytes, in the largest binary unit it fills, up to two decimals: one a
    manifest can take as it is."""
    unit, suffix = next((u, s) for u, s in ((2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki"), (1, "")) if n >= u or u == 1)
    return f"{math.ceil(n / unit * 100) / 100:g}{suffix}"


# --- sync waves --------------------------------------------------------------------------------


def wave(obj: dict) -> int:
    value = obj.get("metadata", {}).get("annotations", {}).get(WAVE_ANNOTATION, "0")
    return int(value) if value.lstrip("-").isdigit() else 0


def _synced(objects: list[dict]) -> list[dict]:
    """What Argo CD syncs in waves: every object but hooks, which run in their own phases."""
    return [o for o in objects if HOOK_ANNOTATION not in o.get("metadata", {}).get("annotations", {})]


def check_after_deployment(objects: list[dict], deployment: dict, cold_start_s: int) -> list[str]:
    """Nothing waits on the Deployment's readiness here, so nothing may be in a later wave than it."""
    here = wave(deployment)
    return [
        f"{ref(obj)} is in sync wave {wave(obj)}, after {ref(deployment)} in wave {here}: {_argocd()} applies "
        f"wave {wave(obj)} only once {ref(deployment)} is Healthy, a whole cold start ({cold_start_s} s) after "
        f"a scale-up from zero nodes, and never if it goes Degraded first; put it in wave {here} or earlier"
        for obj in _synced(objects)
        if wave(obj) > here
    ]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def check_slow_kinds_last(objects: list[dict]) -> list[str]:
    """A kind whose health waits on a cold start or on the outside world belongs in the last wave,
    the one wave whose health Argo CD does not wait for (upstream_facts.toml argocd.sync_waves).
    The last wave is the Deployment's (check_after_deployment keeps it so): a resource put after the
    Deployment by mistake is reported there, once, and does not make the rest look early."""
    synced = _synced(objects)
    deployments = [o for o in synced if o.get("kind") == "Deployment"]
    if not synced:
        return []
    last = max(wave(o) for o in deployments or synced)
    whose = f", {ref(deployments[0])}'s" if len(deployments) == 1 else ""
    # The Deployment itself is check_after_deployment's: one mistake, one message.
    slow = {s["kind"]: s["healthy_when"] for s in facts()["argocd"]["slow_health"] if s["kind"] != "Deployment"}
    return [
        f"{ref(obj)} is in sync wave {wave(obj)}, before the last wave ({last}{whose}): {_argocd()} applies a wave "
        f"only once every resource of the earlier waves is Healthy, and {_article(obj['kind'])} {obj['kind']} is "
        f"Healthy only when {slow[obj['kind']]}; put it in wave {last}"
        for obj in synced
        if obj.get("kind") in slow and wave(obj) < last
    ]


def _template_spec(application: dict) -> dict:
    """The spec of the Applications an Application or ApplicationSet makes."""
    spec = application.get("spec", {})
    return spec.get("template", {}).get("spec", {}) if application.get("kind") == "ApplicationSet" else spec


def _options(text_or_list: object) -> list[str]:
    if isinstance(text_or_list, str):
        return [o.strip() for o in text_or_list.split(",") if o.strip()]
    return [str(o) for o in text_or_list or []]


def check_sync_options(objects: list[dict], deployment: dict, application: dict | None, cold_s: int) -> list[str]:
    """No prune waits on the last wave, and Argo CD writes no field the manifest leaves to the HPA.

    PruneLast moves a prune one wave past the last (upstream_facts.toml argocd.sync_waves): the last
    wave, a cold start's worth of health, is then awaited after all, and the sync holds every newer
    revision back while it waits."""
    option = facts()["argocd"]["sync_waves"]["prune_last_option"]
    last = wave(deployment)
    waits = (
        f"{_argocd()} prunes in a wave after the last one ({last}), so a sync that removes any object waits for the "
        f"health of wave {last} ({ref(deployment)}: a cold start of up to {cold_s} s), fails if it goes Degraded, and "
        "holds back every newer commit meanwhile, a git revert included"
    )
    problems = []
    spec = _template_spec(application) if application is not None else {}
    options = _options(spec.get("syncPolicy", {}).get("syncOptions"))
    if option in options:
        problems.append(f"{ref(application)} syncs this overlay with {option}: {waits}; drop {option}")
    for obj in _synced(objects):
        if option in _options(obj.get("metadata", {}).get("annotations", {}).get(SYNC_OPTIONS_ANNOTATION)):
            problems.append(
                f"{ref(obj)}: annotation {SYNC_OPTIONS_ANNOTATION} has {option}; once it leaves git, {waits}; drop it"
            )
    respect = facts()["argocd"]["respect_ignore_differences"]["option"]
    ignored = [
        f"{pointer} of {entry.get('kind')}"
        for entry in spec.get("ignoreDifferences", [])
        for pointer in entry.get("jsonPointers", [])
    ]
    if respect in options and ignored:
        problems.append(
            f"{ref(application)} syncs this overlay with {respect} and ignoreDifferences {', '.join(ignored)}: "
            f"{_argocd()} then applies the live value of each ignored field, so its server-side apply owns it too and "
            "writes back the value it read at compare time, beside the HorizontalPodAutoscaler that scales the "
            f"Deployment; drop {respect} (the manifests set no replicas)"
        )
    return problems


def check_hpa_health(objects: list[dict], deployment: dict, cold_s: int) -> list[str]:
    """The Application's health is not Degraded for as long as a cold start lasts."""
    annotation = facts()["argocd"]["ignore_healthcheck"]["annotation"]
    name = deployment["metadata"]["name"]
    return [
        f"{ref(hpa)}: {_argocd()} shows it Degraded (ScalingActive FailedGetPodsMetric) until a ready pod exports "
        f"its metric, a whole cold start ({cold_s} s) at every scale-up from zero pods, and the Application takes the "
        f'worst health of its resources; annotate it {annotation}: "true" (the alerts TritonNoReadyReplica and '
        "TritonMetricsAbsent watch for pods and metrics that never come)"
        for hpa in by_kind(objects, "HorizontalPodAutoscaler")
        if hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") == name
        and hpa.get("metadata", {}).get("annotations", {}).get(annotation) != "true"
    ]


# --- the cold-start budget ---------------------------------------------------------------------


def startup_window(triton: dict) -> tuple[int, int, int] | None:
    """(periodSeconds, failureThreshold, the seconds they allow), or None without a startupProbe."""
    probe = triton.get("startupProbe")
    if probe is None:
        return None
    period = probe.get("periodSeconds", PROBE_PERIOD_DEFAULT)
    failures = probe.get("failureThreshold", PROBE_FAILURES_DEFAULT)
    return period, failures, probe.get("initialDelaySeconds", 0) + period * failures


def _check_startup(deployment: dict, triton: dict, gpu: catalog.Gpu) -> list[str]:
    window = startup_window(triton)
    budget = gpu.cold_start
    if window is None or window[2] >= budget.startup_window_s:
        return []
    period, failures, seconds = window
    return [
        f"{ref(deployment)}: container triton's startupProbe allows {period} × {failures} = {seconds} s, less "
        f"than {gpu.name}'s engine load of {budget.engine_load.seconds} s × {budget.startup_margin} = "
        f"{budget.startup_window_s} s (build/gpus.toml cold_start); the kubelet would restart tritonserver "
        f"mid-load; set failureThreshold to {math.ceil(budget.startup_window_s / period)}"
    ]


def _check_fetch_deadline(deployment: dict, fetch: dict, gpu: catalog.Gpu) -> list[str]:
    copy = gpu.cold_start.model_copy.seconds
    value = env_value(fetch, DEADLINE_ENV)
    if value == str(copy):
        return []
    return [
        f"{ref(deployment)}: init container {FETCH_CONTAINER} has {DEADLINE_ENV} {value}, but build/gpus.toml "
        f"budgets {copy} s for {gpu.name}'s model copy; set it to \"{copy}\" (the progress deadline counts on it)"
    ]


def progress_deadline_needed(gpu: catalog.Gpu, triton: dict) -> int:
    """A pod from no node makes no rollout progress until it is Ready: node, image, copy, engine load
    (for as long as the startupProbe allows it, which may be more than the budget)."""
    window = startup_window(triton)
    return gpu.cold_start.before_triton_s + max(window[2] if window else 0, gpu.cold_start.startup_window_s)


def cold_start_sum(gpu: catalog.Gpu, triton: dict) -> tuple[int, str]:
    """A pod's whole cold start from no node, in seconds, and how it adds up: what every rule that
    waits on one (the progress deadline, prunes, node recycling, a single replica) counts with."""
    budget = gpu.cold_start
    needed = progress_deadline_needed(gpu, triton)
    return needed, (
        f"node provisioning {budget.node_provisioning.seconds} + image pull {budget.image_pull.seconds} + model "
        f"copy {budget.model_copy.seconds} (build/gpus.toml cold_start) + the startupProbe's "
        f"{needed - budget.before_triton_s} s = {needed} s"
    )


def _check_progress_deadline(deployment: dict, triton: dict, gpu: catalog.Gpu) -> list[str]:
    default = facts()["kubernetes"]["progress_deadline"]["default_seconds"]
    deadline = deployment.get("spec", {}).get("progressDeadlineSeconds")
    needed, why = cold_start_sum(gpu, triton)
    if (deadline or default) >= needed:
        return []
    shown = f"{deadline}" if deadline is not None else f"unset (the Kubernetes default, {default})"
    return [
        f"{ref(deployment)}: progressDeadlineSeconds {shown} is shorter than the cold start of a pod on {gpu.name}: "
        f"{why}; {_argocd()} shows a Deployment past its deadline Degraded "
        f"({facts()['argocd']['deployment_health']['degraded_reason']}); set it to {needed}"
    ]


def check_gateway_startup(deployment: dict, pod: dict, triton: dict) -> list[str]:
    """The gateway's startupProbe outlasts the engine load it waits for, or does not wait for it."""
    gateway_container = next((c for c in pod.get("containers", []) if c.get("name") == gateway.CONTAINER), {})
    path = gateway_container.get("startupProbe", {}).get("httpGet", {}).get("path")
    own, engine = startup_window(gateway_container), startup_window(triton)
    if own is None or engine is None or path == gateway.LIVE_PATH or own[2] >= engine[2]:
        return []
    return [
        f"{ref(deployment)}: container {gateway.CONTAINER}'s startupProbe waits on {path}, which answers only once "
        f"Triton is ready, for {own[0]} × {own[1]} = {own[2]} s, less than container triton's startupProbe allows the "
        f"engine load ({engine[0]} × {engine[1]} = {engine[2]} s); the kubelet would restart the gateway through every "
        f"longer load; probe {gateway.LIVE_PATH} (its own process) or allow {engine[2]} s"
    ]


def check_cold_start(deployment: dict, pod: dict, triton: dict, gpu: catalog.Gpu) -> list[str]:
    fetch = next((c for c in pod.get("initContainers", []) if c.get("name") == FETCH_CONTAINER), {})
    return (
        _check_startup(deployment, triton, gpu)
        + _check_fetch_deadline(deployment, fetch, gpu)
        + _check_progress_deadline(deployment, triton, gpu)
    )


# --- the fetch step and the pod's containers ---------------------------------------------------


def check_one_image(deployment: dict, pod: dict, triton: dict) -> list[str]:
    """Every container runs the image triton runs (itself checked against build/versions.toml), but the
    OpenAI gateway, whose image this repository builds (gateway/Dockerfile) and overlays pin by digest."""
    image = triton.get("image")
    return [
        f"{ref(deployment)}: container {c.get('name')} runs {c.get('image')!r}, not the pinned Triton image "
        f"{image!r} that container triton runs; the serving pod runs only the pinned image, so nothing in it "
        "can expire or drift (fetch-model copies with it, gitops/base/deployment.yaml)"
        for c in containers(pod)
        if c is not triton and c.get("name") != gateway.CONTAINER and c.get("image") != image
    ]


def check_fuse_volume(deployment: dict, pod: dict) -> list[str]:
    problems = []
    annotations = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
    if annotations.get(FUSE_ANNOTATION) != "true":
        problems.append(
            f'{ref(deployment)}: the pod template needs annotation {FUSE_ANNOTATION}: "true", or GKE injects no '
            f"Cloud Storage FUSE sidecar and volume {BUILD_VOLUME} never mounts"
        )
    csi = _volume(pod, BUILD_VOLUME).get("csi", {})
    if csi.get("driver") != FUSE_DRIVER or csi.get("readOnly") is not True:
        problems.append(
            f"{ref(deployment)}: volume {BUILD_VOLUME} must be a read-only Cloud Storage FUSE volume "
            f"(csi driver {FUSE_DRIVER}, readOnly: true)"
        )
    return problems


def _writable_mounts(container: dict) -> set[str]:
    return {m.get("mountPath") for m in container.get("volumeMounts", []) if not m.get("readOnly")}


def check_home_and_root(deployment: dict, pod: dict) -> list[str]:
    """Each container: HOME on a writable volume (NGC's triton-server has no home), read-only root."""
    problems = []
    for container in containers(pod):
        name, home = container.get("name"), env_value(container, "HOME")
        if not home:
            problems.append(
                f"{ref(deployment)}: container {name} sets no HOME; NGC's triton-server user has no home "
                "directory, so set HOME to a writable emptyDir (/tmp)"
            )
        elif not any(home == p or home.startswith(f"{p.rstrip('/')}/") for p in _writable_mounts(container)):
            problems.append(f"{ref(deployment)}: container {name} sets HOME {home}, which is on no writable volume")
        if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            problems.append(
                f"{ref(deployment)}: container {name} must set readOnlyRootFilesystem: true (Triton writes only "
                "to its /tmp and /dev/shm emptyDirs)"
            )
    return problems


# --- the pin: where the FUSE volume reads it, and the disk it needs ----------------------------


def check_pin_location(pin: dict[str, str], deployment: dict, pod: dict) -> list[str]:
    problems = []
    if pin["uri"] != f"gs://{pin['bucket']}/{pin['prefix']}/":
        problems.append(
            f"model-pin uri {pin['uri']!r} is not gs://<bucket>/<prefix>/ of its bucket {pin['bucket']!r} and "
            f"prefix {pin['prefix']!r}; rewrite it with tools/pin.py"
        )
    attributes = _volume(pod, BUILD_VOLUME).get("csi", {}).get("volumeAttributes", {})
    options = dict(o.partition("=")[::2] for o in attributes.get("mountOptions", "").split(",") if o)
    mounted = (attributes.get("bucketName"), options.get("only-dir"))
    if mounted != (pin["bucket"], pin["prefix"]):
        problems.append(
            f"{ref(deployment)}: volume {BUILD_VOLUME} mounts bucket {mounted[0]!r} only-dir {mounted[1]!r}, not the "
            f"pinned {pin['bucket']!r} {pin['prefix']!r}; include the model-pin component"
        )
    return problems


def _quantity(value: object) -> float | None:
    try:
        return quantity(value) if value is not None else None
    except ValueError:
        return None


def local_copy_bytes(size: float) -> float:
    """The local disk a copy of a build of `size` bytes takes: its file system blocks, and some room."""
    return size * STORAGE_MARGIN


def budgeted_copy_bytes(gpu: catalog.Gpu) -> float:
    """The largest build the target's model-copy budget copies in time (build/gpus.toml cold_start)."""
    return gpu.cold_start.model_copy.seconds * catalog.copy_mb_per_s() * 1e6


def sidecar_ephemeral_request() -> str:
    """What the injected Cloud Storage FUSE sidecar requests of the node's disk (upstream_facts.toml)."""
    return facts()["gke"]["gcsfuse_sidecar"]["ephemeral_storage_request"]


def check_local_disk(pin: dict[str, str], deployment: dict, pod: dict, triton: dict) -> list[str]:
    """The copied build fits the models emptyDir, and the scheduler reserves room for it."""
    if not pin["size_bytes"].isdigit():
        return [
            f"model-pin size_bytes {pin['size_bytes']!r} is not a whole number of bytes; rewrite it with tools/pin.py"
        ]
    size = int(pin["size_bytes"])
    needed = local_copy_bytes(size)
    why = f"build {pin['build_id']} is {size} bytes × {STORAGE_MARGIN} = {_gib(needed)}"
    problems = []
    limit = _volume(pod, MODELS_VOLUME).get("emptyDir", {}).get("sizeLimit")
    if (_quantity(limit) or 0) < needed:
        problems.append(
            f"{ref(deployment)}: emptyDir {MODELS_VOLUME} has sizeLimit {limit}, but {why}; the kubelet would evict "
            f"the pod during the copy; set sizeLimit to at least {_gib(needed)}"
        )
    request = triton.get("resources", {}).get("requests", {}).get("ephemeral-storage")
    if (_quantity(request) or 0) < needed:
        problems.append(
            f"{ref(deployment)}: container triton requests ephemeral-storage {request}, but {why}; the scheduler "
            f"could place the pod on a node without room for it; request at least {_gib(needed)}"
        )
    return problems


def check(
    objects: list[dict], deployment: dict, pod: dict, triton: dict, gpu: catalog.Gpu | None, pin: dict | None,
    application: dict | None = None,
) -> list[str]:
    """Everything of this module for one serving Deployment (serving.check_serving calls it)."""
    problems = check_one_image(deployment, pod, triton) + check_fuse_volume(deployment, pod)
    problems += check_home_and_root(deployment, pod) + check_gateway_startup(deployment, pod, triton)
    if gpu is not None:
        problems += check_cold_start(deployment, pod, triton, gpu)
        cold, _ = cold_start_sum(gpu, triton)
        problems += check_after_deployment(objects, deployment, cold)
        problems += check_sync_options(objects, deployment, application, cold)
        problems += check_hpa_health(objects, deployment, cold)
    if pin is not None:
        problems += check_pin_location(pin, deployment, pod) + check_local_disk(pin, deployment, pod, triton)
    return problems
