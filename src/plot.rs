//! Draws a job's metrics as one SVG: a panel per metric, value against seconds since the
//! first point, one line per host. Plain SVG, so any browser or image viewer opens it.

use crate::metrics::Point;
use std::collections::BTreeMap;
use std::fmt::Write;

const PANEL_W: f64 = 640.0;
const PANEL_H: f64 = 220.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 30.0;
const MARGIN_B: f64 = 35.0;
/// Each host's (timestamp, value) points of one metric.
type Series<'a> = BTreeMap<&'a str, Vec<(f64, f64)>>;

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// The SVG document for `points` under the title `job`.
pub fn svg(job: &str, points: &[Point]) -> String {
    let mut by_metric: BTreeMap<&str, Series> = BTreeMap::new();
    for p in points {
        by_metric.entry(&p.metric).or_default().entry(&p.host).or_default().push((p.timestamp, p.value));
    }
    let start = points.iter().map(|p| p.timestamp).fold(f64::INFINITY, f64::min);
    let end = points.iter().map(|p| p.timestamp).fold(f64::NEG_INFINITY, f64::max);
    // A job that printed everything within a second has no time axis worth reading: plot
    // the values in order instead.
    let (start, unit) = if end - start < 1.0 {
        for hosts in by_metric.values_mut() {
            for series in hosts.values_mut() {
                series.iter_mut().enumerate().for_each(|(i, p)| p.0 = i as f64);
            }
        }
        (0.0, "points")
    } else {
        (start, "s")
    };
    let height = MARGIN_T + PANEL_H * by_metric.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif" font-size="12">"#,
        w = PANEL_W
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#, escape(job));
    if by_metric.is_empty() {
        let _ = writeln!(out, r#"<text x="10" y="50">no metric values were recorded</text>"#);
    }
    for (i, (metric, hosts)) in by_metric.iter().enumerate() {
        let top = MARGIN_T + PANEL_H * i as f64;
        panel(&mut out, top, metric, hosts, start, unit);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, top: f64, metric: &str, hosts: &Series, start: f64, unit: &str) {
    let all = hosts.values().flatten();
    let (mut x_max, mut y_min, mut y_max) = (0.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (t, v) in all {
        x_max = x_max.max(t - start);
        y_min = y_min.min(*v);
        y_max = y_max.max(*v);
    }
    if (y_max - y_min).abs() < f64::EPSILON {
        y_min -= 0.5;
        y_max += 0.5;
    }
    let x_max = if x_max <= 0.0 { 1.0 } else { x_max };
    let (left, right) = (MARGIN_L, PANEL_W - MARGIN_R);
    let (ptop, bottom) = (top + 20.0, top + PANEL_H - MARGIN_B);
    let x = |t: f64| left + (t - start) / x_max * (right - left);
    let y = |v: f64| bottom - (v - y_min) / (y_max - y_min) * (bottom - ptop);

    let _ = writeln!(out, r#"<text x="{left}" y="{}" font-weight="bold">{}</text>"#, top + 12.0, escape(metric));
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{ptop}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        right - left,
        bottom - ptop
    );
    for (value, at) in [(y_max, ptop), (y_min, bottom)] {
        let _ =
            writeln!(out, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 5.0, at + 4.0, number(value));
    }
    let _ = writeln!(out, r#"<text x="{left}" y="{}">0 {unit}</text>"#, bottom + 15.0);
    let _ = writeln!(
        out,
        r#"<text x="{right}" y="{}" text-anchor="end">{} {unit}</text>"#,
        bottom + 15.0,
        if unit == "s" { number(x_max) } else { format!("{x_max:.0}") }
    );
    for (i, (host, series)) in hosts.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let coords: Vec<String> = series.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        if coords.len() == 1 {
            let (t, v) = series[0];
            let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#, x(t), y(v));
        } else {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                coords.join(" ")
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end" fill="{color}">{}</text>"#,
            right - 5.0,
            ptop + 15.0 + 14.0 * i as f64,
            escape(host)
        );
    }
}

fn number(v: f64) -> String {
    if v.abs() >= 1000.0 || (v != 0.0 && v.abs() < 0.01) { format!("{v:.3e}") } else { format!("{v:.3}") }
}

/// `text` safe in SVG or HTML text and in a quoted attribute (the console's pages use it too).
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_panel_per_metric_and_a_line_per_host() {
        let p = |metric: &str, host: &str, t: f64, v: f64| Point {
            metric: metric.into(),
            host: host.into(),
            timestamp: t,
            value: v,
        };
        let points = vec![
            p("loss", "algo-1", 0.0, 1.0),
            p("loss", "algo-1", 1.0, 0.5),
            p("loss", "algo-2", 0.5, 0.7),
            p("acc<%>", "algo-1", 1.0, 0.9),
        ];
        let doc = svg("job & co", &points);
        assert!(doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 1);
        assert_eq!(doc.matches("<circle").count(), 2);
        assert!(doc.contains("job &amp; co") && doc.contains("acc&lt;%&gt;"));
    }
}
