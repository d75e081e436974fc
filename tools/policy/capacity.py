"""Capacity policy: serving that survives Spot and scale-down, node pools that can grow and are safe
to manage, and build Jobs that fit on a node.

Facts about GKE, Compute Engine, the cluster autoscaler and Config Connector come from
tools/policy/gke_facts.toml (each with its upstream source); nothing here spells them again. Every check
takes rendered objects and returns problems that name the object and the numbers.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import catalog

from . import cold_start, monitoring, pin_gate
from .k8s_objects import by_kind, containers, find, pod_spec, quantity, ref

FACTS_FILE = Path(__file__).resolve().with_name("gke_facts.toml")
ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
HOSTNAME = "kubernetes.io/hostname"
# Seconds Triton needs after its last stream to unload models and exit (gitops/base/deployment.yaml).
UNLOAD_MARGIN_SECONDS = 15
# Replicas a Spot-backed Deployment needs so that one preemption leaves one serving.
SPOT_MIN_REPLICAS = 2
# Where a single-replica Deployment names the runbook section of the cluster's maintenance window.
MAINTENANCE_ANNOTATION = "gke-triton-llm/maintenance-policy"
RUNBOOK_PAGE = "docs/runbook.md"


@cache
def facts() -> dict[str, object]:
    """Each fact's value, by name (tools/policy/gke_facts.toml)."""
    return {name: entry["value"] for name, entry in tomllib.loads(FACTS_FILE.read_text()).items()}


def fact(name: str) -> object:
    return facts()[name]


# --- where GPUs come from -------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """Nodes a pool or a ComputeClass priority provides: which GPU, how many per node, how bought."""

    source: str  # "ContainerNodePool/triton-l4" or "ComputeClass/triton-h100 priority 2"
    accelerator: str
    count: int
    capacity: str  # spot, on-demand, reservation, flex-start
    boot_disk_gb: int | None = None  # None: GKE's default (gke_facts.toml default_boot_disk_gb)
    recycling_lead_s: int | None = None  # flexStart.nodeRecycling.leadTimeSeconds of a class priority

    @property
    def spot(self) -> bool:
        return self.capacity == "spot"

    @property
    def from_pool(self) -> bool:
        return self.source.startswith("ContainerNodePool/")

    @property
    def disk_field(self) -> str:
        return "nodeConfig.diskSizeGb" if self.from_pool else "storage.bootDiskSize"


def _reserved(node: dict) -> bool:
    return node.get("reservationAffinity", {}).get("consumeReservationType") == "SPECIFIC_RESERVATION"


def pool_capacity(pool: dict) -> str:
    node = pool.get("spec", {}).get("nodeConfig", {})
    if node.get("spot") or node.get("preemptible"):
        return "spot"
    if _reserved(node):
        return "reservation"
    if pool.get("spec", {}).get("queuedProvisioning", {}).get("enabled"):
        return "flex-start"
    return "on-demand"


def pool_offers(pool: dict) -> list[Offer]:
    node = pool.get("spec", {}).get("nodeConfig", {})
    return [
        Offer(ref(pool), a.get("type", ""), int(a.get("count", 0)), pool_capacity(pool), node.get("diskSizeGb"))
        for a in node.get("guestAccelerator", [])
    ]


def pool_class(pool: dict) -> str | None:
    """The ComputeClass a hand-made pool serves: its nodes carry the class label and taint."""
    key = str(fact("compute_class_key"))
    node = pool.get("spec", {}).get("nodeConfig", {})
    tainted = {
        t.get("value") for t in node.get("taint", []) if t.get("key") == key and t.get("effect") == "NO_SCHEDULE"
    }
    label = node.get("labels", {}).get(key)
    return label if label in tainted else None


def _priority_capacity(priority: dict) -> str:
    if priority.get("spot"):
        return "spot"
    if priority.get("flexStart", {}).get("enabled"):
        return "flex-start"
    if priority.get("reservations", {}).get("affinity") == "Specific":
        return "reservation"
    return "on-demand"


