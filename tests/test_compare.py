"""Tests for rlvr.evaluation.compare and .chart: stage specs, adapter swapping, JSON/PNG report, CLI, demo."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys

import pytest
import torch
from conftest import make_model, make_tokenizer
from rich.console import Console

from rlvr.cli import main
from rlvr.config import config_from_dict
from rlvr.errors import RlvrError
from rlvr.evaluation import compare_stages, comparison_table, parse_stages, resolve_stages, write_comparison
from rlvr.evaluation.compare import default_output_dir
from rlvr.models.loading import attach_lora

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What two evaluations of the same model must share (timings and names may differ).
SAME = ("accuracy", "format", "soft_format", "mean_reward", "rewards", "pass_at_k", "mean_length", "truncated",
        "samples")


def config(base_dir, backend: str = "hf", **eval_overrides):
    eval_cfg = {"num_samples": 2, "k": [1, 2], "do_sample": True, "max_new_tokens": 6, "batch_size": 6, "seed": 5,
                "rollout_backend": backend, **eval_overrides}
    return config_from_dict({
        "model": {"model_name_or_path": str(base_dir), "dtype": "float32", "lora_rank": 4},
        "data": {"dataset": "builtin:arithmetic", "limit": 8, "eval_size": 3},
        "rewards": ["gsm8k"],
        "eval": eval_cfg,
    }, None)


def tiny(tokenizer):
    # initializer_range 0.1: peaked enough that an adapter changes which tokens get sampled.
    model = make_model("llama", vocab_size=len(tokenizer), initializer_range=0.1)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def trained_adapter(tokenizer, seed: int = 1):
    """A LoRA model whose B matrices are random: an adapter that changes the model (a fresh one would not)."""
    model = attach_lora(tiny(tokenizer), rank=4, alpha=8)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A base model folder, a run directory with final/ and a checkpoint, and a copy of its adapter."""
    root = tmp_path_factory.mktemp("compare")
    tokenizer = make_tokenizer()
    tiny(tokenizer).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    run = root / "run"
    lora = trained_adapter(tokenizer)
    lora.save_pretrained(run / "final")
    (run / "config.yaml").write_text("model: {}\n")
    lora.save_pretrained(run / "checkpoints" / "step-000002" / "model")
    (run / "checkpoints" / "step-000002" / "trainer_state.json").write_text("{}")
    shutil.copytree(run / "final", root / "copy")
    return {"root": root, "base": root / "base", "run": run, "copy": root / "copy", "lora": lora,
            "tokenizer": tokenizer}


@pytest.fixture(scope="module")
def compared(workspace):
    """One comparison: the adapter, base (after the adapter was loaded), the same adapter from another folder."""
    stages = {"grpo": str(workspace["run"]), "base": "base", "grpo-copy": str(workspace["copy"])}
    results = compare_stages(config(workspace["base"]), stages)
    return results


def same(a: dict, b: dict) -> bool:
    return all(a[key] == b[key] for key in SAME)


# ---------------------------------------------------------------- stage specs


def test_parse_stages_keeps_order_and_strips():
    assert parse_stages(" base=base , sft=runs/sft,grpo = runs/g=1 ") == \
        {"base": "base", "sft": "runs/sft", "grpo": "runs/g=1"}


def test_specs_resolve_run_dirs_checkpoints_and_folders(workspace):
    run = workspace["run"]
    specs = resolve_stages({"b": "base", "r": str(run), "f": str(run / "final"),
                            "c": str(run / "checkpoints" / "step-000002"), "m": str(workspace["base"])})
    assert [(s.kind, s.path) for s in specs] == [
        ("base", None), ("adapter", run / "final"), ("adapter", run / "final"),
        ("adapter", run / "checkpoints" / "step-000002" / "model"), ("merged", workspace["base"])]
    assert [s.run_dir for s in specs] == [None, run, run, run, None]
    assert default_output_dir(specs) == run
    assert str(default_output_dir(resolve_stages({"b": "base", "m": str(workspace["base"])}))) == "compare"


@pytest.mark.parametrize("text, expected", [
    ("base", "expected NAME=MODEL"),
    ("a=base,=base", "expected NAME=MODEL"),
    ("a=", "expected NAME=MODEL"),
    ("a=base,a=base", "'a' is given twice"),
])
def test_bad_stage_lists_are_one_line_errors(text, expected):
    with pytest.raises(RlvrError, match=expected) as info:
        parse_stages(text)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- evaluation


