//! The tests' raw HTTP/1.1 client over `std::net::TcpStream`: tests send exactly the bytes they mean
//! (malformed ones, pipelined ones, a body cut short) and read exactly what came back, which no
//! client library does, so it stays hand-written. The CLI's own calls go through
//! [`janus::client`] (ureq); both return its [`Reply`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

pub use janus::client::Reply;

/// Sends a request with `Connection: close` and reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Reply> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw, Duration::from_secs(30))
}

/// `GET target` with optional headers.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    request(addr, "GET", target, headers, b"")
}

/// Sends raw bytes and parses the first response. Write errors are ignored when a response arrives
/// anyway (a server may answer 413 and close before the client has sent its whole body).
pub fn send_raw(addr: SocketAddr, raw: &[u8], timeout: Duration) -> anyhow::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let write_result = s.write_all(raw);
    let mut buf = Vec::new();
    let read_result = read_response(&mut s, &mut buf, raw.starts_with(b"HEAD "));
    match (read_result, write_result) {
        (Ok(r), _) => Ok(r),
        (Err(e), Err(w)) => Err(e.context(format!("and the request write failed: {w}"))),
        (Err(e), Ok(())) => Err(e),
    }
}

/// Reads one response from a stream (Content-Length, chunked, or to EOF); the answer to a HEAD
/// request has no body whatever its headers say.
pub fn read_response(
    s: &mut impl Read,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> anyhow::Result<Reply> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(s, buf)? {
            bail!(
                "connection closed before a complete response head ({} bytes)",
                buf.len()
            );
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = buf.split_off(head_end);
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().context("bad content-length")?;
        while rest.len() < len {
            if !fill(s, &mut rest)? {
                bail!("body cut off at {} of {len} bytes", rest.len());
            }
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(s, rest)?
    } else {
        while fill(s, &mut rest)? {}
        rest
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(s: &mut impl Read, mut buf: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf, b"\r\n") {
                break i;
            }
            if !fill(s, &mut buf)? {
                bail!("chunked body cut off");
            }
        };
        let size_str = std::str::from_utf8(&buf[..line_end])?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        buf.drain(..line_end + 2);
        if size == 0 {
            return Ok(out);
        }
        while buf.len() < size + 2 {
            if !fill(s, &mut buf)? {
                bail!("chunk cut off");
            }
        }
        out.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn fill(s: &mut impl Read, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    let mut tmp = [0u8; 16384];
    match s.read(&mut tmp) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(false),
        Err(e) => Err(e).context("read failed"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