def class_offers(computeclass: dict, pools: list[dict]) -> tuple[list[Offer], list[str]]:
    """What each priority of a ComputeClass provides, and the priorities that name missing pools."""
    offers, problems = [], []
    name = computeclass["metadata"]["name"]
    for index, priority in enumerate(computeclass.get("spec", {}).get("priorities", []), start=1):
        for pool_name in priority.get("nodepools", []):
            pool = find(pools, "ContainerNodePool", pool_name)
            if pool is None:
                problems.append(
                    f"{ref(computeclass)}: priority {index} names node pool {pool_name}, which is not rendered"
                )
            elif pool_class(pool) != name:
                problems.append(
                    f"{ref(computeclass)}: priority {index} names {ref(pool)}, whose nodes lack the label and "
                    f"NoSchedule taint {fact('compute_class_key')}={name}; GKE only uses a hand-made pool "
                    "for a class that way"
                )
            else:
                offers += pool_offers(pool)
        gpu = priority.get("gpu")
        if gpu:
            source = f"{ref(computeclass)} priority {index}"
            disk = priority.get("storage", {}).get("bootDiskSize")
            lead = priority.get("flexStart", {}).get("nodeRecycling", {}).get("leadTimeSeconds")
            offers.append(
                Offer(source, gpu.get("type", ""), int(gpu.get("count", 0)), _priority_capacity(priority), disk, lead)
            )
    return offers, problems


def _pod_offers(pod: dict, pools: list[dict], classes: list[dict]) -> tuple[str, list[Offer]]:
    """Where a pod can land: its ComputeClass's priorities, else the pools no class has claimed."""
    selected = pod.get("nodeSelector", {}).get(str(fact("compute_class_key")))
    if selected:
        computeclass = find(classes, "ComputeClass", selected)
        return f"ComputeClass/{selected}", class_offers(computeclass, pools)[0] if computeclass else []
    free = [p for p in by_kind(pools, "ContainerNodePool") if pool_class(p) is None]
    return "gitops/nodepools", [offer for pool in free for offer in pool_offers(pool)]


def _claimed_pools(pools: list[dict], accelerator: str) -> list[str]:
    return sorted(
        f"{ref(p)} (ComputeClass/{pool_class(p)})"
        for p in by_kind(pools, "ContainerNodePool")
        if pool_class(p) and any(o.accelerator == accelerator for o in pool_offers(p))
    )


# --- node pools and ComputeClasses (in every directory) -----------------------------------------------


def _check_pool_upgrades(pool: dict) -> list[str]:
    settings = pool.get("spec", {}).get("upgradeSettings")
    if not settings:
        return [
            f"{ref(pool)}: no upgradeSettings; say how node upgrades replace GPU nodes (surge maxSurge 1 and "
            "maxUnavailable 0, or maxSurge 0 and maxUnavailable 1 on a reservation)"
        ]
    limited = fact("upgrade_limited_capacity")
    if pool_capacity(pool) == "reservation" and settings.get("maxSurge", 1) > limited["maxSurge"]:
        return [
            f"{ref(pool)}: upgradeSettings.maxSurge {settings.get('maxSurge', 1)} on reserved capacity: a surge node "
            f"has no room in a fully used reservation; use maxSurge {limited['maxSurge']} and maxUnavailable "
            f"{limited['maxUnavailable']}"
        ]
    return []


def _check_pool_obtainable(pool: dict) -> list[str]:
    machine = pool.get("spec", {}).get("nodeConfig", {}).get("machineType")
    if machine in fact("not_sold_on_demand") and pool_capacity(pool) == "on-demand":
        return [
            f"{ref(pool)}: {machine} is not sold on demand (only Spot, flex-start or a reservation; "
            "tools/policy/gke_facts.toml not_sold_on_demand), so this pool would never grow; set "
            "nodeConfig.reservationAffinity to a SPECIFIC_RESERVATION named in cluster.yaml, or spot: true"
        ]
    return []


def _node_account(pool: dict) -> str | None:
    return pool.get("spec", {}).get("nodeConfig", {}).get("serviceAccountRef", {}).get("external")


def _check_pool_identity(pool: dict) -> list[str]:
    if _node_account(pool):
        return []
    return [
        f"{ref(pool)}: nodes run as the Compute Engine default service account (Editor on the project); set "
        "nodeConfig.serviceAccountRef.external to the least-privilege node service account (cluster.yaml "
        "node-service-account)"
    ]


