"""tools/validate.py refuses broken manifests with a message that names the object and the problem.

Each test copies gitops/, overlays/ and docs/ of this checkout to a scratch repository, breaks one thing
the way a person would, and asserts the exact problems validate.py reports for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import catalog
import pytest
import validate
import yaml
from policy import capacity, images, kubeschema

ROOT = Path(__file__).resolve().parent.parent
CRDS = validate.VENDORED_CRDS
OVERLAY = "this overlay's Deployment/triton"


def edit(repo: Path, relative: str, old: str, new: str) -> None:
    path = repo / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {relative}"
    path.write_text(text.replace(old, new))


def edit_each(repo: Path, relative: str, old: str, new: str, count: int) -> None:
    """Like edit, for text that occurs `count` times (the preStop both containers of the pod run)."""
    path = repo / relative
    text = path.read_text()
    assert text.count(old) == count, f"{old!r} must occur {count} times in {relative}"
    path.write_text(text.replace(old, new))


def problems(repo: Path, directory: str, crds: Path | None = CRDS) -> list[str]:
    [result] = validate.validate(repo, crds, [repo / directory])
    return result.problems


def test_the_untouched_copy_is_valid(repo: Path) -> None:
    assert all(result.problems == [] for result in validate.validate(repo, CRDS))


def test_misspelt_field_in_a_built_in_kind(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "periodSeconds: 5\n", "periodSecond: 5\n")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: spec.template.spec.containers.0.readinessProbe: "
        "Additional properties are not allowed ('periodSecond' was unexpected)"
    ]


def test_misspelt_field_in_a_custom_resource(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/backendconfig.yaml", "  healthCheck:", "  healthcheck:")
    assert problems(repo, "overlays/cpu") == [
        "BackendConfig/triton: spec: Additional properties are not allowed ('healthcheck' was unexpected)",
        "BackendConfig/triton: healthCheck.requestPath must be /v2/health/ready",
    ]


def test_misspelt_label_key_in_custom_resource_metadata(repo: Path) -> None:
    edit(repo, "gitops/components/monitoring/podmonitoring.yaml", "  name: triton\n", "  name: triton\n  lables: {}\n")
    assert problems(repo, "overlays/l4") == [
        "PodMonitoring/triton: metadata: Additional properties are not allowed ('lables' was unexpected)"
    ]


def test_wrong_accelerator_label(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", "gke-accelerator: nvidia-h100-80gb", "gke-accelerator: nvidia-h100")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: nodeSelector cloud.google.com/gke-accelerator: nvidia-h100 is not in the GPU catalog "
        "build/gpus.toml (known: nvidia-l4, nvidia-tesla-a100, nvidia-a100-80gb, nvidia-h100-80gb, "
        "nvidia-h200-141gb, nvidia-b200)"
    ]


def test_gpu_limit_that_differs_from_the_request(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", 'limits:\n              memory: 200Gi\n              nvidia.com/gpu: "1"',
         'limits:\n              memory: 200Gi\n              nvidia.com/gpu: "2"')
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: container triton requests nvidia.com/gpu 1 but limits it to 2; "
        "GPU requests and limits must be equal"
    ]


def test_gpu_count_that_no_node_of_that_gpu_has(repo: Path) -> None:
    gpu = repo / "overlays/h200/gpu.yaml"
    gpu.write_text(gpu.read_text().replace('nvidia.com/gpu: "1"', 'nvidia.com/gpu: "16"'))
    edit(repo, "overlays/h200/model-pin.yaml", 'tp: "1"', 'tp: "16"')
    assert problems(repo, "overlays/h200") == [
        "Deployment/triton: requests 16 nvidia.com/gpu, but the largest h200 node carries 8 "
        "(build/gpus.toml machine_types: 8); request at most that"
    ]


def test_gpu_node_selector_without_a_gpu_request(repo: Path) -> None:
    gpu = repo / "overlays/h200/gpu.yaml"
    gpu.write_text(gpu.read_text().replace('              nvidia.com/gpu: "1"\n', ""))
    assert problems(repo, "overlays/h200") == [
        "Deployment/triton: selects nvidia-h200-141gb nodes but container triton requests no nvidia.com/gpu; "
        "request the pinned build's tp × pp (at most 8)",
        f"build 9905d0339a10d650 runs on tp 1 × pp 1 = 1 GPU but {OVERLAY} requests 0 nvidia.com/gpu; "
        "set nvidia.com/gpu (and cpu and memory, per GPU in build/gpus.toml) to 1 in the overlay's gpu.yaml",
    ]


def test_a_pod_may_take_fewer_gpus_than_its_node_carries(repo: Path) -> None:
    # l4 nodes come with 1, 2, 4 or 8 GPUs: a TP=3 pod has no node of its own size but fits on a 4-GPU one.
    gpu = repo / "overlays/l4/gpu.yaml"
    gpu.write_text(gpu.read_text().replace('nvidia.com/gpu: "1"', 'nvidia.com/gpu: "3"')
                   .replace('cpu: "4"', 'cpu: "12"').replace("memory: 24Gi", "memory: 72Gi"))
    edit(repo, "overlays/l4/model-pin.yaml", 'tp: "1"', 'tp: "3"')
    edit(repo, "gitops/nodepools/l4.yaml", "machineType: g2-standard-8", "machineType: g2-standard-48")
    edit(repo, "gitops/nodepools/l4.yaml", "count: 1", "count: 4")
    assert problems(repo, "overlays/l4") == []


def test_h200_serves_a_tp1_build_with_one_of_the_nodes_eight_gpus(repo: Path) -> None:
    [deployment] = [o for o in validate.render(repo / "overlays/h200") if o["kind"] == "Deployment"]
    [triton] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    assert triton["resources"]["requests"] == {
        "cpu": "26", "memory": "340Gi", "nvidia.com/gpu": "1", "ephemeral-storage": "2Gi"
    }
    [pool] = [o for o in validate.render(repo / "gitops/nodepools") if o["metadata"]["name"] == "triton-h200"]
    assert pool["spec"]["nodeConfig"]["machineType"] == "a3-ultragpu-8g"
    assert problems(repo, "overlays/h200") == []


def test_tensor_parallel_pin_on_a_one_gpu_overlay(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", 'tp: "1"', 'tp: "2"')
    assert problems(repo, "overlays/h100") == [
        f"build cd6688bdcad4dd86 runs on tp 2 × pp 1 = 2 GPUs but {OVERLAY} requests 1 nvidia.com/gpu; "
        "set nvidia.com/gpu (and cpu and memory, per GPU in build/gpus.toml) to 2 in the overlay's gpu.yaml, "
        "or build with: python build/compile.py --gpu h100 --tp 1"
    ]


def test_pipeline_parallelism_counts_too(repo: Path) -> None:
    edit(repo, "overlays/h200/model-pin.yaml", 'pp: "1"', 'pp: "4"')
    edit(repo, "overlays/h200/model-pin.yaml", 'tp: "1"', 'tp: "2"')
    assert problems(repo, "overlays/h200") == [
        f"build 9905d0339a10d650 runs on tp 2 × pp 4 = 8 GPUs but {OVERLAY} requests 1 nvidia.com/gpu; "
        "set nvidia.com/gpu (and cpu and memory, per GPU in build/gpus.toml) to 8 in the overlay's gpu.yaml, "
        "or build with: python build/compile.py --gpu h200 --tp 1"
    ]


def test_cpu_pin_must_be_tp1_pp1(repo: Path) -> None:
    edit(repo, "overlays/cpu/model-pin.yaml", 'tp: "1"', 'tp: "2"')
    assert problems(repo, "overlays/cpu") == [
        f"build 2fbafdfb8e6455cc has tp 2 and pp 1 but {OVERLAY} runs on cpu with 0 nvidia.com/gpu; a cpu build "
        "has tp 1 and pp 1 and its pod requests no GPU"
    ]


def test_pin_without_tp_and_pp(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", '  tp: "1"\n  pp: "1"\n', "")
    assert problems(repo, "overlays/h100") == [
        "model-pin.yaml: not a ConfigMap named model-pin with data keys uri, bucket, prefix, build_id, gpu, "
        "accelerator, compute_capability, runtime, triton_image, tp, pp, size_bytes (missing: tp, pp); rewrite it "
        "with tools/pin.py"
    ]


def test_pin_with_a_tp_that_is_not_a_number(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", 'tp: "1"', 'tp: "two"')
    assert problems(repo, "overlays/h100") == [
        "build cd6688bdcad4dd86 has tp 'two' and pp '1', not positive whole numbers; republish and pin it"
    ]


def test_cpu_and_memory_requests_come_from_the_catalog(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", 'cpu: "23"', 'cpu: "16"')
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: container triton requests cpu 16, but build/gpus.toml gives h100 pods 23 per GPU "
        "× 1 = 23"
    ]


def test_tls_ingress_removed(repo: Path) -> None:
    edit(repo, "overlays/h100/kustomization.yaml", "  - ../../gitops/components/tls-ingress\n", "")
    assert problems(repo, "overlays/h100") == [
        "no Ingress: a serving overlay is reached only through the TLS Ingress (components/tls-ingress)"
    ]


def test_plain_http_allowed(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/ingress.yaml", '"false"', '"true"')
    assert problems(repo, "overlays/h100") == [
        'Ingress/triton: serves plain HTTP; set annotation kubernetes.io/ingress.allow-http: "false"'
    ]


def test_no_authentication_at_the_load_balancer(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/backendconfig.yaml", "    enabled: true\n", "    enabled: false\n")
    edit(repo, "gitops/components/tls-ingress/backendconfig.yaml", "  securityPolicy:\n    name: triton-edge\n", "")
    assert problems(repo, "overlays/h100") == [
        "BackendConfig/triton: no authentication in front of Triton; enable iap or set a Cloud Armor securityPolicy"
    ]


def test_replicas_on_a_deployment_the_hpa_scales(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "  revisionHistoryLimit: 5\n",
         "  replicas: 2\n  revisionHistoryLimit: 5\n")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: sets spec.replicas, but HorizontalPodAutoscaler/triton owns the replica count; "
        "remove replicas"
    ]


def test_min_replicas_zero(repo: Path) -> None:
    edit(repo, "gitops/components/autoscaling/hpa.yaml", "minReplicas: 1", "minReplicas: 0")
    assert problems(repo, "overlays/cpu") == [
        "HorizontalPodAutoscaler/triton: minReplicas is 0; it must be at least 1 "
        "(scale to zero puts node provisioning and model load in a user's request)"
    ]


def test_pin_for_another_gpu(repo: Path) -> None:
    shutil.copy(repo / "overlays/l4/model-pin.yaml", repo / "overlays/h100/model-pin.yaml")
    assert problems(repo, "overlays/h100") == [
        f"build 88d7a63c79e4f9f1 is for gpu 'l4' (accelerator 'nvidia-l4', compute capability '8.9') but {OVERLAY} "
        "runs on gpu 'h100' (accelerator 'nvidia-h100-80gb', compute capability '9.0'; build/gpus.toml); "
        "build it with: python build/compile.py --gpu h100"
    ]


def test_pin_for_another_image(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", "tritonserver:26.07-trtllm", "tritonserver:25.10-trtllm")
    assert problems(repo, "overlays/h100") == [
        "build cd6688bdcad4dd86 was made for image nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3 but "
        f"{OVERLAY} deploys nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3; rebuild it with the versions "
        "pinned in build/versions.toml, or change both together"
    ]


def test_pin_with_a_runtime_the_gpu_does_not_run(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", "runtime: engine", "runtime: cpu")
    assert problems(repo, "overlays/h100") == [
        f"build cd6688bdcad4dd86 has runtime 'cpu' but {OVERLAY} (h100) runs 'engine' or 'llmapi'; "
        "build it with: python build/compile.py --gpu h100"
    ]


@pytest.mark.parametrize("metric", ["nv_trt_llm_request_metrics", "nv_inference_pending_request_count"])
def test_an_hpa_on_a_runtimes_own_gauge_is_refused(repo: Path, metric: str) -> None:
    """The runtimes' own gauges miss waiting requests (the executor's queue, the llmapi model, the rows a
    blocked execute() holds): only the series the monitoring component records counts them all."""
    edit(repo, "overlays/h100/kustomization.yaml", "  - path: gpu.yaml\n", "  - path: gpu.yaml\n" + hpa_on(metric))
    assert problems(repo, "overlays/h100") == [
        f"HorizontalPodAutoscaler/triton: scales on {metric}, which no Rules object here records (the HPA would "
        "find no metric on some runtimes, or miss waiting requests); scale on llm_pod_requests_waiting "
        "(docs/manifests.md, Autoscaling)"
    ]


def test_an_llmapi_pin_autoscales_like_the_others(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", "runtime: engine", "runtime: llmapi")
    assert problems(repo, "overlays/h100") == []


def hpa_on(metric: str) -> str:
    """An overlay patch that puts the HPA on another Managed Prometheus gauge."""
    return f"""  - target:
      kind: HorizontalPodAutoscaler
    patch: |-
      - op: replace
        path: /spec/metrics/0/pods/metric
        value:
          name: prometheus.googleapis.com|{metric}|gauge
