"""Chat templates: the tokenizer's own by default; named ones for base models without one (or to
override it); and templates users write as slots in config.

Every template is jinja, installed as the tokenizer's `chat_template`, so training (tokenize) and
inference (`apply_chat_template(..., add_generation_prompt=True)`) render identically.
"""

from __future__ import annotations

from typing import Any

from stages.base import UserError

# slots: `{content}` is the message text; `default_system` is used when a chat has no system turn
SLOTS = ("system", "user", "assistant", "tool", "generation", "prefix", "default_system")
# `custom_template` may also list `stop_words`: where generation stops besides eos

# Tool schemas (a `tools` column) reach the prompt where each model family was trained to see
# them: by default in the system prompt, in the form Qwen2.5 and Hermes-style function-calling
# models know; Llama 3.1+ in the first user message; Mistral in an [AVAILABLE_TOOLS] block before
# a user turn (Mistral's own template: the last one; here the first, so that every prefix of a
# conversation renders as the start of the whole, which the label masks are computed from).
TOOL_STYLES = ("system", "first_user", "before_first_user")
TOOL_STYLE = {"llama3": "first_user", "mistral": "before_first_user"}
LLAMA3_TOOLS_HEAD = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\nRespond in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}. '
    "Do not use variables.\n\n"
)
# a function_call turn (its content: the call's JSON) as each style's models write one
TOOL_CALLS = {
    "system": "{% if m.tool_call %}{% set c = '<tool_call>\\n' + c + '\\n</tool_call>' %}{% endif %}",
    "first_user": "",  # Llama 3.1 answers with the call's JSON itself
    "before_first_user": "{% if m.tool_call %}{% set c = '[TOOL_CALLS] ' + "
    "(c if c.startswith('[') else '[' + c + ']') %}{% endif %}",
}
TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags."
)


def from_slots(s: dict[str, str], tools: str = "system") -> str:
    """A jinja chat template from slot strings (system / user / assistant / tool / generation /
    prefix / default_system). A system slot left empty folds the system text into the first
    user turn, as llama2 and gemma do. `tools` is where tool schemas go (TOOL_STYLES)."""
    unknown = set(s) - set(SLOTS)
    if unknown:
        raise UserError(f"template: unknown slots {sorted(unknown)} (slots: {', '.join(SLOTS)})")
    if tools not in TOOL_STYLES:
        raise UserError(f"template: tool style '{tools}' is not one of {', '.join(TOOL_STYLES)}")

    def slot(name: str, var: str) -> str:
        text = s.get(name, "{content}")
        head, _, tail = text.partition("{content}")
        return "{{ " + repr(head) + " + " + var + " + " + repr(tail) + " }}"

    system = s.get("system", "")
    default = s.get("default_system", "")
    lines = [
        "{{ " + repr(s.get("prefix", "")) + " }}",
        "{% set sys = messages[0]['content'] if messages and messages[0]['role'] == 'system' "
        f"else {default!r} %}}",
        "{% set msgs = messages[1:] if messages and messages[0]['role'] == 'system' else messages %}",
        *_tool_lines(tools),
    ]
    if system:
        lines.append("{% if sys %}" + slot("system", "sys") + "{% endif %}")
    lines += [
        "{% for m in msgs %}",
        "{% set c = (sys + '\\n\\n' + m['content']) if (loop.first and sys and "
        f"{not system!r} and m['role'] == 'user') else m['content'] %}}",
        "{% if tools and loop.index0 == ns.first %}{% set c = tools_user + c %}"
        "{{ tools_before }}{% endif %}",
        "{% if m['role'] == 'user' %}" + slot("user", "c"),
        "{% elif m['role'] == 'assistant' %}" + TOOL_CALLS[tools] + slot("assistant", "c"),
        "{% else %}" + slot("tool", "c") + "{% endif %}",
        "{% endfor %}",
        "{% if add_generation_prompt %}{{ " + repr(s.get("generation", "")) + " }}{% endif %}",
    ]
    return "".join(lines)


def _tool_lines(style: str) -> list[str]:
    """Jinja that places `tools` for `style`: into `sys`, or as `tools_user` (prepended to the
    first user turn) or `tools_before` (emitted before the first user turn)."""
    each = "(tools | map('tojson') | join('\\n'))"
    lines = [
        "{% set tools_user, tools_before = '', '' %}",
        "{% set ns = namespace(first=-1) %}",
        "{% for m in msgs %}{% if m['role'] == 'user' and ns.first < 0 %}"
        "{% set ns.first = loop.index0 %}{% endif %}{% endfor %}",
    ]
    if style == "system":
        lines.append(
            "{% if tools %}{% set sys = (sys + '\\n\\n' if sys else '') + "
            f"{TOOLS_HEAD!r} + {each} + {TOOLS_TAIL!r} %}}{{% endif %}}"
        )
    elif style == "first_user":
        lines.append(
            "{% if tools %}{% set tools_user = "
            f"{LLAMA3_TOOLS_HEAD!r} + (tools | map('tojson') | join('\\n\\n')) + '\\n\\n' %}}"
            "{% endif %}"
        )
    else:
        wrapped = "{'type': 'function', 'function': t}"
        lines.append(
            "{% if tools %}{% set ns2 = namespace(items=[]) %}{% for t in tools %}"
            f"{{% set ns2.items = ns2.items + [({wrapped} if 'name' in t else t) | tojson] %}}"
            "{% endfor %}{% set tools_before = '[AVAILABLE_TOOLS] [' + "
            "(ns2.items | join(', ')) + '][/AVAILABLE_TOOLS]' %}{% endif %}"
        )
    return lines


