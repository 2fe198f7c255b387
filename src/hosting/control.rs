//! The control plane: each operation checks its request against botocore's model, acts on
//! the records, and answers in the shape and words SageMaker uses. Creating, updating and
//! deleting an endpoint answer at once and go on in the background (`deploy.rs`), as on AWS.

use super::store::{Definition, EndpointRecord, EndpointStatus, Kind};
use super::{Hosting, HostingError, deploy};
use crate::resources;
use crate::spec;
use crate::state::record::now;
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub(crate) type Answer = Result<Value, HostingError>;

fn text<'a>(body: &'a Value, field: &str) -> &'a str {
    body.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// The account a role belongs to (`arn:aws:iam::123456789012:role/R`), as training uses.
fn account_of_role(role: &str) -> Option<String> {
    role.split(':').nth(4).filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit())).map(str::to_string)
}

/// The account an ARN names.
fn account_of_arn(arn: &str) -> Option<String> {
    arn.split(':').nth(4).filter(|a| !a.is_empty()).map(str::to_string)
}

pub(crate) const DEFAULT_ACCOUNT: &str = "000000000000";

impl Hosting {
    /// SageMaker's ARNs carry the name in lower case.
    pub(crate) fn arn(&self, kind: Kind, name: &str, account: &str) -> String {
        format!("arn:aws:sagemaker:{}:{account}:{}/{}", self.region(), kind.arn_type(), name.to_ascii_lowercase())
    }

    fn missing(&self, kind: Kind, name: &str) -> HostingError {
        HostingError::Validation(format!(
            "Could not find {} \"{}\".",
            kind.noun(),
            self.arn(kind, name, DEFAULT_ACCOUNT)
        ))
    }

    pub(crate) fn definition(&self, kind: Kind, name: &str) -> Result<Definition, HostingError> {
        self.store.load::<Definition>(kind, name)?.ok_or_else(|| self.missing(kind, name))
    }

    pub(crate) fn endpoint(&self, name: &str) -> Result<EndpointRecord, HostingError> {
        self.store.load::<EndpointRecord>(Kind::Endpoint, name)?.ok_or_else(|| self.missing(Kind::Endpoint, name))
    }

    fn create_definition(&self, kind: Kind, name: &str, account: &str, body: &Value) -> Result<String, HostingError> {
        let arn = self.arn(kind, name, account);
        let mut request = body.as_object().cloned().unwrap_or_default();
        request.remove("Tags");
        let record = Definition { name: name.into(), arn: arn.clone(), creation_time: now(), request };
        if !self.store.create(kind, name, &record)? {
            return Err(HostingError::Validation(format!("Cannot create already existing {} \"{arn}\".", kind.noun())));
        }
        Ok(arn)
    }

    // ---- Models ----

    pub(crate) async fn create_model(&self, body: Value) -> Answer {
        spec::check("CreateModelInput", &body)?;
        let name = text(&body, "ModelName");
        let containers = model_containers(&body);
        let container = match containers.as_slice() {
            [] => {
                return Err(HostingError::Validation("Either PrimaryContainer or Containers must be provided.".into()));
            }
            [one] => *one,
            _ => {
                return Err(HostingError::Validation(
                    "smlocal serves models of one container: an inference pipeline (Containers with more than one entry) is not supported".into(),
                ));
            }
        };
        let image = container.get("Image").and_then(Value::as_str).ok_or_else(|| {
            HostingError::Validation(
                "PrimaryContainer.Image is required: smlocal serves images on this machine (a ModelPackageName refers to your AWS account)".into(),
            )
        })?;
        self.docker.image_id(image).await?;
        if let Some(uri) = super::model_data::ModelData::of(container).uri() {
            self.storage
                .check(uri)
                .map_err(|e| HostingError::Validation(format!("Could not access model data at {uri}: {e}")))?;
        }
        let account = account_of_role(text(&body, "ExecutionRoleArn")).unwrap_or_else(|| DEFAULT_ACCOUNT.into());
        let arn = self.create_definition(Kind::Model, name, &account, &body)?;
        Ok(json!({ "ModelArn": arn }))
    }

