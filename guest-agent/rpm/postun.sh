# vfmig-guest's %postun: the .deb's postrm, and %systemd_postun_with_restart written out
# (cargo-generate-rpm expands no macros). $1 counts the vfmig-guest packages left: 0 on removal,
# 1 on an upgrade, when this runs after the new package's files are in place.

# systemd forgets the removed unit, or reads the upgraded one.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" -ge 1 ]; then
    # The upgraded agent replaces the running one.
    systemctl try-restart vfmig-guestd.service >/dev/null 2>&1 || true
else
    # A running udev and systemd-networkd drop the removed rules and hold file.
    if [ -S /run/udev/control ]; then
        udevadm control --reload || true
    fi
    if command -v networkctl >/dev/null && systemctl is-active -q systemd-networkd 2>/dev/null; then
        networkctl reload || true
    fi
fi
# The DKMS source's directory: cargo-generate-rpm cannot make the package own a directory, so
# rpm removes only the files in it. Still in use (an upgrade of the same version), it stays.
rmdir /usr/src/vfmig-dirty-0.1.0 2>/dev/null || true
