#!/usr/bin/env bash
# make image (as root): a bootable Debian 12 disk image of the Enclave appliance. The same root
# file system and roles as make appliance-test (appliance/image/common.sh), plus a kernel and
# initramfs, an fstab with LABEL=root and DHCP on the wired interface through systemd-networkd;
# then a GPT disk with an EFI system partition (GRUB built with grub-mkstandalone) and an ext4 root
# made with mkfs.ext4 -d (no loop device, no mount). Keys, the TLS certificate and the bootstrap
# credentials are made by first-boot units on each machine; none is in the image.
#
#   IMAGE_VARS=FILE        Ansible variables (YAML) for the image: base_hostname, base_domain,
#                          base_admin_users with their SSH keys, hardening_firewall_*_networks, ...
#                          Required (the roles refuse an image nobody can log in to).
#   IMAGE_OUT=DIR          output folder (default build/image): disk.raw, and disk.raw.zst with
#   IMAGE_ZSTD=1           a zstd-compressed copy
#   IMAGE_SIZE_MIB=N       size of the root file system (default: used space x 1.5, at least 2048)
#   IMAGE_REUSE_ROOTFS=1   provision the root file system left by the previous build again instead
#                          of a fresh one (faster while changing roles; not for release images)
#   APPLIANCE_KEEP_ROOTFS, APPLIANCE_MIRROR, APPLIANCE_SECURITY_MIRROR: as for make appliance-test
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
TAG=image
WORK=${IMAGE_WORK:-$REPO/.cache/image}
OUT=${IMAGE_OUT:-$REPO/build/image}
ROOTFS=$WORK/rootfs
TARBALL=$WORK/rootfs-bookworm-minbase-kernel.tar
mkdir -p "$WORK"
. "$REPO/appliance/image/common.sh"

[ "$(id -u)" -eq 0 ] || fail "run as root (mmdebstrap and chroot need it)"
ls dist/enclave-*.whl >/dev/null 2>&1 || fail "no wheel in dist/: run make dist"
[ -n "${IMAGE_VARS:-}" ] && [ -s "$IMAGE_VARS" ] \
  || fail "set IMAGE_VARS to a YAML file of Ansible variables (admin users and keys, networks; see docs/operations.md)"
IMAGE_VARS=$(realpath "$IMAGE_VARS")

step "tools: mmdebstrap, GRUB for EFI, mtools, dosfstools, gdisk, zstd, Ansible"
timed tools install_tools sgdisk=gdisk mcopy=mtools mkfs.vfat=dosfstools zstd=zstd \
  grub-mkstandalone=grub-efi-amd64-bin /usr/lib/grub/x86_64-efi/linux.mod=grub-efi-amd64-bin

REUSE=0
[ "${IMAGE_REUSE_ROOTFS:-0}" = 1 ] && [ -x "$ROOTFS/usr/bin/systemctl" ] && REUSE=1
if [ "$REUSE" = 1 ]; then
  step "root file system: the previous build's, provisioned again (IMAGE_REUSE_ROOTFS=1)"
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"   # removed again by finish_rootfs
else
  step "root file system: mmdebstrap minbase bookworm with a kernel"
  timed rootfs build_rootfs "$TARBALL" "$ROOTFS" \
    python3,python3-apt,systemd,systemd-sysv,linux-image-amd64,initramfs-tools
fi

step "what a bootable system needs that the roles leave to the machine: fstab, network"
prepare_boot() {
  # mmdebstrap leaves "# UNCONFIGURED FSTAB"; the hardening role adds /tmp and /var/tmp after this.
  printf '# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\nLABEL=root\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' \
    > "$ROOTFS/etc/fstab"
  mkdir -p "$ROOTFS/etc/systemd/network"
  cat > "$ROOTFS/etc/systemd/network/20-wired.network" <<'NET'
# Appliance image: DHCP on the wired interfaces. Replace with a static address as needed.
[Match]
Name=en* eth*

[Network]
DHCP=yes
NET
  chroot "$ROOTFS" systemctl enable systemd-networkd.service >/dev/null 2>&1
}
[ "$REUSE" = 1 ] || timed prepare prepare_boot

