//! The server side of TLS for MessagePack-RPC (feature `tls`): the server
//! certificate chain and key, and, with client authentication, the CA that
//! client certificates must chain to. (MicroDCS builds its TLS context from
//! a CA file only and never loads a server certificate, so its TLS cannot
//! complete a handshake: the contract's intended behaviour is what is
//! built here.)

use super::MsgpackTls;
use std::sync::Arc;
use tokio_rustls::rustls;

/// The acceptor `t` describes.
///
/// # Errors
/// A file cannot be read or holds no usable certificate or key, the key
/// does not match the certificate, or client authentication is asked for
/// without a CA file; the message names the file and the setting.
pub(super) fn acceptor(t: &MsgpackTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    crate::tls::install_provider();
    let certs = crate::tls::certificates(
        "MessagePack-RPC server certificate (msgpack.tls_cert_path)",
        &t.cert_path,
    )
    .map_err(|e| e.to_string())?;
    let key_path = t.key_path.as_deref().unwrap_or(&t.cert_path);
    let key = crate::tls::private_key(
        "MessagePack-RPC server key (msgpack.tls_key_path)",
        key_path,
    )
    .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if t.client_auth {
        let Some(ca) = &t.ca_path else {
            return Err("msgpack.tls_client_auth needs msgpack.tls_ca_path (APP_MSGPACK_TLS_CA_PATH), the CA that signs client certificates".into());
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::certificates("MessagePack-RPC client CA (msgpack.tls_ca_path)", ca)
            .map_err(|e| e.to_string())?
        {
            roots.add(c).map_err(|e| {
                format!(
                    "the client CA file {} holds an unusable certificate: {e}",
                    ca.display()
                )
            })?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    format!(
                        "cannot verify client certificates with {}: {e}",
                        ca.display()
                    )
                })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "the MessagePack-RPC server key {} does not fit the certificate {}: {e}",
            key_path.display(),
            t.cert_path.display()
        )
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
