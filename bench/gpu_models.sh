#!/usr/bin/env bash
# One device call for the model-coverage work: the MoE CUDA-graph test, then the MoE and Gemma 3 rollouts.
# Run from the repository root on a GPU machine: bash bench/gpu_models.sh OUT_DIR
# Full logs go to OUT_DIR (the test's failure messages carry their diagnosis: versions, shapes, warnings).
set -u
out=${1:-bench/results}
day=$(date -u +%F)
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
timeout 420 python -m pytest -q -m gpu tests/test_moe.py 2>&1 | tee "$out/$day-moe-gpu-tests.txt" | tail -40
timeout 300 python bench/rollout.py --shape qwen3-30b-a3b --new-tokens 256 --hf-new-tokens 32 \
    --out "$out/$day-rollout-qwen3-30b-a3b.jsonl" 2>&1 | tail -3
timeout 300 python bench/rollout.py --shape qwen3-30b-a3b --new-tokens 256 --hf-new-tokens 32 \
    --lora-target-parameters none --out "$out/$day-rollout-qwen3-30b-a3b.jsonl" 2>&1 | tail -3
timeout 200 python bench/rollout.py --shape gemma-3-12b --new-tokens 256 --hf-new-tokens 32 \
    --out "$out/$day-rollout-gemma-3-12b.jsonl" 2>&1 | tail -3
