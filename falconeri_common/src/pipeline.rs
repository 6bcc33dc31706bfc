//! Pipeline specs: the Pachyderm-style JSON format users write, its parsing
//! and its validation. Pure: no I/O.
//!
//! Problems are reported with a JSON path such as `transform.cmd` or
//! `input.cross[1].union[0].atom.repo`: object keys joined by `.`, array
//! indices as `[i]`, map keys as they are written, and `(root)` for the whole
//! document. An unknown field is reported at its own path. Validation always
//! writes an atom as `atom`, even when the document spells it `pfs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    time::Duration,
};

use schemars::JsonSchema;

use crate::glob::{GlobMatcher, KeyTemplate};
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, Visitor},
};

/// The longest pipeline name we accept. Kubernetes names are limited to 63
/// characters, and job names append a suffix to the pipeline name.
pub const MAX_PIPELINE_NAME_LEN: usize = 50;

/// The repo name reserved for a datum's outputs (`pfs/out`).
pub const OUTPUT_REPO: &str = "out";

/// URI schemes that inputs and egress may use.
pub const SUPPORTED_SCHEMES: &[&str] = &["file", "s3", "gs"];

/// A complete pipeline spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub pipeline: PipelineInfo,
    pub transform: Transform,
    pub parallelism_spec: ParallelismSpec,
    pub resource_requests: ResourceRequests,
    /// How many times a datum may be attempted in all, the first included.
    /// `null` means the default, as falconeri v2 accepted.
    #[serde(
        default = "default_datum_tries",
        deserialize_with = "datum_tries_or_default"
    )]
    #[schemars(with = "Option<u32>")]
    pub datum_tries: u32,
    /// The longest the whole job may run, e.g. "2h 30m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_timeout: Option<HumanDuration>,
    /// The longest one attempt at one datum may run, e.g. "10m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datum_timeout: Option<HumanDuration>,
    /// How many datums a worker reserves in one request and reports in one
    /// request (1 to 1,000; default 1). Worth raising for tiny datums,
    /// where the round trips cost more than the work: each datum keeps its
    /// own claim, attempt, tries and outcome, and one failing never marks
    /// another done. A worker runs its batch's datums one after another.
    #[serde(default = "default_datums_per_reservation")]
    pub datums_per_reservation: u32,
    /// Kubernetes node labels that worker pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes taints that worker pods tolerate, so they may run on
    /// dedicated (say, GPU or spot) nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Skip each datum whose fingerprint (transform, egress and input files'
    /// identities) matches a datum that succeeded in an earlier job of
    /// this pipeline; its outputs from that job stay where they are.
    /// `falconeri job run --incremental` turns it on for one run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incremental: bool,
    pub input: Input,
    pub egress: Egress,
    /// How many datums may fail for good while the job still ends `done`:
    /// a count (`5`) or a percentage of its datums (`"2%"`). Crossing it
    /// fails the job at once. Absent: every datum runs, and one failure
    /// makes the job end `error`. See [`crate::failure_policy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_datums: Option<crate::failure_policy::MaxFailedDatums>,
    /// What a failed command's exit code or signal means: rules read in
    /// order, the first match deciding (`retry`, `fail_datum`,
    /// `fail_job`); unmatched failures are retried up to `datum_tries`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_exit: Vec<crate::failure_policy::ExitRule>,
}

fn default_datum_tries() -> u32 {
    1
}

fn datum_tries_or_default<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    Ok(Option::<u32>::deserialize(deserializer)?.unwrap_or_else(default_datum_tries))
}

fn default_datums_per_reservation() -> u32 {
    1
}

/// The largest `datums_per_reservation`: a batch's leases are renewed by
/// one heartbeat and its reports are one request, both bounded in size.
pub const MAX_DATUMS_PER_RESERVATION: u32 = 1_000;

/// The pipeline's identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineInfo {
    /// Letters, digits, '-' and '_', starting with a letter, at most 50 long.
    pub name: String,
}

/// What to run for each datum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// The program and its arguments, run without a shell.
    pub cmd: Vec<String>,
    /// The Docker image to run `cmd` in.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Extra environment variables for `cmd`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kubernetes secrets to mount or expose as environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
    /// The Kubernetes service account the workers run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// Kubernetes' `imagePullPolicy`, spelled the same way.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// A Kubernetes toleration, with the fields and spellings of Kubernetes'
/// own (`toleration_seconds` in snake case, like the rest of the spec).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// The taint key to tolerate; leave it out (with `Exists`) to tolerate
    /// every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (the default) matches `value`; `Exists` matches any value.
    #[serde(default)]
    pub operator: TolerationOperator,
    /// The taint value to match with `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The taint effect to tolerate; leave it out to tolerate every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    /// With `NoExecute`: how long a pod stays on a node after the taint
    /// appears (default: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<u32>,
}

/// How a toleration matches a taint's value, spelled as in Kubernetes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

impl TolerationOperator {
    /// Kubernetes' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TolerationOperator::Equal => "Equal",
            TolerationOperator::Exists => "Exists",
        }
    }
}

/// A taint effect, spelled as in Kubernetes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    /// Kubernetes' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

impl ImagePullPolicy {
    /// Kubernetes' spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// A Kubernetes secret made available to the workers.
//
// Deserialized through `RawSecret`, which rejects unknown fields and gives a
// malformed entry a message saying what is expected, rather than serde's
// "did not match any variant".
#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(untagged)]
pub enum Secret {
    /// Mount every key of the secret as a file under `mount_path`.
    #[schemars(extend("additionalProperties" = false))]
    Mount { name: String, mount_path: String },
    /// Expose one `key` of the secret as the environment variable `env_var`.
    #[schemars(extend("additionalProperties" = false))]
    Env {
        name: String,
        key: String,
        env_var: String,
        /// Start the workers even when the secret or its key is missing;
        /// the variable is then unset (falconeri v2's field; Kubernetes'
        /// `secretKeyRef.optional`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        optional: bool,
    },
}

impl Secret {
    /// The name of the Kubernetes secret.
    pub fn name(&self) -> &str {
        match self {
            Secret::Mount { name, .. } | Secret::Env { name, .. } => name,
        }
    }
}

/// Every field either form of [`Secret`] may have.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    name: String,
    mount_path: Option<String>,
    key: Option<String>,
    env_var: Option<String>,
    optional: Option<bool>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawSecret::deserialize(deserializer)?;
        match (raw.mount_path, raw.key, raw.env_var) {
            (Some(_), None, None) if raw.optional.is_some() => Err(de::Error::custom(
                "`optional` applies only to a secret exposed as an environment variable \
                 (`key` and `env_var`), as in falconeri v2",
            )),
            (Some(mount_path), None, None) => Ok(Secret::Mount {
                name: raw.name,
                mount_path,
            }),
            (None, Some(key), Some(env_var)) => Ok(Secret::Env {
                name: raw.name,
                key,
                env_var,
                optional: raw.optional.unwrap_or(false),
            }),
            _ => Err(de::Error::custom(
                "a secret needs either `mount_path` (to mount it as files) or both `key` and \
                 `env_var` (to expose one key as an environment variable), not a mix",
            )),
        }
    }
}

/// How many workers to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParallelismSpec {
    /// The number of workers, at least 1.
    pub constant: u32,
}

/// What each worker asks Kubernetes for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequests {
    /// A Kubernetes quantity of bytes, such as "750Mi", "1Gi" or "512M".
    pub memory: String,
    /// CPUs as a number (0.5) or a Kubernetes quantity ("500m").
    pub cpu: CpuQuantity,
    /// Whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
}

impl ResourceRequests {
    /// The memory request in bytes, rounded up to a whole byte as Kubernetes
    /// does.
    pub fn memory_bytes(&self) -> Result<u64, QuantityError> {
        let quantity = Quantity::parse(&self.memory)?;
        if quantity.negative && quantity.mantissa != 0 {
            return Err(QuantityError::new("must not be negative"));
        }
        let (bytes, _exact) = quantity.scaled(0)?;
        to_u64(bytes)
    }

    /// The CPU request in thousandths of a core.
    pub fn cpu_millis(&self) -> Result<u64, QuantityError> {
        self.cpu.millis()
    }
}

/// A CPU request: a JSON number of cores, or a Kubernetes quantity string.
//
// The original form is kept so that a spec serializes as it was written.
#[derive(Debug, Clone, Serialize, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum CpuQuantity {
    /// Cores, e.g. `0.5` or `2`.
    Cores(serde_json::Number),
    /// A Kubernetes quantity, e.g. `"500m"` or `"2"`.
    Quantity(String),
}

impl CpuQuantity {
    /// The request in thousandths of a core. Kubernetes rejects finer
    /// precision, so we do too rather than silently rounding.
    pub fn millis(&self) -> Result<u64, QuantityError> {
        let text = self.to_string();
        let quantity = Quantity::parse(&text)?;
        if quantity.negative && quantity.mantissa != 0 {
            return Err(QuantityError::new("must be greater than zero"));
        }
        let (millis, exact) = quantity.scaled(-3)?;
        if !exact {
            return Err(QuantityError::new(
                "must be a whole number of millicores (finer than \"1m\" is not allowed)",
            ));
        }
        to_u64(millis)
    }
}

/// Writes the request in a form Kubernetes accepts as a quantity.
impl fmt::Display for CpuQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuQuantity::Cores(n) => write!(f, "{n}"),
            CpuQuantity::Quantity(s) => f.write_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for CpuQuantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CpuVisitor;

        impl Visitor<'_> for CpuVisitor {
            type Value = CpuQuantity;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of CPUs (0.5) or a Kubernetes quantity string (\"500m\")")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(CpuQuantity::Cores(v.into()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(CpuQuantity::Cores(v.into()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                serde_json::Number::from_f64(v)
                    .map(CpuQuantity::Cores)
                    .ok_or_else(|| E::custom("CPU count must be a finite number"))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CpuQuantity::Quantity(v.to_owned()))
            }
        }

        deserializer.deserialize_any(CpuVisitor)
    }
}

