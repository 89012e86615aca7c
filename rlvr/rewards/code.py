"""A code-execution reward: run the completion's Python against a row's test cases, in a sandbox.

`make_code_reward()` builds the reward function `code`. It takes the completion's code from its last
```python fenced block (```py and ```python3 too; an unclosed fence runs to the end), else the whole
text, and scores each row with the fraction of its test cases that pass, 0.0 to 1.0.

Test cases (the `tests` column: a list, or a JSON string of one). Each case is either
- `{"input": [arg, ...], "output": expected}`: calls `<entry_point>(*input)` (the `entry_point`
  column names the function; `"input"` may also be a dict of keyword arguments), or
- an assert string `"assert add(1, 2) == 3"`: one `==` between an expression and a literal.
  The parent splits it: the child evaluates only `add(1, 2)`; the literal never leaves the parent.
Values must survive JSON (numbers, strings, bools, None, lists, dicts with string keys); tuples are
compared as lists, floats with a relative and absolute tolerance of 1e-9, bools are not ints.

Threat model: the completion is hostile. It may try to score without solving the task (forge
results, read the expected outputs, tamper with the checker), to hurt the trainer (hang, fork,
exhaust memory or disk, flood output) or to reach outside (files, environment, network, other
processes). What stops it, outermost first:
- Scoring happens in the parent. The child only reports its function's return values, as JSON over
  a private pipe (not stdout, which the candidate owns); the expected outputs are never sent to it,
  so forging, patching `json`, or writing to the pipe directly cannot produce a right answer the
  candidate could not compute. Duplicated or malformed reports score the row 0 (`protocol`): any
  failure to parse them, lists or dicts nested over 100 deep included; the parent reads at most
  `max_report_bytes` of them and kills the child past that (`output_flood`).
- One fresh process per row: `sys.executable -I -S` (no site, no user paths, no PYTHON* variables), an
  empty environment (only PATH), stdin closed, its own session (so the whole group is killed), a
  fresh empty temporary directory deleted afterwards, and stdout/stderr to a file capped at
  `max_output_bytes` (the file-size limit kills it past that).
- In the child, before any candidate code runs (done by the harness, not a preexec_fn, which is
  unsafe with the thread pool that runs rows in parallel): rlimits on CPU time, address space, file size,
  processes (1: no fork, no threads) and open files, no core dumps; a new network namespace (no
  interface is up, not even loopback); `chroot` into the empty directory, so no host file
  (/etc/passwd, /proc, the trainer's files) is visible; `PR_SET_NO_NEW_PRIVS`; and Landlock where
  the kernel has it (5.13+): no filesystem access at all, no TCP (ABI 4), no signals or abstract
  unix sockets out of the sandbox (ABI 6), no ptrace of anything outside it. As root, the child
  also switches to an unprivileged uid of its own (a different one per concurrent run). Without root
  (or with `root_layers=False`) it first enters a user namespace of its own with a network namespace
  (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`, where the kernel allows unprivileged user namespaces),
  which gives it the right to chroot and no capability outside it (it cannot ptrace or read the
  memory of processes outside it), then drops those capabilities.
- The trainer is non-dumpable (`PR_SET_DUMPABLE 0`) while any child runs, so a process of its own
  user cannot read /proc/<pid>/mem or /proc/<pid>/environ or ptrace it. Only while children run:
  permanently it would also lock out the user's debuggers and profilers (gdb, py-spy), core dumps
  and pidfd_getfd (torch's CUDA IPC). The environment of the child is PATH only.
- The parent enforces wall time and kills the process group with SIGKILL, which cannot be ignored.
- Inside the interpreter, as a first line only: an import guard (a `builtins.__import__` wrapper
  and a `sys.meta_path` finder) allows only `DEFAULT_ALLOWED_IMPORTS` (or `allowed_imports`); any
  attempt at another import scores the row 0 even if the candidate catches the ImportError (codec
  modules under `encodings` are exempt; only common codecs are preloaded, others fail). The
  candidate's builtins lack open, input, exit, quit, breakpoint and help. Each test case re-executes
  the code in a fresh namespace with fresh argument copies, so no global state (caches, counters)
  survives from one case to the next.

What is NOT isolated, honestly: the in-interpreter guard is not a security boundary. CPython cannot
be sandboxed from inside (allowed modules expose `os`/`sys` as attributes, `object.__subclasses__()`
reaches `os`, `ctypes` is loaded by the harness), so a determined candidate gets raw system calls;
it is then held only by the kernel layers above. There is no seccomp filter, so the syscalls it can
make are the kernel's whole surface as an unprivileged user (a kernel bug would be an escape). The
function's `isolation` attribute says which layers were in force on the last run, and a warning
(once per process) names what stays reachable when some are missing (`unprotected`): without
chroot and Landlock, files readable by the trainer's user; without a network namespace, the
network; without a uid switch or Landlock ABI 6, signals to the trainer's user's processes (the
trainer included); without a uid switch, Landlock and a non-dumpable trainer, its memory. Module state of
allowed modules (e.g. an attribute set on `math`) does survive between the cases of one row (one
process), though not between rows or calls; it cannot reveal expected outputs. CPU time of
candidates running in parallel is shared with the trainer's CPUs.

Every failure scores 0 for its case (wrong_output, bad_output, exception, recursion, memory, exit,
missing_entry_point, syntax_error) or for the whole row when the run itself cannot be trusted
(timeout, crash, output_flood, forbidden_import, protocol, no_code, and exit when the process ends
before reporting every case, e.g. os._exit). After each call the function
has `last_errors` (reason -> number of rows where it occurred), `last_reasons` (per row, the first
reason or None) and `isolation` (which kernel layers were in force on the last run).
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rlvr.errors import RlvrError
from rlvr.rewards.text import RewardFunc, column, completion_text, short_repr

# Pure-computation standard library modules. Left out on purpose: anything that reaches the OS or
# the interpreter (os, sys, subprocess, socket, ctypes, multiprocessing, threading, signal, shutil,
# importlib, io, pathlib, builtins, gc, inspect, pickle, marshal, time, tempfile, ...).
DEFAULT_ALLOWED_IMPORTS: frozenset[str] = frozenset(
    {
        "__future__", "abc", "array", "bisect", "calendar", "cmath", "collections", "copy",
        "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools", "heapq",
        "itertools", "json", "math", "numbers", "operator", "random", "re", "statistics", "string",
        "textwrap", "typing", "unicodedata",
    }
)  # fmt: skip

_FENCE = re.compile(r"```(?:python3?|py)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_MAX_DEPTH = 100  # nesting of lists/dicts in a report; deeper is a protocol failure, never a parse crash
_PR_GET_DUMPABLE, _PR_SET_DUMPABLE = 3, 4
_KILL_REASONS = {signal.SIGXCPU: "timeout", signal.SIGXFSZ: "output_flood", signal.SIGKILL: "timeout"}
_UID_BASE = 1_800_000_000  # unprivileged uids far above any real account, one per concurrent run
_UIDS_PER_PROCESS = 10_000
_uid_lock = threading.Lock()
_uid_next = [0]
_warned: list[bool] = []  # warn once per process about missing kernel isolation
_dumpable_lock = threading.Lock()
_dumpable_state = {"running": 0, "restore": False}  # children alive; whether to set dumpable back to 1


@dataclass
class _Case:
    payload: dict[str, Any]  # what the child gets: {"args": json} / {"kwargs": json} / {"expr": src}
    expected: Any  # JSON-normalised; stays in the parent


@dataclass
class _Limits:
    timeout_s: float
    memory_mb: int
    max_output_bytes: int
    allowed_imports: frozenset[str]
    max_report_bytes: int = 2**20
    root_layers: bool = True


@dataclass
class _RowResult:
    score: float
    reasons: list[str] = field(default_factory=list)
    isolation: dict[str, bool] = field(default_factory=dict)


def make_code_reward(
    tests_column: str = "tests",
    entry_point_column: str = "entry_point",
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    allowed_imports: set[str] | frozenset[str] | None = None,
    max_output_bytes: int = 65536,
    max_report_bytes: int = 2**20,
    root_layers: bool = True,
) -> RewardFunc:
    """Build the sandboxed code-execution reward `code` (see the module docstring for the format).

    `max_report_bytes` caps what the parent reads of a row's results (its return values as JSON);
    `root_layers=False` skips the layers that need root (chroot as root, uid switch) and uses the
    unprivileged ones even when running as root, as a non-root trainer would.
    """
    if not timeout_s > 0 or memory_mb < 64 or max_output_bytes < 1 or max_report_bytes < 1024:
        raise RlvrError(
            f"code reward limits timeout_s={timeout_s}, memory_mb={memory_mb}, max_output_bytes="
            f"{max_output_bytes}, max_report_bytes={max_report_bytes}: give timeout_s > 0, memory_mb >= 64, "
            "max_output_bytes >= 1 and max_report_bytes >= 1024"
        )
    allowed = DEFAULT_ALLOWED_IMPORTS if allowed_imports is None else frozenset(allowed_imports)
    limits = _Limits(float(timeout_s), int(memory_mb), int(max_output_bytes), allowed, int(max_report_bytes),
                     bool(root_layers))

    def code(prompts, completions, completion_ids=None, **columns) -> list[float | None]:
        """Fraction of the row's test cases the completion's code passes, run in a sandbox."""
        tests = column(columns, tests_column, "code")
        entries = columns.get(entry_point_column, [None] * len(completions))
        rows = [_parse_cases(t, e) for t, e in zip(tests, entries)]
        sources = [extract_code(completion_text(c)) for c in completions]
        workers = max(1, min(os.cpu_count() or 1, len(completions)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda sc: _score_row(sc[0], sc[1], limits), zip(sources, rows)))
        code.last_reasons = [r.reasons[0] if r.reasons else None for r in results]
        code.last_errors = dict(Counter(reason for r in results for reason in dict.fromkeys(r.reasons)))
        code.isolation = next((r.isolation for r in results if r.isolation), code.isolation)
        _warn_once(code.isolation)
        return [r.score for r in results]

    code.last_errors = {}
    code.last_reasons = []
    code.isolation = {}
    code.__name__ = code.__qualname__ = "code"
    return code


def unprotected(isolation: dict[str, bool]) -> list[str]:
    """What candidate code can still reach, given the layers that were in force (`isolation`).

    >>> unprotected({"net": True, "chroot": True, "uid": True, "landlock": True, "landlock_signals": True,
    ...              "nondumpable": True})
    []
    """
    if not isolation:
        return []
    on = {k for k, v in isolation.items() if v}
    left = []
    if not on & {"chroot", "landlock"}:
        left.append("files readable by the trainer's user (no chroot, no Landlock)")
    if "net" not in on:
        left.append("the network (no network namespace)")
    if not on & {"uid", "landlock_signals"}:
        left.append("signals to the trainer and this user's other processes (no uid switch, no Landlock scope)")
    if not on & {"uid", "landlock", "nondumpable"}:
        left.append("the trainer's memory and environment (no uid switch, Landlock or non-dumpable trainer)")
    return left


def _warn_once(isolation: dict[str, bool]) -> None:
    left = unprotected(isolation)
    if left and not _warned:
        _warned.append(True)
        missing = sorted(k for k, v in isolation.items() if not v)
        warnings.warn(
            f"code reward: sandbox layers {missing} are unavailable here, so candidate code that escapes "
            f"Python can reach: {'; '.join(left)}. Always unprotected: the kernel's system calls (no "
            "seccomp) and CPU time shared with the trainer",
            RuntimeWarning,
            stacklevel=3,
        )


@contextlib.contextmanager
def _trainer_not_dumpable():
    """The trainer process is non-dumpable (PR_SET_DUMPABLE 0) while any candidate runs; yields
    whether it is.

    Non-dumpable: only a process with CAP_SYS_PTRACE in the trainer's user namespace may ptrace it,
    read /proc/<pid>/mem or /proc/<pid>/environ, or use process_vm_readv on it, so a candidate of
    the same user (or root in a user namespace of its own) cannot. Only while children run,
    because it also stops the user's own debuggers and profilers (gdb, py-spy), core dumps, and
    pidfd_getfd (torch's CUDA IPC) from working on the trainer. Restored when the last child of
    this process is reaped; a trainer that was already non-dumpable stays so.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with _dumpable_lock:
        if _dumpable_state["running"] == 0:
            dumpable = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
            _dumpable_state["restore"] = dumpable == 1 and libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
        _dumpable_state["running"] += 1
        protected = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    try:
        yield protected
    finally:
        with _dumpable_lock:
            _dumpable_state["running"] -= 1
            if _dumpable_state["running"] == 0 and _dumpable_state["restore"]:
                libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
                _dumpable_state["restore"] = False


def extract_code(text: str) -> str:
    """The last ```python fenced block of `text` (an unclosed one runs to the end), else all of it.

    >>> extract_code("Here:\\n```python\\nx = 1\\n```\\nDone.")
    'x = 1\\n'
    """
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


# --- test cases (parent side) -----------------------------------------------------------------


def _parse_cases(tests: Any, entry_point: Any) -> list[_Case]:
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError as e:
            raise RlvrError(
                f"code reward: tests {short_repr(tests)} is a string but not JSON ({e}); give a list"
            ) from e
    if not isinstance(tests, (list, tuple)) or not tests:
        raise RlvrError(
            f"code reward: tests {short_repr(tests)} is not a non-empty list of test cases; give "
            '[{"input": [args], "output": expected}, ...] or ["assert f(1) == 2", ...]'
        )
    return [_parse_case(t, entry_point) for t in tests]


def _parse_case(case: Any, entry_point: Any) -> _Case:
    if isinstance(case, str):
        return _parse_assert(case)
    if not isinstance(case, dict) or "input" not in case or "output" not in case:
        raise RlvrError(
            f'code reward: test case {short_repr(case)} is neither {{"input": [...], "output": ...}} '
            "nor an assert string; fix the tests column"
        )
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise RlvrError(
            f"code reward: entry point {short_repr(entry_point)} is not a function name; input/output test "
            "cases need an entry_point column naming the function to call"
        )
    args = case["input"]
    key = "kwargs" if isinstance(args, dict) else "args"
    if not isinstance(args, (list, tuple, dict)):
        raise RlvrError(f"code reward: test input {short_repr(args)} is not a list of arguments; wrap it: [x]")
    return _Case({key: _to_json(args), "entry": entry_point}, _normalise(case["output"]))


def _parse_assert(text: str) -> _Case:
    hint = "write it as 'assert <expression> == <literal>'"
    try:
        tree = ast.parse(text.strip())
    except SyntaxError as e:
        raise RlvrError(f"code reward: test case {short_repr(text)} is not valid Python ({e.msg}); {hint}") from e
    stmt = tree.body[0] if len(tree.body) == 1 else None
    test = stmt.test if isinstance(stmt, ast.Assert) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        raise RlvrError(f"code reward: test case {short_repr(text)} is not a single == assert; {hint}")
    left, right = test.left, test.comparators[0]
    for expr, literal in ((left, right), (right, left)):
        try:
            expected = ast.literal_eval(literal)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            continue
        # The child gets only the expression: the expected literal never leaves the parent.
        return _Case({"expr": ast.unparse(expr)}, _normalise(expected))
    raise RlvrError(f"code reward: test case {short_repr(text)} compares two non-literals; {hint}")


def _to_json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise RlvrError(f"code reward: test value {short_repr(value)} is not JSON data ({e})") from e


def _normalise(value: Any) -> Any:
    return json.loads(_to_json(value))  # tuples -> lists, int keys -> str, as the child's report


def _same(got: Any, want: Any) -> bool:
    """JSON-data equality: bools are not ints, two floats are compared with a 1e-9 tolerance, a float
    and an int exactly."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, float) or isinstance(want, float):
        if not isinstance(got, (int, float)) or not isinstance(want, (int, float)):
            return False
        if not (isinstance(got, float) and isinstance(want, float)):
            return got == want  # an integer on either side: exact (3.0 == 3, 3.0000000001 != 3)
        return got == want or math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return type(got) is type(want) and got == want


# --- one row: run the child, read its report, score ---------------------------------------------


def _score_row(source: str, cases: list[_Case], limits: _Limits) -> _RowResult:
    if not source.strip():
        return _RowResult(0.0, ["no_code"])
    failure, reports, isolation = _run_child(source, cases, limits)
    if failure is not None:
        return _RowResult(0.0, [failure], isolation)
    reasons: list[str] = []
    passed = 0
    for case, report in zip(cases, reports):
        if "err" in report:
            reasons.append(report["err"])
        elif _same(report["ok"], case.expected):
            passed += 1
        else:
            reasons.append("wrong_output")
    return _RowResult(passed / len(cases), reasons, isolation)


def _run_child(source: str, cases: list[_Case], limits: _Limits) -> tuple[str | None, list[dict], dict[str, bool]]:
    """Run the harness on `source`; (row failure or None, one report per case, isolation flags)."""
    workdir = tempfile.mkdtemp(prefix="rlvr-code-")
    read_fd, write_fd = os.pipe()
    proc = None
    try:
        config_path = _write_config(workdir, source, cases, limits, write_fd)
        with tempfile.TemporaryFile() as output, _trainer_not_dumpable() as nondumpable:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HARNESS, config_path],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env={"PATH": "/usr/bin:/bin"},
                cwd=workdir,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group, killed as a whole
            )
            os.close(write_fd)
            write_fd = -1
            data, timed_out = _read_until(read_fd, proc, time.monotonic() + limits.timeout_s,
                                          limits.max_report_bytes)
            _kill(proc)
            flooded = (os.fstat(output.fileno()).st_size >= limits.max_output_bytes
                       or len(data) > limits.max_report_bytes)
        failure, reports, isolation = _judge(data, timed_out, flooded, proc.returncode, len(cases))
        return failure, reports, {**isolation, "nondumpable": nondumpable} if isolation else {}
    finally:
        if proc is not None:
            _kill(proc)
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        _remove_tree(workdir)


def _write_config(workdir: str, source: str, cases: list[_Case], limits: _Limits, result_fd: int) -> str:
    config = {
        "source": source,
        "cases": [c.payload for c in cases],
        "allowed": sorted(limits.allowed_imports),
        "result_fd": result_fd,
        "uid": _next_uid(),
        "cpu_s": max(1, math.ceil(limits.timeout_s)),
        "memory_bytes": limits.memory_mb * 2**20,
        "max_output_bytes": limits.max_output_bytes,
        "root_layers": limits.root_layers,
    }
    path = os.path.join(workdir, "config.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    return path


def _uid_block() -> range:
    """The sandbox uids of this process: a block per trainer process (pids are unique while alive)."""
    start = _UID_BASE + (os.getpid() % 20_000) * _UIDS_PER_PROCESS
    return range(start, start + _UIDS_PER_PROCESS)


def _next_uid() -> int:
    # A uid per concurrent run, so one candidate cannot signal, trace or starve (NPROC) another.
    with _uid_lock:
        _uid_next[0] = (_uid_next[0] + 1) % _UIDS_PER_PROCESS
        return _uid_block()[_uid_next[0]]


def _read_until(fd: int, proc: subprocess.Popen, deadline: float, cap: int) -> tuple[bytes, bool]:
    """Read the result pipe until EOF and exit, or the deadline; (data, timed out).

    At most cap + 1 bytes are read: a longer report is a flood, and the child is killed at once
    (it is not drained), so a candidate's return values cost the parent at most that much.

    The child is left unreaped (a zombie keeps its process-group id reserved) so that the
    following killpg cannot hit an unrelated group that reused the id.
    """
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while size <= cap:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), True
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, min(65536, cap + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if size > cap:
        return b"".join(chunks), False  # flooded: the caller kills it
    while not _exited(proc.pid):
        if time.monotonic() >= deadline:
            return b"".join(chunks), True
        time.sleep(0.005)
    return b"".join(chunks), False


def _exited(pid: int) -> bool:
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _kill(proc: subprocess.Popen) -> None:
    # SIGKILL to the whole group: cannot be caught or ignored, and reaches any child it made.
    if proc.returncode is not None:
        return  # reaped: its group id may already belong to someone else
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _judge(
    data: bytes, timed_out: bool, flooded: bool, returncode: int | None, n: int
) -> tuple[str | None, list[dict], dict[str, bool]]:
    """Turn the child's report and exit into (row failure or None, per-case reports, isolation)."""
    if timed_out:
        return "timeout", [], {}
    if flooded:
        return "output_flood", [], {}
    if returncode is not None and returncode < 0:
        return _KILL_REASONS.get(-returncode, "crash"), [], {}
    messages = _parse_report(data)
    if messages is None or not messages or "isolation" not in messages[0]:
        return "protocol", [], {}
    isolation = {k: bool(v) for k, v in dict(messages[0]["isolation"]).items()}
    cases = messages[1:]
    if any(m.get("err") == "forbidden_import" for m in cases):
        return "forbidden_import", [], isolation
    if len(cases) != n + 1 or cases[-1] != {"done": True} or returncode != 0:
        # Exited before reporting every case (sys.exit, os._exit, killed), or reported too much.
        return ("exit" if len(cases) <= n else "protocol"), [], isolation
    cases = cases[:-1]
    if [m.get("i") for m in cases] != list(range(n)) or not all(_well_formed(m) for m in cases):
        return "protocol", [], isolation
    return None, cases, isolation


def _parse_report(data: bytes) -> list[dict] | None:
    """The report's messages, or None for anything that is not well-formed JSON lines of dicts
    nested at most _MAX_DEPTH deep (any failure of the parse itself, RecursionError included)."""
    try:
        messages = [json.loads(line) for line in data.decode().splitlines()]
    except Exception:
        return None
    if not all(isinstance(m, dict) and _depth_at_most(m, _MAX_DEPTH) for m in messages):
        return None
    return messages


def _depth_at_most(value: Any, limit: int) -> bool:
    """Whether lists and dicts in `value` nest at most `limit` deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (list, dict)):
                if depth + 1 > limit:
                    return False
                stack.append((child, depth + 1))
    return True


def _well_formed(message: dict) -> bool:
    if set(message) == {"i", "ok"}:
        return True
    return set(message) == {"i", "err"} and message["err"] in _CASE_REASONS


_CASE_REASONS = frozenset(
    {"exception", "recursion", "memory", "exit", "bad_output", "missing_entry_point", "syntax_error"}
)

# The child. Runs as `python -I -S -c _HARNESS config_path`; everything before `_run_cases` happens
# before any candidate code exists in the process. It reports one JSON line per message on the
# inherited pipe: {"isolation": {...}}, then {"i": k, "ok": value} or {"i": k, "err": reason} per
# case, then {"done": true}.
_HARNESS = r"""
import builtins, json, os, resource, sys, types

# Codec modules load lazily on first use of an encoding: harmless, so never counted as a forbidden
# import; the common ones are loaded before the chroot hides the files.
CODECS = ("encodings.latin_1", "encodings.cp1252", "encodings.utf_16", "encodings.utf_32", "encodings.utf_8_sig",
          "encodings.cp437", "encodings.unicode_escape", "encodings.raw_unicode_escape")

def _limit(which, soft, hard=None):
    try:
        resource.setrlimit(which, (soft, soft if hard is None else hard))
    except (ValueError, OSError):
        pass

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000

def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)

