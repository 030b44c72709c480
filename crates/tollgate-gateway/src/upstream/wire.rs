//! HTTP/1.1 on the wire to model endpoints (RFC 9112): the request head, the response head, and
//! the response body's framing (content length, chunked, or until close). Pure functions over
//! byte buffers; the sockets are in `upstream.rs`.

use bytes::{Buf, Bytes, BytesMut};
use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use std::io;
use std::time::Duration;

/// Largest response head accepted (status line and headers).
pub const HEAD_BYTES_MAX: usize = 64 << 10;
/// Most response headers accepted.
const HEADERS_MAX: usize = 100;
/// Longest chunk-size line (size and extensions).
const CHUNK_LINE_MAX: usize = 4 << 10;
/// Most trailer bytes accepted after the last chunk.
const TRAILERS_MAX: usize = 16 << 10;

/// Malformed input from the upstream.
pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Whether `s` may go into a request line or header as is (visible ASCII, no spaces).
pub fn is_token_text(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// The request head: `{method} {prefix}{path} HTTP/1.1` (`/` for an empty target), `host`, the
/// body's type and length (when it has one) and `headers`. `host` and the target's parts were
/// checked with [`is_token_text`]; header values cannot hold CR or LF (`HeaderValue`).
pub fn request_head(
    method: &str,
    host: &str,
    [prefix, path]: [&str; 2],
    body_len: usize,
    headers: &[(HeaderName, HeaderValue)],
) -> Vec<u8> {
    let mut h = Vec::with_capacity(160 + prefix.len() + path.len() + host.len());
    let root = if prefix.is_empty() && path.is_empty() {
        "/"
    } else {
        ""
    };
    for part in [
        method,
        " ",
        root,
        prefix,
        path,
        " HTTP/1.1\r\nhost: ",
        host,
        "\r\n",
    ] {
        h.extend_from_slice(part.as_bytes());
    }
    if body_len > 0 {
        h.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
        h.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    for (k, v) in headers {
        h.extend_from_slice(k.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// A final response head and how its body is framed.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub status: StatusCode,
    /// `retry-after-ms`, else `retry-after` in seconds (HTTP dates are not honoured; model
    /// servers rarely send them).
    pub retry_after: Option<Duration>,
    pub framing: Framing,
    /// The connection may carry another request once this body was read to the end.
    pub keep_alive: bool,
}

#[derive(Debug, PartialEq)]
pub enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// The body runs until the upstream closes the connection.
    Close,
}

/// What the start of `buf` holds: `Ok(None)` when the head is not complete yet; an interim
/// (1xx) head is returned as `Some((len, None))` for the caller to skip.
pub fn parse_head(buf: &[u8], method_is_head: bool) -> io::Result<Option<(usize, Option<Head>)>> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > HEAD_BYTES_MAX => {
            return Err(bad(format!("response head over {HEAD_BYTES_MAX} bytes")));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("malformed response head: {e}"))),
    };
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| bad(format!("status {code}")))?;
    if status.is_informational() {
        if code == 101 {
            return Err(bad("unexpected protocol switch"));
        }
        return Ok(Some((len, None)));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut keep_alive = r.version == Some(1);
    let (mut after_ms, mut after_s) = (None, None);
    for h in r.headers.iter() {
        let name = h.name;
        let framing_header = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        let value = match std::str::from_utf8(h.value) {
            Ok(v) => v.trim(),
            Err(_) if framing_header => return Err(bad(format!("{name} is not text"))),
            Err(_) => "",
        };
        if name.eq_ignore_ascii_case("content-length") {
            // digits only; a list of one repeated value is the same length (RFC 9110 §8.6)
            for item in value.split(',').map(str::trim) {
                let n = digits(item).ok_or_else(|| bad(format!("content-length '{value}'")))?;
                if length.is_some_and(|m| m != n) {
                    return Err(bad("conflicting content-length headers"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // the last coding decides; only `chunked` frames the body itself
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                chunked = coding.eq_ignore_ascii_case("chunked");
                other_coding |= !chunked;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
            {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("retry-after-ms") {
            after_ms = value.parse::<u64>().ok().map(Duration::from_millis);
        } else if name.eq_ignore_ascii_case("retry-after") {
            after_s = value.parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    let no_body = method_is_head || code == 204 || code == 304;
    let framing = if no_body {
        Framing::Length(0)
    } else if chunked {
        // a length beside chunked is ignored, and the connection not trusted again (RFC 9112 §6.3)
        keep_alive &= length.is_none();
        Framing::Chunked(Chunked::default())
    } else if other_coding {
        keep_alive = false;
        Framing::Close
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Close
    };
    let head = Head {
        status,
        retry_after: after_ms.or(after_s),
        framing,
        keep_alive,
    };
    Ok(Some((len, Some(head))))
}

/// A decimal number of ASCII digits only (no sign, no spaces), if it fits.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One step of decoding a body from the connection's buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// The body is complete.
    End,
    /// More bytes are needed from the connection.
    More,
}

impl Framing {
    /// Takes the next piece of body from `buf` (without copying it).
    pub fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        match self {
            Framing::Length(0) => Ok(Decoded::End),
            Framing::Length(rest) => Ok(take(buf, rest)),
            Framing::Close if buf.is_empty() => Ok(Decoded::More),
            Framing::Close => Ok(Decoded::Data(buf.split().freeze())),
            Framing::Chunked(c) => c.decode(buf),
        }
    }

    /// Body bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// What the upstream closing the connection now means: the end of a body framed by the
    /// close, else a truncated body.
    pub fn at_eof(&self) -> io::Result<Decoded> {
        match self {
            Framing::Close | Framing::Length(0) => Ok(Decoded::End),
            Framing::Chunked(Chunked { state: State::Done }) => Ok(Decoded::End),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the model server closed the connection before the body ended",
            )),
        }
    }
}

/// Up to `rest` bytes of data from `buf`.
fn take(buf: &mut BytesMut, rest: &mut u64) -> Decoded {
    if buf.is_empty() {
        return Decoded::More;
    }
    let n = usize::try_from(*rest).map_or(buf.len(), |r| r.min(buf.len()));
    *rest -= n as u64;
    Decoded::Data(buf.split_to(n).freeze())
}

/// The chunked transfer coding's decoder.
#[derive(Debug, PartialEq, Default)]
pub struct Chunked {
    state: State,
}

#[derive(Debug, PartialEq, Default)]
enum State {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one; bytes of them seen so far.
    Trailers(usize),
    Done,
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Decoded> {
        loop {
            match &mut self.state {
                State::Done => return Ok(Decoded::End),
                State::Data(rest) => {
                    let d = take(buf, rest);
                    if *rest == 0 {
                        self.state = State::DataEnd;
                    }
                    if d != Decoded::More {
                        return Ok(d);
                    }
                }
                State::DataEnd => {
                    let Some((len, used)) = line(buf, 2)? else {
                        return Ok(Decoded::More);
                    };
                    if len > 0 {
                        return Err(bad("chunk data longer than its size"));
                    }
                    buf.advance(used);
                    self.state = State::Size;
                }
                State::Size => {
                    let Some((len, used)) = line(buf, CHUNK_LINE_MAX)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&buf[..len])?;
                    buf.advance(used);
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Trailers(seen) => {
                    let room = TRAILERS_MAX.saturating_sub(*seen);
                    let Some((len, used)) = line(buf, room)? else {
                        return Ok(Decoded::More);
                    };
                    buf.advance(used);
                    *seen += used;
                    if len == 0 {
                        self.state = State::Done;
                    }
                }
            }
            if buf.is_empty() && !matches!(self.state, State::Done) {
                return Ok(Decoded::More);
            }
        }
    }
}

/// The length of the line (CRLF or LF ended, the ending not counted) at the start of `buf` and
/// the bytes it takes with its ending; `None` if it is not complete yet; an error if it runs past
/// `max` bytes. Framing lines are parsed in place and then dropped with `advance` (no split).
fn line(buf: &[u8], max: usize) -> io::Result<Option<(usize, usize)>> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i <= max => {
            let len = if i > 0 && buf[i - 1] == b'\r' {
                i - 1
            } else {
                i
            };
            Ok(Some((len, i + 1)))
        }
        None if buf.len() <= max => Ok(None),
        _ => Err(bad("chunk framing line too long")),
    }
}

/// The hexadecimal size at the start of a chunk-size line (extensions after `;` are ignored).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    // whitespace may only come before the extensions (RFC 9112 §7.1.1); leading zeros are fine
    let digits = line[..end].trim_ascii_end();
    let zeros = digits.iter().take_while(|&&b| b == b'0').count();
    let digits = &digits[zeros.min(digits.len().saturating_sub(1))..];
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad("bad chunk size"));
    }
    let mut n = 0u64;
    for &d in digits {
        let v = (d as char)
            .to_digit(16)
            .ok_or_else(|| bad("bad chunk size"))?;
        n = (n << 4) | u64::from(v);
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