/// Why a resource quantity is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuantityError(String);

impl QuantityError {
    fn new(message: impl Into<String>) -> Self {
        QuantityError(message.into())
    }
}

fn to_u64(value: u128) -> Result<u64, QuantityError> {
    u64::try_from(value).map_err(|_| QuantityError::new("is too large"))
}

/// A parsed Kubernetes quantity: `mantissa * 10^exp10 * 1024^pow1024`.
///
/// Kept exact (integers only) so that "0.1" CPUs is exactly 100 millicores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    pow1024: u32,
}

/// The largest power of ten that fits in a `u128`.
const MAX_U128_POW10: u32 = 38;

impl Quantity {
    /// Parses Kubernetes' quantity grammar: an optionally signed decimal
    /// number followed by a binary suffix (Ki…Ei), a decimal suffix
    /// (n, u, m, k, M…E) or a decimal exponent (e3, E-2).
    fn parse(text: &str) -> Result<Quantity, QuantityError> {
        const HINT: &str = "(examples: \"500m\", \"2\", \"750Mi\", \"1Gi\", \"512M\", \"1e3\")";
        let malformed = || QuantityError::new(format!("`{text}` is not a quantity {HINT}"));

        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_len);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((int_part, frac_part)) => (int_part, frac_part),
            None => (number, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(malformed());
        }

        let mut mantissa: u128 = 0;
        for digit in int_part.bytes().chain(frac_part.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(u128::from(digit - b'0')))
                .ok_or_else(|| QuantityError::new(format!("`{text}` has too many digits")))?;
        }

        let (suffix_exp10, pow1024) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 1),
            "Mi" => (0, 2),
            "Gi" => (0, 3),
            "Ti" => (0, 4),
            "Pi" => (0, 5),
            "Ei" => (0, 6),
            _ => {
                let exponent = suffix
                    .strip_prefix(['e', 'E'])
                    .filter(|e| !e.is_empty())
                    .ok_or_else(malformed)?;
                // `i32::from_str` would also accept a second sign after ours.
                let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed());
                }
                let exp = exponent.parse::<i32>().map_err(|_| {
                    QuantityError::new(format!("`{text}` has an exponent out of range"))
                })?;
                (exp, 0)
            }
        };

        let frac_len = i32::try_from(frac_part.len())
            .map_err(|_| QuantityError::new(format!("`{text}` has too many digits")))?;
        let exp10 = suffix_exp10
            .checked_sub(frac_len)
            .ok_or_else(|| QuantityError::new(format!("`{text}` has an exponent out of range")))?;
        Ok(Quantity {
            negative,
            mantissa,
            exp10,
            pow1024,
        })
    }

    /// The magnitude in units of `10^unit_exp10`, rounded up, and whether it
    /// was exact.
    fn scaled(&self, unit_exp10: i32) -> Result<(u128, bool), QuantityError> {
        let too_large = || QuantityError::new("is too large");
        if self.mantissa == 0 {
            return Ok((0, true));
        }
        let value = 1024u128
            .checked_pow(self.pow1024)
            .and_then(|factor| self.mantissa.checked_mul(factor))
            .ok_or_else(too_large)?;
        let exp = i64::from(self.exp10) - i64::from(unit_exp10);
        if exp >= 0 {
            let exp = u32::try_from(exp).map_err(|_| too_large())?;
            let value = 10u128
                .checked_pow(exp)
                .and_then(|factor| value.checked_mul(factor))
                .ok_or_else(too_large)?;
            Ok((value, true))
        } else {
            match u32::try_from(-exp)
                .ok()
                .filter(|e| *e <= MAX_U128_POW10)
                .map(|e| 10u128.pow(e))
            {
                Some(divisor) => {
                    let remainder = value % divisor;
                    Ok((value / divisor + u128::from(remainder != 0), remainder == 0))
                }
                // A positive value below 10^38 divided by more than 10^38
                // is a fraction of one unit, which rounds up to one.
                None => Ok((1, false)),
            }
        }
    }
}

/// A duration written for people: "90s", "5m", "2h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl From<Duration> for HumanDuration {
    fn from(duration: Duration) -> Self {
        HumanDuration(duration)
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Self {
        duration.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"90s\", \"5m\" or \"2h 30m\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v)
                    .map(HumanDuration)
                    .map_err(|e| E::custom(format!("invalid duration `{v}`: {e}")))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HumanDuration".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration such as \"90s\", \"5m\" or \"2h 30m\" (humantime syntax).",
            "examples": ["90s", "5m", "2h 30m"]
        })
    }
}

/// Where the data comes from and how it is cut into datums.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
#[schemars(transform = add_pfs_alias)]
pub enum Input {
    /// One location in storage (`pfs` is accepted as another name).
    #[serde(alias = "pfs")]
    Atom(AtomInput),
    /// Every combination of one datum from each input.
    Cross(Vec<Input>),
    /// The datums of every input, one after another.
    Union(Vec<Input>),
    /// One datum per combination of datums of its atoms whose `join_on`
    /// keys are equal (Pachyderm's join; `outer_join` keeps unmatched ones).
    Join(Vec<Input>),
    /// One datum per `group_by` key, holding every datum of its atoms with
    /// that key (Pachyderm's group).
    Group(Vec<Input>),
}

impl Input {
    /// Every atom, depth first, in document order. Listings passed to
    /// [`crate::plan::plan_datums`] follow this order.
    pub fn atoms(&self) -> Vec<&AtomInput> {
        let mut atoms = Vec::new();
        self.collect_atoms(&mut atoms);
        atoms
    }

    fn collect_atoms<'a>(&'a self, atoms: &mut Vec<&'a AtomInput>) {
        match self {
            Input::Atom(atom) => atoms.push(atom),
            Input::Cross(inputs)
            | Input::Union(inputs)
            | Input::Join(inputs)
            | Input::Group(inputs) => {
                for input in inputs {
                    input.collect_atoms(atoms);
                }
            }
        }
    }

    fn atoms_mut(&mut self) -> Vec<&mut AtomInput> {
        match self {
            Input::Atom(atom) => vec![atom],
            Input::Cross(inputs)
            | Input::Union(inputs)
            | Input::Join(inputs)
            | Input::Group(inputs) => inputs.iter_mut().flat_map(Input::atoms_mut).collect(),
        }
    }
}

/// Lists `pfs`, serde's alias of `atom`, in the schema too, so that editors
/// accept the specs that use it.
fn add_pfs_alias(schema: &mut schemars::Schema) {
    let Some(serde_json::Value::Array(variants)) = schema.get_mut("oneOf") else {
        return;
    };
    let pfs = variants.iter().find_map(|variant| {
        let atom = variant.get("properties")?.get("atom")?.clone();
        let mut pfs = variant.as_object()?.clone();
        pfs.insert("properties".into(), serde_json::json!({ "pfs": atom }));
        pfs.insert("required".into(), serde_json::json!(["pfs"]));
        pfs.insert("description".into(), "Another name for `atom`.".into());
        Some(serde_json::Value::Object(pfs))
    });
    variants.extend(pfs);
}

/// One location in storage, mounted in each datum at `pfs/<repo>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AtomInput {
    /// `s3://bucket/prefix/`, `gs://bucket/prefix/` or `file:///path/`.
    #[serde(rename = "URI")]
    pub uri: String,
    /// The directory name the files appear under.
    pub repo: String,
    pub glob: Glob,
    /// In a `join`: which capture groups of `glob` must match between the
    /// inputs, e.g. `"$1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_on: Option<String>,
    /// In a `join`: this input's datums are kept even when another input
    /// has nothing with the same key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outer_join: bool,
    /// In a `group`: the capture groups of `glob` whose value names the
    /// group a file goes to, e.g. `"$1"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
}

impl AtomInput {
    /// An atom with only the fields every atom has.
    pub fn new(uri: impl Into<String>, repo: impl Into<String>, glob: Glob) -> AtomInput {
        AtomInput {
            uri: uri.into(),
            repo: repo.into(),
            glob,
            join_on: None,
            outer_join: false,
            group_by: None,
        }
    }
}

/// How an atom's files are cut into datums: a Pachyderm glob (see
/// [`crate::glob`] for what each form matches). `/` and `/*` keep their own
/// variants, since most specs use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Glob {
    /// `"/"`: everything in one datum.
    WholeRepo,
    /// `"/*"`: one datum per top-level file or directory.
    TopLevelEntries,
    /// Any other glob, e.g. `"/**"`, `"/*/*"`, `"/*.csv"` or `"/(*)-*.txt"`;
    /// checked by validation.
    Pattern(String),
}

impl Glob {
    /// The glob as written.
    pub fn as_str(&self) -> &str {
        match self {
            Glob::WholeRepo => "/",
            Glob::TopLevelEntries => "/*",
            Glob::Pattern(pattern) => pattern,
        }
    }

    /// Compiles the glob (an error says what is wrong with it).
    pub fn matcher(&self) -> Result<GlobMatcher, String> {
        GlobMatcher::new(self.as_str())
    }
}

impl From<&str> for Glob {
    fn from(text: &str) -> Self {
        match text {
            "/" => Glob::WholeRepo,
            "/*" => Glob::TopLevelEntries,
            _ => Glob::Pattern(text.to_owned()),
        }
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Glob::from(text.as_str()))
    }
}

impl JsonSchema for Glob {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Glob".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^/",
            "description": "A Pachyderm glob: \"/\" (one datum), \"/*\" (each top-level \
                            entry), \"/*/*\", \"/**\" (each file), name patterns such as \
                            \"/*.csv\" or \"/{a,b}*\", and (for join and group) capture \
                            groups in parentheses.",
            "examples": ["/", "/*", "/*/*", "/**", "/*.csv", "/(*)-*.txt"]
        })
    }
}

