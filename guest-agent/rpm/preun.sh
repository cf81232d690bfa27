# vfmig-guest's %preun: the .deb's prerm, and %systemd_preun written out (cargo-generate-rpm
# expands no macros). $1 counts the vfmig-guest packages left once this one is gone: 0 on
# removal, 1 on an upgrade, which keeps the agent and its DMA hook. A failing %preun would stop
# the removal, so every step may fail.

if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now vfmig-guestd.service >/dev/null 2>&1 || true
    if command -v dkms >/dev/null; then
        dkms remove -m vfmig-dirty -v 0.1.0 --all >/dev/null 2>&1 || true
    fi
fi
