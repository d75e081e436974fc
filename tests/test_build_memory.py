"""The build's own peak, apart from serving: 16-bit weights on GPU (calibration) or in host memory."""

from __future__ import annotations

from pathlib import Path

import build_memory
import catalog
import hf_config
import planner

MODELS = Path(__file__).parent / "fixtures" / "models"


def needs(model: str, gpu: str) -> build_memory.BuildNeeds:
    shape, target = hf_config.load(MODELS / model), catalog.gpu(gpu)
    return build_memory.needs(shape, target, planner.plan(shape, target, runtime="engine"))


def test_70b_fp8_calibration_takes_four_h100s_though_it_serves_on_two():
    # 16-bit weights 141,107,412,992 B = 131.42 GiB; x 1.5 = 197.1 GiB; an H100 gives 79.65 - 7.96 GiB:
    # 2 GPUs 143.4, 4 GPUs 286.8 -> 4 (NVIDIA: "at least 4 H100"); serving TP is 2
    n = needs("Llama-3.1-70B", "h100")
    assert (n.build_gpus, n.full_precision_weights_gib, n.host_memory_gib_available, n.problem) == (4, 131.42, 800, "")


def test_405b_fp8_calibration_fits_no_h100_node_and_says_what_would():
    n = needs("Llama-3.1-405B", "h100")
    # 16-bit 811.7e9 B = 755.96 GiB x 1.5 = 1133.9 GiB; 8 x 71.69 GiB = 573.5; an 8 x B200 node gives
    # 8 x 179.06 x 0.9 = 1289.2 GiB
    assert n.build_gpus == 0
    assert n.problem == (
        "calibration needs 1.5 x the 16-bit model (1133.9 GiB) on GPU; 8 x h100 give 573.5 GiB after headroom. "
        "Build on a bigger node (b200), or serve a pre-quantised checkpoint such as NVIDIA's nvidia/<model>-FP8 "
        "with --runtime llmapi"
    )


def test_bf16_conversion_is_host_memory():
    n = needs("Llama-3.1-70B", "a100-80gb")
    assert n.step == "convert_checkpoint.py (host memory)"
    assert (n.build_gpus, n.host_memory_gib_needed, n.host_memory_gib_available) == (4, 131.42, 600)
