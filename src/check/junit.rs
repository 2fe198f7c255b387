//! The checks' results as JUnit XML, for CI systems that show test reports.

use super::{CheckResult, Verdict, shorten};

/// JUnit XML: one testcase per check; FAIL is a failure, WARN passes with its evidence in
/// system-out.
pub fn junit(image: &str, results: &[CheckResult]) -> String {
    let failures = results.iter().filter(|r| r.verdict == Verdict::Fail).count();
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(&format!(
        "<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n  <testsuite name=\"smlocal check {}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{total:.3}\">\n",
        results.len(),
        escape(image),
        results.len()
    ));
    for r in results {
        xml.push_str(&format!(
            "    <testcase classname=\"smlocal.check\" name=\"{}\" time=\"{:.3}\">\n",
            r.check.name(),
            r.seconds
        ));
        match r.verdict {
            Verdict::Fail => xml.push_str(&format!(
                "      <failure message=\"{}\">{}\nfix: {}</failure>\n",
                escape(&shorten(&r.evidence, 200)),
                escape(&r.evidence),
                escape(&r.fix)
            )),
            Verdict::Warn => xml.push_str(&format!("      <system-out>WARN: {}</system-out>\n", escape(&r.evidence))),
            Verdict::Pass => xml.push_str(&format!("      <system-out>{}</system-out>\n", escape(&r.evidence))),
        }
        xml.push_str("    </testcase>\n");
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Check;

    #[test]
    fn junit_counts_failures_and_escapes_evidence() {
        let r = |check, verdict, evidence: &str| CheckResult {
            check,
            verdict,
            evidence: evidence.into(),
            fix: "do <this>".into(),
            seconds: 0.5,
        };
        let xml = junit(
            "img:1",
            &[
                r(Check::Train, Verdict::Pass, "ok"),
                r(Check::Model, Verdict::Fail, "a < b & \"c\""),
                r(Check::Pid1, Verdict::Warn, "shell"),
            ],
        );
        assert!(xml.contains("tests=\"3\" failures=\"1\""));
        assert!(xml.contains("a &lt; b &amp; &quot;c&quot;"));
        assert!(xml.contains("<system-out>WARN: shell</system-out>"));
        assert!(xml.contains("name=\"pid1\""));
    }
}
