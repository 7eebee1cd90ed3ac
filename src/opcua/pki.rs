//! The server's own certificate: created on the first start (with the
//! configured host name in its subject alternative names) and kept.

use opcua::crypto::{CertificateStore, X509Data};
use std::path::Path;
use tracing::info;

/// The own certificate, relative to the PKI directory.
pub(crate) const CERT: &str = "own/cert.der";
/// The own private key, relative to the PKI directory.
pub(crate) const KEY: &str = "private/private.pem";
/// Validity of a created certificate: nothing renews it.
const VALID_DAYS: u32 = 5 * 365;

/// Creates `own/cert.der` and `private/private.pem` under `pki_dir` unless
/// both exist; returns whether it created them.
///
/// # Errors
/// The directory cannot be written or the key not generated.
pub(crate) fn ensure_own_certificate(
    pki_dir: &Path,
    application_uri: &str,
    hostname: &str,
) -> Result<bool, String> {
    let cert = pki_dir.join(CERT);
    let key = pki_dir.join(KEY);
    if cert.is_file() && key.is_file() {
        return Ok(false);
    }
    for dir in ["own", "private", "trusted", "rejected"] {
        std::fs::create_dir_all(pki_dir.join(dir))
            .map_err(|e| format!("cannot create {}: {e}", pki_dir.join(dir).display()))?;
    }
    let data = X509Data {
        key_size: 2048,
        common_name: "microdcs".into(),
        organization: "microdcs".into(),
        organizational_unit: "station".into(),
        country: "AT".into(),
        state: String::new(),
        alt_host_names: X509Data::alt_host_names(
            application_uri,
            Some(vec![hostname.to_owned()]),
            true,
            false,
            false,
        ),
        certificate_duration_days: VALID_DAYS,
    };
    CertificateStore::create_certificate_and_key(&data, true, &cert, &key)?;
    info!(
        certificate = %cert.display(),
        valid_days = VALID_DAYS,
        hostname,
        application_uri,
        "OPC UA server certificate created"
    );
    Ok(true)
}

/// Removes from `rejected/` every certificate an operator has since put
/// into `trusted/` (the same bytes, whatever the file is called); returns
/// how many.
///
/// async-opcua looks in `rejected/` first: without this, a client refused
/// once stays refused after it was trusted, until someone deletes the
/// rejected copy (which a container without a shell makes hard). Files
/// that cannot be read are skipped; the next sweep tries again.
pub(crate) fn forget_rejected_now_trusted(pki_dir: &Path) -> usize {
    let der_files = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "der"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let rejected = der_files(&pki_dir.join("rejected"));
    if rejected.is_empty() {
        return 0;
    }
    let trusted: Vec<Vec<u8>> = der_files(&pki_dir.join("trusted"))
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    let mut forgotten = 0;
    for path in rejected {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if trusted.contains(&bytes) && std::fs::remove_file(&path).is_ok() {
            info!(certificate = %path.display(), "a rejected OPC UA client certificate is now trusted");
            forgotten += 1;
        }
    }
    forgotten
}

/// Sweeps `rejected/` ([`forget_rejected_now_trusted`]) every few seconds
/// until `shutdown`.
pub(crate) async fn sweep_rejected(
    pki_dir: std::path::PathBuf,
    mut shutdown: crate::app::Shutdown,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let dir = pki_dir.clone();
                let _ = tokio::task::spawn_blocking(move || forget_rejected_now_trusted(&dir)).await;
            }
            _ = shutdown.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            ensure_own_certificate(dir.path(), "urn:microdcs:test", "station.example").unwrap()
        );
        let first = std::fs::read(dir.path().join(CERT)).unwrap();
        let key = std::fs::read(dir.path().join(KEY)).unwrap();
        assert!(!first.is_empty() && !key.is_empty());
        assert!(dir.path().join("trusted").is_dir() && dir.path().join("rejected").is_dir());
        // The host name is in the certificate (as a DNS SAN, DER IA5String).
        assert!(first.windows(15).any(|w| w == b"station.example"));
        assert!(!ensure_own_certificate(dir.path(), "urn:microdcs:test", "other").unwrap());
        assert_eq!(std::fs::read(dir.path().join(CERT)).unwrap(), first);
        assert_eq!(std::fs::read(dir.path().join(KEY)).unwrap(), key);
    }

    #[test]
    fn a_rejected_certificate_is_forgotten_once_it_is_trusted_under_any_name() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["rejected", "trusted"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let rejected = dir.path().join("rejected/CN=client [ab12].der");
        std::fs::write(&rejected, b"client certificate").unwrap();
        std::fs::write(dir.path().join("rejected/other.der"), b"another client").unwrap();
        assert_eq!(
            forget_rejected_now_trusted(dir.path()),
            0,
            "nothing trusted yet"
        );
        assert!(rejected.is_file());
        std::fs::write(dir.path().join("trusted/client.der"), b"client certificate").unwrap();
        assert_eq!(forget_rejected_now_trusted(dir.path()), 1);
        assert!(!rejected.exists(), "the trusted one is no longer rejected");
        assert!(
            dir.path().join("rejected/other.der").is_file(),
            "the other stays"
        );
        assert_eq!(forget_rejected_now_trusted(dir.path()), 0);
    }
}
