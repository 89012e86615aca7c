"""Tests for rlvr.rewards.code: honest solutions score 1.0, hostile ones are contained and score 0.

The adversarial completions all run in one batch (rows in parallel, as the trainer calls it), once
per module; each test then checks its row's score and recorded reason. Completions that need raw
system calls reach `os` through `object.__subclasses__()`, the classic escape from in-process
Python sandboxes, so those rows test the kernel layers (chroot, uid, network namespace, rlimits),
not the import guard. Time bounds are generous: they catch a hang, not a slow machine.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from rlvr.errors import RlvrError
from rlvr.rewards import code as code_module
from rlvr.rewards.code import extract_code, make_code_reward

TIMEOUT = 1.5
ADD_TESTS = [{"input": [1, 2], "output": 3}, {"input": [10, -4], "output": 6}]
# `os_` is the os module's namespace, reached without importing anything.
OS = "os_ = [c for c in object.__subclasses__() if c.__name__ == '_wrap_close'][0].__init__.__globals__\n"
CTYPES = OS + "ctypes = os_['sys'].modules['ctypes']\nlibc = ctypes.CDLL(None)\n"


# process_vm_readv(getppid(), ...) from an address that is surely unmapped in the trainer: EFAULT
# means the kernel allowed access to its memory (a mapped address would have been read), EPERM
# or ESRCH that it did not.
READ_PARENT_MEM = (
    "def get():\n    buf = ctypes.create_string_buffer(8)\n"
    "    local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)\n"
    "    remote = (ctypes.c_void_p * 2)(4096, 8)\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    n = libc.syscall(310, os_['getppid'](), local, 1, remote, 1, 0)\n"
    "    return 'readable' if n == 8 or ctypes.get_errno() == 14 else 'denied'\n"
)


def _batch_bound(rows: int, timeout: float) -> float:
    # Each row takes at most its timeout plus start-up; rows run cpu_count at a time.
    waves = -(-rows // max(1, min(os.cpu_count() or 1, rows)))
    return waves * (timeout + 2.0) + 10.0


# --- honest solutions --------------------------------------------------------------------------


def test_honest_solutions_score_full_marks():
    reward = make_code_reward(timeout_s=2.0)
    completions = [
        "Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds.",
        "def reverse(s):\n    return s[::-1]\n",
        "```python\nfrom functools import lru_cache\n\n@lru_cache(None)\ndef fib(n):\n"
        "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```",
        [{"role": "assistant", "content": "```py\nimport math\ndef hyp(a, b):\n    return math.hypot(a, b)\n```"}],
        "def pairs(xs):\n    return [(x, x * x) for x in xs]\n",
        "from __future__ import annotations\nfrom dataclasses import dataclass\n\n@dataclass\nclass Box:\n"
        "    items: list[str]\n\ndef count(xs: list[str]) -> dict[str, int]:\n"
        "    return {x: Box(xs).items.count(x) for x in xs}\n\nif __name__ == '__main__':\n    print(count(input()))\n",
    ]
    tests = [
        ADD_TESTS,
        '[{"input": ["abc"], "output": "cba"}, {"input": [""], "output": ""}]',  # a JSON string column
        ["assert fib(10) == 55", "assert 0 == fib(0)", "assert fib(30) == 832040"],
        [{"input": [3, 4], "output": 5.0}, {"input": {"a": 6, "b": 8}, "output": 10.0}],
        [{"input": [[1, 2]], "output": [[1, 1], [2, 4]]}],  # tuples compare as lists
        [{"input": [["a", "b", "a"]], "output": {"a": 2, "b": 1}}],
    ]
    entries = ["add", "reverse", None, "hyp", "pairs", "count"]
    scores = reward(["p"] * 6, completions, tests=tests, entry_point=entries)
    assert scores == [1.0] * 6, reward.last_reasons
    assert reward.last_errors == {}
    assert reward.__name__ == "code"


def test_partial_credit_and_wrong_types():
    reward = make_code_reward(timeout_s=2.0)
    completions = [
        "def add(a, b):\n    return 3\n",  # right for one case of two
        "def add(a, b):\n    return True if a + b == 1 else a + b\n",
        "def add(a, b):\n    return float(a + b)\n",  # 3.0 == 3 within tolerance
        "def add(a, b):\n    return str(a + b)\n",
    ]
    tests = [ADD_TESTS, [{"input": [0, 1], "output": 1}], ADD_TESTS, ADD_TESTS]
    scores = reward(["p"] * 4, completions, tests=tests, entry_point=["add"] * 4)
    assert scores == [0.5, 0.0, 1.0, 0.0]
    assert reward.last_reasons == ["wrong_output", "wrong_output", None, "wrong_output"]
    assert reward.last_errors == {"wrong_output": 3}


def test_extract_code_takes_the_last_python_block():
    assert extract_code("```python\na = 1\n```\ntext\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_code("```python\nc = 3\n") == "c = 3\n"  # cut off before the closing fence
    assert extract_code("d = 4") == "d = 4"


@pytest.mark.parametrize(
    "tests, entry",
    [
        ([], "add"),
        ("not json", "add"),
        ([{"input": [1]}], "add"),
        ([{"input": [1], "output": 1}], None),
        (["add(1) == 2"], None),
        (["assert add(1) < 2"], None),
        (["assert add(1) == g(2)"], None),
        ([{"input": 5, "output": 1}], "add"),
    ],
)
def test_bad_test_specs_are_user_errors(tests, entry):
    with pytest.raises(RlvrError):
        make_code_reward()(["p"], ["def add(a): return a"], tests=[tests], entry_point=[entry])


def test_missing_tests_column_is_a_user_error():
    with pytest.raises(RlvrError, match="tests"):
        make_code_reward()(["p"], ["x = 1"], answer=["1"])


def test_bad_limits_are_user_errors():
    with pytest.raises(RlvrError):
        make_code_reward(timeout_s=0)


# --- adversarial completions ------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Host-side bait: a secret file, a secret env var, a listening socket, a path to not create."""
    base = tmp_path_factory.mktemp("code_reward")
    secret = uuid.uuid4().hex
    secret_file = base / "secret.txt"
    secret_file.write_text(secret)
    os.chmod(secret_file, 0o644)  # world-readable: only the chroot keeps it out of reach
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    old = os.environ.get("RLVR_CODE_SECRET")
    os.environ["RLVR_CODE_SECRET"] = secret
    with open("/etc/passwd") as f:
        passwd_line = f.readline().rstrip("\n")
    yield {
        "secret": secret,
        "secret_file": str(secret_file),
        "outside": str(base / f"pwned-{uuid.uuid4().hex}"),
        "cache": str(base / "cache.txt"),
        "port": listener.getsockname()[1],
        "listener": listener,
        "passwd": passwd_line,
    }
    listener.close()
    if old is None:
        os.environ.pop("RLVR_CODE_SECRET", None)
    else:
        os.environ["RLVR_CODE_SECRET"] = old


