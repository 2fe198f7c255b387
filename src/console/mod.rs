//! The console: `smlocal serve`'s pages for people, beside the API on the same port. Every
//! page is rendered here (`html.rs` the shell, `jobs.rs` the list, `job.rs` a job's page,
//! `create.rs` the clone editor, `endpoints.rs` endpoints and the invoke form, `files.rs`
//! the artifacts of `file://` outputs) and reads with JavaScript off; `events.rs` keeps the
//! open pages live over Server-Sent Events; `assets/` holds the one stylesheet and the one
//! script, compiled into the binary, so nothing is loaded from outside the machine.
//!
//! The API checks no signatures by default, so the console's actions (stop, create,
//! invoke) are refused unless they come from one of its own pages: the browser must name
//! this very origin (`Origin`, `Sec-Fetch-Site`) and the request must carry the token the
//! pages hold, which no other site can read.

mod create;
mod endpoints;
mod events;
mod files;
mod html;
mod job;
mod jobs;

use crate::serve::{Api, Body, full};
use crate::state::record::Record;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// A form larger than this is refused (a request JSON is a few KiB; an invoke body may be
/// larger, as InvokeEndpoint's payload may be 6 MB).
const MAX_FORM: usize = 8 << 20;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// What the pages share: the token their forms carry, and the server's shutdown (live
/// streams end with it, so a stopping server is not held open by a browser tab).
#[derive(Debug, Clone)]
pub(crate) struct Console {
    token: String,
    shutdown: CancellationToken,
    /// Off when the API requires signatures: a browser cannot sign, and the console would
    /// be a way around them.
    enabled: bool,
}

impl Console {
    pub(crate) fn new(shutdown: CancellationToken, enabled: bool) -> Self {
        Console { token: random_token(), shutdown, enabled }
    }
}

/// 128 bits from the kernel, as hex; a clock-and-process-ID mix when `/dev/urandom` is not
/// there (it is on every Linux).
fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `request` is the console's: any GET or HEAD (the API is POST only), and the
/// console's own actions.
pub(crate) fn claims(request: &Request<Incoming>) -> bool {
    if request.headers().contains_key("x-amz-target") {
        return false;
    }
    match *request.method() {
        Method::GET | Method::HEAD => true,
        Method::POST => action(request.uri().path()).is_some(),
        _ => false,
    }
}

/// The console's state-changing actions.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Stop(String),
    Create,
    Invoke(String),
}

fn action(path: &str) -> Option<Action> {
    match segments(path).as_slice() {
        [jobs] if jobs == "jobs" => Some(Action::Create),
        [jobs, name, stop] if jobs == "jobs" && stop == "stop" => Some(Action::Stop(name.clone())),
        [endpoints, name, invoke] if endpoints == "endpoints" && invoke == "invoke" => {
            Some(Action::Invoke(name.clone()))
        }
        _ => None,
    }
}

/// The path's segments, percent-decoded.
fn segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(crate::serve::percent_decode).collect()
}

/// A query string or form body as its fields (the first of a repeated one).
pub(crate) type Fields = BTreeMap<String, String>;

fn fields(text: &[u8]) -> Fields {
    let mut out = Fields::new();
    for (k, v) in url::form_urlencoded::parse(text) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

pub(crate) async fn handle(api: &Api, console: &Console, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let query = fields(request.uri().query().unwrap_or_default().as_bytes());
    let span = tracing::debug_span!("console", method = %request.method(), path = %path);
    let _entered = span.enter();
    let parts: Vec<String> = segments(&path);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    if let ["assets", file] = parts.as_slice() {
        return asset(file);
    }
    if !console.enabled {
        return reply::error(
            StatusCode::FORBIDDEN,
            "The console is off",
            "smlocal serve was started with --require-signature: every request must be signed, and a browser cannot sign. Start it without that option to use the console.",
            &console.token,
        );
    }
    if request.method() == Method::POST {
        let Some(action) = action(&path) else { return reply::not_found(&path, &console.token) };
        let (parts, body) = request.into_parts();
        let form = match Limited::new(body, MAX_FORM).collect().await {
            Ok(collected) => fields(&collected.to_bytes()),
            Err(e) => {
                return reply::error(StatusCode::BAD_REQUEST, "Cannot read the form", &e.to_string(), &console.token);
            }
        };
        if let Err(refused) = same_origin(&parts.headers, &form, &console.token) {
            tracing::warn!("refused a console action on {path}: {refused}");
            return reply::error(StatusCode::FORBIDDEN, "Refused", &refused, &console.token);
        }
        return match action {
            Action::Stop(name) => job::stop(api, console, &name),
            Action::Create => create::submit(api, console, &form).await,
            Action::Invoke(name) => endpoints::invoke(api, console, &name, &form).await,
        };
    }
    let response = match parts.as_slice() {
        [] => jobs::page(api, console, &query),
        ["events", "jobs"] => events::jobs(api, console, &query),
        ["jobs", name] => job::page(api, console, name, &query),
        ["jobs", name, "events"] => events::job(api, console, name, &query, last_event_id(&request)),
        ["jobs", name, "stop"] => job::confirm_stop(api, console, name),
        ["jobs", name, "clone"] => create::page(api, console, name),
        ["jobs", name, "files", file] => files::artifact(api, console, name, file).await,
        ["jobs", name, "checkpoints", rest @ ..] => files::checkpoint(api, console, name, rest).await,
        ["endpoints"] => endpoints::list(api, console).await,
        ["endpoints", name] => endpoints::page(api, console, name).await,
        _ => reply::not_found(&path, &console.token),
    };
    if request.method() == Method::HEAD {
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, full(Bytes::new()));
    }
    response
}