    pub(crate) fn describe_model(&self, body: Value) -> Answer {
        spec::check("DescribeModelInput", &body)?;
        let model = self.definition(Kind::Model, text(&body, "ModelName"))?;
        let mut out = model.request.clone();
        out.insert("ModelArn".into(), json!(model.arn));
        out.insert("CreationTime".into(), json!(model.creation_time));
        Ok(Value::Object(out))
    }

    pub(crate) fn list_models(&self, body: Value) -> Answer {
        spec::check("ListModelsInput", &body)?;
        let models: Vec<Definition> = self.store.list(Kind::Model)?;
        let rows = models
            .iter()
            .map(|m| Row::of(m, json!({"ModelName": m.name, "ModelArn": m.arn, "CreationTime": m.creation_time})));
        page(rows.collect(), &body, "Models")
    }

    pub(crate) fn delete_model(&self, body: Value) -> Answer {
        spec::check("DeleteModelInput", &body)?;
        let name = text(&body, "ModelName");
        if !self.store.remove(Kind::Model, name)? {
            return Err(self.missing(Kind::Model, name));
        }
        Ok(json!({}))
    }

    // ---- Endpoint configurations ----

    pub(crate) fn create_endpoint_config(&self, body: Value) -> Answer {
        spec::check("CreateEndpointConfigInput", &body)?;
        let name = text(&body, "EndpointConfigName");
        // What a workstation endpoint cannot be: said now, not found out at the first request.
        for (field, what) in [
            ("AsyncInferenceConfig", "asynchronous inference (InvokeEndpointAsync)"),
            ("ShadowProductionVariants", "shadow variants"),
            ("ExplainerConfig", "SageMaker Clarify explanations"),
        ] {
            if body.get(field).is_some() {
                return Err(HostingError::Validation(format!(
                    "{field}: smlocal does not serve {what}; remove it to host the variants as a real-time endpoint"
                )));
            }
        }
        if body.get("DataCaptureConfig").is_some() {
            tracing::warn!("{name}: DataCaptureConfig is kept in the record, but smlocal captures no requests");
        }
        let variants = body.get("ProductionVariants").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut account = None;
        let mut seen = std::collections::HashSet::new();
        for (i, variant) in variants.iter().enumerate() {
            let field = format!("ProductionVariants.{}", i + 1);
            let variant_name = text(variant, "VariantName");
            if !seen.insert(variant_name.to_string()) {
                return Err(HostingError::Validation(format!(
                    "The VariantName '{variant_name}' is used by more than one production variant; variant names must be unique"
                )));
            }
            let model = self.definition(Kind::Model, text(variant, "ModelName"))?;
            account = account.or_else(|| account_of_arn(&model.arn));
            self.variant_resources(variant)
                .map_err(|e| HostingError::Validation(format!("{field}.InstanceType: {e}")))?;
        }
        let account = account.unwrap_or_else(|| DEFAULT_ACCOUNT.into());
        let arn = self.create_definition(Kind::EndpointConfig, name, &account, &body)?;
        Ok(json!({ "EndpointConfigArn": arn }))
    }

    /// The instance a variant runs on: its `InstanceType`, or for `ServerlessConfig` an
    /// instance of its memory size.
    pub(crate) fn variant_resources(&self, variant: &Value) -> Result<resources::InstanceSpec, String> {
        let host = &self.config.settings.host;
        if let Some(serverless) = variant.get("ServerlessConfig") {
            let memory_mb = serverless.get("MemorySizeInMB").and_then(Value::as_u64).unwrap_or(2048);
            // Serverless endpoints get vCPUs in proportion to memory: one per 2 GiB here.
            return Ok(resources::InstanceSpec {
                instance_type: format!("serverless ({memory_mb} MB)"),
                vcpu: (memory_mb.div_ceil(2048) as u32).clamp(1, host.cpus),
                memory_bytes: memory_mb << 20,
                accelerators: 0,
                derived: true,
            });
        }
        let instance_type = variant
            .get("InstanceType")
            .and_then(Value::as_str)
            .ok_or_else(|| "each production variant needs an InstanceType (or a ServerlessConfig)".to_string())?;
        let spec = resources::instance(instance_type, host).map_err(|e| e.to_string())?;
        let usable = resources::usable_memory(host, self.config.settings.reserve);
        if spec.memory_bytes > usable && !self.config.settings.oversubscribe {
            return Err(format!(
                "{instance_type} has {} of memory, but this machine has {} for containers beside its reserve; pick a smaller instance type or start smlocal with --oversubscribe to cap it at what fits",
                resources::human_bytes(spec.memory_bytes),
                resources::human_bytes(usable)
            ));
        }
        Ok(spec)
    }

