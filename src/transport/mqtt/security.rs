//! How an MQTT connection proves who it talks to and who it is: TLS (with
//! an optional client certificate) and Kubernetes service-account token
//! authentication (`K8S-SAT`, MQTT v5 enhanced authentication), as
//! MicroDCS does them.
//!
//! Both are applied to the rumqttc options right before every connection
//! attempt ([`prepare`]), reading the files again each time: Kubernetes
//! rotates projected tokens (and cert-manager certificates) while the pod
//! runs, and a reconnect must present the current ones.

use super::MqttSettings;
use crate::tls;
use bytes::Bytes;
use rumqttc::v5::{ConnectionError, MqttOptions};
use std::path::{Path, PathBuf};

/// The MQTT v5 Authentication Method of Kubernetes service-account token
/// authentication (Authentication Data: the token), as MicroDCS and the
/// brokers that accept its tokens name it.
pub const K8S_SAT_METHOD: &str = "K8S-SAT";

/// TLS to the broker: the CA to trust it by, an optional client
/// certificate, and the name its certificate must hold.
///
/// The files are PEM: `ca_file` one or more CA certificates;
/// `client_cert` the certificate chain, leaf first; `client_key` its
/// private key (PKCS#8, PKCS#1 or SEC1). They are read at every connection
/// attempt. Configured by `APP_MQTT_TLS_CERT_PATH`,
/// `APP_MQTT_TLS_CLIENT_CERT_PATH`, `APP_MQTT_TLS_CLIENT_KEY_PATH` and
/// `APP_MQTT_TLS_SERVER_NAME` (see [`crate::config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate chain for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Name the broker's certificate must hold; `None`: the broker host.
    pub server_name: Option<String>,
}

/// Applies TLS and `K8S-SAT` of `settings` to `options` for the next
/// connection attempt: the TLS configuration is built from the files as
/// they are now, and CONNECT carries the token file's current content when
/// the file exists (no enhanced authentication when it does not).
///
/// On an error `options` are left [failing closed](fail_closed): whatever
/// polls the event loop next (a shutdown's drain, a DISCONNECT) cannot
/// connect in the clear or send the credentials over plain TCP.
///
/// # Errors
/// A file that exists cannot be read or used; the message names the file
/// and the setting, never a secret.
pub(crate) fn prepare(settings: &MqttSettings, options: &mut MqttOptions) -> Result<(), String> {
    let prepared = apply(settings, options);
    if prepared.is_err() {
        fail_closed(settings, options);
    }
    prepared
}

/// [`prepare`] without the fail-closed fallback.
fn apply(settings: &MqttSettings, options: &mut MqttOptions) -> Result<(), String> {
    if let Some(tls) = &settings.tls {
        options.set_transport(transport(tls)?);
    }
    match settings.sat_token_path.as_deref().map(read_token) {
        Some(Ok(Some(token))) => {
            options.set_authentication_method(Some(K8S_SAT_METHOD.to_owned()));
            options.set_authentication_data(Some(token));
        }
        Some(Err(e)) => return Err(e),
        Some(Ok(None)) | None => {
            options.set_authentication_method(None);
            options.set_authentication_data(None);
        }
    }
    Ok(())
}

/// The token in the file at `path`, without surrounding whitespace (a
/// token written by hand often ends with a newline); `None` when there is
/// no such file.
///
/// # Errors
/// The file exists but cannot be read, or is empty.
pub(crate) fn read_token(path: &Path) -> Result<Option<Bytes>, String> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the service-account token file {} (APP_MQTT_SAT_TOKEN_PATH): {e}",
                path.display()
            ))
        }
    };
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(format!(
            "the service-account token file {} (APP_MQTT_SAT_TOKEN_PATH) is empty",
            path.display()
        ));
    }
    Ok(Some(Bytes::copy_from_slice(token)))
}

/// Makes `options` fail rather than connect in the clear or without its
/// token: for a connection made when the TLS files or the token of
/// `settings` cannot be used. With TLS configured, the connection gets a
/// TLS configuration that trusts no CA (or, in a build without TLS, a
/// transport that cannot connect); CONNECT carries no token.
pub(crate) fn fail_closed(settings: &MqttSettings, options: &mut MqttOptions) {
    options.set_authentication_method(None);
    options.set_authentication_data(None);
    if settings.tls.is_none() {
        return;
    }
    #[cfg(feature = "tls")]
    {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        if let Ok(b) = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            let config = b
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
            ));
            return;
        }
    }
    // No TLS in this build (or, never seen, no TLS configuration to be
    // had): a Unix socket named after the broker host, which does not
    // exist, instead of plain TCP.
    #[cfg(unix)]
    options.set_transport(rumqttc::Transport::unix());
}

#[cfg(feature = "tls")]
fn transport(t: &MqttTls) -> Result<rumqttc::Transport, String> {
    let client = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let config = tls::client_config("MQTT", &t.ca_file, client, t.server_name.as_deref())
        .map_err(|e| e.to_string())?;
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ))
}

#[cfg(not(feature = "tls"))]
fn transport(t: &MqttTls) -> Result<rumqttc::Transport, String> {
    Err(format!(
        "the broker's CA file {} exists, so the broker is to be reached over TLS, but this build has no TLS (cargo feature `tls`)",
        t.ca_file.display()
    ))
}

