//! Settings of the audit trail: where `run` writes it (a local NDJSON file, or Ceph RGW through
//! the local spool) and how `audit verify` reaches RGW. The S3 secret key is read from the
//! environment only (`NETSCOPE_AUDIT_S3_SECRET_KEY`), never from the command line.

use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::audit::{rgw::SpoolSettings, s3::S3Settings};

/// The local Ceph's S3 user (scripts/ceph.sh).
const LOCAL_ACCESS_KEY: &str = "netscope-local";
const LOCAL_SECRET_KEY: &str = "netscope-local-secret";
pub const SECRET_ENV: &str = "NETSCOPE_AUDIT_S3_SECRET_KEY";

#[derive(Args, Clone, Debug)]
pub struct S3Args {
    /// RGW's S3 endpoint.
    #[arg(
        long = "audit-s3-endpoint",
        env = "NETSCOPE_AUDIT_S3_ENDPOINT",
        default_value = "http://127.0.0.1:7480"
    )]
    pub endpoint: String,
    #[arg(
        long = "audit-s3-bucket",
        env = "NETSCOPE_AUDIT_S3_BUCKET",
        default_value = "netscope-audit"
    )]
    pub bucket: String,
    /// Access key; the secret comes from NETSCOPE_AUDIT_S3_SECRET_KEY (for the local Ceph's
    /// user `netscope-local`, its fixed local secret is the default).
    #[arg(
        long = "audit-s3-access-key",
        env = "NETSCOPE_AUDIT_S3_ACCESS_KEY",
        default_value = LOCAL_ACCESS_KEY
    )]
    pub access_key: String,
    /// A file holding the access key (a mounted Secret), instead of `--audit-s3-access-key`.
    #[arg(
        long = "audit-s3-access-key-file",
        env = "NETSCOPE_AUDIT_S3_ACCESS_KEY_FILE"
    )]
    pub access_key_file: Option<PathBuf>,
    /// A file holding the secret key (a mounted Secret), instead of
    /// NETSCOPE_AUDIT_S3_SECRET_KEY.
    #[arg(
        long = "audit-s3-secret-key-file",
        env = "NETSCOPE_AUDIT_S3_SECRET_KEY_FILE"
    )]
    pub secret_key_file: Option<PathBuf>,
    /// The zonegroup that signs requests (`default` on a stock Ceph).
    #[arg(
        long = "audit-s3-region",
        env = "NETSCOPE_AUDIT_S3_REGION",
        default_value = "default"
    )]
    pub region: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuditSinkKind {
    /// A local NDJSON file (`--audit-file`).
    File,
    /// Ceph RGW over S3, through the local spool.
    Rgw,
}

#[derive(Args, Clone, Debug)]
pub struct AuditArgs {
    /// Where the audit trail goes.
    #[arg(long, env = "NETSCOPE_AUDIT_SINK", value_enum, default_value_t = AuditSinkKind::File)]
    pub audit_sink: AuditSinkKind,
    /// The local audit file (`--audit-sink file`; NDJSON, fsynced before a record is committed).
    #[arg(
        long,
        env = "NETSCOPE_AUDIT_FILE",
        default_value = ".netscope/audit.ndjson"
    )]
    pub audit_file: PathBuf,
    #[command(flatten)]
    pub s3: S3Args,
    /// The spool's directory (`--audit-sink rgw`; one subdirectory per node).
    #[arg(
        long,
        env = "NETSCOPE_AUDIT_SPOOL_DIR",
        default_value = ".netscope/spool"
    )]
    pub audit_spool_dir: PathBuf,
    /// Disk the spool may use while RGW is down; when it is used up, consumption pauses.
    #[arg(long, env = "NETSCOPE_AUDIT_SPOOL_BUDGET_MB", default_value_t = 1024)]
    pub audit_spool_budget_mb: u64,
    /// Events per RGW object at most.
    #[arg(long, env = "NETSCOPE_AUDIT_BATCH_EVENTS", default_value_t = 10_000)]
    pub audit_batch_events: u64,
    /// A batch is shipped at the latest this long after its first event.
    #[arg(long, env = "NETSCOPE_AUDIT_BATCH_AGE_MS", default_value_t = 1000)]
    pub audit_batch_age_ms: u64,
    /// Retention of each object when the bucket has Object Lock without a default rule.
    #[arg(long, env = "NETSCOPE_AUDIT_LOCK_DAYS", default_value_t = 30)]
    pub audit_lock_days: u32,
    /// Create the bucket if it does not exist (local setups; production buckets are made,
    /// with Object Lock, by whoever owns them).
    #[arg(long, env = "NETSCOPE_AUDIT_CREATE_BUCKET")]
    pub audit_create_bucket: bool,
}

