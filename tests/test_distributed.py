"""The distributed layer: index arithmetic, collectives over gloo, FSDP2 and DCP on the CPU, faults.

Multi-process tests start 2 ranks as separate processes (tests/dist_harness.py) on gloo; the
one-process references run in this process through the same code with no process group.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from dist_harness import check_all_ok, launch_ranks

from rlvr.distributed.collectives import reduce_metric_values
from rlvr.distributed.context import (
    DistContext,
    backend_for,
    check_same_device_type,
    env_world_size,
    init_distributed,
    pick_device_type,
    set_no_multicast_env,
)
from rlvr.distributed.faults import is_collective_failure
from rlvr.distributed.launch import check_nproc, torchrun_argv, without_nproc
from rlvr.distributed.sharding import (
    check_generation_batch,
    completion_slots,
    rank_micro_batches,
    rank_seed,
    rollout_request,
)
from rlvr.errors import RlvrError

# ---------------------------------------------------------------------------- pure functions


def test_rank_seed_keeps_rank0_and_separates_ranks():
    assert rank_seed(42, 0) == 42  # torchrun with one process draws what the plain run draws
    seeds = [rank_seed(42, r) for r in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [rank_seed(42, r) for r in range(64)]
    assert rank_seed(43, 1) != rank_seed(42, 1)


def test_completion_slots_cover_the_round_once():
    slots = [completion_slots(24, 4, r) for r in range(4)]
    assert [list(s) for s in slots] == [list(range(6 * r, 6 * r + 6)) for r in range(4)]
    with pytest.raises(RlvrError, match="does not split evenly over 5"):
        completion_slots(24, 5, 0)


def test_rollout_request_whole_groups_or_one_row_per_slot():
    assert rollout_request(range(8, 16), 4) == ([2, 3], 4)
    # A group straddling two ranks: each asks for its part, the prompt once per slot.
    assert rollout_request(range(6, 12), 4) == ([1, 1, 2, 2, 2, 2], 1)
    assert rollout_request(range(0, 6), 4) == ([0, 0, 0, 0, 1, 1], 1)


def test_rank_micro_batches_partition_the_step_in_rank_order():
    step = list("abcdef")
    parts = [rank_micro_batches(step, 3, 2, r) for r in range(2)]
    assert parts == [list("abc"), list("def")]
    assert [rank_micro_batches(step, 1, 6, r) for r in range(6)] == [[c] for c in step]
    with pytest.raises(ValueError, match="expected gradient_accumulation_steps × world_size = 4"):
        rank_micro_batches(step, 2, 2, 0)


def test_generation_batch_must_split_into_whole_micro_batches_per_rank():
    check_generation_batch(16, 4, 2)
    with pytest.raises(RlvrError, match=r"generation_batch_size \(12\) is not a multiple of .*4 × 2 = 8"):
        check_generation_batch(12, 4, 2)


def test_reduce_metric_values_per_op():
    ranks = [{"loss": 0.25, "t": 1.0, "lo": 3.0, "m": 1.0, "nan": math.nan},
             {"loss": 0.5, "t": 4.0, "lo": 2.0, "m": 2.0, "only": 7.0, "nan": 5.0}]
    out = reduce_metric_values(ranks, {"loss": "sum", "t": "max", "lo": "min"})
    assert out == {"loss": 0.75, "t": 4.0, "lo": 2.0, "m": 1.5, "nan": 5.0, "only": 7.0}
    with pytest.raises(ValueError, match="must be one of"):
        reduce_metric_values(ranks, {"loss": "median"})


def test_backend_and_device_checks():
    assert backend_for("cpu", nccl_available=False) == "gloo"
    assert backend_for("cuda", nccl_available=True) == "cpu:gloo,cuda:nccl"
    with pytest.raises(RlvrError, match="without NCCL"):
        backend_for("cuda", nccl_available=False)
    with pytest.raises(RlvrError, match="torch sees no GPU"):
        pick_device_type("cuda", cuda_available=False)
    assert pick_device_type(None, cuda_available=False) == "cpu"
    check_same_device_type(["cuda", "cuda"])
    with pytest.raises(RlvrError, match="rank 0: cuda, rank 1: cpu"):
        check_same_device_type(["cuda", "cpu"])


def test_environment():
    assert env_world_size({}) == 1 and env_world_size({"WORLD_SIZE": "8"}) == 8
    with pytest.raises(RlvrError, match="WORLD_SIZE='x'"):
        env_world_size({"WORLD_SIZE": "x"})
    env = {"NCCL_NVLS_ENABLE": "1"}  # the user's choice stays; the missing one is added
    set_no_multicast_env(env)
    assert env == {"NCCL_NVLS_ENABLE": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    ctx = init_distributed(environ={})  # outside torchrun: one process, no group
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main) == (0, 1, None, True)


def test_model_must_sit_on_the_ranks_device():
    from rlvr.distributed.context import check_model_device

    gpu1 = DistContext(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1), backend="nccl")
    check_model_device(gpu1, torch.device("cuda", 1))
    with pytest.raises(RlvrError, match="rank 1: the model is on cuda:0 but this rank trains on cuda:1"):
        check_model_device(gpu1, torch.device("cuda", 0))
    with pytest.raises(RlvrError, match="the model is on cpu"):
        check_model_device(gpu1, torch.device("cpu"))
    check_model_device(DistContext(), torch.device("cpu"))
    # One process without torchrun on a GPU machine: its model on any GPU (load_model puts it on cuda:0).
    one_gpu_process = DistContext(device=torch.device("cuda"))
    for index in (0, 1, None):
        check_model_device(one_gpu_process, torch.device("cuda", index))
    with pytest.raises(RlvrError, match="the model is on cpu"):
        check_model_device(one_gpu_process, torch.device("cpu"))


def test_launcher_argv():
    argv = ["train", "cfg.yaml", "--nproc", "2", "--set", "train.max_steps=3", "--nproc=4"]
    assert without_nproc(argv) == ["train", "cfg.yaml", "--set", "train.max_steps=3"]
    cmd = torchrun_argv(2, ["train", "cfg.yaml"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "rlvr",
                       "train", "cfg.yaml"]
    with pytest.raises(RlvrError, match="inside a torchrun job"):
        check_nproc(2, environ={"RANK": "0", "WORLD_SIZE": "2"}, gpus=0)
    with pytest.raises(RlvrError, match="this machine has 2 GPU"):
        check_nproc(3, environ={}, gpus=2)
    check_nproc(3, environ={}, gpus=0)  # CPU processes: any number


def test_collective_failure_is_recognised():
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:28822.")
    assert is_collective_failure(gloo)
    assert not is_collective_failure(RuntimeError("shape mismatch"))
    assert not is_collective_failure(ValueError("closed by peer"))


def test_sharding_needs_a_layer_list():
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr.distributed.parallel import shard_full_model

    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2,
                                                                 vocab_size=32))  # blocks in .h, not .layers
    with pytest.raises(RlvrError, match="no list of decoder layers to shard with FSDP2; use LoRA"):
        shard_full_model(gpt2, DistContext())


def test_dcp_round_trip_in_one_process(tmp_path):
    from dist_workers import trainer_policy

    from rlvr.distributed.checkpoint import full_trainable_state, load_sharded_state, save_sharded_state

    ctx = DistContext()
    model, _ = trainer_policy(full_weights=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    opt.step()
    save_sharded_state(tmp_path, model, opt, ctx)
    saved = full_trainable_state(model)
    assert saved and all("lora_" in k for k in saved)  # frozen base weights are not written
    fresh, _ = trainer_policy(full_weights=False)
    with torch.no_grad():
        for p in fresh.parameters():
            if p.requires_grad:
                p.zero_()
    fresh_opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=0.1)
    load_sharded_state(tmp_path, fresh, fresh_opt, ctx)
    loaded = full_trainable_state(fresh)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    a, b = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)


# ---------------------------------------------------------------------------- two ranks on gloo


def test_collectives_on_two_ranks(tmp_path):
    check_all_ok(launch_ranks("collectives", 2, str(tmp_path)))
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt")
        assert torch.equal(res["right"], torch.tensor([[1.0, 1.0, -1.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]))
        assert torch.equal(res["left"], torch.tensor([[-1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]))
        assert res["flat"].tolist() == [0, 1, 10, 11, 12]
        assert res["grad_a"].tolist() == [3.0, 3.0, 3.0]  # summed, not averaged
        assert res["grad_b"].tolist() == [[1.0, 1.0], [1.0, 1.0]] and res["grad_b"].dtype == torch.float64
        assert res["broadcast"].tolist() == [0.0] * 4
        assert (res["any_one"], res["any_none"]) == (True, False)
        assert res["sums"] == [2.0, 1.0]
        assert res["metrics"] == {"loss": 0.75, "time/update": 1.0, "n": 1.0, "only_1": 7.0}


def _assert_states_close(a: dict, b: dict, tol: float = 1e-5):
    assert a.keys() == b.keys() and a
    for k in a:
        diff = (a[k].float() - b[k].float()).abs().max().item()
        assert diff <= tol, f"{k}: max difference {diff}"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank job (tests/dist_workers.py `trainers`) whose results the next tests check."""
    out = tmp_path_factory.mktemp("trainers")
    check_all_ok(launch_ranks("trainers", 2, str(out), timeout=900))
    return out, torch.load(out / "trainers.pt")


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """The same runs in this process, one rank with gradient accumulation 2 (the same global batch)."""
    from dist_workers import GRPO_VARIANTS, grpo_trainer_run, sft_trainer_run

    out, ctx = tmp_path_factory.mktemp("one-rank"), DistContext()
    res = {name: grpo_trainer_run(ctx, str(out / name), 2, **kw) for name, kw in GRPO_VARIANTS.items()}
    res["sft"] = sft_trainer_run(ctx, str(out / "sft"), 2)
    res["fsdp"] = grpo_trainer_run(ctx, str(out / "fsdp"), 2, full_weights=True)
    return res


