"""Running LLM-written reward programs safely: a static check, then a confined child process.

A reward program is Python source defining::

    def compute_reward(obs, action, next_obs):
        ...
        return total_reward, {"name": component, ...}

where ``obs``/``next_obs`` are ``(B, D_o)`` and ``action`` ``(B, D_a)`` float32 tensors
(numpy arrays when torch is not allowed), ``total_reward`` is ``(B,)`` and every component is
``(B,)`` or a scalar. Neither Eureka nor ICPL confine such code; pbrl does, in layers, so that
a program that slips past one is stopped by the next:

1. **Static check** (:func:`check_source`, in the parent): the syntax tree may import only
   allow-listed modules (``math``, ``numpy``, ``torch``, ``typing``), may not touch
   underscore names or attributes (``__class__``, ``_C``), may not name ``open``, ``exec``,
   ``eval``, ``getattr`` & co., nor file, process or extension APIs of numpy/torch
   (``np.load``, ``tofile``, ``torch.hub``, ``cpp_extension``, ...), and defines no classes.
2. **Restricted interpreter** (in the child): the program's builtins are an allow-list and its
   ``import`` statement only reaches the allowed modules.
3. **Operating system** (in the child, :mod:`pbrl.icpl._sandbox_worker`): a separate process
   started with a scrubbed environment (no API keys), in a private temp dir, in a new network
   namespace, with CPU-time, address-space, file-size and open-file limits, Landlock (files:
   read-only libraries, read-write temp dir, nothing else; no TCP) and a seccomp filter (no
   sockets, fork, exec, ptrace or signals to other processes). Layers the kernel does not
   offer are reported in :attr:`RewardSandbox.layers` (``"unavailable: ..."``) rather than
   silently assumed.
4. **Parent-side checks**: a wall-clock timeout per call (the child is killed), answers read as
   JSON plus ``.npz`` without pickles and with size caps, and shapes and finiteness of every
   output checked before a reward reaches training.

The program runs on whole batches (a PPO rollout at once), not per step through IPC.
"""

from __future__ import annotations

import ast
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WORKER = Path(__file__).with_name("_sandbox_worker.py")
MAGIC = b"PBRL"
FUNCTION = "compute_reward"

ALLOWED_MODULES: tuple[str, ...] = ("math", "numpy", "torch", "typing")
DENIED_MODULES: tuple[str, ...] = (
    "numpy.ctypeslib",
    "numpy.f2py",
    "numpy.distutils",
    "numpy.lib",
    "numpy.testing",
    "numpy.core",
    "torch.utils",
    "torch.hub",
    "torch.jit",
    "torch.package",
    "torch.multiprocessing",
    "torch.distributed",
    "torch.serialization",
    "torch.ops",
    "torch.classes",
    "torch.library",
    "torch.fx",
    "torch.export",
    "torch.compiler",
    "torch.cuda",
    "torch.backends",
    "torch.storage",
)
FORBIDDEN_NAMES: frozenset[str] = frozenset(
    """open exec eval compile __import__ globals locals vars getattr setattr delattr input
    breakpoint help memoryview type super object dir id hasattr exit quit classmethod
    staticmethod property""".split()
)
# Attribute names that reach files, processes, code loading or interpreter internals through
# numpy / torch objects; refused on any object (a false positive costs one regeneration).
FORBIDDEN_ATTRIBUTES: frozenset[str] = frozenset(
    """load loads save savez savez_compressed savetxt loadtxt genfromtxt fromfile tofile dump
    dumps memmap from_file fromregex DataSource ctypeslib f2py distutils lib testing core hub
    utils cpp_extension ops classes library package multiprocessing distributed serialization
    system popen spawn compile jit fx export compiler storage untyped_storage format format_map
    get_type_hints ForwardRef cuda backends set_default_device frombuffer from_dlpack""".split()
)