/// Validated RGW side of the audit trail.
#[derive(Clone, Debug)]
pub struct RgwAuditSettings {
    pub s3: S3Settings,
    pub spool: SpoolSettings,
    pub lock_days: u32,
    pub create_bucket: bool,
}

#[derive(Clone, Debug)]
pub enum AuditSettings {
    File(PathBuf),
    Rgw(Box<RgwAuditSettings>),
}

impl AuditSettings {
    /// Where the agent keeps its own state (the in-flight journal): on the spool's disk — the
    /// spool directory's parent for RGW, the audit file's directory otherwise.
    pub fn state_dir(&self) -> PathBuf {
        let dir = match self {
            Self::File(path) => path.parent(),
            Self::Rgw(r) => r.spool.dir.parent(),
        };
        dir.filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
    }
}

/// S3 bucket naming rules (3–63 of a-z 0-9 . -, starting and ending alphanumeric).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The S3 client loads the system's trust store when it is built — for an http:// endpoint
/// too — and panics when it holds no certificate (aws-smithy-http-client): said here first, as
/// a configuration error (a minimal container image without ca-certificates is the usual case).
fn trust_store_problem() -> Option<String> {
    let found = rustls_native_certs::load_native_certs();
    if !found.certs.is_empty() {
        return None;
    }
    let why = found
        .errors
        .first()
        .map_or_else(|| "none found".to_owned(), ToString::to_string);
    Some(format!(
        "no CA certificate in the system trust store ({why}): the S3 client needs it, even for an http:// endpoint; install ca-certificates, or point SSL_CERT_FILE at a PEM bundle"
    ))
}

impl S3Args {
    /// The settings, or the problems (pushed onto `errors`).
    pub fn validate_into(&self, errors: &mut Vec<String>) -> Option<S3Settings> {
        let before = errors.len();
        match url::Url::parse(&self.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => errors.push(format!(
                "audit-s3-endpoint `{}`: expected http(s)://host[:port]",
                self.endpoint
            )),
        }
        if !valid_bucket(&self.bucket) {
            errors.push(format!(
                "audit-s3-bucket `{}`: 3–63 of a-z 0-9 . -, starting and ending with a letter or digit",
                self.bucket
            ));
        }
        let access_key = match &self.access_key_file {
            Some(path) => key_file("audit-s3-access-key-file", path, errors),
            None => Some(self.access_key.clone()),
        }
        .unwrap_or_default();
        if access_key.is_empty() {
            errors.push("audit-s3-access-key is empty".to_owned());
        }
        if self.region.is_empty() {
            errors.push("audit-s3-region is empty".to_owned());
        }
        if let Some(e) = trust_store_problem() {
            errors.push(e);
        }
        let from_env = std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty());
        let secret = match (&self.secret_key_file, from_env) {
            (Some(_), Some(_)) => {
                errors.push(format!(
                    "both {SECRET_ENV} and audit-s3-secret-key-file are set: set one"
                ));
                None
            }
            (Some(path), None) => key_file("audit-s3-secret-key-file", path, errors),
            (None, Some(s)) => Some(s),
            (None, None) if access_key == LOCAL_ACCESS_KEY => Some(LOCAL_SECRET_KEY.to_owned()),
            (None, None) => {
                errors.push(format!(
                    "{SECRET_ENV} is not set, nor audit-s3-secret-key-file: the secret of access key `{access_key}` is read from one of them"
                ));
                None
            }
        };
        (errors.len() == before).then(|| S3Settings {
            endpoint: self.endpoint.trim_end_matches('/').to_owned(),
            bucket: self.bucket.clone(),
            access_key,
            secret_key: secret.unwrap_or_default(),
            region: self.region.clone(),
        })
    }
}

/// A key read from a file (a mounted Secret): its content without the trailing newline. An
/// error names the file, never what it holds.
fn key_file(what: &str, path: &std::path::Path, errors: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim_end_matches(['\n', '\r']).to_owned()),
        Ok(_) => {
            errors.push(format!("{what} {}: empty", path.display()));
            None
        }
        Err(e) => {
            errors.push(format!("{what} {}: {e}", path.display()));
            None
        }
    }
}