    pub(crate) fn describe_endpoint_config(&self, body: Value) -> Answer {
        spec::check("DescribeEndpointConfigInput", &body)?;
        let config = self.definition(Kind::EndpointConfig, text(&body, "EndpointConfigName"))?;
        let mut out = config.request.clone();
        out.insert("EndpointConfigArn".into(), json!(config.arn));
        out.insert("CreationTime".into(), json!(config.creation_time));
        Ok(Value::Object(out))
    }

    pub(crate) fn list_endpoint_configs(&self, body: Value) -> Answer {
        spec::check("ListEndpointConfigsInput", &body)?;
        let configs: Vec<Definition> = self.store.list(Kind::EndpointConfig)?;
        let rows = configs.iter().map(|c| {
            Row::of(
                c,
                json!({"EndpointConfigName": c.name, "EndpointConfigArn": c.arn, "CreationTime": c.creation_time}),
            )
        });
        page(rows.collect(), &body, "EndpointConfigs")
    }

    pub(crate) fn delete_endpoint_config(&self, body: Value) -> Answer {
        spec::check("DeleteEndpointConfigInput", &body)?;
        let name = text(&body, "EndpointConfigName");
        if !self.store.remove(Kind::EndpointConfig, name)? {
            return Err(self.missing(Kind::EndpointConfig, name));
        }
        Ok(json!({}))
    }

    // ---- Endpoints ----

    pub(crate) fn create_endpoint(self: &Arc<Self>, body: Value) -> Answer {
        spec::check("CreateEndpointInput", &body)?;
        let name = text(&body, "EndpointName");
        let config = self.definition(Kind::EndpointConfig, text(&body, "EndpointConfigName"))?;
        let account = account_of_arn(&config.arn).unwrap_or_else(|| DEFAULT_ACCOUNT.into());
        let arn = self.arn(Kind::Endpoint, name, &account);
        let record = EndpointRecord::new(name, &arn, &config.name);
        if !self.store.create(Kind::Endpoint, name, &record)? {
            return Err(HostingError::Validation(format!("Cannot create already existing endpoint \"{arn}\".")));
        }
        tracing::info!(endpoint = name, "creating from {}", config.name);
        self.spawn(deploy::create(self.clone(), name.to_string()));
        Ok(json!({ "EndpointArn": arn }))
    }

    pub(crate) fn describe_endpoint(&self, body: Value) -> Answer {
        spec::check("DescribeEndpointInput", &body)?;
        let record = self.endpoint(text(&body, "EndpointName"))?;
        Ok(self.endpoint_description(&record))
    }

    /// DescribeEndpoint's answer for a record.
    pub(crate) fn endpoint_description(&self, record: &EndpointRecord) -> Value {
        let variants: Vec<Value> = record
            .variants
            .iter()
            .map(|v| {
                json!({
                    "VariantName": v.name,
                    "DeployedImages": [{
                        "SpecifiedImage": v.image,
                        "ResolvedImage": v.resolved_image,
                        "ResolutionTime": record.last_modified_time,
                    }],
                    "CurrentWeight": v.weight,
                    "DesiredWeight": v.weight,
                    "CurrentInstanceCount": v.instances.len(),
                    "DesiredInstanceCount": v.instances.len(),
                })
            })
            .collect();
        let mut out = json!({
            "EndpointName": record.name,
            "EndpointArn": record.arn,
            "EndpointConfigName": record.config_name,
            "EndpointStatus": record.status.as_str(),
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        });
        if !variants.is_empty() {
            out["ProductionVariants"] = Value::Array(variants);
        }
        if let Some(reason) = &record.failure_reason {
            out["FailureReason"] = json!(reason);
        }
        out
    }