/// A training job's record, or the page saying there is none.
/// (Boxed: a response is large beside a record.)
fn training_job(api: &Api, console: &Console, name: &str) -> Result<Record, Box<Response<Body>>> {
    api.queue.store().load(name).map_err(|e| {
        Box::new(reply::error(StatusCode::NOT_FOUND, "No such training job", &e.to_string(), &console.token))
    })
}

fn last_event_id(request: &Request<Incoming>) -> Option<String> {
    request.headers().get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A state-changing request must come from one of the console's own pages: a browser names
/// the page's origin, which must be this server's, and the page's token must match. A
/// client that is not a browser (curl) sends no `Origin` and needs the token as well.
fn same_origin(headers: &hyper::HeaderMap, form: &Fields, token: &str) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").unwrap_or_default();
    if let Some(origin) = header("origin") {
        let ours = format!("http://{host}");
        if !origin.eq_ignore_ascii_case(&ours) {
            return Err(format!(
                "this action came from the page {origin}, not from the console at {ours}: smlocal acts only for its own pages"
            ));
        }
    }
    if let Some(site) = header("sec-fetch-site")
        && site != "same-origin"
    {
        return Err(format!("this action came from a {site} page, not from the console's own pages"));
    }
    let sent = form.get("token").map(String::as_str).or(header("x-smlocal-token")).unwrap_or_default();
    if !equal_in_constant_time(sent.as_bytes(), token.as_bytes()) {
        return Err("this action carries no valid page token: reload the console's page and try again".into());
    }
    Ok(())
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn asset(file: &str) -> Response<Body> {
    let (body, kind) = match file {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return reply::not_found(file, ""),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, kind)
        .header(header::CACHE_CONTROL, "max-age=300")
        .header("x-content-type-options", "nosniff")
        .body(full(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// Responses with the headers every console page carries.
pub(crate) mod reply {
    use super::*;

    /// No script, style or frame from anywhere else; no page of another site may frame
    /// these (clickjacking the Stop button).
    const POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
        connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

    fn guarded(status: StatusCode) -> hyper::http::response::Builder {
        Response::builder()
            .status(status)
            .header("content-security-policy", POLICY)
            .header("x-frame-options", "DENY")
            .header("x-content-type-options", "nosniff")
            .header("referrer-policy", "same-origin")
            .header(header::CACHE_CONTROL, "no-store")
    }

    pub(crate) fn html(status: StatusCode, page: String) -> Response<Body> {
        guarded(status)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(full(Bytes::from(page)))
            .unwrap_or_else(|_| Response::new(full(Bytes::new())))
    }

    /// `303 See Other` to `location` (after a form's POST, so reloading does not repeat it).
    pub(crate) fn see_other(location: &str) -> Response<Body> {
        let mut response = guarded(StatusCode::SEE_OTHER)
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| Response::new(full(Bytes::new())));
        if let Ok(value) = HeaderValue::from_str(location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }

    pub(crate) fn stream(kind: &'static str, body: Body) -> Response<Body> {
        guarded(StatusCode::OK)
            .header(header::CONTENT_TYPE, kind)
            .body(body)
            .unwrap_or_else(|_| Response::new(full(Bytes::new())))
    }

    pub(crate) fn error(status: StatusCode, title: &str, message: &str, token: &str) -> Response<Body> {
        let main = format!(
            r#"<h1>{}</h1><p class="failure" role="alert">{}</p><p><a href="/">Training jobs</a></p>"#,
            html::escape(title),
            html::escape(message)
        );
        self::html(status, html::page(title, html::Section::Jobs, token, &main))
    }

    pub(crate) fn not_found(what: &str, token: &str) -> Response<Body> {
        error(StatusCode::NOT_FOUND, "Not found", &format!("There is nothing at {what}."), token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn with_token(token: &str) -> Fields {
        Fields::from([("token".to_string(), token.to_string())])
    }

    #[test]
    fn only_the_consoles_own_pages_may_act() {
        let ours = headers(&[("host", "127.0.0.1:8808"), ("origin", "http://127.0.0.1:8808")]);
        assert!(same_origin(&ours, &with_token("t0k"), "t0k").is_ok());
        // Another port of the same machine is another origin.
        let other = headers(&[("host", "127.0.0.1:8808"), ("origin", "http://127.0.0.1:9999")]);
        let refused = same_origin(&other, &with_token("t0k"), "t0k").unwrap_err();
        assert!(refused.contains("http://127.0.0.1:9999"), "{refused}");
        let cross = headers(&[("host", "127.0.0.1:8808"), ("sec-fetch-site", "cross-site")]);
        assert!(same_origin(&cross, &with_token("t0k"), "t0k").is_err());
        // Without the token (no other site can read it), even a same-origin request fails.
        assert!(same_origin(&ours, &Fields::new(), "t0k").unwrap_err().contains("token"));
        assert!(same_origin(&ours, &with_token("t0K"), "t0k").is_err());
    }

    #[test]
    fn actions_are_told_by_their_paths() {
        assert_eq!(action("/jobs"), Some(Action::Create));
        assert_eq!(action("/jobs/my-job/stop"), Some(Action::Stop("my-job".into())));
        assert_eq!(action("/endpoints/e%201/invoke"), Some(Action::Invoke("e 1".into())));
        assert_eq!(action("/"), None);
        assert_eq!(action("/endpoints/e/invocations"), None);
        assert_eq!(segments("/jobs/a+b/files/model.tar.gz"), ["jobs", "a+b", "files", "model.tar.gz"]);
    }

    #[test]
    fn tokens_differ_between_servers() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