"""


TRITON_ENTRY = "    newName: us-docker.pkg.dev/example-project/nvcr/nvidia/tritonserver\n    digest: sha256:"
TRITON_COPY = f"us-docker.pkg.dev/example-project/nvcr/nvidia/tritonserver@{images.triton_digest()}"


def test_image_that_differs_from_versions_toml_names_both_sides(repo: Path) -> None:
    edit(repo, "gitops/base/kustomization.yaml", TRITON_ENTRY + "0", TRITON_ENTRY + "1")
    other = TRITON_COPY.replace("@sha256:0", "@sha256:1")
    assert problems(repo, "overlays/cpu") == [
        "build 2fbafdfb8e6455cc was made for image nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 but "
        f"{OVERLAY} deploys {other}; rebuild it with the versions pinned in build/versions.toml, or change both "
        "together",
        f"Deployment/triton: container triton runs {other!r}, but build/versions.toml pins "
        "'nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3' at " + images.triton_digest() + ", copied into "
        "Artifact Registry (…/nvidia/tritonserver@ that digest); change the `images:` entry in gitops/base",
    ]


def test_image_by_tag_alone(repo: Path) -> None:
    by_tag = TRITON_ENTRY.replace("digest: sha256:", "newTag: latest\n#")
    edit(repo, "gitops/base/kustomization.yaml", TRITON_ENTRY, by_tag)
    image = "us-docker.pkg.dev/example-project/nvcr/nvidia/tritonserver:latest"
    assert problems(repo, "gitops/base") == [
        f"Deployment/triton: container {name} image {image!r} is not pinned by digest (@sha256: and 64 hex "
        "digits); pin it in the kustomization's `images:` with `digest:`, never a tag alone"
        for name in ("fetch-model", "triton")
    ]


def test_root_container(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "runAsUser: 1000\n", "runAsUser: 0\n")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: pod must run as non-root (securityContext runAsNonRoot: true, runAsUser 1000)"
    ]


def test_model_repository_path_is_where_engines_expect_it(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "--model-repository=/models", "--model-repository=/repository")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: container triton must serve --model-repository=/models, the path built engines are "
        "configured for (build/layout.py POD_MODEL_REPOSITORY)",
        "Deployment/triton: container gateway must read the build Triton serves: --repository=/repository "
        "(has /models)",
    ]


def test_missing_probe(repo: Path) -> None:
    text = (repo / "gitops/base/deployment.yaml").read_text()
    start = text.index("          startupProbe:")
    end = text.index("          readinessProbe:")
    (repo / "gitops/base/deployment.yaml").write_text(text[:start] + text[end:])
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container triton has no startupProbe (engine load takes minutes)"
    ]


def test_load_balancer_timeout_longer_than_the_drain(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/backendconfig.yaml", "timeoutSec: 570", "timeoutSec: 3600")
    assert problems(repo, "overlays/h100") == [
        "BackendConfig/triton: timeoutSec 3600 lets a stream run longer than the pod drains on shutdown (the "
        "preStop's --quiet-timeout-seconds 540 + Triton's --exit-timeout-secs 30 in Deployment/triton = 570); raise "
        "the drain or lower the timeout"
    ]


def test_grace_period_shorter_than_the_drain(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "terminationGracePeriodSeconds: 600",
         "terminationGracePeriodSeconds: 590")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: terminationGracePeriodSeconds 590 is shorter than the preStop's --settle-seconds (15) + "
        "--quiet-timeout-seconds (540) + Triton's --exit-timeout-secs (30) + 15 s to unload = 600; the kubelet "
        "would kill in-flight streams"
    ]


def test_quiet_wait_that_overruns_the_grace_period(repo: Path) -> None:
    edit_each(repo, "gitops/base/deployment.yaml", "--quiet-timeout-seconds=540", "--quiet-timeout-seconds=570", 2)
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: terminationGracePeriodSeconds 600 is shorter than the preStop's --settle-seconds (15) + "
        "--quiet-timeout-seconds (570) + Triton's --exit-timeout-secs (30) + 15 s to unload = 630; the kubelet "
        "would kill in-flight streams"
    ]


def test_grace_period_longer_than_the_cluster_autoscaler_waits(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "terminationGracePeriodSeconds: 600",
         "terminationGracePeriodSeconds: 630")
    edit(repo, "gitops/base/deployment.yaml", "--exit-timeout-secs=30", "--exit-timeout-secs=60")
    edit(repo, "gitops/base/deployment.yaml", "--drain-seconds=30", "--drain-seconds=60")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: terminationGracePeriodSeconds 630 is cut to 600 by the cluster autoscaler on scale-down "
        "(max-graceful-termination-sec, tools/policy/gke_facts.toml); fit the preStop's settle and quiet wait, "
        "--exit-timeout-secs and 15 s to unload within 600"
    ]


def test_prestop_that_only_sleeps(repo: Path) -> None:
    edit_each(repo, "gitops/base/deployment.yaml",
              "[python3, /etc/triton-drain/drain.py, --settle-seconds=15, --quiet-timeout-seconds=540,\n"
              "                          --metrics-port=8002, --http-port=8000]", "[sleep, \"15\"]", 2)
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container triton's preStop must run drain.py (gitops/base/drain.py) with "
        "--settle-seconds=N, --quiet-timeout-seconds=N, --metrics-port=N, --http-port=N (has ['sleep', '15']): on "
        "SIGTERM Triton refuses the new connections each ensemble request still needs, so the pod must wait for "
        "nothing in flight first",
        "BackendConfig/triton: timeoutSec 570 lets a stream run longer than the pod drains on shutdown (the "
        "preStop's --quiet-timeout-seconds 0 + Triton's --exit-timeout-secs 30 in Deployment/triton = 30); raise "
        "the drain or lower the timeout",
        "BackendConfig/triton-gateway: timeoutSec 570 lets a stream run longer than the pod drains on shutdown (the "
        "preStop's --quiet-timeout-seconds 0 + Triton's --exit-timeout-secs 30 in Deployment/triton = 30); raise "
        "the drain or lower the timeout",
    ]


def test_prestop_that_reads_another_port_than_triton_serves(repo: Path) -> None:
    edit_each(repo, "gitops/base/deployment.yaml", "--http-port=8000]", "--http-port=8001]", 2)
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: the preStop's drain.py reads --http-port=8001, but Triton serves on 8000 (--http-port); "
        "it would never see what is in flight"
    ]


def test_prestop_script_not_mounted_in_the_gateway(repo: Path) -> None:
    mount = "            - name: drain\n              mountPath: /etc/triton-drain\n              readOnly: true\n"
    text = (repo / "gitops/base/deployment.yaml").read_text()
    assert text.count(mount) == 2
    at = text.rindex(mount)  # the gateway's, the second container
    (repo / "gitops/base/deployment.yaml").write_text(text[:at] + text[at + len(mount):])
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway runs /etc/triton-drain/drain.py in its preStop but mounts no "
        "ConfigMap at /etc/triton-drain: the hook would fail at once and SIGTERM come without the drain"
    ]


def test_network_policy_removed(repo: Path) -> None:
    edit(repo, "overlays/cpu/kustomization.yaml", "  - ../../gitops/components/network-policy\n", "")
    assert problems(repo, "overlays/cpu") == [
        "no NetworkPolicy denies ingress by default (components/network-policy)"
    ]


def test_overlay_namespace_must_be_where_the_applicationset_deploys_it(repo: Path) -> None:
    edit(repo, "overlays/l4/kustomization.yaml", "namespace: triton-l4", "namespace: llm")
    assert problems(repo, "overlays/l4") == [
        # the serving project creates triton-* namespaces only
        "Namespace/llm: AppProject/triton-serving does not allow this Namespace (clusterResourceWhitelist, by name); "
        "Argo CD would refuse to sync it",
        "objects are in namespace 'llm', but the ApplicationSet deploys this overlay to 'triton-l4'; "
        "set `namespace: triton-l4` in its kustomization"
    ]


def test_kind_outside_the_appproject_whitelist(repo: Path) -> None:
    edit(repo, "overlays/cpu/kustomization.yaml", "configMapGenerator:\n",
         "secretGenerator:\n  - name: extra\n    literals: [a=b]\nconfigMapGenerator:\n")
    [problem] = problems(repo, "overlays/cpu")
    assert problem.startswith("Secret/extra-")
    assert problem.endswith(
        ": kind core/Secret is not in the namespaceResourceWhitelist of AppProject/triton-serving; "
        "Argo CD would refuse to sync it"
    )


def test_missing_pin_fails_the_render(repo: Path) -> None:
    (repo / "overlays/h100/model-pin.yaml").unlink()
    [problem] = problems(repo, "overlays/h100")
    assert problem.startswith("kustomize failed: ")
    assert "model-pin.yaml" in problem


def test_node_pool_machine_type_must_match_the_catalog(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h100.yaml", "    machineType: a3-highgpu-1g", "    machineType: a3-highgpu-2g")
    assert problems(repo, "gitops/nodepools") == [
        "ContainerNodePool/triton-h100: machineType 'a3-highgpu-2g' does not carry 1 × nvidia-h100-80gb; "
        "build/gpus.toml says a3-highgpu-1g"
    ]


def test_gpu_overlay_needs_a_node_pool_of_its_shape(repo: Path) -> None:
    (repo / "gitops/nodepools/kustomization.yaml").write_text(
        (repo / "gitops/nodepools/kustomization.yaml").read_text().replace("  - h100.yaml\n", "")
    )
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: no ContainerNodePool in gitops/nodepools has nodes with 1 × nvidia-h100-80gb or more "
        "(build/gpus.toml: a3-highgpu-1g carries 1); add one so the cluster autoscaler can place this pod"
    ]


def test_a_node_pool_with_fewer_gpus_than_the_pod_needs_does_not_count(repo: Path) -> None:
    gpu = repo / "overlays/h100/gpu.yaml"
    gpu.write_text(gpu.read_text().replace('nvidia.com/gpu: "1"', 'nvidia.com/gpu: "2"')
                   .replace('cpu: "23"', 'cpu: "46"').replace("memory: 200Gi", "memory: 400Gi"))
    edit(repo, "overlays/h100/model-pin.yaml", 'tp: "1"', 'tp: "2"')
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: no ContainerNodePool in gitops/nodepools has nodes with 2 × nvidia-h100-80gb or more "
        "(build/gpus.toml: a3-highgpu-2g carries 2); add one so the cluster autoscaler can place this pod"
    ]


def test_without_crds_custom_resources_fail_and_say_how_to_fix_it(repo: Path) -> None:
    found = problems(repo, "gitops/nodepools", crds=None)
    assert (
        "ContainerNodePool/triton-a100-80gb: unknown kind ContainerNodePool in container.cnrm.cloud.google.com/"
        "v1beta1: not a built-in kind of Kubernetes 1.33, and no CRD directory was given to check custom resources "
        "(--crds DIR or GKE_TRITON_CRDS)"
    ) in found
    assert len(found) == 11  # every object of gitops/nodepools but the ConfigMap is a custom resource


def test_unknown_kinds_and_versions_fail() -> None:
    crds = kubeschema.load_crds(CRDS)

    def check(api_version: str, kind: str) -> list[str]:
        return kubeschema.validate_object({"apiVersion": api_version, "kind": kind}, crds)

    assert check("autoscaling/v2beta2", "HorizontalPodAutoscaler") == [
        "unknown kind HorizontalPodAutoscaler in autoscaling/v2beta2: not a built-in kind of Kubernetes 1.33 "
        f"and no CRD for it in {CRDS}"
    ]
    assert check("monitoring.googleapis.com/v2", "PodMonitoring") == [
        "monitoring.googleapis.com/v2 is not a served version of PodMonitoring "
        f"(served: v1, v1alpha1; CRDs from {CRDS})"
    ]
    assert check("monitoring.googleapis.com/v1", "PodMonitor") == [
        "unknown kind PodMonitor in monitoring.googleapis.com/v1 (kinds of monitoring.googleapis.com: "
        "PodMonitoring, Rules)"
    ]


def test_cluster_scoped_custom_resource_takes_no_namespace() -> None:
    computeclass = {
        "apiVersion": "cloud.google.com/v1",
        "kind": "ComputeClass",
        "metadata": {"name": "h100", "namespace": "triton-h100"},
        "spec": {"priorities": [{"machineFamily": "a3"}]},
    }
    assert kubeschema.validate_object(computeclass, kubeschema.load_crds(CRDS)) == [
        "metadata.namespace: ComputeClass is cluster-scoped and takes no namespace"
    ]


def test_crd_conversion_closes_objects_except_where_unknown_fields_are_kept() -> None:
    schema = kubeschema.to_jsonschema({
        "type": "object",
        "required": ["mode", "name"],
        "properties": {
            "mode": {"type": "string", "default": "fast"},
            "name": {"type": "string"},
            "port": {"x-kubernetes-int-or-string": True},
            "values": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
        },
    })
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name"]
    assert schema["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "additionalProperties" not in schema["properties"]["values"]


def test_crds_from_kubectl_get_crd_list_output(tmp_path: Path) -> None:
    crd = yaml.safe_load((CRDS / "monitoring.googleapis.com/PodMonitoring.yaml").read_text())
    (tmp_path / "from-cluster.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [crd]}))
    assert sorted(kubeschema.load_crds(tmp_path).kinds) == [("monitoring.googleapis.com", "PodMonitoring")]


def test_empty_crd_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(kubeschema.CrdError, match=f"no CustomResourceDefinition found in {tmp_path}"):
        kubeschema.load_crds(tmp_path)


def test_cli_prints_each_directory_and_exits_1_on_a_problem(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    edit(repo, "overlays/h100/gpu.yaml", 'cpu: "23"', 'cpu: "16"')
    assert validate.main(["--repo", str(repo), "--crds", str(CRDS), "overlays/cpu", "overlays/h100"]) == 1
    assert capsys.readouterr().out == (
        f"CRD schemas from {CRDS} (18 kinds)\n"
        "✅ overlays/cpu (16 objects)\n"
        f"{PLACEHOLDERS}"
        "❌ overlays/h100\n"
        "   - Deployment/triton: container triton requests cpu 16, but build/gpus.toml gives h100 pods 23 per GPU "
        "× 1 = 23\n"
        f"{PLACEHOLDERS}"
        "2 directories, 1 failed\n"
        "The placeholders above are this template's stand-ins: replace them (docs/runbook.md steps 3b, 8); "
        "tools/validate.py --before-push refuses them.\n"
    )


PLACEHOLDERS = (
    f"   · placeholder: image '{TRITON_COPY}' (Deployment/triton fetch-model, Deployment/triton triton): project "
    "example-project and the all-zero digest (docs/runbook.md steps 3b, 8)\n"
    f"   · placeholder: image 'us-docker.pkg.dev/example-project/gke-triton-llm/gateway@sha256:{'0' * 64}' "
    "(Deployment/triton gateway): project example-project and the all-zero digest "
    "(docs/runbook.md steps 3b, 8)\n"
)


def test_cli_crd_directory_from_the_environment(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    monkeypatch.setenv(validate.CRDS_ENV, str(CRDS))
    assert validate.main(["--repo", str(repo), "gitops/nodepools"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        f"CRD schemas from {CRDS} (18 kinds)", "✅ gitops/nodepools (11 objects)",
        "   · placeholder: ContainerNodePool/triton-a100-80gb: project example-project"]


def test_cli_checks_custom_resources_against_the_vendored_crds_by_default(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    monkeypatch.delenv(validate.CRDS_ENV, raising=False)
    assert validate.main(["--repo", str(repo), "gitops/nodepools"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"CRD schemas from {CRDS} (18 kinds)"


def test_cli_without_kustomize_is_a_tool_error(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert validate.main(["--repo", str(repo), "--crds", str(CRDS)]) == 2
    assert capsys.readouterr().err == (
        "error: neither kustomize nor kubectl is on PATH: install kubectl (it includes kustomize) or kustomize v5\n"
    )


# --- Spot, fallbacks, disruption budgets, node pools and build Jobs (tools/policy/capacity.py) -------


def test_spot_overlay_with_one_replica(repo: Path) -> None:
    edit(repo, "gitops/components/two-nodes/kustomization.yaml", "value: 2", "value: 1")
    assert problems(repo, "overlays/l4") == [
        "Deployment/triton: runs on Spot (ContainerNodePool/triton-l4) with HPA minReplicas 1; a preemption gives a "
        "pod ~15 s, so one replica means an outage for a whole cold start: set minReplicas to at least 2 "
        "(components/spot)"
    ]


def test_spot_replicas_not_spread_over_nodes(repo: Path) -> None:
    edit(repo, "gitops/components/two-nodes/deployment.yaml", "whenUnsatisfiable: DoNotSchedule",
         "whenUnsatisfiable: ScheduleAnyway")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: runs on Spot (ContainerNodePool/triton-h100) without topologySpreadConstraints maxSkew 1 "
        "on kubernetes.io/hostname (DoNotSchedule); two replicas on one node go with one preemption (components/spot)"
    ]


def test_spot_compute_class_without_a_fallback(repo: Path) -> None:
    edit(repo, "gitops/nodepools/l4.yaml", "    - nodepools: [triton-l4-on-demand]\n", "")
    assert problems(repo, "gitops/nodepools") == [
        "ComputeClass/triton-l4: every priority is Spot (ContainerNodePool/triton-l4); add an on-demand, reservation "
        "or flex-start priority of 1 × nvidia-l4 so a Spot stock-out does not leave pods Pending"
    ]


def test_spot_pool_without_a_class_and_no_fallback(repo: Path) -> None:
    # The pods select no class, and the Spot pool is not a class's: it is the only L4 they can take.
    edit(repo, "overlays/l4/kustomization.yaml", "  - ../../gitops/components/spot-l4\n", "")
    edit(repo, "gitops/nodepools/l4.yaml", "    labels:\n      cloud.google.com/compute-class: triton-l4\n", "")
    assert problems(repo, "overlays/l4") == [
        "Deployment/triton: runs on Spot (ContainerNodePool/triton-l4) with HPA minReplicas 1; a preemption gives a "
        "pod ~15 s, so one replica means an outage for a whole cold start: set minReplicas to at least 2 "
        "(components/spot)",
        "Deployment/triton: runs on Spot (ContainerNodePool/triton-l4) without topologySpreadConstraints maxSkew 1 "
        "on kubernetes.io/hostname (DoNotSchedule); two replicas on one node go with one preemption (components/spot)",
        "Deployment/triton: runs on Spot (ContainerNodePool/triton-l4) with no fallback in gitops/nodepools; select a "
        "ComputeClass whose later priorities are on-demand, reservation or flex-start nvidia-l4 nodes",
    ]


def test_pods_that_select_no_class_cannot_use_a_class_pool(repo: Path) -> None:
    edit(repo, "overlays/h100/kustomization.yaml", "  - ../../gitops/components/spot-h100\n", "")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: the nvidia-h100-80gb pools serve a ComputeClass only (ContainerNodePool/triton-h100 "
        "(ComputeClass/triton-h100)), and its pods select none; add nodeSelector cloud.google.com/compute-class "
        "(components/spot-<gpu>)",
        # without the spot components the HPA's minimum is 1 as well
        single_replica("node provisioning 600 + image pull 900 + model copy 900 (build/gpus.toml cold_start) + the "
                       "startupProbe's 1130 s = 3530 s"),
    ]


def test_compute_class_that_mixes_gpu_models(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h100.yaml", "        type: nvidia-h100-80gb\n        count: 1\n        driverVersion",
         "        type: nvidia-h200-141gb\n        count: 1\n        driverVersion")
    assert problems(repo, "gitops/nodepools") == [
        "ComputeClass/triton-h100: priorities offer nvidia-h100-80gb, nvidia-h200-141gb; an engine runs only on the "
        "GPU it was built for, so a class keeps to one GPU model"
    ]


def test_compute_class_that_mixes_gpu_counts(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h100.yaml",
         "machineType: a3-highgpu-1g\n      gpu:\n        type: nvidia-h100-80gb\n        count: 1",
         "machineType: a3-highgpu-2g\n      gpu:\n        type: nvidia-h100-80gb\n        count: 2")
    assert problems(repo, "gitops/nodepools") == [
        "ComputeClass/triton-h100: serving priorities offer 1 × nvidia-h100-80gb and 2 × nvidia-h100-80gb per node; "
        "keep one GPU count so the fallback holds the same pods as Spot"
    ]


def test_compute_class_priority_naming_a_pool_that_is_not_rendered(repo: Path) -> None:
    edit(repo, "gitops/nodepools/l4.yaml", "nodepools: [triton-l4-on-demand]",
         "nodepools: [triton-l4-ondemand]")
    assert problems(repo, "gitops/nodepools") == [
        "ComputeClass/triton-l4: priority 2 names node pool triton-l4-ondemand, which is not rendered",
        "ComputeClass/triton-l4: every priority is Spot (ContainerNodePool/triton-l4); add an on-demand, reservation "
        "or flex-start priority of 1 × nvidia-l4 so a Spot stock-out does not leave pods Pending",
    ]


def test_compute_class_priority_naming_a_pool_that_has_not_joined_it(repo: Path) -> None:
    edit(repo, "gitops/nodepools/l4-on-demand.yaml",
         "    labels:\n      cloud.google.com/compute-class: triton-l4\n", "")
    assert problems(repo, "gitops/nodepools") == [
        "ComputeClass/triton-l4: priority 2 names ContainerNodePool/triton-l4-on-demand, whose nodes lack the label "
        "and NoSchedule taint cloud.google.com/compute-class=triton-l4; GKE only uses a hand-made pool for a class "
        "that way",
        "ComputeClass/triton-l4: every priority is Spot (ContainerNodePool/triton-l4); add an on-demand, reservation "
        "or flex-start priority of 1 × nvidia-l4 so a Spot stock-out does not leave pods Pending",
    ]


def test_deployment_without_a_disruption_budget(repo: Path) -> None:
    edit(repo, "gitops/base/kustomization.yaml", "  - poddisruptionbudget.yaml\n", "")
    assert problems(repo, "overlays/h200") == [
        "Deployment/triton: no PodDisruptionBudget keeps a Triton pod serving during drains (gitops/base)"
    ]


def test_disruption_budget_that_lets_a_drain_evict_the_last_pod(repo: Path) -> None:
    edit(repo, "gitops/base/poddisruptionbudget.yaml", "  minAvailable: 1\n", "  maxUnavailable: 1\n")
    assert problems(repo, "overlays/h200") == [
        "PodDisruptionBudget/triton: maxUnavailable 1 at the HPA's minReplicas 1 lets a drain evict the last Triton "
        "pod; set minAvailable: 1"
    ]


def test_h200_pool_on_a3_ultra_without_a_reservation(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h200.yaml", "consumeReservationType: SPECIFIC_RESERVATION",
         "consumeReservationType: NO_RESERVATION")
    assert problems(repo, "gitops/nodepools") == [
        "ContainerNodePool/triton-h200: a3-ultragpu-8g is not sold on demand (only Spot, flex-start or a reservation; "
        "tools/policy/gke_facts.toml not_sold_on_demand), so this pool would never grow; set "
        "nodeConfig.reservationAffinity to a SPECIFIC_RESERVATION named in cluster.yaml, or spot: true"
    ]


def test_reserved_pool_that_surges_on_upgrade(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h200.yaml", "maxSurge: 0", "maxSurge: 1")
    assert problems(repo, "gitops/nodepools") == [
        "ContainerNodePool/triton-h200: upgradeSettings.maxSurge 1 on reserved capacity: a surge node has no room in a "
        "fully used reservation; use maxSurge 0 and maxUnavailable 1"
    ]


def test_node_pool_without_upgrade_settings(repo: Path) -> None:
    edit(repo, "gitops/nodepools/a100-80gb.yaml", "  upgradeSettings:\n    strategy: SURGE\n    maxSurge: 1\n"
         "    maxUnavailable: 0\n", "")
    assert problems(repo, "gitops/nodepools") == [
        "ContainerNodePool/triton-a100-80gb: no upgradeSettings; say how node upgrades replace GPU nodes (surge "
        "maxSurge 1 and maxUnavailable 0, or maxSurge 0 and maxUnavailable 1 on a reservation)"
    ]


def test_node_pool_that_config_connector_would_delete(repo: Path) -> None:
    edit(repo, "gitops/nodepools/a100-80gb.yaml", "    cnrm.cloud.google.com/deletion-policy: abandon\n", "")
    assert problems(repo, "gitops/nodepools") == [
        "ContainerNodePool/triton-a100-80gb: needs annotation cnrm.cloud.google.com/deletion-policy: abandon; without "
        "it deleting the object deletes the node pool and the serving pods on it"
    ]


def test_node_pool_on_the_default_compute_service_account(repo: Path) -> None:
    edit(repo, "gitops/nodepools/a100-80gb.yaml", "    serviceAccountRef:\n      external: set-from-cluster.yaml\n", "")
    edit(repo, "gitops/nodepools/kustomization.yaml",
         "      - select:\n          kind: ContainerNodePool\n        fieldPaths:\n"
         "          - spec.nodeConfig.serviceAccountRef.external\n",
         "      - select:\n          kind: ContainerNodePool\n        reject:\n          - name: triton-a100-80gb\n"
         "        fieldPaths:\n          - spec.nodeConfig.serviceAccountRef.external\n")
    assert problems(repo, "gitops/nodepools") == [
        "ContainerNodePool/triton-a100-80gb: nodes run as the Compute Engine default service account (Editor on the "
        "project); set nodeConfig.serviceAccountRef.external to the least-privilege node service account "
        "(cluster.yaml node-service-account)"
    ]


def test_node_pools_on_two_service_accounts(repo: Path) -> None:
    edit(repo, "gitops/nodepools/kustomization.yaml",
         "      - select:\n          kind: ContainerNodePool\n        fieldPaths:\n"
         "          - spec.nodeConfig.serviceAccountRef.external\n",
         "      - select:\n          kind: ContainerNodePool\n        reject:\n          - name: triton-h200\n"
         "        fieldPaths:\n          - spec.nodeConfig.serviceAccountRef.external\n")
    edit(repo, "gitops/nodepools/h200.yaml", "serviceAccountRef:\n      external: set-from-cluster.yaml",
         "serviceAccountRef:\n      external: ci@example-project.iam.gserviceaccount.com")
    [problem] = problems(repo, "gitops/nodepools")
    assert problem.startswith("GPU nodes run as 2 service accounts (ComputeClass/triton-build-a100-80gb: "
                              "triton-gpu-nodes@example-project.iam.gserviceaccount.com, ")
    assert "ContainerNodePool/triton-h200: ci@example-project.iam.gserviceaccount.com" in problem
    assert problem.endswith("); run them all as cluster.yaml's node-service-account, the one account "
                            "docs/runbook.md grants")


IAM_MEMBER = """apiVersion: iam.cnrm.cloud.google.com/v1beta1
kind: IAMPolicyMember
metadata:
  name: make-me-owner
  namespace: gke-platform
