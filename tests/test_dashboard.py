"""`rlvr dashboard`: run.json from the trainer, the HTTP API (path traversal, half-written and malformed
lines, read-only) and the page itself in a real headless Chromium (charts hold the logged values, a new
metrics line moves them without a reload, the rollout browser shows a step's completions)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import make_model, make_tokenizer

from rlvr.cli import main
from rlvr.config import GRPOConfig
from rlvr.dashboard import make_server
from rlvr.dashboard import server as dashboard_server
from rlvr.grpo.trainer import GRPOTrainer

G = 4
CHROMIUM = os.environ.get("RLVR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def count_a(prompts, completions, **kw):
    return [c[0]["content"].count("a") / max(1, len(c[0]["content"])) for c in completions]


def length(prompts, completions, **kw):
    return [len(c[0]["content"]) / 8 for c in completions]


def dataset(n=16):
    return [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i)} for i in range(n)]


def grpo(run_dir: Path, rewards=(count_a, length), evaluator=None, **kw) -> GRPOTrainer:
    tok = make_tokenizer()
    model = make_model("llama", vocab_size=len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    cfg = GRPOConfig(**{**dict(output_dir=str(run_dir), per_device_train_batch_size=8, num_generations=G,
                               max_completion_length=8, max_steps=3, learning_rate=1e-3, save_steps=100,
                               completions_log_steps=1, warmup_ratio=0.0), **kw})
    return GRPOTrainer(model, tok, list(rewards), dataset(), cfg, show_progress=False, evaluator=evaluator)


class HeldOut:
    """Held-out metrics after steps 2 and 3 (eval_steps 2 and the last step), known in advance."""

    values = {2: {"eval/accuracy": 0.25, "eval/format": 0.5, "eval/pass@4": 0.5, "eval/mean_length": 7.0},
              3: {"eval/accuracy": 0.5, "eval/format": 0.75, "eval/pass@4": 0.75, "eval/mean_length": 6.0}}

    def metric_names(self):
        return list(self.values[2])

    def __call__(self, model, step):
        return self.values[step]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run directory made by a real 3-step GRPO training on the CPU, evaluated after steps 2 and 3."""
    run_dir = tmp_path_factory.mktemp("dash") / "grpo"
    grpo(run_dir, evaluator=HeldOut(), eval_strategy="steps", eval_steps=2).train()
    return run_dir


