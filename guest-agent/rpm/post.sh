# vfmig-guest's %post: the .deb's postinst, and %systemd_post written out (cargo-generate-rpm
# expands no macros). $1 counts the vfmig-guest packages installed once this one is: 1 on a
# first install, 2 on an upgrade. Each step may fail without failing the others, as in the
# .deb's postinst.

# The DMA hook, built by DKMS (EPEL's dkms) for the installed kernels when DKMS and their headers
# are there. The agent works without it (the host then unplugs the VF before pre-copy), so a
# failed build does not fail the package.
if command -v dkms >/dev/null; then
    dkms add -m vfmig-dirty -v 0.1.0 >/dev/null 2>&1 || true
    dkms autoinstall >/dev/null 2>&1 || echo "vfmig-guest: the DMA hook did not build (see dkms status); the agent runs without it" >&2
fi

# Enabled outright, not `systemctl preset`: RHEL's and Fedora's presets disable a unit they do
# not list, and the .deb enables it. Not `--now`: started without the agent's port, the unit
# would wait 90 s for that port's device; udev starts it below when the port is there.
if [ "$1" -eq 1 ]; then
    systemctl enable vfmig-guestd.service >/dev/null 2>&1 || true
fi
# Only with systemd running (not in an image being built): it learns the new unit before udev
# asks for it.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
# A running udev learns the new rules, and a port already there starts the agent now
# (90-vfmig.rules).
if [ -S /run/udev/control ]; then
    udevadm control --reload || true
    udevadm trigger --action=add --subsystem-match=virtio-ports || true
fi
# A running systemd-networkd learns the hold file (00-vfmig-hold.network).
if command -v networkctl >/dev/null && systemctl is-active -q systemd-networkd 2>/dev/null; then
    networkctl reload || true
fi
