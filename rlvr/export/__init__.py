"""Export: the LoRA adapter, or a merged standalone checkpoint that plain transformers loads."""

from rlvr.export.save import export_run, is_peft_model, merged_state_dict, save_lora, save_merged

__all__ = ["export_run", "is_peft_model", "merged_state_dict", "save_lora", "save_merged"]
