"""Prompts -> token ids: chat messages through the model's own chat template, completions as given."""

from __future__ import annotations

from gateway.errors import ApiError
from gateway.repository import Model
from gateway.tool_calls import ToolFormat, Tools, described


def chat_ids(model: Model, messages: list[dict], tools: Tools | None = None,
             tool_format: ToolFormat | None = None) -> list[int]:
    """The turns as the model's template writes them, ending with the assistant's cue; the tools offered
    through the template's own `tools` where it renders them, else described in a system message."""
    if not model.tokenizer.chat_template:
        raise ApiError(f"model {model.name} has no chat template; use /v1/completions", "messages",
                       code="no_chat_template")
    template_tools = None
    if tools and tool_format and tool_format.described:
        messages = described(tools, messages, tool_format)
    elif tools:
        template_tools = tools.template()
    try:
        encoded = model.tokenizer.apply_chat_template(messages, tools=template_tools, add_generation_prompt=True,
                                                      tokenize=True, return_dict=True)
    except Exception as error:  # noqa: BLE001 - a template may raise anything (e.g. jinja's raise_exception)
        raise ApiError(f"the model's chat template refused these messages: {error}", "messages",
                       code="invalid_value") from None
    return list(encoded["input_ids"])


def completion_ids(model: Model, prompt: str | list[int]) -> list[int]:
    """Token ids are the prompt as given; text gets the tokenizer's own special tokens (a BOS where it has
    one), as transformers' generate would see them."""
    if isinstance(prompt, list):
        return prompt
    return list(model.tokenizer.encode(prompt, add_special_tokens=True))


def check_length(model: Model, ids: list[int], param: str, tools: int = 0) -> None:
    """`tools`: how many tools the prompt describes, named in the refusal (they can be most of it)."""
    if not ids:
        raise ApiError(f"{param} is empty; send the prompt text", param, code="invalid_value")
    if len(ids) > model.max_input_len:
        what = f"{param} with the {tools} tools offered" if tools else param
        raise ApiError(f"This model's maximum prompt length is {model.max_input_len} tokens (max_input_len). "
                       f"However, your {what} resulted in {len(ids)} tokens. Please reduce its length.", param,
                       code="context_length_exceeded")


def check_characters(model: Model, texts: list[str], param: str) -> None:
    """Refuse a prompt that must come to more than max_input_len tokens before the tokenizer spends any time
    on it: no token stands for more than max_token_chars characters, and templating only adds tokens."""
    characters = sum(len(text) for text in texts)
    bound = model.max_input_len * model.max_token_chars
    if characters > bound:
        raise ApiError(f"This model's maximum prompt length is {model.max_input_len} tokens (max_input_len). "
                       f"However, your {param} has {characters} characters, more than that many tokens can hold "
                       f"({bound}). Please reduce its length.", param, code="context_length_exceeded")
