"""The example YAMLs say what `rlvr demo` runs: same model, data, rewards and train settings."""

from pathlib import Path

import yaml

from rlvr.config import GRPOConfig, SFTConfig, load_run_config
from rlvr.demo import DEMO_CONFIG, DEMO_GRPO, DEMO_SFT
from rlvr.preference.config import DPOConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def test_demo_yamls_mirror_the_demo():
    for name, train, cls in (("demo_sft.yaml", DEMO_SFT, SFTConfig), ("demo.yaml", DEMO_GRPO, GRPOConfig)):
        raw = yaml.safe_load((EXAMPLES / name).read_text())
        assert without(raw["train"], "output_dir") == without(train, "output_dir"), name
        assert without(raw["model"], "adapter_path") == DEMO_CONFIG["model"]
        assert without(raw["data"], "limit") == without(DEMO_CONFIG["data"], "limit")
        assert raw["rewards"] == DEMO_CONFIG["rewards"]
        assert {k: raw["eval"][k] for k in DEMO_CONFIG["eval"] if k in raw["eval"]} == \
            {k: v for k, v in DEMO_CONFIG["eval"].items() if k in raw["eval"]}
        load_run_config(EXAMPLES / name, cls)  # and it validates


def test_every_example_config_validates():
    for path in EXAMPLES.glob("*.yaml"):
        cls = DPOConfig if "dpo" in path.name else SFTConfig if "sft" in path.name else GRPOConfig
        load_run_config(path, cls)
