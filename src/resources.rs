//! What an instance type is (vCPU, memory, accelerators) and how much of this workstation a
//! container may take, keeping a reserve for the system (DESIGN §6).

const TABLE: &str = include_str!("instance-types.csv");
const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    pub instance_type: String,
    pub vcpu: u32,
    pub memory_bytes: u64,
    pub accelerators: u32,
    /// True when the figures follow AWS's regular sizing rather than the built-in table.
    pub derived: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResourceError {
    #[error(
        "instance type {0} has irregular GPU sizing that smlocal does not know; use a type from the table (e.g. ml.g5.xlarge) or ml.m5.* for CPU-only runs"
    )]
    UnknownSizing(String),
    #[error(
        "a memory reserve of {} leaves nothing for containers on this machine ({} in all)",
        human_bytes(*.reserve), human_bytes(*.memory)
    )]
    ReserveTooLarge { reserve: u64, memory: u64 },
}

/// The host this job runs on.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl Host {
    pub fn detect() -> Self {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        Host { cpus, memory_bytes: sys.total_memory() }
    }

    /// The default reserve: the larger of 1 GiB and 10% of host memory.
    pub fn default_reserve(&self) -> u64 {
        GIB.max(self.memory_bytes / 10)
    }
}

/// The cap one container gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU quota in billionths of a CPU, as Docker's `NanoCpus`.
    pub nano_cpus: i64,
}

/// Looks up an instance type: the table first, then AWS's regular sizing for families whose
/// sizing is regular. `local` means "this machine".
pub(crate) fn instance(instance_type: &str, host: &Host) -> Result<InstanceSpec, ResourceError> {
    if instance_type == "local" {
        return Ok(InstanceSpec {
            instance_type: instance_type.into(),
            vcpu: host.cpus,
            memory_bytes: host.memory_bytes,
            accelerators: 0,
            derived: true,
        });
    }
    for line in TABLE.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        if let [name, vcpu, mem, acc] = cells[..]
            && name == instance_type
        {
            return Ok(InstanceSpec {
                instance_type: name.into(),
                vcpu: vcpu.parse().unwrap_or(1),
                memory_bytes: mem.parse::<u64>().unwrap_or(1) * GIB,
                accelerators: acc.parse().unwrap_or(0),
                derived: false,
            });
        }
    }
    derive(instance_type).ok_or_else(|| ResourceError::UnknownSizing(instance_type.into()))
}

/// AWS's regular sizing (reference/instance-types.md): `large` 2 vCPU, `xlarge` 4, `Nxlarge`
/// 4·N; memory per vCPU by family: c 2 GiB, m 4, r 8; t3 medium 4 GiB, large 8.
fn derive(instance_type: &str) -> Option<InstanceSpec> {
    let rest = instance_type.strip_prefix("ml.")?;
    let (family, size) = rest.split_once('.')?;
    let per_vcpu_gib = match family.chars().next()? {
        'c' => 2,
        'm' | 't' => 4,
        'r' => 8,
        _ => return None,
    };
    let (vcpu, memory_gib) = match (family, size) {
        ("t3", "medium") => (2, 4),
        ("t3", "large") => (2, 8),
        (_, "medium" | "large") => (2, 2 * per_vcpu_gib),
        (_, "xlarge") => (4, 4 * per_vcpu_gib),
        (_, sized) => {
            let n: u32 = sized.strip_suffix("xlarge")?.parse().ok()?;
            (4 * n, 4 * n as u64 * per_vcpu_gib)
        }
    };
    Some(InstanceSpec {
        instance_type: instance_type.into(),
        vcpu,
        memory_bytes: memory_gib * GIB,
        accelerators: 0,
        derived: true,
    })
}

/// Memory the containers of a job may share: this machine's minus the reserve.
pub(crate) fn usable_memory(host: &Host, reserve: u64) -> u64 {
    host.memory_bytes.saturating_sub(reserve)
}

