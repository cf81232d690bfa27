# Shared by the project's scripts: run as root, install what is missing, find cargo.

require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: run as root: the tests and the demo create network namespaces" >&2
        exit 1
    fi
}

# How the guest's binaries are built (images/build, scripts/package): static, so they run in
# the busybox guest and on any glibc, and one build serves both as long as these are the same.
guest_target=x86_64-unknown-linux-gnu
guest_rustflags="-C target-feature=+crt-static -C strip=debuginfo"

# QEMU 10 (with the SR-IOV igb NIC) is in bookworm-backports; bookworm's own 7.2 has no igb.
qemu_is_new_enough() {
    command -v qemu-system-x86_64 >/dev/null &&
        qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'
}

# libvirt for the two-host libvirt bed (tests/src/libvirt): libvirtd with only its QEMU driver,
# virsh, and the headers the `virt` crate builds against. From bookworm-backports like QEMU, so
# the QEMU driver knows QEMU 10.
libvirt_pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev)
libvirt_is_there() {
    command -v libvirtd >/dev/null && command -v virsh >/dev/null &&
        [ -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ] &&
        pkg-config --exists 'libvirt >= 11'
}

# The bed runs its own libvirtd instances in namespaces of their own; a system libvirtd is not
# wanted. The packages' maintainer scripts would start one (and virtlogd), so they install under
# a policy-rc.d of ours that refuses every start (the machine's own, if any, is put back after),
# and the units they enable are disabled afterwards. Nothing of libvirt's then runs or starts at
# boot; `systemctl enable` undoes it.
install_libvirt() {
    local policy=/usr/sbin/policy-rc.d saved=/usr/sbin/policy-rc.d.vfmig-saved
    [ -e $policy ] && mv $policy $saved
    printf '#!/bin/sh\n# vfmig scripts/lib.sh: no service starts while libvirt installs.\nexit 101\n' > $policy
    chmod 755 $policy
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${libvirt_pkgs[@]/%//bookworm-backports}" >/dev/null || rc=$?
    rm -f $policy
    [ -e $saved ] && mv $saved $policy
    [ $rc = 0 ] || return $rc
    # systemctl enables and disables offline too (no systemd running, as here); it also turns
    # the SysV links of libvirtd, virtlogd and libvirt-guests off.
    command -v systemctl >/dev/null || return 0
    local units=()
    for u in libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
        libvirtd-tcp.socket libvirtd-tls.socket virtlogd.service virtlogd.socket virtlogd-admin.socket \
        virtlockd.service virtlockd.socket virtlockd-admin.socket libvirt-guests.service; do
        if [ -e "/usr/lib/systemd/system/$u" ]; then units+=("$u"); fi
    done
    if [ ${#units[@]} -gt 0 ] && ! systemctl disable --quiet "${units[@]}" 2>/dev/null; then
        echo "$0: cannot disable libvirt's units ${units[*]}" >&2
        return 1
    fi
}

# with_heartbeat LABEL COMMAND...: runs COMMAND, and while it runs says "... LABEL: N s" on
# standard error every 5 s when that is no terminal (a log, a pipe), so that a reader sees a
# long step going on: apt-get installs quietly, and cargo compiles some crates for longer than
# the 10 s a reader should wait for a sign of life. On a terminal COMMAND runs as it is, and
# cargo's own progress bar is that sign.
with_heartbeat() {
    local label=$1 start ticker rc=0
    shift
    if [ -t 2 ]; then
        "$@"
        return
    fi
    start=$(date +%s)
    # The ticker stops by itself should this shell die without stopping it.
    (while sleep 5 && kill -0 $$ 2>/dev/null; do
        echo "    ... $label: $(($(date +%s) - start)) s" >&2
    done) &
    ticker=$!
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    return $rc
}

# Debian packages the build and the tests need; apt-get runs only when something is missing.
install_deps() {
    local missing=() missing_qemu=
    command -v ip >/dev/null || missing+=(iproute2)
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    # cargo fuzz builds libFuzzer, which is C++.
    command -v c++ >/dev/null || missing+=(g++)
    command -v git >/dev/null || missing+=(git)
    command -v cpio >/dev/null || missing+=(cpio)
    # The guest's kernel modules are built with the kernel's own make-based build (images/build).
    command -v make >/dev/null || missing+=(make)
    # The guest agent's D-Bus tests run a private bus and call it as another user.
    command -v dbus-daemon >/dev/null || missing+=(dbus-daemon)
    command -v dbus-send >/dev/null || missing+=(dbus-bin)
    command -v setpriv >/dev/null || missing+=(util-linux)
    # The Debian guest's DHCP test serves leases from the peer namespace.
    command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
    # The libvirt bed: its subreaper, and what the `virt` crate finds libvirt with.
    command -v tini >/dev/null || missing+=(tini)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    local missing_libvirt=
    libvirt_is_there || missing_libvirt=1
    if [ ${#missing[@]} -gt 0 ] || ! qemu_is_new_enough || ! command -v qemu-img >/dev/null || [ -n "$missing_libvirt" ]; then
        if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                > /etc/apt/sources.list.d/vfmig-backports.sources
        fi
        # qemu-img makes the disk overlay a migrating Debian guest's two QEMUs share.
        qemu_is_new_enough && command -v qemu-img >/dev/null || missing_qemu=1
        echo "installing: ${missing[*]}${missing_qemu:+ qemu-system-x86 qemu-utils (bookworm-backports)}${missing_libvirt:+ ${libvirt_pkgs[*]} (bookworm-backports)}"
        with_heartbeat "apt-get update" apt-get update -qq
        if [ ${#missing[@]} -gt 0 ]; then
            with_heartbeat installing env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq "${missing[@]}" >/dev/null
        fi
        if [ -n "${missing_qemu:-}" ]; then
            with_heartbeat "installing QEMU" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
        fi
        # After QEMU: the QEMU driver depends on a qemu-system that must be the backports one.
        if [ -n "$missing_libvirt" ]; then
            with_heartbeat "installing libvirt" install_libvirt
        fi
    fi
    # Debian bookworm's rustc (1.63) is too old for the dependencies; a rustup toolchain is needed.
    if ! command -v cargo >/dev/null; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        echo "$0: no cargo found: install a Rust toolchain >= 1.85 (rustup) and run again" >&2
        exit 1
    fi
}

# What building and testing the packages needs: cargo-deb, debootstrap for the Debian test
# guest the .deb is installed into, man to read the man pages they install, and
# cargo-generate-rpm with rpm to build the guest's .rpm and query it.
install_packaging_deps() {
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    # dpkg-shlibdeps: the host package's dependencies on the libraries it links (libvirt0).
    if ! command -v dpkg-shlibdeps >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >/dev/null
    fi
    # The host package's test reads its man page as `man` shows it.
    if ! command -v man >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq man-db >/dev/null
    fi
    if ! command -v rpm >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null
    fi
    command -v cargo-deb >/dev/null || cargo install -q --locked cargo-deb@3.8.0
    command -v cargo-generate-rpm >/dev/null || cargo install -q --locked cargo-generate-rpm@0.19.0
}
