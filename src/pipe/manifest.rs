//! Augmented manifests (`S3DataType: AugmentedManifestFile`, DESIGN §13): JSON Lines, one
//! JSON object per line; `AttributeNames` pick the fields sent and their order. A `-ref`
//! attribute names an object whose bytes are sent; any other is sent as text: a string
//! without its quotes, a number exactly as written, `true`/`false`/`null`, an object or array
//! as compact JSON.

use serde_json::value::RawValue;
use std::collections::HashMap;

/// One attribute of a line, as it is sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attribute {
    /// A `-ref` attribute: the URI of the object whose bytes are sent.
    Ref(String),
    Text(Vec<u8>),
}

/// One line of the manifest: its number (from 1, for messages) and its attributes in the
/// order `AttributeNames` gives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub(crate) number: usize,
    pub(crate) attributes: Vec<Attribute>,
}

/// Why a manifest cannot be sent; every reason names the line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ManifestError {
    #[error("line {line} is not a JSON object: {reason}")]
    NotAnObject { line: usize, reason: String },
    #[error("line {line} has no attribute '{name}' (AttributeNames lists it)")]
    Missing { line: usize, name: String },
    #[error("line {line}: attribute '{name}' must be an S3 URI (s3://bucket/key), as every '-ref' attribute is")]
    NotAUri { line: usize, name: String },
    #[error("it holds no lines; SageMaker refuses a channel with no data")]
    Empty,
}

/// Every non-blank line of `bytes`, with the attributes `names` picks.
pub(crate) fn parse(bytes: &[u8], names: &[String]) -> Result<Vec<Line>, ManifestError> {
    let mut lines = Vec::new();
    for (i, text) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let fields: HashMap<String, &RawValue> =
            serde_json::from_slice(text).map_err(|e| ManifestError::NotAnObject { line, reason: e.to_string() })?;
        let mut attributes = Vec::with_capacity(names.len());
        for name in names {
            let raw = fields.get(name).ok_or_else(|| ManifestError::Missing { line, name: name.clone() })?;
            if name.ends_with("-ref") {
                let uri: String = serde_json::from_str(raw.get())
                    .ok()
                    .filter(|u: &String| u.starts_with("s3://") || u.starts_with("file://"))
                    .ok_or_else(|| ManifestError::NotAUri { line, name: name.clone() })?;
                attributes.push(Attribute::Ref(uri));
            } else {
                attributes.push(Attribute::Text(text_of(raw)));
            }
        }
        lines.push(Line { number: line, attributes });
    }
    if lines.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(lines)
}

/// A plain attribute's bytes: what the JSON says, not how it is quoted.
fn text_of(raw: &RawValue) -> Vec<u8> {
    let json = raw.get().trim();
    match json.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(json).map(String::into_bytes).unwrap_or_default(),
        Some(b'{') | Some(b'[') => {
            serde_json::from_str::<serde_json::Value>(json).map(|v| v.to_string().into_bytes()).unwrap_or_default()
        }
        // Numbers as written (1e3 stays 1e3), true, false, null.
        _ => json.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn attributes_are_picked_in_the_order_named_and_sent_as_text_or_refs() {
        let manifest = br#"{"source-ref": "s3://b/a.jpg", "label": 1e3, "meta": {"k": [1, 2]}, "name": "caf\u00e9"}

{"label": 2, "source-ref": "s3://b/b.jpg", "meta": null, "name": "x"}
"#;
        let lines = parse(manifest, &names(&["label", "source-ref", "meta", "name"])).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].number, 3);
        assert_eq!(
            lines[0].attributes,
            vec![
                Attribute::Text(b"1e3".to_vec()),
                Attribute::Ref("s3://b/a.jpg".into()),
                Attribute::Text(br#"{"k":[1,2]}"#.to_vec()),
                Attribute::Text("café".as_bytes().to_vec()),
            ]
        );
        assert_eq!(lines[1].attributes[2], Attribute::Text(b"null".to_vec()));
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse(b"{\"a\": 1}\n{\"b\": 2}\n", &names(&["a"])).unwrap_err();
        assert_eq!(err, ManifestError::Missing { line: 2, name: "a".into() });
        let err = parse(b"{\"a-ref\": 3}\n", &names(&["a-ref"])).unwrap_err();
        assert!(err.to_string().contains("line 1: attribute 'a-ref' must be an S3 URI"), "{err}");
        assert!(matches!(parse(b"[1]\n", &names(&["a"])), Err(ManifestError::NotAnObject { line: 1, .. })));
        assert_eq!(parse(b"\n \n", &names(&["a"])), Err(ManifestError::Empty));
    }
}
