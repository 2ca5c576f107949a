#!/usr/bin/env bash
# make appliance-test (as root): provision a Debian 12 minbase root file system with the roles in
# appliance/ansible through the community.general.chroot connection, check the result, provision
# it again (nothing may change), and lint the roles with ansible-lint's production profile.
#
#   APPLIANCE_KEEP_ROOTFS=1   keep the cached mmdebstrap tarball between runs (the default
#                             outside CI; CI=true always builds afresh)
#   APPLIANCE_WORK=DIR        work folder (default .cache/appliance)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
WORK=${APPLIANCE_WORK:-$REPO/.cache/appliance}
ROOTFS=$WORK/rootfs
TARBALL=$WORK/rootfs-bookworm-minbase.tar
TAG=appliance-test
mkdir -p "$WORK"
# The mirrors, the tools, mmdebstrap and the chroot provisioning, shared with make image.
. "$REPO/appliance/image/common.sh"

[ "$(id -u)" -eq 0 ] || fail "run as root (mmdebstrap and chroot need it)"
ls dist/enclave-*.whl >/dev/null 2>&1 || fail "no wheel in dist/: run make dist"
mkdir -p "$WORK"

# -- tools ----------------------------------------------------------------------------------------
step "tools: mmdebstrap, Ansible (pinned) in .venv-ansible"
timed tools install_tools ssh-keygen=openssh-client
"$ANSIBLE_VENV/bin/ansible-playbook" --version > "$WORK/ansible-version.txt" && head -n 1 "$WORK/ansible-version.txt"

# -- root file system -----------------------------------------------------------------------------
step "root file system: mmdebstrap minbase bookworm"
timed rootfs build_rootfs "$TARBALL" "$ROOTFS" python3,python3-apt,systemd,systemd-sysv

# -- inventory --------------------------------------------------------------------------------------
rm -f "$WORK/admin_key" "$WORK/admin_key.pub"
ssh-keygen -q -t ed25519 -N "" -C appliance-test -f "$WORK/admin_key"
chroot_inventory "$ROOTFS" "$WORK/inventory.yml"
cat >> "$WORK/inventory.yml" <<YAML
  vars:
    preflight_profile: small
    base_hostname: enclave
    base_domain: appliance.test
    base_admin_users:
      - name: operator
        comment: Appliance test administrator
        ssh_keys: ["$(cat "$WORK/admin_key.pub")"]
    hardening_firewall_admin_networks: [192.0.2.0/28, "2001:db8:1::/64"]
    hardening_firewall_client_networks: [198.51.100.0/24, "2001:db8:2::/64"]
    base_ntp_servers: [ntp.appliance.test]
    base_apt_mirror: $MIRROR
    base_apt_security_mirror: $SECURITY_MIRROR
YAML

step "provision (first run)"
timed provision1 provision "$WORK/provision-1.log" "$WORK/inventory.yml"
[ "$(recap "$WORK/provision-1.log" failed)" = 0 ] || fail "first run had failures"

step "check the provisioned root file system"
timed checks env ENCLAVE_ROOTFS="$ROOTFS" "$REPO/.venv/bin/python" -m pytest -q -p no:cacheprovider \
  "$REPO/tests/appliance/rootfs_checks.py"

for unit in enclave.service enclave-init.service enclave-backup.service; do
  chroot "$ROOTFS" systemd-analyze security --offline=yes --no-pager "/etc/systemd/system/$unit" \
    | grep -E '^→ Overall exposure level' || true
done

