"""The `rlvr` command: demo, train, sft, dpo, cpo, orpo, kto, eval, export, dashboard.

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
    quiet = os.environ.get("RLVR_NO_PROGRESS") is not None or not sys.stderr.isatty()
    if quiet:
        # Libraries' own tqdm bars (e.g. transformers' GGUF loading) would fill a log with \r lines;
        # tqdm reads this when first imported, which is below.
        os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*attention mask.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if quiet:
        hf_logging.disable_progress_bar()
    else:  # on a terminal, transformers' bars show a long load (weights, GGUF dequantisation) moving
        hf_logging.enable_progress_bar()


TOP_LEVEL_SETTINGS = ("rewards",)  # config keys that are not inside a section


def _parse_set(values: list[str] | None) -> dict:
    """--set train.learning_rate=1e-5 → {"train": {"learning_rate": 1e-5}} (values parsed as YAML);
    --set rewards=[gsm8k,int] (or rewards=gsm8k,int) → {"rewards": ["gsm8k", "int"]}."""
    import yaml

    out: dict = {}
    for item in values or []:
        key, equals, value = item.partition("=")
        if key in TOP_LEVEL_SETTINGS and equals:
            out[key] = _parse_list(item, value)
            continue
        if not equals or "." not in key:
            raise RlvrError(f"--set {item!r}: expected SECTION.KEY=VALUE (e.g. --set train.max_steps=10) "
                            "or rewards=NAME,NAME")
        section, name = key.split(".", 1)
        try:
            out.setdefault(section, {})[name] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise RlvrError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', e)}); "
                            "quote it, e.g. --set 'data.system_prompt=\"...\"'") from None
    return out


def _parse_list(item: str, value: str) -> list[str]:
    """'[a, b]' (YAML) or 'a,b' → ['a', 'b']."""
    import yaml

    text = value.strip()
    try:
        parsed = yaml.safe_load(text) if text.startswith("[") else [p.strip() for p in text.split(",")]
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, list) or not parsed or not all(isinstance(p, str) and p for p in parsed):
        raise RlvrError(f"--set {item!r}: expected a comma-separated list of reward names, "
                        "e.g. --set rewards=gsm8k,numeric_proximity")
    return parsed


def _training_config(args, train_cls):
    """The run config of `rlvr train|sft`, with --set and --output-dir applied."""
    from rlvr.config import load_run_config

    overrides = _parse_set(args.set)
    if args.output_dir:
        overrides.setdefault("train", {})["output_dir"] = args.output_dir
    return load_run_config(args.config, train_cls, overrides)


def _run_training(args, train_cls, run, command: str) -> dict:
    """`rlvr train|sft`: config, run-directory check, the directory and dashboard command on stderr, the
    run; Ctrl-C or SIGTERM end it with a checkpoint and the resume command."""
    from rlvr.config import to_dict
    from rlvr.train.session import check_run_start

    if args.force and not args.resume:
        raise RlvrError(f"rlvr {command}: --force goes with --resume (continue despite changed settings); add "
                        "--resume or drop --force")
    from rlvr.distributed import init_distributed, shutdown
    from rlvr.distributed.faults import rank_guard

    if args.nproc is not None:
        from rlvr.distributed.launch import exec_torchrun

        exec_torchrun(args.nproc, args.argv)  # does not return: torchrun runs this command on N processes
    cfg = _training_config(args, train_cls)
    if args.overwrite:
        cfg.train.overwrite_output_dir = True
    out = cfg.train.output_dir
    # Under torchrun: join the job first (the model then loads on this rank's GPU).
    dist = init_distributed(timeout_s=cfg.train.ddp_timeout)
    with rank_guard(dist):
        check_run_start(cfg.train, args.resume, args.force, model_config=to_dict(cfg.model))
        if dist.is_main:
            print(f"rlvr: run directory {out}; watch it with: rlvr dashboard {out}", file=sys.stderr, flush=True)
        result = run(cfg, resume=args.resume, force=args.force)
    shutdown(dist)
    if result.get("interrupted") and dist.is_main:
        again = f"rlvr {command} {args.config} --output-dir {out} --resume"
        print(f"interrupted at step {result.get('step')}; resume with: {again}", file=sys.stderr)
    return {**result, "main": dist.is_main}


def cmd_train(args) -> int:
    from rlvr.config import GRPOConfig
    from rlvr.pipeline import run_grpo

    result = _run_training(args, GRPOConfig, run_grpo, "train")
    if result["main"]:
        print(json.dumps({k: result[k] for k in ("step", "reward", "run_dir") if k in result}))
    return 0


def cmd_sft(args) -> int:
    from rlvr.config import SFTConfig
    from rlvr.pipeline import run_sft

    result = _run_training(args, SFTConfig, run_sft, "sft")
    if result["main"]:
        print(json.dumps({k: result[k] for k in ("step", "loss", "run_dir") if k in result}))
    return 0


def cmd_preference(args) -> int:
    from rlvr.pipeline import run_preference
    from rlvr.preference.config import PREFERENCE_CONFIGS

    result = _run_training(args, PREFERENCE_CONFIGS[args.command], run_preference, args.command)
    print(json.dumps({k: result[k] for k in ("step", "loss", "rewards/accuracies", "run_dir") if k in result}))
    return 0


def cmd_eval(args) -> int:
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun rank 0 evaluates; the others have nothing to do
        return 0
    from rlvr.config import load_run_config
    from rlvr.evaluation import print_comparison, write_result
    from rlvr.pipeline import run_eval

    overrides = _parse_set(args.set)
    if args.compare is not None:
        from rlvr.evaluation import compare_stages, parse_stages

        if args.adapter or args.output:
            raise RlvrError("rlvr eval --compare: each stage names its own model and compare.json goes to "
                            "--output-dir; drop --adapter/--output (e.g. --compare base=base,grpo=RUN_DIR)")
        stages = parse_stages(args.compare)  # spec errors before the config and before any model loads
        compare_stages(load_run_config(args.config, None, overrides), stages, args.output_dir)
        return 0
    if args.output_dir:
        raise RlvrError("rlvr eval: --output-dir goes with --compare; for one model write the JSON with --output")
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
    from rlvr.export import export_outputs

    export_outputs(args.run_dir, merged=args.merged, dtype=args.dtype, gguf=args.gguf, ollama=args.ollama,
                   push_to_hub=args.push_to_hub, private=args.private)
    return 0


def cmd_demo(args) -> int:
    from rlvr.demo import run_demo

    run_demo(output_dir=args.output_dir, seed=args.seed, grpo_steps=args.grpo_steps)
    return 0


def cmd_dashboard(args) -> int:
    from rlvr.dashboard import serve

    serve(args.run_dirs, host=args.host, port=args.port)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rlvr")
    except PackageNotFoundError:  # run from a source checkout that was never installed
        return "(not installed; version in pyproject.toml)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlvr", description="Reinforcement learning from verifiable rewards (GRPO).")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("--version", action="version", version=f"rlvr {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the whole workflow on the bundled SmolLM2-135M, on a CPU, offline")
    d.add_argument("--output-dir", default="runs/demo", help="run directory (default runs/demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--grpo-steps", type=int, default=None, help="GRPO optimizer steps (default: the demo's)")
    d.set_defaults(func=cmd_demo)

    for name, func, helptext in (("train", cmd_train, "GRPO training from a YAML config"),
                                 ("sft", cmd_sft, "supervised warm-up on assistant tokens from a YAML config"),
                                 ("dpo", cmd_preference, "DPO (TRL's loss types) on preference pairs"),
                                 ("cpo", cmd_preference, "CPO, or SimPO (loss_type: simpo, cpo_alpha: 0), on pairs"),
                                 ("orpo", cmd_preference, "ORPO on preference pairs (no reference model)"),
                                 ("kto", cmd_preference, "KTO on (prompt, completion, label) examples")):
        t = sub.add_parser(name, help=helptext)
        t.add_argument("config", help="YAML run config (see examples/)")
        t.add_argument("--output-dir", help="override train.output_dir")
        t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
        t.add_argument("--resume", nargs="?", const="latest", default=None,
                       help="resume from the run directory's latest checkpoint (or a given checkpoint)")
        t.add_argument("--force", action="store_true",
                       help="with --resume: continue even though settings that change the math differ")
        t.add_argument("--overwrite", action="store_true",
                       help="start over in an output directory that already holds a run (its files are removed)")
        t.add_argument("--nproc", type=int, metavar="N",
                       help="run on N processes of this machine (one per GPU) through torchrun")
        t.set_defaults(func=func)

    e = sub.add_parser("eval", help="accuracy, format compliance, pass@k of a model (or several: --compare) "
                                    "on held-out problems")
    e.add_argument("config", help="YAML run config (model, data, rewards, eval sections)")
    e.add_argument("--adapter", help="a LoRA adapter folder to evaluate (e.g. RUN_DIR/final)")
    e.add_argument("--name", default="model", help="row name in the printed table")
    e.add_argument("--output", help="write the JSON result here")
    e.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    e.add_argument("--compare", metavar="NAME=MODEL,...",
                   help="evaluate several stages on the same problems, seed and sampling, e.g. "
                        "base=base,sft=runs/sft,grpo=runs/grpo; MODEL is base (the config's model, no adapter), "
                        "a run directory (its final/), an adapter folder or a merged model folder")
    e.add_argument("--output-dir", help="with --compare: where compare.json and compare.png go "
                                        "(default: the first run directory among the stages, else ./compare)")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="merged model, GGUF files, Ollama Modelfile or hub upload from a run directory")
    x.add_argument("run_dir")
    x.add_argument("--merged", action="store_true",
                   help="merge the LoRA adapter into the base weights (RUN_DIR/merged)")
    x.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="dtype of the --merged folder")
    x.add_argument("--gguf", metavar="TYPES", help="GGUF files in RUN_DIR/gguf, comma-separated types: f16, bf16, "
                   'q8_0; q4_k_m, q5_k_m, q4_0, ... need llama.cpp\'s quantizer (pip install "rlvr[gguf]")')
    x.add_argument("--ollama", action="store_true", help="with --gguf: an Ollama Modelfile beside the GGUF")
    x.add_argument("--push-to-hub", metavar="REPO", help="upload what this command wrote (the adapter if nothing "
                   "else) to a Hugging Face repo; token from HF_TOKEN")
    x.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("dashboard", help="watch runs live in the browser: metric charts, rollouts, run status")
    b.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or folders of them) to follow")
    b.add_argument("--port", type=int, default=8787, help="port (default 8787; 0 picks a free one)")
    b.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the page has no login)")
    b.set_defaults(func=cmd_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    _quiet_libraries()
    try:
        return args.func(args)
    except RlvrError as e:
        # Under torchrun every rank may print: say which one.
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"rlvr: error: {rank}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlvr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
