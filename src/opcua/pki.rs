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
}