def check_node_pools(objects: list[dict]) -> list[str]:
    """Deletion policy, upgrade settings, obtainable capacity and the node identity of every pool."""
    deletion = fact("config_connector_deletion_policy")
    problems = []
    for pool in by_kind(objects, "ContainerNodePool"):
        if pool.get("metadata", {}).get("annotations", {}).get(deletion["annotation"]) != deletion["value"]:
            problems.append(
                f"{ref(pool)}: needs annotation {deletion['annotation']}: {deletion['value']}; without it deleting the "
                "object deletes the node pool and the serving pods on it"
            )
        problems += _check_pool_upgrades(pool)
        problems += _check_pool_obtainable(pool)
        problems += _check_pool_identity(pool)
    return problems + check_one_node_identity(objects)


def check_one_node_identity(objects: list[dict]) -> list[str]:
    """The pools in git and the pools GKE creates for the ComputeClasses run as one node service account,
    the one docs/runbook.md step 2 grants the roles nodes need (gke_facts.toml node_service_account_roles)."""
    accounts = {ref(p): _node_account(p) for p in by_kind(objects, "ContainerNodePool") if _node_account(p)}
    accounts |= {ref(c): c["spec"]["nodePoolConfig"]["serviceAccount"] for c in by_kind(objects, "ComputeClass")
                 if c.get("spec", {}).get("nodePoolConfig", {}).get("serviceAccount")}
    if len(set(accounts.values())) <= 1:
        return []
    return [f"GPU nodes run as {len(set(accounts.values()))} service accounts ("
            + ", ".join(f"{name}: {email}" for name, email in sorted(accounts.items()))
            + "); run them all as cluster.yaml's node-service-account, the one account docs/runbook.md grants"]


def check_compute_classes(objects: list[dict]) -> list[str]:
    """Each class keeps to one GPU model; a class with Spot has a fallback of the same GPU and count."""
    problems = []
    for computeclass in by_kind(objects, "ComputeClass"):
        offers, missing = class_offers(computeclass, objects)
        problems += missing
        if not offers:
            continue
        models = sorted({o.accelerator for o in offers})
        if len(models) > 1:
            problems.append(
                f"{ref(computeclass)}: priorities offer {', '.join(models)}; an engine runs only on the GPU it was "
                "built for, so a class keeps to one GPU model"
            )
            continue
        if any(o.spot for o in offers):
            problems += _check_spot_class(computeclass, offers)
    return problems


def _check_spot_class(computeclass: dict, offers: list[Offer]) -> list[str]:
    shapes = sorted({f"{o.count} × {o.accelerator}" for o in offers})
    if len(shapes) > 1:
        return [
            f"{ref(computeclass)}: serving priorities offer {' and '.join(shapes)} per node; keep one GPU count so "
            "the fallback holds the same pods as Spot"
        ]
    if all(o.spot for o in offers):
        return [
            f"{ref(computeclass)}: every priority is Spot ({', '.join(o.source for o in offers)}); add an on-demand, "
            f"reservation or flex-start priority of {shapes[0]} so a Spot stock-out does not leave pods Pending"
        ]
    return []


# --- serving: Spot survival, drains, disruption budget ----------------------------------------------


def hpas_for(objects: list[dict], deployment: dict) -> list[dict]:
    """The HorizontalPodAutoscalers that scale this Deployment."""
    name = deployment["metadata"]["name"]
    return [
        h
        for h in by_kind(objects, "HorizontalPodAutoscaler")
        if h.get("spec", {}).get("scaleTargetRef", {}).get("name") == name
    ]


def _min_replicas(objects: list[dict], deployment: dict) -> int:
    return min((h["spec"].get("minReplicas", 1) for h in hpas_for(objects, deployment)), default=1)


def _spread_over_nodes(pod: dict) -> bool:
    return any(
        c.get("topologyKey") == HOSTNAME and c.get("whenUnsatisfiable") == "DoNotSchedule" and c.get("maxSkew") == 1
        for c in pod.get("topologySpreadConstraints", [])
    )


