//! TLS material shared by the MQTT and Redis connections: PEM files read
//! into rustls types with errors that name the file (never its contents),
//! the client configuration, and what a failed handshake means in words an
//! operator can act on.
//!
//! rustls runs on the `ring` provider only (cargo feature `tls`), chosen
//! here explicitly, so a plant app that also links another provider does not
//! make rustls ask which one to use.

use std::error::Error as StdError;
#[cfg(feature = "tls")]
use std::fmt;

#[cfg(feature = "tls")]
use rustls::pki_types::pem::PemObject;
#[cfg(feature = "tls")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
#[cfg(feature = "tls")]
use std::sync::Arc;

#[cfg(feature = "tls")]
use std::path::Path;

/// A certificate or key file that cannot be used. The message names the
/// file and what is wrong with it, never the file's contents.
#[cfg(feature = "tls")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFileError(pub(crate) String);

#[cfg(feature = "tls")]
impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(feature = "tls")]
impl StdError for TlsFileError {}

/// Reads a whole file, saying which `what` it was when it cannot.
#[cfg(feature = "tls")]
pub(crate) fn read(what: &str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| {
        TlsFileError(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })
}

/// The process-wide crypto provider of rustls (`ring`), installed once so
/// that libraries building their own configuration (the redis crate) find
/// it. Installing fails harmlessly when one is already installed.
#[cfg(feature = "tls")]
pub(crate) fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM file, at least one.
#[cfg(feature = "tls")]
pub(crate) fn certificates(
    what: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsFileError(format!(
                "the {what} file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsFileError(format!(
            "the {what} file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1). The parser's
/// own message is left out: it could quote a line of the key.
#[cfg(feature = "tls")]
pub(crate) fn private_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        TlsFileError(format!(
            "the {what} file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ))
    })
}

/// A rustls client configuration trusting the CA certificates in
/// `ca_file`, presenting the certificate and key of `client` (mutual TLS)
/// when given, and, with `server_name`, requiring the server's certificate
/// to hold that name instead of the host connected to.
///
/// # Errors
/// A file cannot be read or holds no usable certificate or key, the key
/// does not belong to the certificate, or `server_name` is not a DNS name
/// or IP address.
#[cfg(feature = "tls")]
pub(crate) fn client_config(
    service: &str,
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
    server_name: Option<&str>,
) -> Result<rustls::ClientConfig, TlsFileError> {
    client_config_with_roots(service, ca_roots(service, ca_file)?, client, server_name)
}

/// The trust anchors of the CA certificates in `ca_file`.
#[cfg(feature = "tls")]
fn ca_roots(service: &str, ca_file: &Path) -> Result<rustls::RootCertStore, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    let ca_what = format!("{service} CA certificate");
    for cert in certificates(&ca_what, ca_file)? {
        roots.add(cert).map_err(|e| {
            TlsFileError(format!(
                "the {ca_what} file {} holds a certificate that cannot be a trust anchor: {e}",
                ca_file.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The system's CA certificates (the platform's store, or `SSL_CERT_FILE`
/// / `SSL_CERT_DIR`), for a `service` configured without a CA file;
/// `setting` names the setting of that file in the error.
///
/// # Errors
/// The system has no usable CA certificate.
#[cfg(all(feature = "tls", feature = "cloudevents"))]
pub(crate) fn system_roots(
    service: &str,
    setting: &str,
) -> Result<rustls::RootCertStore, TlsFileError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(TlsFileError(format!(
            "{service}: no usable CA certificate on this system ({why}); give a CA file ({setting})"
        )));
    }
    Ok(roots)
}

/// [`client_config`] with the trust anchors given.
///
/// # Errors
/// As [`client_config`], except for the CA file.
#[cfg(feature = "tls")]
pub(crate) fn client_config_with_roots(
    service: &str,
    roots: rustls::RootCertStore,
    client: Option<(&Path, &Path)>,
    server_name: Option<&str>,
) -> Result<rustls::ClientConfig, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError(format!("TLS setup: {e}")))?;
    let builder = match server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let name = ServerName::try_from(name.to_owned()).map_err(|_| {
                TlsFileError(format!(
                    "the {service} TLS server name '{name}' is neither a DNS name nor an IP address"
                ))
            })?;
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsFileError(format!("TLS setup: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ExpectedName { inner, name }))
        }
    };
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates(&format!("{service} client certificate"), cert)?;
            let key_der = private_key(&format!("{service} client key"), key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                TlsFileError(format!(
                    "the {service} client certificate {} and key {} cannot be used together: {e}",
                    cert.display(),
                    key.display()
                ))
            })
        }
    }
}

/// Verifies the server's certificate as webpki does, against a configured
/// name rather than the host connected to (a broker reached by an address
/// its certificate does not list, e.g. through a node port). Everything
/// else (chain, validity, signatures) is the standard verification.
#[cfg(feature = "tls")]
#[derive(Debug)]
struct ExpectedName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

#[cfg(feature = "tls")]
impl rustls::client::danger::ServerCertVerifier for ExpectedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a failed TLS connection means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server's certificate does not chain to the configured CA.
    NotTrusted(String),
    /// The server's certificate was rejected for another reason than who
    /// signed it (an X.509 v1 certificate, an unsupported extension or
    /// signature algorithm…): rustls's reason.
    Rejected(String),
    /// The server's certificate does not hold the expected name.
    WrongName,
    /// The server's certificate has expired or is not valid yet.
    NotValidNow,
    /// The server refused our client certificate (or wanted one and got
    /// none); the TLS alert it sent.
    ClientCertRefused(String),
}

