"""Run a command where the kernel has a real IPVS: natively when the host
kernel has ip_vs, else inside one boot of Debian's kernel under qemu
(virtme-ng, over the host's own root filesystem, so the guest sees this
checkout and its virtualenv).

    python tests/vm/run.py [--vm] [--junit FILE] COMMAND [ARGS...]

The command runs from the repository root with the virtualenv first on PATH,
after every IPVS module has been loaded. Its exit status is passed back. With
--junit FILE (a JUnit XML report the command writes, e.g. pytest's
--junitxml), the run also fails unless the report shows at least one test
ran, and none was skipped: a kernel suite that ran nothing is a failure.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import io
import marshal
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[2]
MODULES = [
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_fo",
    "ip_vs_ovf",
    "ip_vs_mh",
    "ip_vs_pe_sip",
    "ip_vs_ftp",
]


def host_has_ipvs() -> bool:
    if Path("/proc/net/ip_vs").exists():
        return True
    return subprocess.run(["modprobe", "-q", "ip_vs"], check=False).returncode == 0


def guest_kernel() -> str:
    chosen = os.environ.get("DIRECTOR_VM_KERNEL")
    if chosen:
        return chosen
    kernels = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    if not kernels:
        sys.exit("no /boot/vmlinuz-*-amd64: apt-get install linux-image-amd64 (see README)")
    return kernels[-1]


# What goes into the guest's tree of pure-Python code (see pure_python_tree):
# the venv's packages that directord, directorctl, the kernel tests and the
# benches import, less those with C extensions (tomli is mypyc-compiled,
# hypothesis has _native) or reading data files next to their code (certifi).
PYLIB_SITE_PACKAGES = (
    "trio",
    "outcome",
    "sniffio",
    "sortedcontainers",
    "idna",
    "attr",
    "attrs",
    "structlog",
    "h11",
    "httpx",
    "httpcore",
    "anyio",
    "dns",
    "prometheus_client",
    "pyroute2",  # director.rtnl (VIPs): pure Python, no data files
    "_pytest",
    "pytest",
    "pluggy",
    "iniconfig",
    "packaging",
    "pytest_trio",
    "typing_extensions",
    "_hypothesis_pytestplugin",
    "_hypothesis_globals",
    "_distutils_hack",
)
# The standard library's top-level modules those processes import (found with
# sys.modules after importing every director module, pytest and its plugins,
# and what the kernel tests and benches import), less the modules frozen into
# the interpreter (os, site, codecs, ...), encodings (imported before sys.path
# is read), importlib and Debian's sitecustomize.
PYLIB_STDLIB = [
    "__future__",
    "_compat_pickle",
    "_compression",
    "_weakrefset",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bdb",
    "bisect",
    "bz2",
    "calendar",
    "cmd",
    "code",
    "codeop",
    "collections",
    "concurrent",
    "contextlib",
    "contextvars",
    "copy",
    "copyreg",
    "cProfile",
    "csv",
    "ctypes",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "doctest",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "inspect",
    "ipaddress",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mimetypes",
    "multiprocessing",
    "numbers",
    "opcode",
    "operator",
    "pathlib",
    "pdb",
    "pickle",
    "pkgutil",
    "platform",
    "pprint",
    "profile",
    "pstats",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "signal",
    "socket",
    "socketserver",
    "ssl",
    "statistics",
    "string",
    "stringprep",
    "struct",
    "subprocess",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib",
    "uuid",
    "warnings",
    "weakref",
    "wsgiref",
    "xml",
    "zipfile",
    "zoneinfo",
]
PYLIB_SKIPPED_DIRS = {"__pycache__", "tests", "_tests", "test"}
PYLIB_FORMAT = b"pylib 3"  # bump when what goes into the archive changes
GUEST_PYLIB = "/run/director-vm/pylib"  # a directory on the guest's tmpfs


def pylib_sources() -> dict[str, Path]:
    """Every module source the tree holds: {path in it: path on the host}."""
    roots = [(REPO, "director")]
    roots += [(Path(sysconfig.get_path("purelib")), name) for name in PYLIB_SITE_PACKAGES]
    roots += [(Path(sysconfig.get_path("stdlib")), name) for name in PYLIB_STDLIB]
    sources: dict[str, Path] = {}
    for base, name in roots:
        module = base / f"{name}.py"
        if module.is_file():
            sources[module.name] = module
        elif (base / name / "__init__.py").is_file():
            for directory, dirs, files in os.walk(base / name):
                dirs[:] = sorted(d for d in dirs if d not in PYLIB_SKIPPED_DIRS)
                for file in files:
                    if file.endswith(".py"):
                        path = Path(directory, file)
                        sources[path.relative_to(base).as_posix()] = path
    return sources


def pure_python_tree() -> Path:
    """The archive of pure-Python code for the guest, built when any of its
    sources changed: .vmtest/pylib-DIGEST.tar.

    In the guest every module would otherwise come over the 9p share (mounted
    without a cache), a few stat/open/read calls each, every one a round trip
    to the host under emulation: directord spent 10-60 s importing its 300
    modules. The guest unpacks the archive into GUEST_PYLIB on its tmpfs (one
    sequential read) and puts that directory first on PYTHONPATH; C
    extensions, and packages left out, come from their usual places after it.

    Each module is stored as its source and, in __pycache__ where the import
    system looks, an unchecked hash-based .pyc (PEP 552) whose code names the
    module's path under GUEST_PYLIB, so that __file__ and tracebacks agree
    (pytest cuts its own frames by that path). A directory, not a zip on
    PYTHONPATH as before: zipimport keeps the zip's whole directory (2,274
    entries) in memory, about 1.6 MiB more RSS in every process (issue 8's
    RSS at 10,000 real servers; host, `import director.daemon`: 32.3 MiB from
    the zip, 30.6 MiB from the tree), and a module's source is now a file a
    test can read.

    The name carries a digest of the sources' names, sizes and mtimes: an
    archive is never rewritten, so a VM booting from an earlier one is not
    disturbed. Archives unused for a day are removed.
    """
    sources = pylib_sources()
    digest = hashlib.sha256(PYLIB_FORMAT + importlib.util.MAGIC_NUMBER)
    for name, path in sorted(sources.items()):
        stat = path.stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    workdir = REPO / ".vmtest"
    workdir.mkdir(exist_ok=True)
    target = workdir / f"pylib-{digest.hexdigest()[:16]}.tar"
    if target.exists():
        os.utime(target)
    else:
        started = time.monotonic()
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
            for name, path in sorted(sources.items()):
                source = path.read_bytes()
                code = compile(source, f"{GUEST_PYLIB}/{name}", "exec", dont_inherit=True)
                pyc = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
                pyc += importlib.util.source_hash(source) + marshal.dumps(code)
                _add_file(archive, name, source)
                _add_file(archive, importlib.util.cache_from_source(name), pyc)
        os.replace(partial, target)
        print(
            f"run.py: built {target.relative_to(REPO)}: {len(sources)} modules,"
            f" {time.monotonic() - started:.1f} s"
        )
    for old in [*workdir.glob("pylib-*.tar"), *workdir.glob("pylib-*.zip")]:
        if old != target and time.time() - old.stat().st_mtime > 86400:
            old.unlink(missing_ok=True)
    return target


def _add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def guest_script(command: list[str], rc_file: Path, pylib: Path | None = None) -> str:
    """The guest's shell script. `pylib` (an archive of pure-Python code, see
    pure_python_tree) is unpacked into GUEST_PYLIB and put first on PYTHONPATH, with
    PYTHONSAFEPATH=1 so that `python -m` and `python -c` run in the checkout
    do not put the checkout (the 9p share) before it."""
    venv_bin = REPO / ".venv" / "bin"
    unpacked = []
    if pylib is not None:
        guest = shlex.quote(GUEST_PYLIB)
        unpacked = [
            f"mkdir -p {guest}",
            f"tar -xf {shlex.quote(str(pylib))} -C {guest} && export PYTHONPATH={guest} PYTHONSAFEPATH=1",
        ]
    return "\n".join(
        [
            "set -u",
            f"cd {shlex.quote(str(REPO))}",
            f"export PATH={shlex.quote(str(venv_bin))}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "export PYTHONDONTWRITEBYTECODE=1 HOME=/tmp",
            *unpacked,
            "mkdir -p /run/netns",
            f'for m in {" ".join(MODULES)}; do modprobe $m || echo "modprobe $m failed" >&2; done',
            shlex.join(command),
            f"echo $? > {shlex.quote(str(rc_file))}",
        ]
    )


def compile_sources() -> None:
    """Byte-compile the checkout on the host: the guest runs with
    PYTHONDONTWRITEBYTECODE, so every Python process there would otherwise
    compile each of the package's modules from source again (a daemon's
    start in a fresh clone took a minute of the emulated CPU)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", "director", "tests", "bench"],
        cwd=REPO,
        check=False,
    )