def check_spot(
    objects: list[dict], deployment: dict, pod: dict, accelerator: str, pools: list[dict], classes: list[dict]
) -> list[str]:
    """A Deployment that may land on Spot runs >= 2 replicas on different nodes, with a fallback."""
    where, offers = _pod_offers(pod, pools, classes)
    offers = [o for o in offers if o.accelerator == accelerator]
    claimed = _claimed_pools(pools, accelerator)
    if not offers and claimed and where == "gitops/nodepools":
        return [
            f"{ref(deployment)}: the {accelerator} pools serve a ComputeClass only ({', '.join(claimed)}), and its "
            f"pods select none; add nodeSelector {fact('compute_class_key')} (components/spot-<gpu>)"
        ]
    spot = [o.source for o in offers if o.spot]
    if not spot:
        return []
    problems = []
    replicas = _min_replicas(objects, deployment)
    if replicas < SPOT_MIN_REPLICAS:
        problems.append(
            f"{ref(deployment)}: runs on Spot ({', '.join(spot)}) with HPA minReplicas {replicas}; a preemption "
            f"gives a pod ~{fact('spot_termination_notice_seconds')} s, so one replica means an outage for a whole "
            f"cold start: set minReplicas to at least {SPOT_MIN_REPLICAS} (components/spot)"
        )
    if not _spread_over_nodes(pod):
        problems.append(
            f"{ref(deployment)}: runs on Spot ({', '.join(spot)}) without topologySpreadConstraints maxSkew 1 on "
            f"{HOSTNAME} (DoNotSchedule); two replicas on one node go with one preemption (components/spot)"
        )
    if all(o.spot for o in offers):
        problems.append(
            f"{ref(deployment)}: runs on Spot ({', '.join(spot)}) with no fallback in {where}; select a ComputeClass "
            f"whose later priorities are on-demand, reservation or flex-start {accelerator} nodes"
        )
    return problems


# --- does a GPU pod fit its node? --------------------------------------------------------------------


def _system_reserved(amount: float, tiers: list[list[float]]) -> float:
    """GKE's reservation of `amount` (cores or GiB) by its tiers: [size, share] in order."""
    reserved, left = 0.0, amount
    for size, share in tiers:
        part = min(left, size)
        reserved += part * share
        left -= part
    return reserved


def allocatable(machine: catalog.Machine) -> tuple[float, float]:
    """(CPU, GiB of memory) that pods may request on a node of this machine type (gke_facts.toml allocatable_*)."""
    cpu = machine.vcpus - _system_reserved(machine.vcpus, fact("allocatable_cpu_reserved"))
    memory = (machine.memory_gib - _system_reserved(machine.memory_gib, fact("allocatable_memory_reserved"))
              - fact("allocatable_eviction_mib") / 1024)
    return cpu, memory


def _requests(container: dict) -> tuple[float, float]:
    asked = container.get("resources", {}).get("requests", {})
    return quantity(asked.get("cpu", 0)), quantity(asked.get("memory", 0)) / 2**30


