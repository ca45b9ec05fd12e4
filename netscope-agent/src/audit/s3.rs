//! The audit trail's object store: Ceph RGW over S3 (aws-sdk-s3, path-style, custom endpoint).
//!
//! Events are stored in batches: gzip-compressed NDJSON objects under deterministic keys
//! `v1/<yyyy-mm-dd>/<hh>/<node>/<first seq>-<last seq>.ndjson.gz`, so that a retried upload
//! targets the same key and can neither duplicate nor (being write-once) overwrite a batch.
//!
//! Write-once: Ceph 16 ignores `If-None-Match: *` on versioned and Object Lock buckets, so a put
//! first asks whether the key exists (one writer per node makes that race-free), and still sends
//! `If-None-Match` for plain buckets. Checksums: calculated only when required (streamed bodies
//! otherwise fail on RGW with `XAmzContentSHA256Mismatch`), plus an explicit CRC32 on every body.

use std::time::Duration;

use aws_sdk_s3::{
    Client,
    config::{
        Builder, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
        retry::RetryConfig, timeout::TimeoutConfig,
    },
    error::{DisplayErrorContext, SdkError},
    primitives::{ByteStream, DateTime},
    types::{ObjectLockEnabled, ObjectLockMode, ObjectLockRetentionMode},
};
use base64::Engine as _;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:7480`.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// RGW's zonegroup name signs requests (`default` for a stock Ceph).
    pub region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error(
        "audit bucket `{bucket}` does not exist at {endpoint}: create it, or fix the bucket name"
    )]
    NoSuchBucket { endpoint: String, bucket: String },
    #[error("RGW at {endpoint} refused access key `{access_key}` for bucket `{bucket}`: {detail}")]
    Credentials {
        endpoint: String,
        bucket: String,
        access_key: String,
        detail: String,
    },
    #[error("RGW at {endpoint} is unreachable: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("S3 {op} `{key}`: {detail}")]
    Request {
        op: &'static str,
        key: String,
        detail: String,
    },
}

/// What a write-once put found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// The key already held a batch (a retried upload): nothing was changed.
    AlreadyThere,
}

/// Object Lock retention given to every batch written (when the bucket has Object Lock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub mode: ObjectLockMode,
    pub days: u32,
}

pub struct S3Store {
    client: Client,
    settings: S3Settings,
    retention: Option<Retention>,
}

fn detail<E: std::error::Error + 'static, R: std::fmt::Debug>(e: &SdkError<E, R>) -> String {
    DisplayErrorContext(e).to_string()
}

impl S3Store {
    pub fn new(settings: S3Settings) -> Self {
        let conf = Builder::new()
            .behavior_version_latest()
            .endpoint_url(&settings.endpoint)
            .region(Region::new(settings.region.clone()))
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &settings.access_key,
                &settings.secret_key,
                None,
                None,
                "netscope",
            ))
            // The shipper retries with its own backoff: one attempt per call here, and a dead
            // endpoint is noticed within seconds.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Self {
            client: Client::from_conf(conf),
            settings,
            retention: None,
        }
    }

    /// Every batch written from now on gets this retention.
    pub fn set_retention(&mut self, retention: Option<Retention>) {
        self.retention = retention;
    }

    /// The retention the bucket's Object Lock asks for: its default rule, or COMPLIANCE for
    /// `fallback_days` when it has none; `None` when the bucket has no Object Lock.
    pub async fn object_lock(&self, fallback_days: u32) -> Result<Option<Retention>, S3Error> {
        let out = match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.settings.bucket)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                return Ok(None);
            }
            Err(e) => {
                return Err(S3Error::Request {
                    op: "GetObjectLockConfiguration",
                    key: self.settings.bucket.clone(),
                    detail: detail(&e),
                });
            }
        };
        let Some(conf) = out
            .object_lock_configuration()
            .filter(|c| c.object_lock_enabled() == Some(&ObjectLockEnabled::Enabled))
        else {
            return Ok(None);
        };
        let rule = conf.rule().and_then(|r| r.default_retention());
        let mode = match rule.and_then(|r| r.mode()) {
            Some(ObjectLockRetentionMode::Governance) => ObjectLockMode::Governance,
            _ => ObjectLockMode::Compliance,
        };
        let days = rule
            .and_then(|r| {
                r.days()
                    .or_else(|| r.years().map(|y| y.saturating_mul(365)))
            })
            .and_then(|d| u32::try_from(d).ok())
            .filter(|&d| d > 0)
            .unwrap_or(fallback_days);
        Ok(Some(Retention { mode, days }))
    }

    /// At boot: the bucket exists and these credentials may use it — or one clear error.
    pub async fn check(&self) -> Result<(), S3Error> {
        let s = &self.settings;
        match self.client.head_bucket().bucket(&s.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.raw_response().map(|r| r.status().as_u16()) {
                Some(404) => S3Error::NoSuchBucket {
                    endpoint: s.endpoint.clone(),
                    bucket: s.bucket.clone(),
                },
                Some(401 | 403) => S3Error::Credentials {
                    endpoint: s.endpoint.clone(),
                    bucket: s.bucket.clone(),
                    access_key: s.access_key.clone(),
                    detail: detail(&e),
                },
                _ => S3Error::Unreachable {
                    endpoint: s.endpoint.clone(),
                    detail: detail(&e),
                },
            }),
        }
    }

    /// Creates the bucket (local setups and tests); an existing one of ours is fine.
    pub async fn create_bucket(&self) -> Result<(), S3Error> {
        match self
            .client
            .create_bucket()
            .bucket(&self.settings.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(e) => Err(S3Error::Request {
                op: "CreateBucket",
                key: self.settings.bucket.clone(),
                detail: detail(&e),
            }),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, S3Error> {
        match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(S3Error::Request {
                op: "HeadObject",
                key: key.to_owned(),
                detail: detail(&e),
            }),
        }
    }

    /// Writes `body` under `key` unless something is there already.
    pub async fn put_once(&self, key: &str, body: Vec<u8>) -> Result<PutOutcome, S3Error> {
        if self.exists(key).await? {
            return Ok(PutOutcome::AlreadyThere);
        }
        let crc =
            base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(&body).to_be_bytes());
        let mut put = self
            .client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .if_none_match("*")
            .checksum_crc32(crc)
            .content_type("application/x-ndjson")
            .content_encoding("gzip")
            .body(ByteStream::from(body));
        if let Some(r) = &self.retention {
            let until =
                std::time::SystemTime::now() + Duration::from_secs(u64::from(r.days) * 86_400);
            put = put
                .object_lock_mode(r.mode.clone())
                .object_lock_retain_until_date(DateTime::from(until));
        }
        let sent = put.send().await;
        match sent {
            Ok(_) => Ok(PutOutcome::Written),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                Ok(PutOutcome::AlreadyThere)
            }
            Err(e) => Err(S3Error::Request {
                op: "PutObject",
                key: key.to_owned(),
                detail: detail(&e),
            }),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, S3Error> {
        let err = |d: String| S3Error::Request {
            op: "GetObject",
            key: key.to_owned(),
            detail: d,
        };
        let out = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err(detail(&e)))?;
        let bytes = out.body.collect().await.map_err(|e| err(e.to_string()))?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// Every key under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        self.list_range(prefix, None, None).await
    }

    /// The keys under `prefix` after `start_after` and before `end`, in key order (listing
    /// stops at `end`: a range costs what it holds, not what the bucket holds).
    pub async fn list_range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        end: Option<&str>,
    ) -> Result<Vec<String>, S3Error> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.settings.bucket)
                .prefix(prefix)
                .set_start_after(start_after.map(str::to_owned))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| S3Error::Request {
                    op: "ListObjectsV2",
                    key: prefix.to_owned(),
                    detail: detail(&e),
                })?;
            let before = keys.len();
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned))
                    .take_while(|k| end.is_none_or(|end| k.as_str() < end)),
            );
            let reached_end = keys.len() - before < out.contents().len();
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) && !reached_end => {
                    token = Some(t.to_owned());
                }
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }
}