def _adversaries(env: dict) -> dict[str, tuple[str, list, str | None, set[str]]]:
    """name -> (completion, tests, entry point, accepted reasons). Every one must score 0."""
    secret = [{"input": [], "output": env["secret"]}]
    read = (
        "def get():\n    fd = os_['open']({!r}, os_['O_RDONLY'])\n"
        "    return os_['read'](fd, 4096).decode().split('\\n')[0]\n"
    )
    return {
        "fork_bomb_import": ("import os\ndef add(a, b):\n    while True:\n        os.fork()\n", ADD_TESTS, "add",
                             {"forbidden_import"}),
        "fork_bomb_escape": (OS + "def add(a, b):\n    while True:\n        os_['fork']()\n", ADD_TESTS, "add",
                             {"exception"}),
        "infinite_loop": ("def add(a, b):\n    while True:\n        pass\n", ADD_TESTS, "add", {"timeout"}),
        "memory_bomb": ("def add(a, b):\n    x = [0] * 10**9\n    return a + b\n", ADD_TESTS, "add", {"memory"}),
        "memory_bomb_toplevel": ("s = 'x' * 10**10\ndef add(a, b):\n    return a + b\n", ADD_TESTS, "add",
                                 {"memory"}),
        "huge_output": ("def add(a, b):\n    print('x' * 10**6)\n    return a + b\n", ADD_TESTS, "add",
                        {"output_flood"}),
        "output_flood_loop": ("def add(a, b):\n    while True:\n        print('spam' * 100)\n", ADD_TESTS, "add",
                              {"output_flood"}),
        "endless_generator": ("def add(a, b):\n    while True:\n        yield a + b\n", ADD_TESTS, "add",
                              {"bad_output"}),
        "write_outside": (OS + f"def add(a, b):\n    fd = os_['open']({env['outside']!r}, os_['O_WRONLY'] | "
                          "os_['O_CREAT'])\n    os_['write'](fd, b'x')\n    return a + b\n", ADD_TESTS, "add",
                          {"exception"}),
        "write_with_open": (f"def add(a, b):\n    open({env['outside']!r}, 'w').write('x')\n    return a + b\n",
                            ADD_TESTS, "add", {"exception"}),
        "read_secret_file": (OS + read.format(env["secret_file"]), secret, "get", {"exception"}),
        "read_etc_passwd": (OS + read.format("/etc/passwd"), [{"input": [], "output": env["passwd"]}], "get",
                            {"exception"}),
        "read_env_var": (OS + "def get():\n    return os_['environ'].get('RLVR_CODE_SECRET')\n", secret, "get",
                         {"wrong_output"}),
        "read_parent_environ": (OS + "def get():\n    fd = os_['open']('/proc/%d/environ' % os_['getppid'](), 0)\n"
                                "    data = os_['read'](fd, 65536).decode()\n"
                                "    return data.split('RLVR_CODE_SECRET=')[1].split('\\x00')[0]\n", secret, "get",
                                {"exception"}),
        "open_proc_self": ("def add(a, b):\n    return len(open('/proc/self/maps').read())\n", ADD_TESTS, "add",
                           {"exception"}),
        "open_proc_self_escape": (OS + "def add(a, b):\n    fd = os_['open']('/proc/self/status', 0)\n"
                                  "    return len(os_['read'](fd, 100)) and a + b\n", ADD_TESTS, "add", {"exception"}),
        "socket_import": ("import socket\ndef get(port):\n    socket.create_connection(('127.0.0.1', port))\n"
                          "    return 'connected'\n", [{"input": [env["port"]], "output": "connected"}], "get",
                          {"forbidden_import"}),
        "socket_ctypes": (CTYPES + "def get(port):\n    s = libc.socket(2, 1, 0)\n"
                          "    addr = (2).to_bytes(2, 'little') + port.to_bytes(2, 'big') + bytes([127, 0, 0, 1])"
                          " + bytes(8)\n    buf = ctypes.create_string_buffer(addr, 16)\n"
                          "    return 'connected' if libc.connect(s, buf, 16) == 0 else 'failed'\n",
                          [{"input": [env["port"]], "output": "connected"}], "get", {"wrong_output", "exception"}),
        "patch_time": ("import time\ntime.time = lambda: 0.0\ndef add(a, b):\n    return a + b\n", ADD_TESTS, "add",
                       {"forbidden_import"}),
        "patch_builtins_module": ("import builtins\nbuiltins.isinstance = lambda *a: True\n"
                                  "def add(a, b):\n    return a + b\n", ADD_TESTS, "add", {"forbidden_import"}),
        "liar_int": ("class Liar(int):\n    def __eq__(self, other):\n        return True\n"
                     "    __hash__ = int.__hash__\n__builtins__['type'] = lambda x: int\n"
                     "def add(a, b):\n    return Liar(0)\n", ADD_TESTS, "add", {"wrong_output"}),
        "liar_object": ("class Liar:\n    def __eq__(self, other):\n        return True\n"
                        "def add(a, b):\n    return Liar()\n", ADD_TESTS, "add", {"bad_output"}),
        "import_numpy": ("import numpy as np\ndef add(a, b):\n    return int(np.add(a, b))\n", ADD_TESTS, "add",
                         {"forbidden_import"}),
        "import_numpy_caught": ("try:\n    import numpy\nexcept ImportError:\n    pass\n"
                                "def add(a, b):\n    return a + b\n", ADD_TESTS, "add", {"forbidden_import"}),
        "sys_exit_import": ("import sys\nsys.exit(0)\n", ADD_TESTS, "add", {"forbidden_import"}),
        "raise_system_exit": ("raise SystemExit(0)\ndef add(a, b):\n    return a + b\n", ADD_TESTS, "add", {"exit"}),
        "os_exit": (OS + "os_['_exit'](0)\ndef add(a, b):\n    return a + b\n", ADD_TESTS, "add", {"exit"}),
        "signal_import": ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                          "def add(a, b):\n    return a + b\n", ADD_TESTS, "add", {"forbidden_import"}),
        "signal_ignore_then_loop": (CTYPES + "for s in (14, 15, 24, 1, 2):\n    libc.signal(s, ctypes.c_void_p(1))\n"
                                    "def add(a, b):\n    while True:\n        pass\n", ADD_TESTS, "add", {"timeout"}),
        "signal_parent": (OS + "os_['kill'](os_['getppid'](), 0)\ndef add(a, b):\n    return a + b\n", ADD_TESTS,
                          "add", {"exception"}),  # signal 0: only asks whether it may signal the trainer
        "read_parent_mem": (CTYPES + READ_PARENT_MEM, [{"input": [], "output": "readable"}], "get",
                            {"wrong_output", "exception"}),
        "runs_as_root": (OS + "def get():\n    return os_['getuid']()\n", [{"input": [], "output": 0}], "get",
                         {"wrong_output"}),
        "tamper_harness": (OS + "import json\ntry:\n    os_['unlink'](os_['sys'].argv[1])\nexcept OSError:\n"
                           "    pass\njson.dumps = lambda *a, **k: '{\"i\": 0, \"ok\": 3}'\n"
                           "def add(a, b):\n    return -1\n", ADD_TESTS, "add", {"wrong_output"}),
        "forge_results_fd": (OS + "for fd in range(3, 16):\n    try:\n        os_['write'](fd, b'{\"i\": 0, \"ok\": "
                             "\"PASS\"}\\n{\"i\": 1, \"passed\": true}\\n{\"done\": true}\\n')\n    except OSError:\n"
                             "        pass\nos_['_exit'](0)\n", ADD_TESTS, "add", {"protocol", "wrong_output", "exit"}),
        "fake_stdout": ("import json\nprint('PASS')\nprint(json.dumps({'i': 0, 'ok': 3}))\n"
                        "def add(a, b):\n    print('{\"done\": true}')\n    return None\n", ADD_TESTS, "add",
                        {"wrong_output"}),
        "dunder_import": ("def add(a, b):\n    return __import__('os').getpid() and a + b\n", ADD_TESTS, "add",
                          {"forbidden_import"}),
        "exec_smuggle": ("exec('import subprocess')\ndef add(a, b):\n    return a + b\n", ADD_TESTS, "add",
                         {"forbidden_import"}),
        "eval_smuggle": ("def add(a, b):\n    return eval(\"__import__('socket')\", {}) and a + b\n", ADD_TESTS,
                         "add", {"forbidden_import"}),
        "recursion_bomb": ("def add(a, b):\n    return add(a, b)\n", ADD_TESTS, "add", {"recursion"}),
        "loop_in_finally": ("def add(a, b):\n    try:\n        return a + b\n    finally:\n        while True:\n"
                            "            pass\n", ADD_TESTS, "add", {"timeout"}),
        "syntax_error": ("def add(a, b) return a + b", ADD_TESTS, "add", {"syntax_error"}),
        "no_code": ("   ", ADD_TESTS, "add", {"no_code"}),
        "missing_entry_point": ("def plus(a, b):\n    return a + b\n", ADD_TESTS, "add", {"missing_entry_point"}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def attack(env):
    """Run every adversary in one batch; name -> (score, reason), plus the batch's timing."""
    table = _adversaries(env)
    reward = make_code_reward(timeout_s=TIMEOUT)
    names = list(table)
    start = time.monotonic()
    scores = reward(
        ["p"] * len(names),
        [table[n][0] for n in names],
        tests=[table[n][1] for n in names],
        entry_point=[table[n][2] for n in names],
    )
    elapsed = time.monotonic() - start
    results = {n: (s, r) for n, s, r in zip(names, scores, reward.last_reasons)}
    return {"results": results, "elapsed": elapsed, "reward": reward, "table": table}


def _needs_isolation(attack, *layers: str) -> None:
    missing = [layer for layer in layers if not attack["reward"].isolation.get(layer)]
    if missing:
        pytest.skip(f"needs root for kernel isolation layers {missing}")


ESCAPES = {"fork_bomb_escape", "write_outside", "read_secret_file", "read_etc_passwd", "read_parent_environ",
           "open_proc_self_escape", "socket_ctypes", "signal_parent", "runs_as_root", "read_parent_mem"}  # fmt: skip
# What a trainer without root faces (forced with root_layers=False): every escape but the uid check.
UNPRIVILEGED_ESCAPES = sorted(ESCAPES - {"runs_as_root"})


_NAMES = list(_adversaries({"secret": "", "secret_file": "", "outside": "", "cache": "", "passwd": "", "port": 1}))


@pytest.mark.parametrize("name", _NAMES)
def test_adversary_is_contained(attack, name):
    if name in ESCAPES:
        _needs_isolation(attack, "chroot", "uid", "net")
    score, reason = attack["results"][name]
    accepted = attack["table"][name][3]
    assert score == 0.0, (name, reason)
    assert reason in accepted, (name, reason)


def test_adversarial_batch_never_hangs(attack):
    assert attack["elapsed"] < _batch_bound(len(attack["results"]), TIMEOUT)


def test_error_counts_cover_the_batch(attack):
    errors = attack["reward"].last_errors
    reasons = [r for _, r in attack["results"].values() if r is not None]
    for reason in set(reasons):
        assert errors[reason] >= reasons.count(reason)
    assert {"timeout", "memory", "forbidden_import", "output_flood", "exit", "exception"} <= set(errors)


def test_nothing_escaped_to_the_host(attack, env):
    _needs_isolation(attack, "chroot", "uid", "net")
    assert not os.path.exists(env["outside"])
    with pytest.raises(BlockingIOError):
        env["listener"].accept()  # no connection ever reached the listener
    iso = attack["reward"].isolation
    assert all(iso[layer] for layer in ("net", "chroot", "uid", "nondumpable")), iso


def test_no_sandbox_process_survives(attack):
    # Every sandbox of this process runs under a uid of its block; none may outlive the call.
    block = code_module._uid_block()
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                uid_line = next(line for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) in block:
            leftovers.append(pid)
    assert leftovers == []


def test_no_state_survives_between_cases():
    # A cache in globals would make the second case return the first case's answer.
    reward = make_code_reward(timeout_s=2.0)
    src = "_cache = {}\ndef add(a, b):\n    _cache.setdefault('v', a + b)\n    return _cache['v']\n"
    assert reward(["p"], [src], tests=[ADD_TESTS], entry_point=["add"]) == [1.0]


def test_no_state_survives_between_calls(env):
    reward = make_code_reward(timeout_s=2.0)
    _needs_isolation({"reward": _probe(reward)}, "chroot", "uid")
    # First call: a correct solution that also caches its answers on disk (and in a module).
    store = (
        OS + "import math\ndef add(a, b):\n    math.seen = a + b\n"
        f"    fd = os_['open']({env['cache']!r}, os_['O_WRONLY'] | os_['O_CREAT'] | os_['O_APPEND'])\n"
        "    os_['write'](fd, b'%d\\n' % (a + b))\n    return a + b\n"
    )
    # Second call: replay cached answers instead of computing them.
    replay = (
        OS + "import math\ndef add(a, b):\n    if hasattr(math, 'seen'):\n        return math.seen\n"
        f"    fd = os_['open']({env['cache']!r}, 0)\n    return int(os_['read'](fd, 100).split()[0])\n"
    )
    reward(["p"], [store], tests=[ADD_TESTS], entry_point=["add"])
    assert not os.path.exists(env["cache"])
    assert reward(["p"], [replay], tests=[[{"input": [1, 2], "output": 3}]], entry_point=["add"]) == [0.0]
    assert reward.last_reasons == ["exception"]


def _probe(reward):
    reward(["p"], ["def f():\n    return 1\n"], tests=[["assert f() == 1"]])
    return reward


def test_two_infinite_loops_return_within_the_timeout():
    reward = make_code_reward(timeout_s=1.0)
    start = time.monotonic()
    src = "def add(a, b):\n    while True:\n        pass\n"
    assert reward(["p", "p"], [src, src], tests=[ADD_TESTS] * 2, entry_point=["add"] * 2) == [0.0, 0.0]
    assert time.monotonic() - start < _batch_bound(2, 1.0)
    assert reward.last_errors == {"timeout": 2}


def test_failure_reasons_reach_the_metrics():
    from rlvr.rewards import resolve_rewards, score_completions

    (fn,) = resolve_rewards(["code"])
    completions = ["def add(a, b):\n    return a + b", "def add(a, b):\n    while True: pass", "import numpy"]
    tests = [[{"input": [1, 2], "output": 3}]] * 3
    scores = score_completions([fn], ["p"] * 3, completions, None,
                               {"tests": tests, "entry_point": ["add"] * 3, "trainer_state": {"step": 0}})
    assert scores.total.tolist() == [1.0, 0.0, 0.0]
    assert scores.metrics["rewards/code/errors/timeout"] == 1.0
    assert scores.metrics["rewards/code/errors/forbidden_import"] == 1.0


# --- without root: user + network namespaces, chroot inside them, Landlock, non-dumpable trainer ------


@pytest.fixture(scope="module")
def unprivileged_attack(env):
    table = _adversaries(env)
    reward = make_code_reward(timeout_s=TIMEOUT, root_layers=False)
    names = UNPRIVILEGED_ESCAPES
    scores = reward(["p"] * len(names), [table[n][0] for n in names], tests=[table[n][1] for n in names],
                    entry_point=[table[n][2] for n in names])
    return {"results": dict(zip(names, zip(scores, reward.last_reasons))), "reward": reward, "table": table}


def _needs_unprivileged_layers(attack) -> None:
    iso = attack["reward"].isolation
    if not (iso.get("userns") and iso.get("landlock_signals")):
        pytest.skip(f"this kernel lacks user namespaces or Landlock ABI 6 ({iso})")


@pytest.mark.parametrize("name", UNPRIVILEGED_ESCAPES)
def test_unprivileged_sandbox_contains_escapes(unprivileged_attack, name):
    _needs_unprivileged_layers(unprivileged_attack)
    score, reason = unprivileged_attack["results"][name]
    accepted = set(unprivileged_attack["table"][name][3])
    if name == "fork_bomb_escape" and os.geteuid() == 0:
        accepted.add("timeout")  # RLIMIT_NPROC does not bind uid 0: the forks run until the group is killed
    assert score == 0.0 and reason in accepted, (name, reason)


def test_unprivileged_sandbox_layers_and_nothing_escaped(unprivileged_attack, env):
    _needs_unprivileged_layers(unprivileged_attack)
    iso = unprivileged_attack["reward"].isolation
    assert iso["uid"] is False and all(iso[k] for k in ("userns", "net", "chroot", "landlock", "nondumpable"))
    assert code_module.unprotected(iso) == []
    assert not os.path.exists(env["outside"])
    with pytest.raises(BlockingIOError):
        env["listener"].accept()


def test_warning_names_what_remains():
    left = code_module.unprotected({"net": False, "chroot": False, "uid": False, "landlock": False,
                                    "landlock_signals": False, "nondumpable": True})
    assert left == ["files readable by the trainer's user (no chroot, no Landlock)",
                    "the network (no network namespace)",
                    "signals to the trainer and this user's other processes (no uid switch, no Landlock scope)"]


def _same_user_can_read_environ(pid: int) -> bool:
    """Whether another process of pid's user (a fork, so no new exec) may read /proc/<pid>/environ."""
    child = os.fork()
    if child == 0:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                f.read()
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0


def test_trainer_is_not_dumpable_while_a_candidate_runs():
    # A stand-in trainer without root (forked, uid nobody, dumpable as a normal process is), probed
    # by a same-user process before, during and after the window in which candidates run.
    import ctypes

    libc = ctypes.CDLL(None)
    read_fd, write_fd = os.pipe()
    trainer = os.fork()
    if trainer == 0:
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            libc.prctl(4, 1, 0, 0, 0)  # a uid change made it non-dumpable; a normal trainer is dumpable
            seen = [_same_user_can_read_environ(os.getpid())]
            with code_module._trainer_not_dumpable() as protected, code_module._trainer_not_dumpable():
                seen += [protected, _same_user_can_read_environ(os.getpid())]
            seen += [_same_user_can_read_environ(os.getpid()), libc.prctl(3, 0, 0, 0, 0) == 1]
            os.write(write_fd, repr(seen).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    report = os.read(read_fd, 1000).decode()
    os.close(read_fd)
    os.waitpid(trainer, 0)
    # readable before; protected and unreadable inside (nested runs); readable and dumpable after
    assert report == repr([True, True, False, True, True])


# --- report parsing and comparison (parent side) ------------------------------------------------


@pytest.mark.parametrize("depth", [150, 990, 2000])
def test_deeply_nested_results_score_zero_without_raising(depth):
    reward = make_code_reward(timeout_s=3.0)
    src = f"def get():\n    x = 0\n    for _ in range({depth}):\n        x = [x]\n    return x\n"
    assert reward(["p"], [src], tests=[[{"input": [], "output": [1]}]], entry_point=["get"]) == [0.0]
    assert reward.last_reasons == (["bad_output"] if depth >= 1000 else ["protocol"])  # the child's json fails


def test_deep_results_under_skip_score_zero_not_none():
    from rlvr.rewards import score_completions

    reward = make_code_reward(timeout_s=3.0)
    src = "def get():\n    x = 0\n    for _ in range(990):\n        x = [x]\n    return x\n"
    scores = score_completions([reward], ["p"], [src], None, {"tests": [[{"input": [], "output": 1}]],
                               "entry_point": ["get"]}, reward_errors="skip")
    assert scores.total.tolist() == [0.0]


def test_integers_are_compared_exactly():
    reward = make_code_reward(timeout_s=3.0)
    tests = [[{"input": [], "output": 3}]] * 3 + [[{"input": [], "output": 0.3}]]
    srcs = ["def f():\n    return 3.0000000001\n", "def f():\n    return 3.0\n", "def f():\n    return 3\n",
            "def f():\n    return 0.1 + 0.2\n"]
    assert reward(["p"] * 4, srcs, tests=tests, entry_point=["f"] * 4) == [0.0, 1.0, 1.0, 1.0]


def test_parent_reads_at_most_the_report_cap(monkeypatch):
    read = code_module._read_until
    sizes = []

    def spy(*args, **kwargs):
        data, timed_out = read(*args, **kwargs)
        sizes.append(len(data))
        return data, timed_out

    monkeypatch.setattr(code_module, "_read_until", spy)
    reward = make_code_reward(timeout_s=5.0, memory_mb=512)
    src = "def get():\n    return [123456] * 1_000_000\n"  # a 7.6 MB report
    assert reward(["p"], [src], tests=[[{"input": [], "output": 1}]], entry_point=["get"]) == [0.0]
    assert reward.last_reasons == ["output_flood"]
    assert sizes and max(sizes) <= 2**20 + 1
