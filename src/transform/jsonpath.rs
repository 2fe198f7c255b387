//! The JSONPath subset batch transform's `InputFilter` and `OutputFilter` take, as AWS
//! documents it: `$`, a child by name (`.name`, `['name']`), an index (`[2]`, `[-1]`), a
//! slice (`[1:]`, `[:3]`, `[1:4]`), and unions of names or indexes (`['a','b']`, `[0,2]`).
//! A CSV record is filtered as the array of its fields.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Name(String),
    Names(Vec<String>),
    Index(i64),
    Indexes(Vec<i64>),
    Slice(Option<i64>, Option<i64>),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonPath {
    steps: Vec<Step>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "'{path}' is not a JSONPath batch transform supports ({why}); use e.g. $, $.features, $[1:] or $['id','features']"
)]
pub(crate) struct PathError {
    path: String,
    why: &'static str,
}

impl JsonPath {
    pub(crate) fn parse(path: &str) -> Result<JsonPath, PathError> {
        let bad = |why| PathError { path: path.into(), why };
        let rest = path.trim().strip_prefix('$').ok_or_else(|| bad("it must start with $"))?;
        let mut steps = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                if name.is_empty() {
                    return Err(bad("an empty name after '.'"));
                }
                steps.push(Step::Name(name.to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| bad("a '[' without its ']'"))?;
                steps.push(bracket(&after[..end]).ok_or_else(|| bad("a bracket it cannot read"))?);
                rest = &after[end + 1..];
            } else {
                return Err(bad("expected '.' or '['"));
            }
        }
        Ok(JsonPath { steps })
    }

    /// The value the path selects, or `None` when it selects nothing.
    pub(crate) fn select(&self, value: &Value) -> Option<Value> {
        let mut current = value.clone();
        for step in &self.steps {
            current = match step {
                Step::Name(name) => current.get(name)?.clone(),
                Step::Names(names) => {
                    let picked: Vec<Value> = names.iter().filter_map(|n| current.get(n).cloned()).collect();
                    Value::Array(picked)
                }
                Step::Index(i) => element(&current, *i)?.clone(),
                Step::Indexes(indexes) => {
                    Value::Array(indexes.iter().filter_map(|i| element(&current, *i).cloned()).collect())
                }
                Step::Slice(from, to) => {
                    let items = current.as_array()?;
                    let len = items.len() as i64;
                    let clamp = |i: i64| if i < 0 { (len + i).max(0) } else { i.min(len) } as usize;
                    let (a, b) = (clamp(from.unwrap_or(0)), clamp(to.unwrap_or(len)));
                    Value::Array(if a < b { items[a..b].to_vec() } else { Vec::new() })
                }
            };
        }
        Some(current)
    }
}

fn element(value: &Value, i: i64) -> Option<&Value> {
    let items = value.as_array()?;
    let index = if i < 0 { items.len() as i64 + i } else { i };
    items.get(usize::try_from(index).ok()?)
}

fn quoted(text: &str) -> Option<String> {
    let t = text.trim();
    let inner =
        t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).or_else(|| t.strip_prefix('"')?.strip_suffix('"'))?;
    Some(inner.to_string())
}

fn bracket(inside: &str) -> Option<Step> {
    let inside = inside.trim();
    if let Some((a, b)) = inside.split_once(':') {
        let bound = |s: &str| if s.trim().is_empty() { Some(None) } else { s.trim().parse().ok().map(Some) };
        return Some(Step::Slice(bound(a)?, bound(b)?));
    }
    let parts: Vec<&str> = inside.split(',').collect();
    if parts.iter().all(|p| quoted(p).is_some()) {
        let names: Vec<String> = parts.iter().filter_map(|p| quoted(p)).collect();
        return Some(if names.len() == 1 { Step::Name(names[0].clone()) } else { Step::Names(names) });
    }
    let indexes: Vec<i64> = parts.iter().map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
    Some(if indexes.len() == 1 { Step::Index(indexes[0]) } else { Step::Indexes(indexes) })
}

/// A CSV record as the array a filter sees: numbers as numbers, the rest as strings.
pub(crate) fn csv_fields(line: &str) -> Value {
    Value::Array(
        line.split(',')
            .map(|f| {
                let f = f.trim();
                match f.parse::<f64>() {
                    Ok(_) => serde_json::from_str(f).unwrap_or_else(|_| Value::String(f.into())),
                    Err(_) => Value::String(f.into()),
                }
            })
            .collect(),
    )
}

/// A filtered CSV value back as a line: an array's elements joined by commas.
pub(crate) fn csv_line(value: &Value) -> String {
    let field = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value {
        Value::Array(items) => items.iter().map(field).collect::<Vec<_>>().join(","),
        other => field(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn select(path: &str, value: Value) -> Option<Value> {
        JsonPath::parse(path).unwrap().select(&value)
    }

    #[test]
    fn the_documented_forms_select_what_aws_says() {
        let doc = json!({"id": 7, "features": [1, 2, 3], "label": "x"});
        assert_eq!(select("$", doc.clone()), Some(doc.clone()));
        assert_eq!(select("$.features", doc.clone()), Some(json!([1, 2, 3])));
        assert_eq!(select("$['features'][1:]", doc.clone()), Some(json!([2, 3])));
        assert_eq!(select("$['id','label']", doc.clone()), Some(json!([7, "x"])));
        assert_eq!(select("$.features[-1]", doc.clone()), Some(json!(3)));
        assert_eq!(select("$[0,2]", json!(["a", "b", "c"])), Some(json!(["a", "c"])));
        assert_eq!(select("$[:2]", json!(["a", "b", "c"])), Some(json!(["a", "b"])));
        assert_eq!(select("$.missing", doc), None);
    }

    #[test]
    fn csv_rows_are_arrays_of_their_fields() {
        let row = csv_fields("1,2.5,abc");
        assert_eq!(row, json!([1, 2.5, "abc"]));
        assert_eq!(csv_line(&JsonPath::parse("$[1:]").unwrap().select(&row).unwrap()), "2.5,abc");
    }

    #[test]
    fn other_syntax_is_refused_with_examples() {
        let err = JsonPath::parse("features[0]").unwrap_err();
        assert!(err.to_string().contains("must start with $"), "{err}");
        assert!(JsonPath::parse("$[?(@.a)]").is_err());
    }
}
