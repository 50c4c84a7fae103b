//! The native driver's HTTP: one request per connection over the TCP and TLS stack the WebSocket already uses
//! (tokio, rustls with the same trust roots), HTTP/1.1 parsed with `httparse` (already linked by tungstenite).
//! It carries the few calls an SDK makes to the server's HTTP API ([`crate::protocol::api`]): settings, the
//! fetch of a notification too large for its push, acks from a push handler — small JSON requests and answers,
//! not worth a general HTTP client in every app (hyper with reqwest would add several hundred kilobytes to the
//! mobile library; this adds a few).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::api::{ApiError, ApiRequest};

/// The longest answer read.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long one request may take, connection included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP answer: status and body text.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// Where a base URL points.
struct Target<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    prefix: &'a str,
}

fn target(base: &str) -> Result<Target<'_>, ApiError> {
    let bad =
        || ApiError::Unavailable { status: None, message: format!("not an http(s) URL: {base}"), retry_after_ms: None };
    let (tls, rest) = match base.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, base.strip_prefix("http://").ok_or_else(bad)?),
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, p.parse::<u16>().map_err(|_| bad())?),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Target { tls, host, port, prefix })
}

fn unavailable(message: String) -> ApiError {
    ApiError::Unavailable { status: None, message, retry_after_ms: None }
}

/// Sends `request` to the server at `base` (`http://host:port[/prefix]`) with `Authorization: Bearer <token>`.
pub(crate) async fn send(
    base: &str,
    request: &ApiRequest,
    token: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Response, ApiError> {
    tokio::time::timeout(TIMEOUT, send_now(base, request, token, tls))
        .await
        .unwrap_or_else(|_| Err(unavailable(format!("{} {} timed out", request.method, request.path))))
}

async fn send_now(
    base: &str,
    request: &ApiRequest,
    token: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Response, ApiError> {
    let t = target(base)?;
    let tcp = TcpStream::connect((t.host, t.port))
        .await
        .map_err(|e| unavailable(format!("cannot reach {}:{}: {e}", t.host, t.port)))?;
    let _ = tcp.set_nodelay(true);
    let head = head(&t, request, token);
    if t.tls {
        let name = rustls::pki_types::ServerName::try_from(t.host.to_owned())
            .map_err(|e| unavailable(format!("{}: {e}", t.host)))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| unavailable(format!("TLS with {}: {e}", t.host)))?;
        exchange(stream, &head, request.body.as_deref()).await
    } else {
        exchange(tcp, &head, request.body.as_deref()).await
    }
}

fn head(t: &Target<'_>, request: &ApiRequest, token: &str) -> String {
    let host = if (t.tls && t.port == 443) || (!t.tls && t.port == 80) {
        t.host.to_owned()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let mut head = format!(
        "{} {}{} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\
         User-Agent: tidings-rust/{}\r\nConnection: close\r\n",
        request.method,
        t.prefix,
        request.path,
        env!("CARGO_PKG_VERSION"),
    );
    match &request.body {
        Some(body) => {
            head.push_str("Content-Type: application/json\r\n");
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        None if request.method != "GET" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    head
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &str,
    body: Option<&str>,
) -> Result<Response, ApiError> {
    let io = |e: std::io::Error| unavailable(format!("the request failed: {e}"));
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    if let Some(body) = body {
        stream.write_all(body.as_bytes()).await.map_err(io)?;
    }
    stream.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RESPONSE_BYTES {
                    return Err(unavailable("the answer is larger than 1 MiB".into()));
                }
                if let Some(done) = complete(&raw, false)? {
                    return Ok(done);
                }
            }
            // A TLS peer that closes without close_notify: what arrived is judged below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
    }
    complete(&raw, true)?.ok_or_else(|| unavailable("the connection closed before the answer was complete".into()))
}

/// The response in `raw`, once it is all there (`eof`: the connection ended, so a body without a length is all
/// that arrived).
fn complete(raw: &[u8], eof: bool) -> Result<Option<Response>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let start = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(unavailable(format!("not an HTTP answer: {e}"))),
    };
    let status = parsed.code.unwrap_or(0);
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let rest = &raw[start..];
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match dechunk(rest) {
            Some(body) => body,
            None => return Ok(None),
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        if rest.len() < len {
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        // Until the connection closes.
        return Ok(None);
    };
    let body = String::from_utf8(body).map_err(|_| ApiError::Malformed("the answer is not UTF-8".into()))?;
    Ok(Some(Response { status, body }))
}

/// A chunked body, once its last chunk arrived.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if rest.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_split() {
        let t = target("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.tls, t.host, t.port, t.prefix), (false, "127.0.0.1", 8080, ""));
        let t = target("https://push.example.com/tidings/").unwrap();
        assert_eq!((t.tls, t.host, t.port, t.prefix), (true, "push.example.com", 443, "/tidings"));
        let t = target("http://[::1]:9/x").unwrap();
        assert_eq!((t.host, t.port, t.prefix), ("::1", 9, "/x"));
        assert!(target("ftp://x").is_err());
    }

    #[test]
    fn answers_are_read_by_length_or_by_chunks() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        let r = complete(raw, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}", false).unwrap().is_none(), "partial");
        let unsized_body = b"HTTP/1.0 200 OK\r\n\r\n{}";
        assert!(complete(unsized_body, false).unwrap().is_none());
        assert_eq!(complete(unsized_body, true).unwrap().unwrap().body, "{}", "until the end");
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        let r = complete(chunked, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, r#"{"a":1}"#));
    }
}
