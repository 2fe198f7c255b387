//! What a job with a `file://` output produced, served to the browser: `model.tar.gz`,
//! `output.tar.gz` and the checkpoint folder. Files are opened without following any link
//! ([`crate::tree`]), so a link a container left cannot make the console read elsewhere.

use super::html::{self, escape, url_part};
use super::{Console, reply};
use crate::serve::{Api, Body};
use crate::state::record::Record;
use crate::storage::Location;
use crate::tree::{self, Beneath, EntryKind};
use futures::TryStreamExt;
use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The path of a `file://` URI; None for S3 (the page shows the URI).
pub(super) fn local_path(uri: &str) -> Option<PathBuf> {
    match Location::parse(uri) {
        Ok(Location::Local { path }) => Some(PathBuf::from(path)),
        _ => None,
    }
}

/// Where `output.tar.gz` is: beside `model.tar.gz` (None when the model is not archived).
pub(super) fn output_uri(record: &Record) -> Option<String> {
    let model = &record.model_artifacts.s3_model_artifacts;
    model.strip_suffix("model.tar.gz").map(|base| format!("{base}output.tar.gz"))
}

/// `model.tar.gz` or `output.tar.gz` of the job's `file://` output.
pub(super) async fn artifact(api: &Api, console: &Console, name: &str, file: &str) -> Response<Body> {
    let record = match super::training_job(api, console, name) {
        Ok(record) => record,
        Err(page) => return *page,
    };
    let model = &record.model_artifacts.s3_model_artifacts;
    let uri = match file {
        "model.tar.gz" => Some(model.clone()),
        "output.tar.gz" => output_uri(&record),
        _ => None,
    };
    let Some(path) = uri.as_deref().and_then(local_path) else {
        return reply::error(
            StatusCode::NOT_FOUND,
            "Not served here",
            &format!(
                "{file} of {name} is not a file on this machine ({}); read it with the AWS CLI",
                uri.unwrap_or_default()
            ),
            &console.token,
        );
    };
    let (Some(folder), Some(file_name)) = (path.parent(), path.file_name()) else {
        return reply::not_found(&path.display().to_string(), &console.token);
    };
    send(console, folder, Path::new(file_name), "application/gzip").await
}

/// The checkpoint folder of a job with a `file://` CheckpointConfig: a listing, or a file.
pub(super) async fn checkpoint(api: &Api, console: &Console, name: &str, rest: &[&str]) -> Response<Body> {
    let record = match super::training_job(api, console, name) {
        Ok(record) => record,
        Err(page) => return *page,
    };
    let uri = record.request.get("CheckpointConfig").and_then(|c| c.get("S3Uri")).and_then(|u| u.as_str());
    let Some(folder) = uri.and_then(local_path) else {
        return reply::error(
            StatusCode::NOT_FOUND,
            "Not served here",
            "This job's checkpoints are not in a folder of this machine.",
            &console.token,
        );
    };
    if !rest.is_empty() {
        let relative: PathBuf = rest.iter().collect();
        return send(console, &folder, &relative, "application/octet-stream").await;
    }
    let mut entries = Vec::new();
    let walked = Beneath::folder(&folder).walk(&mut |entry| entries.push(entry));
    let link = url_part(name);
    let mut main = format!(
        r#"<h1>Checkpoints of <a href="/jobs/{link}">{}</a></h1><p><code>{}</code></p>"#,
        escape(name),
        escape(uri.unwrap_or_default())
    );
    match walked {
        Err(e) if e.is_not_found() => main.push_str("<p>No checkpoints yet.</p>"),
        Err(e) => {
            let _ = write!(main, r#"<p class="failure" role="alert">{}</p>"#, escape(&e.to_string()));
        }
        Ok(()) => {
            main.push_str(r#"<div class="scroll"><table><thead><tr><th scope="col">File</th><th scope="col">Size</th></tr></thead><tbody>"#);
            for entry in &entries {
                let shown = entry.relative.display().to_string();
                let href: Vec<String> = entry.relative.iter().map(|c| url_part(&c.to_string_lossy())).collect();
                let _ = match &entry.kind {
                    EntryKind::File { len, .. } => write!(
                        main,
                        r#"<tr><td><a href="/jobs/{link}/checkpoints/{}">{}</a></td><td>{}</td></tr>"#,
                        href.join("/"),
                        escape(&shown),
                        crate::resources::human_bytes(*len)
                    ),
                    EntryKind::Link(target) => write!(
                        main,
                        r#"<tr><td>{} → {}</td><td>link (not followed)</td></tr>"#,
                        escape(&shown),
                        escape(&target.display().to_string())
                    ),
                    EntryKind::Dir | EntryKind::Special => Ok(()),
                };
            }
            main.push_str("</tbody></table></div>");
        }
    }
    reply::html(
        StatusCode::OK,
        html::page(&format!("Checkpoints of {name}"), html::Section::Jobs, &console.token, &main),
    )
}

/// The regular file `relative` below `folder`, streamed.
async fn send(console: &Console, folder: &Path, relative: &Path, kind: &'static str) -> Response<Body> {
    let opened = tree::open_file(folder, relative);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.is_not_found() => {
            return reply::not_found(&folder.join(relative).display().to_string(), &console.token);
        }
        Err(e) => return reply::error(StatusCode::FORBIDDEN, "Not served", &e.to_string(), &console.token),
    };
    let len = file.metadata().map(|m| m.len()).ok();
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).map_ok(hyper::body::Frame::data);
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut response = reply::stream(kind, body);
    let file_name = relative.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let disposition = format!("attachment; filename=\"{}\"", file_name.replace(['"', '\\'], "_"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(len) = len
        && let Ok(value) = HeaderValue::from_str(&len.to_string())
    {
        response.headers_mut().insert(header::CONTENT_LENGTH, value);
    }
    response
}
