//! The webhook sink to `https://` receivers: the receiver of
//! [`crate::webhook`] served over TLS (axum over tokio-rustls, certificates
//! made by rcgen at run time), real Mosquitto and Redis, the station built
//! from configuration.

use crate::harness::jobs::{self, order, Mes};
use crate::harness::{init_tracing, Mosquitto, Redis};
use crate::security::Ca;
use crate::webhook::{webhook_env, Receiver, WAIT};
use microdcs::dlq::DeadLetter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A TLS listener for `axum::serve`: each accepted connection is handed
/// over after its handshake; failed handshakes are recorded and skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    failed_handshakes: Arc<Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(e) => self.failed_handshakes.lock().unwrap().push(e.to_string()),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The files of one test: the CA the station trusts, the receiver's
/// certificate, a client certificate of that CA, and a receiver
/// certificate of another CA.
struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
    misnamed: (PathBuf, PathBuf),
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = Ca::new("webhook test CA");
        let other = Ca::new("someone else's CA");
        let (sc, sk, _) = ca.issue(d, "receiver", &["localhost", "127.0.0.1"]);
        let (cc, ck, _) = ca.issue(d, "station", &["station"]);
        let (oc, ok, _) = other.issue(d, "impostor", &["localhost", "127.0.0.1"]);
        let (nc, nk, _) = ca.issue(d, "elsewhere", &["mes.elsewhere.example"]);
        Files {
            ca: ca.write(d, "ca"),
            server: (sc, sk),
            client: (cc, ck),
            stranger: (oc, ok),
            misnamed: (nc, nk),
            _dir: dir,
        }
    }
}

/// A receiver over TLS with `cert` and `key`, requiring a client
/// certificate of `client_ca` when given; its URL and its failed
/// handshakes.
async fn start_https(
    receiver: &Receiver,
    (cert, key): &(PathBuf, PathBuf),
    client_ca: Option<&Path>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("cert PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("key PEM");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
                roots.add(c.expect("CA PEM")).expect("CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).expect("server config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let failed = Arc::new(Mutex::new(Vec::new()));
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
        failed_handshakes: failed.clone(),
    };
    let app = receiver.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("https://127.0.0.1:{}/hook", addr.port()), failed)
}

/// Stores job `job` through the MES, which makes one status event.
async fn store_job(mes: &mut Mes, job: &str) {
    assert_eq!(
        mes.status("Store", "cell", json!({"JobOrder": order(job)}))
            .await,
        1
    );
}

