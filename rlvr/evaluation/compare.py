"""Compare stages of a run (base, SFT warm-up, GRPO, ...) on the same problems, seed and sampling.

`compare_stages(cfg, {"base": "base", "sft": "runs/sft", "grpo": "runs/grpo"})` evaluates each
stage with `run_eval` on one list of examples and one EvalConfig, prints the comparison table and
writes compare.json + compare.png (`write_comparison`). `rlvr eval --compare` and `rlvr demo` both
report through `report_comparison`.

A stage's model is
- `base`: the config's model with no adapter (model.adapter_path is ignored);
- a LoRA adapter folder (adapter_config.json): RUN_DIR/final, a checkpoint's model/ folder, ...;
- a merged or fully fine-tuned model folder (config.json), loaded on its own and freed after its stage;
- a run directory (its final/) or a checkpoint folder (its model/).
Every spec is checked before any model loads. The base model is loaded once; each adapter folder is
loaded into it once (peft load_adapter) and switched on with set_adapter, and `base` runs inside
disable_adapter, so a comparison costs one model load however many adapters it has.

Same samples for the same model: evaluate() seeds every engine call with eval.seed plus the index
of its first problem, and both engines draw from that seed alone (HFEngine inside fork_rng, the
native engine from its own Generator), so stage order and earlier stages do not shift any stage's
random stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rlvr.config import RunConfig
from rlvr.errors import RlvrError

log = logging.getLogger("rlvr")

BASE = "base"
DEFAULT_OUTPUT_DIR = "compare"
JSON_NAME = "compare.json"
PNG_NAME = "compare.png"
_HOW = "give base, a run directory, an adapter folder (e.g. RUN_DIR/final) or a merged model folder"


@dataclass(frozen=True)
class StageSpec:
    """A stage's model, resolved: kind is 'base', 'adapter' or 'merged'; path is the folder to load."""

    name: str
    kind: str
    path: Path | None = None
    run_dir: Path | None = None  # the run directory the spec points into, if any

    def describe(self) -> dict[str, str | None]:
        return {"kind": self.kind, "path": str(self.path) if self.path else None}


class ComparisonFiles(NamedTuple):
    json: Path
    png: Path | None  # None when matplotlib is not installed


# ---------------------------------------------------------------- stage specs


def parse_stages(text: str) -> dict[str, str]:
    """'base=base,sft=runs/sft,grpo=runs/grpo' → {'base': 'base', 'sft': 'runs/sft', 'grpo': 'runs/grpo'}."""
    stages: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise RlvrError(f"--compare {item!r}: expected NAME=MODEL, e.g. --compare base=base,grpo=runs/grpo "
                            f"({_HOW} after '=')")
        if name in stages:
            raise RlvrError(f"--compare: stage name {name!r} is given twice; give each stage its own name")
        stages[name] = spec
    return stages


def resolve_stages(stages: Mapping[str, str]) -> list[StageSpec]:
    """Check every stage's model spec (before anything loads) and say what each one is."""
    if not stages:
        raise RlvrError(f"compare: no stages; name at least one, e.g. base=base ({_HOW})")
    return [resolve_stage(name, str(spec)) for name, spec in stages.items()]


def resolve_stage(name: str, spec: str) -> StageSpec:
    if not name or "," in name or "=" in name:
        raise RlvrError(f"compare stage {name!r}: a stage name must be non-empty, without ',' or '='")
    if spec == BASE:
        return StageSpec(name, BASE)
    given = Path(spec).expanduser()
    if not given.is_dir():
        hint = " (it is a file; point at its folder)" if given.is_file() else ""
        raise RlvrError(f"compare stage {name!r}: folder not found: {spec}{hint}; {_HOW}")
    folder, run_dir = _model_folder(given)
    if folder is None:
        raise RlvrError(f"compare stage {name!r}: {spec} holds no model{_unfinished(given)}; {_HOW}")
    kind = "adapter" if (folder / "adapter_config.json").is_file() else "merged"
    return StageSpec(name, kind, folder, run_dir)


def _model_folder(given: Path) -> tuple[Path | None, Path | None]:
    """(the folder holding the model, the run directory it belongs to) for a spec's folder."""
    if (given / "final").is_dir():  # a run directory
        return (given / "final" if _holds_model(given / "final") else None), given
    if (given / "trainer_state.json").is_file() and _holds_model(given / "model"):  # a checkpoint
        return given / "model", _run_dir_above(given.parent)
    if _holds_model(given):
        return given, _run_dir_above(given)
    return None, None


