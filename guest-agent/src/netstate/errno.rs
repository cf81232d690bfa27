//! Turning rtnetlink errors into the errno text an operator knows from iproute2.

pub(crate) fn code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// "File exists", "Network is unreachable", … or the library's own text.
pub(crate) fn describe(e: &rtnetlink::Error) -> String {
    match code(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    }
}
