"""One module per API dialect. Each has PATHS, its request Body (a pydantic model, for the docs and its
checks), parse(body, state) -> Generation, and an Answer class that writes the whole answer, the stream
events and the end of the stream. Chat-style dialects also count a request's prompt tokens
(INPUT_TOKENS_PATHS, input_tokens_json). Adding an API shape is one module and one row here."""
from . import anthropic, native, openai_chat, openai_completions, responses

DIALECTS = (native, openai_completions, openai_chat, anthropic, responses)
