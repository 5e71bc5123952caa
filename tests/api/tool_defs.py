"""What the tool-call HTTP tests share: the servers (stories260K with a real template from llama.cpp's sdist,
copied under tests/fixtures/templates), the tools, and the check every call's arguments must pass."""
import json
from pathlib import Path

import jsonschema
from server import TINYLLAMA2, ServerProcess

TEMPLATES = Path(__file__).resolve().parents[1] / "fixtures" / "templates"
# None: stories260K has no template of its own, so ChatML, which knows no tools: llama.cpp's generic format
TEMPLATE_NAMES = ["NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use", "Qwen-Qwen2.5-7B-Instruct",
                  "meta-llama-Llama-3.3-70B-Instruct", "mistralai-Mistral-Nemo-Instruct-2407", None]

# llama.cpp's test tools (unit/test_tool_call.py), and one with more of JSON Schema in it. Kept small: Llama 3.3's
# template prints them indented, and stories260K spends a token on nearly every character (n_ctx_train 2048)
TEST_TOOL = {"type": "function", "function": {"name": "test", "description": "", "parameters": {
    "type": "object", "properties": {"success": {"type": "boolean", "const": True}}, "required": ["success"]}}}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
ALARM_TOOL = {"type": "function", "function": {"name": "set_alarm", "description": "Set an alarm", "parameters": {
    "type": "object", "properties": {
        "hour": {"type": "integer", "minimum": 0, "maximum": 23},
        "days": {"type": "array", "items": {"enum": ["mon", "fri"]}, "maxItems": 2},
        "label": {"type": "string", "maxLength": 12}},
    "required": ["hour", "days"]}}}
TOOLS = [TEST_TOOL, WEATHER_TOOL, ALARM_TOOL]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "What is the weather in Paris?"}]


def server(model: Path, template: str | None) -> ServerProcess:
    """stories260K as llama.cpp's tool-call tests run it (one slot, a context the tool prompts fit in)."""
    args = ["--jinja", "--chat-template-file", str(TEMPLATES / f"{template}.jinja")] if template else []
    return ServerProcess(model, *TINYLLAMA2, "-c", "8192", "-np", "1", *args)


def check_call(name: str, arguments) -> dict:
    """A call names one of the tools and its arguments (a JSON string, or the object) match its schema."""
    assert name in SCHEMAS, name
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(args, SCHEMAS[name])
    return args
