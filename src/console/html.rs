//! Writing HTML: escaping, the page shell every page shares, and how times, durations and
//! sizes read.

pub(crate) use crate::plot::escape;
use std::fmt::Write;

/// `text` as one path segment or query value of a URL.
pub(crate) fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Which part of the console a page belongs to (the navigation marks it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Section {
    Jobs,
    Endpoints,
}

/// A whole page: `title`, the navigation, and `main`. Every script and style is the
/// console's own file; the page token rides in a meta tag for the script's requests.
pub(crate) fn page(title: &str, section: Section, token: &str, main: &str) -> String {
    let current = |s: Section| if s == section { r#" aria-current="page""# } else { "" };
    let mut out = String::with_capacity(main.len() + 1024);
    let _ = write!(
        out,
        r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="smlocal-token" content="{token}">
<title>{title} · smlocal</title>
<link rel="stylesheet" href="/assets/console.css">
<script src="/assets/console.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/">smlocal</a>
<nav aria-label="Console">
<a href="/"{jobs}>Training jobs</a>
<a href="/endpoints"{endpoints}>Endpoints</a>
</nav>
</header>
<main id="main" tabindex="-1">
{main}
</main>
</body>
</html>
"##,
        token = escape(token),
        title = escape(title),
        jobs = current(Section::Jobs),
        endpoints = current(Section::Endpoints),
    );
    out
}

/// Epoch seconds as `2026-12-03 14:09:46` (UTC, which the page says).
pub(crate) fn time(epoch: f64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(epoch.floor() as i64) else { return String::new() };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A `<time>` element: readable text, the machine-readable instant in `datetime`.
pub(crate) fn time_element(epoch: f64) -> String {
    let text = time(epoch);
    format!(r#"<time datetime="{}Z">{text}</time>"#, text.replace(' ', "T"))
}

/// Seconds as `3 s`, `4 min 05 s`, `2 h 03 min`.
pub(crate) fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// A CSS class for a status: its color.
pub(crate) fn status_class(status: &str) -> &'static str {
    match status {
        "Completed" | "InService" => "ok",
        "Failed" => "bad",
        "Stopped" | "Stopping" | "OutOfService" | "Deleting" => "stopped",
        _ => "busy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_open_a_tag_or_leave_an_attribute() {
        assert_eq!(escape(r#"<script>"x'&"#), "&lt;script&gt;&quot;x&#39;&amp;");
        assert_eq!(url_part("a b/c?&"), "a+b%2Fc%3F%26");
    }

    #[test]
    fn times_and_durations_read_as_people_write_them() {
        assert_eq!(time(0.0), "1970-01-01 00:00:00");
        assert_eq!(time_element(86_400.5), r#"<time datetime="1970-01-02T00:00:00Z">1970-01-02 00:00:00</time>"#);
        assert_eq!(duration(3.4), "3 s");
        assert_eq!(duration(245.0), "4 min 05 s");
        assert_eq!(duration(7380.0), "2 h 03 min");
    }
}
