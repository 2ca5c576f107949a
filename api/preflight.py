"""Pre-flight check: does this host have what an Enclave hardware profile requires?

Checks AES-NI, CPU cores, memory, free disk where the data will live, a TPM 2.0 (when the profile
requires one), the Debian release and clock synchronisation, and refuses a host that fails any of
them (or whose answer is "cannot tell", unless that check is explicitly allowed to be unknown).

Standard library only, on purpose: Ansible copies this very file to a server that has no Enclave
yet and runs it with the system Python (`python3 preflight.py --profile-json '{...}' --json`, the
first task of appliance/ansible/site.yml); `enclave preflight` (api/cli_preflight.py) runs the
same code with the profiles shipped in the package (api/hardware_profiles/).

Every check reads through a `Host`: a root folder (``/`` on a real machine, a temporary folder in
tests) for /proc/cpuinfo, /proc/meminfo, /etc/os-release and /dev/tpmrm0, plus injectable
functions for free disk space, commands (timedatectl, chronyc) and the kernel's clock state.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, UNKNOWN, SKIPPED = "pass", "fail", "unknown", "skipped"
CHECKS = ("aes_ni", "cpu_cores", "memory", "data_disk", "tpm2", "os_release", "clock_sync")
DEFAULT_DATA_DIR = Path("/var/lib/enclave")
GIB = 1024 ** 3
EXIT_OK, EXIT_REFUSED, EXIT_CONFIG = 0, 1, 3


class ProfileError(ValueError):
    """A profile that does not say what it requires, or says it wrongly."""


@dataclass(frozen=True, kw_only=True)
class Requirements:
    """The machine-checkable part of a hardware profile (its `requirements` block)."""

    name: str
    cpu_cores: int
    memory_gib: float
    data_free_gib: float
    aes_ni: bool = True
    tpm2: bool = False
    debian_version: str = "12"
    clock_sync: bool = True

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> Requirements:
        if not isinstance(profile, Mapping):
            raise ProfileError("a profile is a mapping with a `requirements` block")
        block = profile.get("requirements")
        if not isinstance(block, Mapping):
            raise ProfileError(f"profile {profile.get('name', '?')!r} has no `requirements` block")
        unknown = set(block) - {"cpu_cores", "memory_gib", "data_free_gib", "aes_ni", "tpm2",
                                "debian_version", "clock_sync"}
        if unknown:
            raise ProfileError(f"unknown requirements: {', '.join(sorted(unknown))}")

        def number(key: str, kind: type) -> Any:
            value = block.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ProfileError(f"requirements.{key} must be a non-negative number")
            if kind is int and not float(value).is_integer():
                raise ProfileError(f"requirements.{key} must be a whole number")
            return kind(value)

        def flag(key: str, default: bool) -> bool:
            value = block.get(key, default)
            if not isinstance(value, bool):
                raise ProfileError(f"requirements.{key} must be true or false")
            return value

        return cls(name=str(profile.get("name", "custom")), cpu_cores=number("cpu_cores", int),
                   memory_gib=number("memory_gib", float),
                   data_free_gib=number("data_free_gib", float),
                   aes_ni=flag("aes_ni", True), tpm2=flag("tpm2", False),
                   clock_sync=flag("clock_sync", True),
                   debian_version=str(block.get("debian_version", "12")))


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    found: str
    required: str
    hint: str = ""

    @property
    def line(self) -> str:
        hint = f" - {self.hint}" if self.hint and self.status != PASS else ""
        return f"{self.status.upper():<8} {self.name:<11} found {self.found}; needs {self.required}{hint}"


@dataclass(frozen=True)
class Report:
    profile: str
    checks: tuple[Check, ...]
    allowed_unknown: frozenset[str] = frozenset()

    def refusals(self) -> list[Check]:
        return [c for c in self.checks
                if c.status == FAIL or (c.status == UNKNOWN and c.name not in self.allowed_unknown)]

    @property
    def ok(self) -> bool:
        return not self.refusals()

    @property
    def summary(self) -> str:
        refused = self.refusals()
        if not refused:
            return f"this host meets hardware profile {self.profile}"
        return (f"REFUSED: this host does not meet hardware profile {self.profile}: "
                + "; ".join(f"{c.name} {'cannot tell' if c.status == UNKNOWN else 'fails'} "
                            f"({c.found}, needs {c.required})" for c in refused))

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "ok": self.ok, "summary": self.summary,
                "checks": [{"name": c.name, "status": c.status, "found": c.found,
                            "required": c.required, "hint": c.hint, "line": c.line}
                           for c in self.checks]}


Runner = Callable[[Sequence[str]], "tuple[int, str] | None"]


def run_command(argv: Sequence[str]) -> tuple[int, str] | None:
    """(exit status, standard output), or None when the program is not there or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode, done.stdout


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h) on 64-bit Linux: the fields we read, then room for the rest.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("_rest", ctypes.c_byte * 160)]


