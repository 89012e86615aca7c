"""Preference optimisation beside GRPO: DPO (TRL's loss types), CPO/SimPO, ORPO and KTO."""
