# Shared by tests/appliance/run.sh (make appliance-test), appliance/image/build.sh (make image) and
# tests/appliance/image_test.sh (make image-test): the Debian mirrors, the tools, the mmdebstrap
# root file system and the Ansible run through the community.general.chroot connection.
# Source it with REPO set to the repository and TAG to the name printed in messages.
# shellcheck shell=bash

export DEBIAN_FRONTEND=noninteractive
ANSIBLE_VENV=$REPO/.venv-ansible
PLAYBOOK_DIR=$REPO/appliance/ansible
START=${START:-$(date +%s)}
declare -A TIMES=()

step() { echo; echo "=== $TAG: $* ($(( $(date +%s) - START )) s)"; }
fail() { echo "$TAG: FAILED: $*" >&2; exit 1; }
timed() { local name=$1; shift; local t0; t0=$(date +%s); "$@"; TIMES[$name]=$(( $(date +%s) - t0 )); }

# The Debian mirrors this machine's own apt sources name (one-line or deb822 format).
apt_mirror() {
  python3 - "$1" <<'PY'
import glob, sys
suite = sys.argv[1]
for name in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(name).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = [w for w in line.split("#")[0].split() if not w.startswith("[")]
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            print(words[1]); sys.exit(0)
for name in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(name).read().split("\n\n"):
        fields = dict(l.split(":", 1) for l in stanza.splitlines() if ":" in l and not l.startswith("#"))
        fields = {k.strip(): v.split() for k, v in fields.items()}
        if suite in fields.get("Suites", []) and fields.get("URIs"):
            print(fields["URIs"][0]); sys.exit(0)
sys.exit(1)
PY
}
MIRROR=${APPLIANCE_MIRROR:-$(apt_mirror bookworm)} || fail "no bookworm mirror in /etc/apt; set APPLIANCE_MIRROR"
SECURITY_MIRROR=${APPLIANCE_SECURITY_MIRROR:-$(apt_mirror bookworm-security)} \
  || fail "no bookworm-security mirror in /etc/apt; set APPLIANCE_SECURITY_MIRROR"