class ProgramError(RuntimeError):
    """A reward program failed a check or a run; ``reason`` names the kind of failure.

    Reasons: ``syntax``, ``forbidden`` (static check), ``signature``, ``load`` (raised while
    defining the function), ``exception``, ``recursion``, ``memory``, ``timeout``, ``crash``
    (the child died, e.g. on a signal), ``shape``, ``nonfinite``, ``sandbox`` (a required layer
    is missing or the child broke the protocol).
    """

    def __init__(self, reason: str, message: str, detail: str = ""):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.detail = detail


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of the child.

    Attributes:
        cpu_seconds: CPU time over the child's whole life (RLIMIT_CPU; SIGXCPU past it).
        memory_mb: address space the program may add to the child's size after its imports.
        call_timeout: wall-clock seconds one call (or loading the program) may take.
        start_timeout: wall-clock seconds for the child to start (imports torch).
        file_mb: largest file the child may write (in its temp dir).
        open_files: file descriptors the child may hold.
        max_batch: rows per call; larger batches are split.
    """

    cpu_seconds: int = 600
    memory_mb: int = 1024
    call_timeout: float = 20.0
    start_timeout: float = 60.0
    file_mb: int = 4
    open_files: int = 64
    max_batch: int = 65536


@dataclass(frozen=True)
class SandboxPolicy:
    """Which layers apply (tests switch off the language layers to test the OS layers).

    Attributes:
        check_source: run :func:`check_source` before starting the child.
        restrict_builtins: allow-listed builtins and guarded imports in the child.
        network: leave the network (new network namespace).
        landlock: Landlock file-system / TCP / scope rules.
        seccomp: the seccomp system-call filter.
        require_layers: fail (reason ``sandbox``) when an OS layer cannot be applied, instead
            of running with it reported ``unavailable``.
        allowed_modules: importable top-level modules.
        torch: pass tensors (True) or numpy arrays (False) to the program; ``"auto"``:
            tensors when the program imports torch, else numpy arrays (and torch is not
            even loaded in the child, which then starts in a fraction of a second).
    """

    check_source: bool = True
    restrict_builtins: bool = True
    network: bool = True
    landlock: bool = True
    seccomp: bool = True
    require_layers: bool = False
    allowed_modules: tuple[str, ...] = ALLOWED_MODULES
    torch: bool | str = "auto"


def imports_torch(source: str) -> bool:
    """Whether the program imports torch (``import torch...`` / ``from torch... import``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "torch" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            return True
    return False


@dataclass(frozen=True)
class RewardOutput:
    """A program's answer on a batch of ``B`` transitions.

    Attributes:
        total: ``(B,)`` float64 total reward.
        components: name -> ``(B,)`` float64, in the order the program returned them.
        printed: what the program printed (capped at 4 KiB).
    """

    total: np.ndarray
    components: Mapping[str, np.ndarray] = field(default_factory=dict)
    printed: str = ""


# --- static check ---------------------------------------------------------------------------
def _strip_jit(tree: ast.Module) -> None:
    """Drop ``@torch.jit.script``-style decorators (Eureka's habit); they need source files."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.decorator_list = [
                d for d in node.decorator_list if "jit" not in ast.unparse(d).split(".")
            ]


def normalise_source(source: str) -> str:
    """The program with TorchScript decorators removed (what the sandbox actually runs)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    _strip_jit(tree)
    return ast.unparse(tree)


def check_source(
    source: str,
    function: str = FUNCTION,
    allowed_modules: Sequence[str] = ALLOWED_MODULES,
    n_args: int = 3,
) -> None:
    """Raise :class:`ProgramError` unless ``source`` passes the static rules (module docstring).

    Also checks that ``function`` is defined at top level and accepts ``n_args`` positional
    arguments (reason ``signature``).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ProgramError("syntax", f"line {err.lineno}: {err.msg}") from None
    _strip_jit(tree)
    allowed = set(allowed_modules)

    def bad(node: ast.AST, what: str) -> ProgramError:
        line = getattr(node, "lineno", "?")
        return ProgramError("forbidden", f"line {line}: {what}")

    def check_module(node: ast.AST, name: str) -> None:
        if name.split(".")[0] not in allowed:
            raise bad(node, f"import of {name!r} (allowed: {', '.join(sorted(allowed))})")
        if any(name == d or name.startswith(d + ".") for d in DENIED_MODULES):
            raise bad(node, f"import of {name!r} (file/process/compiler API)")
        if any(part.startswith("_") for part in name.split(".")):
            raise bad(node, f"import of private module {name!r}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise bad(node, "relative import")
            check_module(node, node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    raise bad(node, "star import")
                if alias.name.startswith("_") or alias.name in FORBIDDEN_ATTRIBUTES:
                    raise bad(node, f"import of {alias.name!r} from {node.module}")
                check_module(node, f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise bad(node, f"access to private attribute {node.attr!r}")
            if node.attr in FORBIDDEN_ATTRIBUTES:
                raise bad(node, f"use of {node.attr!r} (files, processes or code loading)")
        elif isinstance(node, ast.Name):
            if node.id.startswith("__") or node.id in FORBIDDEN_NAMES:
                raise bad(node, f"use of {node.id!r}")
        elif isinstance(node, (ast.ClassDef, ast.AsyncFunctionDef, ast.Await)):
            raise bad(node, f"{type(node).__name__} is not allowed in a reward program")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            raise bad(node, "global/nonlocal statements are not allowed")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "__" in node.value and "{" in node.value:
                raise bad(node, "format string touching dunder attributes")

    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    if not defs:
        names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        raise ProgramError(
            "signature",
            f"no top-level function {function!r} (found: {names or 'none'}); define "
            f"def {function}(obs, action, next_obs) -> (total_reward, components)",
        )
    args = defs[-1].args
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    if (positional < n_args and args.vararg is None) or required > n_args:
        raise ProgramError(
            "signature",
            f"{function} must take {n_args} positional arguments (obs, action, next_obs); it "
            f"takes {positional} ({required} required)",
        )
    if any(d is None for d in args.kw_defaults):
        raise ProgramError("signature", f"{function} has required keyword-only arguments")


# --- the child ------------------------------------------------------------------------------
def _read_dirs() -> list[str]:
    """Folders the child may read: the interpreter's libraries and the system's."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths |= {os.path.dirname(os.__file__), sys.base_prefix + "/lib", sys.prefix + "/lib"}
    for mod in ("numpy", "torch"):
        try:
            spec = __import__("importlib.util").util.find_spec(mod)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            paths.add(str(Path(spec.origin).parent.parent))
    paths |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache"}
    paths.add("/dev/null")
    return sorted(p for p in paths if p and os.path.exists(p))


def _scrubbed_env(tmpdir: str) -> dict[str, str]:
    """No inherited variables (API keys stay in the parent); single-threaded math libraries."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": tmpdir,
        "TMPDIR": tmpdir,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _encode(meta: dict[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    blob = b""
    if arrays:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
    j = json.dumps(meta).encode()
    body = struct.pack("<I", len(j)) + j + blob
    return MAGIC + struct.pack("<Q", len(body)) + body


class RewardSandbox:
    """One reward program loaded in a confined child process, called on batches.

    Usage::

        with RewardSandbox(source) as sb:          # static check, start, load the program
            out = sb(obs, action, next_obs)        # RewardOutput with (B,) arrays

    Every failure raises :class:`ProgramError` naming its ``reason``; after a timeout or a
    crash the child is gone and further calls raise ``ProgramError("sandbox", ...)``.

    Args:
        source: the program's Python source.
        function: name of the reward function in it.
        limits: resource limits (:class:`SandboxLimits`).
        policy: which layers apply (:class:`SandboxPolicy`).
    """

    def __init__(
        self,
        source: str,
        function: str = FUNCTION,
        limits: SandboxLimits | None = None,
        policy: SandboxPolicy | None = None,
    ) -> None:
        self.source = source
        self.function = function
        self.limits = limits or SandboxLimits()
        self.policy = policy or SandboxPolicy()
        self.layers: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._dead: str | None = None
        self.calls = 0

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> RewardSandbox:
        """Check the source, start the child and load the program in it."""
        if self._proc is not None:
            return self
        if self.policy.check_source:
            check_source(self.source, self.function, self.policy.allowed_modules)
        self._tmp = tempfile.TemporaryDirectory(prefix="pbrl-sandbox-")
        tmpdir = os.path.realpath(self._tmp.name)
        self._stderr = open(os.path.join(tmpdir, ".stderr"), "w+b")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_scrubbed_env(tmpdir),
            cwd=tmpdir,
            close_fds=True,
            start_new_session=True,  # own process group: a timeout kills it whole
        )
        p = self.policy
        allowed = list(p.allowed_modules) if p.restrict_builtins else []
        setup = {
            "source": normalise_source(self.source),
            "function": self.function,
            "torch": imports_torch(self.source) if p.torch == "auto" else bool(p.torch),
            "tmpdir": tmpdir,
            "read_dirs": _read_dirs(),
            "limits": asdict(self.limits),
            "layers": {"network": p.network, "landlock": p.landlock, "seccomp": p.seccomp},
            "require_layers": p.require_layers,
            "allowed_modules": allowed,
            "denied_modules": list(DENIED_MODULES),
            "restrict_builtins": p.restrict_builtins,
        }
        self._send(_encode(setup))
        meta, _ = self._receive(self.limits.start_timeout + self.limits.call_timeout, "load")
        if not meta.get("ok"):
            self.close()
            raise ProgramError(
                str(meta.get("reason", "load")),
                str(meta.get("error", "the program failed to load")),
                str(meta.get("traceback", "")),
            )
        self.layers = {str(k): str(v) for k, v in meta.get("layers", {}).items()}
        return self

    def close(self) -> None:
        """Stop the child (its whole process group) and remove its temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                # Killed, not asked to exit: the child holds nothing worth a clean shutdown
                # (its temp dir is removed here, its stderr is in our file), and a child that
                # imported torch takes ~0.5-1 s to tear down, once per candidate check and
                # training.
                self._kill(proc)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        proc.wait()

    def __enter__(self) -> RewardSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    # --- I/O ------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child died; _receive reports how

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - 2000))
        return self._stderr.read().decode(errors="replace")

    def _fail(self, reason: str, message: str) -> ProgramError:
        detail = self._stderr_tail()
        self._dead = f"{reason}: {message}"
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)
        self.close()
        return ProgramError(reason, message, detail)

    def _read_exact(self, n: int, deadline: float, what: str) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(
                    "timeout",
                    f"the program took longer than its {self.limits.call_timeout:g} s wall-clock "
                    f"limit ({what}); an endless loop or far too much work per batch",
                )
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(n - len(out), 1 << 20))
            if not chunk:
                code = self._proc.wait()
                if code < 0:
                    name = signal.Signals(-code).name
                    hint = {
                        "SIGXCPU": f"CPU-time limit of {self.limits.cpu_seconds} s exceeded",
                        "SIGXFSZ": f"file-size limit of {self.limits.file_mb} MiB exceeded",
                        "SIGSEGV": "segmentation fault",
                        "SIGKILL": "killed (out of memory?)",
                        "SIGSYS": "forbidden system call",
                    }.get(name, "killed by a signal")
                    reason = "cpu" if name == "SIGXCPU" else "crash"
                    raise self._fail(reason, f"the sandbox process died on {name}: {hint}")
                raise self._fail("crash", f"the sandbox process exited with code {code}")
            out += chunk
        return bytes(out)

    def _receive(self, timeout: float, what: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        deadline = time.monotonic() + timeout
        head = self._read_exact(12, deadline, what)
        size = struct.unpack("<Q", head[4:])[0]
        cap = 64 * (1 << 20) + 16 * self.limits.max_batch * 65
        if head[:4] != MAGIC or size > cap:
            raise self._fail("sandbox", "the child broke the protocol (bad frame header)")
        body = self._read_exact(size, deadline, what)
        try:
            jlen = struct.unpack("<I", body[:4])[0]
            meta = json.loads(body[4 : 4 + jlen].decode())
            if not isinstance(meta, dict):
                raise ValueError("header is not an object")
            arrays: dict[str, np.ndarray] = {}
            if len(body) > 4 + jlen:
                with np.load(io.BytesIO(body[4 + jlen :]), allow_pickle=False) as z:
                    arrays = {k: np.asarray(z[k]) for k in z.files}
        except (ValueError, UnicodeDecodeError, OSError, struct.error) as err:
            raise self._fail("sandbox", f"the child broke the protocol: {err}") from None
        return meta, arrays

    # --- calls ----------------------------------------------------------------------------
    def __call__(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> RewardOutput:
        """Rewards of ``B`` transitions: ``obs``/``next_obs`` ``(B, D_o)``, ``action`` ``(B, D_a)``.

        Raises:
            ProgramError: the program failed (reason ``exception``, ``timeout``, ``memory``,
                ``crash``, ``shape``, ``nonfinite``, ...).
        """
        obs = np.asarray(obs, np.float32)
        action = np.asarray(action, np.float32)
        next_obs = np.asarray(next_obs, np.float32)
        if obs.ndim != 2 or action.ndim != 2 or next_obs.shape != obs.shape:
            raise ValueError(
                f"need obs (B, D_o), action (B, D_a), next_obs (B, D_o); got {obs.shape}, "
                f"{action.shape}, {next_obs.shape}"
            )
        if len(action) != len(obs):
            raise ValueError(f"obs has {len(obs)} rows but action {len(action)}")
        n = len(obs)
        if n > self.limits.max_batch:
            parts = [
                self(
                    obs[i : i + self.limits.max_batch],
                    action[i : i + self.limits.max_batch],
                    next_obs[i : i + self.limits.max_batch],
                )
                for i in range(0, n, self.limits.max_batch)
            ]
            names = list(parts[0].components)
            for p in parts[1:]:
                if list(p.components) != names:
                    raise ProgramError("shape", "components differ between batches")
            return RewardOutput(
                np.concatenate([p.total for p in parts]),
                {k: np.concatenate([p.components[k] for p in parts]) for k in names},
                parts[-1].printed,
            )
        if self._dead is not None:
            raise ProgramError("sandbox", f"the sandbox is closed after an earlier {self._dead}")
        if self._proc is None:
            self.start()
        self._send(_encode({"op": "call"}, {"obs": obs, "action": action, "next_obs": next_obs}))
        meta, arrays = self._receive(self.limits.call_timeout, "call")
        self.calls += 1
        if not meta.get("ok"):
            raise ProgramError(
                str(meta.get("reason", "exception")),
                str(meta.get("error", "the program failed")),
                str(meta.get("traceback", "")),
            )
        return self._validate(meta, arrays, n)

    @staticmethod
    def _validate(meta: dict[str, Any], arrays: dict[str, np.ndarray], n: int) -> RewardOutput:
        names = meta.get("components", [])
        if not isinstance(names, list) or len(set(map(str, names))) != len(names):
            raise ProgramError("shape", f"component names must be distinct, got {names}")
        total = arrays.get("total")
        if total is None or total.shape != (n,) or total.dtype != np.float64:
            raise ProgramError(
                "shape", f"total_reward must be ({n},), got {getattr(total, 'shape', None)}"
            )
        comps: dict[str, np.ndarray] = {}
        for i, name in enumerate(names):
            v = arrays.get(f"c{i}")
            if v is None or v.shape != (n,) or v.dtype != np.float64:
                raise ProgramError("shape", f"component {name!r} must be ({n},)")
            comps[str(name)] = v
        for name, v in [("total_reward", total), *comps.items()]:
            bad = ~np.isfinite(v)
            if bad.any():
                raise ProgramError(
                    "nonfinite",
                    f"{name!r} is NaN or infinite on {int(bad.sum())} of {n} transitions "
                    "(guard divisions, logs and exps)",
                )
        return RewardOutput(total, comps, str(meta.get("printed", ""))[:4096])

    def probe(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> RewardOutput:
        """Run the program on a probe batch and also demand batch-consistent outputs.

        Beyond :meth:`__call__`'s checks: the rewards of the first half of the batch must be
        the same when the half is passed alone (a program that mixes rows, e.g. normalises
        over the batch, gives a different reward to the same transition in a different
        rollout).
        """
        out = self(obs, action, next_obs)
        half = max(1, len(obs) // 2)
        part = self(obs[:half], action[:half], next_obs[:half])
        if not np.allclose(part.total, out.total[:half], rtol=1e-4, atol=1e-5):
            raise ProgramError(
                "shape",
                "the reward of a transition depends on the other transitions in the batch "
                "(e.g. normalising over the batch); compute it row by row",
            )
        return out


def probe_batch(
    obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``size`` rows drawn from real transitions (the probe a program must pass)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(obs), size=min(size, len(obs)), replace=len(obs) < size)
    return obs[idx], action[idx], next_obs[idx]
