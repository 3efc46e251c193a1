//! Listening sockets: TCP and unix sockets bound from the configuration, or handed over by
//! systemd (`LISTEN_FDS`), and the connections accepted on them.
//!
//! Sockets are bound before the runtime starts (and before a root daemon drops to its
//! user, so port 25 and a socket in a root-owned directory still work), then turned into
//! tokio listeners inside it.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::core::config::Listen;

/// A socket bound (or received) and not yet served.
#[derive(Debug)]
pub struct Bound {
    pub socket: Socket,
    /// `inet:ADDR` or `unix:PATH`, for log lines.
    pub name: String,
    /// The name systemd gave the socket (`FileDescriptorName=`), if it was passed.
    pub fd_name: Option<String>,
}

#[derive(Debug)]
pub enum Socket {
    Tcp(std::net::TcpListener),
    /// With the path the daemon made (removed when it stops); None for a socket systemd
    /// owns.
    Unix(std::os::unix::net::UnixListener, Option<PathBuf>),
}

/// How unix sockets are made.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixOptions {
    /// Permission bits (the directory they are in also decides who reaches them).
    pub mode: u32,
    /// The group given to the socket, if any.
    pub group: Option<u32>,
}

/// Bind every listener. A leftover unix socket is replaced, unless something still
/// answers on it (another daemon) or the path is not a socket.
pub fn bind(specs: &[Listen], unix: UnixOptions) -> io::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for spec in specs {
        let err = |e: io::Error| io::Error::new(e.kind(), format!("listen on {spec}: {e}"));
        match spec {
            Listen::Unix(path) => {
                if let Ok(m) = std::fs::symlink_metadata(path) {
                    if !m.file_type().is_socket() {
                        return Err(err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket")));
                    }
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(err(io::Error::new(io::ErrorKind::AddrInUse, "another server answers there")));
                    }
                    std::fs::remove_file(path).map_err(err)?;
                }
                let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
                own_socket(path, unix.mode, unix.group).map_err(err)?;
                l.set_nonblocking(true).map_err(err)?;
                out.push(Bound {
                    socket: Socket::Unix(l, Some(path.clone())),
                    name: format!("unix:{}", path.display()),
                    fd_name: None,
                });
            }
            Listen::Inet(addr) => out.push(bind_tcp(*addr)?),
        }
    }
    Ok(out)
}

/// Give the socket file at `path` its mode and group without following a link: root
/// does this in a directory the daemon's user may write, where the socket could have been
/// swapped for a link to any file by now. The file is opened as itself (`O_PATH` and
/// `O_NOFOLLOW`) and changed only if it is a socket.
fn own_socket(path: &Path, mode: u32, group: Option<u32>) -> io::Result<()> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; the descriptor is owned from here on.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed is a valid stat; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "replaced by something that is not a socket",
        ));
    }
    if let Some(gid) = group {
        // SAFETY: an empty path with AT_EMPTY_PATH changes the file fd refers to.
        if unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), u32::MAX, gid, libc::AT_EMPTY_PATH) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // fchmod does not work on an O_PATH descriptor; its /proc link reaches the same file.
    std::fs::set_permissions(format!("/proc/self/fd/{}", fd.as_raw_fd()), std::fs::Permissions::from_mode(mode))
}

/// Bind one TCP listener.
pub fn bind_tcp(addr: std::net::SocketAddr) -> io::Result<Bound> {
    let err = |e: io::Error| io::Error::new(e.kind(), format!("listen on {addr}: {e}"));
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    let name = format!("inet:{}", l.local_addr().map_err(err)?);
    Ok(Bound {
        socket: Socket::Tcp(l),
        name,
        fd_name: None,
    })
}