step "first start, in a throwaway overlay: credential, PostgreSQL setup, enclave init, serve"
# What the first-boot units do, done by hand (no systemd here) on an overlay of the provisioned
# root file system, which itself stays as the playbook left it. Proves the pieces fit: the
# credential script, the setup SQL, peer authentication over the socket, the database URL, the
# credential read from $CREDENTIALS_DIRECTORY by Enclave itself, migrations and the bootstrap admin.
OVL=$WORK/overlay
SERVE_PID=
smoke_cleanup() {
  if [ -n "$SERVE_PID" ]; then
    kill "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true   # 143: it was terminated, as asked
  fi
  SERVE_PID=
  if mountpoint -q "$OVL/merged/proc"; then
    chroot "$OVL/merged" pg_ctlcluster --skip-systemctl-redirect 15 main stop -m fast >/dev/null 2>&1 || true
    umount "$OVL/merged/proc"
  fi
  mountpoint -q "$OVL/merged/var/lib/systemd" && umount "$OVL/merged/var/lib/systemd"
  mountpoint -q "$OVL/merged" && umount "$OVL/merged"
  rm -rf "$OVL"
}
trap smoke_cleanup EXIT
smoke() {
  smoke_cleanup
  mkdir -p "$OVL/upper" "$OVL/work" "$OVL/merged"
  mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$OVL/upper,workdir=$OVL/work" "$OVL/merged"
  mount -t proc proc "$OVL/merged/proc"
  # systemd-creds keeps its host key only on a persistent file system, which an overlay is not.
  cp -a "$ROOTFS/var/lib/systemd" "$OVL/systemd-state"
  mount --bind "$OVL/systemd-state" "$OVL/merged/var/lib/systemd"
  local in=(chroot "$OVL/merged" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8)
  # First boot gives the machine its id (credentials are bound to it; the image's is empty).
  "${in[@]}" systemd-machine-id-setup > /dev/null
  # enclave-credential.service (no TPM here: "auto" seals it with the host key)
  "${in[@]}" /opt/enclave/libexec/enclave-new-credential
  [ "$("${in[@]}" stat -c '%a %U' /etc/credstore.encrypted/enclave-key-passphrase)" = "600 root" ] \
    || fail "the credential is not root's 0600"
  [ "$(stat -c '%a' "$OVL/merged/root/enclave-key-passphrase.escrow")" = 400 ] || fail "no escrow copy"
  grep -q "$(cat "$OVL/merged/root/enclave-key-passphrase.escrow")" \
    "$OVL/merged/etc/credstore.encrypted/enclave-key-passphrase" && fail "the credential is not encrypted"
  # postgresql + enclave-postgresql-setup.service (twice: it runs at every boot)
  install -d -o 0 -g 0 -m 0755 "$OVL/merged/run"
  "${in[@]}" install -d -o postgres -g postgres -m 2775 /run/postgresql
  "${in[@]}" pg_ctlcluster --skip-systemctl-redirect 15 main start
  for _ in 1 2; do
    "${in[@]}" runuser -u postgres -- psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --dbname=postgres \
      --file=/usr/local/libexec/enclave-postgresql/setup.sql
  done
  # enclave-init.service, twice (the second finds everything in place)
  local as_enclave='d=$(mktemp -d) && systemd-creds decrypt --name=enclave-key-passphrase \
      /etc/credstore.encrypted/enclave-key-passphrase "$d/enclave-key-passphrase" && chown -R enclave "$d" \
      && set -a && . /etc/enclave/enclave.env && set +a && cd /var/lib/enclave && umask 077 \
      && exec setpriv --reuid=enclave --regid=enclave --init-groups env CREDENTIALS_DIRECTORY="$d" \
         ENCLAVE_PORT="${PORT:-8000}" /opt/enclave/venv/bin/enclave "$@"'
  "${in[@]}" sh -c "$as_enclave" init init > "$OVL/init-1.out" || fail "enclave init failed"
  grep -q "Bootstrap admin client" "$OVL/init-1.out" || fail "init issued no bootstrap admin"
  "${in[@]}" sh -c "$as_enclave" init init | grep -q "already issued" || fail "a second init re-issued"
  [ "$("${in[@]}" stat -c '%a %U' /var/lib/enclave/keys/kek.json)" = "600 enclave" ] \
    || fail "kek.json is not the enclave user's 0600"
  [ "$("${in[@]}" stat -c '%a %U' /var/lib/enclave/bootstrap-credentials.json)" = "600 enclave" ] \
    || fail "bootstrap-credentials.json is not the enclave user's 0600"
  grep -q '"sealing": "scrypt"' "$OVL/merged/var/lib/enclave/keys/kek.json" || fail "the KEK is not sealed"
  # enclave.service: serve on a free loopback port, then /readyz says the database and keys are fine
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${in[@]}" PORT="$port" sh -c "$as_enclave" serve serve > "$OVL/serve.log" 2>&1 &
  SERVE_PID=$!
  local ready=
  for _ in $(seq 1 60); do
    ready=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=2).read().decode())" 2>/dev/null) && break
    sleep 0.5
  done
  echo "readyz: $ready"
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(d != {"status": "ready", "checks": {"database": "ok", "keys": "ok"}})' "${ready:-null}" \
    || { cat "$OVL/serve.log"; fail "the service is not ready on PostgreSQL"; }
  smoke_cleanup
}
timed smoke smoke

