//! Wire-format tests: request heads, response heads and body framing, fed whole and byte by byte.

use super::*;

fn head(raw: &str) -> Head {
    match parse_head(raw.as_bytes(), false) {
        Ok(Some((n, Some(h)))) if n == raw.len() => h,
        other => panic!("{raw:?} parsed as {other:?}"),
    }
}

/// Decodes `wire` fed in pieces of `step` bytes; returns the body and whether it ended.
fn decode_in_steps(mut framing: Framing, wire: &[u8], step: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match framing.decode(&mut buf)? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::End => return Ok((body, true)),
            Decoded::More if fed < wire.len() => {
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
            Decoded::More => return Ok((body, false)),
        }
    }
}

#[test]
fn request_heads_carry_host_length_and_headers() {
    let h = request_head(
        "POST",
        "10.0.0.1:8000",
        ["/v1", "/chat/completions"],
        42,
        &[(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static("r1"),
        )],
    );
    assert_eq!(
        String::from_utf8(h).ok().as_deref(),
        Some(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 10.0.0.1:8000\r\n\
             content-type: application/json\r\ncontent-length: 42\r\nx-request-id: r1\r\n\r\n"
        )
    );
    let get = request_head("GET", "h:1", ["", ""], 0, &[]);
    assert_eq!(get, b"GET / HTTP/1.1\r\nhost: h:1\r\n\r\n");
}

#[test]
fn response_heads_choose_the_framing() {
    let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(12));
    assert!(h.keep_alive);
    let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked(Chunked::default()));
    assert!(h.keep_alive);
    // chunked wins over a length, and such a connection is not reused
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(h.framing, Framing::Chunked(Chunked::default()));
    assert!(!h.keep_alive);
    let h = head("HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
    let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 3\r\n\r\n");
    assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
    let h = head("HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));
    let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
    assert!(!h.keep_alive);
    let h = head("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\ncontent-length: 1\r\n\r\n");
    assert!(!h.keep_alive);
}

#[test]
fn retry_after_prefers_milliseconds() {
    let h = head("HTTP/1.1 429 x\r\nretry-after: 3\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(h.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h.retry_after, Some(Duration::from_secs(3)));
    let h = head(
        "HTTP/1.1 503 x\r\nretry-after: 3\r\nretry-after-ms: 250\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(h.retry_after, Some(Duration::from_millis(250)));
    let h = head(
        "HTTP/1.1 503 x\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(h.retry_after, None);
}

#[test]
fn interim_heads_are_skipped_and_partial_heads_wait() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
    assert!(matches!(parse_head(raw, false), Ok(Some((25, None)))));
    assert!(matches!(parse_head(&raw[25..], false), Ok(None)));
    assert!(parse_head(b"HTTP/1.1 101 Switching\r\n\r\n", false).is_err());
}

#[test]
fn bad_response_heads_are_errors() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5,\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "SMTP ready\r\n\r\n",
    ] {
        assert!(parse_head(raw.as_bytes(), false).is_err(), "{raw:?}");
    }
    let not_text =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\xff\r\ncontent-length: 2\r\n\r\n";
    assert!(parse_head(not_text, false).is_err());
    let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(HEAD_BYTES_MAX));
    assert!(parse_head(huge.as_bytes(), false).is_err());
    let many: String = (0..HEADERS_MAX + 1)
        .map(|i| format!("h{i}: v\r\n"))
        .collect();
    let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert!(parse_head(raw.as_bytes(), false).is_err());
}

#[test]
fn head_requests_and_equal_lengths_are_fine() {
    let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ncontent-length: 9\r\n\r\n";
    let Ok(Some((_, Some(h)))) = parse_head(raw, true) else {
        panic!("not parsed");
    };
    assert_eq!(h.framing, Framing::Length(0));
    assert_eq!(
        head("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n").framing,
        Framing::Length(7)
    );
}

