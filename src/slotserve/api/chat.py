"""OpenAI chat messages -> one prompt string, through the model's Jinja chat template.

As llama-server: the GGUF's tokenizer.chat_template when it has one, ChatML otherwise (or when
--chat-template chatml); --chat-template may also give a template's source. jinja2's sandbox runs
it, with the variables and helpers Hugging Face templates expect.
"""
from __future__ import annotations

import json
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .builtin_templates import FORMATS
from .errors import ApiError, invalid
from .fields import field_error
from .schema import ChatBody
from .toolcalls import ToolCalls, detect, for_template, plan

# llama.cpp's own fallback template, so a model without one gets the same prompt from both servers
CHATML = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)

# the few built-in names of llama.cpp's --chat-template that are worth keeping as Jinja
BUILTIN = {
    "chatml": CHATML,
}


class _LenientUndefined(jinja2.ChainableUndefined):
    """A name the template uses but nobody passed, treated as llama.cpp's Jinja engine treats it: empty in a
    string concatenation, containing nothing, and with missing attributes of its own. Real templates lean on
    this (firefunction-v2 adds an undefined `functions` to its system prompt)."""

    def __add__(self, other):
        return other if isinstance(other, str) else self._fail_with_undefined_error()

    __radd__ = __add__

    def __contains__(self, item) -> bool:
        return False


def _raise(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False, separators=None):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys, separators=separators)


def _flatten_content(content, where: str):
    """Typed content parts become one string, text parts joined by a newline, as llama-server does for
    templates that only take string content."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise field_error(f"{where}.content", "must be a string or an array of content parts")
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise field_error(f"{where}.content[{i}]", "must be an object with a 'type'")
        if part["type"] != "text":
            raise field_error(f"{where}.content[{i}]", f"is {part['type']} input, which is not supported by this "
                                                       "model (text only)")
        if not isinstance(part.get("text"), str):
            raise field_error(f"{where}.content[{i}].text", "must be a string")
        texts.append(part["text"])
    return "\n".join(texts)


def normalize_messages(messages) -> list[dict]:
    if not isinstance(messages, list):
        raise field_error("messages", "must be an array")
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise field_error(where, "must be an object")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise field_error(f"{where}.role", "must be a non-empty string")
        if "content" not in msg and role != "assistant":
            raise invalid("All non-assistant messages must contain 'content'")
        if role == "assistant" and "content" not in msg and "tool_calls" not in msg:
            raise invalid("Assistant message must contain either 'content' or 'tool_calls'!")
        m = dict(msg)
        m["content"] = _flatten_content(msg.get("content"), where)
        out.append(m)
    return out


def template_names() -> list[str]:
    """The names --chat-template accepts instead of a template's text."""
    return sorted({*BUILTIN, *FORMATS})


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str, add_bos: bool, add_eos: bool):
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos, self.add_eos = add_bos, add_eos
        self._format = FORMATS.get(source)  # one of llama.cpp's built-in formats, by name
        self._template, self.error = None, None
        if self._format is not None:
            return
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=_LenientUndefined,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:  # answered on use, so a bad template does not stop the server
            self._template, self.error = None, f"the chat template does not compile: {exc}"

    @classmethod
    def for_model(cls, model_template: str | None, override: str | None, tokenizer) -> "ChatTemplate":
        source = override or model_template or "chatml"
        source = BUILTIN.get(source, source)

        def piece(token_id):
            return "" if token_id is None else tokenizer.token_to_piece(token_id, special=True).decode("utf-8", "replace")

        return cls(source, piece(tokenizer.bos_id), piece(tokenizer.eos_id), tokenizer.add_bos, tokenizer.add_eos)

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True, extra: dict | None = None) -> str:
        if self._format is not None:
            return self._format(messages, add_generation_prompt)
        if self._template is None:
            raise ApiError("server", self.error)
        now = datetime.now()
        # llama.cpp's extra context (common_chat_extra_context): templates such as Llama 3.x print the date
        ctx = {"messages": messages, "bos_token": self.bos_token, "eos_token": self.eos_token,
               "add_generation_prompt": add_generation_prompt, "date_string": now.strftime("%d %b %Y"),
               "datetime": now.strftime("%b %d %Y"), **(extra or {})}
        try:
            text = self._template.render(**ctx)
        except jinja2.TemplateError as exc:
            raise invalid(f"chat template error: {exc}") from None
        except Exception as exc:  # templates index and compare freely; a bad message shape lands here
            raise invalid(f"chat template failed on these messages: {type(exc).__name__}: {exc}") from None
        # the tokenizer adds BOS/EOS itself; a template that writes them too would double them
        if self.add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token):]
        if self.add_eos and self.eos_token and text.endswith(self.eos_token):
            text = text[:-len(self.eos_token)]
        return text


def tool_plan(body: ChatBody, template: ChatTemplate) -> ToolCalls | None:
    """The request's tool calling in the template's call format (None: no tools offered)."""
    return plan(body.tools, body.tool_choice, body.parallel_tool_calls, template.source)


def chat_prompt(body: ChatBody, template: ChatTemplate, tools: ToolCalls | None = None) -> str:
    """The prompt a chat request's messages make through the template (llama-server's
    oaicompat_chat_params_parse); the request's other fields are the schema's. `tools` reach the template
    as `tools` (as transformers and llama.cpp pass them)."""
    fmt = tools.fmt if tools is not None else detect(template.source)
    offered = tools.req.template_tools() if tools is not None else None
    messages = for_template(normalize_messages(body.messages), fmt,
                            offered if tools is not None and tools.req.calls else None)
    add_gen = body.add_generation_prompt is not False
    # an assistant message at the end is a prefill: continue it instead of opening a new turn. vLLM's
    # continue_final_message asks for that explicitly (true, or "content"), and then excludes a new turn
    cont = body.continue_final_message
    explicit = cont is True or cont in ("content", "reasoning_content")
    prefill = bool(messages) and messages[-1]["role"] == "assistant"
    if prefill and not explicit:
        if len(messages) >= 2 and messages[-2]["role"] == "assistant":
            raise invalid("Cannot have 2 or more assistant messages at the end of the list.")
        add_gen = False
    if explicit and add_gen:
        raise invalid("Cannot set both add_generation_prompt and continue_final_message to true.")
    kwargs = {**({"tools": offered} if offered else {}), **(body.chat_template_kwargs or {})}
    if prefill:
        prefix = template.render(messages[:-1], add_generation_prompt=True, extra=kwargs)
        return prefix + (messages[-1]["content"] or "")
    return template.render(messages, add_generation_prompt=add_gen, extra=kwargs)