def _user_namespace(libc, iso):
    # Unprivileged: a user namespace of its own (with a network namespace: no interfaces at all)
    # gives the capabilities for chroot inside it and none over anything outside it.
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        iso["userns"] = iso["net"] = True
    elif libc.unshare(CLONE_NEWUSER) == 0:
        iso["userns"] = True
    if iso["userns"]:
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", "%d %d 1" % (uid, uid))
            _write("/proc/self/gid_map", "%d %d 1" % (gid, gid))
        except OSError:
            pass

def _drop_capabilities(libc):
    import ctypes
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2): all empty
    return libc.capset(header, data) == 0

def _landlock(libc):
    # No filesystem access at all, no TCP bind/connect (ABI 4), no signals or abstract unix sockets
    # out of the sandbox (ABI 6); a Landlock domain also cannot ptrace anything outside it.
    import ctypes
    abi = libc.syscall(444, None, ctypes.c_size_t(0), 1)  # landlock_create_ruleset(VERSION)
    if abi < 1:
        return False, False
    fs = (1 << 13) - 1
    for version, bit in ((2, 13), (3, 14), (5, 15)):
        if abi >= version:
            fs |= 1 << bit
    attr = (ctypes.c_uint64 * 3)(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd = libc.syscall(444, attr, ctypes.c_size_t(size), 0)
    if fd < 0:
        return False, False
    ok = libc.syscall(446, fd, 0) == 0  # landlock_restrict_self
    os.close(fd)
    return ok, ok and abi >= 6

def _confine(cfg):
    _limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    _limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, cfg["max_output_bytes"])
    _limit(resource.RLIMIT_NPROC, 1)
    _limit(resource.RLIMIT_NOFILE, 16)
    _limit(resource.RLIMIT_CORE, 0)
    iso = {"net": False, "chroot": False, "uid": False, "userns": False, "landlock": False,
           "landlock_signals": False}
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    root = cfg["root_layers"] and os.geteuid() == 0
    if root:
        iso["net"] = libc.unshare(CLONE_NEWNET) == 0  # no interfaces up, not even lo
    else:
        _user_namespace(libc, iso)
    for name in list(cfg["allowed"]) + list(CODECS):  # after chroot no module file can be found: load now
        try:
            __import__(name)
        except Exception:
            pass
    try:
        os.chroot(".")
        os.chdir("/")
        iso["chroot"] = True
    except OSError:
        pass
    if root:
        try:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
            iso["uid"] = True
        except OSError:
            pass
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    iso["landlock"], iso["landlock_signals"] = _landlock(libc)
    if iso["userns"]:
        _drop_capabilities(libc)  # the namespace's capabilities served the chroot; none are left
    sys.path[:] = []
    return iso

