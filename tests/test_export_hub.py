"""Tests for the hub upload with a fake client that records calls (no network here)."""

from __future__ import annotations

import huggingface_hub
import pytest
from conftest import make_model
from test_export import make_run_dir, randomize_lora_b
from test_export_gguf import byte_level_bpe

from rlvr.cli import main
from rlvr.errors import RlvrError
from rlvr.export import push_to_hub
from rlvr.models.loading import attach_lora


class FakeApi:
    """Records what would be sent; `fail_on` names a method that raises a network error instead."""

    instances: list[FakeApi] = []

    def __init__(self, token: str | None = None, fail_on: str | None = None):
        self.token, self.fail_on, self.calls = token, fail_on, []
        FakeApi.instances.append(self)

    def _record(self, method: str, **kwargs):
        if method == self.fail_on:
            raise ConnectionError("Failed to resolve 'huggingface.co'\nsecond line")
        self.calls.append((method, kwargs))

    def create_repo(self, repo_id, **kwargs):
        self._record("create_repo", repo_id=repo_id, **kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self._record("upload_folder", **kwargs)

    def upload_file(self, **kwargs):
        self._record("upload_file", **kwargs)


@pytest.fixture
def export_files(tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    files = [gguf / "run-f16.gguf", gguf / "Modelfile"]
    for f in files:
        f.write_text("x")
    return merged, files


def test_upload_sends_folders_and_files(export_files, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    merged, files = export_files
    api = FakeApi()
    url = push_to_hub([merged, *files], "me/tiny", private=True, token="hf_x", api=api)
    assert url == "https://huggingface.co/me/tiny"
    common = {"repo_id": "me/tiny", "token": "hf_x", "repo_type": "model", "commit_message": "Upload with rlvr export"}
    assert api.calls == [
        ("create_repo", {"repo_id": "me/tiny", "token": "hf_x", "private": True, "repo_type": "model",
                         "exist_ok": True}),
        ("upload_folder", {"folder_path": str(merged), **common}),
        ("upload_file", {"path_or_fileobj": str(files[0]), "path_in_repo": "run-f16.gguf", **common}),
        ("upload_file", {"path_or_fileobj": str(files[1]), "path_in_repo": "Modelfile", **common}),
    ]


def test_token_comes_from_hf_token(export_files, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    api = FakeApi()
    push_to_hub(export_files[0], "me/tiny", api=api)
    assert {kwargs["token"] for _, kwargs in api.calls} == {"hf_env"}
    assert api.calls[0][1]["private"] is False


@pytest.mark.parametrize(("setup", "message"), [
    ("no_token", "no Hugging Face token: set HF_TOKEN"),
    ("network", "upload to me/tiny failed (ConnectionError: Failed to resolve 'huggingface.co')"),
    ("bad_repo", "expected a repo id like user/model-name"),
    ("missing_path", "does not exist; export it first"),
])
def test_upload_errors_are_one_line(setup, message, export_files, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    token = None if setup == "no_token" else "hf_x"
    api = FakeApi(fail_on="upload_file" if setup == "network" else None)
    paths = [tmp_path / "nothing"] if setup == "missing_path" else [export_files[0], *export_files[1]]
    repo = "me/tiny/extra" if setup == "bad_repo" else "me/tiny"
    with pytest.raises(RlvrError) as info:
        push_to_hub(paths, repo, token=token, api=api)
    assert message in str(info.value) and "\n" not in str(info.value)
    if setup == "no_token":
        assert api.calls == []


@pytest.fixture
def fake_hub(monkeypatch):
    """push_to_hub builds huggingface_hub.HfApi itself when the CLI calls it; hand it the fake."""
    FakeApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    return FakeApi.instances


def trained_run(tmp_path):
    tokenizer = byte_level_bpe()
    run_dir = make_run_dir(tmp_path, make_model("llama", vocab_size=len(tokenizer)), tokenizer)
    lora = attach_lora(make_model("llama", vocab_size=len(tokenizer)), rank=4, alpha=8)
    randomize_lora_b(lora)
    lora.save_pretrained(run_dir / "final")
    return run_dir


def test_cli_pushes_the_adapter_when_nothing_else_is_asked(tmp_path, fake_hub, capsys):
    run_dir = trained_run(tmp_path)
    assert main(["export", str(run_dir), "--push-to-hub", "me/tiny", "--private"]) == 0
    (api,) = fake_hub
    assert [(m, k.get("folder_path")) for m, k in api.calls] == [("create_repo", None),
                                                                  ("upload_folder", str(run_dir / "lora"))]
    assert api.calls[0][1]["private"] is True and api.token == "hf_env"
    assert (run_dir / "lora" / "adapter_config.json").is_file()
    assert "uploaded to https://huggingface.co/me/tiny" in capsys.readouterr().out


def test_cli_pushes_the_gguf_files_and_modelfile(tmp_path, fake_hub):
    run_dir = trained_run(tmp_path)
    assert main(["export", str(run_dir), "--gguf", "f16", "--ollama", "--push-to-hub", "me/tiny"]) == 0
    (api,) = fake_hub
    assert [(m, k.get("path_in_repo")) for m, k in api.calls] == [
        ("create_repo", None), ("upload_file", "run-f16.gguf"), ("upload_file", "Modelfile")]


def test_cli_without_token_fails_in_one_line(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    run_dir = trained_run(tmp_path)
    assert main(["export", str(run_dir), "--push-to-hub", "me/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlvr: error: no Hugging Face token") and "\n" not in err
