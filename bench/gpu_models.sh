#!/usr/bin/env bash
# One device call for the model-coverage work: the MoE CUDA-graph test, then the MoE and Gemma 3 rollouts.
# Run from the repository root on a GPU machine: bash bench/gpu_models.sh OUT_DIR
set -u
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONPATH=$PWD
timeout 110 python -m pytest -q -m gpu tests/test_moe.py 2>&1 | tail -5 | tee "$out/moe-gpu-tests.txt"
timeout 150 python bench/rollout.py --shape qwen3-30b-a3b --new-tokens 256 --hf-new-tokens 32 \
    --out "$out/2026-12-03-rollout-qwen3-30b-a3b.jsonl" 2>&1 | tail -3
timeout 120 python bench/rollout.py --shape gemma-3-12b --new-tokens 256 --hf-new-tokens 32 \
    --out "$out/2026-12-03-rollout-gemma-3-12b.jsonl" 2>&1 | tail -3
