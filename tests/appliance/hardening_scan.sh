#!/usr/bin/env bash
# make hardening-scan (as root): measure the hardening of the appliance image with public
# benchmarks. Builds the image's root file system exactly as `make image` does (same roles, a
# throwaway admin key, as make image-test), then scans a throwaway overlay of it, never the
# product itself:
#   - OpenSCAP with the Debian 12 datastream of ssg-debian 0.1.76 (downloaded from Debian trixie,
#     checked against its pinned SHA-256), profiles ANSSI-BP-028 minimal, intermediary, enhanced
#     and high, unmodified and untailored;
#   - Lynis (Debian 12's package), hardening index.
# The scanners are installed into the overlay and run inside it (chroot), in private PID, network,
# UTS and IPC namespaces so that they see the image's processes, host name and network settings
# and not the build host's (oscap-chroot and lynis --rootdir read the build host's package
# database and processes, so they would score the build host, not the image). What a chroot
# cannot show (the running kernel's non-network sysctls, mounts, the running services other
# than sshd) is measured by booting the image: HARDENING_SCAN_VM=1 (slow under TCG: the minimal profile alone
# took about 25 minutes on a shared 2-core machine).
#
#   HARDENING_SCAN_VM=1        also boot a copy of the image with the scanners under QEMU/OVMF (TCG)
#                              and scan the running system
#   HARDENING_SCAN_VM_TIMEOUT=S  seconds to wait for the VM's scans (default 2400; raise it under TCG);
#                              at the limit the results finished so far are fetched and summarised,
#                              and the scan fails
#   HARDENING_SCAN_VM_PROFILES="P ..."  the OpenSCAP profiles scanned in the VM, by short name
#                              (default "minimal intermediary enhanced high"); e.g. "enhanced"
#   HARDENING_SCAN_VM_LYNIS=0  no Lynis in the VM (default 1: Lynis runs first, before the profiles)
#   HARDENING_SCAN_CHROOT=0    skip the chroot scan
#   HARDENING_SCAN_BUILD=0     scan the root file system left by the previous build
#   HARDENING_MIN="P=S ..."    fail when a chroot score falls below its floor (profiles by their
#                              short name, and lynis), e.g. "intermediary=79 enhanced=73 lynis=80"
#   HARDENING_REPORTS=DIR      reports (default reports/hardening, git-ignored; not under build/, which make dist empties)
#   HARDENING_WORK=DIR         work folder (default .cache/hardening)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
TAG=hardening-scan
WORK=${HARDENING_WORK:-$REPO/.cache/hardening}
REPORTS=${HARDENING_REPORTS:-$REPO/reports/hardening}
IMAGE_WORK=$REPO/.cache/image
ROOTFS=$IMAGE_WORK/rootfs
mkdir -p "$WORK" "$REPORTS"
. "$REPO/appliance/image/common.sh"
[ "$(id -u)" -eq 0 ] || fail "run as root (mmdebstrap, chroot, overlay and namespaces need it)"

SSG_VERSION=0.1.76-1
SSG_DEB=ssg-debian_${SSG_VERSION}_all.deb
SSG_SHA256=f6880719015c16e8e221bc2503c0e5a9f83d6a09fc6f9292d3522e46bf4fc9d7
DS=$WORK/ssg/usr/share/xml/scap/ssg/content/ssg-debian12-ds.xml
PROFILES=(minimal intermediary enhanced high)
VM_PROFILES=${HARDENING_SCAN_VM_PROFILES:-${PROFILES[*]}}
for p in $VM_PROFILES; do
  [[ " ${PROFILES[*]} " == *" $p "* ]] || fail "HARDENING_SCAN_VM_PROFILES: unknown profile $p (${PROFILES[*]})"
done
VM_LYNIS=${HARDENING_SCAN_VM_LYNIS:-1}
# The packages the scans add to the overlay (and to the VM's copy), not to the image.
SCANNERS=(openscap-scanner lynis)

step "tools"
timed tools install_tools ssh=openssh-client ssh-keygen=openssh-client