_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


def kernel_clock_synced() -> bool | None:
    """The kernel's own view (adjtimex, read-only): False while STA_UNSYNC is set; None when the
    call is not available (not Linux, or refused)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = _Timex()  # modes = 0: only read
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return not (state == _TIME_ERROR or timex.status & _STA_UNSYNC)


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass
class Host:
    """What the checks inspect. Defaults are the real machine."""

    root: Path = Path("/")
    run: Runner = run_command
    kernel_clock: Callable[[], bool | None] = kernel_clock_synced
    disk_free: Callable[[Path], int] = disk_free_bytes
    notes: list[str] = field(default_factory=list)

    def path(self, absolute: str | Path) -> Path:
        return self.root / str(absolute).lstrip("/")

    def read(self, absolute: str) -> str | None:
        try:
            return self.path(absolute).read_text(errors="replace")
        except OSError:
            return None


# -- the checks ---------------------------------------------------------------------------------

def check_aes_ni(host: Host, req: Requirements) -> Check:
    needs = "the aes CPU flag (AES-NI)" if req.aes_ni else "nothing"
    cpuinfo = host.read("/proc/cpuinfo")
    if cpuinfo is None:
        return Check("aes_ni", UNKNOWN, "no /proc/cpuinfo", needs, "mount /proc")
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    found = "aes flag present" if "aes" in flags else "no aes flag"
    if not req.aes_ni or "aes" in flags:
        return Check("aes_ni", PASS, found, needs)
    return Check("aes_ni", FAIL, found, needs,
                 "field encryption needs AES-NI; enable it in the firmware or use a CPU that has it")


def check_cpu_cores(host: Host, req: Requirements) -> Check:
    needs = f"at least {req.cpu_cores} logical CPUs"
    cpuinfo = host.read("/proc/cpuinfo")
    if cpuinfo is None:
        return Check("cpu_cores", UNKNOWN, "no /proc/cpuinfo", needs, "mount /proc")
    count = sum(1 for line in cpuinfo.splitlines() if line.split(":")[0].strip() == "processor")
    status = PASS if count >= req.cpu_cores else FAIL
    return Check("cpu_cores", status, f"{count} logical CPUs", needs,
                 f"the {req.name} profile is sized for {req.cpu_cores} cores")


def check_memory(host: Host, req: Requirements) -> Check:
    needs = f"MemTotal at least {req.memory_gib:g} GiB"
    meminfo = host.read("/proc/meminfo")
    total_kib = None
    for line in (meminfo or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                total_kib = int(parts[1])
    if total_kib is None:
        return Check("memory", UNKNOWN, "no MemTotal in /proc/meminfo", needs, "mount /proc")
    gib = total_kib * 1024 / GIB
    status = PASS if gib >= req.memory_gib else FAIL
    return Check("memory", status, f"{gib:.1f} GiB", needs, "add memory")


def check_data_disk(host: Host, req: Requirements, data_dir: Path) -> Check:
    needs = f"{req.data_free_gib:g} GiB free for {data_dir}"
    place = host.path(data_dir)
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = host.disk_free(place) / GIB
    except OSError as exc:
        return Check("data_disk", UNKNOWN, f"cannot measure ({exc.strerror})", needs)
    shown = "/" + str(place.relative_to(host.root)) if place != host.root else "/"
    status = PASS if free >= req.data_free_gib else FAIL
    return Check("data_disk", status, f"{free:.1f} GiB free on {shown.replace('//', '/')}", needs,
                 "mount the data disk (see the profile's disk layout) before installing")


def check_tpm2(host: Host, req: Requirements) -> Check:
    present = host.path("/dev/tpmrm0").exists()
    found = "/dev/tpmrm0 present" if present else "no /dev/tpmrm0"
    if not req.tpm2:
        return Check("tpm2", PASS, found, "nothing (TPM 2.0 optional in this profile)")
    return Check("tpm2", PASS if present else FAIL, found, "a TPM 2.0 (/dev/tpmrm0)",
                 "enable the TPM 2.0 in the firmware; the key passphrase credential is sealed to it")


def _os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = value.strip().strip("\"'")
    return values


def check_os_release(host: Host, req: Requirements) -> Check:
    needs = f"Debian {req.debian_version}"
    text = host.read("/etc/os-release") or host.read("/usr/lib/os-release")
    if text is None:
        return Check("os_release", UNKNOWN, "no /etc/os-release", needs)
    values = _os_release(text)
    found = values.get("PRETTY_NAME") or f"{values.get('ID', '?')} {values.get('VERSION_ID', '?')}"
    ok = values.get("ID") == "debian" and values.get("VERSION_ID") == req.debian_version
    return Check("os_release", PASS if ok else FAIL, found, needs,
                 "Enclave's roles and packages are built for this release only")


def check_clock_sync(host: Host, req: Requirements) -> Check:
    needs = "a synchronised clock (NTP)" if req.clock_sync else "nothing"
    if not req.clock_sync:
        return Check("clock_sync", PASS, "not checked", needs)
    hint = "enable chrony or systemd-timesyncd and let it reach an NTP server"
    answer = host.run(["timedatectl", "show", "--property=NTPSynchronized", "--value"])
    if answer is not None and answer[0] == 0 and answer[1].strip() in ("yes", "no"):
        synced = answer[1].strip() == "yes"
        return Check("clock_sync", PASS if synced else FAIL,
                     f"timedatectl: NTPSynchronized={answer[1].strip()}", needs, hint)
    answer = host.run(["chronyc", "-n", "tracking"])
    if answer is not None and answer[0] == 0:
        for line in answer[1].splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Leap status":
                synced = value.strip() != "Not synchronised"
                return Check("clock_sync", PASS if synced else FAIL,
                             f"chronyc: leap status {value.strip()}", needs, hint)
    synced_kernel = host.kernel_clock()
    if synced_kernel is None:
        return Check("clock_sync", UNKNOWN,
                     "cannot tell (no timedatectl or chronyc answer, kernel state unavailable)",
                     needs, hint + "; or allow it: --allow-unknown clock_sync")
    return Check("clock_sync", PASS if synced_kernel else FAIL,
                 f"kernel (adjtimex) reports {'synchronised' if synced_kernel else 'unsynchronised'}"
                 " - no timedatectl or chronyc answer", needs, hint)


def run_checks(requirements: Requirements, host: Host | None = None, *,
               data_dir: Path = DEFAULT_DATA_DIR, skip: Iterable[str] = (),
               allow_unknown: Iterable[str] = ()) -> Report:
    host = host or Host()
    skip, allow_unknown = set(skip), frozenset(allow_unknown)
    for name in skip | allow_unknown:
        if name not in CHECKS:
            raise ProfileError(f"unknown check {name!r} (checks: {', '.join(CHECKS)})")
    functions: dict[str, Callable[[], Check]] = {
        "aes_ni": lambda: check_aes_ni(host, requirements),
        "cpu_cores": lambda: check_cpu_cores(host, requirements),
        "memory": lambda: check_memory(host, requirements),
        "data_disk": lambda: check_data_disk(host, requirements, data_dir),
        "tpm2": lambda: check_tpm2(host, requirements),
        "os_release": lambda: check_os_release(host, requirements),
        "clock_sync": lambda: check_clock_sync(host, requirements),
    }
    checks = tuple(Check(name, SKIPPED, "not checked (skipped on request)", "-")
                   if name in skip else functions[name]() for name in CHECKS)
    return Report(requirements.name, checks, allow_unknown)


# -- standalone use (Ansible runs this file on the target with the system Python) -----------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Enclave pre-flight check (standalone).")
    parser.add_argument("--profile-json", required=True, help="the profile, as JSON")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    parser.add_argument("--skip", action="append", default=[], choices=CHECKS)
    parser.add_argument("--allow-unknown", action="append", default=[], choices=CHECKS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        requirements = Requirements.from_profile(json.loads(args.profile_json))
        report = run_checks(requirements, Host(root=args.root), data_dir=args.data_dir,
                            skip=args.skip, allow_unknown=args.allow_unknown)
    except (ProfileError, ValueError) as exc:
        print(f"preflight: bad profile: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for check in report.checks:
            print(check.line)
        print(report.summary)
    return EXIT_OK if report.ok else EXIT_REFUSED


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
