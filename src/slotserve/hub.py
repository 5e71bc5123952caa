"""-hf <user>/<model>[:quant], --hf-file, --offline: a GGUF from Hugging Face, through huggingface_hub.

Files live in the standard Hugging Face cache ($LLAMA_CACHE if set, as llama.cpp, else HF_HUB_CACHE /
HF_HOME / ~/.cache/huggingface/hub), so what llama-server or `hf download` fetched is found here and the
other way round. huggingface_hub reads HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE, resumes a partial
download from its .incomplete file, and renames a blob into place only when it is whole.

Which file: --hf-file names it; else llama.cpp's rule (common/download.cpp): the first model GGUF (not
mmproj / imatrix / a draft head) whose name has the quant followed by "." or "-", case-insensitive;
without a quant Q4_K_M, then Q8_0, then the first model GGUF. Of a split model, the first part.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .progress import Progress

DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")
NOT_A_MODEL = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class HubError(Exception):
    pass


def cache_dir() -> Path | None:
    """$LLAMA_CACHE (llama.cpp reads it first), else None: huggingface_hub's own default."""
    return Path(os.environ["LLAMA_CACHE"]) if os.environ.get("LLAMA_CACHE") else None


def split_repo_tag(repo_with_tag: str) -> tuple[str, str]:
    repo, _, tag = repo_with_tag.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise HubError(f"-hf {repo_with_tag!r}: expected <user>/<model>[:quant]")
    return repo, tag


def is_model_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return path.lower().endswith(".gguf") and not any(part in name for part in NOT_A_MODEL)


def pick_file(files: list[str], tag: str) -> str | None:
    """llama.cpp's choice of a repository's model file for a quant tag ("" = its default order)."""
    for t in [tag] if tag else DEFAULT_QUANTS:
        pattern = re.compile(re.escape(t) + r"[.-]", re.IGNORECASE)
        for path in files:
            split = SPLIT.search(path)
            if is_model_file(path) and pattern.search(path) and not (split and int(split[1]) != 1):
                return path
    if not tag:
        for path in files:
            split = SPLIT.search(path)
            if is_model_file(path) and not (split and int(split[1]) != 1):
                return path
    return None


def fetch_model(repo_with_tag: str, filename: str | None, offline: bool = False) -> Path:
    import huggingface_hub
    from huggingface_hub import constants, errors

    repo, tag = split_repo_tag(repo_with_tag)
    offline = offline or constants.HF_HUB_OFFLINE
    cache = cache_dir()
    if filename is None:
        files = _cached_files(repo, cache) if offline else _repo_files(repo)
        filename = pick_file(files, tag)
        if filename is None:
            where = "in the cache (offline)" if offline else "in the repository"
            ggufs = [f for f in files if f.lower().endswith(".gguf")]
            raise HubError(f"-hf {repo_with_tag}: no GGUF{' for ' + tag if tag else ''} {where}"
                           + (f"; there are: {', '.join(ggufs)}" if ggufs else ""))
    if SPLIT.search(filename):
        raise HubError(f"-hf {repo}: {filename} is one part of a split GGUF; slotserve loads single-file models")
    repo_dir = Path(cache or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    existed = repo_dir.exists()
    try:
        path = huggingface_hub.hf_hub_download(repo, filename, cache_dir=cache, local_files_only=offline,
                                               tqdm_class=_download_bar(filename))
    except errors.LocalEntryNotFoundError:
        _tidy(repo_dir, existed)
        raise HubError(f"--offline: {filename} from {repo} is not in the cache "
                       f"{repo_dir.parent}") from None
    except Exception as exc:  # HTTP statuses, and the transport's own errors (httpx's, not OSError)
        _tidy(repo_dir, existed)
        raise HubError(f"-hf {repo}: cannot fetch {filename}: {_first_line(exc)}") from None
    return Path(path)


def _repo_files(repo: str) -> list[str]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    try:
        return [e.path for e in HfApi().list_repo_tree(repo, recursive=True) if isinstance(e, RepoFile)]
    except Exception as exc:  # as in fetch_model
        raise HubError(f"-hf {repo}: cannot list the repository's files: {_first_line(exc)}") from None


def _cached_files(repo: str, cache: Path | None) -> list[str]:
    """The files of the repository's cached main revision (what llama.cpp looks at offline)."""
    from huggingface_hub import constants

    repo_dir = Path(cache or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        return []
    snapshot = repo_dir / "snapshots" / commit
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _tidy(repo_dir: Path, existed: bool) -> None:
    """After a failure: a repository folder this call created goes, unless a blob landed in it (refs and
    empty snapshot folders alone are not worth keeping)."""
    if existed or not repo_dir.exists():
        return
    if not any(p.is_file() for p in (repo_dir / "blobs").glob("*")):
        shutil.rmtree(repo_dir, ignore_errors=True)
        locks = repo_dir.parent / ".locks" / repo_dir.name
        shutil.rmtree(locks, ignore_errors=True)


def _download_bar(filename: str):
    class Bar(Progress):
        def __init__(self, *args, **kwargs):
            kwargs["desc"] = f"downloading {filename}"
            super().__init__(*args, **kwargs)

    return Bar


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
