#!/usr/bin/env bash
# make image-test (as root): build the image (appliance/image/build.sh) with a throwaway admin key,
# boot it with qemu-system-x86_64 under OVMF (q35, TCG: KVM does not work on the CI machines),
# wait for the first-boot units, and check through ports forwarded to 127.0.0.1 only: Enclave
# answers over HTTPS (TLS 1.2+ only), SSH refuses passwords, no unit failed, the system is running,
# the firewall is loaded. The key pair lives in the work folder and is never committed.
#
#   IMAGE_TEST_WORK=DIR    work folder (default .cache/image-test)
#   IMAGE_TEST_BOOT_TIMEOUT=S   seconds to wait for SSH and HTTPS after starting QEMU (default 300)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
TAG=image-test
WORK=${IMAGE_TEST_WORK:-$REPO/.cache/image-test}
OUT=$REPO/build/image/test
mkdir -p "$WORK"
. "$REPO/appliance/image/common.sh"
[ "$(id -u)" -eq 0 ] || fail "run as root"

step "tools: QEMU, OVMF, ssh, curl"
timed tools install_tools qemu-system-x86_64=qemu-system-x86 /usr/share/OVMF/OVMF_CODE_4M.fd=ovmf \
  ssh=openssh-client ssh-keygen=openssh-client curl=curl openssl=openssl

# -- the image, with a throwaway admin key ----------------------------------------------------------
rm -f "$WORK/admin_key" "$WORK/admin_key.pub"
ssh-keygen -q -t ed25519 -N "" -C image-test -f "$WORK/admin_key"
# QEMU's user network: the guest is 10.0.2.15, and forwarded connections come from 10.0.2.2.
cat > "$WORK/image-vars.yml" <<YAML
---
preflight_profile: small
base_hostname: enclave
base_domain: appliance.test
base_admin_users:
  - name: operator
    comment: Image test administrator
    ssh_keys: ["$(cat "$WORK/admin_key.pub")"]
hardening_firewall_admin_networks: [10.0.2.2/32]
hardening_firewall_client_networks: [10.0.2.2/32]
base_ntp_servers: [ntp.appliance.test]
YAML
step "make image (IMAGE_OUT=build/image/test)"
timed image env IMAGE_VARS="$WORK/image-vars.yml" IMAGE_OUT="$OUT" IMAGE_WORK="$REPO/.cache/image" \
  START="$START" "$REPO/appliance/image/build.sh"

# -- boot ---------------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTPS_PORT=$(free_port)
SSH_PORT=$(free_port)
QEMU_PID=
cleanup() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  QEMU_PID=
}
trap cleanup EXIT INT TERM

step "boot under OVMF/TCG (https 127.0.0.1:$HTTPS_PORT, ssh 127.0.0.1:$SSH_PORT)"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
rm -f "$WORK/console.log" "$WORK/qemu.pid"
BOOT0=$(date +%s)
qemu-system-x86_64 -accel tcg -cpu max -m 1536 -smp 2 -machine q35 -display none -monitor none \
  -serial "file:$WORK/console.log" -no-reboot -snapshot \
  -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd" \
  -drive file="$OUT/disk.raw",format=raw,if=virtio \
  -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$HTTPS_PORT-:443,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22 \
  -device virtio-net-pci,netdev=n0 -pidfile "$WORK/qemu.pid" -daemonize
QEMU_PID=$(cat "$WORK/qemu.pid")

SSH=(ssh -i "$WORK/admin_key" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no
     -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 operator@127.0.0.1)