def test_same_adapter_same_samples_base_differs(compared, workspace):
    assert list(compared) == ["grpo", "base", "grpo-copy"]
    # Loaded into two adapter slots from two folders, evaluated with base in between: same samples.
    assert same(compared["grpo"], compared["grpo-copy"])
    assert compared["grpo"]["samples"] != compared["base"]["samples"]
    assert compared["grpo"]["model"] == {"kind": "adapter", "path": str(workspace["run"] / "final")}
    # `base` through disable_adapter equals the base model never wrapped by peft.
    alone = compare_stages(config(workspace["base"]), {"base": "base"}, output_dir=workspace["root"] / "alone")
    assert same(alone["base"], compared["base"])


def test_native_engine_sees_the_swapped_adapters(workspace, tmp_path):
    stages = {"a": str(workspace["run"]), "base": "base", "b": str(workspace["copy"])}
    results = compare_stages(config(workspace["base"], backend="native"), stages, output_dir=tmp_path)
    assert same(results["a"], results["b"])
    assert results["a"]["samples"] != results["base"]["samples"]


def test_merged_folder_stage_matches_its_adapter(workspace, tmp_path):
    from rlvr.export import save_merged

    save_merged(workspace["lora"], workspace["tokenizer"], tmp_path / "merged", dtype="float32")
    cfg = config(workspace["base"], num_samples=1, k=[1], do_sample=False)
    results = compare_stages(cfg, {"adapter": str(workspace["run"] / "final"), "merged": str(tmp_path / "merged")},
                             output_dir=tmp_path)
    assert results["merged"]["model"]["kind"] == "merged"
    assert [s["completion"] for s in results["merged"]["samples"]] == \
        [s["completion"] for s in results["adapter"]["samples"]]


# ---------------------------------------------------------------- report


def test_json_holds_every_stage_with_pass_at_k_intervals(compared, workspace):
    # No output_dir: the first run directory among the stages.
    saved = json.loads((workspace["run"] / "compare.json").read_text())
    assert list(saved) == list(compared)
    for result in saved.values():
        assert set(result["pass_at_k"]) == {"1", "2"}
        for entry in result["pass_at_k"].values():
            low, high = entry["ci95"]
            assert 0.0 <= low <= entry["mean"] <= high <= 1.0
        assert result["config"]["seed"] == 5 and result["problems"] == 3


def test_png_is_a_real_chart(compared, workspace):
    from PIL import Image

    pytest.importorskip("matplotlib")
    path = workspace["run"] / "compare.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 1200 and image.size[1] >= 500


def test_chart_bars_equal_the_table(compared):
    pytest.importorskip("matplotlib")
    from matplotlib.container import BarContainer

    from rlvr.evaluation.chart import comparison_figure

    results = _varied(compared)
    scores, lengths = comparison_figure(results).axes
    bars = [c for c in scores.containers if isinstance(c, BarContainer)]  # the rest are error bars
    assert [c.get_label() for c in bars] == list(results)
    table = comparison_table(results)
    cells = {column.header: list(column.cells) for column in table.columns}
    for row, (stage, container) in enumerate(zip(results, bars)):
        heights = [bar.get_height() for bar in container]
        accuracy, fmt, pass1, pass2 = heights
        r = results[stage]
        assert heights == pytest.approx([r["accuracy"], r["format"], r["pass_at_k"]["1"]["mean"],
                                         r["pass_at_k"]["2"]["mean"]])
        assert cells["accuracy"][row] == f"{100 * accuracy:.1f}%" and cells["format"][row] == f"{100 * fmt:.1f}%"
        assert cells["pass@1 (95% CI)"][row].startswith(f"{pass1:.3f} [")
        assert cells["pass@2 (95% CI)"][row].startswith(f"{pass2:.3f} [")
    assert [bar.get_height() for bar in lengths.containers[0]] == \
        pytest.approx([float(c) for c in cells["mean length"]], abs=0.05)