spec:
  member: user:someone@example.com
  role: roles/owner
  resourceRef:
    kind: Project
    external: projects/example-project
"""


def test_an_iam_object_in_git(repo: Path) -> None:
    (repo / "gitops/nodepools/owner.yaml").write_text(IAM_MEMBER)
    edit(repo, "gitops/nodepools/kustomization.yaml", "  - cluster.yaml\n", "  - cluster.yaml\n  - owner.yaml\n")
    assert problems(repo, "gitops/nodepools") == [
        "IAMPolicyMember/make-me-owner: an IAM object in git lets a push grant roles: Config Connector would need "
        "project IAM admin to apply it, which grants any role (owner included); create the account and its roles "
        "with gcloud (docs/runbook.md step 2) and name it by email"
    ]


def test_a_project_that_lets_argo_cd_sync_iam(repo: Path) -> None:
    edit(repo, "gitops/argocd/appproject-platform.yaml", "      kind: ContainerNodePool\n",
         "      kind: ContainerNodePool\n    - group: iam.cnrm.cloud.google.com\n      kind: IAMPolicyMember\n")
    assert problems(repo, "gitops/argocd") == [
        "AppProject/triton-platform: namespaceResourceWhitelist allows iam.cnrm.cloud.google.com/IAMPolicyMember, so "
        "a push could grant any role on the project through Config Connector; list the kinds it syncs without the "
        "IAM ones"
    ]


def test_build_job_whose_gpu_count_its_class_does_not_offer(repo: Path) -> None:
    # A TP=2 build sent to the serving class, whose nodes carry one H100 each.
    job = repo / "gitops/jobs/compile-engine/job.yaml"
    job.write_text(job.read_text().replace('nvidia.com/gpu: "1"', 'nvidia.com/gpu: "2"')
                   .replace("compute-class: triton-build-h100", "compute-class: triton-h100"))
    assert problems(repo, "gitops/jobs/compile-engine") == [
        "Job/compile-engine: requests 2 × nvidia-h100-80gb on one node, but ComputeClass/triton-h100 offers 1 per "
        "node (ContainerNodePool/triton-h100), 1 per node (ComputeClass/triton-h100 priority 2); add a priority or "
        "pool of a3-highgpu-2g (2 GPUs, build/gpus.toml)"
    ]


def test_build_job_larger_than_any_node_of_its_gpu(repo: Path) -> None:
    job = repo / "gitops/jobs/compile-engine/job.yaml"
    job.write_text(job.read_text().replace('nvidia.com/gpu: "1"', 'nvidia.com/gpu: "16"'))
    assert problems(repo, "gitops/jobs/compile-engine") == [
        "Job/compile-engine: requests 16 × nvidia-h100-80gb on one node, but ComputeClass/triton-build-h100 offers "
        "1 per node (ComputeClass/triton-build-h100 priority 1), 2 per node (ComputeClass/triton-build-h100 "
        "priority 2), 4 per node (ComputeClass/triton-build-h100 priority 3), 8 per node "
        "(ComputeClass/triton-build-h100 priority 4); no machine type in build/gpus.toml carries that many"
    ]


def test_multi_gpu_build_job_gets_a_node_of_its_size(repo: Path) -> None:
    job = repo / "gitops/jobs/compile-engine/job.yaml"
    job.write_text(job.read_text().replace('nvidia.com/gpu: "1"', 'nvidia.com/gpu: "4"'))
    assert problems(repo, "gitops/jobs/compile-engine") == []



def test_build_job_that_a_node_upgrade_would_fail_or_that_retries_its_own_errors(repo: Path) -> None:
    edit(repo, "gitops/jobs/compile-engine/job.yaml", "      - action: Ignore\n", "      - action: Count\n")
    edit(repo, "gitops/jobs/compile-engine/job.yaml", "          values: [0]\n", "          values: [0, 1]\n")
    assert problems(repo, "gitops/jobs/compile-engine") == [
        "Job/compile-engine: no podFailurePolicy rule Ignore on pod condition DisruptionTarget; a node upgrade or "
        "maintenance that takes the pod away would fail a multi-hour build instead of starting it again "
        "(tools/policy/upstream_facts.toml kubernetes.job_pod_failure_policy)",
        "Job/compile-engine: no podFailurePolicy rule FailJob on exit codes NotIn [0]; a build that fails by itself "
        "would be retried onto the same error, holding its GPUs for hours",
    ]


def single_replica(cold_start: str, named: str = "") -> str:
    return (
        "Deployment/triton: the HPA's minReplicas 1 makes its one pod the service: a node upgrade drains it after "
        "GKE's 3600 s (tools/policy/gke_facts.toml node_upgrade_pdb_respected_seconds), an outage of a whole cold "
        f"start ({cold_start}); run 2 replicas on 2 nodes (components/two-nodes), or keep node upgrades to the "
        "cluster's maintenance window, with a no_minor_or_node_upgrades exclusion for busy days, and say so with "
        "annotation gke-triton-llm/maintenance-policy: docs/runbook.md#<its section> (components/maintenance-window)"
        f"{named}"
    )


H200_COLD_START = (
    "node provisioning 900 + image pull 900 + model copy 1600 (build/gpus.toml cold_start) + the startupProbe's "
    "1500 s = 4900 s"
)


def test_a_single_replica_without_a_maintenance_policy(repo: Path) -> None:
    edit(repo, "overlays/h200/kustomization.yaml", "  - ../../gitops/components/maintenance-window\n", "")
    assert problems(repo, "overlays/h200") == [single_replica(H200_COLD_START)]


def test_a_maintenance_policy_that_names_no_runbook_section(repo: Path) -> None:
    edit(repo, "gitops/components/maintenance-window/kustomization.yaml", "#maintenance-window-and-exclusions",
         "#maintenance-windows")
    assert problems(repo, "overlays/h200") == [
        single_replica(H200_COLD_START, " (it names 'docs/runbook.md#maintenance-windows', which is no section of "
                       "docs/runbook.md)")
    ]


def test_two_replicas_need_no_maintenance_policy(repo: Path) -> None:
    edit(repo, "overlays/h200/kustomization.yaml", "  - ../../gitops/components/maintenance-window\n",
         "  - ../../gitops/components/two-nodes\n")
    assert problems(repo, "overlays/h200") == []


def test_flex_start_priority_on_the_default_boot_disk(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h100.yaml", "      storage:\n        bootDiskSize: 500\n", "")
    assert problems(repo, "overlays/h100") == [
        "ComputeClass/triton-h100 priority 2: boot disk 100 GB (no storage.bootDiskSize: GKE's default) is smaller "
        "than what Deployment/triton needs on the node: its copy of the model 112.5 GB (build/gpus.toml: h100's model "
        "copy of 900 s at 100 MB/s = 90 GB, × 1.25) + the Cloud Storage FUSE sidecar's ephemeral-storage request 5Gi "
        "+ the Triton image 60 GB (build/versions.toml image_pull_gb and image_unpacked_ratio) = 177.87 GB; set "
        "storage.bootDiskSize to at least 178"
    ]


def test_node_pool_boot_disk_smaller_than_the_pod_needs(repo: Path) -> None:
    edit(repo, "gitops/nodepools/l4.yaml", "diskSizeGb: 200", "diskSizeGb: 100")
    assert problems(repo, "overlays/l4") == [
        "ContainerNodePool/triton-l4: boot disk 100 GB is smaller than what Deployment/triton needs on the node: its "
        "copy of the model 37.5 GB (build/gpus.toml: l4's model copy of 300 s at 100 MB/s = 30 GB, × 1.25) + the Cloud "
        "Storage FUSE sidecar's ephemeral-storage request 5Gi + the Triton image 60 GB (build/versions.toml "
        "image_pull_gb and image_unpacked_ratio) = 102.87 GB; set nodeConfig.diskSizeGb to at least 103"
    ]


def test_a_pinned_build_bigger_than_the_copy_budget_sizes_the_boot_disk(repo: Path) -> None:
    gpu = repo / "overlays/h200/gpu.yaml"
    gpu.write_text(gpu.read_text().replace("ephemeral-storage: 2Gi", "ephemeral-storage: 1Ti")
                   .replace("sizeLimit: 2Gi", "sizeLimit: 1Ti"))
    edit(repo, "overlays/h200/model-pin.yaml", 'size_bytes: "200000000"', 'size_bytes: "800000000000"')
    assert problems(repo, "overlays/h200") == [
        "ContainerNodePool/triton-h200: boot disk 1000 GB is smaller than what Deployment/triton needs on the node: "
        "its copy of the model 1000 GB (build 9905d0339a10d650: 800000000000 bytes, × 1.25) + the Cloud Storage FUSE "
        "sidecar's ephemeral-storage request 5Gi + the Triton image 60 GB (build/versions.toml image_pull_gb and "
        "image_unpacked_ratio) = 1065.37 GB; set nodeConfig.diskSizeGb to at least 1066"
    ]


def test_flex_start_nodes_replaced_too_late(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h100.yaml", "leadTimeSeconds: 3600", "leadTimeSeconds: 1800")
    assert problems(repo, "overlays/h100") == [
        "ComputeClass/triton-h100 priority 2: flex-start nodes end after 7 days (tools/policy/gke_facts.toml "
        "flex_start_max_run_days) and it starts a replacement only 1800 s before a node ends: Deployment/triton's pod "
        "there is gone for a whole cold start (node provisioning 600 + image pull 900 + model copy 900 "
        "(build/gpus.toml cold_start) + the startupProbe's 1130 s = 3530 s); set "
        "flexStart.nodeRecycling.leadTimeSeconds to at least 3530"
    ]


def test_flex_start_nodes_never_replaced(repo: Path) -> None:
    edit(repo, "gitops/nodepools/h100.yaml", "        nodeRecycling:\n          leadTimeSeconds: 3600\n",
         "")
    assert problems(repo, "overlays/h100") == [
        "ComputeClass/triton-h100 priority 2: flex-start nodes end after 7 days (tools/policy/gke_facts.toml "
        "flex_start_max_run_days) and it sets no flexStart.nodeRecycling.leadTimeSeconds, so nothing replaces a node "
        "before it ends: Deployment/triton's pod there is gone for a whole cold start (node provisioning 600 + image "
        "pull 900 + model copy 900 (build/gpus.toml cold_start) + the startupProbe's 1130 s = 3530 s); set "
        "flexStart.nodeRecycling.leadTimeSeconds to at least 3530"
    ]


# --- cold start, sync waves, the model fetch (tools/policy/cold_start.py) -----------------------

H100_COLD_START = (
    "node provisioning 600 + image pull 900 + model copy 900 (build/gpus.toml cold_start) + the startupProbe's "
    "1130 s = 3530 s"
)


def test_progress_deadline_shorter_than_the_cold_start(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", "progressDeadlineSeconds: 3530", "progressDeadlineSeconds: 1800")
    assert problems(repo, "overlays/h100") == [
        f"Deployment/triton: progressDeadlineSeconds 1800 is shorter than the cold start of a pod on h100: "
        f"{H100_COLD_START}; Argo CD v3.5.1 shows a Deployment past its deadline Degraded (ProgressDeadlineExceeded); "
        "set it to 3530"
    ]


def test_progress_deadline_left_at_the_kubernetes_default(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "  progressDeadlineSeconds: 1880\n", "")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: progressDeadlineSeconds unset (the Kubernetes default, 600) is shorter than the cold "
        "start of a pod on cpu: node provisioning 300 + image pull 900 + model copy 300 (build/gpus.toml cold_start) "
        "+ the startupProbe's 380 s = 1880 s; Argo CD v3.5.1 shows a Deployment past its deadline Degraded "
        "(ProgressDeadlineExceeded); set it to 1880"
    ]


def test_a_longer_startup_probe_needs_a_longer_progress_deadline(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", "failureThreshold: 113", "failureThreshold: 180")
    assert problems(repo, "overlays/h100") == [
        # and a flex-start node's replacement an earlier start
        "ComputeClass/triton-h100 priority 2: flex-start nodes end after 7 days (tools/policy/gke_facts.toml "
        "flex_start_max_run_days) and it starts a replacement only 3600 s before a node ends: Deployment/triton's pod "
        "there is gone for a whole cold start (node provisioning 600 + image pull 900 + model copy 900 "
        "(build/gpus.toml cold_start) + the startupProbe's 1800 s = 4200 s); set "
        "flexStart.nodeRecycling.leadTimeSeconds to at least 4200",
        "Deployment/triton: progressDeadlineSeconds 3530 is shorter than the cold start of a pod on h100: node "
        "provisioning 600 + image pull 900 + model copy 900 (build/gpus.toml cold_start) + the startupProbe's "
        "1800 s = 4200 s; Argo CD v3.5.1 shows a Deployment past its deadline Degraded (ProgressDeadlineExceeded); "
        "set it to 4200"
    ]


def test_startup_probe_shorter_than_the_engine_load(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", "failureThreshold: 113", "failureThreshold: 60")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: container triton's startupProbe allows 10 × 60 = 600 s, less than h100's engine load "
        "of 900 s × 1.25 = 1125 s (build/gpus.toml cold_start); the kubelet would restart tritonserver mid-load; "
        "set failureThreshold to 113"
    ]


def test_fetch_deadline_that_is_not_the_model_copy_budget(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", 'value: "900"', 'value: "300"')
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: init container fetch-model has FETCH_DEADLINE_SECONDS 300, but build/gpus.toml budgets "
        "900 s for h100's model copy; set it to \"900\" (the progress deadline counts on it)"
    ]


def test_a_resource_in_a_later_wave_than_the_deployment(repo: Path) -> None:
    edit(repo, "gitops/components/autoscaling/hpa.yaml", 'sync-wave: "1"', 'sync-wave: "2"')
    assert problems(repo, "overlays/h100") == [
        "HorizontalPodAutoscaler/triton is in sync wave 2, after Deployment/triton in wave 1: Argo CD v3.5.1 applies "
        "wave 2 only once Deployment/triton is Healthy, a whole cold start (3530 s) after a scale-up from zero "
        "nodes, and never if it goes Degraded first; put it in wave 1 or earlier"
    ]


def test_the_deployment_back_in_wave_0_holds_back_hpa_ingress_and_certificate(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", 'argocd.argoproj.io/sync-wave: "1"', 'argocd.argoproj.io/sync-wave: "0"')
    assert problems(repo, "overlays/h100") == [
        f"{kind}/triton is in sync wave 1, after Deployment/triton in wave 0: Argo CD v3.5.1 applies wave 1 only "
        "once Deployment/triton is Healthy, a whole cold start (3530 s) after a scale-up from zero nodes, and "
        "never if it goes Degraded first; put it in wave 0 or earlier"
        for kind in ("HorizontalPodAutoscaler", "PodMonitoring", "ManagedCertificate", "Ingress")
    ]


def test_managed_certificate_in_a_wave_argo_cd_waits_on(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/managedcertificate.yaml", 'sync-wave: "1"', 'sync-wave: "0"')
    assert problems(repo, "overlays/h100") == [
        "ManagedCertificate/triton is in sync wave 0, before the last wave (1, Deployment/triton's): Argo CD v3.5.1 "
        "applies a wave only once every resource of the earlier waves is Healthy, and a ManagedCertificate is "
        "Healthy only when status.certificateStatus is Active, which needs DNS pointing at the load balancer and "
        "can take up to 60 minutes; a domain in FailedNotVisible is Degraded; put it in wave 1"
    ]


def test_an_image_outside_the_pinned_one(repo: Path) -> None:
    edit(repo, "overlays/h100/gpu.yaml", "        - name: fetch-model\n",
         "        - name: fetch-model\n          image: gcr.io/google.com/cloudsdktool/google-cloud-cli:528.0.0-slim\n")
    image = "'gcr.io/google.com/cloudsdktool/google-cloud-cli:528.0.0-slim'"
    assert problems(repo, "overlays/h100") == [
        f"Deployment/triton: container fetch-model runs {image}, not the pinned Triton image '{TRITON_COPY}' that "
        "container triton runs; the serving pod runs only the pinned image, so nothing in it can expire or drift "
        "(fetch-model copies with it, gitops/base/deployment.yaml)",
        f"Deployment/triton: container fetch-model image {image} is not pinned by digest (@sha256: and 64 hex "
        "digits); pin it in the kustomization's `images:` with `digest:`, never a tag alone",
        f"Deployment/triton: container fetch-model image {image} is not from this project's Artifact Registry "
        "(us-docker.pkg.dev/example-project/gke-triton-llm/…, us-docker.pkg.dev/example-project/nvcr/…) nor a name "
        "the Binary Authorization policy allows (gitops/supply-chain/admission.yaml); copy it there (docs/runbook.md "
        "steps 3b, 8), where it is scanned, and pin the copy",
    ]


def test_a_pinned_build_bigger_than_the_local_disk(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", 'size_bytes: "200000000"', 'size_bytes: "16000000000"')
    why = "build cd6688bdcad4dd86 is 16000000000 bytes × 1.25 = 18.63Gi"
    assert problems(repo, "overlays/h100") == [
        f"Deployment/triton: emptyDir models has sizeLimit 2Gi, but {why}; the kubelet would evict the pod during "
        "the copy; set sizeLimit to at least 18.63Gi",
        f"Deployment/triton: container triton requests ephemeral-storage 2Gi, but {why}; the scheduler could place "
        "the pod on a node without room for it; request at least 18.63Gi",
    ]


def test_pin_size_that_is_not_a_number(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", 'size_bytes: "200000000"', 'size_bytes: "200MB"')
    assert problems(repo, "overlays/h100") == [
        "model-pin size_bytes '200MB' is not a whole number of bytes; rewrite it with tools/pin.py"
    ]


TRITON_HOME = "            # TensorRT-LLM) goes to the writable /tmp instead.\n            - name: HOME\n"


def test_triton_without_home(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", TRITON_HOME + "              value: /tmp\n",
         "            - name: LANG\n              value: C.UTF-8\n")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container triton sets no HOME; NGC's triton-server user has no home directory, so set "
        "HOME to a writable emptyDir (/tmp)"
    ]


def test_home_on_the_read_only_root(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", TRITON_HOME + "              value: /tmp\n",
         TRITON_HOME + "              value: /home/triton-server\n")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container triton sets HOME /home/triton-server, which is on no writable volume"
    ]


def test_writable_root_filesystem(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml",
         "            # Triton writes only to /tmp (HOME, python backend, MPI) and /dev/shm: both emptyDirs.\n"
         "            readOnlyRootFilesystem: true\n", "")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container triton must set readOnlyRootFilesystem: true (Triton writes only to its /tmp "
        "and /dev/shm emptyDirs)"
    ]


def test_fuse_volume_without_the_sidecar_annotation(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", 'gke-gcsfuse/volumes: "true"', 'gke-gcsfuse/volumes: "false"')
    assert problems(repo, "overlays/cpu") == [
        'Deployment/triton: the pod template needs annotation gke-gcsfuse/volumes: "true", or GKE injects no Cloud '
        "Storage FUSE sidecar and volume build never mounts"
    ]


def test_fuse_volume_that_is_not_read_only(repo: Path) -> None:
    driver = "            driver: gcsfuse.csi.storage.gke.io\n"
    edit(repo, "gitops/base/deployment.yaml", driver + "            readOnly: true\n", driver)
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: volume build must be a read-only Cloud Storage FUSE volume (csi driver "
        "gcsfuse.csi.storage.gke.io, readOnly: true)"
    ]


def test_pin_whose_bucket_is_not_its_uris(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", "  bucket: gke-triton-llm-models\n", "  bucket: other-bucket\n")
    assert problems(repo, "overlays/h100") == [
        "model-pin uri 'gs://gke-triton-llm-models/builds/SmolLM2-135M-Instruct/cd6688bdcad4dd86/' is not "
        "gs://<bucket>/<prefix>/ of its bucket 'other-bucket' and prefix 'builds/SmolLM2-135M-Instruct/"
        "cd6688bdcad4dd86'; rewrite it with tools/pin.py"
    ]


def test_overlay_without_the_model_pin_component(repo: Path) -> None:
    edit(repo, "overlays/cpu/kustomization.yaml", "  - ../../gitops/components/model-pin\n", "")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: init container fetch-model fetches 'gs://set-by-the-overlay-model-pin/', not the pinned "
        "'gs://gke-triton-llm-models/builds/SmolLM2-135M-Instruct/2fbafdfb8e6455cc/'; include the model-pin component",
        "Deployment/triton: volume build mounts bucket 'set-by-the-overlay-model-pin' only-dir "
        "'set-by-the-overlay-model-pin', not the pinned 'gke-triton-llm-models' 'builds/SmolLM2-135M-Instruct/"
        "2fbafdfb8e6455cc'; include the model-pin component",
    ]


PRUNE_WAITS = (
    "Argo CD v3.5.1 prunes in a wave after the last one (1), so a sync that removes any object waits for the health "
    "of wave 1 (Deployment/triton: a cold start of up to 3530 s), fails if it goes Degraded, and holds back every "
    "newer commit meanwhile, a git revert included"
)
APPSET = "gitops/argocd/applicationset.yaml"


def test_prune_last_on_the_serving_applicationset(repo: Path) -> None:
    edit(repo, APPSET, "          - ServerSideApply=true\n",
         "          - ServerSideApply=true\n          - PruneLast=true\n")
    assert problems(repo, "overlays/h100") == [
        f"ApplicationSet/triton syncs this overlay with PruneLast=true: {PRUNE_WAITS}; drop PruneLast=true"
    ]


def test_prune_last_on_a_serving_object(repo: Path) -> None:
    edit(repo, "gitops/components/autoscaling/hpa.yaml", '    argocd.argoproj.io/sync-wave: "1"\n',
         '    argocd.argoproj.io/sync-wave: "1"\n    argocd.argoproj.io/sync-options: Replace=false,PruneLast=true\n')
    assert problems(repo, "overlays/h100") == [
        "HorizontalPodAutoscaler/triton: annotation argocd.argoproj.io/sync-options has PruneLast=true; once it leaves "
        f"git, {PRUNE_WAITS}; drop it"
    ]


def test_respect_ignore_differences_takes_the_replicas_from_the_hpa(repo: Path) -> None:
    edit(repo, APPSET, "          - ServerSideApply=true\n",
         "          - ServerSideApply=true\n          - RespectIgnoreDifferences=true\n")
    assert problems(repo, "overlays/cpu") == [
        "ApplicationSet/triton syncs this overlay with RespectIgnoreDifferences=true and ignoreDifferences "
        "/spec/replicas of Deployment: Argo CD v3.5.1 then applies the live value of each ignored field, so its "
        "server-side apply owns it too and writes back the value it read at compare time, beside the "
        "HorizontalPodAutoscaler that scales the Deployment; drop RespectIgnoreDifferences=true (the manifests set no "
        "replicas)"
    ]


def test_hpa_in_the_applications_health(repo: Path) -> None:
    edit(repo, "gitops/components/autoscaling/hpa.yaml", '    argocd.argoproj.io/ignore-healthcheck: "true"\n', "")
    assert problems(repo, "overlays/h100") == [
        "HorizontalPodAutoscaler/triton: Argo CD v3.5.1 shows it Degraded (ScalingActive FailedGetPodsMetric) until a "
        "ready pod exports its metric, a whole cold start (3530 s) at every scale-up from zero pods, and the "
        "Application takes the worst health of its resources; annotate it argocd.argoproj.io/ignore-healthcheck: "
        '"true" (the alerts TritonNoReadyReplica and TritonMetricsAbsent watch for pods and metrics that never come)'
    ]


def test_podmonitoring_in_a_wave_argo_cd_waits_on(repo: Path) -> None:
    edit(repo, "gitops/components/monitoring/podmonitoring.yaml", 'sync-wave: "1"', 'sync-wave: "0"')
    assert problems(repo, "overlays/l4") == [
        "PodMonitoring/triton is in sync wave 0, before the last wave (1, Deployment/triton's): Argo CD v3.5.1 applies "
        "a wave only once every resource of the earlier waves is Healthy, and a PodMonitoring is Healthy only when the "
        "Managed Prometheus operator sets its ConfigurationCreateSuccess condition, which never happens where managed "
        "collection is off or the operator is down (the health check is this repository's own, "
        "gitops/argocd/argocd-cm-health.yaml); put it in wave 1"
    ]


# --- the OpenAI gateway container (tools/policy/gateway.py) ---------------------------------------

GATEWAY_BACKEND = "gitops/components/tls-ingress/gateway-backendconfig.yaml"


def test_gateway_liveness_on_tritons_path(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "livenessProbe: {httpGet: {path: /health/live, port: openai}",
         "livenessProbe: {httpGet: {path: /v2/health/live, port: openai}")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway livenessProbe must be httpGet /health/live on port openai "
        "(has /v2/health/live on openai)"
    ]


def test_gateway_that_calls_another_triton(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "--triton=127.0.0.1:8000", "--triton=triton:8000")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway must call this pod's Triton's HTTP port: --triton=127.0.0.1:8000 "
        "(has triton:8000)"
    ]


def test_gateway_that_calls_triton_grpc_port(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "--triton=127.0.0.1:8000", "--triton=127.0.0.1:8001")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway must call this pod's Triton's HTTP port: --triton=127.0.0.1:8000 "
        "(has 127.0.0.1:8001)"
    ]


def test_gateway_that_drains_shorter_than_triton(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "--drain-seconds=30", "--drain-seconds=10")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway must drain as long as Triton: --drain-seconds=30 (Triton's "
        "--exit-timeout-secs; has 10)"
    ]


def test_gateway_whose_prestop_settles_shorter_than_tritons(repo: Path) -> None:
    text = (repo / "gitops/base/deployment.yaml").read_text()
    at = text.rindex("--settle-seconds=15")  # the gateway's, the second container
    (repo / "gitops/base/deployment.yaml").write_text(text[:at] + "--settle-seconds=5" + text[at + 19:])
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway needs triton's preStop ({'exec': {'command': ['python3', "
        "'/etc/triton-drain/drain.py', '--settle-seconds=15', '--quiet-timeout-seconds=540', '--metrics-port=8002', "
        "'--http-port=8000']}}), so the load balancer stops sending it requests, and its streams to Triton end, "
        "before it stops taking them"
    ]


def test_ingress_without_the_v1_route(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/ingress.yaml", "          - path: /v1\n", "          - path: /openai\n")
    assert problems(repo, "overlays/cpu") == [
        "Ingress/triton: no path /v1 (pathType Prefix) to Service/triton port openai: OpenAI clients would reach "
        "Triton instead of the gateway",
        "Ingress/triton: routes Prefix /openai to the gateway's port, which also serves /metrics (every client's key "
        "name and usage, asked for no key) to whoever the load balancer lets in; route only Exact /health, Prefix /v1",
    ]


def test_gateway_backend_health_checked_on_tritons_path(repo: Path) -> None:
    edit(repo, GATEWAY_BACKEND, "requestPath: /health/ready", "requestPath: /v2/health/ready")
    assert problems(repo, "overlays/cpu") == [
        "BackendConfig/triton-gateway: healthCheck must be /health/ready on port 9000, the gateway's "
        "(has /v2/health/ready on 9000)"
    ]


def test_gateway_backend_without_iap(repo: Path) -> None:
    edit(repo, GATEWAY_BACKEND,
         "  iap:\n    enabled: true\n    oauthclientCredentials:\n      secretName: iap-oauth-client\n", "")
    assert problems(repo, "overlays/cpu") == [
        "BackendConfig/triton-gateway: iap and securityPolicy must be BackendConfig/triton's: /v1 needs the same "
        "authentication as the rest of the endpoint"
    ]


def test_network_policy_that_drops_the_gateway_port(repo: Path) -> None:
    edit(repo, "gitops/components/network-policy/networkpolicy.yaml",
         "          port: 8000\n        - protocol: TCP\n          port: 9000\n", "          port: 8000\n")
    assert problems(repo, "overlays/cpu") == [
        "no NetworkPolicy lets the load balancer (35.191.0.0/16, 130.211.0.0/22) reach the gateway on TCP 9000: "
        "every /v1 request and health check would be dropped (components/network-policy)"
    ]


def test_gateway_api_keys_mounted_writable(repo: Path) -> None:
    mount = "              mountPath: /etc/gateway-api-keys\n"
    edit(repo, "gitops/base/deployment.yaml", mount + "              readOnly: true\n", mount)
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway must mount its API keys (api-keys at /etc/gateway-api-keys) read-only"
    ]


def test_gateway_api_keys_secret_that_is_required(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "            optional: true\n", "")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: volume api-keys (Secret gateway-api-keys, the gateway's API keys) must be optional: true, "
        "or a pod without the Secret never starts"
    ]


def test_gateway_api_keys_from_a_folder_nothing_is_mounted_at(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "--api-keys-dir=/etc/gateway-api-keys", "--api-keys-dir=/keys")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway reads API keys from /keys (--api-keys-dir) but mounts nothing there: "
        "mount the Secret gateway-api-keys there read-only"
    ]


def test_serving_pod_without_the_gateway(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "        - name: gateway\n", "        - name: api\n")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: no container gateway: nothing serves the OpenAI API (/v1) (gitops/base/deployment.yaml)",
        f"Deployment/triton: container api runs 'us-docker.pkg.dev/example-project/gke-triton-llm/gateway@sha256:"
        f"{'0' * 64}', not the pinned Triton image '{TRITON_COPY}' that container triton runs; the serving pod runs "
        "only the pinned image, so nothing in it can expire or drift (fetch-model copies with it, "
        "gitops/base/deployment.yaml)",
    ]


# --- a GPU pod fits its node (tools/policy/capacity.py check_node_fit) --------------------------------


def test_a_gpu_pod_that_its_node_cannot_hold(repo: Path) -> None:
    # The gateway at 2 CPUs: with triton's 23 and the gcsfuse sidecar's 0.25, 25.25 CPUs, more than an
    # a3-highgpu-1g gives pods once GKE's reservation (0.135) and its DaemonSets (~0.9) are taken off.
    edit(repo, "gitops/base/deployment.yaml",
         "            requests:\n              cpu: \"1\"\n              memory: 1536Mi\n",
         "            requests:\n              cpu: \"2\"\n              memory: 1536Mi\n")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: 1 pod(s) of 25.25 CPU (triton 23, gateway 2, gke-gcsfuse-sidecar 0.25) do not fit "
        "a3-highgpu-1g, which gives pods 24.96 after GKE's reservation and ~0.9 for its system DaemonSets "
        "(tools/policy/gke_facts.toml); the cluster autoscaler would never add a node for it. Request at most 22 "
        "per GPU for triton (build/gpus.toml pod_cpu)"
    ]


def test_gke_allocatable_matches_the_published_examples() -> None:
    # GKE's tiers worked by hand: 26 vCPUs keep 26 - (0.06 + 0.01 + 2 x 0.005 + 22 x 0.0025) = 25.865 for pods.
    cpu, memory = capacity.allocatable(catalog.machines()["a3-highgpu-1g"])
    assert round(cpu, 3) == 25.865 and round(memory, 1) == 222.5
    cpu, memory = capacity.allocatable(catalog.machines()["g2-standard-8"])
    assert round(cpu, 2) == 7.91 and round(memory, 2) == 28.34


def test_every_machine_the_catalog_names_has_a_shape() -> None:
    named = {m for gpu in catalog.gpus().values() for m in gpu.machine_types.values()}
    assert named == set(catalog.machines())


def test_a_readiness_probe_shorter_than_the_ensembles_is_ready(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "            periodSeconds: 5\n            timeoutSeconds: 6\n",
         "            periodSeconds: 5\n")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container triton readinessProbe gives /v2/health/ready 1 s, but Triton may take 5 s "
        "asking the ensemble's is_ready (tools/policy/upstream_facts.toml triton.python_model_readiness); a slow, "
        "healthy check would fail the probe; set timeoutSeconds to 6"
    ]


def test_an_ingress_that_routes_tritons_admin_api(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/ingress.yaml", "          - path: /v2/health\n", "          - path: /\n")
    assert problems(repo, "overlays/cpu") == [
        "Ingress/triton: routes Prefix / to Triton's HTTP port, which takes its admin API there too (/v2/repository "
        "loads and unloads models, /v2/logging, /v2/trace, shared memory) for every user the load balancer lets in; "
        "route only Exact /v2, Prefix /v2/health, Prefix /v2/models"
    ]


def test_a_serving_project_that_reaches_the_build_namespace(repo: Path) -> None:
    edit(repo, "gitops/argocd/appproject-serving.yaml", '      namespace: "!triton-build"\n',
         "      namespace: triton-h100\n")
    assert problems(repo, "gitops/argocd") == [
        "AppProject/triton-serving: its destinations let an Application sync into triton-build, the compile Job's "
        "namespace (an overlays/build/ folder would take it over: labels, NetworkPolicy, prune); add a destination "
        'with namespace "!triton-build"'
    ]


def test_gateway_startup_probe_that_waits_on_triton_for_less_than_the_engine_load(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml",
         "startupProbe: {httpGet: {path: /health/live, port: openai}, periodSeconds: 5, failureThreshold: 24}",
         "startupProbe: {httpGet: {path: /health/ready, port: openai}, periodSeconds: 10, failureThreshold: 38}")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: container gateway's startupProbe waits on /health/ready, which answers only once Triton is "
        "ready, for 10 × 38 = 380 s, less than container triton's startupProbe allows the engine load (10 × 113 = "
        "1130 s); the kubelet would restart the gateway through every longer load; probe /health/live (its own "
        "process) or allow 1130 s"
    ]
    # The same probe is no problem where the engine load fits in it.
    assert problems(repo, "overlays/cpu") == []


STAND_IN_NOTE = (
    "# EXAMPLE PIN: stands for a build of the default model for this GPU until tools/pin.py replaces it\n"
    "# with a published build.\n"
)


def test_a_real_pin_needs_a_pushed_gateway_image(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", STAND_IN_NOTE, "")
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: container gateway runs 'us-docker.pkg.dev/example-project/gke-triton-llm/gateway@sha256:"
        f"{'0' * 64}', in the example registry of example-project, but this overlay pins a real build "
        "(model-pin.yaml is no stand-in); build and push the gateway image and pin it by digest in the overlay's "
        "`images:` (docs/runbook.md, step 8)"
    ]


def own_project(repo: Path, project: str) -> None:
    """What docs/runbook.md step 3b does: the supply chain and the Triton copy in the user's project."""
    edit(repo, "gitops/supply-chain/project.yaml", "project: example-project", f"project: {project}")
    edit(repo, "gitops/supply-chain/project.yaml", "projects/example-project", f"projects/{project}")
    edit(repo, "gitops/base/kustomization.yaml", "example-project/nvcr/", f"{project}/nvcr/")


