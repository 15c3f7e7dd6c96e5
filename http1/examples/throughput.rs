//! Throughput figures for the codec (run via `http1/bench.sh`; not a test: numbers, no asserts).

use std::hint::black_box;
use std::time::Instant;

use janus_http1::{ClientRequest, Event, Limits, Method, Response, ResponseParser, ServerConn};

/// Feeds `wire` in `segment`-byte pieces, answering every request; returns requests seen.
fn serve(wire: &[u8], segment: usize) -> usize {
    let mut conn = ServerConn::new(Limits::DEFAULT);
    let resp = Response::new(200).with_body("ok");
    let mut seen = 0;
    for mut piece in wire.chunks(segment) {
        while !piece.is_empty() {
            let took = conn.feed(piece);
            piece = &piece[took..];
            while let Some(ev) = conn.poll(0) {
                if let Event::Request(r) = ev {
                    black_box(&r);
                    seen += 1;
                    conn.respond(&resp).expect("respond");
                } else {
                    panic!("unexpected event {ev:?}");
                }
            }
            let n = conn.output().len();
            conn.consume_output(n);
        }
    }
    seen
}

fn report(name: &str, items: usize, bytes: usize, secs: f64) {
    println!(
        "{name:<44} {:>12.0} items/s {:>9.1} MiB/s  ({items} items, {:.3} s)",
        items as f64 / secs,
        bytes as f64 / secs / (1024.0 * 1024.0),
        secs
    );
}

fn bench_serve(name: &str, one: &[u8], count: usize, segment: usize) {
    let wire: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * count)
        .collect();
    let start = Instant::now();
    let seen = serve(&wire, segment);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(seen, count, "{name}: parsed {seen} of {count}");
    report(name, count, wire.len(), secs);
}

fn main() {
    let get = b"GET /kv/key-000042?fields=a,b HTTP/1.1\r\nHost: janus\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\r\n";
    bench_serve(
        "server: small GET, pipelined, 1460 B segments",
        get,
        200_000,
        1460,
    );
    bench_serve(
        "server: small GET, one request per feed",
        get,
        200_000,
        get.len(),
    );

    let mut post = format!(
        "POST /kv/k HTTP/1.1\r\nHost: janus\r\nContent-Length: {}\r\n\r\n",
        64 * 1024
    )
    .into_bytes();
    post.extend(std::iter::repeat_n(b'v', 64 * 1024));
    bench_serve(
        "server: POST 64 KiB Content-Length body",
        &post,
        2_000,
        1460,
    );

    let mut chunked =
        b"POST /kv/k HTTP/1.1\r\nHost: janus\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..64 {
        chunked.extend(b"400;ext=1\r\n");
        chunked.extend(std::iter::repeat_n(b'c', 1024));
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\nX-Trailer: t\r\n\r\n");
    bench_serve(
        "server: POST 64 KiB chunked (1 KiB chunks)",
        &chunked,
        2_000,
        1460,
    );

    let mut big_head = b"GET / HTTP/1.1\r\nHost: janus\r\n".to_vec();
    while big_head.len() < 8000 {
        big_head.extend(
            format!(
                "X-Header-{:03}: {}\r\n",
                big_head.len() % 1000,
                "v".repeat(120)
            )
            .into_bytes(),
        );
    }
    big_head.extend(b"\r\n");
    bench_serve(
        "server: ~8 KiB head fed byte by byte (worst)",
        &big_head,
        50,
        1,
    );
    bench_serve(
        "server: ~8 KiB head fed in 1460 B segments",
        &big_head,
        5_000,
        1460,
    );

    // Response encoding.
    let resp = Response::new(200)
        .with_header("Content-Type", "application/json")
        .with_body(vec![b'x'; 512]);
    let ctx = janus_http1::ResponseContext {
        version: janus_http1::Version::Http11,
        is_head: false,
        keep_alive: true,
    };
    let n = 1_000_000;
    let mut out = Vec::with_capacity(1024);
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..n {
        out.clear();
        resp.encode(&ctx, &mut out).expect("encode");
        bytes += black_box(&out).len();
    }
    report(
        "encode: 200 + 512 B body",
        n,
        bytes,
        start.elapsed().as_secs_f64(),
    );

    // Client: encode a request, parse a chunked response.
    let mut wire = Vec::new();
    let raw =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n"
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'r', 256))
            .chain(b"\r\n0\r\n\r\n".iter().copied())
            .collect::<Vec<u8>>();
    let n = 300_000;
    let start = Instant::now();
    for i in 0..n {
        wire.clear();
        ClientRequest::new(Method::Get, "upstream:8080", "/kv/a")
            .encode(&mut wire)
            .expect("encode");
        let mut p = ResponseParser::new(Limits::DEFAULT, &Method::Get);
        p.feed(&raw);
        let r = p.poll(i as u64).expect("complete").expect("valid");
        black_box(r);
    }
    report(
        "client: encode GET + parse chunked response",
        n,
        raw.len() * n,
        start.elapsed().as_secs_f64(),
    );
}
