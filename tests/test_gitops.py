"""The manifests of this checkout: every kustomization renders and validates, and the overlays,
Argo CD objects and node pools keep the promises docs/manifests.md makes about them."""

from __future__ import annotations

import difflib
import math
import re
import shutil
import tomllib
from functools import cache
from pathlib import Path

import catalog
import pytest
import validate
import yaml
from policy import capacity, serving
from policy.k8s_objects import flag_value

ROOT = Path(__file__).resolve().parent.parent
CRDS = validate.VENDORED_CRDS
# The targets this checkout serves: a fork that dropped some overlays (runbook step 8) tests the rest.
TARGETS = tuple(name for name in catalog.gpus() if (ROOT / "overlays" / name).is_dir())
GPU_TARGETS = tuple(t for t in TARGETS if t != "cpu")
# What Argo CD and Kubernetes do, with upstream sources: the overlays are replayed against it below.
FACTS = tomllib.loads((ROOT / "tools/policy/upstream_facts.toml").read_text())
WAVE = "argocd.argoproj.io/sync-wave"
DIRECTORIES = validate.kustomization_dirs(ROOT)


@cache
def rendered(relative: str) -> list[dict]:
    return validate.render(ROOT / relative)


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return found


def triton(objects: list[dict]) -> dict:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "triton")


@pytest.fixture(scope="module")
def results() -> dict[Path, list[str]]:
    return {r.directory: r.problems for r in validate.validate(ROOT, CRDS)}


@pytest.mark.parametrize("directory", DIRECTORIES, ids=[d.relative_to(ROOT).as_posix() for d in DIRECTORIES])
def test_every_kustomization_renders_and_validates(directory: Path, results: dict[Path, list[str]]) -> None:
    assert results[directory] == []


def test_every_target_has_an_overlay_and_the_argocd_and_node_pool_folders_are_checked() -> None:
    names = [d.relative_to(ROOT).as_posix() for d in DIRECTORIES]
    assert {f"overlays/{t}" for t in TARGETS} <= set(names)
    assert {"gitops/base", "gitops/argocd", "gitops/nodepools"} <= set(names)


def test_overlays_readme_table_matches_the_overlays_and_the_catalog() -> None:
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in (ROOT / "overlays/README.md").read_text().splitlines()
        if line.startswith("| ") and "](" in line
    ]
    # every overlay has its row; a fork that dropped targets may keep their rows
    listed = {re.search(r"\[`(.+)/`\]", row[1]).group(1) for row in rows}
    assert set(TARGETS) <= listed and listed <= set(catalog.gpus())
    for _, directory, label, count, pool, _ in rows:
        target = re.search(r"\[`(.+)/`\]", directory).group(1)
        if target not in TARGETS:
            continue
        gpu = catalog.gpu(target)
        spec = one(rendered(f"overlays/{target}"), "Deployment")["spec"]["template"]["spec"]
        assert label.strip("`") == (gpu.accelerator or "(none)")
        assert spec.get("nodeSelector", {}).get("cloud.google.com/gke-accelerator", "(none)") == label.strip("`")
        limits = next(c for c in spec["containers"] if c["name"] == "triton")["resources"]["limits"]
        assert int(limits.get("nvidia.com/gpu", 0)) == int(count)
        if int(count):
            machine, per_node = re.fullmatch(r"`(.+)` \((\d+) GPUs?\).*", pool).groups()
            assert gpu.machine_types[int(per_node)] == machine
            assert node_pool(gpu.accelerator)["nodeConfig"]["machineType"] == machine


@pytest.mark.parametrize("target", TARGETS)
def test_model_pin_is_read_by_kustomize_but_never_emitted(target: str) -> None:
    objects = rendered(f"overlays/{target}")
    pin = yaml.safe_load((ROOT / "overlays" / target / "model-pin.yaml").read_text())["data"]
    # the one ConfigMap that reaches the cluster is the preStop's script (gitops/base/drain.py)
    assert [set(o["data"]) for o in objects if o["kind"] == "ConfigMap"] == [{"drain.py"}]
    template = one(objects, "Deployment")["spec"]["template"]
    fetch = next(c for c in template["spec"]["initContainers"] if c["name"] == "fetch-model")
    assert {"name": "MODEL_URI", "value": pin["uri"]} in fetch["env"]
    assert {"name": "BUILD_ID", "value": pin["build_id"]} in fetch["env"]
    [build] = [v for v in template["spec"]["volumes"] if v["name"] == "build"]
    assert build["csi"]["volumeAttributes"] == {
        "bucketName": pin["bucket"], "mountOptions": f"implicit-dirs,only-dir={pin['prefix']}"
    }
    assert pin["uri"] == f"gs://{pin['bucket']}/{pin['prefix']}/"
    assert template["metadata"]["labels"]["gke-triton-llm/build-id"] == pin["build_id"]
    assert template["metadata"]["labels"]["gke-triton-llm/gpu"] == target


