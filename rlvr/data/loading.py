"""Load raw dataset rows from a local file, a local folder, or the Hugging Face Hub.

Everything goes through the `datasets` library so users get the formats they already have; the
result is a plain list of dicts, which the prepare functions (columns.py, gsm8k.py) turn into
examples. `datasets` is imported inside the functions: it takes seconds to import and most `rlvr`
commands never touch it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from rlvr.errors import RlvrError, nearest

# file suffix -> the `datasets` builder that reads it
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_records(
    source: str, split: str = "train", subset: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Rows of a dataset as dicts.

    `source` is a local .jsonl/.json/.parquet/.csv file, a local folder of such files (split names
    inferred from file names such as train.jsonl / test.jsonl, as `datasets` does), or a Hub
    dataset id such as "openai/gsm8k" (with `subset`="main"). A single file is one split, so
    `split` is not used for it. `limit` keeps the first rows only.
    """
    if limit is not None and limit < 1:
        raise RlvrError(f"dataset limit={limit} for '{source}' must be a positive number of rows, or unset")
    path = Path(source).expanduser()
    if path.exists():
        if subset:
            raise RlvrError(
                f"subset='{subset}' only applies to Hub datasets, but '{source}' is a local path; "
                "remove `subset` or point `dataset` at the file of that subset"
            )
        dataset = _load_local_file(path) if path.is_file() else _load_local_folder(path, split)
    elif _looks_like_path(source):
        raise RlvrError(
            f"dataset file '{source}' does not exist (looked in {path.resolve().parent}); "
            "check the path, or use a Hub id such as 'openai/gsm8k'"
        )
    else:
        dataset = _load_hub(source, split, subset)
    if len(dataset) == 0:
        raise RlvrError(f"dataset '{source}' ({split}) has no rows; point `dataset` at a non-empty one")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.to_list()


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything with a data suffix, a leading ./ ~ /, or more
    # than one slash is meant as a local path, and "not found on the Hub" would mislead.
    return (
        Path(source).suffix.lower() in FORMATS
        or source.startswith((".", "/", "~", "\\"))
        or source.count("/") > 1
        or os.sep in source.replace("/", "")
    )


def _first_line(exc: BaseException) -> str:
    # `datasets` wraps parse failures in a generic "error while generating the dataset"; the
    # innermost cause says what is actually wrong with the file.
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _is_empty(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except Exception:  # not readable as parquet: let `datasets` report it
            return False
    return False


def _load_local_file(path: Path):
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise RlvrError(
            f"dataset file '{path}' has an unsupported suffix '{path.suffix}'; use one of {', '.join(FORMATS)}"
        )
    if _is_empty(path):
        # `datasets` fails on an empty json file with a bare StopIteration and on a zero-row
        # parquet file with an arrow error; say what they mean instead.
        raise RlvrError(f"dataset file '{path}' has no rows; point `dataset` at a file with rows")
    if builder != "parquet":
        _check_utf8(path)
    import datasets

    try:
        with _quiet_datasets_errors():
            return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # any parse failure becomes one actionable line
        if "corresponds to no data" in str(exc):  # a header-only csv, a jsonl of blank lines
            raise RlvrError(f"dataset file '{path}' has no rows; point `dataset` at a file with rows") from exc
        bad_line = _first_bad_json_line(path) if path.suffix.lower() == ".jsonl" else None
        if bad_line is not None:
            number, problem = bad_line
            raise RlvrError(f"dataset file '{path}' line {number} is not valid JSON ({problem}); "
                            "fix or delete that line (JSON Lines: one object per line)") from exc
        raise RlvrError(
            f"could not read dataset file '{path}' as {builder}: {_first_line(exc)}; "
            f"check that it is valid {path.suffix} data"
        ) from exc


@contextlib.contextmanager
def _quiet_datasets_errors():
    """`datasets` logs a parse failure with its traceback before raising it; the exception is reported
    here as one line, so the log record would only repeat it."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_utf8(path: Path, chunk_bytes: int = 1 << 20) -> None:
    """Refuse a text file that is not UTF-8 (e.g. Latin-1), naming the line of the first bad byte."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line = lines_before + chunk.count(b"\n", 0, e.start) + 1
                raise RlvrError(
                    f"dataset file '{path}' is not UTF-8 (byte 0x{chunk[e.start]:02x} on line {line}); re-save "
                    f"it as UTF-8, e.g. iconv -f latin1 -t utf-8 '{path}' > utf8{path.suffix}"
                ) from None
            lines_before += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise RlvrError(f"dataset file '{path}' is not UTF-8 (it ends inside a character); re-save it "
                            "as UTF-8") from None


def _first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(1-based line number, json's complaint) of the first line of a .jsonl file that is not a JSON
    object, or None when every line is one (the failure was something else)."""
    import json

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                return number, f"{e.msg} at column {e.colno}"
            if not isinstance(value, dict):
                return number, f"a JSON {type(value).__name__}, not an object"
    return None


def _load_local_folder(path: Path, split: str):
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS]
    if not files:
        raise RlvrError(
            f"dataset folder '{path}' holds no {'/'.join(FORMATS)} files; "
            "put the data files there or point `dataset` at a file"
        )
    for file in files:
        if FORMATS[file.suffix.lower()] != "parquet":
            _check_utf8(file)
    import datasets

    try:
        splits = datasets.load_dataset(str(path))
    except Exception as exc:
        raise RlvrError(
            f"could not read dataset folder '{path}': {_first_line(exc)}; "
            "keep one format per folder, or point `dataset` at a single file"
        ) from exc
    return _pick_split(splits, split, str(path))


def _load_hub(source: str, split: str, subset: str | None):
    import datasets

    # A plain split name loads every split so an unknown one can be answered with the list;
    # slice syntax ("train[:100]") goes straight to `datasets`.
    plain = split.isidentifier()
    try:
        loaded = datasets.load_dataset(source, subset, split=None if plain else split)
    except ConnectionError as exc:
        raise RlvrError(
            f"could not reach the Hugging Face Hub to load dataset '{source}' (offline?); "
            "connect once so it is cached, or point `dataset` at a local .jsonl/.parquet/.csv file"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ == "DatasetNotFoundError":
            raise RlvrError(
                f"dataset '{source}' was not found on the Hugging Face Hub; check the id "
                "(e.g. 'openai/gsm8k') or point `dataset` at a local .jsonl/.parquet/.csv file"
            ) from exc
        raise RlvrError(
            f"could not load Hub dataset '{source}' (subset {subset!r}, split '{split}'): "
            f"{_first_line(exc)}; check `dataset`, `subset` and `split`"
        ) from exc
    return _pick_split(loaded, split, source) if plain else loaded


def _pick_split(splits, split: str, where: str):
    if split in splits:
        return splits[split]
    names = list(splits)
    raise RlvrError(
        f"dataset '{where}' has no split '{split}'{nearest(split, names)}; "
        f"available splits: {', '.join(names)}; set `split` to one of them"
    )