impl AuditArgs {
    pub fn validate_into(&self, node: &str, errors: &mut Vec<String>) -> Option<AuditSettings> {
        if self.audit_sink == AuditSinkKind::File {
            return Some(AuditSettings::File(self.audit_file.clone()));
        }
        let before = errors.len();
        let s3 = self.s3.validate_into(errors);
        if !(1..=100_000).contains(&self.audit_batch_events) {
            errors.push(format!(
                "audit-batch-events {}: 1–100000",
                self.audit_batch_events
            ));
        }
        // A batch spans less than an hour: `audit verify` relies on it.
        if !(10..=600_000).contains(&self.audit_batch_age_ms) {
            errors.push(format!(
                "audit-batch-age-ms {}: 10–600000",
                self.audit_batch_age_ms
            ));
        }
        let batch_bytes = 64 << 20;
        if self.audit_spool_budget_mb < 2 * (batch_bytes >> 20) {
            errors.push(format!(
                "audit-spool-budget-mb {}: at least {} (two full batches)",
                self.audit_spool_budget_mb,
                2 * (batch_bytes >> 20)
            ));
        }
        if !(1..=36_500).contains(&self.audit_lock_days) {
            errors.push(format!("audit-lock-days {}: 1–36500", self.audit_lock_days));
        }
        let s3 = s3.filter(|_| errors.len() == before)?;
        Some(AuditSettings::Rgw(Box::new(RgwAuditSettings {
            s3,
            spool: SpoolSettings {
                dir: self.audit_spool_dir.join(node),
                node: node.to_owned(),
                budget_bytes: self.audit_spool_budget_mb << 20,
                batch_events: self.audit_batch_events,
                batch_bytes,
                batch_age: Duration::from_millis(self.audit_batch_age_ms),
                queue: 8192,
            },
            lock_days: self.audit_lock_days,
            create_bucket: self.audit_create_bucket,
        })))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AuditArgs,
    }

    fn validate(argv: &[&str]) -> Result<AuditSettings, Vec<String>> {
        let mut all = vec!["x"];
        all.extend_from_slice(argv);
        let args = Cli::try_parse_from(all).unwrap().args;
        let mut errors = Vec::new();
        args.validate_into("node-a", &mut errors).ok_or(errors)
    }

    #[test]
    fn the_local_rgw_needs_no_settings() {
        let Ok(AuditSettings::Rgw(s)) = validate(&["--audit-sink", "rgw"]) else {
            panic!("rgw settings expected");
        };
        assert_eq!(s.s3.endpoint, "http://127.0.0.1:7480");
        assert_eq!(s.s3.secret_key, LOCAL_SECRET_KEY);
        assert_eq!(s.spool.dir, PathBuf::from(".netscope/spool/node-a"));
        assert!(matches!(validate(&[]), Ok(AuditSettings::File(_))));
    }

    #[test]
    fn every_bad_setting_is_listed_at_once() {
        let errors = validate(&[
            "--audit-sink",
            "rgw",
            "--audit-s3-endpoint",
            "ftp://x",
            "--audit-s3-bucket",
            "Bad_Bucket",
            "--audit-s3-access-key",
            "someone-else",
            "--audit-batch-events",
            "0",
            "--audit-batch-age-ms",
            "5",
            "--audit-spool-budget-mb",
            "1",
            "--audit-lock-days",
            "0",
        ])
        .unwrap_err();
        let joined = errors.join("\n");
        for needle in [
            "audit-s3-endpoint `ftp://x`",
            "audit-s3-bucket `Bad_Bucket`",
            SECRET_ENV,
            "audit-batch-events 0",
            "audit-batch-age-ms 5",
            "audit-spool-budget-mb 1",
            "audit-lock-days 0",
        ] {
            assert!(joined.contains(needle), "{needle} missing from:\n{joined}");
        }
        assert_eq!(errors.len(), 7, "{joined}");
    }

    #[test]
    fn keys_come_from_mounted_files_and_a_bad_file_is_named_without_its_content() {
        let dir = std::env::temp_dir().join(format!("ns-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (access, secret) = (dir.join("access-key"), dir.join("secret-key"));
        std::fs::write(&access, "AKIA-FILE\n").unwrap();
        std::fs::write(&secret, "s3cr3t-from-file\n").unwrap();
        let argv = |a: &std::path::Path, s: &std::path::Path| {
            [
                "--audit-sink".to_owned(),
                "rgw".to_owned(),
                "--audit-s3-access-key-file".to_owned(),
                a.display().to_string(),
                "--audit-s3-secret-key-file".to_owned(),
                s.display().to_string(),
            ]
        };
        let args = argv(&access, &secret);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let Ok(AuditSettings::Rgw(s)) = validate(&args) else {
            panic!("rgw settings expected");
        };
        assert_eq!(
            (s.s3.access_key.as_str(), s.s3.secret_key.as_str()),
            ("AKIA-FILE", "s3cr3t-from-file")
        );
        std::fs::write(&secret, "").unwrap();
        let args = argv(&dir.join("missing"), &secret);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let errors = validate(&args).unwrap_err().join("\n");
        assert!(
            errors.contains("audit-s3-access-key-file") && errors.contains("missing"),
            "{errors}"
        );
        assert!(
            errors.contains("audit-s3-secret-key-file") && errors.contains("empty"),
            "{errors}"
        );
        assert!(!errors.contains("AKIA-FILE"), "{errors}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
