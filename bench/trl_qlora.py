"""TRL 1.16's GRPOTrainer in its QLoRA setting, measured exactly as trl_grpo_anchor.py measures LoRA.

The anchor's run is unchanged (its GRPOConfig, LoRA config, reward, timing and peak memory) except
for the model it trains: the anchor's random weights, saved by bench/step.py in --model-dir, loaded
4-bit through transformers' BitsAndBytesConfig (NF4, double quantisation, bf16 compute: QLoRA's
setting, and what rlvr's `model.load_in_4bit` loads). TRL sees `is_loaded_in_4bit` and keeps its
adapters in bf16, as for any quantised model it is given (or loads itself from `quantization_config`).

    python bench/trl_qlora.py --model-dir /tmp/rlvr-step-qwen2.5-1.5b-xyz --shape qwen2.5-1.5b --completion 512
"""

from __future__ import annotations

import argparse
import sys

import torch
import trl_grpo_anchor as anchor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True, help="the anchor's model saved with save_pretrained")
    a, rest = ap.parse_known_args()

    def qlora_model(shape: str, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        return AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype, quantization_config=quant,
                                                    device_map={"": 0}, attn_implementation="sdpa")

    anchor.make_model = qlora_model  # the one change to the anchor's run
    sys.argv = [sys.argv[0], *rest]
    anchor.main()


if __name__ == "__main__":
    main()