/// The sockets systemd passed (sd_listen_fds(3)), if it passed any to this process. The
/// variables are removed so that no child takes them for its own.
///
/// Call before any thread is started: it changes the environment.
pub(crate) fn activated() -> io::Result<Option<Vec<Bound>>> {
    let var = |n: &str| std::env::var(n).ok();
    let (pid, fds, names) = (var("LISTEN_PID"), var("LISTEN_FDS"), var("LISTEN_FDNAMES"));
    // SAFETY: descriptors from 3 on are systemd's handover, which this process owns (the
    // pid says it is for us) and nothing else has taken.
    let got = unsafe { activated_from(pid.as_deref(), fds.as_deref(), names.as_deref(), std::process::id(), 3)? };
    if got.is_some() {
        for n in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // Single-threaded here (see above).
            std::env::remove_var(n);
        }
    }
    Ok(got)
}

/// [`activated`] on given values, the descriptors from `first_fd` on (3 in a real
/// handover).
///
/// # Safety
/// The descriptors `first_fd..first_fd + fds` must be open and owned by no one else: the
/// sockets returned own them.
pub unsafe fn activated_from(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
    first_fd: RawFd,
) -> io::Result<Option<Vec<Bound>>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    // For another process (a parent that did not clear them): not ours.
    if pid.and_then(|p| p.parse::<u32>().ok()) != Some(own_pid) {
        return Ok(None);
    }
    let Some(fds) = fds else { return Ok(None) };
    let n: RawFd = fds
        .parse()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| bad(format!("LISTEN_FDS={fds:?}: expected 1 to 64 sockets")))?;
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..n {
        let fd = first_fd + i;
        let name = names
            .get(i as usize)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "unknown");
        out.push(adopt(fd, name)?);
    }
    Ok(Some(out))
}

/// A passed descriptor as a listener: a listening stream socket, TCP or unix.
fn adopt(fd: RawFd, fd_name: Option<String>) -> io::Result<Bound> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("passed socket {fd}: {what}"));
    let opt = |level, name| -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for getsockopt's int options.
        let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v)
    };
    if opt(libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| bad(&e.to_string()))? != libc::SOCK_STREAM {
        return Err(bad("not a stream socket"));
    }
    if opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(|e| bad(&e.to_string()))? != 1 {
        return Err(bad("not listening (ListenStream= with Accept=no is needed)"));
    }
    let domain = opt(libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| bad(&e.to_string()))?;
    // SAFETY: fd_name-independent plain fcntl on a descriptor we now own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
    let (socket, name) = match domain {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: a listening TCP socket handed to this process, owned from here on.
            let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            l.set_nonblocking(true)?;
            let name = format!("inet:{}", l.local_addr()?);
            (Socket::Tcp(l), name)
        }
        libc::AF_UNIX => {
            // SAFETY: a listening unix socket handed to this process, owned from here on.
            let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            l.set_nonblocking(true)?;
            let path = l.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string()));
            (
                Socket::Unix(l, None),
                format!("unix:{}", path.unwrap_or_else(|| format!("(fd {fd})"))),
            )
        }
        _ => return Err(bad("neither TCP nor a unix socket")),
    };
    Ok(Bound { socket, name, fd_name })
}

/// A listener inside the runtime.
pub(crate) enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub(crate) fn from_bound(socket: Socket) -> io::Result<Listener> {
        Ok(match socket {
            Socket::Tcp(l) => Listener::Tcp(tokio::net::TcpListener::from_std(l)?),
            Socket::Unix(l, _) => Listener::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }

    pub(crate) async fn accept(&self, name: &str) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), Peer::Tcp(a)))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), Peer::Unix(name.to_string())))
            }
        }
    }
}

/// Who is at the other end.
#[derive(Debug, Clone)]
pub enum Peer {
    Tcp(std::net::SocketAddr),
    /// The listener's name (`unix:PATH`): unix peers have no address.
    Unix(String),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix(n) => f.write_str(n),
        }
    }
}