@contextlib.contextmanager
def serving(*run_dirs, host="127.0.0.1"):
    server = make_server(list(run_dirs), host=host, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def get(server, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url.rstrip("/") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(server, path: str) -> dict:
    status, body = get(server, path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- what the trainer writes


def test_the_trainer_writes_run_json_and_full_samples(trained_run):
    run = json.loads((trained_run / "run.json").read_text())
    assert run["status"] == "finished" and run["step"] == 3 and run["total_steps"] == 3
    assert run["trainer"] == "grpo" and run["model"] and run["started_at"] and run["ended_at"]
    assert {"python", "torch", "transformers", "rlvr"} <= set(run["versions"])
    assert run["config"]["num_generations"] == G
    samples = read_jsonl(trained_run / "samples.jsonl")
    assert {"step", "prompt", "group", "length", "completion", "reward", "rewards", "advantage"} <= set(samples[0])
    assert set(samples[0]["rewards"]) == {"count_a", "length"}
    assert not list(trained_run.glob(".run.json.tmp*"))  # the atomic write left nothing behind


def test_failed_and_interrupted_runs_say_so(tmp_path):
    def broken(prompts, completions, **kw):
        raise ValueError("reward service down")

    with pytest.raises(Exception, match="reward service down"):
        grpo(tmp_path / "failed", rewards=(broken,)).train()
    failed = json.loads((tmp_path / "failed" / "run.json").read_text())
    assert failed["status"] == "failed" and "reward service down" in failed["error"]

    holder = {}

    def stop_after_first(prompts, completions, **kw):
        holder["trainer"].request_stop()  # what Ctrl-C does: finish the step, save, return
        return count_a(prompts, completions)

    holder["trainer"] = grpo(tmp_path / "stopped", rewards=(stop_after_first,))
    holder["trainer"].train()
    stopped = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["step"] == 1


# ---------------------------------------------------------------- the HTTP API


def test_metrics_endpoint_waits_for_half_written_lines_and_skips_malformed_ones(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    metrics.write_text('{"step": 1, "reward": 0.5}\nnot json at all\n[1, 2]\n{"step": 2, "reward": NaN}\n'
                       '{"step": 3, "rew')
    with serving(run) as server:
        first = get_json(server, "/api/runs/0/metrics?offset=0")
        assert [r["step"] for r in first["records"]] == [1, 2]
        assert first["records"][1]["reward"] is None  # NaN would break the page's JSON.parse
        assert first["malformed"] == 2 and not first["more"]
        assert first["offset"] == metrics.read_bytes().index(b'{"step": 3')
        again = get_json(server, f"/api/runs/0/metrics?offset={first['offset']}")
        assert again["records"] == [] and again["offset"] == first["offset"]  # still half a line
        with open(metrics, "a") as f:
            f.write('ard": 0.75}\n')
        done = get_json(server, f"/api/runs/0/metrics?offset={first['offset']}")
        assert done["records"] == [{"step": 3, "reward": 0.75}] and done["malformed"] == 0
        assert done["offset"] == metrics.stat().st_size
        # A file replaced by a shorter one (a new run in the same folder) is read from the start.
        metrics.write_text('{"step": 1, "reward": 0.1}\n')
        reset = get_json(server, f"/api/runs/0/metrics?offset={done['offset']}")
        assert reset["reset"] and reset["records"] == [{"step": 1, "reward": 0.1}]
        assert get(server, "/api/runs/0/metrics?offset=-5")[0] == 400
        assert get(server, "/api/runs/7/metrics")[0] == 404


def test_large_metrics_files_come_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(dashboard_server, "MAX_METRICS_BYTES", 64)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "reward": i / 10}) + "\n" for i in range(20)))
    with serving(run) as server:
        offset, steps, calls = 0, [], 0
        while True:
            calls += 1
            res = get_json(server, f"/api/runs/0/metrics?offset={offset}")
            steps += [r["step"] for r in res["records"]]
            offset = res["offset"]
            if not res["more"]:
                break
        assert steps == list(range(20)) and calls > 2


def test_files_outside_the_run_directory_are_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    (run / "page.html").write_text("<script>alert(1)</script>")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    (run / "escape.txt").symlink_to(secret)
    (run / "escape-dir").symlink_to(tmp_path)
    (run / "sub").mkdir()
    (run / "sub" / "inner.txt").symlink_to(run / "config.yaml")  # a link that stays inside is fine
    with serving(run) as server:
        status, body = get(server, "/runs/0/files/config.yaml")
        assert status == 200 and body == b"model: {}\n"
        assert get(server, "/runs/0/files/sub/inner.txt") == (200, b"model: {}\n")
        status, _ = get(server, "/runs/0/files/page.html")
        assert status == 200
        for path in ("/runs/0/files/../secret.txt", "/runs/0/files/..%2fsecret.txt", "/runs/0/files/%2e%2e/secret.txt",
                     "/runs/0/files/%2E%2E%2Fsecret.txt", "/runs/0/files/sub/..%2f..%2fsecret.txt",
                     f"/runs/0/files/{secret}", f"/runs/0/files//{secret}", f"/runs/0/files/%2f{str(secret)[1:]}",
                     "/runs/0/files/escape.txt", "/runs/0/files/escape-dir/secret.txt",
                     "/runs/0/files/config.yaml%00.txt", "/static/..%2fserver.py", "/static/../server.py",
                     "/static/%2e%2e%2fserver.py", "/runs/0/files/%252e%252e/secret.txt", "/runs/1/files/x",
                     "/runs/0/files/", "/runs/0/files/sub"):
            status, body = get(server, path)
            assert status in (403, 404), (path, status)
            assert b"TOP SECRET" not in body and b"import" not in body, path
        assert get(server, "/runs/0/files/escape.txt")[0] == 403
        assert get(server, "/runs/0/files/..%2fsecret.txt")[0] == 403
        # Never served as HTML: a file of the run must not run script in the dashboard's origin.
        request = urllib.request.Request(server.url + "runs/0/files/page.html")
        with urllib.request.urlopen(request, timeout=10) as r:
            assert "html" not in r.headers["Content-Type"] and r.headers["X-Content-Type-Options"] == "nosniff"


