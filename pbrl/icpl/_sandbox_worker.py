"""The sandbox's child process: confines itself, then runs one reward program on batches.

Run as ``python -I -B _sandbox_worker.py`` by :class:`pbrl.icpl.sandbox.RewardSandbox`; it
imports nothing from pbrl (only the standard library, numpy and torch), so it works from a
bare interpreter. The order of its start matters:

1. read the setup message (program source, limits, which layers to apply) from stdin;
2. leave the network: ``unshare(CLONE_NEWNET)`` (a new, empty network namespace whose
   loopback is down), falling back to a user namespace when not privileged; this must happen
   while the process is still single-threaded, i.e. before numpy/torch start thread pools;
3. import numpy, math and torch (one intra-op thread), chdir into the temp dir;
4. resource limits: CPU seconds (whole life of the worker), address space (the size after
   the imports plus an allowance), file size, open files, core dumps;
5. Landlock (Linux >= 5.13): read-only access to the interpreter's and libraries' folders,
   read-write to the temp dir, nothing else; TCP bind/connect denied (ABI >= 4); abstract
   unix sockets and signals to other processes scoped (ABI >= 6);
6. seccomp (x86_64): socket calls, fork/vfork/exec, clone without CLONE_THREAD, ptrace,
   namespace and mount calls, rlimit changes and signals to other processes fail with EPERM
   (without Landlock, opening a file for writing fails too);
7. compile the program with restricted builtins and an import allow-list, then answer
   ``call`` requests until stdin closes.

Messages both ways are frames: ``b"PBRL"``, a little-endian u64 length, then a u32 JSON
length, the JSON header and an ``.npz`` blob (never pickles). What the program prints goes
into a bounded buffer that is returned with each answer, never onto the protocol stream.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import ctypes.util
import dis
import io
import json
import os
import platform
import resource
import struct
import sys
import traceback

MAGIC = b"PBRL"
MAX_FRAME = 1 << 30
PRINT_LIMIT = 4096

# --- Linux constants ------------------------------------------------------------------------
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM, EACCES, ENOSYS = 1, 13, 38
AUDIT_ARCH_X86_64 = 0xC000003E

# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
X86_64 = {
    "open": 2,
    "socket": 41,
    "connect": 42,
    "accept": 43,
    "sendto": 44,
    "bind": 49,
    "listen": 50,
    "socketpair": 53,
    "clone": 56,
    "fork": 57,
    "vfork": 58,
    "execve": 59,
    "kill": 62,
    "creat": 85,
    "ptrace": 101,
    "pivot_root": 155,
    "setrlimit": 160,
    "chroot": 161,
    "mount": 165,
    "umount2": 166,
    "tkill": 200,
    "tgkill": 234,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "openat": 257,
    "unshare": 272,
    "accept4": 288,
    "perf_event_open": 298,
    "prlimit64": 302,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "bpf": 321,
    "execveat": 322,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "clone3": 435,
    "openat2": 437,
}
DENIED = (
    "socket",
    "socketpair",
    "connect",
    "accept",
    "accept4",
    "bind",
    "listen",
    "fork",
    "vfork",
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "setrlimit",
    "prlimit64",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "keyctl",
    "add_key",
    "request_key",
    "tkill",
)
O_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND

# Landlock (include/uapi/linux/landlock.h).
SYS_LANDLOCK = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_READ = (1 << 2) | (1 << 3)  # READ_FILE | READ_DIR
FS_EXECUTE = 1 << 0


def _fs_all(abi: int) -> int:
    bits = 13  # EXECUTE .. MAKE_SYM
    if abi >= 2:
        bits = 14  # REFER
    if abi >= 3:
        bits = 15  # TRUNCATE
    if abi >= 5:
        bits = 16  # IOCTL_DEV
    return (1 << bits) - 1


class _Ruleset(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())


# --- framing ----------------------------------------------------------------------------------
def _read_exact(stream: io.BufferedReader, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            raise EOFError("stdin closed")
        out += chunk
    return bytes(out)


def read_frame(stream: io.BufferedReader) -> tuple[dict, dict]:
    """One message: (JSON header, name -> array)."""
    import numpy as np

    head = _read_exact(stream, 12)
    magic, size = head[:4], struct.unpack("<Q", head[4:])[0]
    if magic != MAGIC or size > MAX_FRAME:
        raise ValueError("bad frame from the parent")
    body = _read_exact(stream, size)
    jlen = struct.unpack("<I", body[:4])[0]
    meta = json.loads(body[4 : 4 + jlen].decode())
    arrays: dict = {}
    if len(body) > 4 + jlen:
        with np.load(io.BytesIO(body[4 + jlen :]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return meta, arrays


def write_frame(stream: io.BufferedWriter, meta: dict, arrays: dict | None = None) -> None:
    """Send one message (see :func:`read_frame`)."""
    blob = b""
    if arrays:
        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        blob = buf.getvalue()
    j = json.dumps(meta).encode()
    body = struct.pack("<I", len(j)) + j + blob
    stream.write(MAGIC + struct.pack("<Q", len(body)) + body)
    stream.flush()


# --- confinement layers -----------------------------------------------------------------------
def leave_network() -> str:
    """Enter a new network namespace; returns how (or raises OSError)."""
    if _LIBC.unshare(CLONE_NEWNET) == 0:
        return "netns"
    first = _errno_text()
    if _LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
        return "userns+netns"
    raise OSError(f"unshare(CLONE_NEWNET) failed: {first}; with a user namespace: {_errno_text()}")


def set_limits(limits: dict) -> None:
    """CPU seconds, address space (current size + allowance), file size, open files, core."""
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    vm_kb = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                vm_kb = int(line.split()[1])
    mem = vm_kb * 1024 + int(limits["memory_mb"]) * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    fsize = int(limits["file_mb"]) * (1 << 20)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nofile = int(limits["open_files"])
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    with contextlib.suppress(ValueError, OSError):  # not enforced for root, but try
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _no_new_privs() -> None:
    if _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {_errno_text()}")


def apply_landlock(read_dirs: list[str], write_dirs: list[str]) -> str:
    """Restrict the file system (and TCP, scopes) with Landlock; returns ``landlock-abiN``."""
    arch = platform.machine()
    if arch not in SYS_LANDLOCK:
        raise OSError(f"Landlock syscall numbers unknown for {arch}")
    sys_create, sys_add, sys_restrict = SYS_LANDLOCK[arch]
    syscall = _LIBC.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(sys_create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        raise OSError(f"Landlock is not available: {_errno_text()}")
    attr = _Ruleset(handled_access_fs=_fs_all(abi))
    size = 8
    if abi >= 4:
        attr.handled_access_net = 0b11  # BIND_TCP | CONNECT_TCP: no rule allows either
        size = 16
    if abi >= 6:
        attr.scoped = 0b11  # ABSTRACT_UNIX_SOCKET | SIGNAL
        size = 24
    fd = syscall(sys_create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(f"landlock_create_ruleset failed: {_errno_text()}")
    try:
        for paths, access in (
            (read_dirs, FS_READ | FS_EXECUTE),
            (write_dirs, _fs_all(abi) & ~FS_EXECUTE),
        ):
            for path in paths:
                try:
                    pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    is_dir = os.path.isdir(path)
                    # A rule on a file may only name file rights (READ_DIR etc. are refused).
                    rule = _PathBeneath(
                        allowed_access=access if is_dir else access & ((1 << 0) | (1 << 2)),
                        parent_fd=pfd,
                    )
                    rc = syscall(
                        sys_add,
                        ctypes.c_int(fd),
                        ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                        ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    )
                    if rc != 0:
                        raise OSError(f"landlock_add_rule({path}) failed: {_errno_text()}")
                finally:
                    os.close(pfd)
        _no_new_privs()
        if syscall(sys_restrict, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            raise OSError(f"landlock_restrict_self failed: {_errno_text()}")
    finally:
        os.close(fd)
    return f"landlock-abi{abi}"


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> _SockFilter:
    return _SockFilter(code, jt, jf, k)


def apply_seccomp(deny_write_open: bool) -> str:
    """Install the seccomp filter described in the module docstring (x86_64 only)."""
    if platform.machine() != "x86_64":
        raise OSError(f"no seccomp filter for {platform.machine()} (x86_64 only)")
    ld_w_abs, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    jge = 0x35
    allow = _bpf(ret, SECCOMP_RET_ALLOW)
    eperm = _bpf(ret, SECCOMP_RET_ERRNO | EPERM)
    pid = os.getpid()
    prog: list[_SockFilter] = [
        _bpf(ld_w_abs, 4),  # seccomp_data.arch
        _bpf(jeq, AUDIT_ARCH_X86_64, 1, 0),
        eperm,
        _bpf(ld_w_abs, 0),  # seccomp_data.nr
        _bpf(jge, 0x40000000, 0, 1),  # x32 ABI: refuse
        eperm,
    ]
    for name in DENIED:
        prog += [_bpf(jeq, X86_64[name], 0, 1), eperm]
    # clone3's flags live in a struct seccomp cannot read: ENOSYS makes glibc use clone.
    prog += [_bpf(jeq, X86_64["clone3"], 0, 1), _bpf(ret, SECCOMP_RET_ERRNO | ENOSYS)]
    # clone: threads only (CLONE_THREAD in args[0], low word at offset 16).
    prog += [
        _bpf(jeq, X86_64["clone"], 0, 4),
        _bpf(ld_w_abs, 16),
        _bpf(jset, CLONE_THREAD, 1, 0),
        eperm,
        allow,
    ]
    # kill / tgkill: only to this process (args[0] == pid).
    for name in ("kill", "tgkill"):
        prog += [
            _bpf(jeq, X86_64[name], 0, 4),
            _bpf(ld_w_abs, 16),
            _bpf(jeq, pid, 0, 1),
            allow,
            eperm,
        ]
    if deny_write_open:
        eacces = _bpf(ret, SECCOMP_RET_ERRNO | EACCES)
        prog += [_bpf(jeq, X86_64["creat"], 0, 1), eacces]
        prog += [_bpf(jeq, X86_64["openat2"], 0, 1), _bpf(ret, SECCOMP_RET_ERRNO | ENOSYS)]
        for name, flag_offset in (("open", 24), ("openat", 32)):  # args[1] / args[2]
            prog += [
                _bpf(jeq, X86_64[name], 0, 4),
                _bpf(ld_w_abs, flag_offset),
                _bpf(jset, O_WRITE_FLAGS, 0, 1),
                eacces,
                allow,
            ]
    prog.append(allow)
    arr = (_SockFilter * len(prog))(*prog)
    fprog = _SockFprog(len(prog), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    _no_new_privs()
    if _LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(f"prctl(PR_SET_SECCOMP) failed: {_errno_text()}")
    return "seccomp"


# --- the program's namespace ----------------------------------------------------------------
SAFE_BUILTINS = (
    "abs all any bool complex dict divmod enumerate filter float frozenset int isinstance "
    "issubclass iter len list map max min next pow range repr reversed round set slice sorted "
    "str sum tuple zip True False None Exception ValueError TypeError ArithmeticError "
    "ZeroDivisionError IndexError KeyError RuntimeError AssertionError NotImplementedError "
    "StopIteration"
).split()


IMPORT_NAME = dis.opmap["IMPORT_NAME"]


def from_import_statement(frame) -> bool:  # noqa: ANN001
    """Whether ``frame`` is executing an ``import`` statement.

    True when its current instruction is IMPORT_NAME; False when C code imports on its own
    behalf while the frame runs (the frame is then in some other instruction, e.g. a subscript).
    """
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] == IMPORT_NAME


def make_namespace(allowed: list[str], denied: list[str], out: io.StringIO) -> dict:
    """Globals for the program: allow-listed builtins, guarded ``__import__``, capped print.

    C extensions import through the builtins of the innermost Python frame, which is the
    program's: torch's advanced indexing (``x[:, [1, 2]]``) runs
    ``PyImport_ImportModule("torch.storage")`` and asserts that it got a module. Such an
    import (not an ``import`` statement, of a module torch already loaded) hands the module to
    the C code, not to the program, so it is let through; ``import`` statements of denied
    modules are still refused, here and by the static check.
    """
    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        top = name.split(".")[0]
        if (
            level == 0
            and not fromlist
            and top in allowed
            and name in sys.modules
            and not from_import_statement(sys._getframe(1))
        ):
            return real_import(name, globals, locals, fromlist, level)
        if (
            level != 0
            or top not in allowed
            or any(name == d or name.startswith(d + ".") for d in denied)
        ):
            raise ImportError(f"import of {name!r} is not allowed (allowed: {allowed})")
        for item in fromlist or ():
            full = f"{name}.{item}"
            if item.startswith("_") or any(full == d or full.startswith(d + ".") for d in denied):
                raise ImportError(f"import of {full!r} is not allowed")
        return real_import(name, globals, locals, fromlist, level)

    def capped_print(*args, **kwargs):
        if out.tell() < PRINT_LIMIT:
            kwargs.pop("file", None)
            print(*args, **kwargs, file=out)

    safe = {k: getattr(builtins, k) for k in SAFE_BUILTINS if hasattr(builtins, k)}
    safe.update(__import__=guarded_import, print=capped_print)
    return {"__builtins__": safe, "__name__": "reward_program"}


class OutputError(ValueError):
    """The program returned something of the wrong type or shape."""


def to_numpy(x, n: int, what: str):
    """``x`` as a float64 array of shape ``(n,)`` (scalars broadcast) or a ValueError."""
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise OutputError(f"{what} is not numeric ({type(x).__name__}): {err}") from None
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape == (n, 1):
        a = a[:, 0]
    if a.shape != (n,):
        raise OutputError(f"{what} must have shape ({n},), got {tuple(a.shape)}")
    return a


def main() -> None:
    """Entry point (see the module docstring)."""
    stdin = sys.stdin.buffer
    proto = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray writes to fd 1 never reach the protocol stream
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    setup, _ = read_frame(stdin)
    layers: dict[str, str] = {}
    want = setup["layers"]

    def layer(name: str, fn, *args) -> None:  # noqa: ANN001
        if not want.get(name, False):
            layers[name] = "off"
            return
        try:
            layers[name] = fn(*args)
        except OSError as err:
            if setup.get("require_layers"):
                write_frame(proto, {"ok": False, "reason": "sandbox", "error": str(err)})
                sys.exit(3)
            layers[name] = f"unavailable: {err}"

    layer("network", leave_network)
    import math  # noqa: F401  (pre-loaded for the program)

    import numpy  # noqa: F401

    if setup["torch"]:
        import torch

        torch.set_num_threads(1)
    os.chdir(setup["tmpdir"])
    try:
        set_limits(setup["limits"])
        layers["rlimits"] = "on"
    except (OSError, ValueError) as err:
        layers["rlimits"] = f"unavailable: {err}"
    layer("landlock", apply_landlock, setup["read_dirs"], [setup["tmpdir"]])
    landlocked = layers.get("landlock", "").startswith("landlock")
    layer("seccomp", apply_seccomp, not landlocked)

    out = io.StringIO()
    if setup["restrict_builtins"]:
        ns = make_namespace(setup["allowed_modules"], setup["denied_modules"], out)
    else:  # tests of the OS layers alone
        ns = {"__builtins__": builtins, "__name__": "reward_program"}
    try:
        code = compile(setup["source"], "<reward program>", "exec")
        exec(code, ns)  # noqa: S102  (confined: see the module docstring)
        fn = ns.get(setup["function"])
        if not callable(fn):
            raise NameError(f"the program defines no function {setup['function']!r}")
    except MemoryError:
        write_frame(proto, {"ok": False, "reason": "memory", "error": "MemoryError at load"})
        return
    except BaseException as err:  # noqa: BLE001  (report whatever the program raised)
        write_frame(proto, _failure(err, "load"))
        return
    write_frame(proto, {"ok": True, "layers": layers})
    _serve(stdin, proto, fn, setup, out)


def _failure(err: BaseException, where: str) -> dict:
    tb = traceback.format_exception(type(err), err, err.__traceback__)
    text = "".join(t for t in tb if "_sandbox_worker.py" not in t)[-2000:]
    reason = "memory" if isinstance(err, MemoryError) else "exception"
    if isinstance(err, RecursionError):
        reason = "recursion"
    elif isinstance(err, OutputError):
        reason = "shape"
    return {
        "ok": False,
        "reason": reason,
        "error": f"{type(err).__name__}: {err}"[:500],
        "traceback": text,
        "where": where,
    }


def _serve(stdin, proto, fn, setup: dict, out: io.StringIO) -> None:  # noqa: ANN001
    import numpy as np

    use_torch = setup["torch"]
    if use_torch:
        import torch
    while True:
        try:
            meta, arrays = read_frame(stdin)
        except EOFError:
            return
        out.seek(0)
        out.truncate()
        n = int(arrays["obs"].shape[0])
        args = [arrays[k] for k in ("obs", "action", "next_obs")]
        if use_torch:
            args = [torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in args]
        try:
            result = fn(*args)
            if not (isinstance(result, tuple) and len(result) == 2):
                raise OutputError(
                    "the function must return (total_reward, components), got "
                    f"{type(result).__name__}"
                    + (f" of length {len(result)}" if isinstance(result, tuple) else "")
                )
            total, comps = result
            if not isinstance(comps, dict):
                raise OutputError(f"components must be a dict, got {type(comps).__name__}")
            if len(comps) > 64:
                raise OutputError(f"at most 64 reward components, got {len(comps)}")
            arrs = {"total": to_numpy(total, n, "total_reward")}
            names = []
            for i, (k, v) in enumerate(comps.items()):
                if not isinstance(k, str):
                    raise OutputError(f"component names must be strings, got {k!r}")
                arrs[f"c{i}"] = to_numpy(v, n, f"component {k!r}")
                names.append(k[:64])
        except MemoryError:
            write_frame(proto, {"ok": False, "reason": "memory", "error": "MemoryError"})
            continue
        except BaseException as err:  # noqa: BLE001
            write_frame(proto, {**_failure(err, "call"), "printed": out.getvalue()[:PRINT_LIMIT]})
            continue
        write_frame(
            proto, {"ok": True, "components": names, "printed": out.getvalue()[:PRINT_LIMIT]}, arrs
        )
        del meta


if __name__ == "__main__":
    main()