/// Finds the TLS reason of `error`: a rustls error anywhere in its chain
/// of causes (they travel inside `std::io::Error`s), else rustls's own
/// wording in the messages of the chain. The text is the fallback because
/// both client libraries keep the I/O error somewhere the chain does not
/// reach (rumqttc's deserialization error has no source; redis keeps it
/// behind an `Arc<dyn Error>`), while rustls's messages
/// (`invalid peer certificate: …`, `received fatal alert: …`) come through.
pub(crate) fn failure(error: &(dyn StdError + 'static)) -> Option<Failure> {
    structured_failure(error).or_else(|| {
        let mut text = String::new();
        let mut next = Some(error);
        while let Some(e) = next {
            text.push_str(&e.to_string());
            text.push('\n');
            next = e.source();
        }
        failure_in_text(&text)
    })
}

/// The rustls reason named in `text` (see [`failure`]).
pub(crate) fn failure_in_text(text: &str) -> Option<Failure> {
    let word_after = |marker: &str| {
        text.find(marker).map(|at| {
            text[at + marker.len()..]
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned()
        })
    };
    if let Some(why) = word_after("invalid peer certificate: ") {
        return Some(match why.as_str() {
            "NotValidForName" | "NotValidForNameContext" => Failure::WrongName,
            "Expired" | "ExpiredContext" | "NotValidYet" | "NotValidYetContext" => {
                Failure::NotValidNow
            }
            // The certificate is not valid for the name…: rustls's
            // Display of the context variant.
            _ if text.contains("certificate not valid for name") => Failure::WrongName,
            "UnknownIssuer" | "BadSignature" => Failure::NotTrusted(why),
            _ => Failure::Rejected(why),
        });
    }
    if text.contains("certificate not valid for name") {
        return Some(Failure::WrongName);
    }
    let alert = word_after("received fatal alert: ")?;
    const REFUSALS: &[&str] = &[
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "UnsupportedCertificate",
        "CertificateRevoked",
        "CertificateExpired",
        "AccessDenied",
        "HandshakeFailure",
    ];
    REFUSALS
        .contains(&alert.as_str())
        .then_some(Failure::ClientCertRefused(alert))
}

#[cfg(feature = "tls")]
fn structured_failure(error: &(dyn StdError + 'static)) -> Option<Failure> {
    use rustls::{AlertDescription as A, CertificateError as C};
    let mut next = Some(error);
    while let Some(e) = next {
        let found = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(r) = found {
            return match r {
                rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                ) => Some(Failure::WrongName),
                rustls::Error::InvalidCertificate(
                    C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. },
                ) => Some(Failure::NotValidNow),
                rustls::Error::InvalidCertificate(c @ (C::UnknownIssuer | C::BadSignature)) => {
                    Some(Failure::NotTrusted(format!("{c:?}")))
                }
                rustls::Error::InvalidCertificate(c) => Some(Failure::Rejected(format!("{c:?}"))),
                rustls::Error::AlertReceived(
                    a @ (A::CertificateRequired
                    | A::BadCertificate
                    | A::UnknownCA
                    | A::CertificateUnknown
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::AccessDenied
                    | A::HandshakeFailure),
                ) => Some(Failure::ClientCertRefused(format!("{a:?}"))),
                _ => None,
            };
        }
        next = e.source().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn StdError + 'static))
        });
    }
    None
}

/// Without TLS compiled in, no error carries a rustls error.
#[cfg(not(feature = "tls"))]
fn structured_failure(_error: &(dyn StdError + 'static)) -> Option<Failure> {
    None
}

/// An operator's explanation of `failure` on the connection to `service`
/// (`the MQTT broker`, `Redis`), naming the files and settings involved.
pub(crate) fn explain(
    failure: &Failure,
    service: &str,
    ca: Option<&str>,
    client_cert: Option<&str>,
    settings: &str,
) -> String {
    match failure {
        Failure::NotTrusted(why) => match ca {
            Some(ca) => format!(
                "the server certificate of {service} is not trusted: it is not signed by the CA in {ca} ({why})"
            ),
            None => format!(
                "the server certificate of {service} is not trusted by the system's CA certificates ({why}); set the CA file ({settings})"
            ),
        },
        Failure::Rejected(why) => format!(
            "the server certificate of {service} was rejected ({why}): it is signed as expected or not, but cannot be used (an X.509 v1 certificate, an unsupported extension or algorithm)"
        ),
        Failure::WrongName => format!(
            "the server certificate of {service} does not hold the name connected to; set the expected name ({settings})"
        ),
        Failure::NotValidNow => format!(
            "the server certificate of {service} has expired or is not valid yet"
        ),
        Failure::ClientCertRefused(alert) => match client_cert {
            Some(cert) => format!(
                "{service} refused the client certificate {cert} (TLS alert {alert}): it is not signed by a CA {service} trusts, or does not fit its key"
            ),
            None => format!(
                "{service} refused the connection without a client certificate (TLS alert {alert}): it requires one ({settings})"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_messages_name_the_failure() {
        assert_eq!(
            failure_in_text("redis: invalid peer certificate: UnknownIssuer"),
            Some(Failure::NotTrusted("UnknownIssuer".into()))
        );
        assert_eq!(
            failure_in_text("IO: received fatal alert: CertificateRequired"),
            Some(Failure::ClientCertRefused("CertificateRequired".into()))
        );
        assert_eq!(
            failure_in_text("invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for …"),
            Some(Failure::WrongName)
        );
        assert_eq!(
            failure_in_text("invalid peer certificate: Other(OtherError(UnsupportedCertVersion))"),
            Some(Failure::Rejected("Other".into()))
        );
        assert_eq!(failure_in_text("received fatal alert: DecodeError"), None);
        assert_eq!(failure_in_text("connection refused"), None);
    }
}
