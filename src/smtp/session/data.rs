//! The message: DATA and BDAT, refused by the policy, held for it (at most [`HOLD`]), or
//! relayed, and the downstream's final reply.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};

use super::{Policy, Session};
use crate::smtp::{self, DataEnd, DataScan, Reply, SmtpError};

/// The longest a message's first octets are held for the policy before it decides on
/// what has arrived.
const HOLD: Duration = Duration::from_secs(5);

impl<'p, CR, CW, DR, DW, P> Session<'p, CR, CW, DR, DW, P>
where
    CR: AsyncBufRead + Unpin,
    CW: AsyncWrite + Unpin,
    DR: AsyncBufRead + Unpin,
    DW: AsyncWrite + Unpin,
    P: Policy,
{
    /// DATA: refused by the policy, or relayed with the downstream's final reply.
    pub(super) async fn data(&mut self, line: &[u8]) -> Result<(), SmtpError> {
        if self.chunking {
            // RFC 3030 §3: not within a BDAT message (whose first chunks may be held here,
            // unseen by the downstream, which could not say so itself).
            return self.reply_client(&Reply::new(503, "5.5.1", "DATA within a BDAT message")).await;
        }
        if let Some(refusal) = self.policy.data() {
            return self.refuse_transaction(&refusal).await;
        }
        if let Some(limit) = self.policy.inspect() {
            return self.data_held(line, limit).await;
        }
        let reply = self.exchange(line, "waiting for the reply to DATA").await?;
        self.reply_client(&reply).await?;
        if reply.code != 354 {
            return Ok(());
        }
        if let Some(h) = self.policy.header() {
            self.down_w.write_all(&h).await.map_err(SmtpError::Downstream)?;
        }
        let idle = self.limits.data;
        match smtp::relay_data(&mut self.client_r, &mut self.down_w, idle).await? {
            DataEnd::Complete { .. } => {}
            // The terminator never went downstream: dropping the connection makes the
            // downstream discard the partial message.
            DataEnd::Incomplete | DataEnd::Paused => return Err(SmtpError::ClientClosed("during DATA")),
        }
        self.finish_message().await
    }

    /// DATA with the message's first octets held for the policy: the client gets our 354,
    /// and the downstream gets DATA only once the policy has let the message through, so a
    /// refusal never leaves a message half-sent (only a closed connection aborts DATA).
    /// The hold lasts at most [`HOLD`]: the downstream sits idle meanwhile, and its own
    /// timeout may be short under load (Postfix smtpd_timeout 10 s under stress).
    async fn data_held(&mut self, line: &[u8], limit: usize) -> Result<(), SmtpError> {
        self.reply_client(&Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")).await?;
        let idle = self.limits.data;
        let mut scan = DataScan::default();
        let mut head = Vec::with_capacity(limit.min(64 * 1024));
        // Cancel-safe: `relay` changes its state only after a read, and writes to a Vec.
        let held = tokio::time::timeout(HOLD.min(idle), scan.relay(&mut self.client_r, &mut head, idle, limit as u64)).await;
        let complete = match held {
            Ok(Ok(DataEnd::Complete { .. })) => {
                // The terminator (".\r\n" at a line start) is ours to write.
                head.truncate(head.len().saturating_sub(3));
                true
            }
            Ok(Ok(DataEnd::Paused)) | Err(_) => false,
            Ok(Ok(DataEnd::Incomplete)) => return Err(SmtpError::ClientClosed("during DATA")),
            Ok(Err(e)) => return Err(e),
        };
        let (reply, added) = match self.policy.content(&mut head, complete) {
            Err(refusal) => (refusal, None),
            Ok(added) => {
                let reply = self.exchange(line, "waiting for the reply to DATA").await?;
                if reply.code == 354 {
                    (reply, added)
                } else if reply.code >= 400 {
                    (reply, None)
                } else {
                    (
                        Reply::new(451, "4.3.0", "The next hop did not take the data, try again later"),
                        None,
                    )
                }
            }
        };
        if reply.code != 354 {
            // Refused (by the policy or the downstream) while the client is still sending:
            // the downstream is set straight first, then the rest of the message is read
            // and dropped, and the refusal is the final reply.
            self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
            self.end_transaction();
            if !complete
                && !matches!(
                    scan.relay(&mut self.client_r, &mut tokio::io::sink(), idle, u64::MAX).await?,
                    DataEnd::Complete { .. }
                )
            {
                return Err(SmtpError::ClientClosed("during DATA"));
            }
            return self.reply_client(&reply).await;
        }
        for piece in [self.policy.header(), added, Some(head)].into_iter().flatten() {
            self.down_w.write_all(&piece).await.map_err(SmtpError::Downstream)?;
        }
        if complete {
            self.down_w.write_all(b".\r\n").await.map_err(SmtpError::Downstream)?;
            self.down_w.flush().await.map_err(SmtpError::Downstream)?;
        } else if !matches!(
            scan.relay(&mut self.client_r, &mut self.down_w, idle, u64::MAX).await?,
            DataEnd::Complete { .. }
        ) {
            // No terminator went downstream: closing makes it discard the partial message.
            return Err(SmtpError::ClientClosed("during DATA"));
        }
        self.finish_message().await
    }

    /// One BDAT chunk (RFC 3030): relayed as counted octets; the policy's header goes
    /// first as a chunk of its own.
    pub(super) async fn bdat(&mut self, line: &[u8], size: u64, last: bool) -> Result<(), SmtpError> {
        if !self.chunking_offered {
            // A server without CHUNKING would read the chunk as commands, unchecked by us
            // (command smuggling): the chunk goes nowhere.
            if !smtp::discard_exact(&mut self.client_r, size, self.limits.data).await? {
                return Err(SmtpError::ClientClosed("during BDAT"));
            }
            return self
                .reply_client(&Reply::new(502, "5.5.1", "BDAT not available (no CHUNKING)"))
                .await;
        }
        // The policy decides once per message, at its first chunk.
        let refusal = if self.chunking { None } else { self.policy.data() };
        if let Some(refusal) = refusal {
            // Consume the chunk so the session stays in step.
            if !smtp::discard_exact(&mut self.client_r, size, self.limits.data).await? {
                return Err(SmtpError::ClientClosed("during BDAT"));
            }
            return self.refuse_transaction(&refusal).await;
        }
        if !self.chunking {
            self.chunking = true;
            if let Some(limit) = self.policy.inspect() {
                self.held = Some((Vec::with_capacity(limit.min(64 * 1024)), limit, std::time::Instant::now()));
            } else if let Some(h) = self.policy.header() {
                let mut chunk = format!("BDAT {}\r\n", h.len()).into_bytes();
                chunk.extend_from_slice(&h);
                let reply = self.exchange(&chunk, "waiting for the reply to BDAT").await?;
                if !reply.is_positive() {
                    if !smtp::discard_exact(&mut self.client_r, size, self.limits.data).await? {
                        return Err(SmtpError::ClientClosed("during BDAT"));
                    }
                    self.end_transaction();
                    return self.reply_client(&reply).await;
                }
            }
        }
        if let Some((head, limit, since)) = self.held.take() {
            return self.bdat_held(size, last, head, limit, since).await;
        }
        self.relay_chunk(line, size, last).await
    }

    /// Send a BDAT command and relay its `size` octets from the client; the downstream's
    /// reply is the client's.
    async fn relay_chunk(&mut self, line: &[u8], size: u64, last: bool) -> Result<(), SmtpError> {
        smtp::send(&mut self.down_w, line).await.map_err(SmtpError::Downstream)?;
        if !smtp::relay_exact(&mut self.client_r, &mut self.down_w, size, self.limits.data).await? {
            return Err(SmtpError::ClientClosed("during BDAT"));
        }
        if last {
            return self.finish_message().await;
        }
        let reply = self.down_reply("waiting for the reply to BDAT").await?;
        if !reply.is_positive() {
            self.end_transaction();
        }
        self.reply_client(&reply).await
    }

    /// A BDAT chunk while the message's first octets are held for the policy: chunks are
    /// gathered (each acknowledged by us; only the last one's reply accepts a message) until
    /// the policy has what it asked for, then go downstream as one chunk behind its header.
    async fn bdat_held(
        &mut self,
        size: u64,
        last: bool,
        mut head: Vec<u8>,
        limit: usize,
        since: std::time::Instant,
    ) -> Result<(), SmtpError> {
        let idle = self.limits.data;
        let take = size.min(limit.saturating_sub(head.len()) as u64);
        if !smtp::relay_exact(&mut self.client_r, &mut head, take, idle).await? {
            return Err(SmtpError::ClientClosed("during BDAT"));
        }
        let rest = size - take;
        let complete = last && rest == 0;
        if !last && rest == 0 && head.len() < limit && since.elapsed() < HOLD {
            self.held = Some((head, limit, since));
            return self
                .reply_client(&Reply::new(250, "2.0.0", &format!("{size} octets received")))
                .await;
        }
        let added = match self.policy.content(&mut head, complete) {
            Ok(h) => h,
            Err(refusal) => {
                // The downstream first (it has seen no chunk), then the rest of the chunk.
                self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
                self.end_transaction();
                if !smtp::discard_exact(&mut self.client_r, rest, idle).await? {
                    return Err(SmtpError::ClientClosed("during BDAT"));
                }
                return self.reply_client(&refusal).await;
            }
        };
        let pieces: Vec<Vec<u8>> = [self.policy.header(), added, Some(head)].into_iter().flatten().collect();
        let len: usize = pieces.iter().map(Vec::len).sum();
        let cmd = format!("BDAT {len}{}\r\n", if complete { " LAST" } else { "" });
        self.down_w.write_all(cmd.as_bytes()).await.map_err(SmtpError::Downstream)?;
        for piece in &pieces {
            self.down_w.write_all(piece).await.map_err(SmtpError::Downstream)?;
        }
        self.down_w.flush().await.map_err(SmtpError::Downstream)?;
        if complete {
            return self.finish_message().await;
        }
        let reply = self.down_reply("waiting for the reply to BDAT").await?;
        if !reply.is_positive() || rest == 0 {
            if !reply.is_positive() {
                if !smtp::discard_exact(&mut self.client_r, rest, idle).await? {
                    return Err(SmtpError::ClientClosed("during BDAT"));
                }
                self.end_transaction();
            }
            return self.reply_client(&reply).await;
        }
        let line = format!("BDAT {rest}{}\r\n", if last { " LAST" } else { "" });
        self.relay_chunk(line.as_bytes(), rest, last).await
    }

    /// After the last octet of a message: the downstream's final reply is the client's.
    async fn finish_message(&mut self) -> Result<(), SmtpError> {
        let reply = smtp::read_reply_within(&mut self.down_r, self.limits.data, "waiting for the reply to the end of data").await?;
        self.down_closing |= matches!(reply.code, 221 | 421);
        self.policy.finished(&reply);
        self.end_transaction();
        self.reply_client(&reply).await
    }

    /// Refuse a transaction at DATA/BDAT; the downstream gets RSET so its state matches.
    async fn refuse_transaction(&mut self, refusal: &Reply) -> Result<(), SmtpError> {
        self.exchange(b"RSET\r\n", "waiting for the reply to RSET").await?;
        self.end_transaction();
        self.reply_client(refusal).await
    }
}
