//! The sink's HTTP client: TLS for `https://` receivers (feature `tls`,
//! `webhooks.tls_*`) and why a request failed, in words an operator can act
//! on.
//!
//! reqwest is built with `rustls-no-provider`: its own `rustls` feature
//! would build aws-lc-rs (minutes of C). The client gets a rustls
//! configuration made by `crate::tls` with the `ring` provider, the same
//! code and the same file errors as the MQTT and Redis connections.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

/// The settings naming the CA file, for messages.
const CA_SETTING: &str = "APP_WEBHOOK_TLS_CA_PATH";
/// The settings naming the client certificate and key, for messages.
const CLIENT_SETTINGS: &str = "APP_WEBHOOK_TLS_CLIENT_CERT_PATH, APP_WEBHOOK_TLS_CLIENT_KEY_PATH";

/// The TLS files of `[webhooks]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebhookTls {
    /// CA certificates the receivers' certificates must chain to; `None`:
    /// the system's.
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate chain and its key (mutual TLS), both or neither
    /// (the configuration check sees to it).
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

impl WebhookTls {
    /// The HTTP client of the deliveries: `timeout` per request and no
    /// redirects (a POST redirected becomes a GET without its body; a 3xx
    /// counts as a failed attempt instead). With `https` (some URL is
    /// `https://`) it trusts the CA file, or the system's CA certificates
    /// without one, and presents the client certificate when one is set.
    ///
    /// # Errors
    /// A TLS file cannot be read or used (the message names it), the
    /// system has no CA certificate while no CA file is set, or reqwest
    /// refuses the configuration.
    pub(crate) fn http_client(
        &self,
        https: bool,
        timeout: Duration,
    ) -> Result<reqwest::Client, String> {
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        #[cfg(feature = "tls")]
        let builder = {
            // reqwest looks for the process-wide provider even for a
            // client that only speaks http:// (and panics without one).
            crate::tls::install_provider();
            if https {
                builder.tls_backend_preconfigured(self.rustls_config()?)
            } else {
                builder
            }
        };
        #[cfg(not(feature = "tls"))]
        {
            if https {
                // The configuration refuses https:// URLs in this build.
                return Err("webhooks: https:// needs a build with the cargo feature `tls`".into());
            }
        }
        builder
            .build()
            .map_err(|e| format!("webhooks: cannot create the HTTP client: {}", chain(&e)))
    }

    /// The rustls configuration of `https://` deliveries.
    #[cfg(feature = "tls")]
    fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        let client = self
            .client
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let config = match &self.ca {
            Some(ca) => crate::tls::client_config("webhook", ca, client, None),
            None => crate::tls::system_roots("webhooks", CA_SETTING).and_then(|roots| {
                crate::tls::client_config_with_roots("webhook", roots, client, None)
            }),
        };
        config.map_err(|e| e.0)
    }

    /// Why a request to `url` failed: a TLS failure explained (which CA
    /// file did not sign the receiver's certificate, which client
    /// certificate it refused), else the error with its causes.
    pub(crate) fn failure(&self, url: &str, error: &reqwest::Error) -> String {
        let Some(f) = crate::tls::failure(error) else {
            return format!("HTTP request failed: {}", chain(error));
        };
        let service = format!("the webhook receiver {url}");
        let why = match f {
            crate::tls::Failure::WrongName => format!(
                "the server certificate of {service} does not hold the host name of the URL"
            ),
            f => {
                let ca = self
                    .ca
                    .as_ref()
                    .map(|p| format!("{} ({CA_SETTING})", p.display()));
                let cert = self
                    .client
                    .as_ref()
                    .map(|(c, _)| format!("{} (APP_WEBHOOK_TLS_CLIENT_CERT_PATH)", c.display()));
                let settings = match f {
                    crate::tls::Failure::ClientCertRefused(_) => CLIENT_SETTINGS,
                    _ => CA_SETTING,
                };
                crate::tls::explain(&f, &service, ca.as_deref(), cert.as_deref(), settings)
            }
        };
        format!("TLS: {why}")
    }
}

/// `error` and its causes, `: `-separated (reqwest's own message is only
/// "error sending request for url (…)").
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let more = e.to_string();
        // hyper repeats its cause in its own message at times.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "client error (Connect): {}", self.0)
        }
    }

    impl StdError for Outer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_failure_reads_with_its_causes_each_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&Outer(refused)), "client error (Connect): refused");
        let plain = std::io::Error::other("tcp connect error");
        assert_eq!(chain(&plain), "tcp connect error");
    }

    #[test]
    fn without_tls_settings_an_http_client_is_made() {
        assert!(WebhookTls::default()
            .http_client(false, Duration::from_secs(1))
            .is_ok());
    }
}