in_vm() { timeout 120 "${SSH[@]}" "$@"; }
BOOT_TIMEOUT=${IMAGE_TEST_BOOT_TIMEOUT:-300}
wait_for() {
  local what=$1; shift
  local deadline=$(( $(date +%s) + BOOT_TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$QEMU_PID" 2>/dev/null || { tail -n 40 "$WORK/console.log"; fail "QEMU exited while waiting for $what"; }
    ! grep -qa 'Shell>' "$WORK/console.log" || { tail -n 40 "$WORK/console.log"; fail "the firmware found nothing to boot"; }
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 60 "$WORK/console.log"; fail "no $what after ${BOOT_TIMEOUT} s"; }
    sleep 2
  done
  echo "$what after $(( $(date +%s) - BOOT0 )) s"
}
wait_for "SSH with the admin key" timeout 20 "${SSH[@]}" true
step "wait for the first-boot units (is-system-running --wait)"
STATE=$(in_vm timeout 600 systemctl is-system-running --wait 2>/dev/null || true)
echo "is-system-running: $STATE ($(( $(date +%s) - BOOT0 )) s after start)"
wait_for "HTTPS /readyz" curl -sfk -m 10 "https://127.0.0.1:$HTTPS_PORT/readyz"
TIMES[boot]=$(( $(date +%s) - BOOT0 ))

# -- checks -------------------------------------------------------------------------------------------
step "checks"
t0=$(date +%s)
failures=()
check() { local name=$1; shift; if "$@"; then echo "ok   $name"; else echo "FAIL $name"; failures+=("$name"); fi; }

URL=https://127.0.0.1:$HTTPS_PORT
healthz=$(curl -sk -m 10 "$URL/healthz" || true)
readyz=$(curl -sk -m 10 "$URL/readyz" || true)
echo "healthz: $healthz"; echo "readyz: $readyz"
check "healthz answers over HTTPS" curl -sfk -m 10 -o /dev/null "$URL/healthz"
check "readyz: database and keys ok" python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(d != {"status": "ready", "checks": {"database": "ok", "keys": "ok"}})' "${readyz:-null}"
check "HSTS header" sh -c "curl -sk -m 10 -D - -o /dev/null '$URL/healthz' | grep -qi '^strict-transport-security:'"
check "TLS 1.2 accepted" curl -sfk -m 10 -o /dev/null --tlsv1.2 --tls-max 1.2 "$URL/healthz"
check "TLS 1.3 accepted" curl -sfk -m 10 -o /dev/null --tlsv1.3 "$URL/healthz"
# OpenSSL 3 on the host refuses TLS 1.0/1.1 at its default security level; level 0 lets it offer them.
check "TLS 1.1 refused" sh -c "! echo | timeout 20 openssl s_client -connect 127.0.0.1:$HTTPS_PORT -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' >/dev/null 2>&1"
check "TLS 1.0 refused" sh -c "! echo | timeout 20 openssl s_client -connect 127.0.0.1:$HTTPS_PORT -tls1 -cipher 'DEFAULT:@SECLEVEL=0' >/dev/null 2>&1"
check "self-signed certificate made on this machine" sh -c "echo | timeout 20 openssl s_client -connect 127.0.0.1:$HTTPS_PORT 2>/dev/null | openssl x509 -noout -subject -issuer"

pw_out=$(timeout 60 ssh -p "$SSH_PORT" -o BatchMode=yes -o PreferredAuthentications=password -o PubkeyAuthentication=no \
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 operator@127.0.0.1 true 2>&1 || true)
echo "ssh with a password: $pw_out"
check "SSH refuses passwords" grep -q 'Permission denied (publickey)' <<<"$pw_out"
root_out=$(timeout 60 ssh -i "$WORK/admin_key" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
  -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 root@127.0.0.1 true 2>&1 || true)
check "SSH refuses root" grep -q 'Permission denied' <<<"$root_out"

failed_units=$(in_vm systemctl --failed --no-legend --plain || echo "ssh failed")
echo "failed units: ${failed_units:-none}"
check "no failed units" test -z "$failed_units"
echo "is-system-running: $STATE"
check "is-system-running is running" test "$STATE" = running
# The admin has no password, so no sudo here: nftables.service is a oneshot that stays active only
# when nft -f /etc/nftables.conf loaded the ruleset.
check "nftables ruleset loaded" sh -c "$(printf '%q ' "${SSH[@]}") systemctl is-active nftables.service | grep -qx active"
for unit in enclave-ssh-hostkeys enclave-credential enclave-tls-selfsigned enclave-init enclave nginx postgresql ssh; do
  check "$unit.service ran" sh -c "$(printf '%q ' "${SSH[@]}") systemctl show -p Result --value $unit.service | grep -qx success"
done
check "webhook deliverer running" sh -c "$(printf '%q ' "${SSH[@]}") systemctl is-active enclave-webhooks.service | grep -qx active"
check "retention timer armed" sh -c "$(printf '%q ' "${SSH[@]}") systemctl is-active enclave-retention.timer | grep -qx active"
check "machine id made at first boot" sh -c "$(printf '%q ' "${SSH[@]}") cat /etc/machine-id | grep -qE '^[0-9a-f]{32}$'"
check "boots through UEFI" sh -c "$(printf '%q ' "${SSH[@]}") test -d /sys/firmware/efi"
in_vm systemd-analyze 2>/dev/null | head -n 1 || true
TIMES[checks]=$(( $(date +%s) - t0 ))
cleanup

total=$(( $(date +%s) - START ))
echo
echo "image-test: timings (s): $(for k in tools image boot checks; do printf '%s=%s ' "$k" "${TIMES[$k]:-}"; done)total=$total"
[ ${#failures[@]} -eq 0 ] || fail "${#failures[@]} check(s) failed: ${failures[*]}"
echo "image-test: passed"
