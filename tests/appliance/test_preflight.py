"""`enclave preflight`: one refusal per requirement, a host that passes, the CLI and the standalone
script Ansible runs. Every host here is a temporary folder standing in for / (fake /proc/cpuinfo,
/proc/meminfo, /etc/os-release, /dev/tpmrm0) with injected disk, command and clock answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from api import preflight
from api.cli_preflight import load_profile, profile_names
from api.preflight import FAIL, PASS, SKIPPED, UNKNOWN, Host, Requirements, run_checks

REPO = Path(__file__).resolve().parents[2]
ENCLAVE = REPO / ".venv" / "bin" / "enclave"
GIB = 1024 ** 3
DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
DEBIAN_11 = 'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nVERSION_ID="11"\nID=debian\n'
UBUNTU = 'PRETTY_NAME="Ubuntu 24.04 LTS"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n'
SMALL = {"name": "small", "requirements": {"aes_ni": True, "cpu_cores": 4, "memory_gib": 15,
                                           "data_free_gib": 100, "tpm2": False,
                                           "debian_version": "12", "clock_sync": True}}
MEDIUM = {"name": "medium", "requirements": {**SMALL["requirements"], "cpu_cores": 8,
                                             "memory_gib": 30, "tpm2": True}}


def cpuinfo(cores: int, *, aes: bool = True) -> str:
    flags = "fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2" + (" aes avx avx2" if aes else "")
    return "".join(f"processor\t: {n}\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\n"
                   for n in range(cores))


class FakeHost:
    """A folder laid out like / plus canned answers for commands, the kernel clock and disk."""

    def __init__(self, root: Path, *, cores: int = 8, aes: bool = True,
                 mem_gib: float = 31.3, os_release: str | None = DEBIAN_12, tpm: bool = True,
                 free_gib: float = 2000, timedatectl: str | None = "yes",
                 chronyc: str | None = None, kernel: bool | None = True) -> None:
        self.root = root
        (root / "proc").mkdir(parents=True)
        (root / "etc").mkdir()
        (root / "dev").mkdir()
        (root / "var" / "lib").mkdir(parents=True)
        (root / "proc" / "cpuinfo").write_text(cpuinfo(cores, aes=aes))
        (root / "proc" / "meminfo").write_text(
            f"MemTotal:       {int(mem_gib * 1024 * 1024)} kB\nMemFree:        1000 kB\n")
        if os_release is not None:
            (root / "etc" / "os-release").write_text(os_release)
        if tpm:
            (root / "dev" / "tpmrm0").write_text("")
        self.free_gib, self.timedatectl, self.chronyc, self.kernel = \
            free_gib, timedatectl, chronyc, kernel
        self.disk_asked: list[Path] = []

    def run(self, argv: Sequence[str]) -> tuple[int, str] | None:
        if argv[0] == "timedatectl":
            return None if self.timedatectl is None else (0, self.timedatectl + "\n")
        if argv[0] == "chronyc":
            return None if self.chronyc is None else (0, self.chronyc)
        return None

    def disk_free(self, path: Path) -> int:
        self.disk_asked.append(path)
        return int(self.free_gib * GIB)

    def host(self) -> Host:
        return Host(root=self.root, run=self.run, kernel_clock=lambda: self.kernel,
                    disk_free=self.disk_free)


def check(tmp_path: Path, profile: dict[str, Any] = MEDIUM, **host: Any) -> preflight.Report:
    return run_checks(Requirements.from_profile(profile), FakeHost(tmp_path, **host).host())


def status(report: preflight.Report, name: str) -> str:
    return next(c.status for c in report.checks if c.name == name)


def refused_only_for(report: preflight.Report, name: str) -> None:
    assert not report.ok
    assert [c.name for c in report.refusals()] == [name], report.summary
    assert name in report.summary and report.summary.startswith("REFUSED")


# -- a host that has everything ------------------------------------------------------------------

def test_a_host_with_everything_the_profile_requires_passes(tmp_path: Path) -> None:
    report = check(tmp_path)
    assert report.ok, report.summary
    assert [c.name for c in report.checks] == list(preflight.CHECKS)
    assert all(c.status == PASS for c in report.checks)
    assert report.summary == "this host meets hardware profile medium"


# -- one refusal per requirement -----------------------------------------------------------------

def test_refuses_a_cpu_without_aes_ni(tmp_path: Path) -> None:
    report = check(tmp_path, aes=False)
    refused_only_for(report, "aes_ni")


def test_refuses_too_few_cores(tmp_path: Path) -> None:
    report = check(tmp_path, cores=4)
    refused_only_for(report, "cpu_cores")
    assert "4 logical CPUs" in report.summary and "at least 8" in report.summary


def test_refuses_too_little_memory(tmp_path: Path) -> None:
    report = check(tmp_path, mem_gib=15.5)
    refused_only_for(report, "memory")
    assert "15.5 GiB" in report.summary


def test_refuses_too_little_free_disk_where_the_data_will_live(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, free_gib=99)
    report = run_checks(Requirements.from_profile(SMALL), fake.host(),
                        data_dir=Path("/var/lib/enclave"))
    refused_only_for(report, "data_disk")
    # /var/lib/enclave does not exist yet: the space is measured on its nearest parent.
    assert fake.disk_asked == [tmp_path / "var" / "lib"]
    assert "99.0 GiB free on /var/lib" in report.summary


def test_refuses_a_host_without_tpm_when_the_profile_requires_one(tmp_path: Path) -> None:
    report = check(tmp_path, tpm=False)
    refused_only_for(report, "tpm2")
    assert "no /dev/tpmrm0" in report.summary


def test_a_tpm_is_optional_in_the_small_profile(tmp_path: Path) -> None:
    report = check(tmp_path, profile=SMALL, tpm=False)
    assert report.ok and status(report, "tpm2") == PASS


@pytest.mark.parametrize("release", [DEBIAN_11, UBUNTU])
def test_refuses_any_release_but_debian_12(tmp_path: Path, release: str) -> None:
    report = check(tmp_path, os_release=release)
    refused_only_for(report, "os_release")


def test_refuses_a_host_without_os_release(tmp_path: Path) -> None:
    report = check(tmp_path, os_release=None)
    refused_only_for(report, "os_release")
    assert status(report, "os_release") == UNKNOWN


def test_refuses_an_unsynchronised_clock_per_timedatectl(tmp_path: Path) -> None:
    report = check(tmp_path, timedatectl="no")
    refused_only_for(report, "clock_sync")
    assert "NTPSynchronized=no" in report.summary


def test_refuses_an_unsynchronised_clock_per_chronyc(tmp_path: Path) -> None:
    report = check(tmp_path, timedatectl=None,
                   chronyc="Reference ID    : 00000000 ()\nLeap status     : Not synchronised\n")
    refused_only_for(report, "clock_sync")
    assert "chronyc" in report.summary


def test_chronyc_synchronised_passes(tmp_path: Path) -> None:
    report = check(tmp_path, timedatectl=None, chronyc="Leap status     : Normal\n")
    assert report.ok and status(report, "clock_sync") == PASS


def test_refuses_an_unsynchronised_clock_per_the_kernel(tmp_path: Path) -> None:
    report = check(tmp_path, timedatectl=None, chronyc=None, kernel=False)
    refused_only_for(report, "clock_sync")
    assert "adjtimex" in report.summary


def test_clock_cannot_tell_is_a_refusal_unless_allowed(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, timedatectl=None, chronyc=None, kernel=None)
    requirements = Requirements.from_profile(MEDIUM)
    report = run_checks(requirements, fake.host())
    refused_only_for(report, "clock_sync")
    assert status(report, "clock_sync") == UNKNOWN and "cannot tell" in report.summary
    allowed = run_checks(requirements, fake.host(), allow_unknown=["clock_sync"])
    assert allowed.ok and status(allowed, "clock_sync") == UNKNOWN


def test_without_proc_nothing_can_be_told_and_the_host_is_refused(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path)
    (tmp_path / "proc" / "cpuinfo").unlink()
    (tmp_path / "proc" / "meminfo").unlink()
    report = run_checks(Requirements.from_profile(MEDIUM), fake.host())
    assert {c.name for c in report.refusals()} == {"aes_ni", "cpu_cores", "memory"}
    assert all(status(report, n) == UNKNOWN for n in ("aes_ni", "cpu_cores", "memory"))


def test_a_skipped_check_is_reported_as_skipped(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, tpm=False)
    report = run_checks(Requirements.from_profile(MEDIUM), fake.host(), skip=["tpm2"])
    assert report.ok and status(report, "tpm2") == SKIPPED


# -- profiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ({"name": "x"}, "no `requirements`"),
    ({"requirements": {"cpu_cores": "four", "memory_gib": 1, "data_free_gib": 1}}, "cpu_cores"),
    ({"requirements": {"cpu_cores": 4.5, "memory_gib": 1, "data_free_gib": 1}}, "whole number"),
    ({"requirements": {"cpu_cores": 4, "memory_gib": 1, "data_free_gib": 1, "tpm2": "yes"}},
     "tpm2"),
    ({"requirements": {"cpu_cores": 4, "memory_gib": 1, "data_free_gib": 1, "gpu": True}},
     "unknown requirements: gpu"),
])
def test_a_malformed_profile_is_refused(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(preflight.ProfileError, match=message):
        Requirements.from_profile(bad)


def test_unknown_check_names_are_refused() -> None:
    with pytest.raises(preflight.ProfileError, match="unknown check"):
        run_checks(Requirements.from_profile(SMALL), Host(), skip=["gpu"])


def test_the_packaged_profiles_are_the_appliance_folder_s_and_grow_with_their_size() -> None:
    assert profile_names() == ["large", "medium", "small"]
    folder = REPO / "appliance" / "hardware" / "profiles"
    previous: Requirements | None = None
    for name in ("small", "medium", "large"):
        profile = load_profile(name)
        assert profile == yaml.safe_load((folder / f"{name}.yml").read_text())
        assert profile["name"] == name
        for figure in ("contacts", "requests_per_second"):
            assert profile["sustains"][figure].startswith("to be measured"), (name, figure)
        requirements = Requirements.from_profile(profile)
        assert requirements.aes_ni and requirements.debian_version == "12"
        if previous is not None:
            assert requirements.cpu_cores > previous.cpu_cores
            assert requirements.memory_gib > previous.memory_gib
        previous = requirements
    assert not Requirements.from_profile(load_profile("small")).tpm2
    assert Requirements.from_profile(load_profile("medium")).tpm2
    assert Requirements.from_profile(load_profile("large")).tpm2


# -- the command line and the standalone script --------------------------------------------------

def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)


# The CLI and the script read the real clock and disk: those two are skipped here (their logic is
# tested above with injected answers); the fake root supplies everything else.
REAL_WORLD = ["--skip", "clock_sync", "--skip", "data_disk"]


def test_cli_refuses_with_exit_1_and_names_the_missing_requirement(tmp_path: Path) -> None:
    FakeHost(tmp_path, aes=False, cores=2)
    done = _run([str(ENCLAVE), "preflight", "--profile", "medium", "--root", str(tmp_path),
                 *REAL_WORLD, "--json"])
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert {c["name"] for c in report["checks"] if c["status"] == FAIL} == {"aes_ni", "cpu_cores"}
    assert "aes_ni fails" in report["summary"] and "cpu_cores fails" in report["summary"]


def test_cli_table_for_a_host_that_passes(tmp_path: Path) -> None:
    FakeHost(tmp_path)
    done = _run([str(ENCLAVE), "preflight", "--profile", "medium", "--root", str(tmp_path),
                 *REAL_WORLD])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Pre-flight check: hardware profile medium" in done.stdout
    assert "meets hardware profile medium" in done.stdout
    assert "SKIPPED" in done.stdout


def test_cli_unknown_profile_is_a_configuration_error(tmp_path: Path) -> None:
    done = _run([str(ENCLAVE), "preflight", "--profile", "huge"])
    assert done.returncode == 3
    assert "unknown hardware profile 'huge'" in done.stderr


def test_the_standalone_script_needs_only_the_standard_library(tmp_path: Path) -> None:
    """Ansible runs api/preflight.py with the target's system Python, before Enclave exists:
    `-I -S` keeps site-packages (and this repository) out of its path."""
    FakeHost(tmp_path, tpm=False)
    base = [sys.executable, "-I", "-S", str(REPO / "api" / "preflight.py"),
            "--root", str(tmp_path), *REAL_WORLD, "--json"]
    refused = _run([*base, "--profile-json", json.dumps(MEDIUM)])
    assert refused.returncode == 1, refused.stderr
    assert [c["name"] for c in json.loads(refused.stdout)["checks"]
            if c["status"] == FAIL] == ["tpm2"]
    passed = _run([*base, "--profile-json", json.dumps(SMALL)])
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert json.loads(passed.stdout)["ok"] is True
    broken = _run([*base, "--profile-json", json.dumps({"name": "x"})])
    assert broken.returncode == 3 and "bad profile" in broken.stderr


def test_the_real_kernel_clock_query_answers_or_says_it_cannot_tell() -> None:
    assert preflight.kernel_clock_synced() in (True, False, None)
    assert os.path.exists("/proc/cpuinfo") == (preflight.Host().read("/proc/cpuinfo") is not None)
