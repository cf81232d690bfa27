//! The VM seam over a QMP monitor socket vfmig-host owns: bare QEMU.

use super::monitor::OwnMonitor;
use super::qemu::Qemu;
use crate::qmp::Qmp;

/// A VM driven through a QMP socket of vfmig's own.
pub type QmpVm<'a> = Qemu<OwnMonitor<'a>>;

impl<'a> QmpVm<'a> {
    pub fn new(qmp: &'a Qmp) -> Self {
        Qemu::over(OwnMonitor::new(qmp))
    }
}
