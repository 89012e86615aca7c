"""Upload an export (adapter folder, merged folder, GGUF files, Modelfile) to a Hugging Face hub repo.

Folders are uploaded with their contents at the repo root (what from_pretrained(repo) expects); files
go to the root under their own names. The client is injectable (`api=`) so tests run without network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from rlvr.errors import RlvrError
from rlvr.export.save import announce

_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")


def push_to_hub(path_or_paths: str | Path | Sequence[str | Path], repo_id: str, private: bool = False,
                token: str | None = None, api=None, commit_message: str = "Upload with rlvr export") -> str:
    """Create `repo_id` (if needed) and upload the given folders and files; returns the repo's URL.

    The token is `token` or the HF_TOKEN environment variable; `api` defaults to huggingface_hub.HfApi.
    """
    paths = _check_paths(path_or_paths)
    if not _REPO_ID.match(repo_id or ""):
        raise RlvrError(f"--push-to-hub {repo_id!r}: expected a repo id like user/model-name")
    token = hub_token(token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        for path in paths:
            _upload(api, path, repo_id, token, commit_message)
    except RlvrError:
        raise
    except Exception as e:  # the hub client raises from its HTTP stack, which differs between versions
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RlvrError(f"upload to {repo_id} failed ({type(e).__name__}: {first}); check the network, the token's "
                        "write access and the repo name") from None
    return str(url) if url is not None else f"https://huggingface.co/{repo_id}"


def hub_token(token: str | None = None) -> str:
    """`token`, else HF_TOKEN; refuses to go on without one (checked before any slow export work)."""
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise RlvrError("no Hugging Face token: set HF_TOKEN to a write token "
                        "(https://huggingface.co/settings/tokens) to push to the hub")
    return token


def _check_paths(path_or_paths) -> list[Path]:
    items = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    paths = [Path(p) for p in items]
    if not paths:
        raise RlvrError("push_to_hub: nothing to upload")
    for path in paths:
        if not path.exists():
            raise RlvrError(f"push_to_hub: {path} does not exist; export it first")
    return paths


def _upload(api, path: Path, repo_id: str, token: str, message: str) -> None:
    announce(f"uploading {path} to {repo_id}")
    if path.is_dir():
        api.upload_folder(folder_path=str(path), repo_id=repo_id, token=token, repo_type="model",
                          commit_message=message)
    else:
        api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo_id, token=token,
                        repo_type="model", commit_message=message)
