//! An image in AWS's registry form, `<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository>:<tag>`,
//! the form `sagemaker.image_uris.retrieve` returns for SageMaker's own images.

/// The parts of an ECR image reference that say which image it is. AWS publishes the same
/// image under a different account in every region, so the repository and tag name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EcrImage {
    pub(crate) account: String,
    pub(crate) region: String,
    pub(crate) repository: String,
    pub(crate) tag: String,
}

impl EcrImage {
    /// `None` for anything else (a local name, Docker Hub, another registry, a digest).
    pub(crate) fn parse(image: &str) -> Option<EcrImage> {
        let (host, rest) = image.split_once('/')?;
        let labels: Vec<&str> = host.split('.').collect();
        let suffix_ok = matches!(
            labels.as_slice(),
            [_, "dkr", "ecr", _, "amazonaws", "com"] | [_, "dkr", "ecr", _, "amazonaws", "com", "cn"]
        );
        let (account, region) = (labels.first()?, labels.get(3)?);
        if !suffix_ok || account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || region.is_empty() {
            return None;
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, tag),
            _ => (rest, "latest"),
        };
        if repository.is_empty() || tag.is_empty() || repository.contains('@') {
            return None;
        }
        Some(EcrImage {
            account: account.to_string(),
            region: region.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
        })
    }

    /// `repository:tag`, the key of the image map.
    pub(crate) fn short(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_s_registry_paths_parse_and_nothing_else_does() {
        let x = EcrImage::parse("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1").unwrap();
        assert_eq!((x.account.as_str(), x.region.as_str()), ("683313688378", "us-east-1"));
        assert_eq!(x.short(), "sagemaker-xgboost:1.7-1");
        let cn = EcrImage::parse("450853457545.dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-xgboost:1.5-1").unwrap();
        assert_eq!(cn.region, "cn-north-1");
        let untagged = EcrImage::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/algo").unwrap();
        assert_eq!(untagged.short(), "team/algo:latest");
        for other in [
            "smlocal/probe:latest",
            "ubuntu:22.04",
            "ghcr.io/org/img:1",
            "12345.dkr.ecr.us-east-1.amazonaws.com/x:1",
            "683313688378.dkr.ecr.us-east-1.amazonaws.com.evil.example/x:1",
            "683313688378.dkr.ecr.us-east-1.amazonaws.com/x@sha256:00",
        ] {
            assert_eq!(EcrImage::parse(other), None, "{other}");
        }
    }
}
