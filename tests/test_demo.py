"""rlvr.demo's stage clock: each stage's wall and process CPU time, as differences of the clocks."""

import json

import rlvr.demo as demo


def test_stage_clock_times_consecutive_stages(monkeypatch, tmp_path, capsys):
    walls = iter([100.0, 103.5, 110.0, 110.0, 110.0])
    cpus = iter([7.0, 8.0, 20.5])
    monkeypatch.setattr(demo.time, "perf_counter", lambda: next(walls))
    monkeypatch.setattr(demo.time, "process_time", lambda: next(cpus))
    clock = demo.StageClock()
    assert clock.end("load") == {"wall_seconds": 3.5, "cpu_seconds": 1.0}
    assert clock.end("sft") == {"wall_seconds": 6.5, "cpu_seconds": 12.5}
    assert clock.total() == {"wall_seconds": 10.0, "cpu_seconds": 13.5}
    clock.write(tmp_path / "timings.json")
    saved = json.loads((tmp_path / "timings.json").read_text())
    assert list(saved["stages"]) == ["load", "sft"] and saved["total"] == clock.total()
    assert "sft: 6.5s wall, 12.5s CPU" in capsys.readouterr().out


def test_demo_precision_is_one_switch_for_both_stages():
    sft, grpo = demo.demo_configs("/tmp/unused")
    assert sft.train.bf16 == grpo.train.bf16 == demo.DEMO_SFT["bf16"] == demo.DEMO_GRPO["bf16"]
    assert sft.train.bf16  # asked for: the core grants it only where the CPU has native bf16


def test_demo_says_what_precision_it_gets(monkeypatch):
    import rlvr.models.precision as precision

    sft, _ = demo.demo_configs("/tmp/unused")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert "fp32" in demo.precision_of(sft.train) and "no native bf16" in demo.precision_of(sft.train)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert demo.precision_of(sft.train).startswith("bf16 autocast")
