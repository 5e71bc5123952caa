"""-hf / --hf-file / --offline: fetch a GGUF from Hugging Face into a local cache, once.

The cache is $LLAMA_CACHE (as llama.cpp) or ~/.cache/slotserve, one folder per repository.
Downloads go to a temporary file renamed into place, so an interrupted one never looks complete.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HF_URL = "https://huggingface.co/{repo}/resolve/main/{file}"


class HubError(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_CACHE") or Path.home() / ".cache" / "slotserve")


def fetch_model(repo: str, filename: str | None, offline: bool = False) -> Path:
    repo = repo.split(":", 1)[0]  # llama.cpp's ":quant" suffix picks a file via the hub API; we need --hf-file
    folder = cache_dir() / repo.replace("/", "__")
    if filename is None:
        cached = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        if len(cached) == 1:
            return cached[0]
        raise HubError(f"-hf {repo}: name the file with --hf-file FILE.gguf"
                       + (f" (cached: {', '.join(p.name for p in cached)})" if cached else ""))
    target = folder / filename
    if target.is_file():
        return target
    if offline:
        raise HubError(f"--offline: {filename} from {repo} is not in the cache {folder}")
    return _download(HF_URL.format(repo=repo, file=filename), target)


def _download(url: str, target: Path) -> Path:
    import httpx

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
            if response.status_code != 200:
                raise HubError(f"download of {url} failed: HTTP {response.status_code}")
            total = int(response.headers.get("content-length") or 0)
            done = 0
            with open(tmp, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if total:
                        print(f"\rdownloading {target.name}: {done * 100 // total:3d}%", end="", file=sys.stderr)
                f.flush()
                os.fsync(f.fileno())
        print(file=sys.stderr)
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise HubError(f"download of {url} failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
