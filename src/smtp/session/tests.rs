//! Tests of the whole session (those of one stage are in its file).

use super::*;

struct Pass;
impl Policy for Pass {
    fn mail(&mut self, _: &str) -> Decision {
        Decision::Relay(None)
    }
    fn rcpt(&mut self, _: &str) -> Decision {
        Decision::Relay(None)
    }
    fn reset(&mut self) {}
}

/// A downstream that answers anything but QUIT with 221 or 421 is closing: the client
/// hears that reply, and the session ends there.
#[tokio::test]
async fn a_closing_downstream_ends_the_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    for code in ["221 2.7.0 Error: I can break rules, too. Goodbye.", "421 4.7.0 closing"] {
        let (mut down_peer, down) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            down_peer.write_all(b"220 mx\r\n").await.unwrap();
            let mut buf = [0u8; 256];
            let _ = down_peer.read(&mut buf).await.unwrap();
            down_peer.write_all(b"250 mx\r\n").await.unwrap();
            let _ = down_peer.read(&mut buf).await.unwrap();
            down_peer.write_all(format!("{code}\r\n").as_bytes()).await.unwrap();
            // Anything more the proxy sent, until it lets go.
            let mut rest = Vec::new();
            let _ = down_peer.read_to_end(&mut rest).await;
            rest
        });
        let input: &[u8] = b"EHLO x\r\nSubject: hi\r\nNOOP\r\nQUIT\r\n";
        // Short, so a session that went on would fail here rather than hang.
        let limits = Limits {
            command: Duration::from_secs(2),
            ..Limits::default()
        };
        let (dr, dw) = tokio::io::split(down);
        let mut out = Vec::new();
        let mut policy = Pass;
        let mut s = Session::new(BufReader::new(input), &mut out, BufReader::new(dr), dw, &mut policy, limits);
        let _ = s.run().await;
        drop(s);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, format!("220 mx\r\n250 mx\r\n{code}\r\n"), "{code}");
        assert!(server.await.unwrap().is_empty(), "nothing after the {code}");
    }
}
