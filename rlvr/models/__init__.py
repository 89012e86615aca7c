"""Model loading (hub id, local folder, GGUF, bundled demo model), LoRA, and the log-prob forward."""

from rlvr.models.forward import completion_logprobs
from rlvr.models.loading import DEMO_MODEL, attach_lora, load_adapter, load_model, load_model_from_config

__all__ = ["DEMO_MODEL", "attach_lora", "completion_logprobs", "load_adapter", "load_model",
           "load_model_from_config"]
