//! The control plane: each operation checks its request against botocore's model, acts on
//! the records, and answers in the shape and words SageMaker uses. Creating, updating and
//! deleting an endpoint answer at once and go on in the background (`deploy.rs`), as on AWS.

use super::store::{Definition, EndpointRecord, EndpointStatus, Kind};
use super::{Hosting, HostingError, deploy};
use crate::resources;
use crate::spec;
use crate::state::listing::{ListError, ListQuery, Page};
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
        crate::images::resolve(&self.docker, self.state.root(), image).await?;
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
        listed(self.store.page(Kind::Model, &list_query(&body)), "Models")
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
        listed(self.store.page(Kind::EndpointConfig, &list_query(&body)), "EndpointConfigs")
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
        listed(self.store.page(Kind::Endpoint, &list_query(&body)), "Endpoints")
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

fn time_field(body: &Value, field: &str) -> Option<f64> {
    match body.get(field)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp_nanos() as f64 / 1e9),
        _ => None,
    }
}

/// The List* operations' shared filters, order and page (times as epoch seconds or RFC 3339).
pub(crate) fn list_query(body: &Value) -> ListQuery {
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_string);
    ListQuery {
        creation_time_after: time_field(body, "CreationTimeAfter"),
        creation_time_before: time_field(body, "CreationTimeBefore"),
        last_modified_time_after: time_field(body, "LastModifiedTimeAfter"),
        last_modified_time_before: time_field(body, "LastModifiedTimeBefore"),
        name_contains: text("NameContains"),
        status_equals: text("StatusEquals"),
        sort_by: text("SortBy"),
        sort_order: text("SortOrder"),
        max_results: body.get("MaxResults").and_then(Value::as_u64).map(|m| m as usize),
        next_token: text("NextToken"),
        ..ListQuery::default()
    }
}

/// A page as the List* operations answer it: the summaries under `member`, and `NextToken`.
pub(crate) fn listed(page: Result<Page, ListError>, member: &str) -> Answer {
    let page = page.map_err(|e| HostingError::Validation(e.to_string()))?;
    let mut out = Map::new();
    out.insert(member.into(), Value::Array(page.summaries));
    if let Some(token) = page.next_token {
        out.insert("NextToken".into(), json!(token));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_requests_read_as_queries() {
        let q = list_query(&json!({"NameContains": "one", "CreationTimeAfter": "2026-01-01T00:00:00Z",
            "LastModifiedTimeBefore": 5.5, "MaxResults": 2, "SortBy": "Name"}));
        assert_eq!(q.name_contains.as_deref(), Some("one"));
        assert_eq!(q.creation_time_after, Some(1_767_225_600.0));
        assert_eq!(q.last_modified_time_before, Some(5.5));
        assert_eq!((q.max_results, q.sort_by.as_deref()), (Some(2), Some("Name")));
        let bad = listed(Err(ListError::Token("x".into())), "Models").unwrap_err();
        assert!(bad.to_string().contains("Invalid pagination token"), "{bad}");
    }

    #[test]
    fn accounts_come_from_the_role_or_the_arn() {
        assert_eq!(account_of_role("arn:aws:iam::123456789012:role/R").as_deref(), Some("123456789012"));
        assert_eq!(account_of_role("SageMakerRole"), None);
        assert_eq!(account_of_arn("arn:aws:sagemaker:us-east-1:111:model/m").as_deref(), Some("111"));
    }
}
