//! `mode = "http"` against real clients: hyper's HTTP/1.1 and h2 clients over rustls, curl `--http2`, raw TLS
//! for what a client library will not send (slow heads, upgrades). Loopback only: each test starts its own
//! upstream (`portcullis_tests::http_upstream`) and daemon on port 0.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_tests::daemon::{Daemon, DaemonOptions, TempDir, metric_value};
use portcullis_tests::http_upstream::HttpUpstream;
use portcullis_tests::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

const NAME: &str = "ecdsa.test";

/// A test's PKI, upstream and daemon in http mode; `more` is appended to the config.
struct Bed {
    _dir: TempDir,
    pki: Pki,
    upstream: HttpUpstream,
    daemon: Daemon,
}

impl Bed {
    fn start(more: &str) -> Bed {
        Self::start_with(more, None)
    }

    fn start_with(more: &str, upstream_override: Option<SocketAddr>) -> Bed {
        Self::start_mode("http", more, upstream_override)
    }

    fn start_mode(mode: &str, more: &str, upstream_override: Option<SocketAddr>) -> Bed {
        let dir = TempDir::new("http").expect("tempdir");
        let pki = Pki::generate(dir.path()).expect("pki");
        let upstream = HttpUpstream::start().expect("upstream");
        let backend = upstream_override.unwrap_or(upstream.addr);
        let daemon = Daemon::start(DaemonOptions {
            config_toml: Some(format!("{}\n{more}", pki.tls_section(""))),
            args: vec![
                "--mode".into(),
                mode.into(),
                "--upstream".into(),
                backend.to_string(),
                "--workers".into(),
                "1".into(),
            ],
            ..Default::default()
        })
        .expect("daemon starts");
        Bed {
            _dir: dir,
            pki,
            upstream,
            daemon,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.daemon.addr()
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&self.pki.ca).expect("read ca");
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.expect("ca pem")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    async fn tls(&self, alpn: &[&[u8]]) -> TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr())
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from(NAME).expect("name");
        tokio_rustls::TlsConnector::from(self.client_config(alpn))
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }

    /// A hyper HTTP/1.1 client connection (one TLS connection for every request sent on it).
    async fn h1(&self) -> hyper::client::conn::http1::SendRequest<TestBody> {
        let io = TokioIo::new(self.tls(&[b"http/1.1"]).await);
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        sender
    }

    /// A hyper h2 client connection.
    async fn h2(&self) -> hyper::client::conn::http2::SendRequest<TestBody> {
        let tls = self.tls(&[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        sender
    }

    fn metrics(&self) -> String {
        self.daemon.metrics_text().expect("metrics")
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn empty() -> TestBody {
    Empty::new().boxed()
}

fn get(uri: &str) -> Request<TestBody> {
    Request::get(uri)
        .header("host", NAME)
        .body(empty())
        .expect("request")
}

async fn text(resp: Response<hyper::body::Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `portcullis_http_requests_total` of HTTP/1.1 GETs answered 2xx on fully handshaken connections.
fn h1_gets_ok(metrics: &str) -> f64 {
    metric_value(
        metrics,
        "portcullis_http_requests_total",
        &[
            ("protocol", "h1"),
            ("method", "GET"),
            ("code", "2xx"),
            ("handshake", "full"),
        ],
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Reads from `tls` until `needle` appears or `limit` passes; returns what was read.
async fn read_until(
    tls: &mut TlsStream<tokio::net::TcpStream>,
    needle: &str,
    limit: Duration,
) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn h1_keep_alive_serves_several_requests_on_one_connection_over_a_pooled_upstream() {
    let bed = Bed::start("");
    rt().block_on(async {
        let mut sender = bed.h1().await;
        for i in 0..5 {
            sender.ready().await.expect("ready");
            let resp = sender
                .send_request(get(&format!("/n{i}")))
                .await
                .expect("response");
            let (status, body) = text(resp).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, format!("ok /n{i}\n"));
        }
    });
    let m = bed.metrics();
    let accepted = metric_value(&m, "portcullis_connections_accepted_total", &[]);
    assert_eq!(accepted, 1.0, "five requests on one client connection");
    let requests = h1_gets_ok(&m);
    assert_eq!(requests, 5.0);
    // The worker's pool kept the upstream connection: one connect, four reuses.
    assert_eq!(bed.upstream.connections(), 1, "upstream connections");
    assert_eq!(
        metric_value(
            &m,
            "portcullis_http_upstream_requests_total",
            &[("connection", "reused")]
        ),
        4.0
    );
}

#[test]
fn h2_from_hyper_and_curl_with_chunked_bodies_both_ways() {
    let bed = Bed::start("");
    rt().block_on(async {
        let mut sender = bed.h2().await;
        // Concurrent streams on one connection.
        let mut answers = Vec::new();
        for i in 0..4 {
            let req = Request::get(format!("https://{NAME}/s{i}"))
                .body(empty())
                .expect("request");
            answers.push(sender.send_request(req));
        }
        for (i, a) in answers.into_iter().enumerate() {
            let (status, body) = text(a.await.expect("h2 response")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, format!("ok /s{i}\n"));
        }
        // A streamed request body (no length: h2 DATA frames, chunked to the upstream), echoed back streamed.
        let (mut tx, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
        let body = body.boxed();
        let req = Request::post(format!("https://{NAME}/echo"))
            .body(body)
            .expect("request");
        let pending = tokio::spawn(sender.send_request(req));
        let mut sent = String::new();
        for i in 0..20 {
            let chunk = format!("chunk {i} {}\n", "x".repeat(1000));
            sent.push_str(&chunk);
            tx.send_data(Bytes::from(chunk)).await.expect("send");
        }
        drop(tx);
        let resp = pending.await.expect("join").expect("echo response");
        assert!(
            resp.headers().get("content-length").is_none(),
            "the echo streams, its length is unknown"
        );
        let (status, body) = text(resp).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, sent);
    });
    // 4 MiB both ways, far beyond the h2 windows and rustls' buffer: flow control and backpressure, no loss.
    rt().block_on(async {
        let mut sender = bed.h2().await;
        let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let req = Request::post(format!("https://{NAME}/echo"))
            .body(
                Full::new(Bytes::from(big.clone()))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .expect("request");
        let resp = sender.send_request(req).await.expect("echo response");
        let back = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(
            back.len() == big.len() && back[..] == big[..],
            "4 MiB echo differs ({} bytes back)",
            back.len()
        );
    });
    // The same over HTTP/1.1 with chunked transfer coding from a real client.
    let data = "y".repeat(100_000);
    let out = curl(
        &bed,
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            "-o",
            "-",
        ],
        "/echo",
    );
    assert_eq!(out, data);
    // curl negotiates h2 by ALPN.
    let version = curl(
        &bed,
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}"],
        "/",
    );
    assert_eq!(version, "2");
    let m = bed.metrics();
    assert_eq!(
        metric_value(
            &m,
            "portcullis_http_requests_total",
            &[("protocol", "h2"), ("method", "GET")]
        ),
        5.0
    );
    assert_eq!(
        metric_value(
            &m,
            "portcullis_http_requests_total",
            &[("protocol", "h2"), ("method", "POST")]
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            "portcullis_http_requests_total",
            &[("protocol", "h1"), ("method", "POST")]
        ),
        1.0
    );
}

fn curl(bed: &Bed, args: &[&str], path: &str) -> String {
    let addr = bed.addr();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&bed.pki.ca)
        .arg("--resolve")
        .arg(format!("{NAME}:{}:{}", addr.port(), addr.ip()))
        .args(args)
        .arg(format!("https://{NAME}:{}{path}", addr.port()))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn incoming_forwarded_headers_are_replaced_and_hop_by_hop_removed() {
    let bed = Bed::start("");
    let body = rt().block_on(async {
        let mut sender = bed.h1().await;
        let req = Request::get("/headers")
            .header("host", NAME)
            .header("forwarded", "for=203.0.113.66")
            .header("x-forwarded-for", "203.0.113.66")
            .header("x-forwarded-proto", "http")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .header("keep-alive", "timeout=5")
            .body(empty())
            .expect("request");
        text(sender.send_request(req).await.expect("response"))
            .await
            .1
    });
    let port = bed.addr().port();
    assert!(
        body.contains(&format!(
            "forwarded: for=127.0.0.1;proto=https;host=\"{NAME}\"\n"
        )) || body.contains(&format!(
            "forwarded: for=127.0.0.1;proto=https;host={NAME}\n"
        )),
        "{body}"
    );
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    assert!(
        !body.contains("203.0.113.66"),
        "client's Forwarded trusted:\n{body}"
    );
    assert!(
        !body.contains("x-hop"),
        "Connection-named field forwarded:\n{body}"
    );
    assert!(
        !body.contains("keep-alive: timeout"),
        "Keep-Alive forwarded:\n{body}"
    );
    let _ = port;

    // trusted_forwarded appends instead.
    let trusted = Bed::start("[http]\ntrusted_forwarded = true\n");
    let body = rt().block_on(async {
        let mut sender = trusted.h1().await;
        let req = Request::get("/headers")
            .header("host", NAME)
            .header("x-forwarded-for", "203.0.113.66")
            .body(empty())
            .expect("request");
        text(sender.send_request(req).await.expect("response"))
            .await
            .1
    });
    assert!(
        body.contains("x-forwarded-for: 203.0.113.66, 127.0.0.1\n"),
        "{body}"
    );
}

#[test]
fn upgrade_is_relayed_as_bytes_after_101() {
    let bed = Bed::start("");
    rt().block_on(async {
        let mut tls = bed.tls(&[b"http/1.1"]).await;
        tls.write_all(
            format!("GET /upgrade HTTP/1.1\r\nHost: {NAME}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let head = read_until(&mut tls, "\r\n\r\n", Duration::from_secs(10)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.to_ascii_lowercase().contains("upgrade: echo"), "{head}");
        for word in ["ping", "pong", "bytes after the upgrade"] {
            tls.write_all(word.as_bytes()).await.expect("write");
            let echoed = read_until(&mut tls, word, Duration::from_secs(10)).await;
            assert_eq!(echoed, word);
        }
    });
}

#[test]
fn connect_is_refused_with_405_and_never_reaches_the_upstream() {
    let bed = Bed::start("");
    rt().block_on(async {
        let mut tls = bed.tls(&[b"http/1.1"]).await;
        tls.write_all(
            b"CONNECT upstream.example:443 HTTP/1.1\r\nHost: upstream.example:443\r\n\r\n",
        )
        .await
        .expect("write");
        let head = read_until(&mut tls, "\r\n\r\n", Duration::from_secs(10)).await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nallow: ") && !lower.contains("connect,"),
            "{head}"
        );
        // The connection still serves an ordinary request after the refusal.
        tls.write_all(format!("GET /after HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let next = read_until(&mut tls, "\r\n\r\n", Duration::from_secs(10)).await;
        assert!(next.contains("HTTP/1.1 200"), "{next}");
        let seen = bed.upstream.requests();
        assert!(seen.iter().any(|r| r.starts_with("GET /after")), "{seen:?}");
        assert!(!seen.iter().any(|r| r.starts_with("CONNECT")), "{seen:?}");
    });
}

#[test]
fn the_host_a_request_names_is_checked_and_forwarded() {
    let bed = Bed::start("");
    let upstream = bed.upstream.addr;
    // One connection per request, read to its close.
    let exchange = |request: &'static str| {
        rt().block_on(async {
            let mut tls = bed.tls(&[b"http/1.1"]).await;
            tls.write_all(request.as_bytes()).await.expect("write");
            read_until(&mut tls, "\u{0}never", Duration::from_secs(10)).await
        })
    };
    // RFC 9112 §3.2: HTTP/1.1 without Host, two Host fields, a Host that is not host[:port]: 400, and the
    // upstream never sees them.
    for (request, cause) in [
        (
            "GET /headers HTTP/1.1\r\nConnection: close\r\n\r\n",
            "missing_host",
        ),
        (
            "GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "multiple_host",
        ),
        (
            "GET /headers HTTP/1.1\r\nHost: user@a.example\r\nConnection: close\r\n\r\n",
            "invalid_host",
        ),
    ] {
        let answer = exchange(request);
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}:\n{answer}");
        assert!(answer.contains(cause), "{request:?}:\n{answer}");
    }
    assert!(
        bed.upstream.requests().is_empty(),
        "{:?}",
        bed.upstream.requests()
    );
    // Absolute form: the target's authority is the Host upstream (RFC 9112 §3.2.2), in origin form.
    let answer = exchange(
        "GET http://t.example/headers?q HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("GET /headers?q HTTP/1.1\n"), "{answer}");
    assert!(answer.contains("\nhost: t.example\n"), "{answer}");
    assert!(!answer.contains("h.example"), "{answer}");
    // HTTP/1.0 may omit Host; the HTTP/1.1 upstream still gets one: its own address.
    let answer = exchange("GET /headers HTTP/1.0\r\n\r\n");
    assert!(answer.contains(" 200 "), "{answer}");
    assert!(
        answer.contains(&format!("\nhost: {upstream}\n")),
        "{answer}"
    );
}

/// An upstream that speaks HTTP/1.0 only: one response per connection, then close.
fn http10_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match std::io::Read::read(&mut stream, &mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            );
        }
    });
    addr
}

#[test]
fn an_http10_upstream_is_answered_as_http11_and_keeps_the_client_connection() {
    let bed = Bed::start_with("", Some(http10_upstream()));
    rt().block_on(async {
        let mut tls = bed.tls(&[b"http/1.1"]).await;
        for path in ["/one", "/two"] {
            tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
                .await
                .expect("write: the connection stays open after the first answer");
            let answer = read_until(&mut tls, "hello", Duration::from_secs(10)).await;
            // RFC 9110 §6.2: an intermediary sends its own version, not the upstream's.
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
            assert!(
                !answer.to_ascii_lowercase().contains("connection: close"),
                "{path}: {answer}"
            );
        }
    });
}

#[test]
fn limits_answer_431_and_408() {
    let bed = Bed::start(
        "[http]\nmax_head_bytes = 8192\nmax_headers = 20\nheader_read_timeout = \"1s\"\n",
    );
    rt().block_on(async {
        // A head over max_head_bytes.
        let mut sender = bed.h1().await;
        let req = Request::get("/")
            .header("host", NAME)
            .header("x-big", "b".repeat(10_000))
            .body(empty())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Too many header fields.
        let mut sender = bed.h1().await;
        let mut req = get("/");
        for i in 0..30 {
            req.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).expect("name"),
                hyper::header::HeaderValue::from_static("v"),
            );
        }
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Slowloris: a head that never completes gets 408 and a close, after header_read_timeout.
        let mut tls = bed.tls(&[b"http/1.1"]).await;
        let started = Instant::now();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: ecdsa.test\r\nX-Slow: 1\r\n")
            .await
            .expect("write");
        let answer = read_until(&mut tls, "\r\n\r\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "408 after {waited:?}"
        );
        let mut rest = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "connection not closed after 408"
        );
    });
}

