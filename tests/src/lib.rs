//! The vfmig test bed: throw-away network namespaces for tests on a real kernel (and, as the
//! project grows, the QEMU hosts, fabric and probes built on them).
//!
//! It must never touch the machine's own network namespace: every helper here first moves the
//! calling thread (never the whole process) into a fresh namespace, which the kernel frees when
//! the last thread or descriptor holding it goes away, so a failed or panicking test leaves
//! nothing behind. Tests use addresses from 198.18.0.0/15 and 2001:db8::/32 only.

pub mod netns;