#[test]
fn lengths_and_chunks_decode_in_any_pieces() {
    let chunked =
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\nA\r\n0123456789\r\n0\r\nx-trailer: t\r\n\r\n";
    for step in [1, 2, 3, 7, 64, 1000] {
        let (body, ended) = decode_in_steps(Framing::Chunked(Chunked::default()), chunked, step)
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        assert_eq!(body, b"hello, world0123456789", "step {step}");
        assert!(ended);
        let (body, ended) = decode_in_steps(Framing::Length(5), b"abcde", step).expect("decodes");
        assert_eq!((body.as_slice(), ended), (&b"abcde"[..], true));
    }
    // leading zeros, and whitespace before the extensions, are fine
    let (body, ended) = decode_in_steps(
        Framing::Chunked(Chunked::default()),
        b"00000000000000000003 ;x\r\nabc\r\n0000\r\n\r\n",
        5,
    )
    .expect("decodes");
    assert_eq!((body.as_slice(), ended), (&b"abc"[..], true));
    // LF-only line ends are taken too
    let (body, ended) = decode_in_steps(Framing::Chunked(Chunked::default()), b"3\nabc\n0\n\n", 1)
        .expect("decodes");
    assert_eq!((body.as_slice(), ended), (&b"abc"[..], true));
}

#[test]
fn a_body_stops_at_its_end_and_leaves_what_follows() {
    let mut buf = BytesMut::from(&b"abcNEXT"[..]);
    let mut f = Framing::Length(3);
    assert_eq!(
        f.decode(&mut buf).ok(),
        Some(Decoded::Data(Bytes::from_static(b"abc")))
    );
    assert_eq!(f.decode(&mut buf).ok(), Some(Decoded::End));
    assert_eq!(&buf[..], b"NEXT");
    let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\n\r\nNEXT"[..]);
    let mut f = Framing::Chunked(Chunked::default());
    assert_eq!(
        f.decode(&mut buf).ok(),
        Some(Decoded::Data(Bytes::from_static(b"a")))
    );
    assert_eq!(f.decode(&mut buf).ok(), Some(Decoded::End));
    assert_eq!(&buf[..], b"NEXT");
}

#[test]
fn truncated_bodies_are_errors_at_eof_and_close_framed_ones_end() {
    let (_, ended) =
        decode_in_steps(Framing::Chunked(Chunked::default()), b"5\r\nhel", 2).expect("decodes");
    assert!(!ended);
    assert!(Framing::Chunked(Chunked::default()).at_eof().is_err());
    assert!(Framing::Length(3).at_eof().is_err());
    assert_eq!(Framing::Length(0).at_eof().ok(), Some(Decoded::End));
    assert_eq!(Framing::Close.at_eof().ok(), Some(Decoded::End));
    let (body, ended) = decode_in_steps(Framing::Close, b"anything", 3).expect("decodes");
    assert_eq!((body.as_slice(), ended), (&b"anything"[..], false));
}

#[test]
fn bad_chunk_framing_is_an_error() {
    let long_line = format!("{}\r\n", "0".repeat(CHUNK_LINE_MAX + 1));
    let long_trailers = format!("0\r\n{}\r\n\r\n", "t".repeat(TRAILERS_MAX));
    for wire in [
        "g\r\nx\r\n0\r\n\r\n",
        "\r\n",
        "1\r\nab\r\n0\r\n\r\n",
        "ffffffffffffffff\r\n",
        ";x\r\n",
        " 1\r\nx\r\n0\r\n\r\n",
        &long_line,
        &long_trailers,
    ] {
        let r = decode_in_steps(Framing::Chunked(Chunked::default()), wire.as_bytes(), 1000);
        assert!(r.is_err(), "{wire:?} decoded as {r:?}");
    }
}

#[test]
fn only_visible_ascii_goes_on_the_request_line() {
    assert!(is_token_text("10.0.0.1:8000"));
    assert!(is_token_text("/v1/x?y=z"));
    assert!(!is_token_text("/v1 HTTP/1.1\r\nx: y"));
    assert!(!is_token_text("h\u{e9}"));
}