def test_requests_never_write_to_the_run_directory(trained_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "final"))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "rew')  # half a line, as mid-write
    before = snapshot(run)
    os.chmod(run, 0o555)  # the server must not even need to write
    try:
        with serving(run) as server:
            for path in ("/", "/static/app.js", "/static/style.css", "/static/plotly.min.js", "/api/runs",
                         "/api/runs/0/metrics?offset=0", "/api/runs/0/samples", "/api/runs/0/samples/0",
                         "/api/runs/0/samples/999", "/runs/0/files/run.json", "/runs/0/files/../x", "/nope"):
                get(server, path)
    finally:
        os.chmod(run, 0o755)
    assert snapshot(run) == before


def test_runs_and_samples_endpoints(trained_run):
    with serving(trained_run) as server:
        runs = get_json(server, "/api/runs")["runs"]
        assert len(runs) == 1 and runs[0]["name"] == "grpo" and runs[0]["status"] == "finished"
        assert runs[0]["meta"]["versions"]["torch"] and "num_generations" in runs[0]["config_text"]
        assert "metrics.jsonl" in runs[0]["files"]
        steps = get_json(server, "/api/runs/0/samples")["steps"]
        expected = read_jsonl(trained_run / "samples.jsonl")
        assert [s["step"] for s in steps] == sorted({r["step"] for r in expected})
        last = steps[-1]["step"]
        records = get_json(server, f"/api/runs/0/samples/{last}")["samples"]
        assert records == [r for r in expected if r["step"] == last] and len(records) == 2 * G
        assert get(server, "/api/runs/0/samples/12345")[0] == 404