/// Where outputs are uploaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(rename = "URI")]
    pub uri: String,
}

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct SpecProblem {
    /// The JSON path of the offending value, e.g. `transform.cmd`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything wrong with a spec, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{}", display_problems(.problems))]
pub struct SpecError {
    pub problems: Vec<SpecProblem>,
}

fn display_problems(problems: &[SpecProblem]) -> String {
    if problems.is_empty() {
        return "invalid pipeline spec".to_owned();
    }
    problems
        .iter()
        .map(SpecProblem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The path of the whole document.
pub const ROOT_PATH: &str = "(root)";

/// Parses JSON into `T` (a spec, a workflow file, a schedule), naming the JSON path of
/// a parse error and refusing trailing garbage as `serde_json::from_str`
/// would.
pub fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, SpecError> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        // serde_path_to_error writes the root as ".".
        let path = if path == "." {
            ROOT_PATH.to_owned()
        } else {
            path
        };
        SpecError {
            problems: vec![SpecProblem {
                path,
                message: err.into_inner().to_string(),
            }],
        }
    })?;
    deserializer.end().map_err(|err| SpecError {
        problems: vec![SpecProblem {
            path: ROOT_PATH.to_owned(),
            message: err.to_string(),
        }],
    })?;
    Ok(value)
}

impl PipelineSpec {
    /// Parses and validates a spec. Parse errors name the JSON path where
    /// they occurred; validation reports every problem at once.
    pub fn from_json(json: &str) -> Result<PipelineSpec, SpecError> {
        let spec: PipelineSpec = parse_json(json)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The pipeline name as Kubernetes needs it: lowercase, `_` as `-`.
    pub fn kubernetes_name(&self) -> String {
        kubernetes_name(&self.pipeline.name)
    }

    /// Rewrites relative `file://` URIs (`file://x` or `file://./x`) as
    /// absolute ones under `base_dir`, normally the spec file's directory, so
    /// a spec can point at data beside itself. Absolute URIs and other schemes
    /// are left alone. `base_dir` should be absolute; a non-UTF-8 `base_dir`
    /// is converted lossily.
    pub fn resolve_relative_file_uris(&mut self, base_dir: &Path) {
        for atom in self.input.atoms_mut() {
            resolve_file_uri(&mut atom.uri, base_dir);
        }
        resolve_file_uri(&mut self.egress.uri, base_dir);
    }

    /// Checks everything serde cannot. Relative `file://` URIs are accepted:
    /// the CLI resolves them with [`Self::resolve_relative_file_uris`] before
    /// sending a spec anywhere.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Problems::default();
        self.validate_name(&mut problems);
        self.transform.validate(&mut problems);

        if self.parallelism_spec.constant == 0 {
            problems.push("parallelism_spec.constant", "must be at least 1");
        }
        if self.datum_tries == 0 {
            problems.push(
                "datum_tries",
                "must be at least 1 (it counts the first try)",
            );
        }
        if !(1..=MAX_DATUMS_PER_RESERVATION).contains(&self.datums_per_reservation) {
            problems.push(
                "datums_per_reservation",
                format!("must be 1 to {MAX_DATUMS_PER_RESERVATION}"),
            );
        }
        self.resource_requests.validate(&mut problems);
        for (field, timeout) in [
            ("job_timeout", &self.job_timeout),
            ("datum_timeout", &self.datum_timeout),
        ] {
            if timeout.is_some_and(|t| t.0.is_zero()) {
                problems.push(field, "must be longer than zero");
            }
        }
        for (key, value) in &self.node_selector {
            let path = format!("node_selector.{key}");
            if let Err(message) = check_label_key(key) {
                problems.push(&path, message);
            }
            if let Err(message) = check_label_value(value) {
                problems.push(&path, message);
            }
        }
        for (i, toleration) in self.tolerations.iter().enumerate() {
            toleration.validate(&format!("tolerations[{i}]"), &mut problems);
        }
        validate_input(&self.input, "input", Parent::Other, &mut problems);
        if let Err(message) = check_uri(&self.egress.uri) {
            problems.push("egress.URI", message);
        }
        crate::failure_policy::validate_rules(&self.on_exit, |path, message| {
            problems.push(path, message)
        });
        self.validate_no_nul(&mut problems);
        problems.into_result()
    }

    /// Refuses a NUL byte in any string of the spec. None can mean anything:
    /// a command's arguments and environment cannot hold one, Kubernetes
    /// refuses them, and PostgreSQL cannot store the job's name or egress
    /// with one. The checks above already refuse some (names, URIs); this
    /// one names every other path, so no NUL gets past validation. The spec
    /// is walked as the JSON it serializes to, whose paths are the ones the
    /// user wrote.
    fn validate_no_nul(&self, problems: &mut Problems) {
        let json = match serde_json::to_value(self) {
            Ok(json) => json,
            // Cannot happen (every map key is a string), but a spec we
            // could not check is not a valid one.
            Err(err) => {
                problems.push(ROOT_PATH, format!("cannot be checked for NUL bytes: {err}"));
                return;
            }
        };
        for path in crate::nul_check::nul_paths(&json, &[]) {
            let already_refused = problems.0.iter().any(|problem| problem.path == path);
            if !already_refused {
                problems.push(&path, "must not contain a NUL byte (\\u0000)");
            }
        }
    }

    fn validate_name(&self, problems: &mut Problems) {
        const PATH: &str = "pipeline.name";
        let name = &self.pipeline.name;
        if name.is_empty() {
            problems.push(PATH, "must not be empty");
            return;
        }
        let mut ok = true;
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            problems.push(
                PATH,
                format!("may contain only ASCII letters, digits, '-' and '_', not {bad:?}"),
            );
            ok = false;
        }
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            problems.push(PATH, "must start with a letter");
            ok = false;
        }
        let len = name.chars().count();
        if len > MAX_PIPELINE_NAME_LEN {
            problems.push(
                PATH,
                format!("must be at most {MAX_PIPELINE_NAME_LEN} characters long, not {len}"),
            );
            ok = false;
        }
        // Only worth saying when nothing above explains it already.
        let k8s_name = kubernetes_name(name);
        if ok && !is_dns1123_label(&k8s_name) {
            problems.push(
                PATH,
                format!(
                    "becomes `{k8s_name}` in Kubernetes, which is not a valid DNS-1123 label \
                     (it must end with a letter or digit)"
                ),
            );
        }
    }
}

fn kubernetes_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

impl Transform {
    fn validate(&self, problems: &mut Problems) {
        match self.cmd.first() {
            None => problems.push("transform.cmd", "must name at least the program to run"),
            Some(program) if program.trim().is_empty() => {
                problems.push("transform.cmd[0]", "the program to run must not be empty")
            }
            Some(_) => {}
        }
        if self.image.trim().is_empty() {
            problems.push("transform.image", "must not be empty");
        } else if self.image.contains(char::is_whitespace) {
            problems.push("transform.image", "must not contain whitespace");
        }

        for key in self.env.keys() {
            if !is_env_var_name(key) {
                problems.push(format!("transform.env.{key}"), ENV_VAR_NAME_RULE);
            }
        }

        let mut env_vars: BTreeSet<&str> = BTreeSet::new();
        let mut mount_paths: BTreeSet<&str> = BTreeSet::new();
        for (i, secret) in self.secrets.iter().enumerate() {
            let base = format!("transform.secrets[{i}]");
            if !is_dns1123_subdomain(secret.name()) {
                problems.push(format!("{base}.name"), DNS1123_SUBDOMAIN_RULE);
            }
            match secret {
                Secret::Mount { mount_path, .. } => {
                    let path = format!("{base}.mount_path");
                    if let Err(message) = check_mount_path(mount_path) {
                        problems.push(&path, message);
                    } else if !mount_paths.insert(mount_path) {
                        problems.push(&path, "another secret is already mounted here");
                    }
                }
                Secret::Env { key, env_var, .. } => {
                    if !is_secret_key(key) {
                        problems.push(
                            format!("{base}.key"),
                            "must be a secret key: letters, digits, '-', '_' and '.'",
                        );
                    }
                    let path = format!("{base}.env_var");
                    if !is_env_var_name(env_var) {
                        problems.push(&path, ENV_VAR_NAME_RULE);
                    } else if self.env.contains_key(env_var) {
                        problems.push(&path, format!("`{env_var}` is also set in transform.env"));
                    } else if !env_vars.insert(env_var) {
                        problems.push(&path, format!("`{env_var}` is set by another secret"));
                    }
                }
            }
        }

        if let Some(account) = &self.service_account
            && !is_dns1123_subdomain(account)
        {
            problems.push("transform.service_account", DNS1123_SUBDOMAIN_RULE);
        }
    }
}

impl Toleration {
    /// Kubernetes' rules for a toleration, checked here so that a bad one is
    /// refused with the spec rather than by the API server at job start.
    fn validate(&self, base: &str, problems: &mut Problems) {
        match self.key.as_deref() {
            Some(key) if !key.is_empty() => {
                if let Err(message) = check_label_key(key) {
                    problems.push(format!("{base}.key"), message);
                }
            }
            _ => {
                if self.operator != TolerationOperator::Exists {
                    problems.push(
                        format!("{base}.operator"),
                        "must be `Exists` when no key is given (tolerating every taint)",
                    );
                }
            }
        }
        match (self.operator, self.value.as_deref()) {
            (TolerationOperator::Exists, Some(value)) if !value.is_empty() => problems.push(
                format!("{base}.value"),
                "must be left out with `Exists`, which matches any value",
            ),
            (TolerationOperator::Equal, Some(value)) => {
                if let Err(message) = check_label_value(value) {
                    problems.push(format!("{base}.value"), message);
                }
            }
            _ => {}
        }
        if self.toleration_seconds.is_some() && self.effect != Some(TaintEffect::NoExecute) {
            problems.push(
                format!("{base}.toleration_seconds"),
                "needs `\"effect\": \"NoExecute\"` (only NoExecute taints evict pods)",
            );
        }
    }
}

