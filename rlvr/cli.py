"""The `rlvr` command: demo, train, sft, eval, export.

Errors the user can act on (RlvrError) print as one line on stderr with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*attention mask.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _parse_set(values: list[str] | None) -> dict:
    """--set train.learning_rate=1e-5 → {"train": {"learning_rate": 1e-5}} (values parsed as YAML)."""
    import yaml

    out: dict = {}
    for item in values or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise RlvrError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set train.max_steps=10")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def _training_config(args, train_cls):
    """The run config of `rlvr train|sft`, with --set and --output-dir applied."""
    from rlvr.config import load_run_config

    overrides = _parse_set(args.set)
    if args.output_dir:
        overrides.setdefault("train", {})["output_dir"] = args.output_dir
    return load_run_config(args.config, train_cls, overrides)


def cmd_train(args) -> int:
    from rlvr.config import GRPOConfig
    from rlvr.pipeline import run_grpo

    cfg = _training_config(args, GRPOConfig)
    result = run_grpo(cfg, resume=args.resume)
    if result.get("interrupted"):
        again = f"rlvr train {args.config} --output-dir {cfg.train.output_dir} --resume"
        print(f"interrupted at step {result.get('step')}; resume with: {again}", file=sys.stderr)
    print(json.dumps({k: result[k] for k in ("step", "reward", "run_dir") if k in result}))
    return 0


def cmd_sft(args) -> int:
    from rlvr.config import SFTConfig
    from rlvr.pipeline import run_sft

    result = run_sft(_training_config(args, SFTConfig))
    print(json.dumps({k: result[k] for k in ("step", "loss", "run_dir") if k in result}))
    return 0


def cmd_eval(args) -> int:
    from rlvr.config import load_run_config
    from rlvr.evaluation import print_comparison, write_result
    from rlvr.pipeline import run_eval

    overrides = _parse_set(args.set)
    if args.adapter:
        overrides.setdefault("model", {})["adapter_path"] = args.adapter
    cfg = load_run_config(args.config, None, overrides)
    result = run_eval(cfg)
    print_comparison({args.name: result})
    out = args.output or cfg.eval.output
    if out:
        write_result(result, out)
        print(f"result written to {out}")
    return 0


def cmd_export(args) -> int:
    from rlvr.export import export_run

    if not args.merged:
        raise RlvrError("rlvr export: choose what to write, e.g. --merged")
    path = export_run(args.run_dir, merged=True, dtype=args.dtype)
    print(f"merged model written to {path}")
    return 0


def cmd_demo(args) -> int:
    from rlvr.demo import run_demo

    run_demo(output_dir=args.output_dir, seed=args.seed, grpo_steps=args.grpo_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlvr", description="Reinforcement learning from verifiable rewards (GRPO).")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the whole workflow on the bundled SmolLM2-135M, on a CPU, offline")
    d.add_argument("--output-dir", default="runs/demo", help="run directory (default runs/demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--grpo-steps", type=int, default=None, help="GRPO optimizer steps (default: the demo's)")
    d.set_defaults(func=cmd_demo)

    for name, func, helptext in (("train", cmd_train, "GRPO training from a YAML config"),
                                 ("sft", cmd_sft, "supervised warm-up on assistant tokens from a YAML config")):
        t = sub.add_parser(name, help=helptext)
        t.add_argument("config", help="YAML run config (see examples/)")
        t.add_argument("--output-dir", help="override train.output_dir")
        t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
        if name == "train":
            t.add_argument("--resume", nargs="?", const="latest", default=None,
                           help="resume from the run directory's latest checkpoint (or a given checkpoint)")
        t.set_defaults(func=func)

    e = sub.add_parser("eval", help="accuracy, format compliance, pass@k of a model on held-out problems")
    e.add_argument("config", help="YAML run config (model, data, rewards, eval sections)")
    e.add_argument("--adapter", help="a LoRA adapter folder to evaluate (e.g. RUN_DIR/final)")
    e.add_argument("--name", default="model", help="row name in the printed table")
    e.add_argument("--output", help="write the JSON result here")
    e.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a merged 16-bit model from a run directory")
    x.add_argument("run_dir")
    x.add_argument("--merged", action="store_true", help="merge the LoRA adapter into the base weights")
    x.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    x.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    _quiet_libraries()
    try:
        return args.func(args)
    except RlvrError as e:
        print(f"rlvr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlvr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