@pytest.mark.parametrize("variant", ["grpo", "bnpo", "dr_grpo", "dapo", "gspo", "filter_groups"])
def test_grpo_on_two_ranks_equals_one_rank_with_accumulation(variant, two_ranks, one_rank):
    """LoRA, 2 ranks × GA 1 vs 1 process × GA 2, 3 steps of 2 iterations per round: the same adapter,
    for each loss type (dapo with β·KL), GSPO, and dynamic sampling (rounds drawn from several batches)."""
    from dist_workers import trainer_policy

    start = {k: v for k, v in trainer_policy(False)[0].state_dict().items() if "lora_" in k}
    _, two = two_ranks
    _assert_states_close(one_rank[variant], two[variant])
    moved = max((one_rank[variant][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3, "the adapter did not move"


def test_sft_on_two_ranks_equals_one_rank_with_accumulation(two_ranks, one_rank):
    _assert_states_close(one_rank["sft"], two_ranks[1]["sft"])


def test_full_fine_tuning_under_fsdp2_on_gloo(two_ranks, one_rank):
    """FSDP2 fully_shard per decoder layer works with gloo on the CPU (torch 2.13): the same weights as one
    process, with and without activation checkpointing; its checkpoints are DCP shards."""
    out, two = two_ranks
    _assert_states_close(one_rank["fsdp"], two["fsdp"])
    _assert_states_close(one_rank["fsdp"], two["fsdp/checkpointing"])
    assert (out / "fsdp" / "checkpoints" / "step-000001" / "dcp" / ".metadata").is_file()
    assert not (out / "fsdp" / "checkpoints" / "step-000001" / "model").exists()


@pytest.mark.parametrize("name", ["dapo", "fsdp"])
def test_two_rank_run_resumes_on_one_and_on_two_ranks(name, two_ranks, tmp_path):
    """From the checkpoint after step 1 (inside a round: the round's tensors are in it) to step 3, on 2 ranks
    and on 1 rank (GA 2): the uninterrupted run's final weights."""
    import shutil

    from dist_workers import GRPO_VARIANTS, grpo_trainer_run

    out, two = two_ranks
    _assert_states_close(two[name], two[f"{name}/resumed"])
    shutil.copytree(out / name, tmp_path / name)
    settings = GRPO_VARIANTS["dapo"] if name == "dapo" else {}
    resumed = grpo_trainer_run(DistContext(), str(tmp_path / name), 2, full_weights=name == "fsdp",
                               resume=str(tmp_path / name / "checkpoints" / "step-000001"), **settings)
    _assert_states_close(two[name], resumed)


def test_a_rank_killed_mid_run_stops_the_other_and_the_checkpoint_stays_loadable(two_ranks, tmp_path):
    """Rank 1 is killed while scoring step 3's round: rank 0 exits 2 with one line naming rank 1; the
    checkpoint of step 2 is `latest`, and resuming it (on 1 rank) ends where the uninterrupted run did."""
    from dist_workers import GRPO_VARIANTS, grpo_trainer_run

    run = tmp_path / "run"
    survivor, killed = launch_ranks("killed_mid_run", 2, str(run), timeout=600, env={"RLVR_TEST_TIMEOUT": "60"})
    assert killed.returncode == -9
    assert survivor.returncode == 2, survivor.stderr[-2000:]
    assert survivor.stderr.strip().splitlines()[-1].startswith("rank 0: rank 1 died or stopped answering")
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    resumed = grpo_trainer_run(DistContext(), str(run), 2, resume="latest", **GRPO_VARIANTS["dapo"])
    _assert_states_close(two_ranks[1]["dapo"], resumed)


def test_rank0_alone_writes_the_run_directory(two_ranks):
    out, _ = two_ranks
    run = json.loads((out / "dapo" / "run.json").read_text())
    assert (run["status"], run["world_size"], len(run["devices"])) == ("finished", 2, 2)
    assert [json.loads(line)["step"] for line in open(out / "dapo" / "metrics.jsonl")] == [1, 2, 3]
    assert sorted(p.name for p in (out / "dapo" / "checkpoints").iterdir()) == [
        "latest", "step-000001", "step-000002", "step-000003"]


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failed_rank_stops_the_others_with_one_line_naming_it(how):
    results = launch_ranks("fail_on_rank", 2, how, "1", timeout=90, env={"RLVR_TEST_TIMEOUT": "30"})
    survivor, failed = results
    assert failed.returncode != 0 and survivor.returncode == 2
    line = survivor.stderr.strip().splitlines()[-1]
    if how == "raise":
        assert line.startswith("rank 0: rank 1 failed: reward function 'boom' raised ValueError at step 2")
        assert failed.stderr.strip().splitlines()[-1] == "rank 1: reward function 'boom' raised ValueError at step 2"
    else:
        assert failed.returncode == -9
        assert line.startswith("rank 0: rank 1 died or stopped answering")


def test_mixed_device_types_are_refused_on_every_rank():
    results = launch_ranks("device_mix", 2)
    for r in results:
        assert r.returncode == 2
        assert "ranks run on different device types (rank 0: cpu, rank 1: cuda)" in r.stderr.splitlines()[-1]


def test_rlvr_train_nproc_2_runs_under_torchrun(tmp_path):
    """`rlvr train CONFIG --nproc 2` execs torchrun; two ranks train a tiny model from a folder with the
    transformers.generate rollout; rank 0 alone prints the result and writes the run directory."""
    import subprocess
    import sys

    import yaml
    from conftest import make_model, make_tokenizer
    from dist_harness import ROOT

    tok = make_tokenizer()
    make_model("llama", vocab_size=len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    config = {"model": {"model_name_or_path": str(tmp_path / "model"), "dtype": "float32", "lora_rank": 4},
              "data": {"dataset": "builtin:arithmetic", "limit": 16, "eval_size": 4}, "rewards": ["gsm8k"],
              "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "num_generations": 2,
                        "per_device_train_batch_size": 2, "max_completion_length": 6, "rollout_backend": "hf",
                        "optim": "adamw_torch", "save_steps": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RLVR_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "rlvr", "train", str(tmp_path / "run.yaml"), "--nproc", "2"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in results] == [2]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["status"], run["world_size"]) == ("finished", 2)
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()


def test_generation_batch_counts_the_world_size(monkeypatch):
    from rlvr.config import GRPOConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = GRPOConfig(per_device_train_batch_size=4, num_generations=8, gradient_accumulation_steps=3)
    cfg.validate()  # 4 × 2 × 3 = 24 completions: 3 groups of 8, though 4 per rank is half a group
    assert (cfg.resolved_generation_batch_size, cfg.resolved_steps_per_generation) == (24, 3)
    explicit = GRPOConfig(per_device_train_batch_size=4, num_generations=4, generation_batch_size=16)
    explicit.validate()
    assert explicit.resolved_steps_per_generation == 2
    with pytest.raises(RlvrError, match=r"generation_batch_size \(12\) is not a multiple of .*4 × 2 = 8"):
        GRPOConfig(per_device_train_batch_size=4, num_generations=4, generation_batch_size=12).validate()


def test_resume_check_compares_the_whole_jobs_accumulation():
    from rlvr.train.session import math_differences, per_step_batch

    two_ranks = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "steps_per_generation": 2}
    one_rank = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "steps_per_generation": 4}
    assert math_differences(per_step_batch(two_ranks, 2), per_step_batch(one_rank, 1)) == []
    assert math_differences(per_step_batch(two_ranks, 2), per_step_batch(two_ranks, 1)) == [
        "gradient_accumulation_steps: 2 → 1", "steps_per_generation: 4 → 2"]
