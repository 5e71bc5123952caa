"""llama-server endpoints slotserve does not have: 501 not_supported_error with a hint, as llama-server
answers for a feature it was not started with, rather than a 404 that reads like a typo in the path."""
from __future__ import annotations

from fastapi import APIRouter

from .errors import ApiError

router = APIRouter()

# path -> (methods, what is missing and what to use instead)
UNSUPPORTED = {
    "/embedding": (["POST"], "embeddings (slotserve generates text only)"),
    "/embeddings": (["POST"], "embeddings (slotserve generates text only)"),
    "/v1/embeddings": (["POST"], "embeddings (slotserve generates text only)"),
    "/rerank": (["POST"], "reranking (slotserve generates text only)"),
    "/reranking": (["POST"], "reranking (slotserve generates text only)"),
    "/v1/rerank": (["POST"], "reranking (slotserve generates text only)"),
    "/v1/reranking": (["POST"], "reranking (slotserve generates text only)"),
    "/infill": (["POST"], "infill (fill-in-the-middle); send the text before the gap to /completion"),
    "/props": (["POST"], "changing global properties; start slotserve with the settings you need"),
    "/lora-adapters": (["GET", "POST"], "LoRA adapters"),
    "/audio/transcriptions": (["POST"], "audio transcription"),
    "/v1/audio/transcriptions": (["POST"], "audio transcription"),
}


def _endpoint(feature: str):
    async def not_supported():
        raise ApiError("not_supported", f"slotserve does not support {feature}")
    return not_supported


for _path, (_methods, _feature) in UNSUPPORTED.items():
    router.add_api_route(_path, _endpoint(_feature), methods=_methods, include_in_schema=False)
