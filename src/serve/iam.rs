//! The two IAM calls the SageMaker SDK v3 makes before it sends a job (`GetRole` for the
//! role's trust policy, `SimulatePrincipalPolicy` for its permissions), answered in IAM's
//! Query protocol (form-encoded request, XML answer) so `AWS_ENDPOINT_URL_IAM` can point at
//! `smlocal serve`. smlocal enforces no IAM policy: every role exists, trusts SageMaker, and
//! is allowed every action, which is what a job here can do.

use super::{Body, full};
use bytes::Bytes;
use hyper::{Response, StatusCode};

const XMLNS: &str = "https://iam.amazonaws.com/doc/2010-05-08/";

/// The form's fields, decoded (`+` is a space, `%XX` a byte).
pub(super) fn form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |text: &str| {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() + 1 && text.get(i + 1..i + 3).is_some() => {
                    match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn xml(status: StatusCode, text: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .header("x-amzn-requestid", super::request_id())
        .body(full(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn error(code: &str, message: &str) -> Response<Body> {
    xml(
        StatusCode::BAD_REQUEST,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            escape(message),
            super::request_id()
        ),
    )
}

/// Percent-encodes a policy document as IAM returns one.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Answers one IAM Query request.
pub(super) fn answer(fields: &[(String, String)]) -> Response<Body> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let request_id = super::request_id();
    match field("Action") {
        Some("GetRole") => {
            let Some(name) = field("RoleName").filter(|n| !n.is_empty()) else {
                return error(
                    "ValidationError",
                    "1 validation error detected: Value null at 'roleName' failed to satisfy constraint: Member must not be null",
                );
            };
            let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
            let id: String = name.bytes().map(|b| format!("{:02X}", b)).collect::<String>().chars().take(17).collect();
            xml(
                StatusCode::OK,
                format!(
                    "<GetRoleResponse xmlns=\"{XMLNS}\"><GetRoleResult><Role><Path>/</Path><RoleName>{n}</RoleName><RoleId>AROA{id}</RoleId><Arn>arn:aws:iam::000000000000:role/{n}</Arn><CreateDate>2026-01-01T00:00:00Z</CreateDate><AssumeRolePolicyDocument>{}</AssumeRolePolicyDocument><MaxSessionDuration>3600</MaxSessionDuration></Role></GetRoleResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetRoleResponse>",
                    url_encode(trust),
                    n = escape(name),
                ),
            )
        }
        Some("SimulatePrincipalPolicy") => {
            let mut actions: Vec<(usize, &str)> = fields
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("ActionNames.member.")?.parse().ok()?, v.as_str())))
                .collect();
            actions.sort();
            let resources: Vec<&str> =
                fields.iter().filter(|(k, _)| k.starts_with("ResourceArns.member.")).map(|(_, v)| v.as_str()).collect();
            let resource = resources.first().copied().unwrap_or("*");
            let results: String = actions
                .iter()
                .map(|(_, action)| {
                    format!(
                        "<member><EvalActionName>{}</EvalActionName><EvalResourceName>{}</EvalResourceName><EvalDecision>allowed</EvalDecision><MatchedStatements/><MissingContextValues/></member>",
                        escape(action),
                        escape(resource)
                    )
                })
                .collect();
            xml(
                StatusCode::OK,
                format!(
                    "<SimulatePrincipalPolicyResponse xmlns=\"{XMLNS}\"><SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{results}</EvaluationResults></SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>"
                ),
            )
        }
        Some(other) => error(
            "InvalidAction",
            &format!("smlocal serve answers IAM's GetRole and SimulatePrincipalPolicy only, not {other}"),
        ),
        None => error("MissingAction", "The request has no Action"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_as_botocore_encodes_them() {
        let fields = form(b"Action=SimulatePrincipalPolicy&ActionNames.member.1=s3%3APutObject&PolicySourceArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2FR&X=a+b");
        assert_eq!(fields[1], ("ActionNames.member.1".into(), "s3:PutObject".into()));
        assert_eq!(fields[2].1, "arn:aws:iam::1:role/R");
        assert_eq!(fields[3].1, "a b");
    }
}