/// `error` in words an operator can act on: a TLS failure says whether the
/// broker's certificate was not trusted (naming the CA file) or the broker
/// refused ours; a refused CONNECT says which credentials were used;
/// anything else is rumqttc's message.
pub(crate) fn describe(error: &ConnectionError, settings: &MqttSettings) -> String {
    if let Some(f) = tls::failure(error) {
        let ca = settings
            .tls
            .as_ref()
            .map(|t| format!("{} (APP_MQTT_TLS_CERT_PATH)", t.ca_file.display()));
        let cert = settings
            .tls
            .as_ref()
            .and_then(|t| t.client_cert.as_ref())
            .map(|c| format!("{} (APP_MQTT_TLS_CLIENT_CERT_PATH)", c.display()));
        let which = match f {
            tls::Failure::WrongName => "APP_MQTT_TLS_SERVER_NAME",
            tls::Failure::ClientCertRefused(_) => {
                "APP_MQTT_TLS_CLIENT_CERT_PATH, APP_MQTT_TLS_CLIENT_KEY_PATH"
            }
            _ => "APP_MQTT_TLS_CERT_PATH",
        };
        return tls::explain(&f, "the MQTT broker", ca.as_deref(), cert.as_deref(), which);
    }
    // What `prepare` reported (a file it could not use) is already in the
    // operator's words.
    if let ConnectionError::Io(io) = error {
        if io.kind() == std::io::ErrorKind::Other && io.get_ref().is_some() {
            return io.to_string();
        }
    }
    if let ConnectionError::ConnectionRefused(code) = error {
        let sat = settings
            .sat_token_path
            .as_deref()
            .filter(|p| p.is_file())
            .map(|p| {
                format!(
                    "{K8S_SAT_METHOD} with the token in {} (APP_MQTT_SAT_TOKEN_PATH)",
                    p.display()
                )
            });
        let user = settings
            .username
            .as_ref()
            .map(|u| format!("user name '{u}' (APP_MQTT_USERNAME, APP_MQTT_PASSWORD)"));
        let used = match (sat, user) {
            (Some(s), Some(u)) => format!("{s} and {u}"),
            (Some(s), None) => s,
            (None, Some(u)) => u,
            (None, None) => "no credentials".to_owned(),
        };
        return format!(
            "the MQTT broker refused the connection ({code:?}); it was made with {used}"
        );
    }
    error.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_trimmed_absent_without_a_file_and_an_empty_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broker-sat");
        assert_eq!(read_token(&path), Ok(None));
        std::fs::write(&path, "  abc.def.ghi\n").expect("write");
        assert_eq!(
            read_token(&path),
            Ok(Some(Bytes::from_static(b"abc.def.ghi")))
        );
        std::fs::write(&path, "\n").expect("write");
        let err = read_token(&path).expect_err("empty");
        assert!(err.contains("is empty") && err.contains("APP_MQTT_SAT_TOKEN_PATH"));
    }

    #[test]
    fn a_refused_connect_names_the_credentials_used_but_never_their_values() {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broker-sat");
        std::fs::write(&path, "secret-token").expect("write");
        let mut settings = MqttSettings::new("localhost", 1883, "i");
        settings.sat_token_path = Some(path.clone());
        settings.username = Some("station".into());
        settings.password = Some(crate::config::Secret::new("secret-password"));
        let text = describe(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            &settings,
        );
        assert!(
            text.contains("refused the connection (NotAuthorized)"),
            "{text}"
        );
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("user name 'station'"), "{text}");
        assert!(!text.contains("secret-"), "{text}");
        // A file `prepare` could not use is reported as it said.
        let text = describe(
            &ConnectionError::Io(std::io::Error::other("cannot read the file /x")),
            &settings,
        );
        assert_eq!(text, "cannot read the file /x");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_one_off_connection_with_unusable_tls_files_fails_closed_not_in_the_clear() {
        let mut settings = MqttSettings::new("localhost", 1883, "i");
        assert!(matches!(
            settings.connect_options().transport(),
            rumqttc::Transport::Tcp
        ));
        settings.tls = Some(MqttTls {
            ca_file: "/nonexistent/ca.crt".into(),
            client_cert: None,
            client_key: None,
            server_name: None,
        });
        assert!(matches!(
            settings.connect_options().transport(),
            rumqttc::Transport::Tls(_)
        ));
        // A caller that reports the problem itself gets it, naming the file.
        let e = settings
            .try_connect_options()
            .expect_err("unusable CA file");
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
        // The transport's own options hold no plain TCP either before the
        // first attempt prepares them, and a failed attempt leaves them so
        // (a shutdown's drain polls them without preparing).
        let mut o = settings.options();
        assert!(matches!(o.transport(), rumqttc::Transport::Tls(_)));
        settings.sat_token_path = Some("/nonexistent/token".into());
        assert!(prepare(&settings, &mut o).is_err());
        assert!(matches!(o.transport(), rumqttc::Transport::Tls(_)));
        assert_eq!(o.authentication_method(), None);
    }

    #[test]
    fn prepare_sets_k8s_sat_while_the_token_file_exists_and_clears_it_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broker-sat");
        let mut settings = MqttSettings::new("localhost", 1883, "i");
        settings.sat_token_path = Some(path.clone());
        let mut o = settings.connect_options();
        std::fs::write(&path, "t1").expect("write");
        prepare(&settings, &mut o).expect("prepared");
        assert_eq!(o.authentication_method().as_deref(), Some(K8S_SAT_METHOD));
        assert_eq!(o.authentication_data(), Some(Bytes::from_static(b"t1")));
        std::fs::remove_file(&path).expect("remove");
        prepare(&settings, &mut o).expect("prepared");
        assert_eq!(o.authentication_method(), None);
        assert_eq!(o.authentication_data(), None);
    }
}
