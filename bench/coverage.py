"""Model coverage table: runs the coverage tests and writes which family passes which check.

    python bench/coverage.py                 # print the markdown table
    python bench/coverage.py --readme        # also replace the table between the README's coverage markers

The table is what the tests show on this machine (CPU, fp32, tiny random models of each family):
tests/test_model_coverage.py (native engine vs transformers.generate and the trainer's log-probs, one
GRPO step, merged export) and tests/test_export_gguf.py's round trip through transformers' GGUF reader.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from families import FAMILIES  # noqa: E402

CHECKS = {  # column → test function
    "native engine = generate (greedy, fp32)": "test_native_engine_matches_generate_and_the_trainer",
    "GRPO step": "test_one_grpo_step",
    "merged export": "test_merged_export_reloads_with_equal_logits",
    "GGUF f16 round trip": "test_gguf_round_trips_through_transformers",
}
TESTS = ["tests/test_model_coverage.py", "tests/test_export_gguf.py::test_gguf_round_trips_through_transformers"]
MARKERS = ("<!-- coverage:start (bench/coverage.py --readme) -->", "<!-- coverage:end -->")


def run_tests() -> dict[tuple[str, str], str]:
    """(test function, family) → 'passed' | 'failed' | 'skipped'."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *TESTS],
                       cwd=ROOT, check=False)
        outcomes = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            match = re.fullmatch(r"(\w+)\[(\w+)\]", case.get("name", ""))
            if not match:
                continue
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            outcomes[match.groups()] = "failed" if failed else "skipped" if skipped else "passed"
    return outcomes


def table(outcomes: dict[tuple[str, str], str]) -> str:
    mark = {"passed": "✓", "failed": "✗ (fails)", "skipped": "skipped"}
    lines = ["| family (model_type) | " + " | ".join(CHECKS) + " |", "|---" * (len(CHECKS) + 1) + "|"]
    for kind in FAMILIES:
        cells = [mark[outcomes[(test, kind)]] if (test, kind) in outcomes else "—" for test in CHECKS.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    args = ap.parse_args()
    text = table(run_tests())
    print(text)
    if args.readme:
        readme = ROOT / "README.md"
        start, end = MARKERS
        body = readme.read_text()
        if start not in body or end not in body:
            raise SystemExit(f"README.md has no {start} … {end} markers")
        head, rest = body.split(start, 1)
        readme.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()