# -- the SCAP content: ssg-debian 0.1.76 from trixie, pinned by hash -----------------------------------
fetch_ssg() {
  local apt=$WORK/apt
  if [ ! -s "$WORK/$SSG_DEB" ] || ! echo "$SSG_SHA256  $WORK/$SSG_DEB" | sha256sum -c --quiet 2>/dev/null; then
    local trixie
    trixie=${HARDENING_TRIXIE_MIRROR:-$MIRROR}
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $trixie trixie main" > "$apt/sources.list"
    # A private apt configuration: the host's sources and lists stay as they are.
    local o=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
             -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::Cache::pkgcache=
             -o Dir::Cache::srcpkgcache=)
    apt-get "${o[@]}" update -qq
    (cd "$WORK" && apt-get "${o[@]}" download "ssg-debian=$SSG_VERSION")
  fi
  echo "$SSG_SHA256  $WORK/$SSG_DEB" | sha256sum -c --quiet || fail "$SSG_DEB does not have the pinned SHA-256"
  rm -rf "$WORK/ssg"
  dpkg-deb -x "$WORK/$SSG_DEB" "$WORK/ssg"
  [ -s "$DS" ] || fail "no Debian 12 datastream in $SSG_DEB"
  sha256sum "$DS" | tee "$REPORTS/content.sha256"
}
step "SCAP content: ssg-debian $SSG_VERSION (trixie), ssg-debian12-ds.xml"
timed ssg fetch_ssg

# -- the image's root file system, as make image builds it --------------------------------------------
if [ "${HARDENING_SCAN_BUILD:-1}" = 1 ]; then
  rm -f "$WORK/admin_key" "$WORK/admin_key.pub"
  ssh-keygen -q -t ed25519 -N "" -C hardening-scan -f "$WORK/admin_key"
  # As make image-test: QEMU's user network, forwarded connections come from 10.0.2.2.
  cat > "$WORK/image-vars.yml" <<YAML
---
preflight_profile: small
base_hostname: enclave
base_domain: appliance.test
base_admin_users:
  - name: operator
    comment: Hardening scan administrator
    ssh_keys: ["$(cat "$WORK/admin_key.pub")"]
hardening_firewall_admin_networks: [10.0.2.2/32]
hardening_firewall_client_networks: [10.0.2.2/32]
base_ntp_servers: [ntp.appliance.test]
YAML
  step "make image (the root file system stays in $ROOTFS)"
  timed image env IMAGE_VARS="$WORK/image-vars.yml" IMAGE_OUT="$WORK/image" IMAGE_WORK="$IMAGE_WORK" \
    START="$START" "$REPO/appliance/image/build.sh"
fi
[ -x "$ROOTFS/usr/bin/systemctl" ] || fail "no root file system in $ROOTFS (run without HARDENING_SCAN_BUILD=0)"