def run_in_vm(command: list[str]) -> int:
    vng = shutil.which("vng") or str(REPO / ".venv" / "bin" / "vng")
    compile_sources()
    # DIRECTOR_VM_PYLIB=0 (or DIRECTOR_VM_ZIP=0, its name when it was a zip)
    # boots without the tree: every module over the 9p share.
    wanted = all(
        os.environ.get(name, "1") != "0" for name in ("DIRECTOR_VM_PYLIB", "DIRECTOR_VM_ZIP")
    )
    pylib = pure_python_tree() if wanted else None
    workdir = REPO / ".vmtest"
    workdir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        rc_file = Path(tmp) / "rc"
        script = Path(tmp) / "guest.sh"
        script.write_text(guest_script(command, rc_file, pylib))
        argv = [
            vng,
            "--run",
            guest_kernel(),
            "--disable-kvm",
            "--memory",
            os.environ.get("DIRECTOR_VM_MEMORY", "2G"),
            "--cpus",
            os.environ.get("DIRECTOR_VM_CPUS", "2"),
            "--rwdir",
            str(REPO),
            "--exec",
            f"sh {shlex.quote(str(script))}",
        ]
        env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
        run_relayed(argv, env)
        if not rc_file.exists():
            print("run.py: the VM exited before the command finished", file=sys.stderr)
            return 1
        return int(rc_file.read_text().strip() or 1)


