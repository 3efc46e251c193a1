//! Counters and their exposition (prometheus-client): a registry each mode fills with its
//! counters, the text SIGUSR1 logs, and a loopback `/metrics` endpoint.
//!
//! A counter handle is an `Arc` of one atomic: the hot path increments it with no lock
//! and no label lookup. Label sets are made once, at start.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrapes served at once; a connection over it is closed unanswered.
const MAX_SCRAPES: usize = 8;

/// One label, as `[(name, value)]`.
pub type Label = [(&'static str, &'static str); 1];
/// Two labels.
pub type Labels2 = [(&'static str, &'static str); 2];

/// The registry a mode's counters are made in.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A counter without labels; `name` without `_total` (the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.registry.register(name, help, c.clone());
        c
    }

    /// A counter family with one label, and a counter for each of `values` (shown even
    /// at zero).
    pub fn by<const N: usize>(&mut self, name: &str, help: &str, label: &'static str, values: [&'static str; N]) -> [Counter; N] {
        let f = Family::<Label, Counter>::default();
        self.registry.register(name, help, f.clone());
        values.map(|v| f.get_or_create(&[(label, v)]).clone())
    }

    /// A counter family with two labels, a counter for each pair.
    pub fn by2<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        labels: (&'static str, &'static str),
        values: [(&'static str, &'static str); N],
    ) -> [Counter; N] {
        let f = Family::<Labels2, Counter>::default();
        self.registry.register(name, help, f.clone());
        values.map(|(a, b)| f.get_or_create(&[(labels.0, a), (labels.1, b)]).clone())
    }

    /// A counter family whose label sets appear when first counted (key ids, say).
    pub fn family(&mut self, name: &str, help: &str) -> Family<Label, Counter> {
        let f = Family::<Label, Counter>::default();
        self.registry.register(name, help, f.clone());
        f
    }

    /// The OpenMetrics text of every counter.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Answer each connection with `render()` as OpenMetrics text, HTTP/1.0 style: every
/// path gets the metrics (the listener is loopback only).
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + Clone + 'static,
{
    // A few scrapes at once are plenty; more would only spend descriptors the mail
    // listeners need.
    let limit = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Read the request head (ignored), bounded in size and time.
            let mut buf = [0u8; 4096];
            let mut seen = 0;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while seen < buf.len() {
                    match sock.read(&mut buf[seen..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen += n,
                    }
                    if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            let body = render();
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_openmetrics() {
        let mut m = Metrics::default();
        let c = m.counter("batv_connections", "Client connections accepted.");
        let [ok, bad] = m.by("batv_rcpt", "Recipients.", "verdict", ["bounce-ok", "backscatter"]);
        let [s] = m.by2("batv_lookups", "Lookups.", ("map", "result"), [("sign", "ok")]);
        let keys = m.family("batv_tags", "Tags by key.");
        c.inc();
        bad.inc();
        bad.inc();
        s.inc();
        keys.get_or_create(&[("key", "3")]).inc();
        let _ = ok;
        let text = m.render();
        for line in [
            "# TYPE batv_connections counter",
            "batv_connections_total 1\n",
            "batv_rcpt_total{verdict=\"bounce-ok\"} 0\n",
            "batv_rcpt_total{verdict=\"backscatter\"} 2\n",
            "batv_lookups_total{map=\"sign\",result=\"ok\"} 1\n",
            "batv_tags_total{key=\"3\"} 1\n",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("key=\"0\""), "unseen keys are not shown:\n{text}");
    }

    #[tokio::test]
    async fn the_endpoint_answers_any_path() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, || "x_total 1\n# EOF\n".to_string()));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /anything HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nx_total 1\n# EOF\n"), "{out}");
    }
}
