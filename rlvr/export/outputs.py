"""`rlvr export`'s decisions: which outputs a request makes, what is checked before a model loads,
and what gets uploaded. The CLI parses its flags into `export_outputs`' arguments and nothing more."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rlvr.errors import RlvrError


def check_request(merged: bool, gguf: str | None, ollama: bool, push_to_hub: str | None, private: bool) -> None:
    """One-line errors for a request that cannot be met, before anything loads."""
    from rlvr.export.gguf import parse_quantizations
    from rlvr.export.hub import hub_token

    if ollama and not gguf:
        raise RlvrError("rlvr export: --ollama writes a Modelfile beside GGUF files; add --gguf f16 (or another type)")
    if private and not push_to_hub:
        raise RlvrError("rlvr export: --private applies to --push-to-hub REPO; add it or drop --private")
    if not (merged or gguf or push_to_hub):
        raise RlvrError("rlvr export: choose what to write: --merged, --gguf f16[,q8_0,...] or --push-to-hub REPO")
    if gguf:
        parse_quantizations(gguf)  # a bad type fails before the model loads
    if push_to_hub:
        hub_token()  # so does a missing token


def export_outputs(run_dir: str | Path, merged: bool = False, dtype: str = "float16", gguf: str | None = None,
                   ollama: bool = False, push_to_hub: str | None = None, private: bool = False,
                   say: Callable[[str], None] = print) -> list[Path]:
    """Write what was asked from a run directory (one model load serves the merged folder and the GGUF
    files); upload it, or the adapter when nothing else was asked. Returns the paths written."""
    from rlvr.export.gguf import export_run_gguf
    from rlvr.export.hub import push_to_hub as upload
    from rlvr.export.save import export_run, load_run, save_merged

    check_request(merged, gguf, ollama, push_to_hub, private)
    written: list[Path] = []
    if merged or gguf:
        loaded = load_run(run_dir)
        if merged:
            written.append(save_merged(*loaded, Path(run_dir) / "merged", dtype=dtype))
            say(f"merged model written to {written[-1]}")
        if gguf:
            files = export_run_gguf(run_dir, gguf, ollama=ollama, loaded=loaded)
            written += files
            say("GGUF export written: " + ", ".join(str(f) for f in files))
    if push_to_hub:
        url = upload(written or [export_run(run_dir, merged=False)], push_to_hub, private=private)
        say(f"uploaded to {url}")
    return written