/// An accepted connection's stream.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Stream {
    /// Write what the socket takes now, without waiting.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    /// Move `fd` to `to` (as systemd lays out passed sockets from fd 3 on).
    fn move_fd(fd: RawFd, to: RawFd) {
        // SAFETY: plain descriptor calls on descriptors this test owns.
        unsafe {
            assert_eq!(libc::dup2(fd, to), to);
            libc::close(fd);
        }
    }

    #[test]
    fn passed_sockets_are_adopted_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // High numbers, away from what the test harness has open.
        let first = 900 + (std::process::id() % 50) as RawFd;
        move_fd(tcp.into_raw_fd(), first);
        move_fd(unix.into_raw_fd(), first + 1);
        let me = std::process::id();
        // Another process's variables, or none: not ours.
        // SAFETY (every call here): the descriptors from `first` on were moved there by this
        // test and are owned by nothing else.
        assert!(unsafe { activated_from(Some("1"), Some("2"), None, me, first) }.unwrap().is_none());
        assert!(unsafe { activated_from(None, Some("2"), None, me, first) }.unwrap().is_none());
        let got = unsafe { activated_from(Some(&me.to_string()), Some("2"), Some("smtp:metrics"), me, first) }
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, format!("inet:{addr}"));
        assert_eq!(got[0].fd_name.as_deref(), Some("smtp"));
        assert_eq!(got[1].name, format!("unix:{}", path.display()));
        assert_eq!(got[1].fd_name.as_deref(), Some("metrics"));
        assert!(
            matches!(got[1].socket, Socket::Unix(_, None)),
            "systemd's socket is not ours to remove"
        );
        // They accept.
        let Socket::Tcp(l) = &got[0].socket else { panic!("tcp") };
        let _c = std::net::TcpStream::connect(addr).unwrap();
        l.set_nonblocking(false).unwrap();
        assert!(l.accept().is_ok());
        let Socket::Unix(u, _) = &got[1].socket else { panic!("unix") };
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        u.set_nonblocking(false).unwrap();
        assert!(u.accept().is_ok());
    }

    #[test]
    fn bad_handovers_are_refused() {
        let me = std::process::id();
        let pid = me.to_string();
        for fds in ["0", "x", "-1", "65"] {
            // SAFETY: refused before any descriptor is looked at.
            let e = unsafe { activated_from(Some(&pid), Some(fds), None, me, 3) }.unwrap_err();
            assert!(e.to_string().contains("LISTEN_FDS"), "{fds}: {e}");
        }
        // A connected (not listening) socket, and a file, are not listeners.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let first = 960 + (me % 30) as RawFd;
        move_fd(c.into_raw_fd(), first);
        // SAFETY: the test's own descriptor, refused before it is taken over.
        let e = unsafe { activated_from(Some(&pid), Some("1"), None, me, first) }.unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        let f = std::fs::File::open("/dev/null").unwrap();
        move_fd(f.into_raw_fd(), first);
        // SAFETY: as above.
        let e = unsafe { activated_from(Some(&pid), Some("1"), None, me, first) }.unwrap_err();
        assert!(e.to_string().contains("passed socket"), "{e}");
        // SAFETY: closing the test's own descriptor.
        unsafe { libc::close(first) };
    }

    #[test]
    fn stale_sockets_are_replaced_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let opts = UnixOptions { mode: 0o660, group: None };
        let first = bind(&[Listen::Unix(path.clone())], opts).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        // Something answers there: refused.
        let e = bind(&[Listen::Unix(path.clone())], opts).unwrap_err();
        assert!(e.to_string().contains("another server answers there"), "{e}");
        drop(first);
        // The listener is gone, its socket file left behind: replaced.
        assert!(path.exists());
        assert!(bind(&[Listen::Unix(path.clone())], opts).is_ok());
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = bind(&[Listen::Unix(file.clone())], opts).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x", "a file is never removed");
    }

    /// Root sets the socket's mode in a directory the daemon's user can write: a socket
    /// swapped for a link by then must not pass the mode on to the link's target.
    #[test]
    fn a_socket_swapped_for_a_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("d.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // O_PATH with O_NOFOLLOW opens the link itself, which is no socket.
        let e = own_socket(&link, 0o666, Some(0)).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = own_socket(&file, 0o666, None).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        for p in [&target, &file] {
            assert_ne!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o666, "{}", p.display());
        }
        // A socket itself gets both.
        let sock = dir.path().join("real.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        own_socket(&sock, 0o640, Some(0)).unwrap();
        let m = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
    }
}
