"""Export: the LoRA adapter, a merged standalone checkpoint that plain transformers loads, GGUF files
(with an Ollama Modelfile) for llama.cpp/Ollama, and an upload of any of them to the Hugging Face hub."""

from rlvr.export.gguf import export_run_gguf, parse_quantizations, save_gguf
from rlvr.export.hub import push_to_hub
from rlvr.export.ollama import write_modelfile
from rlvr.export.outputs import export_outputs
from rlvr.export.save import (
    export_run,
    is_peft_model,
    load_run,
    merged_state_dict,
    run_system_prompt,
    save_lora,
    save_merged,
)

__all__ = ["export_outputs", "export_run", "export_run_gguf", "is_peft_model", "load_run", "merged_state_dict",
           "parse_quantizations", "push_to_hub", "run_system_prompt", "save_gguf", "save_lora", "save_merged",
           "write_modelfile"]
