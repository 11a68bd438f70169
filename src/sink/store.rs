//! Builds the object store for a remote output, and probes it for `check-config --probe`.
//!
//! Credentials never come from the TOML. They come, in this order, from systemd credentials
//! (`$CREDENTIALS_DIRECTORY/aws_access_key_id` and `aws_secret_access_key`, optional
//! `aws_session_token`; `google_service_account` for GCS; `azure_storage_account_key` for
//! Azure), then from the environment the object_store builders read (`AWS_ACCESS_KEY_ID`, …,
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …), then from instance metadata
//! (EC2 IMDS, ECS, web identity on AWS).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
#[cfg(feature = "azure")]
use object_store::azure::MicrosoftAzureBuilder;
#[cfg(feature = "gcs")]
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::config::{RemoteOutput, StoreKind};
use crate::telemetry::UploadErrorKind;

/// The store could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("output.url {url}: {source}")]
pub struct BuildError {
    url: String,
    source: object_store::Error,
}

/// A systemd credential's content, trimmed, when `$CREDENTIALS_DIRECTORY/name` exists.
fn credential(name: &str) -> Option<String> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let text = std::fs::read_to_string(PathBuf::from(dir).join(name)).ok()?;
    Some(text.trim().to_string()).filter(|s| !s.is_empty())
}

fn credential_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = PathBuf::from(dir).join(name);
    path.is_file().then_some(path)
}

/// Where the credentials will come from, for the startup log and `check-config`.
pub fn credential_source(remote: &RemoteOutput) -> &'static str {
    let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    match remote.kind {
        StoreKind::S3 if credential("aws_access_key_id").is_some() => "systemd credentials",
        StoreKind::S3 if env("AWS_ACCESS_KEY_ID") => "environment",
        StoreKind::S3 if env("AWS_WEB_IDENTITY_TOKEN_FILE") => "web identity",
        StoreKind::S3 => "instance metadata (no AWS_ACCESS_KEY_ID in the environment)",
        StoreKind::Gcs if credential_path("google_service_account").is_some() => {
            "systemd credentials"
        }
        StoreKind::Azure if credential("azure_storage_account_key").is_some() => {
            "systemd credentials"
        }
        StoreKind::Gcs | StoreKind::Azure => "environment or instance metadata",
    }
}

/// The object store of `remote` (no network IO happens here).
pub fn build(remote: &RemoteOutput) -> Result<Arc<dyn ObjectStore>, BuildError> {
    crate::tls::install_provider();
    let client = ClientOptions::new()
        .with_timeout(remote.request_timeout)
        .with_connect_timeout(remote.request_timeout.min(Duration::from_secs(5)))
        .with_allow_http(remote.allow_http);
    // object_store retries a request briefly; the uploader's own loop covers long outages.
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: remote.request_timeout,
    };
    let err = |source| BuildError {
        url: remote.url.clone(),
        source,
    };
    let store: Arc<dyn ObjectStore> = match remote.kind {
        StoreKind::S3 => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&remote.bucket)
                .with_client_options(client)
                .with_retry(retry)
                .with_allow_http(remote.allow_http)
                .with_virtual_hosted_style_request(remote.virtual_hosted_style);
            if let Some(region) = &remote.region {
                b = b.with_region(region);
            }
            if let Some(endpoint) = &remote.endpoint {
                b = b.with_endpoint(endpoint);
            }
            if let (Some(id), Some(secret)) = (
                credential("aws_access_key_id"),
                credential("aws_secret_access_key"),
            ) {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Some(token) = credential("aws_session_token") {
                    b = b.with_token(token);
                }
            }
            Arc::new(b.build().map_err(err)?)
        }
        #[cfg(feature = "gcs")]
        StoreKind::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&remote.bucket)
                .with_client_options(client)
                .with_retry(retry);
            if let Some(path) = credential_path("google_service_account") {
                b = b.with_service_account_path(path.to_string_lossy());
            }
            Arc::new(b.build().map_err(err)?)
        }
        #[cfg(feature = "azure")]
        StoreKind::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(&remote.bucket)
                .with_client_options(client)
                .with_retry(retry);
            if let Some(key) = credential("azure_storage_account_key") {
                b = b.with_access_key(key);
            }
            Arc::new(b.build().map_err(err)?)
        }
        #[cfg(not(all(feature = "gcs", feature = "azure")))]
        other => {
            return Err(err(object_store::Error::NotSupported {
                source: format!(
                    "{other:?} support is not in this build: rebuild with `cargo build --release --features {}`",
                    if other == StoreKind::Gcs { "gcs" } else { "azure" }
                )
                .into(),
            }));
        }
    };
    Ok(store)
}

/// The object key of a spooled file: `{prefix}/{rel}` with `/` separators.
pub fn object_key(prefix: &str, rel: &std::path::Path) -> ObjectPath {
    let mut key = String::from(prefix);
    for part in rel.components() {
        if !key.is_empty() {
            key.push('/');
        }
        key.push_str(&part.as_os_str().to_string_lossy());
    }
    ObjectPath::from(key)
}

/// Sorts a store error into a metrics label.
pub fn classify(e: &object_store::Error) -> UploadErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => UploadErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => UploadErrorKind::Auth,
        E::Generic { source, .. } => {
            let text = source.to_string();
            if text.contains("NoSuchBucket") {
                UploadErrorKind::NotFound
            } else if text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("AccessDenied")
                || text.contains("credential")
            {
                UploadErrorKind::Auth
            } else {
                UploadErrorKind::Unavailable
            }
        }
        _ => UploadErrorKind::Other,
    }
}

/// What the probe did.
#[derive(Debug)]
pub struct ProbeReport {
    /// The probe object's key.
    pub key: String,
    /// Time for the write, read back and delete.
    pub elapsed: Duration,
    /// The delete was refused (the policy may lack `s3:DeleteObject`): a stray probe object
    /// remains.
    pub delete_refused: bool,
}

/// Writes, reads back and deletes a small object under the prefix: proves the bucket exists
/// and the credentials may write there. The error message says what to check.
pub async fn probe(remote: &RemoteOutput, node: &str) -> Result<ProbeReport, String> {
    let store = build(remote).map_err(|e| e.to_string())?;
    let key = object_key(
        &remote.prefix,
        std::path::Path::new(&format!("_fleetlake_probe/{node}.txt")),
    );
    let started = Instant::now();
    let explain = |what: &str, e: object_store::Error| {
        let hint = match classify(&e) {
            UploadErrorKind::NotFound => format!(
                "bucket `{}` does not exist (or output.s3.endpoint / region is wrong)",
                remote.bucket
            ),
            UploadErrorKind::Auth => format!(
                "credentials missing or refused (from {})",
                credential_source(remote)
            ),
            UploadErrorKind::Unavailable => {
                "the store is unreachable or failing (endpoint, network, TLS)".to_string()
            }
            _ => "the store refused the request".to_string(),
        };
        format!("{what} {key}: {hint}: {e}")
    };
    store
        .put(&key, PutPayload::from_static(b"fleetlake probe\n"))
        .await
        .map_err(|e| explain("writing", e))?;
    let meta = store.head(&key).await.map_err(|e| explain("reading", e))?;
    if meta.size != 16 {
        return Err(format!(
            "reading {key}: wrote 16 bytes, the store reports {}",
            meta.size
        ));
    }
    let delete_refused = store.delete(&key).await.is_err();
    Ok(ProbeReport {
        key: key.to_string(),
        elapsed: started.elapsed(),
        delete_refused,
    })
}
