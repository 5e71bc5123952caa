"""llama.cpp's built-in chat formats that `--chat-template NAME` selects (src/llama-chat.cpp), for models
whose GGUF has no template or a wrong one. Each turns [{role, content}] into the prompt text exactly as
llama.cpp's formatter does; tests/api/test_builtin_templates.py holds them to llama.cpp's own expected
outputs (tests/test-chat-template.cpp).
"""
from __future__ import annotations

from typing import Callable

Messages = list[dict]
_C_ISSPACE = " \t\n\v\f\r"


def _text(m: dict) -> str:
    return m.get("content") or ""


def _llama2(system_tags: bool, bos_in_history: bool = False, strip: bool = False):
    def fmt(messages: Messages, add_ass: bool) -> str:
        out, inside = ["[INST] "], True  # the first turn's BOS comes from tokenization
        for m in messages:
            content = _text(m).strip() if strip else _text(m)
            if not inside:
                out.append("<s>[INST] " if bos_in_history else "[INST] ")
                inside = True
            if m["role"] == "system":
                out.append(f"<<SYS>>\n{content}\n<</SYS>>\n\n" if system_tags else content + "\n")
            elif m["role"] == "user":
                out.append(content + " [/INST]")
            else:
                out.append(content + "</s>")
                inside = False
        return "".join(out)
    return fmt


def _mistral(lead: str, trail: str, trim_assistant: bool):
    def fmt(messages: Messages, add_ass: bool) -> str:
        out, inside = [], False
        for m in messages:
            if not inside:
                out.append(f"{lead}[INST]{trail}")
                inside = True
            if m["role"] == "system":
                out.append(_text(m) + "\n\n")
            elif m["role"] == "user":
                out.append(_text(m) + lead + "[/INST]")
            else:
                out.append(trail + (_text(m).strip() if trim_assistant else _text(m)) + "</s>")
                inside = False
        return "".join(out)
    return fmt


def _mistral_v7(trail: str):
    def fmt(messages: Messages, add_ass: bool) -> str:
        out = []
        for m in messages:
            if m["role"] == "system":
                out.append(f"[SYSTEM_PROMPT]{trail}{_text(m)}[/SYSTEM_PROMPT]")
            elif m["role"] == "user":
                out.append(f"[INST]{trail}{_text(m)}[/INST]")
            else:
                out.append(f"{trail}{_text(m)}</s>")
        return "".join(out)
    return fmt


def _turns(head: Callable[[str], str], tail: str, assistant_head: str):
    """Formats that are one `head(role) + content + tail` per message, then the assistant's head."""
    def fmt(messages: Messages, add_ass: bool) -> str:
        return "".join(head(m["role"]) + _text(m) + tail for m in messages) + (assistant_head if add_ass else "")
    return fmt


def _gemma(messages: Messages, add_ass: bool) -> str:
    out, system = [], ""
    for m in messages:
        if m["role"] == "system":
            system += _text(m).strip()  # gemma has no system turn: it opens the next user turn
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n")
        if system and role != "model":
            out.append(system + "\n\n")
            system = ""
        out.append(_text(m).strip() + "<end_of_turn>\n")
    return "".join(out) + ("<start_of_turn>model\n" if add_ass else "")


def _orion(messages: Messages, add_ass: bool) -> str:
    out, system = [], ""
    for m in messages:
        if m["role"] == "system":
            system += _text(m)
        elif m["role"] == "user":
            out.append("Human: " + (system + "\n\n" if system else "") + _text(m) + "\n\nAssistant: </s>")
            system = ""
        else:
            out.append(_text(m) + "</s>")
    return "".join(out)


def _openchat(messages: Messages, add_ass: bool) -> str:
    out = [_text(m) + "<|end_of_turn|>" if m["role"] == "system" else
           f"GPT4 Correct {m['role'][:1].upper()}{m['role'][1:]}: {_text(m)}<|end_of_turn|>" for m in messages]
    return "".join(out) + ("GPT4 Correct Assistant:" if add_ass else "")


def _vicuna(orca: bool):
    def fmt(messages: Messages, add_ass: bool) -> str:
        out = []
        for m in messages:
            if m["role"] == "system":
                out.append(f"SYSTEM: {_text(m)}\n" if orca else _text(m) + "\n\n")
            elif m["role"] == "user":
                out.append(f"USER: {_text(m)}\n")
            elif m["role"] == "assistant":
                out.append(f"ASSISTANT: {_text(m)}</s>\n")
        return "".join(out) + ("ASSISTANT:" if add_ass else "")
    return fmt


def _deepseek(messages: Messages, add_ass: bool) -> str:
    parts = {"system": "{}", "user": "### Instruction:\n{}\n", "assistant": "### Response:\n{}\n<|EOT|>\n"}
    out = [parts[m["role"]].format(_text(m)) for m in messages if m["role"] in parts]
    return "".join(out) + ("### Response:\n" if add_ass else "")


def _command_r(messages: Messages, add_ass: bool) -> str:
    tokens = {"system": "<|SYSTEM_TOKEN|>", "user": "<|USER_TOKEN|>", "assistant": "<|CHATBOT_TOKEN|>"}
    out = [f"<|START_OF_TURN_TOKEN|>{tokens[m['role']]}{_text(m).strip()}<|END_OF_TURN_TOKEN|>"
           for m in messages if m["role"] in tokens]
    return "".join(out) + ("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>" if add_ass else "")


def _llama3(messages: Messages, add_ass: bool) -> str:
    # content trimmed of C isspace() characters, as llama.cpp's trim(); no BOS (tokenization adds it)
    out = ["<|start_header_id|>" + m["role"] + "<|end_header_id|>\n\n" + _text(m).strip(_C_ISSPACE) + "<|eot_id|>"
           for m in messages]
    return "".join(out) + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if add_ass else "")


def _monarch(messages: Messages, add_ass: bool) -> str:
    out = [("" if i == 0 else "<s>") + f"{m['role']}\n{_text(m)}</s>\n" for i, m in enumerate(messages)]
    return "".join(out) + ("<s>assistant\n" if add_ass else "")


FORMATS: dict[str, Callable[[Messages, bool], str]] = {
    "llama2": _llama2(system_tags=False),
    "llama2-sys": _llama2(system_tags=True),
    "llama2-sys-bos": _llama2(system_tags=True, bos_in_history=True),
    "llama2-sys-strip": _llama2(system_tags=True, strip=True),
    "mistral-v1": _mistral(" ", " ", trim_assistant=False),
    "mistral-v3": _mistral("", " ", trim_assistant=True),
    "mistral-v3-tekken": _mistral("", "", trim_assistant=False),
    "mistral-v7": _mistral_v7(" "),
    "mistral-v7-tekken": _mistral_v7(""),
    "phi3": _turns(lambda role: f"<|{role}|>\n", "<|end|>\n", "<|assistant|>\n"),
    "phi4": _turns(lambda role: f"<|im_start|>{role}<|im_sep|>", "<|im_end|>", "<|im_start|>assistant<|im_sep|>"),
    "falcon3": _turns(lambda role: f"<|{role}|>\n", "\n", "<|assistant|>\n"),
    "zephyr": _turns(lambda role: f"<|{role}|>\n", "<|endoftext|>\n", "<|assistant|>\n"),
    "monarch": _monarch,
    "gemma": _gemma,
    "orion": _orion,
    "openchat": _openchat,
    "vicuna": _vicuna(orca=False),
    "vicuna-orca": _vicuna(orca=True),
    "deepseek": _deepseek,
    "command-r": _command_r,
    "llama3": _llama3,
}