/// The cap for one container: its instance's memory times `scale` (1.0 unless the job is
/// oversubscribed), and its vCPUs but never more than this machine has. Swap is not added
/// (the caller sets swap = memory).
pub(crate) fn limits(spec: &InstanceSpec, host: &Host, scale: f64) -> Limits {
    let cpus = spec.vcpu.min(host.cpus).max(1);
    Limits {
        memory_bytes: (spec.memory_bytes as f64 * scale.min(1.0)) as u64,
        nano_cpus: i64::from(cpus) * 1_000_000_000,
    }
}

/// The cores host number `index` (from 0) is pinned to: `vcpu` of this machine's `cpus`,
/// hosts spread over distinct cores while they fit, then around again. None when the
/// instance has at least as many vCPUs as the machine has cores (it gets them all).
pub(crate) fn cpuset(index: usize, vcpu: u32, cpus: u32) -> Option<Vec<u32>> {
    if vcpu == 0 || vcpu >= cpus {
        return None;
    }
    let start = (index as u64 * u64::from(vcpu)) % u64::from(cpus);
    Some((0..u64::from(vcpu)).map(|k| ((start + k) % u64::from(cpus)) as u32).collect())
}

/// A cpuset as the kernel lists one (`0-1`, `3`, `0,2`), for Docker and for
/// `/sys/devices/system/cpu/online`.
pub(crate) fn cpu_list(cores: &[u32]) -> String {
    cores.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Sizes as people read them: `15.6 GiB`, `512.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Parses `512M`, `2G`, `1.5GiB`, `1073741824` into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.trim().parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    (number >= 0.0).then_some((number * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host { cpus: 2, memory_bytes: 24 * GIB };

    #[test]
    fn table_types_come_from_the_table() {
        let s = instance("ml.m5.xlarge", &HOST).unwrap();
        assert_eq!((s.vcpu, s.memory_bytes, s.derived), (4, 16 * GIB, false));
        let p3 = instance("ml.p3.2xlarge", &HOST).unwrap();
        assert_eq!((p3.memory_bytes, p3.accelerators), (61 * GIB, 1));
    }

    #[test]
    fn regular_families_are_derived_and_say_so() {
        let r = instance("ml.r5.2xlarge", &HOST).unwrap();
        assert_eq!((r.vcpu, r.memory_bytes, r.derived), (8, 64 * GIB, true));
        let c = instance("ml.c6i.large", &HOST).unwrap();
        assert_eq!((c.vcpu, c.memory_bytes), (2, 4 * GIB));
        assert!(matches!(instance("ml.p5.48xlarge", &HOST), Err(ResourceError::UnknownSizing(_))));
    }

    #[test]
    fn hosts_get_distinct_cores_while_they_fit() {
        assert_eq!(cpuset(0, 1, 2), Some(vec![0]));
        assert_eq!(cpuset(1, 1, 2), Some(vec![1]));
        assert_eq!(cpuset(2, 1, 2), Some(vec![0]), "around again");
        assert_eq!(cpuset(1, 2, 8), Some(vec![2, 3]));
        assert_eq!(cpuset(3, 3, 8), Some(vec![1, 2, 3]));
        assert_eq!(cpuset(0, 2, 2), None, "the whole machine");
        assert_eq!(cpuset(0, 4, 2), None);
        assert_eq!(cpu_list(&[2, 3]), "2,3");
    }

    #[test]
    fn caps_follow_the_instance_and_the_host_cpus() {
        let big = instance("ml.m5.4xlarge", &HOST).unwrap();
        let l = limits(&big, &HOST, 1.0);
        assert_eq!((l.memory_bytes, l.nano_cpus), (64 * GIB, 2_000_000_000));
        assert_eq!(limits(&big, &HOST, 0.25).memory_bytes, 16 * GIB);
        assert_eq!(usable_memory(&HOST, HOST.default_reserve()), 24 * GIB - 24 * GIB / 10);
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