def _guard(allowed, tried):
    real_import = builtins.__import__
    def ok(name):
        top = name.partition(".")[0]
        return name in allowed or top in allowed or top == "encodings"
    def guarded(name, globals=None, locals=None, fromlist=(), level=0):
        if level != 0 or not ok(name):
            tried.append(name)
            raise ImportError("import of %r is not allowed here" % name)
        return real_import(name, globals, locals, fromlist, level)
    class Finder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if not ok(name):
                tried.append(name)
                raise ImportError("import of %r is not allowed here" % name)
            return None
    builtins.__import__ = guarded
    sys.meta_path.insert(0, Finder)
    safe = dict(builtins.__dict__)
    for name in ("open", "input", "breakpoint", "exit", "quit", "help", "copyright", "credits", "license"):
        safe.pop(name, None)
    return safe

def _reason(error):
    if isinstance(error, SystemExit):
        return "exit"
    if isinstance(error, RecursionError):
        return "recursion"
    if isinstance(error, MemoryError):
        return "memory"
    return "exception"

def _run_case(code, case, safe, tried):
    # A fresh module per case; registered so that dataclasses, typing and pickle-style lookups of
    # sys.modules[cls.__module__] work. Not "__main__": `if __name__ == "__main__"` demos stay off.
    module = types.ModuleType("__candidate__")
    module.__dict__["__builtins__"] = dict(safe)
    sys.modules["__candidate__"] = module
    ns = module.__dict__
    exec(code, ns)
    if "expr" in case:
        return eval(case["expr"], ns)
    fn = ns.get(case["entry"])
    if not callable(fn):
        raise LookupError("missing_entry_point")
    if "kwargs" in case:
        return fn(**json.loads(case["kwargs"]))
    return fn(*json.loads(case["args"]))