NAMED: dict[str, dict[str, str]] = {
    "chatml": {
        "system": "<|im_start|>system\n{content}<|im_end|>\n",
        "user": "<|im_start|>user\n{content}<|im_end|>\n",
        "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
        "tool": "<|im_start|>tool\n{content}<|im_end|>\n",
        "generation": "<|im_start|>assistant\n",
    },
    "llama3": {
        "prefix": "<|begin_of_text|>",
        "system": "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        "user": "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        "tool": "<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
        "generation": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    },
    "llama2": {
        "user": "<s>[INST] {content} [/INST]",
        "assistant": " {content} </s>",
        "tool": "<s>[INST] {content} [/INST]",
    },
    "mistral": {
        "prefix": "<s>",
        "user": "[INST] {content}[/INST]",
        "assistant": "{content}</s>",
        "tool": "[TOOL_RESULTS] {content}[/TOOL_RESULTS]",
    },
    "gemma": {
        "prefix": "<bos>",
        "user": "<start_of_turn>user\n{content}<end_of_turn>\n",
        "assistant": "<start_of_turn>model\n{content}<end_of_turn>\n",
        "tool": "<start_of_turn>user\n{content}<end_of_turn>\n",
        "generation": "<start_of_turn>model\n",
    },
    "phi": {
        "system": "<|system|>\n{content}<|end|>\n",
        "user": "<|user|>\n{content}<|end|>\n",
        "assistant": "<|assistant|>\n{content}<|end|>\n",
        "tool": "<|user|>\n{content}<|end|>\n",
        "generation": "<|assistant|>\n",
    },
    "alpaca": {
        "system": "{content}\n\n",
        "user": "### Instruction:\n{content}\n\n",
        "assistant": "### Response:\n{content}</s>\n\n",
        "generation": "### Response:\n",
        "default_system": "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.",
    },
    "vicuna": {
        "system": "{content} ",
        "user": "USER: {content} ",
        "assistant": "ASSISTANT: {content}</s>",
        "generation": "ASSISTANT:",
        "default_system": "A chat between a curious user and an artificial intelligence "
        "assistant. The assistant gives helpful, detailed, and polite answers to the user's "
        "questions.",
    },
    "default": {
        "system": "System: {content}\n",
        "user": "Human: {content}\n",
        "assistant": "Assistant: {content}\n",
        "generation": "Assistant:",
    },
    "empty": {"system": "{content}", "user": "{content}", "assistant": "{content}"},
}
NAMED["qwen"] = {**NAMED["chatml"], "default_system": "You are a helpful assistant."}


STOP_WORDS: dict[str, list[str]] = {
    "chatml": ["<|im_end|>"],
    "qwen": ["<|im_end|>"],
    "llama3": ["<|eot_id|>"],
    "llama2": ["</s>"],
    "mistral": ["</s>"],
    "gemma": ["<end_of_turn>"],
    "phi": ["<|end|>"],
    "alpaca": ["</s>"],
    "vicuna": ["</s>"],
}


def apply_template(
    tokenizer: Any, name: str | None, custom: dict[str, Any] | None
) -> dict[str, Any]:
    """Install the chosen template on `tokenizer`; returns {chat_template, stop_words}, saved with
    the data and the trained model so that generation renders and stops as training did."""
    stop: list[str] = []
    if custom:
        slots = {k: v for k, v in custom.items() if k != "stop_words"}
        tokenizer.chat_template = from_slots(slots)
        stop = list(custom.get("stop_words") or [])
    elif name:
        if name not in NAMED:
            raise UserError(
                f"template: unknown template '{name}' (one of: {', '.join(sorted(NAMED))})"
            )
        tokenizer.chat_template = from_slots(NAMED[name], TOOL_STYLE.get(name, "system"))
        stop = STOP_WORDS.get(name, [])
    if not tokenizer.chat_template:
        raise UserError(
            "the tokenizer has no chat template: choose one with `template` "
            f"({', '.join(sorted(NAMED))}) or write `custom_template` slots"
        )
    eos = [tokenizer.eos_token] if tokenizer.eos_token else []
    return {"chat_template": tokenizer.chat_template, "stop_words": list(dict.fromkeys(eos + stop))}


def stop_token_ids(tokenizer: Any, stop_words: list[str]) -> list[int]:
    """Ids of the stop words that are single tokens (what `generate` can stop on)."""
    ids = []
    for word in stop_words:
        found = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(found) == 1:
            ids.append(found[0])
    return list(dict.fromkeys(ids))