def test_a_real_pin_with_the_gateway_image_by_tag(repo: Path) -> None:
    edit(repo, "overlays/h100/model-pin.yaml", STAND_IN_NOTE, "")
    own_project(repo, "my-project")
    (repo / "overlays/h100/kustomization.yaml").write_text(
        (repo / "overlays/h100/kustomization.yaml").read_text()
        + "images:\n  - name: us-docker.pkg.dev/example-project/gke-triton-llm/gateway\n"
        "    newName: us-docker.pkg.dev/my-project/gke-triton-llm/gateway\n    newTag: 0123456789ab\n"
    )
    assert problems(repo, "overlays/h100") == [
        "Deployment/triton: container gateway runs 'us-docker.pkg.dev/my-project/gke-triton-llm/gateway:0123456789ab', "
        "not pinned by digest, but this overlay pins a real build (model-pin.yaml is no stand-in); build and push the "
        "gateway image and pin it by digest in the overlay's `images:` (docs/runbook.md, step 8)",
        "Deployment/triton: container gateway image 'us-docker.pkg.dev/my-project/gke-triton-llm/gateway:0123456789ab' "
        "is not pinned by digest (@sha256: and 64 hex digits); pin it in the kustomization's `images:` with "
        "`digest:`, never a tag alone",
    ]