    pub(crate) fn list_endpoints(&self, body: Value) -> Answer {
        spec::check("ListEndpointsInput", &body)?;
        let endpoints: Vec<EndpointRecord> = self.store.list(Kind::Endpoint)?;
        let rows = endpoints
            .iter()
            .map(|e| Row {
                name: e.name.clone(),
                created: e.creation_time,
                modified: e.last_modified_time,
                status: Some(e.status.as_str()),
                summary: json!({
                    "EndpointName": e.name,
                    "EndpointArn": e.arn,
                    "CreationTime": e.creation_time,
                    "LastModifiedTime": e.last_modified_time,
                    "EndpointStatus": e.status.as_str(),
                }),
            })
            .collect();
        page(rows, &body, "Endpoints")
    }

    pub(crate) fn update_endpoint(self: &Arc<Self>, body: Value) -> Answer {
        spec::check("UpdateEndpointInput", &body)?;
        let name = text(&body, "EndpointName");
        let config = self.definition(Kind::EndpointConfig, text(&body, "EndpointConfigName"))?;
        let Some(_owner) = super::OwnerLock::try_take(&self.store, name) else {
            return Err(HostingError::Validation(format!(
                "Cannot update in-progress endpoint \"{}\".",
                self.arn(Kind::Endpoint, name, DEFAULT_ACCOUNT)
            )));
        };
        let mut record = self.endpoint(name)?;
        if record.status != EndpointStatus::InService {
            return Err(HostingError::Validation(format!(
                "Cannot update {} endpoint \"{}\".",
                if record.status == EndpointStatus::Failed { "failed" } else { "in-progress" },
                record.arn
            )));
        }
        record.pending_config = Some(config.name.clone());
        record.failure_reason = None;
        record.set_status(EndpointStatus::Updating);
        self.store.save_endpoint(&record)?;
        tracing::info!(endpoint = name, "updating to {}", config.name);
        self.spawn(deploy::update(self.clone(), name.to_string()));
        Ok(json!({ "EndpointArn": record.arn }))
    }

    pub(crate) fn delete_endpoint(self: &Arc<Self>, body: Value) -> Answer {
        spec::check("DeleteEndpointInput", &body)?;
        let name = text(&body, "EndpointName");
        let mut record = self.endpoint(name)?;
        if matches!(record.status, EndpointStatus::Creating | EndpointStatus::Updating)
            && super::OwnerLock::try_take(&self.store, name).is_none()
        {
            return Err(HostingError::Validation(format!("Cannot delete in-progress endpoint \"{}\".", record.arn)));
        }
        if record.status != EndpointStatus::Deleting {
            record.set_status(EndpointStatus::Deleting);
            self.store.save_endpoint(&record)?;
        }
        tracing::info!(endpoint = name, "deleting");
        self.spawn(deploy::delete(self.clone(), name.to_string()));
        Ok(json!({}))
    }
}

/// The container definitions of a CreateModel request.
pub(crate) fn model_containers(request: &Value) -> Vec<&Value> {
    match request.get("PrimaryContainer") {
        Some(primary) => vec![primary],
        None => request.get("Containers").and_then(Value::as_array).map(|c| c.iter().collect()).unwrap_or_default(),
    }
}

/// One resource in a listing, with what its filters and sort keys read.
pub(crate) struct Row {
    pub name: String,
    pub created: f64,
    pub modified: f64,
    pub status: Option<&'static str>,
    pub summary: Value,
}

impl Row {
    fn of(d: &Definition, summary: Value) -> Row {
        Row { name: d.name.clone(), created: d.creation_time, modified: d.creation_time, status: None, summary }
    }
}

fn time_field(body: &Value, field: &str) -> Option<f64> {
    match body.get(field)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp_nanos() as f64 / 1e9),
        _ => None,
    }
}