/// Waits for the first webhook dead letter in the Redis at `url`.
async fn dead_letter(redis_url: &str) -> DeadLetter {
    let letters =
        microdcs::dlq::DeadLetters::new(microdcs::Redis::open(redis_url).unwrap().conn, "t", 100);
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        let found = letters.list(Some("webhook"), 10).await.unwrap_or_default();
        if let Some(letter) = found.into_iter().next() {
            return letter;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no webhook dead letter within {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_trusted_by_the_ca_file_gets_signed_events() {
    init_tracing();
    let files = Files::new();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let (url, _) = start_https(&receiver, &files.server, None).await;
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 5);
    jobs::set(
        &mut env,
        "APP_WEBHOOK_TLS_CA_PATH",
        files.ca.to_str().unwrap(),
    );
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_job(&mut mes, "s1").await;
    let got = receiver.wait_accepted("s1", 1).await;
    assert!(got[0].signed, "{got:#?}");
    assert_eq!(got[0].event.subject.as_deref(), Some("cell"));
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_certificate_of_another_ca_fails_naming_the_ca_file_then_dead_letters() {
    init_tracing();
    let files = Files::new();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let (url, failed) = start_https(&receiver, &files.stranger, None).await;
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 2);
    jobs::set(
        &mut env,
        "APP_WEBHOOK_TLS_CA_PATH",
        files.ca.to_str().unwrap(),
    );
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_job(&mut mes, "u1").await;
    let letter = dead_letter(&r.url()).await;
    let ca = files.ca.display().to_string();
    assert!(
        letter.reason.contains("after 2 attempts")
            && letter.reason.contains("is not trusted")
            && letter.reason.contains(&ca)
            && letter.reason.contains("APP_WEBHOOK_TLS_CA_PATH"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.message.topic, url);
    // The station gave up in the handshake: each attempt was a refused
    // handshake, no request reached the receiver.
    let both = crate::harness::eventually(WAIT, || failed.lock().unwrap().len() >= 2).await;
    assert!(both, "{:?}", failed.lock());
    assert!(receiver.seen().is_empty());
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_file_the_system_ca_certificates_are_trusted() {
    let files = Files::new();
    // The system's CA certificates, as rustls-native-certs reads them: the
    // test's CA stands in for the platform store. Set before anything of
    // the station runs (each test is a process of its own).
    std::env::set_var("SSL_CERT_FILE", &files.ca);
    init_tracing();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let (url, _) = start_https(&receiver, &files.server, None).await;
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 5);
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_job(&mut mes, "y1").await;
    let got = receiver.wait_accepted("y1", 1).await;
    assert!(got[0].signed, "{got:#?}");
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_certificate_for_another_host_name_is_reported_as_such() {
    init_tracing();
    let files = Files::new();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let (url, _) = start_https(&receiver, &files.misnamed, None).await;
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 1);
    jobs::set(
        &mut env,
        "APP_WEBHOOK_TLS_CA_PATH",
        files.ca.to_str().unwrap(),
    );
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_job(&mut mes, "h1").await;
    let letter = dead_letter(&r.url()).await;
    assert!(
        letter
            .reason
            .contains("does not hold the host name of the URL"),
        "{}",
        letter.reason
    );
    assert!(receiver.seen().is_empty());
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_requiring_mutual_tls_gets_events_from_the_client_certificate() {
    init_tracing();
    let files = Files::new();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let (url, _) = start_https(&receiver, &files.server, Some(&files.ca)).await;
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 5);
    jobs::set(
        &mut env,
        "APP_WEBHOOK_TLS_CA_PATH",
        files.ca.to_str().unwrap(),
    );
    let (cert, key) = &files.client;
    jobs::set(
        &mut env,
        "APP_WEBHOOK_TLS_CLIENT_CERT_PATH",
        cert.to_str().unwrap(),
    );
    jobs::set(
        &mut env,
        "APP_WEBHOOK_TLS_CLIENT_KEY_PATH",
        key.to_str().unwrap(),
    );
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_job(&mut mes, "m1").await;
    let got = receiver.wait_accepted("m1", 1).await;
    assert!(got[0].signed, "{got:#?}");
    station.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_requiring_mutual_tls_refuses_a_station_without_a_client_certificate() {
    init_tracing();
    let files = Files::new();
    let m = Mosquitto::start();
    let r = Redis::start();
    let receiver = Receiver::default();
    let (url, _) = start_https(&receiver, &files.server, Some(&files.ca)).await;
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, &url, 1);
    jobs::set(
        &mut env,
        "APP_WEBHOOK_TLS_CA_PATH",
        files.ca.to_str().unwrap(),
    );
    let station = jobs::start(env).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    store_job(&mut mes, "n1").await;
    let letter = dead_letter(&r.url()).await;
    assert!(
        letter.reason.contains("without a client certificate")
            && letter.reason.contains("APP_WEBHOOK_TLS_CLIENT_CERT_PATH"),
        "{}",
        letter.reason
    );
    assert!(receiver.seen().is_empty());
    station.stop().await;
}

#[test]
fn https_urls_are_accepted_with_their_tls_files() {
    use microdcs::config::Config;
    let c = Config::from_sources(
        None,
        [
            ("POD_ID", "a"),
            ("APP_WEBHOOK_URLS", "https://mes.local/hook"),
            ("APP_WEBHOOK_SECRET", "s"),
            ("APP_WEBHOOK_TLS_CA_PATH", "/etc/ca.crt"),
            ("APP_WEBHOOK_TLS_CLIENT_CERT_PATH", "/etc/c.crt"),
            ("APP_WEBHOOK_TLS_CLIENT_KEY_PATH", "/etc/c.key"),
        ],
    )
    .expect("valid");
    assert_eq!(c.webhooks.urls, ["https://mes.local/hook"]);
    assert_eq!(
        c.webhooks.tls_ca_path.as_deref(),
        Some(Path::new("/etc/ca.crt"))
    );
    let out = c.redacted_toml();
    assert!(
        out.contains("tls_client_key_path = \"/etc/c.key\""),
        "{out}"
    );
}

#[test]
fn config_check_says_what_https_webhooks_trust_and_refuses_a_missing_tls_file() {
    let files = Files::new();
    let check = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_microdcs"))
            .args(["config", "check"])
            .env_clear()
            .env("POD_ID", "st-1")
            .env("APP_WEBHOOK_SECRET", "s")
            .envs(env.iter().copied())
            .output()
            .expect("run microdcs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = files.ca.to_str().unwrap();
    let (code, stderr) = check(&[
        (
            "APP_WEBHOOK_URLS",
            "https://mes.local/hook,http://dash.local/in",
        ),
        ("APP_WEBHOOK_TLS_CA_PATH", ca),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Webhooks: 2 URL(s), 1 over TLS trusting the CA in {ca}"
        )),
        "{stderr}"
    );
    let (code, stderr) = check(&[("APP_WEBHOOK_URLS", "https://mes.local/hook")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the system's CA certificates"), "{stderr}");
    let (code, stderr) = check(&[
        ("APP_WEBHOOK_URLS", "https://mes.local/hook"),
        ("APP_WEBHOOK_TLS_CA_PATH", "/nonexistent/webhook-ca.crt"),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/webhook-ca.crt (webhooks.tls_ca_path, APP_WEBHOOK_TLS_CA_PATH) does not exist"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_with_an_unusable_webhook_tls_file_does_not_start_and_names_it() {
    init_tracing();
    let files = Files::new();
    let m = Mosquitto::start();
    let r = Redis::start();
    let mut env = jobs::env(m.port(), r.0.port(), "w1");
    webhook_env(&mut env, "https://127.0.0.1:9/hook", 5);
    // A key where the CA certificate should be.
    let key = files.server.1.to_str().unwrap();
    jobs::set(&mut env, "APP_WEBHOOK_TLS_CA_PATH", key);
    let config = microdcs::config::Config::from_sources(None, env).expect("valid");
    let err = match microdcs::station::build(&config).await {
        Ok(_) => panic!("the station started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(key) && err.contains("no PEM certificate"),
        "{err}"
    );
}