def test_a_real_pin_with_the_pushed_gateway_image_by_digest(repo: Path) -> None:
    # What docs/runbook.md, step 8, appends to the overlay.
    edit(repo, "overlays/h100/model-pin.yaml", STAND_IN_NOTE, "")
    own_project(repo, "my-project")
    (repo / "overlays/h100/kustomization.yaml").write_text(
        (repo / "overlays/h100/kustomization.yaml").read_text()
        + "images:\n  - name: us-docker.pkg.dev/example-project/gke-triton-llm/gateway\n"
        f"    newName: us-docker.pkg.dev/my-project/gke-triton-llm/gateway\n    digest: sha256:{'ab' * 32}\n"
    )
    assert problems(repo, "overlays/h100") == []


def test_the_ingress_routes_the_gateways_health_check() -> None:
    # guidellm calls GET /health before a run (docs/manifests.md, "The OpenAI gateway"); Triton's is /v2/health.
    ingress = next(o for o in validate.render(ROOT / "overlays/h100") if o["kind"] == "Ingress")
    routes = {(p["path"], p["pathType"]): p["backend"]["service"]["port"]["name"]
              for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert routes[("/health", "Exact")] == routes[("/v1", "Prefix")] == "openai"


# --- the gateway's metrics: scraped, reachable, never public (tools/policy/monitoring.py, gateway.py) -----

PODMONITORING = "gitops/components/monitoring/podmonitoring.yaml"
GATEWAY_SCRAPE = "    - port: openai\n      path: /metrics\n      interval: 15s\n"


def test_podmonitoring_that_does_not_scrape_the_gateway(repo: Path) -> None:
    edit(repo, PODMONITORING, GATEWAY_SCRAPE, "")
    assert problems(repo, "overlays/cpu") == [
        "PodMonitoring/triton: no endpoint scrapes the gateway's /metrics on port openai: what clients get "
        "(statuses, refusals, time to first token as they see it) would be missing from the dashboard and its alerts"
    ]


def test_gateway_scraped_at_another_interval_than_triton(repo: Path) -> None:
    edit(repo, PODMONITORING, GATEWAY_SCRAPE, GATEWAY_SCRAPE.replace("15s", "60s"))
    assert problems(repo, "overlays/cpu") == [
        "PodMonitoring/triton: scrapes Triton every 15s and the gateway every 60s: scrape both at one interval, so "
        "their rates compare"
    ]


def test_network_policy_that_keeps_managed_prometheus_from_the_gateway(repo: Path) -> None:
    edit(repo, "gitops/components/network-policy/networkpolicy.yaml",
         "          port: 8002\n        - protocol: TCP\n          port: 9000\n", "          port: 8002\n")
    assert problems(repo, "overlays/cpu") == [
        "PodMonitoring/triton: scrapes port openai (TCP 9000), but no NetworkPolicy lets Managed Prometheus "
        "(namespace gmp-system) reach it: every scrape would fail (TritonMetricsAbsent) (components/network-policy)"
    ]


def test_ingress_that_routes_the_gateways_metrics(repo: Path) -> None:
    edit(repo, "gitops/components/tls-ingress/ingress.yaml", "          - path: /health\n            pathType: Exact\n",
         "          - path: /metrics\n            pathType: Prefix\n")
    assert problems(repo, "overlays/cpu") == [
        "Ingress/triton: routes Prefix /metrics to the gateway's port, which also serves /metrics (every client's key "
        "name and usage, asked for no key) to whoever the load balancer lets in; route only Exact /health, Prefix /v1"
    ]


def test_gateway_workers_without_a_metrics_folder(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml",
         "            - name: PROMETHEUS_MULTIPROC_DIR\n              value: /run/gateway-metrics\n", "")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway runs several workers but sets no PROMETHEUS_MULTIPROC_DIR: set it to a "
        "folder where a memory-backed emptyDir is mounted, in which the workers share their metrics"
    ]


def test_gateway_metrics_folder_on_the_read_only_root_or_on_disk(repo: Path) -> None:
    edit(repo, "gitops/base/deployment.yaml", "              value: /run/gateway-metrics\n",
         "              value: /var/gateway-metrics\n")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: container gateway keeps its workers' metrics in /var/gateway-metrics "
        "(PROMETHEUS_MULTIPROC_DIR) but mounts no writable emptyDir there: the read-only root filesystem would fail "
        "every worker at start"
    ]
    edit(repo, "gitops/base/deployment.yaml", "              value: /var/gateway-metrics\n",
         "              value: /run/gateway-metrics\n")
    edit(repo, "gitops/base/deployment.yaml",
         "          emptyDir:\n            medium: Memory\n            sizeLimit: 64Mi\n", "          emptyDir: {}\n")
    assert problems(repo, "overlays/cpu") == [
        "Deployment/triton: volume gateway-metrics (PROMETHEUS_MULTIPROC_DIR of container gateway) must be an emptyDir "
        "with medium: Memory and a sizeLimit: the workers write it on every request, and it counts against the "
        "container's memory"
    ]