def _varied(results: dict) -> dict:
    """Distinct, non-zero numbers per stage, so a bar drawn for the wrong stage or metric shows."""
    out = {}
    for i, (stage, r) in enumerate(results.items()):
        p1, p2 = 0.1 + 0.2 * i, 0.2 + 0.25 * i
        out[stage] = {**r, "accuracy": 0.15 + 0.3 * i, "format": 0.9 - 0.2 * i, "mean_length": 10.0 + 7 * i,
                      "pass_at_k": {"1": {"mean": p1, "ci95": [p1 - 0.05, p1 + 0.05]},
                                    "2": {"mean": p2, "ci95": [p2 - 0.1, p2 + 0.1]}}}
    return out


def test_without_matplotlib_json_and_one_warning(compared, tmp_path, monkeypatch, caplog):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        files = write_comparison(compared, tmp_path)
    assert files.png is None and not (tmp_path / "compare.png").exists()
    assert json.loads(files.json.read_text()).keys() == compared.keys()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rlvr[report]" in warnings[0] and "\n" not in warnings[0]


# ---------------------------------------------------------------- CLI


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the stage specs were checked")

    monkeypatch.setattr("rlvr.models.load_model_from_config", refuse)


def test_cli_bad_specs_are_one_line_errors(workspace, tmp_path, capsys, no_model_loads):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {{model_name_or_path: {workspace['base']}}}\n")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    cases = [
        (["--compare", "base"], "expected NAME=MODEL"),
        (["--compare", "a=base,a=base"], "given twice"),
        (["--compare", f"base=base,sft={tmp_path / 'missing'}"], "stage 'sft': folder not found"),
        (["--compare", f"x={tmp_path / 'empty'}"], "stage 'x':"),
        (["--compare", f"x={unfinished}"], "has not finished"),
        (["--compare", "base=base", "--adapter", str(workspace["copy"])], "drop --adapter"),
        (["--output-dir", str(tmp_path)], "--output-dir goes with --compare"),
    ]
    for extra, expected in cases:
        capsys.readouterr()
        assert main(["eval", str(cfg), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("rlvr: error: ") and err.count("\n") == 1 and expected in err, (extra, err)


def test_cli_compare_writes_to_output_dir(workspace, tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"model: {{model_name_or_path: {workspace['base']}, dtype: float32}}\n"
                   "data: {dataset: 'builtin:arithmetic', limit: 8, eval_size: 2}\n"
                   "eval: {max_new_tokens: 4, batch_size: 4, rollout_backend: hf}\n")
    out = tmp_path / "report"
    assert main(["eval", str(cfg), "--compare", f"base=base,grpo={workspace['run']}", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "grpo" in printed and str((out / "compare.json").resolve()) in printed
    assert set(json.loads((out / "compare.json").read_text())) == {"base", "grpo"}
    assert (out / "compare.png").read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------- the demo


def test_demo_reports_its_own_evaluations(compared, tmp_path, monkeypatch, capsys):
    """run_demo with the heavy stages stubbed: its three results go through the comparison report once."""
    import rlvr.models
    import rlvr.pipeline
    from rlvr.demo import run_demo

    calls = []

    def fake_eval(cfg, model, tokenizer, examples, desc="eval"):
        calls.append(desc)
        return {**compared["grpo"], "desc": desc}

    monkeypatch.setattr(rlvr.models, "load_model_from_config", lambda *a, **k: (None, None))
    monkeypatch.setattr(rlvr.pipeline, "build_datasets", lambda cfg: ([{}] * 200, [{}] * 3))
    monkeypatch.setattr(rlvr.pipeline, "run_sft", lambda *a, **k: {})
    monkeypatch.setattr(rlvr.pipeline, "run_grpo", lambda *a, **k: {})
    monkeypatch.setattr(rlvr.pipeline, "run_eval", fake_eval)
    results = run_demo(tmp_path, grpo_steps=1)
    assert calls == ["base", "warm-up", "grpo"]  # no second evaluation for the report
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert list(saved) == ["base", "warm-up", "grpo"] == list(results)
    assert json.loads((tmp_path / "results.json").read_text()) == saved
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert list(timings["stages"]) == ["load", "base eval", "warm-up (SFT)", "warm-up eval", "grpo", "grpo eval",
                                       "report"]
    png = tmp_path / "compare.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert f"chart: {png.resolve()}" in printed and "warm-up" in printed


def test_print_comparison_accepts_compare_results(compared):
    out = io.StringIO()
    from rlvr.evaluation import print_comparison

    print_comparison(compared, console=Console(file=out, width=200))
    assert "grpo-copy" in out.getvalue()
