//! systemd readiness (`Type=notify`): sd_notify's datagram to
//! $NOTIFY_SOCKET, written by hand (a path or, with a leading '@', an
//! abstract socket name), so no libsystemd and no crate are needed.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. "READY=1") to the service manager. Without
/// NOTIFY_SOCKET (not run by systemd as Type=notify) it does nothing.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = addr.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &a)?;
    } else {
        sock.send_to(state.as_bytes(), &addr)?;
    }
    Ok(true)
}
