"""Planner numbers worked out by hand from real config.json files, and its refusals word for word."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import catalog
import hf_config
import memory
import planner
import pytest
from plan import Plan

MODELS = Path(__file__).parent / "fixtures" / "models"
GIB = 2**30


def shape(name: str) -> hf_config.ModelShape:
    return hf_config.load(MODELS / name)


def plan(model: str, gpu: str, runtime: str = "engine", **kwargs) -> Plan:
    return planner.plan(shape(model), catalog.gpu(gpu), runtime=runtime, **kwargs)


def refusal(model: str | hf_config.ModelShape, gpu: str, runtime: str = "engine", **kwargs) -> str:
    config = shape(model) if isinstance(model, str) else model
    with pytest.raises(planner.PlanError) as caught:
        planner.plan(config, catalog.gpu(gpu), runtime=runtime, **kwargs)
    return str(caught.value)


# ---- parameter counts -------------------------------------------------------------------------

# Published totals (model cards): 8.03B, 70.6B, 7.61B, 7.25B, 135M, 21B ("20.9B" in the gpt-oss card).
PUBLISHED = {
    "Llama-3.1-8B": 8.03e9,
    "Llama-3.1-70B": 70.6e9,
    "Qwen2.5-7B": 7.61e9,
    "Mistral-7B-v0.3": 7.25e9,
    "SmolLM2-135M": 135e6,
    "gpt-oss-20b": 20.9e9,
}


@pytest.mark.parametrize("model", PUBLISHED)
def test_parameter_count_matches_the_published_one_within_2_percent(model):
    assert shape(model).parameters().total == pytest.approx(PUBLISHED[model], rel=0.02)


def test_llama_8b_parameters_by_hand():
    # embedding = lm_head = vocab 128256 x hidden 4096 = 525,336,576
    # attention per layer: q 4096x4096 + k,v 2 x 4096x(8 x 128) + o 4096x4096 = 41,943,040; x 32 layers
    # MLP per layer: gate, up, down 3 x 4096 x 14336 = 176,160,768; x 32 layers
    # norms: 2 per layer x 32 x 4096 + final 4096 = 266,240
    counts = shape("Llama-3.1-8B").parameters()
    assert counts == hf_config.ParameterCounts(
        embedding=525_336_576,
        lm_head=525_336_576,
        attention=41_943_040 * 32,
        mlp=176_160_768 * 32,
        norms=266_240,
    )
    assert counts.total == 8_030_261_248


def test_tied_embeddings_have_no_separate_lm_head():
    # SmolLM2-135M ties lm_head to the 49152 x 576 embedding
    counts = shape("SmolLM2-135M").parameters()
    assert counts.lm_head == 0
    assert counts.embedding == 49152 * 576


def test_gpt_oss_experts_by_hand():
    # per layer: 32 experts x (gate_up 2880x5760 + bias 5760 + down 2880x2880 + bias 2880)
    #            + router 2880x32 + bias 32
    per_layer = 32 * (2880 * 5760 + 5760 + 2880 * 2880 + 2880) + 2880 * 32 + 32
    assert shape("gpt-oss-20b").parameters().mlp == 24 * per_layer == 19_119_145_728


def test_qwen2_has_qkv_biases_only():
    # q 3584x3584 + k,v 2 x 3584x512 + o 3584x3584, biases on q (3584) and k, v (512 each)
    qwen = shape("Qwen2.5-7B")
    assert qwen.parameters().attention == 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3584 + 2 * 512)


def test_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"]}))
    with pytest.raises(hf_config.ModelConfigError) as caught:
        hf_config.load(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'config.json'}: architecture T5ForConditionalGeneration is not supported; "
        "supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GptOssForCausalLM"
    )


def test_missing_config_says_what_model_must_be(tmp_path):
    with pytest.raises(hf_config.ModelConfigError) as caught:
        hf_config.load(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'config.json'}: not found; --model must be a Hugging Face model directory"
    )


# ---- weight bytes -----------------------------------------------------------------------------

# Llama-3.1-8B: linear (attention + MLP) = 6,979,321,856; lm_head = 525,336,576;
# embedding + norms = 525,602,816, always 16-bit: 1,051,205,632 bytes; lm_head at 16-bit: 1,050,673,152.
SIXTEEN_BIT_REST = 1_051_205_632 + 1_050_673_152


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("fp32", 8_030_261_248 * 4),
        ("bf16", 8_030_261_248 * 2),
        ("fp8", 6_979_321_856 * 1 + SIXTEEN_BIT_REST),  # 9,081,200,640
        ("int8_wo", 6_979_321_856 * 1 + SIXTEEN_BIT_REST),
        ("int4_awq", 6_979_321_856 * 33 // 64 + SIXTEEN_BIT_REST),  # 4 bits + fp16 scale per 128
        ("nvfp4", 6_979_321_856 * 9 // 16 + SIXTEEN_BIT_REST),  # 4 bits + fp8 scale per 16
    ],
)
def test_llama_8b_weight_bytes_per_precision(precision, expected):
    total, per_gpu = memory.weight_bytes(shape("Llama-3.1-8B"), precision)
    assert total == per_gpu == expected


# ---- plans ------------------------------------------------------------------------------------

# Memory per GPU as the driver reports it: memory_gib x 2**30, rounded down to whole bytes.
#   l4    22.49 GiB = 22 x 1,073,741,824 + 0.49 x 1,073,741,824 = 23,622,320,128 + 526,133,493.76
#         -> 24,148,453,621
#   h100  79.65 GiB = 84,825,604,096 + 697,932,185.6 -> 85,523,536,281
#   h200 140.40 GiB = 150,323,855,360 + 429,496,729.6 -> 150,753,352,089
#   b200 179.06 GiB = 192,199,786,496 + 64,424,509.44 -> 192,264,211,005
# headroom = max(2 GiB, 10% of that, rounded down): l4 2,414,845,362 (2.25 GiB), h100 8,552,353,628
# (7.96 GiB), h200 15,075,335,208 (14.04 GiB), b200 19,226,421,100 (17.91 GiB)


def test_budgets_use_the_memory_the_driver_reports():
    # nvidia-smi memory.total: L4 23,034 MiB, H100 81,559 MiB; / 1024 = 22.494, 79.647 -> 22.49, 79.65
    assert plan("Llama-3.1-8B", "l4").memory_gib == 22.49
    assert plan("Llama-3.1-8B", "h100").memory_gib == 79.65


def test_llama_8b_on_h100_by_hand():
    p = plan("Llama-3.1-8B", "h100")
    # default precision on H100 is fp8 -> weights 9,081,200,640 B (above), KV in fp8
    # headroom = max(2 GiB, 10% of 85,523,536,281) = 8,552,353,628
    # KV budget = 85,523,536,281 - 9,081,200,640 - 8,552,353,628 = 67,889,982,013
    # KV/token = 32 layers x 8 KV heads x 128 x 2 x 1 byte = 65,536
    # tokens = 67,889,982,013 // 65,536 = 1,035,918 -> whole 32-token blocks: 1,035,904
    # max_seq_len = min(8192, 131072); 1,035,904 // 8192 = 126 full sequences
    # max_batch_size = 1,035,904 // 1024 mean-length sequences = 1011, no rounding; the latency bound
    #   (100 ms x 3.35e12 x 0.6 = 201e9 B per step, less 9,081,200,640 of weights, / (1024 x 65,536))
    #   allows 2,860; max_num_tokens = 1011 decode tokens + one 8192-token prefill chunk = 9203
    assert (p.precision, p.kv_cache_dtype, p.tp, p.pp) == ("fp8", "fp8", 1, 1)
    assert p.kv_bytes_per_token == 65_536
    assert p.kv_tokens == 1_035_904
    assert p.max_len_sequences == 126
    assert p.limits() == {
        "max_batch_size": 1011,
        "max_input_len": 4096,
        "max_output_len": 4096,
        "max_seq_len": 8192,
        "max_num_tokens": 9203,
    }
    assert p.weights_gib == pytest.approx(9_081_200_640 / GIB, abs=0.005)
    assert p.headroom_gib == pytest.approx(8_552_353_628 / GIB, abs=0.005)
    assert p.kv_budget_gib == pytest.approx(67_889_982_013 / GIB, abs=0.005)
    assert (p.machine_type, p.accelerator) == ("a3-highgpu-1g", "nvidia-h100-80gb")
    assert p.compute_capability == "9.0"


def test_llama_70b_on_l4_takes_eight_gpus_for_kv_by_hand():
    # fp8: linear 68,451,041,280 x 1 + lm_head 1,050,673,152 x 2 = 70,552,387,584, split over TP;
    #      embedding + norms (1,050,673,152 + 1,318,912) x 2 = 2,103,984,128 on every GPU
    # TP 2: 2,103,984,128 + 35,276,193,792 = 34.8 GiB > 22.49 GiB; TP 4: 2,103,984,128 + 17,638,096,896
    #       = 19,742,081,024 B per GPU
    # headroom = max(2 GiB, 2.25 GiB) = int(24,148,453,621 x 0.1) = 2,414,845,362
    # TP 4 fits: KV budget = 24,148,453,621 - 19,742,081,024 - 2,414,845,362 = 1,991,527,235, a KV
    #   share of 1,991,527,235 / 21,733,608,259 usable = 0.092 < 1/3: starved, so TP 8:
    # TP 8: weights 2,103,984,128 + 8,819,048,448 = 10,923,032,576; KV budget 10,810,575,683 (share 0.497)
    # KV/token per GPU = 80 layers x (8 / 8) KV heads x 128 x 2 x 1 = 20,480
    # tokens = 10,810,575,683 // 20,480 = 527,860 -> 527,840 (blocks of 32); 527,840 // 8192 = 64 sequences
    # max_batch_size: 527,840 // 1024 = 515 by KV; the latency bound: weights take 10,923,032,576 /
    #   (300e9 x 0.6) = 60.68 ms of the 100; each sequence adds 1024 x 20,480 B of KV / 180e9 = 116.5 us
    #   and its all-reduces (80 layers x 2 x 8192 x 2 B x 2 x 7/8 = 4,587,520 B over PCIe, 64e9 / 2 x 0.6
    #   = 19.2e9 B/s) 238.9 us; the all-reduces' fixed latency 80 x 2 x 20 us = 3.2 ms:
    #   (100 - 3.2 - 60.68) ms / 355.4 us = 101
    assert (p := plan("Llama-3.1-70B", "l4")).tp == 8
    assert (p.precision, p.machine_type) == ("fp8", "g2-standard-96")
    assert p.headroom_gib == pytest.approx(2_414_845_362 / GIB, abs=0.005)
    assert p.kv_bytes_per_token == 20_480
    assert p.kv_tokens == 527_840
    assert p.max_len_sequences == 64
    assert p.max_batch_size == 101
    assert p.kv_share == 0.497


def test_gpt_oss_20b_on_h100_llmapi_as_shipped_by_hand():
    p = plan("gpt-oss-20b", "h100", runtime="llmapi")
    # experts stay MXFP4 (4 bits + 8-bit scale per 32 = 17/32 byte): 19,119,145,728 x 17/32 = 10,157,046,168
    # attention 637,203,456 and lm_head 579,133,440 at bf16: 2,432,673,792
    # embedding + norms (579,133,440 + 141,120) x 2 = 1,158,549,120
    # total 13,748,269,080 B; KV budget = 85,523,536,281 - 13,748,269,080 - 8,552,353,628 = 63,222,913,573
    # KV/token = 24 layers x 8 x 64 x 2 x 2 bytes = 49,152 -> 1,286,273 -> 1,286,272 tokens
    assert (p.precision, p.kv_cache_dtype, p.tp) == ("mxfp4", "bf16", 1)
    assert p.weights_gib == pytest.approx(13_748_269_080 / GIB, abs=0.005)
    assert p.kv_tokens == 1_286_272
    assert p.max_batch_size == 1256  # 1,286,272 // 1024, no cap below TensorRT-LLM's default 2048


def test_smollm2_on_cpu_by_hand():
    p = plan("SmolLM2-135M", "cpu", runtime="cpu")
    # fp32, tp 1, batch 8; max_seq_len = min(2048, 8192); input half, output the rest; tokens 8 x 2048
    # weights 134,515,008 x 4 = 538,060,032 B against the 8 GiB pod, headroom 2 GiB
    # KV/token = 30 x 3 x 64 x 2 x 4 = 46,080; (8,589,934,592 - 538,060,032 - 2,147,483,648) // 46,080
    #   = 128,133 -> 128,128 tokens
    assert (p.precision, p.tp, p.runtime, p.machine_type) == ("fp32", 1, "cpu", "n2-standard-8")
    assert p.limits() == {
        "max_batch_size": 8,
        "max_input_len": 1024,
        "max_output_len": 1024,
        "max_seq_len": 2048,
        "max_num_tokens": 16384,
    }
    assert p.kv_tokens == 128_128


def test_asked_max_seq_len_raises_tp_until_one_sequence_fits():
    p = plan("Llama-3.1-8B", "l4", precision="bf16", max_seq_len=131072)
    # bf16 at TP 1: 24,148,453,621 - 16,060,522,496 weights - 2,414,845,362 headroom = 5,673,085,763
    #   (5.28 GiB) // 131,072 per token = 43,282 -> 43,264 tokens: < 131072
    # TP 2: weights 1,051,205,632 + (13,958,643,712 + 1,050,673,152) / 2 = 8,555,864,064 per GPU;
    #   24,148,453,621 - 8,555,864,064 - 2,414,845,362 = 13,177,744,195 // 65,536 per token
    #   (32 x 4 x 128 x 2 x 2) = 201,076 -> 201,056 tokens: one 131072-token sequence
    assert (p.tp, p.max_seq_len, p.max_input_len, p.max_output_len) == (2, 131072, 65536, 65536)
    assert p.kv_tokens == 201_056
    assert p.max_len_sequences == 1


def test_the_prompt_may_take_more_than_half_the_sequence_when_asked():
    p = plan("Llama-3.1-8B", "h100", max_seq_len=16384, max_input_len=14336)
    assert (p.max_seq_len, p.max_input_len, p.max_output_len) == (16384, 14336, 2048)
    for wrong in (0, 16384):
        with pytest.raises(planner.PlanError, match=f"--max-input-len {wrong} must be at least 1 and below"):
            plan("Llama-3.1-8B", "h100", max_seq_len=16384, max_input_len=wrong)


def test_tp_larger_than_kv_heads_replicates_them():
    qwen = dataclasses.replace(shape("Qwen2.5-7B"), num_kv_heads=2)
    p = planner.plan(qwen, catalog.gpu("h100"), runtime="engine", tp=4, precision="bf16")
    # 4 GPUs over 2 KV heads: each GPU keeps one head -> 28 layers x 1 x 128 x 2 x 2 bytes
    assert p.kv_bytes_per_token == 28 * 1 * 128 * 2 * 2


@pytest.mark.parametrize(
    ("model", "gpu", "tps"),
    [
        ("Qwen2.5-7B", "l4", (1, 2, 4)),  # 28 heads: 8 does not divide them
        ("SmolLM2-135M", "h100", (1,)),  # 9 heads, 3 KV heads
        ("Llama-3.1-70B", "h200", (1, 2, 4, 8)),  # H200 nodes have 8 GPUs; a pod may take fewer
        ("Llama-3.1-70B", "cpu", (1,)),
    ],
)
def test_valid_tensor_parallel_sizes(model, gpu, tps):
    assert planner.valid_tps(shape(model), catalog.gpu(gpu)) == tps


def test_llmapi_serves_an_unquantized_checkpoint_at_bf16():
    # H100 has fp8, but the llmapi runtime serves an unquantized checkpoint as it is: bf16 and fp16 are
    # the candidates, equally fast (same bytes), and the tie goes to bf16, first in PRECISIONS
    p = plan("Llama-3.1-8B", "h100", runtime="llmapi")
    assert p.precision == "bf16"
    assert p.precision_reason.startswith("fastest accuracy-preserving: bf16 ")


def test_to_dict_has_every_number_for_json():
    d = plan("Mistral-7B-v0.3", "a100-40gb").to_dict()
    assert d["precision"] == "bf16" and d["gpu"] == "a100-40gb" and d["tp"] == 1
    assert json.loads(json.dumps(d)) == d
    assert {"kv_tokens", "kv_budget_gib", "max_len_sequences", "weights_per_gpu_gib"} <= set(d)


def test_format_table_shows_the_plan():
    table = planner.format_table(plan("Llama-3.1-8B", "h100"))
    assert "Llama-3.1-8B on h100 (engine)" in table
    rows = {cells[1].strip(): cells[2].strip() for line in table.splitlines()
            if len(cells := line.split("│")) == 4}
    assert rows["max_batch_size"] == "1011"
    assert rows["memory per GPU"] == "79.65 GiB"
    assert rows["KV tokens"] == "1,035,904"
    assert rows["why this TP"] == "smallest with KV share >= 1/3: 0.88"
    assert rows["why this precision"].startswith("fastest accuracy-preserving:")


# ---- refusals ---------------------------------------------------------------------------------


def test_70b_bf16_on_one_h100_names_what_fits():
    # weights 141,107,412,992 B = 131.4 GiB; headroom 8,552,353,628 B = 7.96 GiB; one 8192-token
    # sequence in bf16: 80 x 8 x 128 x 2 x 2 x 8192 = 2,684,354,560 B = 2.5 GiB; sum 152,344,121,180 B.
    # --tp 2: 71,605,698,560 B of weights per GPU leaves 5,365,484,093 // 163,840 = 32,736 tokens;
    # --precision fp8: 72,656,371,712 B leaves 4,314,810,941 // 163,840 = 26,304 tokens.
    # Bigger GPUs at TP 1: h200 (140.40 GiB) lacks room (131.4 + 14.0 headroom > 140.4), b200
    # (179.06 GiB) has it; a100-80gb (80.00 > 79.65 GiB) needs TP 2, so b200 is the one named.
    assert refusal("Llama-3.1-70B", "h100", precision="bf16", tp=1) == (
        "h100 has 79.65 GiB per GPU; Llama-3.1-70B at bf16 with --tp 1 needs 131.4 GiB of weights, "
        "8.0 GiB runtime headroom and 2.5 GiB of KV cache for one 8192-token sequence (141.9 GiB). "
        "Pass --tp 2, or --precision fp8, or --gpu b200."
    )


def test_70b_on_cpu_points_to_a_gpu():
    assert refusal("Llama-3.1-70B", "cpu", runtime="cpu") == (
        "cpu has 8 GiB of pod memory; Llama-3.1-70B at fp32 with --tp 1 needs 262.8 GiB of weights, "
        "2.0 GiB runtime headroom and 1.2 GiB of KV cache for one 2048-token sequence (266.1 GiB). "
        "Pass --gpu h100."
    )


def test_a_long_context_that_does_not_fit_suggests_a_shorter_one():
    message = refusal("Llama-3.1-8B", "l4", precision="bf16", tp=1, max_seq_len=131072)
    # TP 1 leaves 5.28 GiB = 43,264 bf16 tokens (above): the largest power of two under that is 32768.
    # needs 16,060,522,496 B weights (15.0 GiB) + 2,414,845,362 headroom (2.2 GiB) + 131,072 x 131,072
    #   = 17,179,869,184 B of KV (16.0 GiB) = 35,655,237,042 B (33.2 GiB)
    # fp8 at TP 1: 24,148,453,621 - 9,081,200,640 - 2,414,845,362 = 12,652,407,619 // 65,536 = 193,056
    #   tokens; a100-40gb at bf16: (42,949,672,960 - 16,060,522,496 - 4,294,967,296) // 131,072 -> 172,352
    assert message == (
        "l4 has 22.49 GiB per GPU; Llama-3.1-8B at bf16 with --tp 1 needs 15.0 GiB of weights, "
        "2.2 GiB runtime headroom and 16.0 GiB of KV cache for one 131072-token sequence (33.2 GiB). "
        "Pass --tp 2, or --precision fp8, or --max-seq-len 32768, or --gpu a100-40gb."
    )


def test_nothing_fits_anywhere():
    # 5000 Llama-70B layers: 4.3T parameters, over 290 GiB per B200 even at nvfp4 on 8 GPUs
    giant = dataclasses.replace(shape("Llama-3.1-70B"), name="giant", num_layers=5000)
    assert refusal(giant, "b200").endswith(
        "No catalog target fits it; pass a smaller --max-seq-len or a smaller model."
    )


def test_fp8_on_a100_names_the_gpus_that_have_it():
    assert refusal("Llama-3.1-8B", "a100-80gb", precision="fp8") == (
        "a100-80gb (compute capability 8.0) has no fp8; GPUs with fp8: l4, h100, h200, b200. "
        "a100-80gb supports: bf16, fp16, int8_wo, int4_awq"
    )


def test_nvfp4_needs_blackwell():
    assert refusal("Llama-3.1-8B", "h100", precision="nvfp4") == (
        "h100 (compute capability 9.0) has no nvfp4; GPUs with nvfp4: b200. "
        "h100 supports: bf16, fp16, fp8, int8_wo, int4_awq"
    )


def test_unknown_precision():
    assert refusal("Llama-3.1-8B", "h100", precision="int3") == (
        "unknown precision 'int3'; known: fp32, bf16, fp16, fp8, int8_wo, nvfp4, int4_awq, mxfp4"
    )


def test_llmapi_does_not_quantize():
    assert refusal("Llama-3.1-8B", "h100", runtime="llmapi", precision="fp8") == (
        "the llmapi runtime serves the checkpoint's own weights and does not quantize; Llama-3.1-8B is "
        "unquantized, so it runs at bf16 or fp16 (use --runtime engine for fp8)"
    )


def test_gpt_oss_has_no_engine_recipe():
    assert refusal("gpt-oss-20b", "h100") == (
        "gpt-oss-20b (GptOssForCausalLM) has no TensorRT engine recipe in TensorRT-LLM 1.2.1; "
        "only the PyTorch backend serves it. Pass --runtime llmapi"
    )
    # on a GPU where llmapi would refuse it as well, the way forward names the GPUs that serve it
    assert refusal("gpt-oss-20b", "l4") == (
        "gpt-oss-20b (GptOssForCausalLM) has no TensorRT engine recipe in TensorRT-LLM 1.2.1; "
        "only the PyTorch backend serves it. Pass --runtime llmapi with --gpu h100 or h200 or b200 "
        "(l4 has no mxfp4 kernels, which its weights need)"
    )


def test_gpt_oss_mxfp4_needs_hopper_or_blackwell():
    assert refusal("gpt-oss-20b", "l4", runtime="llmapi") == (
        "l4 (compute capability 8.9) has no mxfp4 kernels; GPUs that serve mxfp4: h100, h200, b200"
    )


def test_gpt_oss_is_served_as_shipped():
    assert refusal("gpt-oss-20b", "h100", runtime="llmapi", precision="fp8") == (
        "gpt-oss-20b ships pre-quantized as mxfp4 and is served as shipped; drop --precision fp8"
    )


def test_tp_that_does_not_split_the_heads():
    assert refusal("Qwen2.5-7B", "l4", tp=8) == (
        "--tp 8 does not work for Qwen2.5-7B on l4: 28 attention heads do not split over 8 GPUs; "
        "valid: --tp 1, --tp 2, --tp 4"
    )


def test_tp_that_is_not_a_power_of_two():
    assert refusal("Llama-3.1-8B", "h100", tp=3) == (
        "--tp 3 does not work for Llama-3.1-8B on h100: TP must be one of 1, 2, 4, 8; "
        "valid: --tp 1, --tp 2, --tp 4, --tp 8"
    )


def test_max_seq_len_beyond_the_model():
    assert refusal("Mistral-7B-v0.3", "h100", max_seq_len=65536) == (
        "--max-seq-len 65536 exceeds Mistral-7B-v0.3's max_position_embeddings (32768); "
        "pass --max-seq-len 32768 or less"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "engine"}, "cpu runs the cpu runtime; --runtime engine is not one of them"),
        ({"runtime": "cpu", "tp": 2}, "the cpu target runs in one process; drop --tp 2"),
        ({"runtime": "cpu", "precision": "bf16"}, "the cpu target runs fp32 only; drop --precision bf16"),
    ],
)
def test_cpu_target_refusals(kwargs, message):
    assert refusal("SmolLM2-135M", "cpu", **kwargs) == message


def test_gpu_target_refuses_the_cpu_runtime():
    assert refusal("SmolLM2-135M", "h100", runtime="cpu") == (
        "h100 runs the engine or llmapi runtime; --runtime cpu is not one of them"
    )


def test_a_model_name_can_be_given_where_the_folder_name_is_not_it():
    assert hf_config.load(MODELS / "SmolLM2-135M", name="SmolLM2-135M-Instruct").name == "SmolLM2-135M-Instruct"


# ---- the serving objective against NVIDIA's published choices ---------------------------------

# (model, GPU, precision) -> the TP NVIDIA ran. Source: NVIDIA/TensorRT-LLM
# docs/source/performance/perf-overview.md at 00f37686aa854010d68bcbd0f4ab000221541ca6 (v1.0 table:
# 8B FP8 TP1 on H100 and H200; 70B FP8 TP2 on H100, TP1 on H200; 405B FP8 TP8 on both; B200 70B FP4
# TP1, 405B FP4 TP4). B200 at FP8 and the L4/A100 rows are worked out by hand from the KV shares
# (KV budget / (memory - headroom)) per TP printed beside them; the rule takes the first >= 1/3.
REFERENCE_TP = [
    ("Llama-3.1-8B", "h100", "fp8", 1),  # 0.88
    ("Llama-3.1-8B", "h200", "fp8", 1),  # 0.93
    ("Llama-3.1-70B", "h100", "fp8", 2),  # TP1 0.06 (25 sequences of 1k), TP2 0.51
    ("Llama-3.1-70B", "h200", "fp8", 1),  # 0.46
    ("Llama-3.1-405B", "h100", "fp8", 8),  # only TP8 fits: 0.29, the largest that fits
    ("Llama-3.1-405B", "h200", "fp8", 8),  # TP4 0.22, TP8 0.60
    ("Llama-3.1-70B", "b200", "nvfp4", 1),  # 0.75
    ("Llama-3.1-405B", "b200", "nvfp4", 4),  # TP2 0.31, TP4 0.64
    ("Llama-3.1-70B", "b200", "fp8", 1),  # by hand: 0.58
    ("Llama-3.1-405B", "b200", "fp8", 4),  # by hand: TP2 does not fit, TP4 0.39
    ("Llama-3.1-8B", "l4", "fp8", 1),  # by hand: 0.58
    ("Llama-3.1-70B", "l4", "fp8", 8),  # by hand: TP4 0.09 (47 sequences), TP8 0.50
    ("Llama-3.1-8B", "a100-40gb", "bf16", 1),  # by hand: 0.59
    ("Llama-3.1-70B", "a100-80gb", "bf16", 4),  # by hand: TP2 0.07, TP4 0.52
    ("Llama-3.1-70B", "a100-40gb", "bf16", 8),  # by hand: TP4 0.05, TP8 0.50
]


@pytest.mark.parametrize(("model", "gpu", "precision", "tp"), REFERENCE_TP)
def test_tp_is_the_one_a_serving_engineer_chooses(model, gpu, precision, tp):
    assert plan(model, gpu, precision=precision).tp == tp


# ---- choosing precision: the same objective, accuracy-preserving first -------------------------


def test_fp8_is_chosen_on_h100_because_it_is_faster_than_bf16():
    # Each candidate planned with the TP rule (TP 1 for both), rated by the estimate at its planned batch:
    # fp8: 26,415 output tokens/s per GPU (tests/test_estimate.py, by hand)
    # bf16: weights 16,060,522,496 B; KV budget 85,523,536,281 - 16,060,522,496 - 8,552,353,628
    #   = 60,910,660,157 // 131,072 B per token (32 x 8 x 128 x 2 x 2) = 464,711 -> 464,704 tokens;
    #   batch 464,704 // 1024 = 453 (the latency bound allows 1,377); step = (14.96 GiB = 16,063,177,441 B
    #   + 453 x 1024 x 131,072 B) / (3.35e12 x 0.6) = 76,863,808,225 / 2.01e12 = 38.24 ms -> 11,846 tokens/s
    # fp16 reads the same bytes as bf16: 11,846. fp8 wins by 2.2x (half the weight and KV bytes).
    p = plan("Llama-3.1-8B", "h100")
    assert (p.precision, p.tp, p.keeps_accuracy) == ("fp8", 1, True)
    assert p.precision_reason == (
        "fastest accuracy-preserving: fp8 26,415 output tokens/s per GPU, bf16 11,846, fp16 11,846"
    )


def test_a100_gets_bf16_having_no_fp8():
    # SM80 has no fp8: bf16 and fp16 are the accuracy-preserving candidates, equally fast (4,059 tokens/s
    # per GPU, tests/test_compare.py by hand); a tie goes to the first in PRECISIONS, bf16 (a wider
    # exponent than fp16, so no overflow where the checkpoint was trained in bf16)
    p = plan("Llama-3.1-8B", "a100-40gb")
    assert (p.precision, p.kv_cache_dtype, p.keeps_accuracy) == ("bf16", "bf16", True)
    assert p.precision_reason == "fastest accuracy-preserving: bf16 4,059 output tokens/s per GPU, fp16 4,059"


@pytest.mark.parametrize(("model", "gpu", "precision", "tp"), [
    ("Llama-3.1-8B", "l4", "fp8", 1),
    ("Llama-3.1-70B", "l4", "fp8", 8),
    ("Llama-3.1-70B", "a100-80gb", "bf16", 4),
    ("Llama-3.1-70B", "h100", "fp8", 2),
    ("Llama-3.1-70B", "h200", "fp8", 1),
    # NVIDIA ran B200 at FP4 (REFERENCE_TP); FP4 is lossy, so the planner takes FP8 unless asked, at the
    # TP NVIDIA used
    ("Llama-3.1-70B", "b200", "fp8", 1),
    ("Llama-3.1-405B", "b200", "fp8", 4),
    ("Llama-3.1-405B", "h100", "fp8", 8),
])
def test_the_chosen_precision_is_the_fastest_accuracy_preserving(model, gpu, precision, tp):
    p = plan(model, gpu)
    assert (p.precision, p.tp, p.keeps_accuracy) == (precision, tp, True)
    assert p.precision_reason.startswith(f"fastest accuracy-preserving: {precision} ")


def test_where_only_a_lossy_precision_fits_the_plan_says_it_lowers_quality():
    # Llama-3.1-405B on 8 x a100-40gb: bf16 (and fp16) weights are 105,147,957,248 B = 97.9 GiB per GPU
    # at TP 8, int8_wo 54,942,138,368 B = 51.2 GiB: neither fits 40 GiB. int4_awq: 30,623,694,848 B;
    # KV budget 42,949,672,960 - 30,623,694,848 - 4,294,967,296 = 8,031,010,816 // 64,512 B per token
    # (126 x 1 x 128 x 2 x 2) -> 124,480 tokens: it fits, and is the only one
    p = plan("Llama-3.1-405B", "a100-40gb")
    assert (p.precision, p.tp, p.keeps_accuracy) == ("int4_awq", 8, False)
    assert p.precision_reason == (
        "lowers quality: no accuracy-preserving precision (bf16, fp16) fits; "
        "fastest lossy: int4_awq 181 output tokens/s per GPU"
    )


def test_lossy_candidates_that_tie_go_to_the_less_lossy():
    # Llama-3.1-405B on 8 x a100-80gb: bf16 97.9 GiB per GPU does not fit 80 GiB; int8_wo (51.2 GiB) and
    # int4_awq (28.5 GiB) do, at TP 8. Weight-only quantization computes at bf16, and both are
    # compute-bound: 2 x 405,853,388,800 / (312e12 x 0.5 x 8) = 0.6504 ms per sequence, all-reduce latency
    # 126 x 2 x 20 us = 5.04 ms, batch (100 - 5.04) // 0.6504 = 146 for both (KV holds 338 and 706);
    # step 5.04 + 146 x 0.6504 = 100.0 ms -> 1,460 tokens/s per replica, 183 per GPU each: int8_wo
    p = plan("Llama-3.1-405B", "a100-80gb")
    assert (p.precision, p.tp, p.max_batch_size, p.keeps_accuracy) == ("int8_wo", 8, 146, False)
    assert p.precision_reason == (
        "lowers quality: no accuracy-preserving precision (bf16, fp16) fits; "
        "fastest lossy: int8_wo 183 output tokens/s per GPU, int4_awq 183"
    )


@pytest.mark.parametrize(("model", "tp"), [("Llama-3.1-70B", 1), ("Llama-3.1-405B", 4)])
def test_an_explicit_precision_is_honoured_nvidias_b200_fp4_runs(model, tp):
    # NVIDIA's B200 runs (REFERENCE_TP): 70B FP4 TP1, 405B FP4 TP4; asked for, nvfp4 is planned as asked
    p = plan(model, "b200", precision="nvfp4")
    assert (p.precision, p.tp, p.kv_cache_dtype) == ("nvfp4", tp, "fp8")
    assert (p.precision_reason, p.keeps_accuracy) == ("--precision given", False)


def test_forced_precisions_say_why():
    assert plan("SmolLM2-135M", "cpu", runtime="cpu").precision_reason == "the cpu target runs fp32"
    p = plan("gpt-oss-20b", "h100", runtime="llmapi")
    # served as the checkpoint ships: its own accuracy, though mxfp4 is a lossy format
    assert (p.precision_reason, p.keeps_accuracy) == ("the checkpoint's own (mxfp4), served as shipped", True)


def test_where_nothing_fits_the_refusal_is_at_the_densest_accuracy_preserving_precision():
    # fp8 on L4 (the fewest bytes of bf16, fp16, fp8); no precision fits 405B on 8 L4s
    assert refusal("Llama-3.1-405B", "l4").startswith(
        "l4 has 22.49 GiB per GPU; Llama-3.1-405B at fp8 with --tp 8 needs 51.2 GiB of weights"
    )


def test_llama_405b_shape_is_the_published_one():
    # config.json: hidden 16384, 126 layers, 128 heads, 8 KV heads, intermediate 53248, vocab 128256
    assert shape("Llama-3.1-405B").parameters().total == pytest.approx(405.85e9, rel=0.005)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_batch_size": 0}, "--max-batch-size 0 must be at least 1"),
    ({"max_num_tokens": -1}, "--max-num-tokens -1 must be at least 1"),
])
def test_limits_given_must_be_positive(kwargs, message):
    assert refusal("Llama-3.1-8B", "h100", **kwargs) == message


def test_limits_given_are_kept():
    p = plan("Llama-3.1-8B", "h100", max_batch_size=64, max_num_tokens=4096)
    assert (p.max_batch_size, p.max_num_tokens) == (64, 4096)