step "provision through the chroot connection (site.yml, variables from $IMAGE_VARS)"
chroot_inventory "$ROOTFS" "$WORK/inventory.yml"
timed provision provision "$WORK/provision.log" "$WORK/inventory.yml" \
  -e base_apt_mirror="$MIRROR" -e base_apt_security_mirror="$SECURITY_MIRROR" -e "@$IMAGE_VARS"
[ "$(recap "$WORK/provision.log" failed)" = 0 ] || fail "provisioning had failures"

step "clean and check: nothing machine-specific, nothing secret"
finish_rootfs() {
  chroot "$ROOTFS" apt-get clean
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
  rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/var/lib/systemd/random-seed" "$ROOTFS/usr/sbin/policy-rc.d" \
    "$ROOTFS"/etc/ssh/ssh_host_* "$ROOTFS/root/.bash_history"
  : > "$ROOTFS/etc/machine-id"
  # The kernel's links at the top of the file system, which the embedded GRUB configuration loads.
  local kernel
  kernel=$(cd "$ROOTFS/boot" && ls vmlinuz-* | sort -V | tail -n 1)
  [ -e "$ROOTFS/vmlinuz" ] || ln -s "boot/$kernel" "$ROOTFS/vmlinuz"
  [ -e "$ROOTFS/initrd.img" ] || ln -s "boot/initrd.img-${kernel#vmlinuz-}" "$ROOTFS/initrd.img"
  [ -s "$ROOTFS/initrd.img" ] || fail "no initramfs for $kernel"
  # The checks: fail on any leftover the gotchas list names.
  [ ! -s "$ROOTFS/etc/machine-id" ] || fail "/etc/machine-id is not empty"
  [ "$(readlink "$ROOTFS/var/lib/dbus/machine-id")" = /etc/machine-id ] || fail "/var/lib/dbus/machine-id is not a link"
  ! ls "$ROOTFS"/etc/ssh/ssh_host_* >/dev/null 2>&1 || fail "SSH host keys in the image"
  ! grep -q UNCONFIGURED "$ROOTFS/etc/fstab" || fail "fstab still UNCONFIGURED"
  grep -qE '^LABEL=root\s+/\s' "$ROOTFS/etc/fstab" || fail "fstab has no LABEL=root"
  grep -rqs -- '-security' "$ROOTFS/etc/apt/sources.list" "$ROOTFS/etc/apt/sources.list.d" || fail "no -security source"
  grep -rqs -- '-updates' "$ROOTFS/etc/apt/sources.list" "$ROOTFS/etc/apt/sources.list.d" || fail "no -updates source"
  grep -qE "^127\.0\.1\.1\s.*\b$(cat "$ROOTFS/etc/hostname")\b" "$ROOTFS/etc/hosts" || fail "/etc/hosts lacks the hostname"
  [ ! -e "$ROOTFS/var/lib/enclave/keys/kek.json" ] || fail "a KEK is baked into the image"
  [ ! -e "$ROOTFS/var/lib/enclave/bootstrap-credentials.json" ] || fail "bootstrap credentials baked into the image"
  ! ls "$ROOTFS"/etc/credstore.encrypted/* >/dev/null 2>&1 || fail "a sealed credential is baked into the image"
  [ ! -e "$ROOTFS/var/lib/systemd/credential.secret" ] || fail "systemd's credential host key is baked into the image"
  ! ls "$ROOTFS"/etc/ssl/enclave/*.key >/dev/null 2>&1 || fail "a TLS private key is baked into the image"
}
timed finish finish_rootfs

step "disk: ext4 root (mkfs.ext4 -d), EFI system partition with GRUB, GPT"
make_disk() {
  mkdir -p "$OUT"
  rm -f "$OUT/disk.raw" "$OUT/disk.raw.zst"
  make_disk_from "$ROOTFS" "$OUT/disk.raw" "${IMAGE_SIZE_MIB:-}"
  if [ "${IMAGE_ZSTD:-0}" = 1 ]; then
    zstd -q -T0 -3 -f "$OUT/disk.raw" -o "$OUT/disk.raw.zst"
  fi
  (cd "$OUT" && sha256sum disk.raw* > SHA256SUMS)
  ls -lsh "$OUT"
}
timed disk make_disk

total=$(( $(date +%s) - START ))
echo
echo "image: timings (s): $(for k in tools rootfs prepare provision finish disk; do printf '%s=%s ' "$k" "${TIMES[$k]}"; done)total=$total"
echo "image: $OUT/disk.raw"
