//! `netscope-agent audit verify`: completeness of a time range of the audit trail in RGW.

use clap::Args;

use super::AppError;
use crate::{
    audit::{
        s3::S3Store,
        verify::{VerifyReport, parse_time, verify},
    },
    config::{ConfigError, S3Args},
};

#[derive(Args, Clone, Debug)]
pub struct VerifyArgs {
    /// Start of the range (UTC, `2026-11-26T10:00:00Z`, or Unix ms), inclusive.
    #[arg(long)]
    pub from: String,
    /// End of the range, exclusive.
    #[arg(long)]
    pub to: String,
    /// Only this node's events.
    #[arg(long)]
    pub node: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
}

pub struct VerifySettings {
    pub store: S3Store,
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
    pub node: Option<String>,
}

impl VerifyArgs {
    pub fn validate(&self) -> Result<VerifySettings, ConfigError> {
        let mut errors = Vec::new();
        let mut time = |what: &str, s: &str| {
            parse_time(s)
                .map_err(|e| errors.push(format!("--{what} {e}")))
                .unwrap_or(0)
        };
        let (from, to) = (time("from", &self.from), time("to", &self.to));
        if errors.is_empty() && from >= to {
            errors.push(format!(
                "--from {} is not before --to {}",
                self.from, self.to
            ));
        }
        let s3 = self.s3.validate_into(&mut errors);
        match s3 {
            Some(s3) if errors.is_empty() => Ok(VerifySettings {
                store: S3Store::new(s3),
                from_unix_ms: from,
                to_unix_ms: to,
                node: self.node.clone(),
            }),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }
}

pub async fn verify_audit(s: &VerifySettings) -> Result<VerifyReport, AppError> {
    s.store
        .check()
        .await
        .map_err(crate::audit::rgw::AuditError::from)?;
    Ok(
        verify(&s.store, s.from_unix_ms, s.to_unix_ms, s.node.as_deref())
            .await
            .map_err(crate::audit::rgw::AuditError::from)?,
    )
}