#[test]
fn upstream_refused_is_502_and_slow_upstream_is_504() {
    // A port with nothing behind it: bound and never listening, so a connect is refused, and held for the whole
    // test (a port only bound and released could be taken meanwhile by a parallel test's daemon: one CI run got
    // another daemon's metrics endpoint there, a 404 instead of the 502).
    let hold =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    hold.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let closed = hold
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("free port");
    let bed = Bed::start_with("", Some(closed));
    let (status, body) = rt().block_on(async {
        let mut sender = bed.h1().await;
        text(sender.send_request(get("/")).await.expect("response")).await
    });
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("refused"), "{body}");
    assert_eq!(
        metric_value(
            &bed.metrics(),
            "portcullis_http_upstream_errors_total",
            &[("cause", "refused")]
        ),
        1.0
    );

    let bed = Bed::start("[http]\nupstream_response_timeout = \"300ms\"\n");
    let started = Instant::now();
    let (status, body) = rt().block_on(async {
        let mut sender = bed.h1().await;
        text(
            sender
                .send_request(get("/slow?ms=5000"))
                .await
                .expect("response"),
        )
        .await
    });
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "504 took {:?}",
        started.elapsed()
    );
    let m = bed.metrics();
    assert_eq!(
        metric_value(
            &m,
            "portcullis_http_upstream_errors_total",
            &[("cause", "response_timeout")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(&m, "portcullis_http_requests_total", &[("code", "5xx")]),
        1.0
    );
}

#[test]
fn access_log_lines_parse_as_json_with_every_field() {
    let dir = TempDir::new("access").expect("tempdir");
    let log = dir.path().join("access.log");
    let bed = Bed::start(&format!(
        "[log]\naccess = {:?}\n",
        log.display().to_string()
    ));
    rt().block_on(async {
        let mut h2 = bed.h2().await;
        let req = Request::post(format!("https://{NAME}/echo?token=secret"))
            .header("authorization", "Bearer hunter2")
            .header("cookie", "session=hunter3")
            .body(
                Full::new(Bytes::from_static(b"hello"))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .expect("request");
        let (status, body) = text(h2.send_request(req).await.expect("response")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
        let mut h1 = bed.h1().await;
        let (status, _) = text(h1.send_request(get("/plain")).await.expect("response")).await;
        assert_eq!(status, StatusCode::OK);
    });
    let logged = read_log(&log, 2);
    assert!(
        !logged.contains("hunter"),
        "a secret reached the access log:\n{logged}"
    );
    assert!(
        !logged.contains("token"),
        "the query reached the access log:\n{logged}"
    );
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{logged}");
    let fields = [
        "time",
        "listener",
        "client",
        "protocol",
        "method",
        "authority",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "upstream",
        "upstream_ms",
        "tls_version",
        "cipher",
        "alpn",
        "sni",
        "handshake",
        "resumption",
        "handshake_ms",
        "fingerprint",
        "early_data",
    ];
    for line in &lines {
        for f in fields {
            assert!(line.get(f).is_some(), "field {f} missing in {line}");
        }
    }
    let h2 = lines
        .iter()
        .find(|l| l["protocol"] == "h2")
        .expect("an h2 line");
    assert_eq!(h2["alpn"], "h2");
    assert_eq!(h2["method"], "POST");
    assert_eq!(h2["path"], "/echo");
    assert_eq!(h2["status"], 200);
    assert_eq!(h2["bytes_in"], 5);
    assert_eq!(h2["bytes_out"], 5);
    assert_eq!(h2["sni"], NAME);
    assert_eq!(h2["tls_version"], "tls1.3");
    assert_eq!(h2["handshake"], "full");
    assert_eq!(h2["early_data"], false);
    assert_eq!(h2["upstream"], bed.upstream.addr.to_string());
    assert!(
        h2["cipher"]
            .as_str()
            .is_some_and(|c| c.starts_with("TLS13_")),
        "{h2}"
    );
    assert!(
        h2["fingerprint"].as_str().is_some_and(|f| f.len() == 16),
        "{h2}"
    );
    let h1 = lines
        .iter()
        .find(|l| l["protocol"] == "h1")
        .expect("an h1 line");
    assert_eq!(h1["alpn"], "http/1.1");
    assert_eq!(h1["authority"], NAME);
    assert_eq!(h1["path"], "/plain");
    assert_eq!(
        metric_value(&bed.metrics(), "portcullis_access_log_dropped_total", &[]),
        0.0
    );

    // logrotate: the file is moved, SIGUSR1 makes the daemon write to a new one at the old path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    bed.daemon
        .signal(nix::sys::signal::Signal::SIGUSR1)
        .expect("SIGUSR1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let runtime = rt();
    while !log.exists() && Instant::now() < deadline {
        // The reopen happens before the first line after the signal was handled.
        runtime.block_on(async {
            let mut h1 = bed.h1().await;
            text(
                h1.send_request(get("/after-rotate"))
                    .await
                    .expect("response"),
            )
            .await;
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = read_log(&log, 1);
    assert!(
        text.contains("/after-rotate"),
        "new file after SIGUSR1: {text:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&rotated)
            .map(|t| t.lines().count())
            .ok(),
        Some(2)
    );
}

/// Waits until `path` holds at least `lines` lines (the writer thread is asynchronous), at most 10 s.
fn read_log(path: &std::path::Path, lines: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tcp_mode_logs_one_line_per_connection() {
    let dir = TempDir::new("access-tcp").expect("tempdir");
    let log = dir.path().join("access.log");
    let bed = Bed::start_mode(
        "tcp",
        &format!("[log]\naccess = {:?}\n", log.display().to_string()),
        None,
    );
    let body = curl(&bed, &["--http1.1"], "/relayed");
    assert_eq!(body, "ok /relayed\n");
    let text = read_log(&log, 1);
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(line["protocol"], "tcp", "{line}");
    assert_eq!(line["alpn"], "http/1.1", "{line}");
    assert_eq!(line["upstream"], bed.upstream.addr.to_string());
    assert!(line["bytes_in"].as_u64().is_some_and(|n| n > 20), "{line}");
    assert!(line["bytes_out"].as_u64().is_some_and(|n| n > 20), "{line}");
    assert!(
        line["tls_version"].is_string() && line["handshake_ms"].is_number(),
        "{line}"
    );
}

#[test]
fn metrics_with_the_http_families_are_promtool_clean() {
    let bed = Bed::start("");
    rt().block_on(async {
        let mut sender = bed.h1().await;
        text(sender.send_request(get("/")).await.expect("response")).await;
    });
    let m = bed.metrics();
    for family in [
        "portcullis_http_requests_total",
        "portcullis_http_request_duration_seconds",
        "portcullis_http_first_byte_seconds",
        "portcullis_http_upstream_requests_total",
        "portcullis_http_upstream_errors_total",
        "portcullis_access_log_dropped_total",
    ] {
        assert!(m.contains(&format!("# TYPE {family}")), "{family} missing");
    }
    assert_eq!(
        metric_value(
            &m,
            "portcullis_http_first_byte_seconds_count",
            &[("handshake", "full")]
        ),
        1.0
    );
    // The dashboard's quantiles read the buckets (tests/deploy.rs relies on this test for the name).
    assert!(
        m.contains("portcullis_http_first_byte_seconds_bucket{"),
        "{m}"
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (installed by cargo xtask setup)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(m.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_drains_h1_with_connection_close_and_h2_with_goaway() {
    let bed = Bed::start("[shutdown]\ndrain_timeout = \"10s\"\n");
    let pid_signal = |d: &Daemon| {
        d.signal(nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM")
    };
    rt().block_on(async {
        let mut h1 = bed.h1().await;
        let mut h2 = bed.h2().await;
        let slow_h1 = tokio::spawn(h1.send_request(get("/slow?ms=1500")));
        let req = Request::get(format!("https://{NAME}/slow?ms=1500"))
            .body(empty())
            .expect("request");
        let slow_h2 = tokio::spawn(h2.send_request(req));
        tokio::time::sleep(Duration::from_millis(300)).await;
        pid_signal(&bed.daemon);
        let r1 = slow_h1
            .await
            .expect("join")
            .expect("in-flight h1 request finishes");
        assert_eq!(r1.status(), StatusCode::OK);
        assert_eq!(
            r1.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "h1 response during drain: {:?}",
            r1.headers()
        );
        let r2 = slow_h2
            .await
            .expect("join")
            .expect("in-flight h2 stream finishes");
        assert_eq!(r2.status(), StatusCode::OK);
        assert_eq!(text(r2).await.1, "slow\n");
        // After the GOAWAY the h2 connection takes no new stream.
        let req = Request::get(format!("https://{NAME}/late"))
            .body(empty())
            .expect("request");
        assert!(
            h2.send_request(req).await.is_err(),
            "a stream opened after GOAWAY"
        );
    });
}

#[test]
fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let bed = Bed::start("[http]\nidle_timeout = \"1s\"\n");
    rt().block_on(async {
        let mut tls = bed.tls(&[b"http/1.1"]).await;
        tls.write_all(format!("GET /a HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let answer = read_until(&mut tls, "ok /a\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let idle = Instant::now();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "not closed: {closed:?}"
        );
        let waited = idle.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
            "closed after {waited:?}"
        );
        // h2: a GOAWAY, then the connection ends; the client sees its connection future finish.
        let tls = bed.tls(&[b"h2"]).await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        let driver = tokio::spawn(conn);
        let req = Request::get(format!("https://{NAME}/b"))
            .body(empty())
            .expect("request");
        assert_eq!(
            text(sender.send_request(req).await.expect("response"))
                .await
                .1,
            "ok /b\n"
        );
        let idle = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
        assert!(ended.is_ok(), "h2 connection still open after 10 s idle");
        assert!(
            idle.elapsed() >= Duration::from_millis(900),
            "{:?}",
            idle.elapsed()
        );
    });
}

/// An idle HTTP/1.1 connection parks after 10 ms (`http/park.rs`: hyper's connection and buffers are dropped):
/// the next request on it, a head split across writes, a pipelined partial head hyper had already read, and a
/// stalled head (408) behave as on a connection that never parked.
#[test]
fn parked_h1_connections_serve_their_next_request_and_time_out_a_stalled_head() {
    let bed = Bed::start("[http]\nheader_read_timeout = \"1s\"\n");
    let park = Duration::from_millis(400);
    rt().block_on(async {
        let mut tls = bed.tls(&[b"http/1.1"]).await;
        tokio::time::sleep(park).await;
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {NAME}\r\n\r\n");
        tls.write_all(get("/a").as_bytes()).await.expect("write");
        let answer = read_until(&mut tls, "ok /a\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(park).await;
        // A head in two writes after the park.
        let head = get("/b");
        let (first, rest) = head.split_at(10);
        tls.write_all(first.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        tls.write_all(rest.as_bytes()).await.expect("write");
        let answer = read_until(&mut tls, "ok /b\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // A whole request and a partial one in one write: the partial head outlives the park.
        let both = format!("{}GET /d HTTP/1.1\r\nHo", get("/c"));
        tls.write_all(both.as_bytes()).await.expect("write");
        let answer = read_until(&mut tls, "ok /c\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(park).await;
        tls.write_all(format!("st: {NAME}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let answer = read_until(&mut tls, "ok /d\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(park).await;
        // A head that stalls after the park: 408 after header_read_timeout.
        let started = Instant::now();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: ecdsa.test\r\n")
            .await
            .expect("write");
        let answer = read_until(&mut tls, "\r\n\r\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "408 after {waited:?}"
        );
    });
    let m = bed.metrics();
    let accepted = metric_value(&m, "portcullis_connections_accepted_total", &[]);
    assert_eq!(accepted, 1.0, "every request on one client connection");
    let requests = h1_gets_ok(&m);
    assert_eq!(requests, 4.0);
}

/// A keep-alive client pausing between requests (here 40 ms, more than the 10 ms park window) parks once: its next
/// request came within 100 ms of the connection going quiet, so from then on the connection parks after 100 ms
/// (`http/park.rs` `PARK_AFTER_RETURNING`), and does not rebuild hyper's connection for every request. A longer
/// pause still parks it.
#[test]
fn a_client_pausing_between_requests_parks_once_not_per_request() {
    let bed = Bed::start("");
    let parked = |bed: &Bed| metric_value(&bed.metrics(), "portcullis_http_parked_total", &[]);
    let before = parked(&bed);
    rt().block_on(async {
        let mut tls = bed.tls(&[b"http/1.1"]).await;
        for i in 0..5 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            let path = format!("/p{i}");
            tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let answer =
                read_until(&mut tls, &format!("ok {path}\n"), Duration::from_secs(10)).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        let paced = parked(&bed) - before;
        // The first pause parks (the 10 ms window); the next three do not (a fixed 10 ms window would park four
        // times). One more is allowed for a pause the host stretched past 100 ms.
        assert!(
            (1.0..=2.0).contains(&paced),
            "{paced} parks over four 40 ms pauses"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(parked(&bed) - before, paced + 1.0, "a 500 ms pause parks");
        tls.write_all(format!("GET /last HTTP/1.1\r\nHost: {NAME}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let answer = read_until(&mut tls, "ok /last\n", Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    });
}
