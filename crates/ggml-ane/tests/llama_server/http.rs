//! Just enough HTTP/1.1 and JSON for llama-server's `/completion`: one request per connection
//! (`Connection: close`), every wait bounded, and the one string field we read taken out of
//! the answer by hand (no JSON crate among our dependencies).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// An answer: the status code and the body (chunked transfer undone).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends one request to 127.0.0.1:`port` and reads the whole answer, within `bound`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    bound: Duration,
) -> std::io::Result<Response> {
    let deadline = Instant::now() + bound;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, bound)?;
    stream.set_write_timeout(Some(bound))?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no whole answer within {bound:?}"),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf)? {
            0 => break,
            n => raw.extend_from_slice(&buf[..n]),
        }
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = unchunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if body.len() < n {
            return Err(bad("body shorter than its Content-Length"));
        }
        body.truncate(n);
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn unchunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// A `/completion` body: the prompt as token ids, greedy (temperature 0, top-k 1), a fixed
/// seed, and no prompt cache (each answer computed from scratch, so every request works).
pub fn completion_body(prompt: &[u32], n_predict: usize) -> String {
    let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
    format!(
        "{{\"prompt\": [{}], \"n_predict\": {n_predict}, \"temperature\": 0, \"top_k\": 1, \
         \"seed\": 42, \"cache_prompt\": false, \"stream\": false}}",
        ids.join(", ")
    )
}

/// The first string field `key` of a JSON text (escapes undone), or None.
pub fn string_field(json: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let after = &json[json.find(&quoted)? + quoted.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let mut chars = after.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    // a lone surrogate half (an emoji's) stands as U+FFFD: equal texts stay equal
                    let c = u32::from_str_radix(&hex, 16).ok()?;
                    out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_field_reads_escapes_and_the_first_match() {
        let json = r#"{"index":0,"content":"a\"b\\c\n\u0041","tokens":[1],"content":"no"}"#;
        assert_eq!(string_field(json, "content").unwrap(), "a\"b\\c\nA");
        assert_eq!(
            string_field(r#"{"content" : "x"}"#, "content").unwrap(),
            "x"
        );
        assert!(string_field(r#"{"content":"open"#, "content").is_none());
        assert!(string_field(r#"{"content":3}"#, "content").is_none());
    }

    #[test]
    fn chunked_and_sized_bodies_parse() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse(chunked).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
        let sized = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}";
        let r = parse(sized).unwrap();
        assert_eq!((r.status, r.body.as_str()), (400, "{}"));
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }
}
