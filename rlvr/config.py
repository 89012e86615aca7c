"""Configs: dataclasses with TRL's field names, loaded from YAML and validated up front.

A run config has sections `model`, `data`, `rewards`, `train` (GRPOConfig or SFTConfig) and `eval`.
Every problem is reported as one RlvrError line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlvr.errors import RlvrError, nearest

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# One tuple of allowed values per option: validation below and the code that branches on the option
# both use it. loss_type's choices are the keys of rlvr/grpo/objective.py's AGGREGATIONS table and
# vllm_importance_sampling_mode's its TIS_MODES; data.answer_format's the keys of rlvr/data/columns.py's
# ANSWER_FORMATS.
ALL_LINEAR = "all-linear"  # every Linear layer but the output head (peft's and TRL's spelling)
REPORT_TO = ("none", "tensorboard", "wandb", "trackio")  # trackers beside metrics.jsonl (rlvr/train/trackers.py)
DTYPES = ("auto", "float32", "float16", "bfloat16")
OPTIMIZERS = ("adamw_8bit", "adamw_torch", "paged_adamw_8bit", "adamw")
LR_SCHEDULERS = ("cosine", "linear", "constant")
CHECKPOINTING_MODES = (False, True, "offload")
ROLLOUT_BACKENDS = ("auto", "hf", "native")
ROLLOUT_MERGE_LORA = (None, True, False, "attention")
SCALE_REWARDS = ("group", "batch", "none", True, False)
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
REWARD_ERRORS = ("raise", "skip")
ROLLOUT_DTYPES = ("auto", "bfloat16", "float16", "fp8")  # train.rollout_dtype: the native decode step's matrices
EVAL_STRATEGIES = ("no", "steps", "epoch")  # train.eval_strategy (transformers' IntervalStrategy values)


@dataclass
class ModelConfig:
    """Which model to load and how to adapt it."""

    model_name_or_path: str = "smollm2-135m-instruct"  # hub id, local folder, .gguf file, or the bundled demo name
    gguf_file: str | None = None  # GGUF file name inside model_name_or_path, when that is a folder
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16 (auto: bf16 on CUDA, fp32 on CPU)
    use_lora: bool = True  # False = full fine-tuning
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # Leaf module names, or 'all-linear'; where the default names do not fit the model's layout
    # (fused qkv_proj, GPT-NeoX) every Linear layer is adapted, with a warning (models/lora_targets.py).
    lora_target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    # Parameters adapted as parameters (peft's target_parameters, TRL's name): None = a mixture of experts'
    # stacked expert weights (experts.gate_up_proj, experts.down_proj), router frozen; [] = none; name the
    # router (mlp.gate.weight, gpt-oss mlp.router.weight) to adapt it too (models/lora_targets.py)
    lora_target_parameters: list[str] | None = None
    adapter_path: str | None = None  # start from a saved LoRA adapter (e.g. the SFT warm-up's)
    load_in_4bit: bool = False  # QLoRA through bitsandbytes NF4 (CUDA only)
    # The frozen base's decoder Linear layers in float8 e4m3 with a scale per row (LoRA stays 16/32-bit):
    # half the bytes of bf16; matmuls on FP8 tensor cores where the GPU has them (models/fp8.py).
    load_in_fp8: bool = False
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False

    def validate(self) -> None:
        _choice("model.dtype", self.dtype, DTYPES)
        if self.use_lora and self.lora_rank < 1:
            raise RlvrError(f"model.lora_rank must be >= 1, got {self.lora_rank}; set e.g. lora_rank: 16")
        if isinstance(self.lora_target_modules, str) and self.lora_target_modules != ALL_LINEAR:
            raise RlvrError(f"model.lora_target_modules: {self.lora_target_modules!r} is not a list of module "
                            f"names; give a list like [q_proj, v_proj] or '{ALL_LINEAR}'")
        check_base_quantization(self.load_in_4bit, self.load_in_fp8, self.use_lora)


def check_base_quantization(load_in_4bit: bool, load_in_fp8: bool, use_lora: bool) -> None:
    """A quantised base is frozen (LoRA trains on it), and it is NF4 or FP8, not both."""
    if load_in_fp8 and load_in_4bit:
        raise RlvrError("model.load_in_fp8 and model.load_in_4bit are both set; choose one (FP8: 1 byte per "
                        "weight, NF4: half a byte)")
    if load_in_fp8 and not use_lora:
        raise RlvrError("model.load_in_fp8 stores a frozen base for LoRA, but use_lora is false (full "
                        "fine-tuning trains every weight); set use_lora: true or load_in_fp8: false")


@dataclass
class DataConfig:
    """Where the prompts and their verifiable answers come from."""

    dataset: str = "builtin:arithmetic"  # builtin:arithmetic | gsm8k file/hub id | any jsonl/parquet/csv/hub set
    split: str = "train"
    subset: str | None = None
    prompt_column: str = "question"
    answer_column: str = "answer"
    answer_format: str = "raw"  # raw | gsm8k (ground truth after '####', commas removed)
    completion_column: str | None = None  # SFT target text; gsm8k and builtin sets make their own
    system_prompt: str | None = None  # None = ask for <reasoning>/<answer> with the tags below
    reasoning_tag: str = "reasoning"
    answer_tag: str = "answer"
    limit: int | None = None  # use at most this many training examples
    eval_dataset: str | None = None  # held-out set; None = builtin held-out split or the last eval_size rows
    eval_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        from rlvr.data.columns import ANSWER_FORMATS

        _choice("data.answer_format", self.answer_format, tuple(ANSWER_FORMATS))
        if self.eval_size < 0:
            raise RlvrError(f"data.eval_size must be >= 0, got {self.eval_size}")


@dataclass
class TrainerCoreConfig:
    """The settings of the trainer core (rlvr/train/: optimizer, schedule, clipping, precision, run
    directory, checkpoints) that every trainer's config extends: TRL's (TrainingArguments') names,
    declared once here with TrainingArguments' defaults; each trainer's own defaults are set with
    `@trainer_defaults` (GRPOConfig, SFTConfig, the preference configs)."""

    output_dir: str = "runs/train"
    seed: int = 42
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 8  # rows per micro-batch: GRPO completions, SFT examples, pairs (KTO: examples)
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: int = -1  # optimizer steps; -1 = num_train_epochs over the data
    optim: str = "adamw_torch"  # rlvr: TrainingArguments' adamw_torch_fused is the same update, fused on CUDA;
    # adamw_8bit runs adamw_torch (with a warning, recorded in config.yaml) without bitsandbytes on CUDA
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    max_nonfinite_steps: int = 5  # rlvr: stop after this many optimizer steps in a row with a NaN/inf loss or gradient
    gradient_checkpointing: bool | str = False  # false | true | offload (layer inputs kept in pinned CPU memory)
    bf16: bool = False  # autocast forward passes to bfloat16 where the device has native bf16 (CUDA, AVX512-BF16/AMX)
    logprob_chunk_elements: int = 1 << 26  # rlvr: fp32 logits alive at once in the chunked log-prob path
    logging_steps: int = 500
    save_steps: int = 500
    save_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest"
    overwrite_output_dir: bool = False  # start over in an output_dir that holds a run (else refused)
    report_to: str = "none"  # none | tensorboard | wandb | trackio, besides metrics.jsonl
    ddp_timeout: int = 1800  # seconds a rank waits for the others in a collective before the job stops
    # Held-out evaluation while training and the best checkpoint (TrainingArguments' names; the trainer core
    # runs it: rlvr/train/periodic_eval.py); what is evaluated and how is the run config's `eval` section.
    eval_strategy: str = "no"  # no | steps (every eval_steps) | epoch (after each epoch); also after the last step
    eval_steps: int | float | None = None  # optimizer steps between evaluations (a float < 1: that share of the
    # run's steps, as in transformers); None = logging_steps
    eval_on_start: bool = False  # evaluate the starting model too, as step 0
    # rlvr: transformers' default is None (the loss); 'accuracy' means 'eval/accuracy'
    metric_for_best_model: str = "eval/accuracy"  # the metric best/ follows
    greater_is_better: bool | None = None  # None: True unless the metric's name ends in 'loss' (transformers' rule)
    load_best_model_at_end: bool = False  # at the end, load best/ back into the model, so final/ is the best

    def validate(self) -> None:
        _choice("train.report_to", self.report_to, REPORT_TO)
        _check_max_steps(self.max_steps)
        for name in ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "logprob_chunk_elements"):
            if getattr(self, name) <= 0:
                raise RlvrError(f"train.{name} must be > 0, got {getattr(self, name)}")
        _validate_update(self)


def trainer_defaults(**defaults: Any):
    """Class decorator, placed under @dataclass: a trainer config's own defaults for fields its base
    declares (a field's type and meaning stay declared once, in the base).

    >>> @dataclass
    ... @trainer_defaults(learning_rate=1e-3)
    ... class Mine(TrainerCoreConfig):
    ...     pass
    >>> Mine().learning_rate, [f.name for f in dataclasses.fields(Mine)][:3]
    (0.001, ['output_dir', 'seed', 'learning_rate'])
    """
    def apply(cls: type) -> type:
        declared = {}
        for base in reversed(cls.__mro__[1:]):
            if dataclasses.is_dataclass(base):
                declared.update(typing.get_type_hints(base))
        own = dict(inspect.get_annotations(cls))
        for name, value in defaults.items():
            if name not in declared or name in own:
                raise TypeError(f"{cls.__name__}: {name} is not a field declared by a base config")
            own[name] = declared[name]
            setattr(cls, name, value)
        cls.__annotations__ = own
        return cls

    return apply


@dataclass
@trainer_defaults(output_dir="runs/grpo", learning_rate=5e-6, num_train_epochs=1.0, optim="adamw_8bit",
                  adam_beta2=0.99, weight_decay=0.1, max_grad_norm=0.1, lr_scheduler_type="cosine",
                  warmup_ratio=0.1, logging_steps=1, save_steps=50, save_total_limit=2)
class GRPOConfig(TrainerCoreConfig):
    """GRPO training settings; names and defaults follow TRL's GRPOConfig (semantics §1–§8)."""

    steps_per_generation: int | None = None
    generation_batch_size: int | None = None
    num_generations: int = 8
    num_iterations: int = 1
    max_prompt_length: int | None = 512
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop_strings: list[str] = field(default_factory=list)
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    loss_type: str = "dapo"
    scale_rewards: str | bool = "group"
    importance_sampling_level: str = "token"
    mask_truncated_completions: bool = False
    reward_weights: list[float] | None = None
    reward_errors: str = "raise"  # raise | skip
    # rlvr: scale each reward's weight by 1 − (the share of the round's completions at that reward's best), so a
    # saturated reward (a learned format) stops outweighing the ones still being learned (grpo/advantages.py)
    reward_saturation_scaling: bool = False
    # Dynamic sampling (DAPO; verl's names): draw generation batches until the round holds prompts_per_round
    # groups whose filter_groups_metric differs within the group (at most max_num_gen_batches draws; groups
    # without variance fill the rest), so every trained group teaches something (grpo/dynamic_sampling.py)
    filter_groups: bool = False
    filter_groups_metric: str = "reward"  # reward (the weighted total) or a reward function's name, e.g. correctness
    max_num_gen_batches: int = 4  # generation batches a round may draw, the first included
    # Guards: one warning line each from the logged metrics (rlvr/train/guards.py); 0 turns one off
    guard_length_collapse: float = 0.5  # mean completion length (rollouts or held-out) ends below this × its start
    guard_format_only: float = 0.1  # held-out format saturates while accuracy gains less than this × format's gain
    vllm_importance_sampling_correction: bool = True  # TIS, when the rollout engine reports log-probs
    vllm_importance_sampling_mode: str = "token_truncate"
    vllm_importance_sampling_cap: float = 2.0
    router_aux_loss_coef: float | None = None  # mixture of experts: weight of the router's load-balancing loss
    # added to the objective, as TRL adds it; None = the model config's own (0.001 for Qwen3-MoE, Mixtral,
    # gpt-oss), 0 = off; a non-zero value on a model without a router is refused (rlvr/models/moe.py)
    micro_batch_token_budget: int | None = None  # split micro-batches into pieces of at most this many padded
    # tokens (rows × longest row), rows sorted by length; the loss is the same however a step is split
    rollout_backend: str = "auto"  # auto (native on CUDA, hf elsewhere) | native | hf
    rollout_merge_lora: bool | str | None = None  # native: fold LoRA into a per-round copy (faster, more
    # memory); None = on CUDA only. "attention": copy q/k/v/o only (an eighth of the memory), MLP adapters as
    # fused matmuls. False applies adapters as extra matmuls: no copy, peak memory of the weights alone.
    rollout_dtype: str = "auto"  # native: what the decode step's matrices are in. auto = the model's (compute)
    # dtype; bfloat16 | float16: a per-round cast copy; fp8: per-round e4m3 copies with row scales (GPUs of
    # compute capability >= 8.9; bf16 elsewhere, with a warning), the log-prob gap corrected by TIS
    log_completions: bool = True
    completions_log_steps: int = 10  # write sample completions every N steps

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise RlvrError(
                f"train.num_generations must be >= 2 (group-relative advantages need a group), "
                f"got {self.num_generations}; set num_generations: 8"
            )
        if self.steps_per_generation is not None and self.generation_batch_size is not None:
            raise RlvrError(
                "train.steps_per_generation and train.generation_batch_size are both set; "
                "set only one (generation_batch_size = per_device_train_batch_size × steps_per_generation)"
            )
        if self.generation_batch_size is not None:
            from rlvr.distributed.sharding import check_generation_batch

            check_generation_batch(self.generation_batch_size, self.per_device_train_batch_size, self.world_size)
        gen = self.resolved_generation_batch_size
        if gen % self.num_generations:
            raise RlvrError(
                f"train: the generation batch ({gen} completions = per_device_train_batch_size × world size × "
                f"steps_per_generation) is not divisible by num_generations ({self.num_generations}); "
                f"make per_device_train_batch_size a multiple of num_generations"
            )
        from rlvr.grpo.objective import AGGREGATIONS, TIS_MODES

        _choice("train.loss_type", self.loss_type, tuple(AGGREGATIONS))
        _choice("train.scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _choice("train.importance_sampling_level", self.importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
        _choice("train.reward_errors", self.reward_errors, REWARD_ERRORS)
        _choice("train.vllm_importance_sampling_mode", self.vllm_importance_sampling_mode, TIS_MODES)
        _choice("train.rollout_backend", self.rollout_backend, ROLLOUT_BACKENDS)
        _choice("train.rollout_merge_lora", self.rollout_merge_lora, ROLLOUT_MERGE_LORA)
        _choice("train.rollout_dtype", self.rollout_dtype, ROLLOUT_DTYPES)
        if self.micro_batch_token_budget is not None and self.micro_batch_token_budget <= 0:
            raise RlvrError(f"train.micro_batch_token_budget must be > 0 (or null), "
                            f"got {self.micro_batch_token_budget}")
        for name in ("temperature", "max_completion_length", "num_iterations", "completions_log_steps"):
            if getattr(self, name) <= 0:
                raise RlvrError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.router_aux_loss_coef is not None and self.router_aux_loss_coef < 0:
            raise RlvrError(f"train.router_aux_loss_coef must be >= 0 (or null for the model's own), "
                            f"got {self.router_aux_loss_coef}")
        if self.delta is not None and self.delta <= 1:
            raise RlvrError(f"train.delta must be > 1 (it caps the unclipped ratio), got {self.delta}")
        if self.max_num_gen_batches < 1:
            raise RlvrError(f"train.max_num_gen_batches must be >= 1 (the first generation batch counts), "
                            f"got {self.max_num_gen_batches}")
        if not 0 <= self.guard_length_collapse < 1:
            raise RlvrError(f"train.guard_length_collapse must be in [0, 1) (a share of the starting length; 0 = off), "
                            f"got {self.guard_length_collapse}")
        if self.guard_format_only < 0:
            raise RlvrError(f"train.guard_format_only must be >= 0 (0 = off), got {self.guard_format_only}")

    @property
    def world_size(self) -> int:
        """Processes of the job (torchrun's WORLD_SIZE; 1 without torchrun): part of the batch arithmetic."""
        from rlvr.distributed.context import env_world_size

        return env_world_size()

    @property
    def resolved_steps_per_generation(self) -> int:
        if self.generation_batch_size is not None:
            return self.generation_batch_size // (self.per_device_train_batch_size * self.world_size)
        return self.steps_per_generation or self.gradient_accumulation_steps

    @property
    def resolved_generation_batch_size(self) -> int:
        """per_device_train_batch_size × world_size × steps_per_generation (semantics §1)."""
        return self.per_device_train_batch_size * self.world_size * self.resolved_steps_per_generation


@dataclass
@trainer_defaults(output_dir="runs/sft", learning_rate=2e-4, num_train_epochs=1.0, warmup_ratio=0.03,
                  logging_steps=1, save_steps=100, save_total_limit=2)
class SFTConfig(TrainerCoreConfig):
    """Supervised warm-up on the assistant's tokens only."""

    max_length: int = 1024

    def validate(self) -> None:
        super().validate()
        if self.max_length <= 0:
            raise RlvrError(f"train.max_length must be > 0, got {self.max_length}")


def _validate_update(args) -> None:
    """The settings of the shared trainer core (rlvr/train/update.py, session.py)."""
    _choice("train.optim", args.optim, OPTIMIZERS)
    _choice("train.lr_scheduler_type", args.lr_scheduler_type, LR_SCHEDULERS)
    args.gradient_checkpointing = _checkpoint_mode(args.gradient_checkpointing)
    for name in ("max_nonfinite_steps", "save_steps", "logging_steps", "ddp_timeout"):
        if getattr(args, name) < 1:
            raise RlvrError(f"train.{name} must be > 0, got {getattr(args, name)}")
    _validate_eval_schedule(args)


def _validate_eval_schedule(args: TrainerCoreConfig) -> None:
    _choice("train.eval_strategy", args.eval_strategy, EVAL_STRATEGIES)
    steps = args.eval_steps
    if steps is not None and (steps <= 0 or (steps >= 1 and float(steps) != int(steps))):
        raise RlvrError(f"train.eval_steps must be a whole number of steps >= 1, or a share of the run in (0, 1), "
                        f"got {steps}")
    if args.load_best_model_at_end and args.eval_strategy == "no":
        raise RlvrError("train.load_best_model_at_end needs evaluations to choose from; set eval_strategy: steps "
                        "(with eval_steps) or epoch")
    if not args.metric_for_best_model or not args.metric_for_best_model.strip("/"):
        raise RlvrError("train.metric_for_best_model is empty; name an evaluation metric, e.g. eval/accuracy")


def _check_max_steps(max_steps: int) -> None:
    # TRL (and transformers' Trainer) read any max_steps <= 0 as "train num_train_epochs"; only -1 says so
    # on purpose, so 0 (or -5) is taken for the mistake it almost always is.
    if max_steps == 0 or max_steps < -1:
        raise RlvrError(f"train.max_steps: {max_steps} is not a number of steps; set a positive number of "
                        "optimizer steps, or -1 to train for num_train_epochs")


def _checkpoint_mode(value: bool | str) -> bool | str:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value not in CHECKPOINTING_MODES:
        raise RlvrError(f"train.gradient_checkpointing: {value!r} is not one of false, true, offload"
                        f"{nearest(str(value), ['offload'])}")
    return value


@dataclass
class EvalConfig:
    """Evaluation: the same problems, seed and sampling for every model compared."""

    num_samples: int = 1  # n completions per problem (pass@k needs n >= k)
    k: list[int] = field(default_factory=lambda: [1])
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = False  # greedy by default; sampling when num_samples > 1
    max_new_tokens: int = 256
    batch_size: int = 64
    rollout_backend: str = "auto"  # auto (native on CUDA, hf elsewhere) | native | hf
    seed: int = 1234
    limit: int | None = None
    output: str | None = None  # JSON result path

    def validate(self) -> None:
        if any(k < 1 or k > self.num_samples for k in self.k):
            raise RlvrError(f"eval.k must be in 1..num_samples ({self.num_samples}), got {self.k}")
        _choice("eval.rollout_backend", self.rollout_backend, ROLLOUT_BACKENDS)
        if self.num_samples > 1 and not self.do_sample:
            raise RlvrError("eval.num_samples > 1 needs do_sample: true (greedy samples are all identical)")


@dataclass
class RewardWeighting:
    """What a command that trains nothing (`rlvr eval`, `rlvr export`) reads of the train section: the
    weights GRPO combined the rewards with (GRPOConfig.reward_weights), so evaluation weighs them as
    training did. The section's other settings belong to whichever trainer it configures."""

    reward_weights: list[float] | None = None

    def validate(self) -> None:
        pass


@dataclass
class RunConfig:
    """A whole run, as one YAML file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rewards: list[str] = field(default_factory=lambda: ["gsm8k"])
    train: Any = None  # GRPOConfig, SFTConfig, a preference config, by command; RewardWeighting for eval
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        for part in (self.model, self.data, self.train, self.eval):
            if part is not None:
                part.validate()
        if not self.rewards:
            raise RlvrError("rewards: the list is empty; name at least one reward, e.g. rewards: [gsm8k]")


# ---------------------------------------------------------------- loading


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise RlvrError(f"{key}: {value!r} is not one of {names}{nearest(str(value), [str(a) for a in allowed])}")


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def build(cls: type, values: dict | None, section: str) -> Any:
    """Make `cls` from a dict, refusing unknown keys and wrong types with a one-line error."""
    values = values or {}
    if not isinstance(values, dict):
        raise RlvrError(f"{section}: expected a mapping of settings, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise RlvrError(f"{section}.{key}: unknown setting{nearest(key, names)}")
        if isinstance(value, float) and hints[key] is int and value.is_integer():
            value = int(value)
        if isinstance(value, str) and _type_ok(1.0, hints[key]) and not _type_ok(value, hints[key]):
            try:  # YAML reads 5e-6 as a string; accept numbers written that way.
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, hints[key]):
            raise RlvrError(
                f"{section}.{key}: expected {_type_name(hints[key])}, got {type(value).__name__} {value!r}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def load_run_config(path: str | Path, train_cls: type | None = GRPOConfig,
                    overrides: dict | None = None) -> RunConfig:
    """Read a YAML run config; `overrides` (section → {key: value}) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise RlvrError(f"config file not found: {path}; pass the path to a YAML file (see examples/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise RlvrError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise RlvrError(f"{path}: the top level must be a mapping with model/data/rewards/train/eval sections")
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(raw.get(section, {}), dict):
            raw.setdefault(section, {}).update(values)
        else:  # a top-level setting such as `rewards`, or a section the file got wrong: replaced whole
            raw[section] = values
    return config_from_dict(raw, train_cls, where=str(path))


def config_from_dict(raw: dict, train_cls: type | None = GRPOConfig, where: str = "config") -> RunConfig:
    sections = ("model", "data", "rewards", "train", "eval")
    for key in raw:
        if key not in sections:
            raise RlvrError(
                f"{where}: unknown section '{key}'{nearest(key, sections)}; sections are {', '.join(sections)}")
    rewards = raw.get("rewards", ["gsm8k"])
    if isinstance(rewards, str):
        rewards = [rewards]
    if not isinstance(rewards, list) or not all(isinstance(r, str) for r in rewards):
        raise RlvrError(f"{where}: rewards must be a list of names, e.g. [gsm8k] or [my_module:my_reward]")
    cfg = RunConfig(
        model=build(ModelConfig, raw.get("model"), "model"),
        data=build(DataConfig, raw.get("data"), "data"),
        rewards=rewards,
        train=build(train_cls, raw.get("train"), "train") if train_cls else _reward_weighting(raw.get("train")),
        eval=build(EvalConfig, raw.get("eval"), "eval"),
    )
    cfg.validate()
    return cfg


def _reward_weighting(train: Any) -> RewardWeighting:
    keep = {"reward_weights": train["reward_weights"]} if isinstance(train, dict) and "reward_weights" in train else {}
    return build(RewardWeighting, keep, "train")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
