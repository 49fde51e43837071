"""An Ollama `Modelfile` beside a GGUF export: the file, the chat template translated from Jinja
into Ollama's Go template, the default system prompt, and a stop line per stop token.

The Jinja template is not parsed: it is rendered on probe conversations, and each role's text
before and after a message's content is read off the renders. A template made of such blocks
(ChatML, Llama 3, Zephyr, ...) becomes a Go template of the same blocks, checked by rendering
both on a longer conversation; any other is left out with a comment saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_S, _U, _A, _U2, _A2 = "\x01SYS\x01", "\x01USR\x01", "\x01AST\x01", "\x01USR2\x01", "\x01AST2\x01"


@dataclass
class Blocks:
    """Each role's text around a message; `generation` opens the reply; `head` starts every
    conversation; `system` is the default system prompt the template adds when none is given."""

    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str
    head: str = ""
    default_system: str | None = None

    def render(self, messages: list[dict[str, str]], generation: bool) -> str:
        """What the Go template below renders for `messages`, computed here to check it."""
        out, system = self.head, None
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        system = system if system is not None else self.default_system
        if system is not None:
            out += self.system[0] + system + self.system[1]
        for m in messages:
            before, after = self.user if m["role"] == "user" else self.assistant
            out += before + m["content"] + after
        return out + (self.generation if generation else "")


def modelfile(gguf_name: str, tokenizer: Any, stop_words: list[str]) -> str:
    """The Modelfile text for the GGUF file `gguf_name` (beside it)."""
    lines = [f"FROM ./{gguf_name}", ""]
    blocks, why = template_blocks(tokenizer)
    if blocks is not None and '"""' in go_template(blocks) + str(blocks.default_system):
        blocks, why = None, 'it contains """, which ends a Modelfile string'
    if blocks is None:
        lines += [f"# TEMPLATE: not translated ({why}); Ollama picks one from the GGUF", ""]
    else:
        lines += [f'TEMPLATE """{go_template(blocks)}"""', ""]
        if blocks.default_system is not None:
            lines += [f'SYSTEM """{blocks.default_system}"""', ""]
    lines += [f"PARAMETER stop {_quote(word)}" for word in stop_words]
    return "\n".join(lines) + "\n"


def template_blocks(tokenizer: Any) -> tuple[Blocks | None, str]:
    """The template's role blocks, or None and the reason it does not decompose into them."""
    if not getattr(tokenizer, "chat_template", None):
        return None, "the tokenizer has no chat template"
    try:
        blocks = _read_blocks(lambda msgs, gen: _render(tokenizer, msgs, gen))
    except Exception as e:  # a template that refuses a probe (roles, order) cannot be mapped
        return None, f"rendering probe conversations failed: {type(e).__name__}"
    if blocks is None:
        return None, "its messages are not fixed text around each content"
    for conversation in (_probe(system=True), _probe(system=False)):
        if blocks.render(conversation, True) != _render(tokenizer, conversation, True):
            return None, "a longer conversation renders differently from its blocks"
    return blocks, ""


def _read_blocks(render: Any) -> Blocks | None:
    """Cut each role's prefix and suffix out of renders of growing conversations."""
    sys_only = render([_msg("system", _S)], False)
    with_user = render([_msg("system", _S), _msg("user", _U)], False)
    with_reply = render([_msg("system", _S), _msg("user", _U), _msg("assistant", _A)], False)
    prompt = render([_msg("system", _S), _msg("user", _U)], True)
    if _S not in sys_only or not with_user.startswith(sys_only):
        return None  # e.g. a template that folds the system prompt into the first user turn
    head_system, system_after = sys_only.split(_S, 1)
    user_before, _, user_after = with_user[len(sys_only) :].partition(_U)
    if not with_reply.startswith(with_user) or not prompt.startswith(with_user):
        return None
    assistant_before, _, assistant_after = with_reply[len(with_user) :].partition(_A)
    generation = prompt[len(with_user) :]
    alone = render([_msg("user", _U)], False)  # what the template adds without a system prompt
    tail = user_before + _U + user_after
    if not alone.endswith(tail):
        return None
    lead = alone[: -len(tail)]
    head, default = _head_and_default(lead, head_system, system_after)
    if head is None:
        return None
    system_before = head_system[len(head) :]
    return Blocks(
        (system_before, system_after),
        (user_before, user_after),
        (assistant_before, assistant_after),
        generation,
        head,
        default,
    )


def _head_and_default(
    lead: str, head_system: str, system_after: str
) -> tuple[str | None, str | None]:
    """What precedes a user-first conversation: the head alone, or the head plus a default
    system block (SmolLM2's "You are a helpful AI assistant named SmolLM...")."""
    if head_system.startswith(lead) and not lead.endswith(system_after or "\x00"):
        return lead, None  # e.g. "" for ChatML, "<|begin_of_text|>" for Llama 3
    if lead.startswith(head_system) and lead.endswith(system_after):
        return "", lead[len(head_system) : len(lead) - len(system_after)]
    return None, None


def go_template(blocks: Blocks) -> str:
    """Ollama's template over `.System` and `.Messages` (no whitespace trimming: the block texts
    are kept byte for byte); the reply opens after the last message unless it is a reply."""
    return (
        _text(blocks.head)
        + "{{ if .System }}"
        + _text(blocks.system[0])
        + "{{ .System }}"
        + _text(blocks.system[1])
        + "{{ end }}"
        + "{{ range $i, $_ := .Messages }}"
        + "{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + '{{ if eq .Role "user" }}'
        + _text(blocks.user[0])
        + "{{ .Content }}"
        + _text(blocks.user[1])
        + '{{ else if eq .Role "assistant" }}'
        + _text(blocks.assistant[0])
        + "{{ .Content }}"
        + _text(blocks.assistant[1])
        + "{{ end }}"
        + '{{ if and $last (ne .Role "assistant") }}'
        + _text(blocks.generation)
        + "{{ end }}"
        + "{{ end }}"
    )


def _text(literal: str) -> str:
    """Literal text in a Go template: `{{` would open an action, so it is printed instead."""
    return literal.replace("{{", '{{ "{{" }}')


def _quote(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _probe(system: bool) -> list[dict[str, str]]:
    turns = [_msg("user", _U), _msg("assistant", _A), _msg("user", _U2), _msg("assistant", _A2)]
    turns.append(_msg("user", _U))
    return ([_msg("system", _S)] if system else []) + turns


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
