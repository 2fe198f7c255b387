//! Checks a request against botocore's own service model (`shapes.json`, the shapes reachable
//! from the training-job operations), so smlocal accepts exactly what the AWS API accepts and
//! words its refusals the way botocore (unknown/missing/mistyped parameters) and the service
//! (`1 validation error detected: ...`) do.

use serde_json::{Map, Value};
use std::sync::OnceLock;

/// What the model says is wrong with a request, in the two voices AWS uses.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// botocore's client-side checks: unknown, missing or mistyped parameters.
    pub parameters: Vec<String>,
    /// The service's constraint checks, already in AWS's sentence form.
    pub constraints: Vec<String>,
}

fn model() -> &'static Map<String, Value> {
    static MODEL: OnceLock<Map<String, Value>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let doc: Value =
            serde_json::from_str(include_str!("shapes.json")).expect("the embedded botocore model is valid JSON");
        doc.get("shapes").and_then(Value::as_object).cloned().unwrap_or_default()
    })
}

/// The member names of a structure shape of the model (none for an unknown shape).
pub(crate) fn members(shape: &str) -> Vec<String> {
    model()
        .get(shape)
        .and_then(|s| s.get("members"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Validates `value` as an instance of the named top-level shape (e.g. `CreateTrainingJobRequest`).
pub(crate) fn check(shape: &str, value: &Value) -> Findings {
    let mut findings = Findings::default();
    walk(shape, value, &Where::root(), &mut findings);
    findings
}

/// A position in the request, tracked both as botocore names it (`ResourceConfig.InstanceType`)
/// and as the service names it (`resourceConfig.instanceType`, lists as `.1.member`).
#[derive(Clone)]
struct Where {
    wire: String,
    aws: String,
}

impl Where {
    fn root() -> Self {
        Where { wire: String::new(), aws: String::new() }
    }
    fn member(&self, name: &str) -> Self {
        let mut lower = name.to_string();
        if let Some(first) = lower.get(0..1) {
            lower.replace_range(0..1, &first.to_lowercase());
        }
        Where { wire: join(&self.wire, name), aws: join(&self.aws, &lower) }
    }
    fn item(&self, index: usize) -> Self {
        Where { wire: format!("{}[{index}]", self.wire), aws: join(&self.aws, &format!("{}.member", index + 1)) }
    }
    fn key(&self, key: &str) -> Self {
        Where { wire: format!("{}.{key}", self.wire), aws: join(&self.aws, key) }
    }
    fn wire_or_input(&self) -> &str {
        if self.wire.is_empty() { "input" } else { &self.wire }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() { b.to_string() } else { format!("{a}.{b}") }
}

fn walk(shape_name: &str, value: &Value, at: &Where, out: &mut Findings) {
    let Some(shape) = model().get(shape_name) else {
        return;
    };
    let kind = shape.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "structure" => walk_structure(shape, value, at, out),
        "list" => {
            let Some(items) = value.as_array() else {
                return type_error(value, at, "list", out);
            };
            check_length(shape, items.len(), value, at, out);
            if let Some(member) = member_shape(shape.get("member")) {
                for (i, item) in items.iter().enumerate() {
                    walk(member, item, &at.item(i), out);
                }
            }
        }
        "map" => {
            let Some(entries) = value.as_object() else {
                return type_error(value, at, "dict", out);
            };
            check_length(shape, entries.len(), value, at, out);
            let key_shape = member_shape(shape.get("key"));
            let value_shape = member_shape(shape.get("value"));
            for (k, v) in entries {
                if let Some(ks) = key_shape {
                    walk(ks, &Value::String(k.clone()), &at.key(k), out);
                }
                if let Some(vs) = value_shape {
                    walk(vs, v, &at.key(k), out);
                }
            }
        }
        "string" => {
            let Some(s) = value.as_str() else {
                return type_error(value, at, "str", out);
            };
            check_string(shape_name, shape, s, at, out);
        }
        "integer" | "long" => {
            let Some(n) = value.as_i64() else {
                return type_error(value, at, "int", out);
            };
            if let Some(min) = shape.get("min").and_then(Value::as_i64).filter(|m| n < *m) {
                constraint(value, at, &format!("Member must have value greater than or equal to {min}"), out);
            }
            if let Some(max) = shape.get("max").and_then(Value::as_i64).filter(|m| n > *m) {
                constraint(value, at, &format!("Member must have value less than or equal to {max}"), out);
            }
        }
        "float" | "double" if !value.is_number() => {
            type_error(value, at, "float", out);
        }
        "boolean" if !value.is_boolean() => {
            type_error(value, at, "bool", out);
        }
        "timestamp" if !(value.is_number() || value.is_string()) => {
            type_error(value, at, "datetime", out);
        }
        _ => {}
    }
}

fn walk_structure(shape: &Value, value: &Value, at: &Where, out: &mut Findings) {
    let Some(fields) = value.as_object() else {
        return type_error(value, at, "dict", out);
    };
    let members = shape.get("members").and_then(Value::as_object);
    let empty = Map::new();
    let members = members.unwrap_or(&empty);
    for required in shape.get("required").and_then(Value::as_array).into_iter().flatten() {
        if let Some(name) = required.as_str().filter(|n| !fields.contains_key(*n)) {
            out.parameters.push(format!("Missing required parameter in {}: \"{name}\"", at.wire_or_input()));
        }
    }
    for (name, field) in fields {
        match members.get(name) {
            Some(member) => {
                if let Some(member_shape) = member_shape(Some(member)) {
                    walk(member_shape, field, &at.member(name), out);
                }
            }
            None => {
                let valid: Vec<&str> = members.keys().map(String::as_str).collect();
                let hint = match closest(name, &valid) {
                    Some(best) => format!(" (did you mean \"{best}\"?)"),
                    None => String::new(),
                };
                out.parameters.push(format!(
                    "Unknown parameter in {}: \"{name}\"{hint}, must be one of: {}",
                    at.wire_or_input(),
                    valid.join(", ")
                ));
            }
        }
    }
}

fn member_shape(member: Option<&Value>) -> Option<&str> {
    member?.get("shape")?.as_str()
}

fn check_string(shape_name: &str, shape: &Value, s: &str, at: &Where, out: &mut Findings) {
    if extension_allows(shape_name, s) {
        return;
    }
    let value = Value::String(s.to_string());
    check_length(shape, s.chars().count(), &value, at, out);
    if let Some(allowed) = shape.get("enum").and_then(Value::as_array)
        && !allowed.iter().any(|a| a.as_str() == Some(s))
    {
        let list: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
        let hint = match closest(s, &list) {
            Some(best) => format!(" (did you mean '{best}'?)"),
            None => String::new(),
        };
        // The service lists every value; past a screenful that buries the hint.
        let shown = if list.len() > 12 {
            format!("{}, ... and {} more", list[..8].join(", "), list.len() - 8)
        } else {
            list.join(", ")
        };
        constraint(&value, at, &format!("Member must satisfy enum value set: [{shown}]{hint}"), out);
    }
    if let Some(pattern) = shape.get("pattern").and_then(Value::as_str) {
        // The service anchors its patterns; a few use Java-only syntax (look-behind,
        // \p{Alnum}) that Rust's regex lacks, and those are left to the service's semantics
        // we can express rather than guessed at.
        if let Ok(re) = regex::Regex::new(&format!("^(?:{pattern})$"))
            && !re.is_match(s)
        {
            constraint(&value, at, &format!("Member must satisfy regular expression pattern: {pattern}"), out);
        }
    }
}

/// smlocal's documented extensions to the API: `file://` wherever an S3 URI is taken, and the
/// instance type `local` (the SageMaker SDK's name for "this machine").
fn extension_allows(shape_name: &str, s: &str) -> bool {
    match shape_name {
        // `Url` is ModelDataUrl's shape, `S3ModelUri` ModelDataSource's.
        "S3Uri" | "Url" | "S3ModelUri" => s.starts_with("file://"),
        "TrainingInstanceType" => s == "local",
        _ => false,
    }
}

fn check_length(shape: &Value, len: usize, value: &Value, at: &Where, out: &mut Findings) {
    let len = len as i64;
    if let Some(min) = shape.get("min").and_then(Value::as_i64).filter(|m| len < *m) {
        constraint(value, at, &format!("Member must have length greater than or equal to {min}"), out);
    }
    if let Some(max) = shape.get("max").and_then(Value::as_i64).filter(|m| len > *m) {
        constraint(value, at, &format!("Member must have length less than or equal to {max}"), out);
    }
}

fn type_error(value: &Value, at: &Where, expected: &str, out: &mut Findings) {
    let actual = match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    };
    out.parameters.push(format!(
        "Invalid type for parameter {}, value: {}, type: <class '{actual}'>, valid types: <class '{expected}'>",
        at.wire_or_input(),
        short(value)
    ));
}

fn constraint(value: &Value, at: &Where, rule: &str, out: &mut Findings) {
    out.constraints.push(format!("Value '{}' at '{}' failed to satisfy constraint: {rule}", short(value), at.aws));
}

fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 80 { format!("{}...", text.chars().take(77).collect::<String>()) } else { text }
}

/// The candidate nearest to `word` by edit distance (ignoring case), when it is near enough to
/// be a plausible typo.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (levenshtein(&word, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(row[j]).min(cur) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "TrainingJobName": "job-1",
            "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
            "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
            "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 60}
        })
    }

    #[test]
    fn a_real_request_passes() {
        let f = check("CreateTrainingJobRequest", &minimal());
        assert!(f.parameters.is_empty() && f.constraints.is_empty(), "{f:?}");
    }

    #[test]
    fn unknown_field_names_the_closest_real_one() {
        let mut req = minimal();
        req["HyperParameter"] = json!({"a": "1"});
        let f = check("CreateTrainingJobRequest", &req);
        assert_eq!(f.parameters.len(), 1);
        assert!(
            f.parameters[0]
                .starts_with("Unknown parameter in input: \"HyperParameter\" (did you mean \"HyperParameters\"?)"),
            "{}",
            f.parameters[0]
        );
    }

    #[test]
    fn nested_unknown_and_missing_fields_name_their_path() {
        let mut req = minimal();
        req["ResourceConfig"]["InstanceTyp"] = json!("ml.m5.large");
        req.as_object_mut().unwrap().remove("RoleArn");
        let f = check("CreateTrainingJobRequest", &req);
        assert!(
            f.parameters.iter().any(|p| p
                .starts_with("Unknown parameter in ResourceConfig: \"InstanceTyp\" (did you mean \"InstanceType\"?)")),
            "{f:?}"
        );
        assert!(f.parameters.iter().any(|p| p == "Missing required parameter in input: \"RoleArn\""), "{f:?}");
    }

    #[test]
    fn constraints_read_like_the_service() {
        let mut req = minimal();
        req["TrainingJobName"] = json!("bad_name");
        req["ResourceConfig"]["InstanceType"] = json!("ml.m5.larg");
        let f = check("CreateTrainingJobRequest", &req);
        assert!(f.constraints.iter().any(|c| c.starts_with("Value 'bad_name' at 'trainingJobName' failed to satisfy constraint: Member must satisfy regular expression pattern")), "{f:?}");
        assert!(f.constraints.iter().any(|c| c.starts_with("Value 'ml.m5.larg' at 'resourceConfig.instanceType' failed to satisfy constraint: Member must satisfy enum value set") && c.ends_with("... and 137 more] (did you mean 'ml.m5.large'?)")), "{f:?}");
    }

    #[test]
    fn lists_and_maps_are_checked_with_aws_paths() {
        let mut req = minimal();
        req["InputDataConfig"] = json!([{"ChannelName": "bad name!", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/k"}}}]);
        req["Environment"] = json!({"1BAD": "x"});
        req["HyperParameters"] = json!({"k": 3});
        let f = check("CreateTrainingJobRequest", &req);
        assert!(f.constraints.iter().any(|c| c.contains("at 'inputDataConfig.1.member.channelName'")), "{f:?}");
        assert!(f.constraints.iter().any(|c| c.contains("Value '1BAD' at 'environment.1BAD'")), "{f:?}");
        assert!(f.parameters.iter().any(|p| p.starts_with("Invalid type for parameter HyperParameters.k, value: 3, type: <class 'int'>, valid types: <class 'str'>")), "{f:?}");
    }

    #[test]
    fn a_newline_in_a_hyperparameter_fails_the_dot_star_pattern_as_on_aws() {
        let mut req = minimal();
        req["HyperParameters"] = json!({"ok": "ünïcode \\ \"q\"", "bad": "two\nlines"});
        let f = check("CreateTrainingJobRequest", &req);
        assert_eq!(f.constraints.len(), 1, "{f:?}");
        assert!(f.constraints[0].contains("at 'hyperParameters.bad'"), "{f:?}");
    }

    #[test]
    fn extensions_file_uris_and_local_instances() {
        let mut req = minimal();
        req["OutputDataConfig"]["S3OutputPath"] = json!("file:///tmp/out");
        req["ResourceConfig"]["InstanceType"] = json!("local");
        let f = check("CreateTrainingJobRequest", &req);
        assert!(f.constraints.is_empty(), "{f:?}");
        req["OutputDataConfig"]["S3OutputPath"] = json!("gs://bucket/out");
        let f = check("CreateTrainingJobRequest", &req);
        assert!(f.constraints.iter().any(|c| c.contains("at 'outputDataConfig.s3OutputPath'")), "{f:?}");
    }

    #[test]
    fn closest_only_suggests_plausible_typos() {
        assert_eq!(closest("HyperParameter", &["HyperParameters", "RoleArn"]), Some("HyperParameters"));
        assert_eq!(closest("Zzzzzzzz", &["HyperParameters", "RoleArn"]), None);
    }
}
