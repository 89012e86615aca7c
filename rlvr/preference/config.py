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

from rlvr.config import TrainerCoreConfig, _choice, trainer_defaults
from rlvr.errors import RlvrError
from rlvr.preference.losses import (
    CPO_LOSS_TYPES,
    DPO_LOSS_TYPES,
    F_DIVERGENCE_LOSS_TYPES,
    F_DIVERGENCE_TYPES,
    KTO_LOSS_TYPES,
)


@dataclass
@trainer_defaults(output_dir="runs/preference", learning_rate=1e-6, logging_steps=10)
class PreferenceTrainingConfig(TrainerCoreConfig):
    """What the four preference configs share: the trainer core's settings (TRL's defaults for them, but
    for the ones marked "rlvr:" in TrainerCoreConfig and here) and these."""

    max_length: int | None = 1024  # prompt + completion tokens; longer sequences keep their start
    disable_dropout: bool = True
    beta: float = 0.1  # the implicit reward's scale (ORPO: the weight of its odds-ratio term)

    def validate(self) -> None:
        super().validate()
        if self.max_length is not None and self.max_length < 2:
            raise RlvrError(f"train.max_length must be >= 2 (a prompt token and a completion token) or null, "
                            f"got {self.max_length}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise RlvrError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _positive("beta", self.beta)


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise RlvrError(f"train.{name} must be > 0, got {value}")


def _label_smoothing(value: float, upper: float = 1.0) -> None:
    if not 0.0 <= value < upper:
        raise RlvrError(f"train.label_smoothing must be in [0, {upper}), got {value}")


@dataclass
@trainer_defaults(output_dir="runs/dpo")
class DPOConfig(PreferenceTrainingConfig):
    """DPO and its loss types (TRL's DPOConfig); several loss types add up with `loss_weights`."""

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
@trainer_defaults(output_dir="runs/cpo")
class CPOConfig(PreferenceTrainingConfig):
    """CPO, and SimPO as TRL spells it: loss_type simpo with cpo_alpha 0 (alphapo = simpo, cpo_alpha 0)."""

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
@trainer_defaults(output_dir="runs/orpo")
class ORPOConfig(PreferenceTrainingConfig):
    """ORPO (TRL's ORPOConfig): NLL on the chosen completion minus β·log σ(log odds ratio); no reference."""


@dataclass
@trainer_defaults(output_dir="runs/kto")
class KTOConfig(PreferenceTrainingConfig):
    """KTO on unpaired (prompt, completion, label) examples (TRL's KTOConfig)."""

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