def _holds_model(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()


def _run_dir_above(folder: Path) -> Path | None:
    """RUN_DIR for RUN_DIR/final or RUN_DIR/checkpoints/step-N (where rlvr wrote config.yaml)."""
    parent = folder.parent if folder.name in ("final", "checkpoints") else None
    return parent if parent is not None and (parent / "config.yaml").is_file() else None


def _unfinished(given: Path) -> str:
    if (given / "checkpoints").is_dir():
        return f" (the run has not finished: no final/; compare a checkpoint such as {given}/checkpoints/step-N)"
    return " (no adapter_config.json, config.json or final/)"


def default_output_dir(specs: list[StageSpec]) -> Path:
    """The first run directory among the stages, else ./compare."""
    return next((s.run_dir for s in specs if s.run_dir is not None), Path(DEFAULT_OUTPUT_DIR))


# ---------------------------------------------------------------- evaluation


def compare_stages(cfg: RunConfig, stages: Mapping[str, str], output_dir: str | Path | None = None,
                   examples: list[dict] | None = None, console=None) -> dict[str, dict]:
    """Evaluate every stage on the same examples and settings; print the table, write the report.

    `stages` maps a stage name to its model spec (see the module docstring); `output_dir` defaults
    to `default_output_dir`. Returns {stage name: evaluate() result, plus 'model': what was loaded}.
    """
    specs = resolve_stages(stages)
    out = Path(output_dir) if output_dir is not None else default_output_dir(specs)
    results = evaluate_stages(cfg, specs, examples)
    report_comparison(results, out, console)
    return results


def evaluate_stages(cfg: RunConfig, specs: list[StageSpec], examples: list[dict] | None = None) -> dict[str, dict]:
    """{stage name: result}, every stage through run_eval with cfg's eval settings on `examples`."""
    from rlvr.data.build import build_datasets
    from rlvr.evaluation.run import eval_rewards, run_eval

    if examples is None:
        _, examples = build_datasets(cfg)  # data first: a bad dataset fails before a model loads
    if not examples:
        raise RlvrError("compare: no evaluation examples; set data.eval_size > 0 or data.eval_dataset")
    eval_rewards(cfg)  # and the rewards
    models = _StageModels(cfg)
    results = {}
    for spec in specs:
        where = f" ({spec.path})" if spec.path else ""
        print(f"[compare] stage {spec.name}: {spec.kind}{where}", flush=True)
        with models.activate(spec) as model:
            result = run_eval(cfg, model, models.tokenizer, examples, desc=spec.name)
        results[spec.name] = {**result, "model": spec.describe()}
    return results


class _StageModels:
    """The base model (loaded on first need) with one peft adapter per folder, and merged models."""

    def __init__(self, cfg: RunConfig):
        # `base` means the config's model itself: no adapter_path, no fresh LoRA to wrap it in.
        self.model_cfg = dataclasses.replace(cfg.model, adapter_path=None, use_lora=False)
        self.model = None
        self._tokenizer = None
        self.adapters: dict[Path, str] = {}  # folder → peft adapter name

    @property
    def tokenizer(self):
        # Every stage, merged ones included, encodes with the config's tokenizer: identical prompt ids.
        if self._tokenizer is None:
            from rlvr.models.loading import load_tokenizer, resolve_source

            source, gguf = resolve_source(self.model_cfg.model_name_or_path, self.model_cfg.gguf_file)
            self._tokenizer = load_tokenizer(source, gguf, self.model_cfg.trust_remote_code)
        return self._tokenizer

    @contextlib.contextmanager
    def activate(self, spec: StageSpec) -> Iterator[Any]:
        if spec.kind == "merged":
            model = self._load_merged(spec.path)
            try:
                yield model
            finally:
                del model
                _free_memory()
        elif spec.kind == BASE:
            model = self._base()
            with model.disable_adapter() if hasattr(model, "peft_config") else contextlib.nullcontext():
                yield model
        else:
            yield self._with_adapter(spec)

    def _base(self):
        if self.model is None:
            from rlvr.models import load_model_from_config

            self.model, self._tokenizer = load_model_from_config(self.model_cfg)
        return self.model

    def _with_adapter(self, spec: StageSpec):
        from peft import PeftModel

        model = self._base()
        key = spec.path.resolve()  # runs/x/final and ./runs/x are one adapter, loaded once
        name = self.adapters.get(key)
        if name is None:
            # Our own adapter names: peft keys modules by them, and stage names may hold '.'.
            name = f"stage{len(self.adapters)}"
            try:
                if isinstance(model, PeftModel):
                    model.load_adapter(str(spec.path), adapter_name=name, is_trainable=False)
                else:
                    model = self.model = PeftModel.from_pretrained(model, str(spec.path), adapter_name=name,
                                                                   is_trainable=False)
            except (ValueError, RuntimeError, KeyError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise RlvrError(f"compare stage {spec.name!r}: the adapter in {spec.path} does not fit "
                                f"{self.model_cfg.model_name_or_path} ({first[:200]}); compare it with the "
                                "config it was trained with") from None
            self.adapters[key] = name
        model.set_adapter(name)
        return model

    def _load_merged(self, folder: Path):
        from transformers import AutoModelForCausalLM

        from rlvr.models.loading import default_device, resolve_dtype

        device = next(self.model.parameters()).device if self.model is not None else default_device()
        dtype = resolve_dtype(self.model_cfg.dtype, device)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, attn_implementation=self.model_cfg.attn_implementation,
                trust_remote_code=self.model_cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RlvrError(f"cannot load the model in {folder} ({first[:200]}); {_HOW}") from None
        model.to(device)
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        return model


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- report


def write_comparison(results: Mapping[str, Mapping[str, Any]], output_dir: str | Path) -> ComparisonFiles:
    """Write compare.json (every stage's result) and compare.png (the chart) into `output_dir`.

    Without matplotlib the JSON is still written and one warning line names the extra to install.
    """
    from rlvr.evaluation.evaluate import write_result

    out = Path(output_dir)
    json_path = write_result(dict(results), out / JSON_NAME)
    try:
        from rlvr.evaluation.chart import save_chart

        png = save_chart(results, out / PNG_NAME)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "matplotlib":
            raise
        log.warning("compare.png not written: matplotlib is not installed; install it with "
                    "pip install 'rlvr[report]'")
        png = None
    return ComparisonFiles(json_path, png)


def report_comparison(results: Mapping[str, Mapping[str, Any]], output_dir: str | Path,
                      console=None) -> ComparisonFiles:
    """Print the comparison table, write compare.json + compare.png, and print where they are."""
    from rlvr.evaluation.evaluate import print_comparison

    print_comparison(results, console)
    files = write_comparison(results, output_dir)
    chart = f"; chart: {files.png.resolve()}" if files.png else ""
    print(f"comparison written to {files.json.resolve()}{chart}", flush=True)
    return files