# install_tools [COMMAND=PACKAGE ...]: mmdebstrap, python3-venv and the given commands' packages
# with apt, then the pinned Ansible in .venv-ansible.
install_tools() {
  local missing=() pair
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  for pair in "$@"; do
    case ${pair%%=*} in
      /*) [ -e "${pair%%=*}" ] || missing+=("${pair#*=}") ;;
      *) command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}") ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
  fi
  local stamp
  stamp=$ANSIBLE_VENV/.installed-$(sha256sum "$REPO/appliance/ansible/requirements.txt" | cut -c1-16)
  if [ ! -e "$stamp" ]; then
    rm -rf "$ANSIBLE_VENV"
    python3 -m venv "$ANSIBLE_VENV"
    "$ANSIBLE_VENV/bin/pip" install --quiet --disable-pip-version-check \
      -r "$REPO/appliance/ansible/requirements.txt" > "$WORK/pip.log" 2>&1 \
      || { cat "$WORK/pip.log"; fail "pip install of Ansible failed"; }
    touch "$stamp"
  fi
}

# build_rootfs TARBALL ROOTFS PACKAGES: a minbase bookworm with PACKAGES (comma-separated), from
# the cached TARBALL unless CI=true or APPLIANCE_KEEP_ROOTFS=0, unpacked afresh into ROOTFS.
build_rootfs() {
  local tarball=$1 rootfs=$2 packages=$3
  if [ "${CI:-}" = true ] || [ "${APPLIANCE_KEEP_ROOTFS:-1}" != 1 ] || [ ! -s "$tarball" ]; then
    rm -rf "$tarball" "$tarball.building.tar"
    # The name must end in .tar: mmdebstrap picks its output format from it.
    mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$tarball.building.tar" "$MIRROR"
    mv "$tarball.building.tar" "$tarball"
  else
    echo "reusing $tarball (cached; CI=true or APPLIANCE_KEEP_ROOTFS=0 rebuilds it)"
  fi
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  tar -C "$rootfs" -xf "$tarball"
}

# chroot_inventory ROOTFS OUT: an inventory that reaches ROOTFS through the chroot connection;
# the group's variables come from the caller (-e @file) or from a vars block appended to OUT.
chroot_inventory() {
  cat > "$2" <<YAML
---
enclave:
  hosts:
    rootfs:
      ansible_connection: community.general.chroot
      ansible_host: $1
      ansible_python_interpreter: /usr/bin/python3
      ansible_become: false
YAML
}

export ANSIBLE_CONFIG=$PLAYBOOK_DIR/ansible.cfg
export ANSIBLE_HOME=$REPO/.cache/ansible ANSIBLE_LOCAL_TEMP=$REPO/.cache/ansible/tmp
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1 PY_COLORS=0

# provision LOG INVENTORY [ansible-playbook arguments]: site.yml against INVENTORY, log in LOG.
provision() {
  local log=$1 inventory=$2
  shift 2
  (cd "$PLAYBOOK_DIR" && "$ANSIBLE_VENV/bin/ansible-playbook" -i "$inventory" site.yml "$@") \
    > "$log" 2>&1 || { tail -n 60 "$log"; fail "ansible-playbook failed (log: $log)"; }
  sed -n '/PLAY RECAP/,$p' "$log"
}
recap() { grep -E '^rootfs\s+:' "$1" | grep -oE "$2=[0-9]+" | cut -d= -f2; }

# make_disk_from ROOTFS DISK [SIZE_MIB]: a GPT disk with an EFI system partition (GRUB from
# grub-mkstandalone) and an ext4 root made with mkfs.ext4 -d from ROOTFS (no loop device, no
# mount). SIZE_MIB defaults to the used space x 1.5, at least 2048. Scratch files go to $WORK.
make_disk_from() {
  local rootfs=$1 out=$2 size=${3:-} used esp=$WORK/esp.img root=$WORK/root.ext4 disk=$2.partial
  used=$(du -sm "$rootfs" | cut -f1)
  [ -n "$size" ] || size=$(( used * 3 / 2 > 2048 ? used * 3 / 2 : 2048 ))
  echo "root file system: ${used} MiB used, ${size} MiB ext4"
  rm -f "$root" "$esp" "$disk" "$out"
  truncate -s "${size}M" "$root"
  mkfs.ext4 -q -F -L root -d "$rootfs" "$root"
  cat > "$WORK/grub-embed.cfg" <<'G'
set timeout=1
search --no-floppy --label root --set=root
linux /vmlinuz root=LABEL=root ro console=tty0 console=ttyS0 panic=-1
initrd /initrd.img
boot
G
  grub-mkstandalone -O x86_64-efi -o "$WORK/BOOTX64.EFI" \
    --modules="part_gpt ext2 search search_label linux normal echo" "boot/grub/grub.cfg=$WORK/grub-embed.cfg"
  mkfs.vfat -C -F 32 -n ESP "$esp" 65536 >/dev/null
  mmd -i "$esp" ::/EFI ::/EFI/BOOT
  mcopy -i "$esp" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  # 1 MiB gap, 64 MiB ESP from sector 2048, root from 65 MiB, 1 MiB for the backup GPT.
  truncate -s "$(( 65 + size + 1 ))M" "$disk"
  sgdisk -o -n1:2048:+64M -t1:ef00 -c1:ESP -n2:133120:0 -t2:8304 -c2:root "$disk" >/dev/null
  sgdisk -v "$disk" >/dev/null && [ "$(sgdisk -i 2 "$disk" | grep -c "Partition name: .root.")" = 1 ] || fail "no GPT on the disk"
  dd if="$esp" of="$disk" bs=512 seek=2048 conv=notrunc,sparse status=none
  dd if="$root" of="$disk" bs=1M seek=65 conv=notrunc,sparse status=none
  rm -f "$root" "$esp"
  mv "$disk" "$out"
}