# -- a throwaway overlay with the scanners ------------------------------------------------------------
OVL=$WORK/overlay
MERGED=$OVL/merged
overlay_down() {
  mountpoint -q "$MERGED/proc" && umount "$MERGED/proc"
  mountpoint -q "$MERGED" && umount "$MERGED"
  rm -rf "$OVL"
}
QEMU_PID=
cleanup() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  QEMU_PID=
  overlay_down
}
trap cleanup EXIT
trap 'exit 130' INT TERM
overlay_up() {
  overlay_down
  mkdir -p "$OVL/upper" "$OVL/work" "$MERGED"
  mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$OVL/upper,workdir=$OVL/work" "$MERGED"
  mount -t proc proc "$MERGED/proc"
  cp -L /etc/resolv.conf "$MERGED/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' > "$MERGED/usr/sbin/policy-rc.d"
  chmod 0755 "$MERGED/usr/sbin/policy-rc.d"
  chroot "$MERGED" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends ${SCANNERS[*]} >/dev/null" \
    || fail "could not install ${SCANNERS[*]} into the overlay"
  rm -f "$MERGED/usr/sbin/policy-rc.d" "$MERGED/etc/resolv.conf"
  rm -rf "$MERGED"/var/lib/apt/lists/*
  chroot "$MERGED" apt-get clean
  mkdir -p "$MERGED/var/tmp/scan"
  cp "$DS" "$MERGED/var/tmp/scan/ssg-debian12-ds.xml"
  chroot "$MERGED" dpkg-query -W -f '${Version}' lynis > "$WORK/lynis-version"
  chroot "$MERGED" dpkg-query -W -f '${Version}' openscap-scanner > "$WORK/oscap-version"
}

# The scans, as one script run inside the system being measured (chroot or VM). The sysctl lines
# are the image's own /etc/sysctl.d applied to a private network namespace (what systemd-sysctl
# does at boot); only net.* keys, which belong to that namespace: the build host is not touched.
cat > "$WORK/scan-inside.sh" <<'SCAN'
#!/bin/sh
# $1 = chroot or vm; $2 = the ANSSI-BP-028 profiles by short name; $3 = 1 to run Lynis (first: it is
# the quicker one, so that a time limit during the profiles still leaves its result). Results into
# /var/tmp/scan; each result is complete once its .done file exists.
set -u
cd /var/tmp/scan
profiles=${2:-minimal intermediary enhanced high}
lynis=${3:-1}
if [ "$1" = chroot ]; then
  hostname "$(cat /etc/hostname)"
  ip link set lo up 2>/dev/null || true
  cat /etc/sysctl.d/*.conf 2>/dev/null | sed -n 's/^[[:space:]]*\(net\.[^=[:space:]]*\)[[:space:]]*=[[:space:]]*\(.*\)$/\1=\2/p' \
    | while read -r kv; do sysctl -q -w "$kv" >/dev/null 2>&1 || true; done
  # sshd as the booted system runs it (host keys made for this overlay only), so Lynis tests it.
  mkdir -p /run/sshd && ssh-keygen -A >/dev/null && /usr/sbin/sshd
fi
if [ "$lynis" = 1 ]; then
  echo "lynis: start $(date -u +%T)"
  lynis audit system --no-colors --quick --report-file /var/tmp/scan/lynis-report.dat \
    --log-file /var/tmp/scan/lynis.log > /var/tmp/scan/lynis.out 2>&1
  echo "lynis: exit $? $(date -u +%T)"
  touch lynis.done
  chmod -R a+rX /var/tmp/scan
fi
for short in $profiles; do
  p=anssi_bp28_$short
  echo "oscap $p: start $(date -u +%T)"
  # In the chroot a profile takes under a minute; oscap 1.3.7 was once seen stuck there for good
  # (every thread waiting on a futex, no CPU used): give up after 10 minutes and try once more.
  for attempt in 1 2; do
    if [ "$1" = chroot ]; then
      timeout 600 oscap xccdf eval --profile "xccdf_org.ssgproject.content_profile_$p" \
        --results "oscap-$p.xml.part" --report "oscap-$p.html" ssg-debian12-ds.xml > "oscap-$p.log" 2>&1
    else
      oscap xccdf eval --profile "xccdf_org.ssgproject.content_profile_$p" \
        --results "oscap-$p.xml.part" --report "oscap-$p.html" ssg-debian12-ds.xml > "oscap-$p.log" 2>&1
    fi
    rc=$?
    [ "$rc" = 124 ] || break
    echo "oscap $p: stuck, stopped after 600 s (attempt $attempt)"
  done
  echo "oscap $p: exit $rc (2 = some rules failed) $(date -u +%T)"
  mv "oscap-$p.xml.part" "oscap-$p.xml" 2>/dev/null
  touch "oscap-$p.done"
  chmod -R a+rX /var/tmp/scan
done
chmod -R a+rX /var/tmp/scan
SCAN
chmod 0755 "$WORK/scan-inside.sh"

# summarise DIR LABEL: the scores, and every failing rule / Lynis warning and suggestion in DIR.
summarise() {
  python3 - "$1" "$2" "$(cat "$WORK/oscap-version")" "$(cat "$WORK/lynis-version")" <<'PY'
import glob, os, re, sys
import xml.etree.ElementTree as ET
folder, label, oscap_version, lynis_version = sys.argv[1:5]
NS = {"x": "http://checklists.nist.gov/xccdf/1.2"}
scores = {}
lines = [f"# {label}: ssg-debian 0.1.76 (ssg-debian12-ds.xml), openscap-scanner {oscap_version}, lynis {lynis_version}"]
fails = []
for p in ["anssi_bp28_minimal", "anssi_bp28_intermediary", "anssi_bp28_enhanced", "anssi_bp28_high"]:
    path = os.path.join(folder, f"oscap-{p}.xml")
    if not os.path.exists(path):
        lines.append(f"{p}: no results"); continue
    root = ET.parse(path).getroot()
    test = root.find(".//x:TestResult", NS)
    counts = {}
    for rr in test.findall("x:rule-result", NS):
        r = rr.find("x:result", NS).text
        counts[r] = counts.get(r, 0) + 1
        if r in ("fail", "error", "unknown"):
            fails.append((p, rr.get("idref").replace("xccdf_org.ssgproject.content_rule_", ""), r, rr.get("severity")))
    score = test.find("x:score", NS).text
    scores[p.replace("anssi_bp28_", "")] = float(score)
    lines.append(f"{p:26} score {float(score):6.2f}  pass {counts.get('pass', 0):3}  fail {counts.get('fail', 0):3}  "
                 f"notapplicable {counts.get('notapplicable', 0):3}  notchecked {counts.get('notchecked', 0):3}"
                 + (f"  error {counts['error']}" if counts.get("error") else ""))
report = os.path.join(folder, "lynis-report.dat")
if os.path.exists(report):
    data = open(report, errors="replace").read()
    index = re.search(r"^hardening_index=(\d+)", data, re.M)
    warnings = re.findall(r"^warning\[\]=(.*)$", data, re.M)
    suggestions = re.findall(r"^suggestion\[\]=(.*)$", data, re.M)
    scores["lynis"] = float(index.group(1)) if index else 0.0
    lines.append(f"lynis hardening index {index.group(1) if index else '?'}  warnings {len(warnings)}  suggestions {len(suggestions)}")
print("\n".join(lines))
with open(os.path.join(folder, "failing.txt"), "w") as out:
    out.write("\n".join(lines) + "\n\n")
    seen = {}
    for p, rule, r, sev in fails:
        seen.setdefault((rule, r, sev), []).append(p.replace("anssi_bp28_", ""))
    for (rule, r, sev), ps in sorted(seen.items()):
        out.write(f"{r:5} {sev:7} {rule}  [{', '.join(ps)}]\n")
    if os.path.exists(report):
        out.write("\n")
        for w in warnings: out.write(f"lynis warning    {w}\n")
        for s in suggestions: out.write(f"lynis suggestion {s}\n")
floors = dict(item.split("=", 1) for item in os.environ.get("HARDENING_MIN_CHECK", "").split())
below = [f"{k} {scores.get(k, 0):.2f} < {v}" for k, v in floors.items() if scores.get(k, 0.0) < float(v)]
if below:
    print("hardening-scan: below the floor: " + ", ".join(below), file=sys.stderr)
    sys.exit(1)
PY
}

if [ "${HARDENING_SCAN_CHROOT:-1}" = 1 ]; then
  step "overlay with ${SCANNERS[*]}"
  timed overlay overlay_up
  step "scan inside the overlay (chroot, private PID/network/UTS/IPC namespaces)"
  scan_chroot() {
    umount "$MERGED/proc"
    cp "$WORK/scan-inside.sh" "$MERGED/var/tmp/scan/scan-inside.sh"
    unshare --pid --fork --mount --mount-proc="$MERGED/proc" --net --uts --ipc \
      chroot "$MERGED" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 TERM=dumb \
      /var/tmp/scan/scan-inside.sh chroot "${PROFILES[*]}" 1
    rm -rf "$REPORTS/chroot"
    mkdir -p "$REPORTS/chroot"
    cp "$MERGED"/var/tmp/scan/{oscap-*,lynis-*,lynis.*} "$REPORTS/chroot/"
  }
  timed chroot_scan scan_chroot
  overlay_down
  HARDENING_MIN_CHECK=${HARDENING_MIN:-} summarise "$REPORTS/chroot" "chroot scan of the image's root file system, $(date -u +%F)" \
    || fail "a score fell below HARDENING_MIN ($HARDENING_MIN)"
fi

if [ "${HARDENING_SCAN_VM:-0}" = 1 ]; then
  step "a copy of the image with ${SCANNERS[*]} and a unit that scans once booted"
  make_scan_disk() {
    overlay_up
    cp "$WORK/scan-inside.sh" "$MERGED/var/tmp/scan/scan-inside.sh"
    # Started by a timer two minutes after boot, outside the boot transaction (the first-boot
    # units are done by then, and is-system-running is not held at "starting" by the scans).
    cat > "$MERGED/etc/systemd/system/hardening-scan.service" <<UNIT
[Unit]
Description=Hardening scan (scan copy of the image only)
[Service]
Type=oneshot
# /var/tmp is mounted noexec on the appliance: run the script through the shell.
ExecStart=/bin/sh /var/tmp/scan/scan-inside.sh vm "$VM_PROFILES" $VM_LYNIS
ExecStartPost=/usr/bin/touch /var/tmp/scan/done
UNIT
    cat > "$MERGED/etc/systemd/system/hardening-scan.timer" <<'UNIT'
[Unit]
Description=Hardening scan once, after boot (scan copy of the image only)
[Timer]
OnBootSec=2min
[Install]
WantedBy=timers.target
UNIT
    chroot "$MERGED" systemctl enable hardening-scan.timer >/dev/null 2>&1
    umount "$MERGED/proc"
    make_disk_from "$MERGED" "$WORK/scan-disk.raw"
    overlay_down
  }
  timed scan_disk make_scan_disk
  step "boot it under OVMF/TCG, wait for the scans"
  scan_vm() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$WORK/vars.fd"
    rm -f "$WORK/console.log" "$WORK/qemu.pid"
    qemu-system-x86_64 -accel tcg -cpu max -m 2048 -smp 2 -machine q35 -display none -monitor none \
      -serial "file:$WORK/console.log" -no-reboot -snapshot \
      -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
      -drive if=pflash,format=raw,unit=1,file="$WORK/vars.fd" \
      -drive file="$WORK/scan-disk.raw",format=raw,if=virtio \
      -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22 \
      -device virtio-net-pci,netdev=n0 -pidfile "$WORK/qemu.pid" -daemonize
    QEMU_PID=$(cat "$WORK/qemu.pid")
    local ssh=(ssh -i "$WORK/admin_key" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no
               -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 operator@127.0.0.1)
    local deadline=$(( $(date +%s) + ${HARDENING_SCAN_VM_TIMEOUT:-2400} ))
    until timeout 30 "${ssh[@]}" true >/dev/null 2>&1; do
      [ "$(date +%s)" -lt "$deadline" ] || { tail -n 40 "$WORK/console.log"; fail "no SSH"; }
      kill -0 "$QEMU_PID" 2>/dev/null || { tail -n 40 "$WORK/console.log"; fail "QEMU exited"; }
      sleep 5
    done
    echo "$port" > "$WORK/vm-ssh-port"
    # The results so far, fetched whenever another one has finished (checked every minute; a full
    # copy each time would slow the emulated scans): what finished is kept if the time limit comes first.
    fetch_vm() {
      rm -rf "$REPORTS/vm.new" && mkdir -p "$REPORTS/vm.new"
      timeout 120 "${ssh[@]}" 'cd /var/tmp/scan && tar -cf - oscap-*.xml oscap-*.html oscap-*.log oscap-*.done lynis-* lynis.* 2>/dev/null' \
        | tar -C "$REPORTS/vm.new" -xf - 2>/dev/null || true
      timeout 30 "${ssh[@]}" 'systemctl status --no-pager --lines=20 hardening-scan.service' \
        > "$REPORTS/vm.new/hardening-scan.status" 2>&1 || true
      rm -rf "$REPORTS/vm" && mv "$REPORTS/vm.new" "$REPORTS/vm"
      (cd "$REPORTS/vm" && ls -- *.done 2>/dev/null | tr '\n' ' ') || true
    }
    local finished=1 seen="" now
    until timeout 30 "${ssh[@]}" test -e /var/tmp/scan/done >/dev/null 2>&1; do
      if [ "$(date +%s)" -ge "$deadline" ]; then finished=0; break; fi
      kill -0 "$QEMU_PID" 2>/dev/null || { tail -n 40 "$WORK/console.log"; fail "QEMU exited"; }
      now=$(timeout 30 "${ssh[@]}" 'cd /var/tmp/scan && ls -- *.done 2>/dev/null | tr "\n" " "' 2>/dev/null || true)
      if [ -n "$now" ] && [ "$now" != "$seen" ]; then
        echo "hardening-scan: VM, $(( $(date +%s) - START )) s: finished: $(fetch_vm)"
        seen=$now
      fi
      sleep 60
    done
    fetch_vm > /dev/null
    cleanup
    [ "$finished" = 1 ] || VM_PARTIAL=1
  }
  VM_PARTIAL=0
  timed vm_scan scan_vm
  if [ "$VM_PARTIAL" = 1 ]; then
    # Only the results whose .done marker arrived are complete.
    for f in "$REPORTS"/vm/oscap-*.xml; do [ -e "${f%.xml}.done" ] || rm -f "$f"; done
    [ -e "$REPORTS/vm/lynis.done" ] || rm -f "$REPORTS/vm/lynis-report.dat"
    summarise "$REPORTS/vm" "booted image (QEMU/OVMF, TCG), $(date -u +%F), PARTIAL (time limit)" || true
    fail "the scans in the VM did not finish within HARDENING_SCAN_VM_TIMEOUT; finished results are in $REPORTS/vm"
  fi
  summarise "$REPORTS/vm" "booted image (QEMU/OVMF, TCG), $(date -u +%F)"
fi

total=$(( $(date +%s) - START ))
echo
echo "hardening-scan: timings (s): $(for k in tools ssg image overlay chroot_scan scan_disk vm_scan; do printf '%s=%s ' "$k" "${TIMES[$k]:-}"; done)total=$total"
echo "hardening-scan: reports in $REPORTS (failing rules: $REPORTS/*/failing.txt)"
