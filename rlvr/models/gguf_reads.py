"""One parse per GGUF file while transformers loads it (its tokenizer, config and tensors).

transformers 5.x reads a GGUF's metadata with gguf-py's `GGUFReader` once for the tokenizer's
config, once for the model's config and once more with its tensors (a pure-Python walk over every
metadata item: for the bundled SmolLM2-135M, 49K vocabulary entries and 49K merges), and it builds
gguf-py's tensor-name map once per module (about 400 times for a 30-layer model). Measured with
bench-style timing on a 2-core AVX2 EPYC (2026-12-03): tokenizer 7.5 s + model 24.3 s, of which one
parse is 6.1 s. Inside `shared_gguf_reads()` each file is parsed once and each name map built once;
the library's own code does the rest, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import os


@contextlib.contextmanager
def shared_gguf_reads():
    """Within the block, `gguf.GGUFReader(path)` returns one reader per file (readers are read-only
    memory maps) and `gguf.get_tensor_name_map` is memoised; both are restored on exit."""
    try:
        import gguf
    except ImportError:  # transformers then says that GGUF loading needs gguf
        yield
        return
    make_reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def shared_reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = make_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = make_reader, name_map