def test_a_new_pin_changes_only_the_model_location_in_the_pod_template(tmp_path: Path) -> None:
    for folder in ("gitops", "overlays"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    pin = tmp_path / "overlays/h100/model-pin.yaml"
    old = yaml.safe_load(pin.read_text())["data"]["build_id"]
    before = validate.render(tmp_path / "overlays/h100")
    pin.write_text(pin.read_text().replace(old, "0123456789abcdef"))
    after = validate.render(tmp_path / "overlays/h100")
    changed = [
        line
        for line in difflib.unified_diff(
            yaml.safe_dump_all(before).splitlines(), yaml.safe_dump_all(after).splitlines(), n=0, lineterm=""
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    # The build id label, the URI and build id fetch-model copies and checks, and the FUSE mount's prefix.
    assert changed == [
        f"-        gke-triton-llm/build-id: {old}",
        "+        gke-triton-llm/build-id: 0123456789abcdef",
        f"-          value: gs://gke-triton-llm-models/builds/SmolLM2-135M-Instruct/{old}/",
        "+          value: gs://gke-triton-llm-models/builds/SmolLM2-135M-Instruct/0123456789abcdef/",
        f"-          value: {old}",
        "+          value: 0123456789abcdef",
        f"-            mountOptions: implicit-dirs,only-dir=builds/SmolLM2-135M-Instruct/{old}",
        "+            mountOptions: implicit-dirs,only-dir=builds/SmolLM2-135M-Instruct/0123456789abcdef",
    ]


def test_cpu_overlay_runs_without_gpus_and_scales_on_the_pods_waiting_requests() -> None:
    objects = rendered("overlays/cpu")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert triton(objects)["resources"] == {
        "requests": {"cpu": "4", "memory": "8Gi", "ephemeral-storage": "2Gi"}, "limits": {"memory": "8Gi"}
    }
    metric = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]
    assert metric == {"name": "prometheus.googleapis.com|llm_pod_requests_waiting|gauge"}


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_overlays_scale_on_the_same_waiting_requests_as_the_cpu_one(target: str) -> None:
    objects = rendered(f"overlays/{target}")
    metric = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]
    assert metric == {"name": "prometheus.googleapis.com|llm_pod_requests_waiting|gauge"}
    assert {"name": "TRTLLM_ORCHESTRATOR", "value": "1"} in triton(objects)["env"]


def test_tritonserver_is_the_container_process() -> None:
    objects = rendered("overlays/h100")
    assert "replicas" not in one(objects, "Deployment")["spec"]
    assert triton(objects)["command"] == ["tritonserver"]


@pytest.mark.parametrize("target", TARGETS)
def test_cold_start_numbers_are_the_catalogs_budget(target: str) -> None:
    budget = catalog.gpu(target).cold_start
    deployment = one(rendered(f"overlays/{target}"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    startup = triton(rendered(f"overlays/{target}"))["startupProbe"]
    window = startup["periodSeconds"] * startup["failureThreshold"]
    assert window == math.ceil(budget.startup_window_s / startup["periodSeconds"]) * startup["periodSeconds"]
    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch-model")
    assert {"name": "FETCH_DEADLINE_SECONDS", "value": str(budget.model_copy.seconds)} in fetch["env"]
    # Kubernetes marks the rollout ProgressDeadlineExceeded (Argo CD: Degraded) only past the whole
    # cold start: node, image, copy, and as long as the startupProbe lets the engine load.
    assert FACTS["argocd"]["deployment_health"]["degraded_reason"] == "ProgressDeadlineExceeded"
    assert deployment["spec"]["progressDeadlineSeconds"] == budget.before_triton_s + window
    assert deployment["spec"]["progressDeadlineSeconds"] > FACTS["kubernetes"]["progress_deadline"]["default_seconds"]


def first_sync(objects: list[dict]) -> tuple[list[str], list[str]]:
    """Argo CD's first sync of an overlay into an empty namespace, as tools/policy/upstream_facts.toml says it
    goes: waves in order, each wave but the last held until every resource in it is Healthy. Returns
    the resources applied before the first one that a cold start (or the outside world) keeps
    unhealthy, and the resources never applied behind it."""
    slow = {s["kind"] for s in FACTS["argocd"]["slow_health"]}
    assert FACTS["argocd"]["sync_waves"]["waits_for_health"] == "every wave but the last"
    waves = sorted({int(o["metadata"].get("annotations", {}).get(WAVE, "0")) for o in objects})
    applied: list[str] = []
    for number in waves:
        in_wave = [o for o in objects if int(o["metadata"].get("annotations", {}).get(WAVE, "0")) == number]
        applied += [f"{o['kind']}/{o['metadata']['name']}" for o in in_wave]
        if number != waves[-1] and any(o["kind"] in slow for o in in_wave):
            later = [o for o in objects if int(o["metadata"].get("annotations", {}).get(WAVE, "0")) > number]
            return applied, [f"{o['kind']}/{o['metadata']['name']}" for o in later]
    return applied, []


@pytest.mark.parametrize("target", TARGETS)
def test_a_cold_start_holds_back_no_wave(target: str) -> None:
    objects = rendered(f"overlays/{target}")
    applied, held_back = first_sync(objects)
    assert held_back == [] and len(applied) == len(objects)


def test_sync_waves_put_config_first_then_service_then_everything_that_waits_on_pods() -> None:
    objects = rendered("overlays/h100")

    def wave(kind: str) -> int:
        return int(one(objects, kind, "triton" if kind in ("NetworkPolicy", "BackendConfig") else None)
                   ["metadata"]["annotations"][WAVE])

    assert wave("Namespace") < wave("ServiceAccount") == wave("BackendConfig") == wave("NetworkPolicy")
    gateway_backend = one(objects, "BackendConfig", "triton-gateway")
    assert int(gateway_backend["metadata"]["annotations"][WAVE]) == wave("BackendConfig")
    # The Service exists before any pod, so pods get the NEG readiness gate (upstream_facts.toml gke).
    assert wave("ServiceAccount") < wave("Service") == wave("Rules") < wave("Deployment")
    assert wave("Deployment") == wave("HorizontalPodAutoscaler") == wave("Ingress") == wave("ManagedCertificate")
    assert wave("Deployment") == wave("PodMonitoring")
    assert "Ingress" in {s["kind"] for s in FACTS["argocd"]["slow_health"]}


def test_a_deployment_in_an_early_wave_would_hold_back_the_ingress() -> None:
    # The replay itself: what the old wave order (Deployment in wave 0, the rest in 1) did.
    objects = [dict(o, metadata=dict(o["metadata"], annotations=dict(o["metadata"].get("annotations", {}))))
               for o in rendered("overlays/h100")]
    one(objects, "Deployment")["metadata"]["annotations"][WAVE] = "0"
    _, held_back = first_sync(objects)
    assert sorted(held_back) == [
        "HorizontalPodAutoscaler/triton", "Ingress/triton", "ManagedCertificate/triton", "PodMonitoring/triton"
    ]


def pruned_sync(objects: list[dict], options: list[str], pruned: dict) -> list[str]:
    """A sync that also prunes `pruned`, as tools/policy/upstream_facts.toml says Argo CD places the prune:
    in its own wave, or one past the last under the PruneLast option. Returns what it holds back."""
    waves = FACTS["argocd"]["sync_waves"]
    assert (waves["prune_wave"], waves["prune_last_wave"]) == ("its own wave", "one past the last")
    last = max(int(o["metadata"].get("annotations", {}).get(WAVE, "0")) for o in objects)
    prune = dict(pruned, metadata=dict(pruned["metadata"], annotations=dict(pruned["metadata"]["annotations"])))
    if waves["prune_last_option"] in options:
        prune["metadata"]["annotations"][WAVE] = str(last + 1)
    return first_sync([*objects, prune])[1]


@pytest.mark.parametrize("target", TARGETS)
def test_a_sync_that_prunes_holds_back_nothing(target: str) -> None:
    # Removing an object from an overlay (a renamed Rules, a dropped component) prunes it in the next sync.
    objects = rendered(f"overlays/{target}")
    options = one(rendered("gitops/argocd"), "ApplicationSet")["spec"]["template"]["spec"]["syncPolicy"]["syncOptions"]
    assert pruned_sync(objects, options, one(objects, "Rules")) == []


def test_prune_last_would_make_a_pruning_sync_wait_on_the_cold_start() -> None:
    objects = rendered("overlays/h100")
    assert pruned_sync(objects, ["PruneLast=true"], one(objects, "Rules")) == ["Rules/triton"]


def test_the_runbook_makes_the_node_pools_before_argo_cd_makes_the_serving_application() -> None:
    # Otherwise the first pods may find the Spot pool missing and land on flex-start (docs/runbook.md, step 9).
    runbook = (ROOT / "docs/runbook.md").read_text()
    pools = runbook.index("kubectl apply --server-side -k gitops/nodepools\n")
    ready = runbook.index("wait --for=condition=Ready", pools)
    assert pools < ready < runbook.index("kubectl apply --server-side --force-conflicts -k gitops/argocd\n")


def test_facts_pin_the_argo_cd_the_runbook_installs() -> None:
    runbook = (ROOT / "docs/runbook.md").read_text()
    assert f"export ARGOCD_VERSION={FACTS['argocd']['version']}\n" in runbook
    assert re.fullmatch(r"[0-9a-f]{40}", FACTS["argocd"]["commit"])
    assert all(FACTS["argocd"]["version"] in s["source"] for s in FACTS["argocd"]["slow_health"])


def test_argocd_repository_is_named_in_one_place() -> None:
    repo = yaml.safe_load((ROOT / "gitops/argocd/repo.yaml").read_text())["data"]
    objects = rendered("gitops/argocd")
    urls, revisions = set(), set()
    for obj in objects:
        spec = obj.get("spec", {})
        urls.update(spec.get("sourceRepos", []))
        for source in (spec.get("source"), spec.get("template", {}).get("spec", {}).get("source")):
            if source:
                urls.add(source["repoURL"])
                revisions.add(source["targetRevision"])
        for generator in spec.get("generators", []):
            urls.add(generator["git"]["repoURL"])
            revisions.add(generator["git"]["revision"])
    assert urls == {repo["url"]} and revisions == {repo["revision"]} and repo["revision"] != "HEAD"
    mentions = [p.name for p in (ROOT / "gitops").rglob("*.yaml") if repo["url"] in p.read_text()]
    assert mentions == ["repo.yaml"]


def test_applicationset_makes_one_automated_application_per_overlay() -> None:
    appset = one(rendered("gitops/argocd"), "ApplicationSet")["spec"]
    assert appset["goTemplate"] is True and appset["goTemplateOptions"] == ["missingkey=error"]
    assert appset["generators"][0]["git"]["directories"] == [{"path": "overlays/*"}]
    template = appset["template"]["spec"]
    assert template["project"] == "triton-serving"
    assert template["destination"]["namespace"] == "triton-{{.path.basename}}"
    policy = template["syncPolicy"]
    assert policy["automated"] == {"prune": True, "selfHeal": True}
    assert policy["retry"]["backoff"] == {"duration": "10s", "factor": 2, "maxDuration": "5m"}
    assert policy["syncOptions"] == ["ServerSideApply=true", "CreateNamespace=false"]
    assert template["ignoreDifferences"] == [
        {"group": "apps", "kind": "Deployment", "jsonPointers": ["/spec/replicas"]}
    ]


def test_serving_project_is_least_privilege() -> None:
    project = one(rendered("gitops/argocd"), "AppProject", "triton-serving")["spec"]
    assert project["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": "triton-*"},
                                       {"server": "https://kubernetes.default.svc", "namespace": "!triton-build"}]
    assert project["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace", "name": "triton-*"}]
    assert all("*" not in (k["group"] + k["kind"]) for k in project["namespaceResourceWhitelist"])


def test_bootstrap_application_syncs_the_argocd_folder_itself() -> None:
    objects = rendered("gitops/argocd")
    bootstrap = one(objects, "Application", "triton-bootstrap")["spec"]
    assert bootstrap["source"]["path"] == "gitops/argocd"
    assert bootstrap["project"] == "triton-bootstrap"
    health = one(objects, "ConfigMap", "argocd-cm")
    lua = health["data"]["resource.customizations.health.monitoring.googleapis.com_PodMonitoring"]
    assert "ConfigurationCreateSuccess" in lua and 'hs.status = "Degraded"' in lua
    assert health["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false,Delete=false"


def pools() -> list[dict]:
    """The primary pool of each GPU (the on-demand fallbacks of Spot pools left out)."""
    return [
        p for p in rendered("gitops/nodepools")
        if p["kind"] == "ContainerNodePool" and not p["metadata"]["name"].endswith("-on-demand")
    ]


def node_pool(accelerator: str) -> dict:
    [spec] = [
        p["spec"] for p in pools() if [a["type"] for a in p["spec"]["nodeConfig"]["guestAccelerator"]] == [accelerator]
    ]
    return spec


def test_one_gpu_node_pool_per_gpu_overlay_with_room_for_its_pod() -> None:
    accelerators = sorted(a["type"] for p in pools() for a in p["spec"]["nodeConfig"]["guestAccelerator"])
    assert accelerators == sorted(catalog.gpu(t).accelerator for t in GPU_TARGETS)
    for target in GPU_TARGETS:
        gpu = catalog.gpu(target)
        pod_gpus = int(triton(rendered(f"overlays/{target}"))["resources"]["limits"]["nvidia.com/gpu"])
        [accelerator] = node_pool(gpu.accelerator)["nodeConfig"]["guestAccelerator"]
        assert accelerator["count"] >= pod_gpus
        assert node_pool(gpu.accelerator)["nodeConfig"]["machineType"] == gpu.machine_types[accelerator["count"]]


@pytest.mark.parametrize("target", TARGETS)
def test_each_overlay_requests_the_gpus_its_pinned_build_runs_on(target: str) -> None:
    pin = yaml.safe_load((ROOT / "overlays" / target / "model-pin.yaml").read_text())["data"]
    pod_gpus = int(triton(rendered(f"overlays/{target}"))["resources"]["requests"].get("nvidia.com/gpu", 0))
    assert pod_gpus == (int(pin["tp"]) * int(pin["pp"]) if target != "cpu" else 0)


def test_node_pool_zones_are_set_in_cluster_yaml_only() -> None:
    cluster = yaml.safe_load((ROOT / "gitops/nodepools/cluster.yaml").read_text())["data"]
    for target in GPU_TARGETS:
        zones = node_pool(catalog.gpu(target).accelerator)["nodeLocations"]
        assert zones == cluster[f"{target}-zones"]
        assert all(zone.startswith(f"{cluster['location']}-") for zone in zones)
    assert "us-central1-" not in "".join(p.read_text() for p in (ROOT / "gitops/nodepools").glob("*.yaml")
                                          if p.name != "cluster.yaml")


def test_h100_pool_is_spot_because_gce_sells_one_gpu_a3_high_only_so() -> None:
    assert node_pool("nvidia-h100-80gb")["nodeConfig"]["machineType"] == "a3-highgpu-1g"
    assert node_pool("nvidia-h100-80gb")["nodeConfig"]["spot"] is True


@pytest.mark.parametrize(
    ("status", "health"),
    [
        (None, ("Progressing", "Waiting for the Managed Prometheus operator")),
        (
            {"conditions": [{"type": "ConfigurationCreateSuccess", "status": "True"}]},
            ("Healthy", "Scrape configuration applied"),
        ),
        (
            {"conditions": [{"type": "ConfigurationCreateSuccess", "status": "False", "message": "bad port"}]},
            ("Degraded", "bad port"),
        ),
    ],
)
def test_podmonitoring_health_check_runs_in_lua_5_1_like_argo_cd(status: dict | None, health: tuple) -> None:
    # Argo CD runs health checks in gopher-lua (Lua 5.1) with the object as the global `obj`.
    lupa = pytest.importorskip("lupa.luajit21", reason="lupa (Lua 5.1) runs Argo CD's health script")
    lua = one(rendered("gitops/argocd"), "ConfigMap", "argocd-cm")["data"][
        "resource.customizations.health.monitoring.googleapis.com_PodMonitoring"
    ]
    runtime = lupa.LuaRuntime()
    podmonitoring = one(rendered("overlays/h100"), "PodMonitoring")
    runtime.globals().obj = runtime.table_from({**podmonitoring, **({"status": status} if status else {})},
                                               recursive=True)
    result = runtime.execute(lua)
    assert (result["status"], result["message"]) == health


# --- the GKE facts the capacity policy relies on (tools/policy/gke_facts.toml) --------------------------------


def test_every_gke_fact_has_a_value_our_words_and_an_upstream_source() -> None:
    facts = tomllib.loads((ROOT / "tools/policy/gke_facts.toml").read_text())
    for name, entry in facts.items():
        assert set(entry) == {"value", "fact", "source"}, name
        assert "shared" not in entry["source"] and ("https://" in entry["source"] or "@" in entry["source"]), name


@pytest.mark.parametrize("target", TARGETS)
def test_serving_shutdown_fits_the_cluster_autoscalers_limit(target: str) -> None:
    limit = capacity.fact("cluster_autoscaler_max_graceful_termination_seconds")
    pod = one(rendered(f"overlays/{target}"), "Deployment")["spec"]["template"]["spec"]
    drain = int(next(a for a in triton(rendered(f"overlays/{target}"))["args"] if "exit-timeout" in a).split("=")[1])
    pre_stop = serving.drain_prestop(triton(rendered(f"overlays/{target}")))
    assert pre_stop.settle + pre_stop.quiet_timeout + drain + capacity.UNLOAD_MARGIN_SECONDS \
        == pod["terminationGracePeriodSeconds"] <= limit


@pytest.mark.parametrize("target", ["l4", "h100"])
def test_spot_overlays_run_two_replicas_on_two_nodes_with_a_fallback(target: str) -> None:
    objects = rendered(f"overlays/{target}")
    assert one(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= capacity.SPOT_MIN_REPLICAS
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    name = pod["nodeSelector"][capacity.fact("compute_class_key")]
    computeclass = one(rendered("gitops/nodepools"), "ComputeClass", name)
    offers, missing = capacity.class_offers(computeclass, rendered("gitops/nodepools"))
    assert missing == [] and offers[0].spot and not offers[-1].spot
    assert {(o.accelerator, o.count) for o in offers} == {(catalog.gpu(target).accelerator, 1)}


def test_pools_not_sold_on_demand_are_spot_or_reserved() -> None:
    for pool in (p for p in rendered("gitops/nodepools") if p["kind"] == "ContainerNodePool"):
        if pool["spec"]["nodeConfig"]["machineType"] in capacity.fact("not_sold_on_demand"):
            assert capacity.pool_capacity(pool) in {"spot", "reservation"}
    reservation = node_pool("nvidia-h200-141gb")["nodeConfig"]["reservationAffinity"]
    assert reservation["key"] == capacity.fact("reservation_name_key")
    cluster = yaml.safe_load((ROOT / "gitops/nodepools/cluster.yaml").read_text())["data"]
    assert reservation["values"] == cluster["h200-reservations"]


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_build_classes_offer_every_machine_type_of_the_catalog_on_flex_start(target: str) -> None:
    gpu = catalog.gpu(target)
    computeclass = one(rendered("gitops/nodepools"), "ComputeClass", f"triton-build-{target}")
    priorities = computeclass["spec"]["priorities"]
    assert {p["gpu"]["count"]: p["machineType"] for p in priorities} == gpu.machine_types
    assert all(p["gpu"]["type"] == gpu.accelerator and p["flexStart"]["enabled"] for p in priorities)


def test_docs_cold_start_table_is_the_catalog_and_the_overlays() -> None:
    doc = (ROOT / "docs/manifests.md").read_text()
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in doc.splitlines()
        if line.strip().startswith("| ") and line.strip().split("|")[1].strip() in TARGETS
        and line.count("|") == 8 and line.split("|")[2].strip().isdigit()
    ]
    assert [row[0] for row in rows] == list(TARGETS)
    for target, node, image, copy, load, probe, deadline in rows:
        budget = catalog.gpu(target).cold_start
        phases = [budget.node_provisioning, budget.image_pull, budget.model_copy, budget.engine_load]
        assert [int(node), int(image), int(copy), int(load)] == [p.seconds for p in phases]
        startup = triton(rendered(f"overlays/{target}"))["startupProbe"]
        assert probe == f"{startup['periodSeconds']} × {startup['failureThreshold']}"
        assert int(deadline) == one(rendered(f"overlays/{target}"), "Deployment")["spec"]["progressDeadlineSeconds"]


@pytest.mark.parametrize("target", ["h100", "l4"])
def test_the_ensemble_calls_back_on_the_port_the_deployment_serves_http_on(target: str) -> None:
    """The ensemble reaches tensorrt_llm through tritonserver's own HTTP endpoint (its loopback.py): a
    Deployment that moved --http-port would leave every request failing to connect."""
    config = (ROOT / "model_repository/ensemble/config.pbtxt").read_text()
    loopback_port = re.search(r'key: "loopback_http_port" value: \{ string_value: "(\d+)" \}', config).group(1)
    args = triton(rendered(f"overlays/{target}"))["args"]
    assert (flag_value(args, "--http-port") or "8000") == loopback_port  # 8000: tritonserver's default


def test_the_runbook_grants_what_the_recorded_facts_say_and_no_project_iam() -> None:
    """Runbook steps 2-3 make the node account and Config Connector's identity with gcloud: the node gets
    exactly node_service_account_roles, Config Connector exactly node_pool_api_permissions, and no command
    grants a role that may grant roles (tools/policy/access.py keeps IAM out of git for the same reason)."""
    runbook = (ROOT / "docs/runbook.md").read_text()
    commands = re.sub(r"\\\n\s*", " ", runbook)
    node_roles = re.search(r'for role in ([^;]+); do\s+gcloud projects add-iam-policy-binding "\$PROJECT_ID" '
                           r'--member="serviceAccount:\$\{NODE_SA\}" --role="\$role"', commands)
    assert node_roles and node_roles.group(1).split() == capacity.fact("node_service_account_roles")
    permissions = re.search(r"gcloud iam roles create tritonNodePools .*?--permissions=(\S+)", commands)
    assert permissions and permissions.group(1).split(",") == capacity.fact("node_pool_api_permissions")
    project_roles = re.findall(r"gcloud projects add-iam-policy-binding\s+\S+\s+--member=\S+\s+--role=(\S+)", commands)
    assert '"projects/${PROJECT_ID}/roles/tritonNodePools"' in project_roles
    for wide in ("projectIamAdmin", "serviceAccountAdmin", "roles/container.admin", "roles/owner"):
        assert not re.search(rf"--role=\S*{wide}", commands), wide


def test_the_pod_loads_models_as_the_tests_do() -> None:
    """The flags that decide how tritonserver loads and judges models are the ones tools/serve.py runs the
    real tritonserver with in every test: a config the tests load is a config the pod loads."""
    import serve

    tested = serve.server_command(Path("/models"), serve.Ports(), "127.0.0.1")
    pod = triton(rendered("overlays/h100"))
    for flag in ("--disable-auto-complete-config", "--strict-readiness=true"):
        assert flag in tested and flag in pod["args"], flag


def test_the_build_namespace_the_access_policy_guards_is_the_jobs() -> None:
    from policy import access

    kustomization = yaml.safe_load((ROOT / "gitops/jobs/compile-engine/kustomization.yaml").read_text())
    assert kustomization["namespace"] == access.BUILD_NAMESPACE


def test_what_the_runbook_installs_from_the_web_is_pinned() -> None:
    """A manifest applied from a URL is pinned to a commit or a release, never a branch that moves."""
    runbook = re.sub(r"\\\n\s*", " ", (ROOT / "docs/runbook.md").read_text())
    urls = re.findall(r"kubectl apply[^\n]*?-f\s+\"?(https://raw\.githubusercontent\.com/[^\s\"]+)", runbook)
    assert len(urls) >= 2, urls
    for url in urls:
        ref = url.split("/")[5]
        assert re.fullmatch(r"[0-9a-f]{40}|\$\{[A-Z_]+_VERSION\}|v\d[\w.-]*", ref), url
