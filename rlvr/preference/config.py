"""Configs of the preference trainers: DPOConfig, CPOConfig (SimPO), ORPOConfig, KTOConfig.

Field names and defaults are TRL 1.16's (trl/trainer/dpo_config.py, kto_config.py,
trl/experimental/cpo/cpo_config.py, orpo/orpo_config.py, and TrainingArguments for the loop), apart
from the ones marked "rlvr:". They are the `train` section of `rlvr dpo|cpo|orpo|kto CONFIG.yaml`,
loaded and checked like SFTConfig (`rlvr.config.load_run_config(path, DPOConfig)`).

TRL settings rlvr does not implement are not fields, so a config that sets one is refused by name:
ld_alpha, use_weighting, sync_ref_model, padding_free, precompute_ref_log_probs (rlvr always
computes the reference log-probs once, before the first step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlvr.config import REPORT_TO, EvalDuringTraining, _choice, _validate_update
from rlvr.errors import RlvrError
from rlvr.preference.losses import (
    CPO_LOSS_TYPES,
    DPO_LOSS_TYPES,
    F_DIVERGENCE_LOSS_TYPES,
    F_DIVERGENCE_TYPES,
    KTO_LOSS_TYPES,
)


@dataclass
class PreferenceTrainingConfig(EvalDuringTraining):
    """The training loop's settings, shared by the four preference configs (TrainingArguments' names)."""

    output_dir: str = "runs/preference"
    seed: int = 42
    learning_rate: float = 1e-6
    per_device_train_batch_size: int = 8  # pairs (KTO: examples) per micro-batch
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: int = -1  # optimizer steps; -1 = num_train_epochs over the data
    max_length: int | None = 1024  # prompt + completion tokens; longer sequences keep their start
    optim: str = "adamw_torch"  # rlvr: TRL's default is adamw_torch_fused, the same update fused on CUDA
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0  # rlvr: the name SFT and GRPO use (transformers 5 folds it into warmup_steps)
    gradient_checkpointing: bool | str = False  # rlvr: off by default (TRL: on); false | true | offload
    bf16: bool = False  # rlvr: off by default (TRL: on where supported); autocast the forward passes to bf16
    disable_dropout: bool = True
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest"
    overwrite_output_dir: bool = False  # rlvr: start over in an output_dir that holds a run (else refused)
    report_to: str = "none"  # none | tensorboard | wandb | trackio, besides metrics.jsonl
    max_nonfinite_steps: int = 5  # rlvr: stop after this many steps in a row with a NaN/inf loss or gradient
    logprob_chunk_elements: int = 1 << 26  # rlvr: fp32 logits alive at once in the chunked log-prob path
    ddp_timeout: int = 1800  # seconds a rank waits for the others in a collective before the job stops

    def validate(self) -> None:
        _choice("train.report_to", self.report_to, REPORT_TO)
        _validate_update(self)
        for name in ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "logprob_chunk_elements"):
            if getattr(self, name) <= 0:
                raise RlvrError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 2:
            raise RlvrError(f"train.max_length must be >= 2 (a prompt token and a completion token) or null, "
                            f"got {self.max_length}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise RlvrError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _positive("beta", getattr(self, "beta", 1.0))


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise RlvrError(f"train.{name} must be > 0, got {value}")


def _label_smoothing(value: float, upper: float = 1.0) -> None:
    if not 0.0 <= value < upper:
        raise RlvrError(f"train.label_smoothing must be in [0, {upper}), got {value}")


@dataclass
class DPOConfig(PreferenceTrainingConfig):
    """DPO and its loss types (TRL's DPOConfig); several loss types add up with `loss_weights`."""

    output_dir: str = "runs/dpo"
    beta: float = 0.1
    loss_type: list[str] | str = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0  # robust: flip probability in [0, 0.5); exo_pair: ε > 0; aot: smoothing
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    discopop_tau: float = 0.05
    precompute_ref_batch_size: int | None = None  # None = per_device_train_batch_size

    def validate(self) -> None:
        super().validate()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        if not self.loss_type:
            raise RlvrError("train.loss_type is empty; name at least one, e.g. loss_type: sigmoid")
        for name in self.loss_type:
            _choice("train.loss_type", name, DPO_LOSS_TYPES)
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise RlvrError(f"train.loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} "
                            f"loss types; give one weight per loss_type entry")
        _choice("train.f_divergence_type", self.f_divergence_type, F_DIVERGENCE_TYPES)
        if self.f_divergence_type != "reverse_kl":
            unsupported = [t for t in self.loss_type if t not in F_DIVERGENCE_LOSS_TYPES]
            if unsupported:
                raise RlvrError(f"train.f_divergence_type {self.f_divergence_type!r} works only with loss types "
                                f"{', '.join(F_DIVERGENCE_LOSS_TYPES)}; {', '.join(unsupported)} need reverse_kl")
        if "robust" in self.loss_type:
            _label_smoothing(self.label_smoothing, 0.5)
        else:
            _label_smoothing(self.label_smoothing)
        if "exo_pair" in self.loss_type and self.label_smoothing == 0.0:
            raise RlvrError("train.loss_type exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        _positive("discopop_tau", self.discopop_tau)
        if self.precompute_ref_batch_size is not None:
            _positive("precompute_ref_batch_size", self.precompute_ref_batch_size)


@dataclass
class CPOConfig(PreferenceTrainingConfig):
    """CPO, and SimPO as TRL spells it: loss_type simpo with cpo_alpha 0 (alphapo = simpo, cpo_alpha 0)."""

    output_dir: str = "runs/cpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"
    cpo_alpha: float = 1.0  # weight of the NLL term on the chosen completions
    simpo_gamma: float = 0.5  # SimPO's target reward margin
    alpha: float = 0.0  # AlphaPO's reward shape; 0 = log-prob rewards

    def validate(self) -> None:
        super().validate()
        _choice("train.loss_type", self.loss_type, CPO_LOSS_TYPES)
        if self.loss_type == "alphapo":  # TRL's shorthand, documented in its CPOConfig
            self.loss_type, self.cpo_alpha = "simpo", 0.0
        _label_smoothing(self.label_smoothing)
        if self.cpo_alpha < 0:
            raise RlvrError(f"train.cpo_alpha must be >= 0, got {self.cpo_alpha}")


@dataclass
class ORPOConfig(PreferenceTrainingConfig):
    """ORPO (TRL's ORPOConfig): NLL on the chosen completion minus β·log σ(log odds ratio); no reference."""

    output_dir: str = "runs/orpo"
    beta: float = 0.1


@dataclass
class KTOConfig(PreferenceTrainingConfig):
    """KTO on unpaired (prompt, completion, label) examples (TRL's KTOConfig)."""

    output_dir: str = "runs/kto"
    beta: float = 0.1
    loss_type: str = "kto"
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    precompute_ref_batch_size: int | None = None  # None = per_device_train_batch_size

    def validate(self) -> None:
        super().validate()
        _choice("train.loss_type", self.loss_type, KTO_LOSS_TYPES)
        _positive("desirable_weight", self.desirable_weight)
        _positive("undesirable_weight", self.undesirable_weight)
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise RlvrError("train.per_device_train_batch_size must be >= 2 for loss_type kto: its KL term pairs "
                            "each prompt with another example's completion in the same micro-batch")
        if self.precompute_ref_batch_size is not None:
            _positive("precompute_ref_batch_size", self.precompute_ref_batch_size)


# The `rlvr` command of each config: its `train` section's class.
PREFERENCE_CONFIGS = {"dpo": DPOConfig, "cpo": CPOConfig, "orpo": ORPOConfig, "kto": KTOConfig}