impl ResourceRequests {
    fn validate(&self, problems: &mut Problems) {
        match self.memory_bytes() {
            Ok(0) => problems.push("resource_requests.memory", "must be greater than zero"),
            Ok(_) => {}
            Err(err) => problems.push("resource_requests.memory", err.to_string()),
        }
        match self.cpu_millis() {
            Ok(0) => problems.push("resource_requests.cpu", "must be greater than zero"),
            Ok(_) => {}
            Err(err) => problems.push("resource_requests.cpu", err.to_string()),
        }
    }
}

/// Which operator an input sits directly under: `join_on` and `outer_join`
/// mean something only under `join`, `group_by` only under `group`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    Other,
    Join,
    Group,
}

/// Validates `input` at JSON path `path`, recursively.
fn validate_input(input: &Input, path: &str, parent: Parent, problems: &mut Problems) {
    match input {
        Input::Atom(atom) => validate_atom(atom, &format!("{path}.atom"), parent, problems),
        Input::Cross(inputs)
        | Input::Union(inputs)
        | Input::Join(inputs)
        | Input::Group(inputs) => {
            let (kind, child_parent) = match input {
                Input::Cross(_) => ("cross", Parent::Other),
                Input::Union(_) => ("union", Parent::Other),
                Input::Join(_) => ("join", Parent::Join),
                _ => ("group", Parent::Group),
            };
            let path = format!("{path}.{kind}");
            if inputs.is_empty() {
                problems.push(&path, "must contain at least one input");
            }
            // A cross, join or group puts datums of several children into
            // the same datum, so each repo directory must come from only
            // one child. Union branches never meet, so they may reuse names.
            let mut seen: BTreeMap<&str, String> = BTreeMap::new();
            for (i, child) in inputs.iter().enumerate() {
                let child_path = format!("{path}[{i}]");
                if child_parent != Parent::Other && !matches!(child, Input::Atom(_)) {
                    problems.push(
                        &child_path,
                        format!("each input of a `{kind}` must be an atom (`atom` or `pfs`)"),
                    );
                    continue;
                }
                validate_input(child, &child_path, child_parent, problems);
                if kind == "union" {
                    continue;
                }
                let mut repos = Vec::new();
                collect_repo_paths(child, &child_path, &mut repos);
                let mut new = Vec::new();
                for (repo, repo_path) in repos {
                    match seen.get(repo) {
                        Some(first) => problems.push(
                            repo_path,
                            format!(
                                "repo `{repo}` also comes from {first}; inputs combined by \
                                 `{kind}` need distinct repo names, since each becomes a \
                                 directory pfs/<repo>"
                            ),
                        ),
                        None => new.push((repo, repo_path)),
                    }
                }
                for (repo, repo_path) in new {
                    seen.entry(repo).or_insert(repo_path);
                }
            }
        }
    }
}

/// Validates one atom at JSON path `path` (ending in `.atom`).
fn validate_atom(atom: &AtomInput, path: &str, parent: Parent, problems: &mut Problems) {
    if let Err(message) = check_uri(&atom.uri) {
        problems.push(format!("{path}.URI"), message);
    }
    if let Err(message) = check_repo_name(&atom.repo) {
        problems.push(format!("{path}.repo"), message);
    }
    let matcher = match atom.glob.matcher() {
        Ok(matcher) => Some(matcher),
        Err(message) => {
            problems.push(format!("{path}.glob"), message);
            None
        }
    };
    let (field, template, wanted) = match parent {
        Parent::Join => ("join_on", &atom.join_on, true),
        Parent::Group => ("group_by", &atom.group_by, true),
        Parent::Other => ("", &None, false),
    };
    for (other, set, under) in [
        ("join_on", atom.join_on.is_some(), Parent::Join),
        ("outer_join", atom.outer_join, Parent::Join),
        ("group_by", atom.group_by.is_some(), Parent::Group),
    ] {
        if set && parent != under {
            let operator = if under == Parent::Join {
                "join"
            } else {
                "group"
            };
            problems.push(
                format!("{path}.{other}"),
                format!("means something only for an input of a `{operator}`"),
            );
        }
    }
    if !wanted {
        return;
    }
    let Some(template) = template else {
        problems.push(
            format!("{path}.{field}"),
            "is required here: it names the capture groups of `glob` that make the key, \
             e.g. \"$1\"",
        );
        return;
    };
    match KeyTemplate::parse(template) {
        Err(message) => problems.push(format!("{path}.{field}"), message),
        Ok(parsed) => {
            let Some(matcher) = matcher else { return };
            let groups = matcher.capture_groups();
            if let Some(missing) = parsed.groups.iter().find(|g| **g == 0 || **g > groups) {
                problems.push(
                    format!("{path}.{field}"),
                    format!(
                        "refers to capture group {missing}, but glob `{}` has {groups} \
                         (groups are numbered from 1 and written in parentheses, as in \
                         \"/(*).csv\")",
                        atom.glob.as_str()
                    ),
                );
            }
        }
    }
}

/// Every atom's repo under `input` with the JSON path of its `repo` field.
fn collect_repo_paths<'a>(input: &'a Input, path: &str, out: &mut Vec<(&'a str, String)>) {
    match input {
        Input::Atom(atom) => out.push((&atom.repo, format!("{path}.atom.repo"))),
        Input::Cross(inputs) => {
            for (i, child) in inputs.iter().enumerate() {
                collect_repo_paths(child, &format!("{path}.cross[{i}]"), out);
            }
        }
        Input::Union(inputs) => {
            for (i, child) in inputs.iter().enumerate() {
                collect_repo_paths(child, &format!("{path}.union[{i}]"), out);
            }
        }
        Input::Join(inputs) => {
            for (i, child) in inputs.iter().enumerate() {
                collect_repo_paths(child, &format!("{path}.join[{i}]"), out);
            }
        }
        Input::Group(inputs) => {
            for (i, child) in inputs.iter().enumerate() {
                collect_repo_paths(child, &format!("{path}.group[{i}]"), out);
            }
        }
    }
}

/// Collects problems while validating.
#[derive(Default)]
struct Problems(Vec<SpecProblem>);

impl Problems {
    fn push(&mut self, path: impl AsRef<str>, message: impl Into<String>) {
        self.0.push(SpecProblem {
            path: path.as_ref().to_owned(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), SpecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SpecError { problems: self.0 })
        }
    }
}

/// Checks that `repo` can be a directory name inside a datum. Shared with
/// the planner, which must not trust an unvalidated spec.
pub(crate) fn check_repo_name(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if repo == "." || repo == ".." {
        return Err(format!("`{repo}` cannot be a directory name"));
    }
    if let Some(bad) = repo
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "may contain only ASCII letters, digits, '.', '_' and '-', not {bad:?}"
        ));
    }
    if repo == OUTPUT_REPO {
        return Err(format!(
            "`{OUTPUT_REPO}` is reserved for the job's outputs (pfs/{OUTPUT_REPO})"
        ));
    }
    Ok(())
}

/// Checks an input or egress URI: a supported scheme and something after it.
fn check_uri(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "`{uri}` is not a URI; use s3://bucket/path/, gs://bucket/path/ or file:///path/"
        ));
    };
    if !SUPPORTED_SCHEMES.contains(&scheme) {
        return Err(format!(
            "unsupported URI scheme `{scheme}`; use file://, s3:// or gs://"
        ));
    }
    if uri.contains(['\0', '\n', '\r']) {
        return Err("must not contain NUL or line breaks".to_owned());
    }
    if scheme == "file" {
        if rest.is_empty() {
            return Err("must name a path after file://".to_owned());
        }
    } else {
        let bucket = rest.split('/').next().unwrap_or_default();
        if bucket.is_empty() {
            return Err(format!("must name a bucket after {scheme}://"));
        }
        if bucket.contains(char::is_whitespace) {
            return Err(format!(
                "bucket name `{bucket}` must not contain whitespace"
            ));
        }
    }
    Ok(())
}

/// Makes a relative `file://` URI absolute under `base_dir`.
fn resolve_file_uri(uri: &mut String, base_dir: &Path) {
    let Some(rest) = uri.strip_prefix("file://") else {
        return;
    };
    if rest.starts_with('/') {
        return;
    }
    let mut relative = rest;
    while let Some(stripped) = relative.strip_prefix("./") {
        relative = stripped;
    }
    if relative == "." {
        relative = "";
    }
    // Joining "" appends a separator, which keeps the directory meaning of
    // `file://./`; joining "x/" keeps its trailing slash.
    let joined = base_dir.join(relative);
    *uri = format!("file://{}", joined.to_string_lossy());
}

fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute path".to_owned());
    }
    if path.split('/').any(|component| component == "..") {
        return Err("must not contain `..`".to_owned());
    }
    if path.trim_end_matches('/').is_empty() {
        return Err("must not be `/`".to_owned());
    }
    if path.contains(['\0', ':']) {
        return Err("must not contain ':' or NUL".to_owned());
    }
    let trimmed = path.trim_end_matches('/');
    if let Some(reserved) = RESERVED_MOUNT_PATHS.iter().find(|reserved| {
        trimmed == **reserved
            || trimmed
                .strip_prefix(**reserved)
                .is_some_and(|rest| rest.starts_with('/'))
            || reserved
                .strip_prefix(trimmed)
                .is_some_and(|rest| rest.starts_with('/'))
    }) {
        return Err(format!(
            "must not be, contain or lie inside {reserved}, which the worker pods use"
        ));
    }
    Ok(())
}

/// Directories of a Kubernetes worker pod that a secret must not hide.
const RESERVED_MOUNT_PATHS: &[&str] = &["/pfs", "/scratch", "/falconeri"];

const ENV_VAR_NAME_RULE: &str = "is not a valid environment variable name (letters, digits, \
                                 '_', '-' and '.', not starting with a digit)";

/// Kubernetes' rule for environment variable names.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '-' | '.'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Kubernetes' rule for keys in a secret.
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

const DNS1123_SUBDOMAIN_RULE: &str = "must be a DNS-1123 subdomain: lowercase letters, digits, \
                                      '-' and '.', starting and ending with a letter or digit, \
                                      at most 253 characters";