def run_relayed(
    argv: list[str],
    env: dict[str, str] | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run argv with pipes for its stdout and stderr, copied line by line (each
    flushed) to `stdout` and `stderr` (ours by default); its exit status.

    virtme-ng hands the guest's console to qemu as `-chardev
    file,path=/proc/self/fd/1`, and qemu opens that path with O_TRUNC: were our
    stdout a regular file (CI's log), everything written to it before the boot
    would be erased. A pipe cannot be truncated.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    errors = threading.Thread(target=relay, args=(process.stderr, err), daemon=True)
    errors.start()
    relay(process.stdout, out)
    errors.join()
    return process.wait()


def relay(source: BinaryIO, sink: BinaryIO) -> None:
    """Copy `source` to `sink` a line at a time as lines come, flushing each,
    until `source` ends; then close `source`."""
    with source:
        for line in iter(source.readline, b""):
            sink.write(line)
            sink.flush()


def run_natively(command: list[str]) -> int:
    for module in MODULES:
        subprocess.run(["modprobe", "-q", module], check=False)
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    return subprocess.run(command, cwd=REPO, env=env, check=False).returncode


def junit_verdict(report: Path) -> str | None:
    """Why the report is not an honest pass, or None when it is."""
    if not report.exists():
        return f"{report}: no report was written"
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = sum(int(s.get("tests", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    if tests == 0:
        return f"{report}: zero kernel tests ran"
    if skipped:
        return f"{report}: {skipped} of {tests} kernel tests were skipped"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vm", action="store_true", help="use the VM even if the host has ip_vs")
    parser.add_argument("--junit", type=Path, help="JUnit report that must show tests ran")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if not args.command:
        parser.error("no command given")
    if args.junit and args.junit.exists():
        args.junit.unlink()
    native = not args.vm and host_has_ipvs()
    print(f"run.py: running {'natively' if native else 'in the VM'}: {shlex.join(args.command)}")
    status = run_natively(args.command) if native else run_in_vm(args.command)
    if args.junit:
        verdict = junit_verdict(args.junit)
        if verdict:
            print(f"run.py: {verdict}", file=sys.stderr)
            return status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
