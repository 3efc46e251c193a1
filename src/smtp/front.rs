//! Front mode: what the proxy needs when it, not the MTA, faces the Internet.
//!
//! The MTA behind us sees every connection coming from the proxy's own address, which it
//! trusts (Postfix: `mynetworks`). So each connection first tells the MTA who the client
//! really is, with XCLIENT or a PROXY v2 header, and checks that the MTA took it; if not,
//! the client gets 421 4.3.0 and nothing is relayed (fail closed: otherwise an open
//! relay). STARTTLS is ended here, so the client connection may become a TLS stream.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};

use crate::core::config::FrontProtocol;
use crate::smtp::{self, Reply, SmtpError};

/// STARTTLS, ended here: its acceptor and the client connection live in `tls.rs`.
pub use super::tls::{acceptor, ClientIo};

/// Why the downstream did not take the client's identity.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(transparent)]
    Smtp(#[from] SmtpError),
    #[error("the downstream does not offer XCLIENT ADDR to us (Postfix: smtpd_authorized_xclient_hosts)")]
    NoXclient,
    #[error("the downstream refused XCLIENT: {0}")]
    XclientRefused(String),
    #[error("the downstream did not take the PROXY v2 header (Postfix: smtpd_upstream_proxy_protocol = haproxy): {0}")]
    ProxyRefused(String),
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.raw).trim_end().replace("\r\n", " / ")
}

/// Tell the downstream who the client is; returns the greeting the client gets.
pub async fn handoff<R, W>(
    protocol: FrontProtocol,
    down_r: &mut R,
    down_w: &mut W,
    client: SocketAddr,
    local: SocketAddr,
    helo: &str,
    limit: Duration,
) -> Result<Reply, HandoffError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match protocol {
        FrontProtocol::ProxyV2 => {
            smtp::send(down_w, &proxy_v2_header(client, local))
                .await
                .map_err(SmtpError::Downstream)?;
            let greeting = smtp::read_reply_within(down_r, limit, "waiting for the downstream's greeting").await?;
            if greeting.code != 220 {
                // The MTA refuses this client (or is unwell): the client hears it.
                return Ok(greeting);
            }
            // The v2 signature reads as "\r\n\r\n\0\r\nQUIT\n" to a server that does not
            // expect it: its next reply would be a 500 or 221, not our NOOP's 250.
            smtp::send(down_w, b"NOOP\r\n").await.map_err(SmtpError::Downstream)?;
            let noop = smtp::read_reply_within(down_r, limit, "waiting for the reply to NOOP").await?;
            if noop.code != 250 {
                return Err(HandoffError::ProxyRefused(text(&noop)));
            }
            Ok(greeting)
        }
        FrontProtocol::Xclient => {
            let greeting = smtp::read_reply_within(down_r, limit, "waiting for the downstream's greeting").await?;
            if greeting.code != 220 {
                // The MTA refuses connections now (e.g. 421 when overloaded): the client
                // hears it, as it would with PROXY v2.
                return Ok(greeting);
            }
            smtp::send(down_w, format!("EHLO {helo}\r\n").as_bytes())
                .await
                .map_err(SmtpError::Downstream)?;
            let ehlo = smtp::read_reply_within(down_r, limit, "waiting for the reply to EHLO").await?;
            let offered: Vec<Vec<u8>> = ehlo
                .lines()
                .skip(1)
                .find_map(|l| {
                    let mut words = l.split(|&b| b == b' ');
                    let k = words.next()?;
                    k.eq_ignore_ascii_case(b"XCLIENT")
                        .then(|| words.filter(|w| !w.is_empty()).map(|w| w.to_ascii_uppercase()).collect())
                })
                .unwrap_or_default();
            if ehlo.code != 250 || !offered.iter().any(|a| a == b"ADDR") {
                return Err(HandoffError::NoXclient);
            }
            let command = xclient_command(&offered, client, local);
            smtp::send(down_w, command.as_bytes()).await.map_err(SmtpError::Downstream)?;
            let answer = smtp::read_reply_within(down_r, limit, "waiting for the reply to XCLIENT").await?;
            if answer.code != 220 {
                return Err(HandoffError::XclientRefused(text(&answer)));
            }
            // XCLIENT's 220 is the greeting as the real client's server would give it.
            Ok(answer)
        }
    }
}

/// Postfix XCLIENT_README: the attributes the server offers, values in xtext. The proxy
/// does no DNS: NAME is sent as unavailable, so Postfix's hostname checks see no name.
fn xclient_command(offered: &[Vec<u8>], client: SocketAddr, local: SocketAddr) -> String {
    let has = |a: &[u8]| offered.iter().any(|o| o == a);
    let addr = |ip: IpAddr| match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    };
    let mut c = format!("XCLIENT ADDR={}", addr(client.ip()));
    if has(b"PORT") {
        c.push_str(&format!(" PORT={}", client.port()));
    }
    if has(b"NAME") {
        c.push_str(" NAME=[UNAVAILABLE]");
    }
    if has(b"DESTADDR") {
        c.push_str(&format!(" DESTADDR={}", addr(local.ip())));
    }
    if has(b"DESTPORT") {
        c.push_str(&format!(" DESTPORT={}", local.port()));
    }
    c.push_str("\r\n");
    c
}

/// A PROXY protocol v2 header (haproxy's proxy-protocol.txt §2.2) for a TCP connection.
pub fn proxy_v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let mut h = SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21); // TCP over IPv6
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&local.port().to_be_bytes());
    h
}

/// This host's name, for the EHLO the proxy itself sends.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success
    // (and we stop at the first NUL or the end anyway).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        name
    } else {
        "localhost".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_headers() {
        let c: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let h = proxy_v2_header(c, l);
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[24..], &[0x9c, 0x40, 0, 25]);
        let c: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let h = proxy_v2_header(c, l);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[32..48], &"::ffff:127.0.0.1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }

    #[test]
    fn xclient_sends_only_offered_attributes() {
        let offered = vec![b"NAME".to_vec(), b"ADDR".to_vec(), b"PORT".to_vec()];
        let c: SocketAddr = "[::ffff:127.0.0.2]:5000".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:25".parse().unwrap();
        assert_eq!(
            xclient_command(&offered, c, l),
            "XCLIENT ADDR=127.0.0.2 PORT=5000 NAME=[UNAVAILABLE]\r\n"
        );
        let c: SocketAddr = "[2001:db8::1]:7".parse().unwrap();
        assert_eq!(xclient_command(&[b"ADDR".to_vec()], c, l), "XCLIENT ADDR=IPV6:2001:db8::1\r\n");
    }
}
