"""Checks on a root file system provisioned by appliance/ansible (run by tests/appliance/run.sh,
as root, with ENCLAVE_ROOTFS pointing at it). Not collected by `make test`: the file name does not
match test_*.py, and without a provisioned root file system every check here would fail.

Tools run inside the image with chroot, so the image's own sshd, nft, nginx, visudo and
systemd-analyze judge its files.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

ROOTFS = Path(os.environ.get("ENCLAVE_ROOTFS", "/nonexistent"))
SECURITY_SCORE_LIMIT = 2.0
ENCLAVE_UNITS = ["enclave.service", "enclave-init.service", "enclave-credential.service",
                 "enclave-backup.service", "enclave-webhooks.service",
                 "enclave-retention.service"]
FIRST_BOOT_UNITS = ["enclave-ssh-hostkeys.service", "enclave-tls-selfsigned.service",
                    "enclave-snakeoil.service"]


def path(absolute: str) -> Path:
    return ROOTFS / absolute.lstrip("/")


def text(absolute: str) -> str:
    return path(absolute).read_text()


def in_chroot(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["chroot", str(ROOTFS), *argv], capture_output=True, text=True,
                          timeout=120, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                         "LC_ALL": "C"})
    if check:
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}{done.stderr}"
    return done


def owner(absolute: str) -> tuple[str, str, int]:
    info = path(absolute).lstat()
    users = {int(line.split(":")[2]): line.split(":")[0] for line in text("/etc/passwd").splitlines()}
    groups = {int(line.split(":")[2]): line.split(":")[0] for line in text("/etc/group").splitlines()}
    return users[info.st_uid], groups[info.st_gid], stat.S_IMODE(info.st_mode)


def enabled(unit: str, target: str) -> bool:
    return path(f"/etc/systemd/system/{target}.wants/{unit}").is_symlink()


@pytest.fixture(scope="session", autouse=True)
def _a_provisioned_rootfs() -> None:
    assert (ROOTFS / "etc" / "os-release").exists(), f"no root file system at {ROOTFS}"
    assert os.geteuid() == 0, "run as root (chroot)"


# -- image hygiene: nothing machine-specific or secret is baked in ----------------------------------

def test_no_ssh_host_keys_and_a_first_boot_unit_makes_them() -> None:
    assert sorted(p.name for p in path("/etc/ssh").glob("ssh_host_*")) == []
    assert enabled("enclave-ssh-hostkeys.service", "ssh.service")
    unit = text("/etc/systemd/system/enclave-ssh-hostkeys.service")
    assert "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key" in unit
    assert "Before=ssh.service" in unit


def test_machine_id_is_empty_and_dbus_reads_it() -> None:
    assert path("/etc/machine-id").read_bytes() == b""
    assert os.readlink(path("/var/lib/dbus/machine-id")) == "/etc/machine-id"


def test_no_private_key_no_credential_no_enclave_keys_in_the_image() -> None:
    found = []
    for top in ("/etc", "/var/lib", "/root", "/home", "/opt/enclave/libexec"):
        for file in path(top).rglob("*"):
            if file.is_file() and not file.is_symlink() and file.stat().st_size < 1_000_000:
                if b"PRIVATE KEY-----" in file.read_bytes():
                    found.append(str(file.relative_to(ROOTFS)))
    assert found == []
    for absent in ("/etc/credstore.encrypted/enclave-key-passphrase",
                   "/var/lib/systemd/credential.secret", "/var/lib/enclave/keys",
                   "/var/lib/enclave/bootstrap-credentials.json", "/etc/ssl/enclave/server.key",
                   "/root/enclave-key-passphrase.escrow", "/usr/sbin/policy-rc.d"):
        assert not path(absent).exists(), absent


def test_apt_sources_include_security_and_updates() -> None:
    sources = text("/etc/apt/sources.list")
    assert re.search(r"^deb \S+ bookworm-security main$", sources, re.M)
    assert re.search(r"^deb \S+ bookworm-updates main$", sources, re.M)


def test_hostname_resolves_locally() -> None:
    assert text("/etc/hostname") == "enclave\n"
    assert re.search(r"^127\.0\.1\.1\s+enclave\.appliance\.test enclave$", text("/etc/hosts"), re.M)


# -- base: admins with keys only ---------------------------------------------------------------------

def test_admin_user_logs_in_with_a_key_only() -> None:
    passwd = {line.split(":")[0]: line.split(":") for line in text("/etc/passwd").splitlines()}
    shadow = {line.split(":")[0]: line.split(":") for line in text("/etc/shadow").splitlines()}
    assert passwd["operator"][6] == "/bin/bash"
    assert shadow["operator"][1] == "*"
    assert "operator" in next(line for line in text("/etc/group").splitlines()
                              if line.startswith("enclave-admins:"))
    keys = text("/home/operator/.ssh/authorized_keys").splitlines()
    assert len(keys) == 1 and keys[0].startswith("ssh-ed25519 ")
    assert owner("/home/operator/.ssh/authorized_keys")[::2] == ("operator", 0o600)


def test_sudoers_is_valid_and_limited_to_the_admin_group() -> None:
    assert owner("/etc/sudoers.d/enclave-admins") == ("root", "root", 0o440)
    rules = text("/etc/sudoers.d/enclave-admins")
    assert "%enclave-admins ALL=(ALL:ALL) ALL" in rules and "NOPASSWD" not in rules
    assert "Defaults use_pty" in rules
    in_chroot("visudo", "-c")


def test_time_sync_and_locale() -> None:
    assert "server ntp.appliance.test iburst" in text("/etc/chrony/chrony.conf")
    in_chroot("chronyd", "-p", "-f", "/etc/chrony/chrony.conf")
    assert enabled("chrony.service", "multi-user.target")
    assert os.readlink(path("/etc/localtime")) == "/usr/share/zoneinfo/Etc/UTC"
    assert text("/etc/default/locale") == "LANG=C.UTF-8\n"


# -- hardening -----------------------------------------------------------------------------------------

def test_sshd_config_passes_sshd_t_and_refuses_root_and_passwords() -> None:
    assert owner("/etc/ssh/sshd_config") == ("root", "root", 0o600)
    assert not re.search(r"^\s*Include", text("/etc/ssh/sshd_config"), re.M | re.I)
    script = ('k=$(mktemp -d) && ssh-keygen -q -t ed25519 -N "" -f "$k/key" && '
              'sshd -t -f /etc/ssh/sshd_config -h "$k/key" && '
              'sshd -T -f /etc/ssh/sshd_config -h "$k/key" -C user=operator,host=h,addr=192.0.2.1; '
              'r=$?; rm -rf "$k"; exit $r')
    effective = dict(line.split(" ", 1) for line in
                     in_chroot("sh", "-c", script).stdout.splitlines() if " " in line)
    assert effective["permitrootlogin"] == "no"
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["authenticationmethods"] == "publickey"
    assert effective["allowgroups"] == "enclave-admins"
    assert effective["x11forwarding"] == "no" and effective["allowtcpforwarding"] == "no"
    weak = re.compile(r"(cbc|sha1|md5|diffie-hellman-group(1|14)-|3des|arcfour|ssh-rsa\b|ssh-dss)")
    for key in ("ciphers", "macs", "kexalgorithms", "hostkeyalgorithms"):
        assert not weak.search(effective[key]), (key, effective[key])


def test_firewall_parses_and_drops_by_default() -> None:
    in_chroot("nft", "-c", "-f", "/etc/nftables.conf")
    rules = text("/etc/nftables.conf")
    assert rules.count("policy drop;") == 2  # input and forward
    assert "tcp dport 443 ip saddr @clients_v4 ct state new accept" in rules
    assert "tcp dport 22 ip saddr @admins_v4 ct state new accept" in rules
    assert "elements = { 198.51.100.0/24 }" in rules and "elements = { 192.0.2.0/28 }" in rules
    assert "elements = { 2001:db8:2::/64 }" in rules and "elements = { 2001:db8:1::/64 }" in rules
    assert enabled("nftables.service", "sysinit.target") or \
        enabled("nftables.service", "multi-user.target")


def test_audit_rules_watch_keys_and_configuration() -> None:
    rules = text("/etc/audit/rules.d/50-enclave.rules").splitlines()
    for expected in ("-w /etc/enclave -p wa -k enclave-config",
                     "-w /var/lib/enclave/keys -p rwa -k enclave-keys",
                     "-w /etc/credstore.encrypted -p rwa -k enclave-keys",
                     "-w /etc/ssh/sshd_config -p wa -k sshd"):
        assert expected in rules
    assert enabled("auditd.service", "multi-user.target")


def test_sysctls() -> None:
    values = dict(line.split(" = ") for line in
                  text("/etc/sysctl.d/60-enclave-hardening.conf").splitlines()
                  if " = " in line and not line.startswith("#"))
    for key, value in {"kernel.kptr_restrict": "2", "kernel.dmesg_restrict": "1",
                       "kernel.yama.ptrace_scope": "2", "kernel.unprivileged_bpf_disabled": "1",
                       "net.ipv4.ip_forward": "0", "net.ipv4.tcp_syncookies": "1",
                       "net.ipv4.conf.all.accept_redirects": "0",
                       "net.ipv4.conf.all.rp_filter": "1", "net.ipv6.conf.all.accept_ra": "0",
                       "fs.suid_dumpable": "0", "fs.protected_symlinks": "1"}.items():
        assert values.get(key) == value, key


def test_no_other_sysctl_file_contradicts_the_roles_values() -> None:
    """systemd-sysctl applies the files in name order (procps's 99-protect-links.conf used to win
    over 60-enclave-hardening.conf), and the SCAP checks read every file: each key has one value."""
    ours = dict(line.split(" = ") for line in
                text("/etc/sysctl.d/60-enclave-hardening.conf").splitlines()
                if " = " in line and not line.startswith("#"))
    files = [path("/etc/sysctl.conf")] + [f for folder in ("/etc/sysctl.d", "/run/sysctl.d",
             "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d") if path(folder).is_dir()
             for f in sorted(path(folder).glob("*.conf"))]
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            match = re.match(r"^\s*([\w.]+)\s*=\s*(.*\S)\s*$", line)
            if match and match[1] in ours:
                assert match[2] == ours[match[1]], (str(f), line)
    for diverted in ("/usr/lib/sysctl.d/50-pid-max.conf", "/usr/lib/sysctl.d/99-protect-links.conf"):
        assert not path(diverted).exists(), diverted
        assert in_chroot("dpkg-divert", "--truename", diverted).stdout.strip() == \
            diverted + ".enclave-diverted"


def test_needrestart_lists_only_and_aide_hashes_are_sha2() -> None:
    assert "$nrconf{restart} = 'l';" in text("/etc/needrestart/conf.d/50-enclave.conf")
    in_chroot("/usr/bin/perl", "-c", "/etc/needrestart/conf.d/50-enclave.conf")
    assert path("/usr/sbin/needrestart").exists()
    checksums = [line for line in text("/etc/aide/aide.conf").splitlines()
                 if line.startswith("Checksums")]
    assert checksums == ["Checksums = sha256+sha512"], checksums
    aide = text("/etc/aide/aide.conf").splitlines()
    assert "OwnerMode = p+u+g+ftype+acl+xattrs" in aide and "InodeData = OwnerMode+n+i+Size+l+X+xattrs" in aide
    for tool in ("x86_64-linux-gnu-as", "x86_64-linux-gnu-ld.bfd", "x86_64-linux-gnu-ld.gold"):
        mode = path(f"/usr/bin/{tool}").stat()
        assert stat.S_IMODE(mode.st_mode) == 0o750 and mode.st_uid == 0 and mode.st_gid == 0, tool


def test_tmp_mount_options() -> None:
    fstab = [line.split() for line in text("/etc/fstab").splitlines()
             if line.strip() and not line.startswith("#")]
    mounts = {fields[1]: fields for fields in fstab}
    for point in ("/tmp", "/var/tmp"):
        options = set(mounts[point][3].split(","))
        assert {"nosuid", "nodev", "noexec"} <= options, (point, options)
    assert mounts["/tmp"][2] == "tmpfs"


def test_unused_filesystems_and_protocols_cannot_load() -> None:
    lines = set(text("/etc/modprobe.d/enclave-hardening.conf").splitlines())
    for module in ("cramfs", "udf", "usb-storage"):
        assert f"install {module} /bin/false" in lines and f"blacklist {module}" in lines
    for module in ("dccp", "sctp", "rds", "tipc"):  # the form Lynis's NETW-3200 recognises
        assert f"install {module} /bin/true" in lines and f"blacklist {module}" in lines


def test_unattended_security_updates_and_banner() -> None:
    dump = in_chroot("apt-config", "dump").stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    patterns = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump, re.M)
    assert patterns and all("Debian-Security" in p for p in patterns), patterns
    assert "Authorised access only" in text("/etc/issue.net")
    assert text("/etc/motd") == ""


# -- PostgreSQL ------------------------------------------------------------------------------------------

def test_postgresql_socket_only_scram_and_peer() -> None:
    conf = text("/etc/postgresql/15/main/conf.d/50-enclave.conf")
    assert "listen_addresses = ''" in conf and "password_encryption = 'scram-sha-256'" in conf
    hba = [line.split() for line in text("/etc/postgresql/15/main/pg_hba.conf").splitlines()
           if line.strip() and not line.startswith("#")]
    assert hba == [["local", "all", "postgres", "peer"],
                   ["local", "enclave", "enclave", "peer"],
                   ["host", "enclave", "enclave", "127.0.0.1/32", "scram-sha-256"],
                   ["host", "enclave", "enclave", "::1/128", "scram-sha-256"]]
    assert owner("/var/lib/postgresql/15/main")[::2] == ("postgres", 0o700)
    setup = text("/usr/local/libexec/enclave-postgresql/setup.sql")
    assert "CREATE ROLE %I LOGIN" in setup and "CREATE DATABASE %I OWNER %I" in setup
    assert enabled("enclave-postgresql-setup.service", "multi-user.target")
    assert enabled("postgresql.service", "multi-user.target")


# -- the Enclave service -----------------------------------------------------------------------------------

def test_enclave_user_folders_and_settings() -> None:
    passwd = {line.split(":")[0]: line.split(":") for line in text("/etc/passwd").splitlines()}
    assert passwd["enclave"][5] == "/var/lib/enclave"
    assert passwd["enclave"][6] == "/usr/sbin/nologin"
    assert int(passwd["enclave"][2]) < 1000
    assert owner("/var/lib/enclave") == ("enclave", "enclave", 0o700)
    assert owner("/etc/enclave") == ("root", "enclave", 0o750)
    assert owner("/etc/enclave/enclave.env") == ("root", "enclave", 0o640)
    assert owner("/opt/enclave/venv") == ("root", "root", 0o755)
    env = dict(line.split("=", 1) for line in text("/etc/enclave/enclave.env").splitlines()
               if line and not line.startswith("#"))
    assert env["ENCLAVE_DATA_DIR"] == "/var/lib/enclave"
    assert env["ENCLAVE_DATABASE_URL"] == "postgresql+psycopg://enclave@/enclave?host=/run/postgresql"
    assert env["ENCLAVE_HOST"] == "127.0.0.1"
    assert "ENCLAVE_KEY_PASSPHRASE" not in env


def test_the_wheel_is_installed_in_its_own_venv() -> None:
    version = next(path("/opt/enclave/wheels").glob("enclave-*.whl")).name.split("-")[1]
    done = in_chroot("/opt/enclave/venv/bin/python", "-I", "-c",
                     "import importlib.metadata as m, api, schema, storage, security, backup; "
                     "print(m.version('enclave')); print(api.__file__)")
    installed, location = done.stdout.split()
    assert installed == version
    assert location.startswith("/opt/enclave/venv/lib/python3.11/site-packages/api/")
    help_text = in_chroot("/opt/enclave/venv/bin/enclave", "--help").stdout
    for command in ("init", "serve", "backup", "preflight"):
        assert command in help_text
    profiles = in_chroot("/opt/enclave/venv/bin/enclave", "preflight", "--profile", "nope",
                         check=False)
    assert profiles.returncode == 3 and "small" in profiles.stderr


def test_units_are_valid_enabled_and_read_the_passphrase_as_a_credential() -> None:
    for unit in ENCLAVE_UNITS + FIRST_BOOT_UNITS + ["enclave-backup.timer",
                                                     "enclave-retention.timer",
                                                     "enclave-postgresql-setup.service"]:
        done = in_chroot("systemd-analyze", "verify", "--man=no", f"/etc/systemd/system/{unit}",
                         check=False)
        problems = [line for line in (done.stdout + done.stderr).splitlines() if unit in line]
        assert done.returncode == 0 and problems == [], (unit, done.stdout, done.stderr)
    assert enabled("enclave.service", "multi-user.target")
    assert enabled("enclave-backup.timer", "timers.target")
    assert enabled("enclave-retention.timer", "timers.target")
    assert enabled("enclave-webhooks.service", "multi-user.target")
    assert enabled("enclave-tls-selfsigned.service", "nginx.service")
    for unit in ("enclave.service", "enclave-init.service", "enclave-backup.service",
                 "enclave-webhooks.service", "enclave-retention.service"):
        body = text(f"/etc/systemd/system/{unit}")
        assert ("LoadCredentialEncrypted=enclave-key-passphrase:"
                "/etc/credstore.encrypted/enclave-key-passphrase") in body
        assert "User=enclave" in body and "EnvironmentFile=/etc/enclave/enclave.env" in body
        assert "ENCLAVE_KEY_PASSPHRASE" not in body
    init = text("/etc/systemd/system/enclave-init.service")
    assert "StandardOutput=null" in init  # the bootstrap secret never reaches the journal
    assert "Requires=enclave-credential.service enclave-postgresql-setup.service" in init
    # The service reads $CREDENTIALS_DIRECTORY/enclave-key-passphrase itself (security/config.py):
    # no wrapper exports the passphrase into the environment.
    assert not path("/opt/enclave/libexec/enclave-with-credential").exists()
    for unit in ("enclave.service", "enclave-init.service"):
        assert "ExecStart=/opt/enclave/venv/bin/enclave " in text(f"/etc/systemd/system/{unit}")
    assert "/opt/enclave/venv/bin/enclave \"$@\"" in text("/usr/local/sbin/enclave")


@pytest.mark.parametrize("unit", ["enclave.service", "enclave-init.service",
                                  "enclave-backup.service", "enclave-webhooks.service",
                                  "enclave-retention.service"])
def test_systemd_analyze_security_rates_the_sandbox_at_most_2(unit: str) -> None:
    done = in_chroot("systemd-analyze", "security", "--offline=yes", "--no-pager",
                     f"/etc/systemd/system/{unit}", check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security {unit}: {score}")
    assert score <= SECURITY_SCORE_LIMIT, done.stdout
    body = text(f"/etc/systemd/system/{unit}")
    for directive in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                      "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service",
                      "ProtectHome=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
                      "ProtectKernelModules=yes", "MemoryDenyWriteExecute=yes",
                      "LockPersonality=yes", "ReadWritePaths=/var/lib/enclave"):
        assert directive in body, (unit, directive)


# -- TLS ---------------------------------------------------------------------------------------------------------

def test_nginx_configuration_passes_nginx_t_with_modern_tls_and_hsts() -> None:
    in_chroot("/usr/local/libexec/enclave-tls/nginx-check", "/etc/nginx/nginx.conf")
    conf = text("/etc/nginx/nginx.conf")
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf
    ciphers = re.search(r"ssl_ciphers (\S+);", conf)
    assert ciphers and all("GCM" in c or "CHACHA20" in c for c in ciphers.group(1).split(":"))
    assert 'Strict-Transport-Security "max-age=63072000' in conf
    assert "proxy_pass http://127.0.0.1:8000;" in conf and "server_tokens off;" in conf
    assert not path("/etc/nginx/sites-enabled/default").exists()
    assert enabled("nginx.service", "multi-user.target")


# -- backups -------------------------------------------------------------------------------------------------------

def test_backup_timer_creates_then_prunes() -> None:
    service = text("/etc/systemd/system/enclave-backup.service")
    creates = service.index("ExecStart=/opt/enclave/venv/bin/enclave backup create")
    prunes = service.index("ExecStart=/opt/enclave/venv/bin/enclave backup prune --keep-daily 7 --keep-weekly 4 "
                           "--keep-monthly 6")
    assert creates < prunes
    assert "Environment=ENCLAVE_BACKUP_DIR=/var/backups/enclave" in service
    assert "OnCalendar=*-*-* 02:30:00" in text("/etc/systemd/system/enclave-backup.timer")
    assert owner("/var/backups/enclave") == ("enclave", "enclave", 0o700)


def test_webhooks_and_retention_run_from_their_own_units() -> None:
    webhooks = text("/etc/systemd/system/enclave-webhooks.service")
    assert "ExecStart=/opt/enclave/venv/bin/enclave webhooks deliver --every 5" in webhooks
    assert "Restart=on-failure" in webhooks
    # Loopback only unless the operator names the receivers' networks.
    assert "IPAddressDeny=any" in webhooks
    assert [line for line in webhooks.splitlines()
            if line.startswith("IPAddressAllow=")] == ["IPAddressAllow=localhost"]
    # The API too (federation and audit shipping need enclave_outbound_networks).
    api = text("/etc/systemd/system/enclave.service")
    assert "IPAddressDeny=any" in api
    assert [line for line in api.splitlines()
            if line.startswith("IPAddressAllow=")] == ["IPAddressAllow=localhost"]
    retention = text("/etc/systemd/system/enclave-retention.service")
    assert "ExecStart=/opt/enclave/venv/bin/enclave retention run" in retention
    assert "Type=oneshot" in retention
    assert "OnCalendar=*-*-* 03:30:00" in text("/etc/systemd/system/enclave-retention.timer")


# -- measured hardening (docs/hardening.md) ---------------------------------------------------------------

def test_accounts_pam_sudo_and_audit_follow_anssi_bp28() -> None:
    auth = text("/etc/pam.d/common-auth")
    assert "pam_faillock.so preauth" in auth and "pam_faillock.so authfail" in auth
    assert "nullok" not in auth
    assert "pam_faillock.so" in text("/etc/pam.d/common-account")
    password = text("/etc/pam.d/common-password")
    assert "pam_pwquality.so retry=3" in password and "remember=2" in password
    assert "minlen = 15" in text("/etc/security/pwquality.conf")
    assert "deny = 3" in text("/etc/security/faillock.conf")
    assert re.search(r"^ENCRYPT_METHOD\s+YESCRYPT$", text("/etc/login.defs"), re.M)
    assert re.search(r"^UMASK\s+077$", text("/etc/login.defs"), re.M)
    assert "typeset -xr TMOUT=600" in text("/etc/profile.d/enclave-hardening.sh")
    assert text("/etc/securetty") == ""
    rules = text("/etc/sudoers.d/enclave-admins")
    assert "Defaults ignore_dot" in rules and "Defaults umask=0077" in rules
    assert in_chroot("dpkg-statoverride", "--list", "/usr/bin/sudo").stdout.split() == \
        ["root", "enclave-admins", "4110", "/usr/bin/sudo"]
    audit = text("/etc/audit/rules.d/50-enclave.rules").splitlines()
    assert audit[-1] == "-e 2"
    privileged = text("/etc/audit/rules.d/55-enclave-privileged.rules").splitlines()
    assert ("-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset "
            "-k privileged") in privileged
    for name in ("50-enclave.rules", "55-enclave-privileged.rules"):
        in_chroot("/usr/local/libexec/enclave-hardening/check-config", "audit-rules",
                  f"/etc/audit/rules.d/{name}")
    for unit, target in (("apparmor.service", "sysinit.target"), ("rsyslog.service", "multi-user.target"),
                         ("dailyaidecheck.timer", "timers.target")):
        assert enabled(unit, target), unit
    assert path("/var/lib/aide/aide.db").stat().st_size > 0