/// Lowercase letters, digits and '-', starting and ending with a letter or
/// digit, at most 63 characters.
fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_label_unbounded(s)
}

fn is_dns1123_label_unbounded(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || c == '-')
}

/// DNS-1123 labels joined by '.', at most 253 characters.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label_unbounded)
}

/// Letters, digits, '-', '_' and '.', starting and ending with a letter or
/// digit, at most 63 characters: the name part of a Kubernetes label.
fn is_label_name(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("label keys must not be empty".to_owned());
    }
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns1123_subdomain(prefix)
    {
        return Err(format!(
            "label key prefix `{prefix}` must be a DNS-1123 subdomain"
        ));
    }
    if !is_label_name(name) {
        return Err(format!(
            "label key name `{name}` must be 1-63 letters, digits, '-', '_' or '.', starting \
             and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value `{value}` must be at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

/// The JSON Schema of [`PipelineSpec`], for editors and documentation.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(PipelineSpec).to_value()
}

#[cfg(test)]
mod tests {
    // Unwrapping is how a test says "this must succeed".
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    /// A valid spec exercising most fields.
    fn base() -> Value {
        json!({
            "pipeline": { "name": "book_words" },
            "transform": {
                "cmd": ["python3", "/extract.py"],
                "image": "example/extract:1",
                "env": { "LANGUAGE": "en" },
                "secrets": [
                    { "name": "tls-bundle", "mount_path": "/etc/tls" },
                    { "name": "s3", "key": "AWS_ACCESS_KEY_ID", "env_var": "AWS_ACCESS_KEY_ID" }
                ]
            },
            "parallelism_spec": { "constant": 2 },
            "resource_requests": { "memory": "750Mi", "cpu": 0.5 },
            "input": {
                "cross": [
                    { "atom": { "URI": "s3://bucket/a/", "repo": "a", "glob": "/" } },
                    { "union": [
                        { "atom": { "URI": "gs://bucket/b/", "repo": "b", "glob": "/*" } },
                        { "pfs": { "URI": "file:///data/c/", "repo": "c", "glob": "/*" } }
                    ] }
                ]
            },
            "egress": { "URI": "s3://bucket/out/" }
        })
    }

    fn with(edit: impl FnOnce(&mut Value)) -> String {
        let mut spec = base();
        edit(&mut spec);
        spec.to_string()
    }

    fn parse(json: &str) -> PipelineSpec {
        match PipelineSpec::from_json(json) {
            Ok(spec) => spec,
            Err(err) => panic!("spec should be valid, got:\n{err}"),
        }
    }

    /// Asserts that `json` is rejected with one problem line (`path: message`)
    /// containing each expected substring, and no other problems.
    fn check(json: &str, expected: &[&str]) {
        let err = match PipelineSpec::from_json(json) {
            Ok(spec) => panic!("expected problems {expected:?}, but parsed {spec:#?}"),
            Err(err) => err,
        };
        let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        for want in expected {
            assert!(
                lines.iter().any(|line| line.contains(want)),
                "no problem contains {want:?}; problems:\n{err}"
            );
        }
        assert_eq!(
            lines.len(),
            expected.len(),
            "expected {expected:?}, got problems:\n{err}"
        );
    }

    #[test]
    fn base_spec_is_valid() {
        let spec = parse(&base().to_string());
        assert_eq!(spec.pipeline.name, "book_words");
        assert_eq!(spec.kubernetes_name(), "book-words");
        assert_eq!(spec.datum_tries, 1);
        assert!(spec.node_selector.is_empty());
        assert_eq!(spec.job_timeout, None);
        assert_eq!(spec.transform.image_pull_policy, None);
        assert_eq!(spec.resource_requests.cpu_millis(), Ok(500));
        assert_eq!(spec.resource_requests.memory_bytes(), Ok(750 * 1024 * 1024));
        assert_eq!(
            spec.transform.secrets[1],
            Secret::Env {
                name: "s3".into(),
                key: "AWS_ACCESS_KEY_ID".into(),
                env_var: "AWS_ACCESS_KEY_ID".into(),
                optional: false,
            }
        );
    }

    // ---- Fields falconeri v1 and v2 accepted, one test each. ----

    /// v2's `optional` on an environment secret; written back only when set.
    #[test]
    fn v2_env_secrets_may_be_optional() {
        let spec = parse(&with(|s| {
            s["transform"]["secrets"][1]["optional"] = json!(true);
        }));
        assert!(matches!(
            spec.transform.secrets[1],
            Secret::Env { optional: true, .. }
        ));
        let out = serde_json::to_value(&spec).unwrap();
        assert_eq!(out["transform"]["secrets"][1]["optional"], json!(true));
        let spec = parse(&with(|s| {
            s["transform"]["secrets"][1]["optional"] = json!(false);
        }));
        let out = serde_json::to_value(&spec).unwrap();
        assert!(out["transform"]["secrets"][1].get("optional").is_none());
        check(
            &with(|s| s["transform"]["secrets"][0]["optional"] = json!(true)),
            &[
                "transform.secrets[0]: `optional` applies only to a secret exposed as an environment variable",
            ],
        );
        check(
            &with(|s| s["transform"]["secrets"][1]["optional"] = json!("yes")),
            &["transform.secrets[1].optional: invalid type: string"],
        );
    }

    /// v2 wrote `datum_tries` as an `Option<u32>`: `null` is the default.
    #[test]
    fn v2_datum_tries_may_be_null() {
        let spec = parse(&with(|s| s["datum_tries"] = json!(null)));
        assert_eq!(spec.datum_tries, 1);
    }

    /// v1 and v2 wrote these as `Option`s, which serde reads `null` into.
    #[test]
    fn v1_optional_fields_may_be_null() {
        let spec = parse(&with(|s| {
            s["job_timeout"] = json!(null);
            s["transform"]["image_pull_policy"] = json!(null);
            s["transform"]["service_account"] = json!(null);
        }));
        assert_eq!(spec.job_timeout, None);
        assert_eq!(spec.transform.image_pull_policy, None);
        assert_eq!(spec.transform.service_account, None);
    }

    /// v1's `cpu` was an `f32`: fractional cores as a JSON number.
    #[test]
    fn v1_cpu_as_a_fractional_number() {
        let spec = parse(&with(|s| s["resource_requests"]["cpu"] = json!(1.2)));
        assert_eq!(spec.resource_requests.cpu_millis(), Ok(1200));
    }

    // ---- Globs, join and group. ----

    #[test]
    fn globs_parse_and_are_checked() {
        for glob in [
            "/",
            "/*",
            "/*/*",
            "/**",
            "/*.csv",
            "/2024-??-*",
            "/{a,b}*",
            "/[a-c]x",
        ] {
            let spec = parse(&with(|s| {
                s["input"]["cross"][0]["atom"]["glob"] = json!(glob)
            }));
            let Input::Cross(children) = &spec.input else {
                panic!()
            };
            let Input::Atom(atom) = &children[0] else {
                panic!()
            };
            assert_eq!(atom.glob.as_str(), glob);
            let out = serde_json::to_value(&spec).unwrap();
            assert_eq!(out["input"]["cross"][0]["atom"]["glob"], json!(glob));
        }
        check(
            &with(|s| s["input"]["cross"][0]["atom"]["glob"] = json!("*.csv")),
            &["input.cross[0].atom.glob: `*.csv` must start with `/`"],
        );
        check(
            &with(|s| s["input"]["cross"][0]["atom"]["glob"] = json!("/[a")),
            &["input.cross[0].atom.glob: `/[a`: unclosed character class"],
        );
    }

    fn join_spec(kind: &str, inputs: Value) -> String {
        with(|s| s["input"] = json!({ kind: inputs }))
    }

    #[test]
    fn joins_and_groups_parse() {
        let spec = parse(&join_spec(
            "join",
            json!([
                { "pfs": { "URI": "s3://b/r/", "repo": "r", "glob": "/(*).txt", "join_on": "$1",
                           "outer_join": true } },
                { "atom": { "URI": "s3://b/p/", "repo": "p", "glob": "/*/(*).csv", "join_on": "${1}" } }
            ]),
        ));
        let Input::Join(children) = &spec.input else {
            panic!("{:?}", spec.input)
        };
        let Input::Atom(first) = &children[0] else {
            panic!()
        };
        assert!(first.outer_join);
        assert_eq!(first.join_on.as_deref(), Some("$1"));
        assert_eq!(parse(&serde_json::to_string(&spec).unwrap()), spec);
        parse(&join_spec(
            "group",
            json!([
                { "atom": { "URI": "s3://b/r/", "repo": "r", "glob": "/(*)-*.txt", "group_by": "$1" } }
            ]),
        ));
    }

    #[test]
    fn join_and_group_problems_name_their_paths() {
        check(
            &join_spec(
                "join",
                json!([
                    { "atom": { "URI": "s3://b/r/", "repo": "r", "glob": "/(*).txt" } },
                    { "atom": { "URI": "s3://b/p/", "repo": "p", "glob": "/*.csv", "join_on": "$1" } },
                    { "atom": { "URI": "s3://b/q/", "repo": "r", "glob": "/(*)", "join_on": "$x",
                                "group_by": "$1" } },
                    { "cross": [] }
                ]),
            ),
            &[
                "input.join[0].atom.join_on: is required here",
                "input.join[1].atom.join_on: refers to capture group 1, but glob `/*.csv` has 0",
                "input.join[2].atom.group_by: means something only for an input of a `group`",
                "input.join[2].atom.join_on: `$` must be followed by a capture group number",
                "input.join[2].atom.repo: repo `r` also comes from input.join[0].atom.repo",
                "input.join[3]: each input of a `join` must be an atom",
            ],
        );
        check(
            &join_spec(
                "group",
                json!([
                    { "atom": { "URI": "s3://b/r/", "repo": "r", "glob": "/(*)", "join_on": "$1",
                                "outer_join": true } }
                ]),
            ),
            &[
                "input.group[0].atom.join_on: means something only for an input of a `join`",
                "input.group[0].atom.outer_join: means something only for an input of a `join`",
                "input.group[0].atom.group_by: is required here",
            ],
        );
        check(
            &with(|s| s["input"]["cross"][0]["atom"]["group_by"] = json!("$1")),
            &["input.cross[0].atom.group_by: means something only for an input of a `group`"],
        );
        check(
            &join_spec("join", json!([])),
            &["input.join: must contain at least one input"],
        );
    }

    #[test]
    fn pfs_is_an_alias_of_atom() {
        let spec = parse(&with(|s| {
            s["input"] = json!({ "pfs": { "URI": "s3://b/x/", "repo": "x", "glob": "/" } });
        }));
        assert_eq!(
            spec.input,
            Input::Atom(AtomInput::new("s3://b/x/", "x", Glob::WholeRepo))
        );
        // It is written back under its canonical name.
        let out = serde_json::to_value(&spec).unwrap();
        assert!(out["input"].get("atom").is_some());
    }

    #[test]
    fn optional_fields_parse() {
        let spec = parse(&with(|s| {
            s["datum_tries"] = json!(3);
            s["job_timeout"] = json!("2h 30m");
            s["datum_timeout"] = json!("90s");
            s["node_selector"] = json!({ "pool": "batch", "kubernetes.io/arch": "amd64" });
            s["transform"]["image_pull_policy"] = json!("Never");
            s["transform"]["service_account"] = json!("runner.example");
            s["resource_requests"]["gpu"] = json!(1);
        }));
        assert_eq!(spec.datum_tries, 3);
        assert_eq!(
            spec.job_timeout,
            Some(HumanDuration(Duration::from_secs(9000)))
        );
        assert_eq!(
            spec.datum_timeout,
            Some(HumanDuration(Duration::from_secs(90)))
        );
        assert_eq!(spec.node_selector.len(), 2);
        assert_eq!(
            spec.transform.image_pull_policy,
            Some(ImagePullPolicy::Never)
        );
        assert_eq!(spec.resource_requests.gpu, Some(1));
    }

    #[test]
    fn image_pull_policies_are_spelled_like_kubernetes() {
        for (policy, text) in [
            (ImagePullPolicy::Always, "\"Always\""),
            (ImagePullPolicy::IfNotPresent, "\"IfNotPresent\""),
            (ImagePullPolicy::Never, "\"Never\""),
        ] {
            assert_eq!(serde_json::to_string(&policy).unwrap(), text);
            assert_eq!(
                serde_json::from_str::<ImagePullPolicy>(text).unwrap(),
                policy
            );
        }
    }

    #[test]
    fn round_trips_through_json() {
        let spec = parse(&with(|s| {
            s["job_timeout"] = json!("2h 30m");
            s["datum_tries"] = json!(2);
            s["node_selector"] = json!({ "pool": "batch" });
            s["resource_requests"]["cpu"] = json!("250m");
        }));
        let text = serde_json::to_string_pretty(&spec).unwrap();
        assert_eq!(parse(&text), spec);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["job_timeout"], "2h 30m");
        assert_eq!(value["resource_requests"]["cpu"], "250m");
        // Absent optional fields stay absent.
        assert!(value.get("datum_timeout").is_none());
        assert!(value["transform"].get("service_account").is_none());
    }

    #[test]
    fn cpu_keeps_its_written_form() {
        for (cpu, millis) in [(json!(0.5), 500), (json!(1), 1000), (json!("2"), 2000)] {
            let spec = parse(&with(|s| s["resource_requests"]["cpu"] = cpu.clone()));
            assert_eq!(spec.resource_requests.cpu_millis(), Ok(millis));
            let out = serde_json::to_value(&spec).unwrap();
            assert_eq!(out["resource_requests"]["cpu"], cpu);
        }
    }

    // ---- Parse errors name the JSON path. ----

    #[test]
    fn unknown_fields_are_reported_at_their_own_path() {
        let json = with(|s| {
            let transform = s["transform"].clone();
            s.as_object_mut().unwrap().remove("transform");
            s["transfrom"] = transform;
        });
        check(
            &json,
            &["transfrom: unknown field `transfrom`, expected one of"],
        );
        check(
            &with(|s| s["transform"]["imagee"] = json!("x")),
            &["transform.imagee: unknown field `imagee`"],
        );
        check(
            &with(|s| s["input"]["cross"][0]["atom"]["uri"] = json!("x")),
            &["input.cross[0].atom.uri: unknown field `uri`"],
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        check(
            &with(|s| s["transform"]["cmd"] = json!("python3 x.py")),
            &["transform.cmd: invalid type: string"],
        );
        check(
            &with(|s| s["parallelism_spec"]["constant"] = json!(-1)),
            &["parallelism_spec.constant: invalid value"],
        );
        check(
            &with(|s| s["transform"]["env"]["N"] = json!(3)),
            &["transform.env.N: invalid type: integer"],
        );
    }

    #[test]
    fn missing_field_names_its_parent() {
        check(
            &with(|s| {
                s["transform"].as_object_mut().unwrap().remove("image");
            }),
            &["transform: missing field `image`"],
        );
    }

    #[test]
    fn bad_glob_names_the_glob() {
        check(
            &with(|s| s["input"]["cross"][0]["atom"]["glob"] = json!("/a)")),
            &["input.cross[0].atom.glob: `/a)`: `)` closes no capture group"],
        );
        check(
            &with(|s| s["input"]["cross"][0]["atom"]["glob"] = json!(5)),
            &["input.cross[0].atom.glob: invalid type: integer `5`, expected a string"],
        );
    }

    #[test]
    fn parse_errors_keep_the_spelling_pfs() {
        check(
            &with(|s| s["input"]["cross"][1]["union"][1]["pfs"]["glob"] = json!(5)),
            &["input.cross[1].union[1].pfs.glob: invalid type: integer"],
        );
    }

    #[test]
    fn unknown_input_kind_is_rejected() {
        check(
            &with(|s| s["input"] = json!({ "merge": [] })),
            &["input: unknown variant `merge`"],
        );
    }

    #[test]
    fn bad_image_pull_policy_is_rejected() {
        check(
            &with(|s| s["transform"]["image_pull_policy"] = json!("always")),
            &["transform.image_pull_policy: unknown variant `always`"],
        );
    }

    #[test]
    fn mixed_secret_is_rejected_with_a_useful_message() {
        check(
            &with(|s| {
                s["transform"]["secrets"][0] =
                    json!({ "name": "x", "mount_path": "/x", "env_var": "X" })
            }),
            &["transform.secrets[0]: a secret needs either `mount_path`"],
        );
        check(
            &with(|s| s["transform"]["secrets"][0] = json!({ "name": "x", "key": "k" })),
            &["transform.secrets[0]: a secret needs either `mount_path`"],
        );
        check(
            &with(|s| s["transform"]["secrets"][0] = json!({ "name": "x", "mountPath": "/x" })),
            &["transform.secrets[0].mountPath: unknown field `mountPath`"],
        );
    }

    #[test]
    fn bad_cpu_type_is_rejected() {
        check(
            &with(|s| s["resource_requests"]["cpu"] = json!(true)),
            &["resource_requests.cpu: invalid type: boolean `true`, expected a number of CPUs"],
        );
    }

    #[test]
    fn bad_duration_is_rejected() {
        check(
            &with(|s| s["job_timeout"] = json!("5 minutes please")),
            &["job_timeout: invalid duration `5 minutes please`"],
        );
        check(
            &with(|s| s["datum_timeout"] = json!(90)),
            &["datum_timeout: invalid type: integer `90`, expected a duration string"],
        );
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_are_rejected() {
        let err = PipelineSpec::from_json("{\"pipeline\": ").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.problems[0].message.contains("EOF"), "{err}");
        let err = PipelineSpec::from_json(&format!("{} x", base())).unwrap_err();
        assert_eq!(err.problems[0].path, ROOT_PATH);
        assert!(err.problems[0].message.contains("trailing"), "{err}");
        let err = PipelineSpec::from_json("[]").unwrap_err();
        assert_eq!(err.problems[0].path, ROOT_PATH);
    }

    // ---- Validation: one test per rule. ----

    #[test]
    fn empty_cmd() {
        check(
            &with(|s| s["transform"]["cmd"] = json!([])),
            &["transform.cmd: must name at least the program"],
        );
        check(
            &with(|s| s["transform"]["cmd"] = json!(["", "x"])),
            &["transform.cmd[0]: the program to run must not be empty"],
        );
        // Empty arguments are legitimate.
        parse(&with(|s| s["transform"]["cmd"] = json!(["prog", ""])));
    }

    #[test]
    fn empty_or_spaced_image() {
        check(
            &with(|s| s["transform"]["image"] = json!(" ")),
            &["transform.image: must not be empty"],
        );
        check(
            &with(|s| s["transform"]["image"] = json!("a b")),
            &["transform.image: must not contain whitespace"],
        );
    }

    #[test]
    fn pipeline_names() {
        for good in ["a", "book_words", "Book-Words2", &"a".repeat(50)] {
            parse(&with(|s| s["pipeline"]["name"] = json!(good)));
        }
        check(
            &with(|s| s["pipeline"]["name"] = json!("")),
            &["pipeline.name: must not be empty"],
        );
        check(
            &with(|s| s["pipeline"]["name"] = json!("book words")),
            &["pipeline.name: may contain only ASCII letters, digits, '-' and '_', not ' '"],
        );
        check(
            &with(|s| s["pipeline"]["name"] = json!("1books")),
            &["pipeline.name: must start with a letter"],
        );
        check(
            &with(|s| s["pipeline"]["name"] = json!("a".repeat(51))),
            &["pipeline.name: must be at most 50 characters long, not 51"],
        );
        check(
            &with(|s| s["pipeline"]["name"] = json!("books_")),
            &["pipeline.name: becomes `books-` in Kubernetes, which is not a valid DNS-1123"],
        );
        check(
            &with(|s| s["pipeline"]["name"] = json!("_bücher")),
            &["not 'ü'", "must start with a letter"],
        );
    }

    #[test]
    fn kubernetes_names() {
        assert_eq!(kubernetes_name("Book_Words"), "book-words");
        assert_eq!(kubernetes_name("catalog-books"), "catalog-books");
    }

    #[test]
    fn zero_parallelism_and_tries() {
        check(
            &with(|s| {
                s["parallelism_spec"]["constant"] = json!(0);
                s["datum_tries"] = json!(0);
            }),
            &[
                "parallelism_spec.constant: must be at least 1",
                "datum_tries: must be at least 1",
            ],
        );
    }

    #[test]
    fn zero_durations() {
        check(
            &with(|s| {
                s["job_timeout"] = json!("0s");
                s["datum_timeout"] = json!("0");
            }),
            &[
                "job_timeout: must be longer than zero",
                "datum_timeout: must be longer than zero",
            ],
        );
    }

    #[test]
    fn bad_memory() {
        for (memory, message) in [
            ("lots", "resource_requests.memory: `lots` is not a quantity"),
            ("", "resource_requests.memory: `` is not a quantity"),
            ("1GB", "resource_requests.memory: `1GB` is not a quantity"),
            (
                "1.2.3Mi",
                "resource_requests.memory: `1.2.3Mi` is not a quantity",
            ),
            (" 1Gi", "resource_requests.memory: ` 1Gi` is not a quantity"),
            ("1e", "resource_requests.memory: `1e` is not a quantity"),
            (
                "1e+-3",
                "resource_requests.memory: `1e+-3` is not a quantity",
            ),
            ("-1Gi", "resource_requests.memory: must not be negative"),
            ("0", "resource_requests.memory: must be greater than zero"),
            ("100Ei", "resource_requests.memory: is too large"),
            (
                "1e99999999999",
                "resource_requests.memory: `1e99999999999` has an exponent",
            ),
        ] {
            check(
                &with(|s| s["resource_requests"]["memory"] = json!(memory)),
                &[message],
            );
        }
    }

    #[test]
    fn bad_cpu() {
        for (cpu, message) in [
            (
                json!("lots"),
                "resource_requests.cpu: `lots` is not a quantity",
            ),
            (json!(0), "resource_requests.cpu: must be greater than zero"),
            (
                json!("0m"),
                "resource_requests.cpu: must be greater than zero",
            ),
            (
                json!(-0.5),
                "resource_requests.cpu: must be greater than zero",
            ),
            (
                json!("-1"),
                "resource_requests.cpu: must be greater than zero",
            ),
            (
                json!(0.0001),
                "resource_requests.cpu: must be a whole number of millicores",
            ),
            (
                json!("1500u"),
                "resource_requests.cpu: must be a whole number of millicores",
            ),
        ] {
            check(
                &with(|s| s["resource_requests"]["cpu"] = cpu.clone()),
                &[message],
            );
        }
    }

    #[test]
    fn quantities() {
        let memory = |m: &str| {
            ResourceRequests {
                memory: m.into(),
                cpu: CpuQuantity::Quantity("1".into()),
                gpu: None,
            }
            .memory_bytes()
        };
        assert_eq!(memory("750Mi"), Ok(750 << 20));
        assert_eq!(memory("1Gi"), Ok(1 << 30));
        assert_eq!(memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(memory("512M"), Ok(512_000_000));
        assert_eq!(memory("1e3"), Ok(1000));
        assert_eq!(memory("1E3"), Ok(1000));
        assert_eq!(memory("2E"), Ok(2_000_000_000_000_000_000));
        assert_eq!(memory("1k"), Ok(1000));
        assert_eq!(memory("+128974848"), Ok(128_974_848));
        assert_eq!(memory(".5Ki"), Ok(512));
        assert_eq!(memory("5."), Ok(5));
        // Fractions of a byte round up, as in Kubernetes.
        assert_eq!(memory("1500m"), Ok(2));
        assert_eq!(memory("1e-300"), Ok(1));
        assert_eq!(memory("0.000"), Ok(0));

        let cpu = |c: CpuQuantity| c.millis();
        let num = |n: f64| CpuQuantity::Cores(serde_json::Number::from_f64(n).unwrap());
        let text = |s: &str| CpuQuantity::Quantity(s.into());
        assert_eq!(cpu(num(0.5)), Ok(500));
        assert_eq!(cpu(num(0.1)), Ok(100));
        assert_eq!(cpu(num(2.25)), Ok(2250));
        assert_eq!(cpu(num(1e-3)), Ok(1));
        assert_eq!(cpu(CpuQuantity::Cores(4u64.into())), Ok(4000));
        assert_eq!(cpu(text("500m")), Ok(500));
        assert_eq!(cpu(text("2")), Ok(2000));
        assert_eq!(cpu(text("0.25")), Ok(250));
        assert_eq!(cpu(text("1000000u")), Ok(1000));
        assert_eq!(cpu(text("1k")), Ok(1_000_000));
        assert!(cpu(text("1Ei")).is_err());
        assert_eq!(text("500m").to_string(), "500m");
        assert_eq!(num(0.5).to_string(), "0.5");
    }

    #[test]
    fn env_var_names() {
        for good in ["A", "_x", "my.var", "a-b", "X1"] {
            parse(&with(|s| s["transform"]["env"] = json!({ good: "v" })));
        }
        check(
            &with(|s| s["transform"]["env"] = json!({ "1X": "v", "A=B": "v", "": "v" })),
            &[
                "transform.env.1X: is not a valid environment variable name",
                "transform.env.A=B: is not a valid environment variable name",
                "transform.env.: is not a valid environment variable name",
            ],
        );
    }

    #[test]
    fn secret_names_and_service_account() {
        check(
            &with(|s| {
                s["transform"]["secrets"][0]["name"] = json!("TLS_bundle");
                s["transform"]["secrets"][1]["name"] = json!("");
                s["transform"]["service_account"] = json!("Runner");
            }),
            &[
                "transform.secrets[0].name: must be a DNS-1123 subdomain",
                "transform.secrets[1].name: must be a DNS-1123 subdomain",
                "transform.service_account: must be a DNS-1123 subdomain",
            ],
        );
        parse(&with(|s| {
            s["transform"]["secrets"][0]["name"] = json!("tls.example-1");
            s["transform"]["service_account"] = json!("default");
        }));
    }

    #[test]
    fn secret_mount_paths() {
        for (path, message) in [
            ("etc/tls", "must be an absolute path"),
            ("/etc/../tls", "must not contain `..`"),
            ("/", "must not be `/`"),
            ("/etc:tls", "must not contain ':'"),
        ] {
            check(
                &with(|s| s["transform"]["secrets"][0]["mount_path"] = json!(path)),
                &[&format!("transform.secrets[0].mount_path: {message}")],
            );
        }
        check(
            &with(|s| {
                s["transform"]["secrets"][1] = json!({ "name": "other", "mount_path": "/etc/tls" })
            }),
            &["transform.secrets[1].mount_path: another secret is already mounted here"],
        );
    }

    #[test]
    fn secret_env_vars_and_keys() {
        check(
            &with(|s| {
                s["transform"]["secrets"][1]["env_var"] = json!("9LIVES");
                s["transform"]["secrets"][1]["key"] = json!("a/b");
            }),
            &[
                "transform.secrets[1].key: must be a secret key",
                "transform.secrets[1].env_var: is not a valid environment variable name",
            ],
        );
        check(
            &with(|s| s["transform"]["secrets"][1]["env_var"] = json!("LANGUAGE")),
            &["transform.secrets[1].env_var: `LANGUAGE` is also set in transform.env"],
        );
        check(
            &with(|s| {
                let copy = s["transform"]["secrets"][1].clone();
                s["transform"]["secrets"].as_array_mut().unwrap().push(copy);
            }),
            &["transform.secrets[2].env_var: `AWS_ACCESS_KEY_ID` is set by another secret"],
        );
    }

    #[test]
    fn node_selectors() {
        parse(&with(
            |s| {
                s["node_selector"] =
                    json!({ "pool": "", "cloud.google.com/gke-nodepool": "batch_1" })
            },
        ));
        check(
            &with(|s| {
                s["node_selector"] =
                    json!({ "": "x", "Bad_/pool": "x", "pool": "not ok", "a/": "x" })
            }),
            &[
                "node_selector.: label keys must not be empty",
                "node_selector.Bad_/pool: label key prefix `Bad_` must be a DNS-1123",
                "node_selector.pool: label value `not ok`",
                "node_selector.a/: label key name ``",
            ],
        );
    }

    #[test]
    fn secrets_cannot_hide_the_worker_directories() {
        for path in ["/pfs", "/pfs/in", "/scratch/", "/falconeri/x", "/"] {
            let json = with(|s| s["transform"]["secrets"][0]["mount_path"] = json!(path));
            assert!(PipelineSpec::from_json(&json).is_err(), "{path}");
        }
        check(
            &with(|s| s["transform"]["secrets"][0]["mount_path"] = json!("/pfs/in")),
            &["transform.secrets[0].mount_path: must not be, contain or lie inside /pfs"],
        );
        for path in ["/pfsx", "/etc/pfs", "/var/scratch"] {
            parse(&with(|s| {
                s["transform"]["secrets"][0]["mount_path"] = json!(path)
            }));
        }
    }

    #[test]
    fn tolerations() {
        let spec = parse(&with(|s| {
            s["tolerations"] = json!([
                { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
                { "key": "pool", "value": "spot" },
                { "operator": "Exists" },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists",
                  "effect": "NoExecute", "toleration_seconds": 300 }
            ])
        }));
        assert_eq!(spec.tolerations.len(), 4);
        assert_eq!(spec.tolerations[1].operator, TolerationOperator::Equal);
        assert_eq!(spec.tolerations[3].toleration_seconds, Some(300));
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(parse(&text), spec);
        check(
            &with(|s| {
                s["tolerations"] = json!([
                    { "value": "x" },
                    { "key": "Bad_/k", "operator": "Exists", "value": "v" },
                    { "key": "k", "value": "not ok" },
                    { "key": "k", "effect": "NoSchedule", "toleration_seconds": 5 }
                ])
            }),
            &[
                "tolerations[0].operator: must be `Exists` when no key",
                "tolerations[1].key: label key prefix `Bad_`",
                "tolerations[1].value: must be left out with `Exists`",
                "tolerations[2].value: label value `not ok`",
                "tolerations[3].toleration_seconds: needs",
            ],
        );
        check(
            &with(|s| s["tolerations"] = json!([{ "key": "k", "operator": "Maybe" }])),
            &["tolerations[0].operator: unknown variant `Maybe`"],
        );
        check(
            &with(|s| s["tolerations"] = json!([{ "key": "k", "seconds": 1 }])),
            &["tolerations[0].seconds: unknown field"],
        );
    }

    #[test]
    fn repo_names() {
        for good in ["a", "A.b_c-1", "..x"] {
            parse(&with(|s| {
                s["input"]["cross"][0]["atom"]["repo"] = json!(good)
            }));
        }
        for (repo, message) in [
            ("", "must not be empty"),
            (".", "`.` cannot be a directory name"),
            ("..", "`..` cannot be a directory name"),
            (
                "a/b",
                "may contain only ASCII letters, digits, '.', '_' and '-', not '/'",
            ),
            ("out", "`out` is reserved for the job's outputs (pfs/out)"),
        ] {
            check(
                &with(|s| s["input"]["cross"][1]["union"][0]["atom"]["repo"] = json!(repo)),
                &[&format!("input.cross[1].union[0].atom.repo: {message}")],
            );
        }
    }

    #[test]
    fn duplicate_repos_in_a_cross() {
        check(
            &with(|s| s["input"]["cross"][1]["union"][1]["pfs"]["repo"] = json!("a")),
            &[
                "input.cross[1].union[1].atom.repo: repo `a` also comes from \
               input.cross[0].atom.repo",
            ],
        );
        // The same repo in two branches of a union never meets itself.
        parse(&with(|s| {
            s["input"]["cross"][1]["union"][1]["pfs"]["repo"] = json!("b")
        }));
        parse(&with(|s| {
            s["input"] = json!({ "union": [
                { "atom": { "URI": "s3://b/1/", "repo": "x", "glob": "/*" } },
                { "atom": { "URI": "s3://b/2/", "repo": "x", "glob": "/*" } }
            ] })
        }));
        // Nested crosses: each level reports its own duplicates once.
        check(
            &with(|s| {
                s["input"] = json!({ "cross": [
                    { "cross": [
                        { "atom": { "URI": "s3://b/1/", "repo": "x", "glob": "/*" } },
                        { "atom": { "URI": "s3://b/2/", "repo": "x", "glob": "/*" } }
                    ] },
                    { "atom": { "URI": "s3://b/3/", "repo": "x", "glob": "/" } }
                ] })
            }),
            &[
                "input.cross[0].cross[1].atom.repo: repo `x` also comes from \
                 input.cross[0].cross[0].atom.repo",
                "input.cross[1].atom.repo: repo `x` also comes from \
                 input.cross[0].cross[0].atom.repo",
            ],
        );
    }

    #[test]
    fn empty_cross_and_union() {
        check(
            &with(|s| s["input"]["cross"][1]["union"] = json!([])),
            &["input.cross[1].union: must contain at least one input"],
        );
        check(
            &with(|s| s["input"] = json!({ "cross": [] })),
            &["input.cross: must contain at least one input"],
        );
    }

    #[test]
    fn uris() {
        for good in [
            "s3://bucket",
            "gs://bucket/a/b/",
            "file:///data/x/",
            "file://./texts/",
            "file://texts",
        ] {
            parse(&with(|s| s["egress"]["URI"] = json!(good)));
        }
        for (uri, message) in [
            (
                "http://example.com/x",
                "unsupported URI scheme `http`; use file://, s3:// or gs://",
            ),
            ("S3://bucket/", "unsupported URI scheme `S3`"),
            ("/data/x", "`/data/x` is not a URI"),
            ("s3://", "must name a bucket after s3://"),
            ("gs:///x", "must name a bucket after gs://"),
            (
                "s3://my bucket/x",
                "bucket name `my bucket` must not contain whitespace",
            ),
            ("file://", "must name a path after file://"),
            ("s3://b/x\n", "must not contain NUL or line breaks"),
        ] {
            check(
                &with(|s| s["egress"]["URI"] = json!(uri)),
                &[&format!("egress.URI: {message}")],
            );
            check(
                &with(|s| s["input"]["cross"][0]["atom"]["URI"] = json!(uri)),
                &[&format!("input.cross[0].atom.URI: {message}")],
            );
        }
    }

    /// A NUL in any string is refused with its path, once, whatever other
    /// check also refuses it; before, most of them were accepted and only
    /// failed when a worker tried to run the command.
    #[test]
    fn nul_bytes_are_refused_with_their_paths() {
        let nul = |text: &str| json!(format!("{text}\u{0}"));
        check(
            &with(|s| s["transform"]["cmd"][1] = nul("-c")),
            &["transform.cmd[1]: must not contain a NUL byte"],
        );
        check(
            &with(|s| {
                s["transform"]["image"] = nul("alpine");
                s["transform"]["env"]["GREETING"] = nul("hi");
                s["transform"]["cmd"][0] = nul("python3");
            }),
            &[
                "transform.image: must not contain a NUL byte",
                "transform.env.GREETING: must not contain a NUL byte",
                "transform.cmd[0]: must not contain a NUL byte",
            ],
        );
        // Checks that already refuse a NUL say so themselves, only once.
        check(
            &with(|s| s["egress"]["URI"] = nul("s3://bucket/out/")),
            &["egress.URI: must not contain NUL or line breaks"],
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let err = PipelineSpec::from_json(&with(|s| {
            s["pipeline"]["name"] = json!("");
            s["transform"]["cmd"] = json!([]);
            s["transform"]["image"] = json!("");
            s["parallelism_spec"]["constant"] = json!(0);
            s["resource_requests"]["memory"] = json!("x");
            s["egress"]["URI"] = json!("ftp://x");
        }))
        .unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "pipeline.name",
                "transform.cmd",
                "transform.image",
                "parallelism_spec.constant",
                "resource_requests.memory",
                "egress.URI",
            ]
        );
        let text = err.to_string();
        assert_eq!(text.lines().count(), 6);
        assert!(text.starts_with("pipeline.name: must not be empty\ntransform.cmd: "));
    }

    #[test]
    fn spec_errors_serialize_for_the_api() {
        let err = SpecError {
            problems: vec![SpecProblem {
                path: "transform.cmd".into(),
                message: "must name at least the program to run".into(),
            }],
        };
        let value = serde_json::to_value(&err).unwrap();
        assert_eq!(
            value,
            json!({ "problems": [
                { "path": "transform.cmd", "message": "must name at least the program to run" }
            ] })
        );
        assert_eq!(serde_json::from_value::<SpecError>(value).unwrap(), err);
        assert_eq!(
            SpecError { problems: vec![] }.to_string(),
            "invalid pipeline spec"
        );
    }

    #[test]
    fn atoms_are_depth_first_in_document_order() {
        let spec = parse(&base().to_string());
        let repos: Vec<&str> = spec.input.atoms().iter().map(|a| a.repo.as_str()).collect();
        assert_eq!(repos, ["a", "b", "c"]);
    }

    #[test]
    fn relative_file_uris_are_resolved() {
        let mut spec = parse(&with(|s| {
            s["input"] = json!({ "union": [
                { "atom": { "URI": "file://./texts/", "repo": "a", "glob": "/*" } },
                { "atom": { "URI": "file://more", "repo": "b", "glob": "/*" } },
                { "atom": { "URI": "file://./", "repo": "c", "glob": "/" } },
                { "atom": { "URI": "file:///abs/x/", "repo": "d", "glob": "/" } },
                { "atom": { "URI": "s3://b/x/", "repo": "e", "glob": "/" } }
            ] });
            s["egress"]["URI"] = json!("file://././out/");
        }));
        spec.resolve_relative_file_uris(Path::new("/specs/wf"));
        let uris: Vec<&str> = spec.input.atoms().iter().map(|a| a.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "file:///specs/wf/texts/",
                "file:///specs/wf/more",
                "file:///specs/wf/",
                "file:///abs/x/",
                "s3://b/x/",
            ]
        );
        assert_eq!(spec.egress.uri, "file:///specs/wf/out/");
        spec.validate().unwrap();
    }

    #[test]
    fn human_durations() {
        let d: HumanDuration = serde_json::from_str("\"2h 30m\"").unwrap();
        assert_eq!(d.0, Duration::from_secs(9000));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"2h 30m\"");
        let d: HumanDuration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(Duration::from(d), Duration::from_secs(300));
        assert_eq!(d.to_string(), "5m");
    }

    #[test]
    fn json_schema_describes_the_spec() {
        let schema = json_schema();
        let properties = &schema["properties"];
        for field in [
            "pipeline",
            "transform",
            "input",
            "egress",
            "job_timeout",
            "tolerations",
        ] {
            assert!(properties.get(field).is_some(), "no {field} in {schema:#}");
        }
        assert_eq!(schema["additionalProperties"], json!(false));
        let text = schema.to_string();
        assert!(text.contains("HumanDuration"));
        assert!(text.contains("\"/*\""));
        assert!(text.contains("\"URI\""));
        let input_kinds: Vec<&str> = schema["$defs"]["Input"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|variant| variant["required"].as_array().unwrap())
            .map(|kind| kind.as_str().unwrap())
            .collect();
        assert_eq!(
            input_kinds,
            ["atom", "cross", "union", "join", "group", "pfs"]
        );
    }
}