def pod_requests(pod: dict, annotations: dict) -> dict[str, tuple[float, float]]:
    """What a running pod requests, per container: its containers, native sidecars, and the gcsfuse
    sidecar GKE injects at admission (not in the rendered manifest). Plain init containers run before
    the rest and each asks less than they do together, so they do not count."""
    asked = {c["name"]: _requests(c) for c in pod.get("containers", [])}
    asked |= {c["name"]: _requests(c) for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"}
    if annotations.get(cold_start.FUSE_ANNOTATION) == "true":
        sidecar = cold_start.facts()["gke"]["gcsfuse_sidecar"]
        asked["gke-gcsfuse-sidecar"] = (quantity(sidecar["cpu_request"]), quantity(sidecar["memory_request"]) / 2**30)
    return asked


def check_node_fit(deployment: dict, gpu: catalog.Gpu, count: int) -> list[str]:
    """A GPU pod, as many of it as its node holds, and GKE's system pods fit the node's allocatable: if not,
    the cluster autoscaler finds that no node of the pool's template fits and never scales up."""
    if count < 1:
        return []
    gpus_per_node = min(n for n in gpu.machine_types if n >= count)
    machine = catalog.machines()[gpu.machine_types[gpus_per_node]]
    per_node = gpus_per_node // count
    template = deployment["spec"]["template"]
    asked = pod_requests(pod_spec(deployment), template.get("metadata", {}).get("annotations", {}))
    system = fact("gpu_node_system_pods")
    resources = (("CPU", "", system["cpu"], "pod_cpu"), ("memory", " GiB", system["memory_gib"], "pod_memory_gib"))
    problems = []
    for index, (resource, unit, reserve, catalog_key) in enumerate(resources):
        pod = sum(a[index] for a in asked.values())
        room = allocatable(machine)[index] - reserve
        if pod * per_node <= room:
            continue
        parts = ", ".join(f"{name} {a[index]:g}" for name, a in asked.items())
        others = pod - asked.get("triton", (0, 0))[index]
        fits = math.floor((room / per_node - others) / count)
        problems.append(
            f"{ref(deployment)}: {per_node} pod(s) of {pod:g}{unit} {resource} ({parts}) do not fit {machine.name}, "
            f"which gives pods {room:.2f}{unit} after GKE's reservation and ~{reserve:g}{unit} for its system "
            "DaemonSets (tools/policy/gke_facts.toml); the cluster autoscaler would never add a node for it. "
            f"Request at most {fits}{unit} per GPU for triton (build/gpus.toml {catalog_key})"
        )
    return problems


def _gb(n: float) -> str:
    return f"{math.ceil(n / 1e9 * 100) / 100:g}"


def disk_needed(gpu: catalog.Gpu, pin: dict[str, str] | None) -> tuple[float, str]:
    """Bytes a serving pod needs on its node's boot disk, and how they add up: its local copy of the
    largest build the target's copy budget allows (or of the pin, if bigger), the FUSE sidecar's
    ephemeral-storage request and the Triton image. The budget, not only today's pin: a pool's disk
    size is set when its nodes are made, and the next pin must not need new nodes."""
    copied = cold_start.budgeted_copy_bytes(gpu)
    source = (
        f"build/gpus.toml: {gpu.name}'s model copy of {gpu.cold_start.model_copy.seconds} s at "
        f"{catalog.copy_mb_per_s():g} MB/s = {_gb(copied)} GB"
    )
    size = pin.get("size_bytes", "") if pin else ""
    if size.isdigit() and int(size) > copied:
        copied, source = int(size), f"build {pin['build_id']}: {size} bytes"
    local = cold_start.local_copy_bytes(copied)
    sidecar = cold_start.sidecar_ephemeral_request()
    image = catalog.triton_image_disk_gb() * 1e9
    total = local + quantity(sidecar) + image
    return total, (
        f"its copy of the model {_gb(local)} GB ({source}, × {cold_start.STORAGE_MARGIN}) + the Cloud Storage FUSE "
        f"sidecar's ephemeral-storage request {sidecar} + the Triton image {_gb(image)} GB (build/versions.toml "
        f"image_pull_gb and image_unpacked_ratio) = {_gb(total)} GB"
    )


def check_serving_nodes(
    deployment: dict, pod: dict, gpu: catalog.Gpu, pin: dict[str, str] | None, pools: list[dict],
    classes: list[dict], cold: tuple[int, str],
) -> list[str]:
    """Every node the pod may land on holds what it writes to disk, and no flex-start node ends
    before its replacement has had a cold start's time to serve."""
    _, offers = _pod_offers(pod, pools, classes)
    needed, why = disk_needed(gpu, pin)
    default = int(fact("default_boot_disk_gb"))
    days = fact("flex_start_max_run_days")
    cold_s, cold_why = cold
    problems = []
    for offer in (o for o in offers if o.accelerator == gpu.accelerator):
        disk = offer.boot_disk_gb or default
        if disk * 1e9 < needed:
            shown = f"{disk} GB" if offer.boot_disk_gb else f"{disk} GB (no {offer.disk_field}: GKE's default)"
            problems.append(
                f"{offer.source}: boot disk {shown} is smaller than what {ref(deployment)} needs on the node: "
                f"{why}; set {offer.disk_field} to at least {math.ceil(needed / 1e9)}"
            )
        if offer.capacity != "flex-start" or offer.from_pool or (offer.recycling_lead_s or 0) >= cold_s:
            continue
        lead = (
            f"starts a replacement only {offer.recycling_lead_s} s before a node ends"
            if offer.recycling_lead_s
            else "sets no flexStart.nodeRecycling.leadTimeSeconds, so nothing replaces a node before it ends"
        )
        problems.append(
            f"{offer.source}: flex-start nodes end after {days} days (tools/policy/gke_facts.toml "
            f"flex_start_max_run_days) and it {lead}: {ref(deployment)}'s pod there is gone for a whole cold start "
            f"({cold_why}); set flexStart.nodeRecycling.leadTimeSeconds to at least {cold_s}"
        )
    return problems


def check_single_replica(
    objects: list[dict], deployment: dict, cold: tuple[int, str], runbook: Path | None, on_spot: bool
) -> list[str]:
    """A Deployment of one replica says which maintenance policy keeps node upgrades out of serving hours."""
    if on_spot or _min_replicas(objects, deployment) >= 2:
        return []  # Spot's own rule asks for 2 replicas (check_spot)
    value = deployment.get("metadata", {}).get("annotations", {}).get(MAINTENANCE_ANNOTATION, "")
    page, _, anchor = value.partition("#")
    sections = monitoring.anchors(runbook.read_text()) if runbook is not None and runbook.is_file() else set()
    if page == RUNBOOK_PAGE and anchor in sections:
        return []
    upgrade = fact("node_upgrade_pdb_respected_seconds")
    policy = fact("maintenance_policy")
    named = f" (it names {value!r}, which is no section of {RUNBOOK_PAGE})" if value else ""
    return [
        f"{ref(deployment)}: the HPA's minReplicas 1 makes its one pod the service: a node upgrade drains it after "
        f"GKE's {upgrade} s (tools/policy/gke_facts.toml node_upgrade_pdb_respected_seconds), an outage of a whole "
        f"cold start ({cold[1]}); run 2 replicas on 2 nodes (components/two-nodes), or keep node upgrades to the "
        f"cluster's maintenance window, with a {policy['exclusion_scope']} exclusion for busy days, and say so with "
        f"annotation {MAINTENANCE_ANNOTATION}: {RUNBOOK_PAGE}#<its section> (components/maintenance-window){named}"
    ]


def spot_offers(pod: dict, accelerator: str, pools: list[dict], classes: list[dict]) -> list[Offer]:
    _, offers = _pod_offers(pod, pools, classes)
    return [o for o in offers if o.accelerator == accelerator and o.spot]


def check_grace(deployment: dict, grace: int, settle: int, quiet_timeout: int, exit_timeout: int) -> list[str]:
    """The shutdown fits the autoscaler's limit and still lets the preStop wait, then Triton drain and exit."""
    limit = int(fact("cluster_autoscaler_max_graceful_termination_seconds"))
    needed = settle + quiet_timeout + exit_timeout + UNLOAD_MARGIN_SECONDS
    problems = []
    if grace > limit:
        problems.append(
            f"{ref(deployment)}: terminationGracePeriodSeconds {grace} is cut to {limit} by the cluster autoscaler on "
            f"scale-down (max-graceful-termination-sec, tools/policy/gke_facts.toml); fit the preStop's settle and "
            f"quiet wait, --exit-timeout-secs and {UNLOAD_MARGIN_SECONDS} s to unload within {limit}"
        )
    if grace < needed:
        problems.append(
            f"{ref(deployment)}: terminationGracePeriodSeconds {grace} is shorter than the preStop's "
            f"--settle-seconds ({settle}) + --quiet-timeout-seconds ({quiet_timeout}) + Triton's --exit-timeout-secs "
            f"({exit_timeout}) + {UNLOAD_MARGIN_SECONDS} s to unload = {needed}; the kubelet would kill in-flight "
            "streams"
        )
    return problems


def _scaled(value: object, replicas: int) -> int:
    """A PDB's int-or-percent as pods at `replicas`; percentages round up (tools/policy/gke_facts.toml)."""
    text = str(value)
    if text.endswith("%"):
        return math.ceil(int(text[:-1]) * replicas / 100)
    return int(text)


def _selects(pdb: dict, labels: dict) -> bool:
    wanted = pdb.get("spec", {}).get("selector", {}).get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_disruption_budget(objects: list[dict], deployment: dict) -> list[str]:
    """A drain never evicts the last serving pod at the HPA's minimum."""
    labels = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    budgets = [p for p in by_kind(objects, "PodDisruptionBudget") if _selects(p, labels)]
    if not budgets:
        return [f"{ref(deployment)}: no PodDisruptionBudget keeps a Triton pod serving during drains (gitops/base)"]
    replicas = _min_replicas(objects, deployment)
    problems = []
    for pdb in budgets:
        spec = pdb.get("spec", {})
        field = "minAvailable" if "minAvailable" in spec else "maxUnavailable"
        value = spec.get(field, 0)
        left = _scaled(value, replicas) if field == "minAvailable" else replicas - _scaled(value, replicas)
        if left < 1:
            problems.append(
                f"{ref(pdb)}: {field} {value} at the HPA's minReplicas {replicas} lets a drain evict the last "
                "Triton pod; set minAvailable: 1"
            )
    return problems


# --- Jobs: the GPUs they request exist on one node ----------------------------------------------------


def _job_gpus(pod: dict) -> int:
    requests = (c.get("resources", {}).get("requests", {}) for c in containers(pod))
    return max((int(str(r.get(pin_gate.GPU_RESOURCE, 0))) for r in requests), default=0)


def check_jobs(objects: list[dict], platform: list[dict]) -> list[str]:
    """Each GPU Job requests a count that some pool or ComputeClass priority puts on one node."""
    pools = by_kind(platform, "ContainerNodePool")
    classes = by_kind(platform, "ComputeClass")
    if not pools and not classes:
        return []
    problems = []
    for job in by_kind(objects, "Job"):
        pod = pod_spec(job)
        count, accelerator = _job_gpus(pod), pod.get("nodeSelector", {}).get(ACCELERATOR_LABEL)
        if not count or not accelerator:
            continue
        where, offers = _pod_offers(pod, pools, classes)
        if any(o.accelerator == accelerator and o.count >= count for o in offers):
            continue
        same = [f"{o.count} per node ({o.source})" for o in offers if o.accelerator == accelerator]
        offered = ", ".join(same) or f"no {accelerator} nodes"
        problems.append(
            f"{ref(job)}: requests {count} × {accelerator} on one node, but {where} offers {offered}"
            f"{_hint(accelerator, count)}"
        )
    return problems


def _disruption_rules(job: dict) -> tuple[bool, bool]:
    """Whether the Job replaces disrupted pods without counting them, and fails at once on its own errors."""
    rules = job.get("spec", {}).get("podFailurePolicy", {}).get("rules", [])
    condition = cold_start.facts()["kubernetes"]["job_pod_failure_policy"]["disruption_condition"]
    ignores = any(r.get("action") == "Ignore" and any(c.get("type") == condition for c in r.get("onPodConditions", []))
                  for r in rules)
    fails = any(r.get("action") == "FailJob" and r.get("onExitCodes", {}).get("operator") == "NotIn"
                and r["onExitCodes"].get("values") == [0] for r in rules)
    return ignores, fails


def check_job_disruptions(objects: list[dict]) -> list[str]:
    """A GPU Job survives a node taken away mid-build, and does not retry a build that failed by itself."""
    problems = []
    for job in by_kind(objects, "Job"):
        if not _job_gpus(pod_spec(job)):
            continue
        ignores, fails = _disruption_rules(job)
        if not ignores:
            problems.append(
                f"{ref(job)}: no podFailurePolicy rule Ignore on pod condition DisruptionTarget; a node upgrade or "
                "maintenance that takes the pod away would fail a multi-hour build instead of starting it again "
                "(tools/policy/upstream_facts.toml kubernetes.job_pod_failure_policy)"
            )
        if not fails:
            problems.append(
                f"{ref(job)}: no podFailurePolicy rule FailJob on exit codes NotIn [0]; a build that fails by itself "
                "would be retried onto the same error, holding its GPUs for hours"
            )
    return problems


def _hint(accelerator: str, count: int) -> str:
    gpu = catalog.gpu_by_accelerator(accelerator)
    fits = sorted(n for n in (gpu.machine_types if gpu else {}) if n >= count)
    if not fits:
        return "; no machine type in build/gpus.toml carries that many"
    return f"; add a priority or pool of {gpu.machine_types[fits[0]]} ({fits[0]} GPUs, build/gpus.toml)"