/// The List* operations' shared filters, order and pages (`NextToken` is the position).
pub(crate) fn page(mut rows: Vec<Row>, body: &Value, member: &str) -> Answer {
    if let Some(part) = body.get("NameContains").and_then(Value::as_str) {
        let part = part.to_ascii_lowercase();
        rows.retain(|r| r.name.to_ascii_lowercase().contains(&part));
    }
    let bound = |field: &str, keep: &dyn Fn(&Row, f64) -> bool, rows: &mut Vec<Row>| {
        if let Some(t) = time_field(body, field) {
            rows.retain(|r| keep(r, t));
        }
    };
    bound("CreationTimeBefore", &|r, t| r.created < t, &mut rows);
    bound("CreationTimeAfter", &|r, t| r.created > t, &mut rows);
    bound("LastModifiedTimeBefore", &|r, t| r.modified < t, &mut rows);
    bound("LastModifiedTimeAfter", &|r, t| r.modified > t, &mut rows);
    if let Some(status) = body.get("StatusEquals").and_then(Value::as_str) {
        rows.retain(|r| r.status == Some(status));
    }
    match body.get("SortBy").and_then(Value::as_str) {
        Some("Name") => rows.sort_by(|a, b| a.name.cmp(&b.name)),
        Some("Status") => rows.sort_by(|a, b| a.status.cmp(&b.status).then(a.name.cmp(&b.name))),
        _ => rows.sort_by(|a, b| a.created.total_cmp(&b.created).then(a.name.cmp(&b.name))),
    }
    if body.get("SortOrder").and_then(Value::as_str) != Some("Ascending") {
        rows.reverse();
    }
    let start = match body.get("NextToken").and_then(Value::as_str) {
        None => 0,
        Some(token) => {
            token.parse::<usize>().map_err(|_| HostingError::Validation(format!("Invalid pagination token {token}")))?
        }
    };
    let max = body.get("MaxResults").and_then(Value::as_u64).unwrap_or(10) as usize;
    let more = rows.len() > start + max;
    let listed: Vec<Value> = rows.into_iter().skip(start).take(max).map(|r| r.summary).collect();
    let mut out = Map::new();
    out.insert(member.into(), Value::Array(listed));
    if more {
        out.insert("NextToken".into(), json!((start + max).to_string()));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(names: &[(&str, f64)]) -> Vec<Row> {
        names
            .iter()
            .map(|(n, t)| Row { name: n.to_string(), created: *t, modified: *t, status: None, summary: json!(n) })
            .collect()
    }

    #[test]
    fn listings_are_newest_first_filtered_and_paged() {
        let all = || rows(&[("a-one", 1.0), ("b-two", 2.0), ("c-one", 3.0)]);
        let got = page(all(), &json!({}), "X").unwrap();
        assert_eq!(got["X"], json!(["c-one", "b-two", "a-one"]));
        let got =
            page(all(), &json!({"NameContains": "ONE", "SortBy": "Name", "SortOrder": "Ascending"}), "X").unwrap();
        assert_eq!(got["X"], json!(["a-one", "c-one"]));
        let first = page(all(), &json!({"MaxResults": 2}), "X").unwrap();
        assert_eq!(first["X"], json!(["c-one", "b-two"]));
        let rest = page(all(), &json!({"MaxResults": 2, "NextToken": first["NextToken"]}), "X").unwrap();
        assert_eq!(rest["X"], json!(["a-one"]));
        assert!(rest.get("NextToken").is_none());
        let got = page(all(), &json!({"CreationTimeAfter": 1.5}), "X").unwrap();
        assert_eq!(got["X"], json!(["c-one", "b-two"]));
    }

    #[test]
    fn accounts_come_from_the_role_or_the_arn() {
        assert_eq!(account_of_role("arn:aws:iam::123456789012:role/R").as_deref(), Some("123456789012"));
        assert_eq!(account_of_role("SageMakerRole"), None);
        assert_eq!(account_of_arn("arn:aws:sagemaker:us-east-1:111:model/m").as_deref(), Some("111"));
    }
}
