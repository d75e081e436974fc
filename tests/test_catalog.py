"""The GPU catalog (build/gpus.toml) keeps the facts every other part relies on."""

from __future__ import annotations

from pathlib import Path

import catalog
import pytest

GPU_TARGETS = [g for g in catalog.gpus().values() if not g.is_cpu]


def test_issue_targets_have_their_gke_labels_and_compute_capabilities():
    # issue 3, Deliver 1; sources in build/gpus.toml's header
    expected = {
        "l4": ("nvidia-l4", "8.9"),
        "a100-40gb": ("nvidia-tesla-a100", "8.0"),
        "a100-80gb": ("nvidia-a100-80gb", "8.0"),
        "h100": ("nvidia-h100-80gb", "9.0"),
        "h200": ("nvidia-h200-141gb", "9.0"),
        "b200": ("nvidia-b200", "10.0"),
    }
    got = {g.name: (g.accelerator, g.compute_capability) for g in GPU_TARGETS}
    assert got == expected
    assert "cpu" in catalog.gpus()


@pytest.mark.parametrize("gpu", GPU_TARGETS, ids=lambda g: g.name)
def test_every_gpu_has_label_capability_memory_and_machines(gpu):
    assert gpu.accelerator.startswith("nvidia-")
    assert float(gpu.compute_capability) >= 8.0
    assert gpu.memory_gib > 0
    assert gpu.machine_types and all(n > 0 and machine for n, machine in gpu.machine_types.items())
    assert gpu.pod_cpu > 0 and gpu.pod_memory_gib > 0


@pytest.mark.parametrize("gpu", GPU_TARGETS, ids=lambda g: g.name)
def test_fp8_exactly_from_sm89_and_nvfp4_exactly_from_sm100(gpu):
    cc = float(gpu.compute_capability)
    assert ("fp8" in gpu.precisions) == (cc >= 8.9)
    assert ("nvfp4" in gpu.precisions) == (cc >= 10.0)


def test_memory_is_what_nvidia_smi_reports_not_the_marketed_size():
    # nvidia-smi --query-gpu=memory.total (MiB) per GPU, / 1024, two decimals: plans budget against this
    reported_mib = {"l4": 23034, "a100-40gb": 40960, "a100-80gb": 81920, "h100": 81559, "h200": 143771,
                    "b200": 183359}
    assert {g.name: g.memory_gib for g in GPU_TARGETS} == {
        name: round(mib / 1024, 2) for name, mib in reported_mib.items()
    }
    assert {g.name: g.marketed_memory_gb for g in GPU_TARGETS} == {
        "l4": 24, "a100-40gb": 40, "a100-80gb": 80, "h100": 80, "h200": 141, "b200": 180,
    }
    assert all(g.memory_gib <= g.marketed_memory_gb for g in GPU_TARGETS)


def test_a100_has_neither_fp8_nor_nvfp4():
    for name in ("a100-40gb", "a100-80gb"):
        precisions = catalog.gpu(name).precisions
        assert "fp8" not in precisions and "nvfp4" not in precisions


def test_accelerator_labels_are_unique():
    labels = [g.accelerator for g in GPU_TARGETS]
    assert len(labels) == len(set(labels))


def test_gpus_default_to_the_engine_runtime_and_cpu_runs_only_cpu():
    assert all(g.runtimes == ("engine", "llmapi") for g in GPU_TARGETS)
    cpu = catalog.gpu("cpu")
    assert cpu.runtimes == ("cpu",)
    assert cpu.precisions == ("fp32",)


def test_lookup_by_accelerator_label_round_trips():
    for gpu in GPU_TARGETS:
        assert catalog.gpu_by_accelerator(gpu.accelerator) is gpu
    assert catalog.gpu_by_accelerator("nvidia-tesla-t4") is None


def test_unknown_target_names_the_known_ones():
    with pytest.raises(catalog.UnknownGpuError) as caught:
        catalog.gpu("h300")
    assert str(caught.value) == (
        "unknown GPU target 'h300'; known targets: cpu, l4, a100-40gb, a100-80gb, h100, h200, b200"
    )


def catalog_markdown() -> str:
    """The catalog as the table in docs/gpu-builds.md (between the catalog markers)."""
    rows = [
        "| target | GKE accelerator label | compute capability | memory per GPU (marketed) "
        "| machine types (GPUs per node) "
        "| pod cpu / memory per GPU | precisions | runtimes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in catalog.gpus().values():
        machines = ", ".join(f"{m} ({n})" if n else m for n, m in sorted(g.machine_types.items()))
        rows.append(
            f"| `{g.name}` | {f'`{g.accelerator}`' if g.accelerator else '(none)'} "
            f"| {g.compute_capability or '-'} "
            f"| {f'{g.memory_gib:.2f} GiB ({g.marketed_memory_gb} GB)' if g.memory_gib else '-'} "
            f"| {machines} | {g.pod_cpu} / {g.pod_memory_gib} GiB | {', '.join(g.precisions)} "
            f"| {', '.join(g.runtimes)} |"
        )
    return "\n".join(rows)


def test_docs_catalog_table_is_the_catalog():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "gpu-builds.md").read_text()
    table = doc.split("<!-- catalog:start -->\n", 1)[1].split("\n<!-- catalog:end -->", 1)[0]
    assert table == catalog_markdown(), "docs/gpu-builds.md is stale; paste catalog_markdown() there"


@pytest.mark.parametrize("gpu", list(catalog.gpus().values()), ids=lambda g: g.name)
def test_every_target_budgets_each_cold_start_phase_with_a_reason(gpu):
    phases = gpu.cold_start.phases
    assert list(phases) == ["node provisioning", "image pull", "model copy", "engine load"]
    assert all(phase.seconds > 0 and phase.why.strip() for phase in phases.values())
    assert gpu.cold_start.startup_window_s >= gpu.cold_start.engine_load.seconds
    assert gpu.cold_start.before_triton_s == sum(p.seconds for name, p in phases.items() if name != "engine load")


@pytest.mark.parametrize("gpu", GPU_TARGETS, ids=lambda g: g.name)
def test_model_copy_budget_holds_the_largest_engine_one_gpu_holds(gpu):
    # An engine's weights fit in its GPUs' memory: the copy of a one-GPU build is at most memory_gib.
    seconds = gpu.memory_gib * 2**30 / (catalog.copy_mb_per_s() * 1e6)
    assert gpu.cold_start.model_copy.seconds >= seconds


def test_startup_window_is_the_engine_load_with_the_shared_margin():
    h100 = catalog.gpu("h100").cold_start
    assert (h100.engine_load.seconds, h100.startup_margin, h100.startup_window_s) == (900, 1.25, 1125)