def test_a_folder_of_runs_is_expanded_and_names_stay_unique(trained_run, tmp_path):
    for name in ("a/grpo", "b/grpo"):
        shutil.copytree(trained_run, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints", "final"))
    with serving(tmp_path / "a", tmp_path / "b") as server:
        assert [r["name"] for r in get_json(server, "/api/runs")["runs"]] == ["a/grpo", "b/grpo"]


def test_a_foreign_host_name_is_refused_on_loopback(tmp_path):
    # DNS rebinding: another site's page reaching 127.0.0.1 still sends its own host name.
    with serving(tmp_path) as server:
        port = server.server_address[1]
        assert get(server, "/api/runs", {"Host": f"evil.example:{port}"})[0] == 403
        assert get(server, "/api/runs", {"Host": f"localhost:{port}"})[0] == 200


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    real_find_spec = dashboard_server.importlib.util.find_spec
    monkeypatch.setattr(dashboard_server.importlib.util, "find_spec",
                        lambda name, *a: None if name == "plotly" else real_find_spec(name, *a))
    assert main(["dashboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rlvr[dashboard]" in err


# ---------------------------------------------------------------- the page, in a real browser


def _chart_values(page, chart_id: str) -> list[dict]:
    return page.evaluate(f"""() => {{
        const div = document.getElementById({json.dumps(chart_id)});
        return div && div.data ? div.data.map(t => ({{name: t.name, x: Array.from(t.x), y: Array.from(t.y)}})) : null;
    }}""")


def test_the_page_in_headless_chromium(trained_run, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not found (Debian: apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the test extra)")
    other = tmp_path / "other"
    shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns("checkpoints", "final"))
    metrics = read_jsonl(trained_run / "metrics.jsonl")
    # A second run with other values, so the overlaid traces can be told apart.
    others = [{k: v if k == "step" or not isinstance(v, float) else v * 0.8 for k, v in m.items()} for m in metrics]
    (other / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in others))
    samples = read_jsonl(trained_run / "samples.jsonl")
    shot = Path(os.environ.get("RLVR_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
    with serving(trained_run, other) as server, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "?poll=200")
            page.wait_for_function("() => { const d = document.getElementById('chart-time');"
                                   " return d && d.data && d.data.length >= 6; }", timeout=20_000)

            # Each chart holds the logged values, one trace per run (per series in multi-series charts).
            charts = {"chart-reward": "reward", "chart-reward-fn-count_a": "rewards/count_a/mean",
                      "chart-reward-fn-length": "rewards/length/mean", "chart-reward_std": "reward_std",
                      "chart-frac_reward_zero_std": "frac_reward_zero_std", "chart-entropy": "entropy",
                      "chart-learning_rate": "learning_rate", "chart-grad_norm": "grad_norm",
                      "chart-tokens_per_second": "tokens_per_second", "chart-memory": "memory/peak_gib",
                      "chart-clipped_ratio": "completions/clipped_ratio", "chart-loss": "loss"}
            for chart_id, key in charts.items():
                traces = _chart_values(page, chart_id)
                assert [t["name"] for t in traces] == ["grpo", "other"], chart_id
                for t, logged in zip(traces, (metrics, others)):
                    assert t["x"] == [m["step"] for m in logged], chart_id
                    assert t["y"] == pytest.approx([m[key] for m in logged]), chart_id
            # Held-out evaluations: their lines join the steps that have them (2 and 3), not every step.
            held_out = _chart_values(page, "chart-eval_accuracy")
            assert [t["name"] for t in held_out] == ["grpo · accuracy", "grpo · format", "grpo · pass@4",
                                                     "other · accuracy", "other · format", "other · pass@4"]
            for t, key in zip(held_out, ("eval/accuracy", "eval/format", "eval/pass@4")):
                assert t["x"] == [2, 3] and t["y"] == pytest.approx([HeldOut.values[s][key] for s in (2, 3)])
            assert _chart_values(page, "chart-eval_length")[0]["y"] == pytest.approx([7.0, 6.0])
            lengths = _chart_values(page, "chart-completion_length")
            assert [t["name"] for t in lengths][:3] == ["grpo · mean", "grpo · min", "grpo · max"]
            assert lengths[2]["y"] == pytest.approx([m["completions/max_length"] for m in metrics])
            split = _chart_values(page, "chart-time")
            assert split[1]["y"] == pytest.approx([m["time/score"] for m in metrics])
            assert page.locator(".chip .status.finished").count() == 2

            # The rollout browser shows the latest step's prompts with their G completions each.
            last = max(s["step"] for s in samples)
            expected = [s for s in samples if s["step"] == last]
            page.select_option("#sample-run", label="grpo")
            page.wait_for_function(f"() => document.querySelectorAll('.completion').length === {len(expected)}")
            assert page.locator(".rollout-group").count() == len(expected) // G
            texts = page.locator(".completion-text").all_text_contents()
            assert texts == [s["completion"] for s in expected]
            page.select_option("#sample-sort", "reward-desc")
            first_group = page.locator(".rollout-group").first.locator(".completion")
            shown = [float(first_group.nth(i).get_attribute("data-reward")) for i in range(G)]
            assert shown == sorted(shown, reverse=True)
            page.select_option("#sample-sort", "order")
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")

            # A line appended to metrics.jsonl moves the chart, without a reload; half a line waits.
            page.evaluate("() => { window.notReloaded = true; }")
            step = metrics[-1]["step"] + 1
            with open(other / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "reward": 0.123})[:-4])
                f.flush()
                page.wait_for_timeout(600)
                assert _chart_values(page, "chart-reward")[1]["x"][-1] == step - 1
                f.write('123}\n')
            page.wait_for_function(f"() => document.getElementById('chart-reward').data[1].x.at(-1) === {step}",
                                   timeout=10_000)
            assert _chart_values(page, "chart-reward")[1]["y"][-1] == pytest.approx(0.123)
            assert page.evaluate("() => window.notReloaded") is True
            assert not problems, problems
        finally:
            browser.close()
