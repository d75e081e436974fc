"""A Hugging Face `config.json`, read into the shape numbers the planner needs.

Only decoder-only families that our build knows how to serve are accepted; anything else is refused
here, before a plan or a build can half-work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# architecture -> (TensorRT-LLM example folder that converts it, or None where no engine recipe exists)
# Mistral uses the Llama example (NVIDIA/TensorRT-LLM docs/source/reference/support-matrix.md); gpt-oss
# is only documented for the PyTorch backend, so it has no engine path.
ARCHITECTURES: dict[str, str | None] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen",
    "GptOssForCausalLM": None,
}


class ModelConfigError(ValueError):
    """A config.json that is missing, malformed, or describes a model we cannot plan."""


@dataclass(frozen=True)
class ParameterCounts:
    embedding: int
    lm_head: int  # 0 when tied to the embedding
    attention: int  # all layers, projections and their biases
    mlp: int  # all layers: dense MLP, or experts plus router
    norms: int

    @property
    def linear(self) -> int:
        """The transformer-block weights that quantization applies to."""
        return self.attention + self.mlp

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.attention + self.mlp + self.norms


@dataclass(frozen=True)
class ModelShape:
    name: str
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    num_experts: int  # 0 for a dense model
    experts_per_token: int
    quant_method: str | None  # set when the checkpoint ships already quantized: mxfp4 (gpt-oss), fp8, nvfp4

    @property
    def engine_family(self) -> str | None:
        return ARCHITECTURES[self.architecture]

    def parameters(self) -> ParameterCounts:
        h, layers, d = self.hidden_size, self.num_layers, self.head_dim
        q_out, kv_out = self.num_heads * d, self.num_kv_heads * d
        attention = h * q_out + 2 * h * kv_out + q_out * h
        if self.qkv_bias:
            attention += q_out + 2 * kv_out
        if self.o_bias:
            attention += h
        if self.model_type == "gpt_oss":
            attention += self.num_heads  # one learned attention sink per head
        if self.num_experts:
            # gpt-oss experts: fused gate_up [h, 2i] and down [i, h], each with a bias; router [h, E] + bias
            i = self.intermediate_size
            per_expert = h * 2 * i + 2 * i + i * h + h
            mlp = self.num_experts * per_expert + h * self.num_experts + self.num_experts
        else:
            mlp = 3 * h * self.intermediate_size  # gate, up, down
        embedding = self.vocab_size * h
        return ParameterCounts(
            embedding=embedding,
            lm_head=0 if self.tie_word_embeddings else embedding,
            attention=layers * attention,
            mlp=layers * mlp,
            norms=layers * 2 * h + h,  # two RMSNorms per layer and the final one
        )


# ModelOpt's quant_algo -> the planner's precision. NVIDIA's `nvidia/*-FP8` / `*-FP4` checkpoints say it
# in hf_quant_config.json ({"quantization": {"quant_algo": "FP8"}}) and, in newer exports, in
# config.json's quantization_config ({"quant_method": "modelopt", "quant_algo": "NVFP4"}).
MODELOPT_ALGOS = {"FP8": "fp8", "NVFP4": "nvfp4"}


def _quantization(raw: dict, hf_quant: dict | None, source: str) -> str | None:
    quant = raw.get("quantization_config") or {}
    if hf_quant is not None:
        quant = {"quant_method": "modelopt", **hf_quant.get("quantization", {})}
    method = quant.get("quant_method")
    if method != "modelopt":
        return method
    algo = quant.get("quant_algo")
    if algo not in MODELOPT_ALGOS:
        raise ModelConfigError(f"{source}: ModelOpt quant_algo {algo!r} is not one the planner knows; "
                               f"known: {', '.join(MODELOPT_ALGOS)}")
    return MODELOPT_ALGOS[algo]


def _require(raw: dict, key: str, source: str) -> int:
    if key not in raw:
        raise ModelConfigError(f"{source}: no {key!r}; is this a Hugging Face causal-LM config.json?")
    return raw[key]


def parse(raw: dict, *, name: str, source: str = "config.json", hf_quant: dict | None = None) -> ModelShape:
    architectures = raw.get("architectures") or []
    known = [a for a in architectures if a in ARCHITECTURES]
    if not known:
        raise ModelConfigError(
            f"{source}: architecture {', '.join(architectures) or '(none)'} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    hidden = _require(raw, "hidden_size", source)
    heads = _require(raw, "num_attention_heads", source)
    model_type = raw.get("model_type", "")
    return ModelShape(
        name=name,
        architecture=known[0],
        model_type=model_type,
        hidden_size=hidden,
        num_layers=_require(raw, "num_hidden_layers", source),
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or hidden // heads,
        intermediate_size=_require(raw, "intermediate_size", source),
        vocab_size=_require(raw, "vocab_size", source),
        max_position_embeddings=_require(raw, "max_position_embeddings", source),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases and no o_proj bias; Llama-style `attention_bias` covers all four.
        qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        o_bias=bool(raw.get("attention_bias", False)),
        num_experts=raw.get("num_local_experts", 0),
        experts_per_token=raw.get("num_experts_per_tok", 0),
        quant_method=_quantization(raw, hf_quant, source),
    )


def load(model_dir: Path | str, *, name: str | None = None) -> ModelShape:
    """Read `<model_dir>/config.json`; the model's name defaults to the directory's name."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelConfigError(f"{path}: not found; --model must be a Hugging Face model directory")
    raw = _json(path)
    quant_path = Path(model_dir) / "hf_quant_config.json"
    hf_quant = _json(quant_path) if quant_path.is_file() else None
    return parse(raw, name=name or Path(model_dir).resolve().name, source=str(path), hf_quant=hf_quant)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelConfigError(f"{path}: not valid JSON ({error})") from None