def _main():
    path = sys.argv[1]
    with open(path) as f:
        cfg = json.load(f)
    os.unlink(path)
    out = os.fdopen(cfg["result_fd"], "w", buffering=1)
    dumps = json.dumps
    def send(message):
        out.write(dumps(message) + "\n")
        out.flush()
    send({"isolation": _confine(cfg)})
    tried = []
    safe = _guard(frozenset(cfg["allowed"]), tried)
    try:
        code = compile(cfg["source"], "<candidate>", "exec")
    except BaseException:
        code = None
    for i, case in enumerate(cfg["cases"]):
        del tried[:]
        try:
            if code is None:
                raise SyntaxError("syntax_error")
            value = _run_case(code, case, safe, tried)
            try:
                text = dumps({"i": i, "ok": value})
            except BaseException:
                text = dumps({"i": i, "err": "bad_output"})
        except SyntaxError as e:
            text = dumps({"i": i, "err": "syntax_error" if code is None else _reason(e)})
        except LookupError as e:
            text = dumps({"i": i, "err": "missing_entry_point" if e.args == ("missing_entry_point",) else "exception"})
        except BaseException as e:
            text = dumps({"i": i, "err": _reason(e)})
        if tried:
            text = dumps({"i": i, "err": "forbidden_import"})
        out.write(text + "\n")
        out.flush()
    send({"done": True})

_main()
"""
