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
