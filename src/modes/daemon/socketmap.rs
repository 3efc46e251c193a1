//! socketmap_table(5): netstring framing, and the `sign` and `strip` maps for
//! `sender_canonical_maps` and `recipient_canonical_maps`.

use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::{Daemon, ProtoError};
use crate::core::signer::Outcome;
use crate::core::tag::{self, Verdict};
use crate::server::Server;

/// Read one netstring's payload; None at a clean end of the connection.
pub(super) async fn read_netstring<R: AsyncBufReadExt + Unpin>(r: &mut R, limit: usize) -> Result<Option<Vec<u8>>, ProtoError> {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return if digits == 0 { Ok(None) } else { Err(ProtoError::Truncated) };
        }
        match b[0] {
            d @ b'0'..=b'9' => {
                digits += 1;
                len = len * 10 + (d - b'0') as usize;
                if len > limit {
                    return Err(ProtoError::TooLong(limit));
                }
            }
            b':' if digits > 0 => break,
            _ => return Err(ProtoError::Netstring("expected digits, then ':'")),
        }
    }
    let mut payload = vec![0u8; len + 1];
    r.read_exact(&mut payload).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
        _ => ProtoError::Io(e),
    })?;
    if payload.pop() != Some(b',') {
        return Err(ProtoError::Netstring("no ',' after the payload"));
    }
    Ok(Some(payload))
}

pub(super) fn netstring(payload: &str) -> Vec<u8> {
    format!("{}:{payload},", payload.len()).into_bytes()
}

impl Server<Daemon> {
    /// A socketmap lookup: the reply, without its netstring framing.
    pub fn lookup(&self, request: &[u8]) -> String {
        let Ok(text) = std::str::from_utf8(request) else {
            return "NOTFOUND ".into();
        };
        let (map, key) = text.split_once(' ').unwrap_or((text, ""));
        match self.map(map, key) {
            Some(Some(value)) => format!("OK {value}"),
            Some(None) => "NOTFOUND ".into(),
            // A map name Postfix should never ask for is a configuration mistake.
            None => format!(
                "PERM unknown map {:?}: batv serves sign and strip",
                &map[..crate::bounce::floor(map, 64)]
            ),
        }
    }

    /// `sign` and `strip`: Some(value) to rewrite, None to leave alone; the outer None for
    /// a map we do not serve.
    pub(super) fn map(&self, map: &str, key: &str) -> Option<Option<String>> {
        let state = self.state();
        let c = &self.service.counters;
        let today = tag::unix_day(self.now());
        match map {
            "sign" => {
                // The null sender, partial keys (`user`, `@domain`), foreign domains,
                // tagged addresses (cleanup asks again with our answer) are left alone.
                let signed = match state.signer.as_ref().map(|s| s.sign(key, today)) {
                    Some(Outcome::Signed(s)) => Some(s),
                    _ => None,
                };
                let counter = if signed.is_some() { &c.sign_ok } else { &c.sign_notfound };
                counter.inc();
                Some(signed)
            }
            "strip" => {
                // Only an authentic tag (valid or expired) comes off: a map answer makes
                // smtpd count the address as known, so a made-up tag must not get one.
                let stripped = match tag::verify(key, today, state.settings.rules.schemes, &state.keys) {
                    Ok(Verdict::Valid(c) | Verdict::Expired(c)) => Some(c.original.into_owned()),
                    _ => None,
                };
                let counter = if stripped.is_some() { &c.strip_ok } else { &c.strip_notfound };
                counter.inc();
                Some(stripped)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn netstrings() {
        let mut ok: &[u8] = b"5:hello,0:,";
        assert_eq!(read_netstring(&mut ok, 100).await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(read_netstring(&mut ok, 100).await.unwrap().as_deref(), Some(&b""[..]));
        assert!(read_netstring(&mut ok, 100).await.unwrap().is_none());
        for (bad, why) in [
            (&b"5:hello;"[..], "no ','"),
            (b"x:", "digits"),
            (b":hello,", "digits"),
            (b"5hello,", "digits"),
            (b"5:hel", "closed"),
            (b"12", "closed"),
            (b"999999999999:", "longer"),
        ] {
            let mut r = bad;
            let e = read_netstring(&mut r, 100).await.unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert_eq!(netstring("OK a@b"), b"6:OK a@b,");
    }
}
