//! A small HTTP/1.1 server for the `serve` side of the SageMaker contract: one thread per
//! connection, keep-alive, `Content-Length` or chunked request bodies, and a response that
//! is either whole or streamed in chunks. SIGTERM stops accepting, lets the requests in
//! flight finish (up to 25 s) and exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub enum Body {
    Whole(Vec<u8>),
    /// Sent as chunks, with `pause` between them.
    Chunks(Vec<Vec<u8>>, Duration),
}

pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Body,
    pub headers: Vec<(String, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, content_type: content_type.into(), body: Body::Whole(body.into()), headers: Vec::new() }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Serves on `0.0.0.0:port` until SIGTERM, then exits the process.
pub fn serve(port: u16, handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> ! {
    serve_on("0.0.0.0", port, true, handler)
}

/// [`serve`] on `address`; with `on_term` false SIGTERM is ignored (as a PID 1 without a
/// handler would), for contract tests.
pub fn serve_on(
    address: &str,
    port: u16,
    on_term: bool,
    handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
) -> ! {
    let disposition = if on_term { on_sigterm as *const () as libc::sighandler_t } else { libc::SIG_IGN };
    unsafe {
        libc::signal(libc::SIGTERM, disposition);
    }
    let listener = TcpListener::bind((address, port)).unwrap_or_else(|e| {
        eprintln!("serve: cannot listen on {address}:{port}: {e}");
        std::process::exit(1)
    });
    listener.set_nonblocking(true).ok();
    println!("serving on {address}:{port}");
    let handler = Arc::new(handler);
    let busy = Arc::new(AtomicUsize::new(0));
    while !TERMINATED.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (handler, busy) = (handler.clone(), busy.clone());
                std::thread::spawn(move || connection(stream, &*handler, &busy));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("serve: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(listener);
    println!("SIGTERM received; finishing the requests in flight");
    let end = Instant::now() + Duration::from_secs(25);
    while busy.load(Ordering::SeqCst) > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("stopped");
    std::process::exit(0)
}

fn connection(stream: TcpStream, handler: &dyn Fn(&Request) -> Response, busy: &AtomicUsize) {
    stream.set_nonblocking(false).ok();
    stream.set_nodelay(true).ok();
    let Ok(writer) = stream.try_clone() else { return };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = write_response(
                    &mut writer,
                    &Response::new(400, "text/plain", format!("bad request: {e}\n")),
                    false,
                );
                return;
            }
        };
        busy.fetch_add(1, Ordering::SeqCst);
        let close = request.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))
            || TERMINATED.load(Ordering::SeqCst);
        let response = handler(&request);
        let written = write_response(&mut writer, &response, close);
        busy.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() || close {
            return;
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(std::io::Error::other("no request line"));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the headers end early"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(length) = header("content-length") {
        let n: usize = length.parse().map_err(|_| std::io::Error::other("bad Content-Length"))?;
        body = vec![0; n];
        reader.read_exact(&mut body)?;
    }
    Ok(Some(Request { method, path, headers, body }))
}

fn write_response(writer: &mut TcpStream, response: &Response, close: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    match &response.body {
        Body::Whole(body) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut out = head.into_bytes();
            out.extend_from_slice(body);
            writer.write_all(&out)
        }
        Body::Chunks(chunks, pause) => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            writer.write_all(head.as_bytes())?;
            for chunk in chunks {
                writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                writer.write_all(chunk)?;
                writer.write_all(b"\r\n")?;
                writer.flush()?;
                std::thread::sleep(*pause);
            }
            writer.write_all(b"0\r\n\r\n")
        }
    }
}
