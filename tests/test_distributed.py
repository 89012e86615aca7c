"""The distributed layer: index arithmetic, collectives over gloo, FSDP2 and DCP on the CPU, faults.

Multi-process tests start 2 ranks as separate processes (tests/dist_harness.py) on gloo; the
one-process references run in this process through the same code with no process group.
"""

from __future__ import annotations

import math

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
    from dist_workers import make_policy

    from rlvr.distributed.checkpoint import full_trainable_state, load_sharded_state, save_sharded_state

    ctx = DistContext()
    model = make_policy(full_weights=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    opt.step()
    save_sharded_state(tmp_path, model, opt, ctx)
    saved = full_trainable_state(model)
    assert saved and all("lora_" in k for k in saved)  # frozen base weights are not written
    fresh = make_policy(full_weights=False)
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
def two_rank_training(tmp_path_factory):
    """One 2-rank job (tests/dist_workers.py `training`) whose results the next tests check."""
    out = tmp_path_factory.mktemp("training")
    check_all_ok(launch_ranks("training", 2, str(out), timeout=600))
    return out, torch.load(out / "training.pt")


def test_two_ranks_equal_one_rank_with_accumulation_for_every_loss_type(two_rank_training):
    """LoRA replicated on 2 ranks × GA 1 vs 1 process × GA 2: the same adapter after 3 steps."""
    from dist_workers import LOSS_VARIANTS, grpo_steps, make_policy

    _, two = two_rank_training
    start = {k: v.clone() for k, v in make_policy(False).state_dict().items() if "lora_" in k}
    for loss_type, level in LOSS_VARIANTS:
        one = grpo_steps(DistContext(), False, loss_type, level, grad_accum=2)
        _assert_states_close(one, two[f"lora/{loss_type}/{level}"])
        moved = max((one[k] - start[k]).abs().max().item() for k in one)
        assert moved > 1e-3, f"{loss_type}/{level}: the adapter did not move"


def test_fsdp2_full_weights_on_gloo_equal_one_rank_and_resume_on_1_or_2_ranks(two_rank_training):
    """FSDP2 fully_shard per decoder layer works with gloo on the CPU (torch 2.13): 2 ranks × GA 1 equal
    1 process × GA 2 after 3 steps; the DCP checkpoint written by 2 ranks after step 2 resumes on
    1 rank and on 2 ranks to the same final weights."""
    from dist_workers import grpo_steps

    out, two = two_rank_training
    one = grpo_steps(DistContext(), True, "dapo", "token", grad_accum=2)
    _assert_states_close(one, two["fsdp"])
    _assert_states_close(one, two["fsdp/resumed"])
    resumed_on_one = grpo_steps(DistContext(), True, "dapo", "token", grad_accum=2, resume_dir=str(out / "ckpt"))
    _assert_states_close(one, resumed_on_one)


def test_fsdp2_composes_with_activation_checkpointing(two_rank_training):
    """rlvr's layer checkpointing recomputes inside FSDP2's unsharded backward: same weights as 1 rank."""
    from dist_workers import grpo_steps

    _, two = two_rank_training
    one = grpo_steps(DistContext(), True, "grpo", "token", grad_accum=2)
    _assert_states_close(one, two["fsdp/checkpointing"])


def test_fsdp2_shards_decoder_layers_only(two_rank_training):
    _, res = two_rank_training
    assert res["mode"] == "fsdp"
    assert res["sharded"] and all(sharded == (".layers." in name) for name, sharded in res["sharded"].items())


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