step "provision again: nothing may change"
timed provision2 provision "$WORK/provision-2.log" "$WORK/inventory.yml"
changed=$(recap "$WORK/provision-2.log" changed)
if [ "$changed" != 0 ]; then
  grep -E '^changed:' -B2 "$WORK/provision-2.log" | head -40
  fail "the second run changed $changed task(s); the roles are not idempotent"
fi

step "pre-flight, the first task of site.yml, against this build host (connection local)"
# Two stand-in profiles make the outcome independent of this machine: one nobody meets, one any
# Debian 12 host meets. Nothing may change either way (the check comes before every other role).
preflight_play() {
  local profile=$1 expect=$2 log=$WORK/preflight-$1.log
  mkdir -p "$WORK/profiles"
  cat > "$WORK/profiles/large.yml" <<'YAML'
name: large
requirements: {aes_ni: false, cpu_cores: 100000, memory_gib: 100000, data_free_gib: 1000000, tpm2: true, debian_version: "12", clock_sync: false}
YAML
  cat > "$WORK/profiles/small.yml" <<'YAML'
name: small
requirements: {aes_ni: false, cpu_cores: 1, memory_gib: 0, data_free_gib: 0, tpm2: false, debian_version: "12", clock_sync: false}
YAML
  printf 'enclave:\n  hosts:\n    localhost: {ansible_connection: local, ansible_python_interpreter: /usr/bin/python3, ansible_become: false}\n' \
    > "$WORK/local.yml"
  local rc=0
  (cd "$PLAYBOOK_DIR" && "$ANSIBLE_VENV/bin/ansible-playbook" -i "$WORK/local.yml" site.yml \
    --tags preflight -e preflight_profile="$profile" -e preflight_profiles_dir="$WORK/profiles") \
    > "$log" 2>&1 || rc=$?
  grep -E '^localhost\s+:' "$log" | grep -q 'changed=0' || { cat "$log"; fail "pre-flight changed something"; }
  if [ "$expect" = refuse ]; then
    [ "$rc" -ne 0 ] && grep -q "REFUSED: this host does not meet hardware profile large: cpu_cores fails" "$log" \
      || { cat "$log"; fail "pre-flight did not refuse a host below the profile"; }
  else
    [ "$rc" -eq 0 ] || { cat "$log"; fail "pre-flight refused a host that meets the profile"; }
  fi
  echo "pre-flight with profile $profile: ${expect} as expected"
}
timed preflight eval 'preflight_play large refuse && preflight_play small pass'

step "ansible-lint --offline (production profile)"
lint() { (cd "$PLAYBOOK_DIR" && PATH="$ANSIBLE_VENV/bin:$PATH" "$ANSIBLE_VENV/bin/ansible-lint" --offline --profile production); }
timed lint lint

total=$(( $(date +%s) - START ))
echo
echo "appliance-test: timings (s): $(for k in tools rootfs provision1 checks smoke provision2 preflight lint; do printf '%s=%s ' "$k" "${TIMES[$k]}"; done)total=$total"
echo "appliance-test: passed (second run changed=0)"
