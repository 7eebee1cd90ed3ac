//! Securing the connections (#11): MQTT and Redis over TLS, mutual TLS,
//! Kubernetes service-account tokens (`K8S-SAT`) and Redis ACL users,
//! against real servers. Certificates and keys are made by the test at run
//! time (rcgen); none is committed. The `microdcs run` binary is the
//! station, so what an operator sees (its log, `/metrics`) is what the
//! tests read.
//!
//! Mosquitto has no `K8S-SAT`, so those tests put a listener of their own
//! where the broker would be and decode the CONNECT and AUTH packets the
//! station sends.

use crate::harness::jobs::{self, order, Mes};
use microdcs::testkit::devenv::{free_port, LocalMosquitto, LocalRedis, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Certificates.

/// A certificate authority made for one test.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// Writes this CA's certificate as `{name}.crt` in `dir`.
    pub(crate) fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, self.issuer.pem()).expect("write CA");
        path
    }

    /// Issues a certificate for `names` and writes it and its key as
    /// `{name}.crt` and `{name}.key` in `dir`; returns (cert, key, key PEM).
    pub(crate) fn issue(
        &self,
        dir: &Path,
        name: &str,
        names: &[&str],
    ) -> (PathBuf, PathBuf, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        let key_pem = key.serialize_pem();
        std::fs::write(&k, &key_pem).expect("write key");
        (c, k, key_pem)
    }
}

/// Everything a TLS test needs: the servers' CA and certificates, a
/// client certificate of the same CA, and a second CA with a client
/// certificate of its own (which the servers do not trust).
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: ServerTls,
    client_cert: PathBuf,
    client_key: PathBuf,
    client_key_pem: String,
    other_ca: PathBuf,
    other_client_cert: PathBuf,
    other_client_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = Ca::new("microdcs test CA");
        let other = Ca::new("someone else's CA");
        let (server_cert, server_key, _) = ca.issue(d, "server", &["localhost", "127.0.0.1"]);
        let (client_cert, client_key, client_key_pem) = ca.issue(d, "station", &["station"]);
        let (other_client_cert, other_client_key, _) = other.issue(d, "stranger", &["station"]);
        Pki {
            ca: ca.write(d, "ca"),
            server: ServerTls {
                ca: d.join("ca.crt"),
                cert: server_cert,
                key: server_key,
                require_client_cert: true,
            },
            client_cert,
            client_key,
            client_key_pem,
            other_ca: other.write(d, "other-ca"),
            other_client_cert,
            other_client_key,
            _dir: dir,
        }
    }
}

// The station: `microdcs run` as a child process.

/// `microdcs run` with its log (stdout and stderr) collected as it comes.
struct Station {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Station {
    fn start(env: &[(String, String)]) -> Station {
        let mut child = Command::new(env!("CARGO_BIN_EXE_microdcs"))
            .arg("run")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start microdcs run");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Station { child, output }
    }

    /// Waits (up to 20 s) for a log line containing every one of `parts`;
    /// returns the whole log so far on failure, for the assertion message.
    fn wait_for_line(&self, parts: &[&str]) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.output.lock().unwrap().clone();
            if let Some(line) = out.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                return Err(out);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait for the exit, and the whole log.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        // The reader threads end at EOF; give them the last lines.
        std::thread::sleep(Duration::from_millis(200));
        let out = self.output.lock().unwrap().clone();
        out
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: impl std::fmt::Display) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_string()));
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The environment of a station on the broker's TLS port and Redis's TLS
/// port, with `pki`'s CA for both and no client certificate yet.
fn tls_env(pki: &Pki, m: &LocalMosquitto, r: &LocalRedis, instance: &str) -> Vec<(String, String)> {
    let mut env = jobs::env(m.tls_port().expect("TLS listener"), r.port(), instance);
    set(&mut env, "PATH", std::env::var("PATH").unwrap_or_default());
    set(&mut env, "APP_MQTT_TLS_CERT_PATH", path(&pki.ca));
    set(&mut env, "APP_REDIS_SSL", "true");
    set(&mut env, "APP_REDIS_SSL_CA_CERTS", path(&pki.ca));
    // No service-account token here (the default path may exist on a
    // Kubernetes CI runner).
    set(
        &mut env,
        "APP_MQTT_SAT_TOKEN_PATH",
        "/nonexistent/broker-sat",
    );
    env
}

fn with_client_cert(env: &mut Vec<(String, String)>, cert: &Path, key: &Path) {
    set(env, "APP_MQTT_TLS_CLIENT_CERT_PATH", path(cert));
    set(env, "APP_MQTT_TLS_CLIENT_KEY_PATH", path(key));
    set(env, "APP_REDIS_SSL_CERTFILE", path(cert));
    set(env, "APP_REDIS_SSL_KEYFILE", path(key));
}

/// Sends StoreAndStart through the broker's plain port until the station
/// answers; the reply's ReturnStatus and the job's first state change.
async fn store_and_start(mqtt_port: u16, job: &str) -> (Value, Vec<String>) {
    let mut mes = Mes::connect(mqtt_port, "mes").await;
    for _ in 0..60 {
        let reply = mes
            .call_with(
                &format!("{}StoreAndStart.v2", jobs::S),
                &uuid::Uuid::new_v4().to_string(),
                Some("sec"),
                &json!({"JobOrder": order(job)}),
            )
            .await;
        if let Some(p) = reply {
            let status: Value = serde_json::from_slice(&p.payload).expect("JSON reply");
            return (status["ReturnStatus"].clone(), mes.next_state().await);
        }
    }
    panic!("no reply from the station");
}

/// An HTTP GET of `path` on 127.0.0.1:`port`; the response body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP server");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    text
}

/// The lines of a PEM private key between its armour lines: no log line
/// may contain any of them.
fn key_lines(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_runs_a_job_over_mutual_tls_and_never_prints_a_secret() {
    let pki = Pki::new();
    let m = LocalMosquitto::start_tls(&pki.server).expect("mosquitto with TLS");
    let redis_password = "r3dis-Pa55word-7f1e";
    let r = LocalRedis::start_tls_with_user(&pki.server, Some(("station", redis_password)))
        .expect("redis with TLS");
    let mqtt_password = "mqtt-Pa55word-c0ffee";
    let http = free_port().expect("free port");
    let mut env = tls_env(&pki, &m, &r, "tls-1");
    with_client_cert(&mut env, &pki.client_cert, &pki.client_key);
    set(&mut env, "APP_MQTT_USERNAME", "station");
    set(&mut env, "APP_MQTT_PASSWORD", mqtt_password);
    set(&mut env, "APP_REDIS_USERNAME", "station");
    set(&mut env, "APP_REDIS_PASSWORD", redis_password);
    set(&mut env, "APP_LOG_LEVEL", "debug");
    set(&mut env, "APP_HTTP_PORT", http);
    let station = Station::start(&env);

    let (status, states) = store_and_start(m.port(), "tls-job").await;
    assert_eq!(status, 1, "{}", station.output.lock().unwrap());
    assert_eq!(states, ["AllowedToStart", "Ready"]);
    station
        .wait_for_line(&["mqtt connected"])
        .expect("connected over TLS");
    let metrics = http_get(http, "/metrics");
    assert!(metrics.contains("200 OK"), "{metrics}");
    let ready = http_get(http, "/readyz");
    assert!(ready.contains("200 OK"), "{ready}");
    let log = station.stop();

    // The job ran, at debug level, and no secret is anywhere.
    assert!(log.contains("tls-job"), "{log}");
    for (what, text) in [("log", &log), ("/metrics", &metrics), ("/readyz", &ready)] {
        for secret in [mqtt_password, redis_password] {
            assert!(
                !text.contains(secret),
                "{what} contains a password:\n{text}"
            );
        }
        for line in key_lines(&pki.client_key_pem) {
            assert!(
                !text.contains(line),
                "{what} contains the private key:\n{text}"
            );
        }
    }
}

#[test]
fn config_check_shows_the_tls_files_but_no_secret() {
    let pki = Pki::new();
    let out = Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .args(["config", "check"])
        .env_clear()
        .env("APP_MQTT_TLS_CERT_PATH", path(&pki.ca))
        .env("APP_MQTT_TLS_CLIENT_CERT_PATH", path(&pki.client_cert))
        .env("APP_MQTT_TLS_CLIENT_KEY_PATH", path(&pki.client_key))
        .env("APP_MQTT_USERNAME", "u")
        .env("APP_MQTT_PASSWORD", "mqtt-secret-4711")
        .env("APP_REDIS_SSL", "true")
        .env("APP_REDIS_SSL_CA_CERTS", path(&pki.ca))
        .env("APP_REDIS_PASSWORD", "redis-secret-4711")
        .output()
        .expect("run microdcs config check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "tls_client_key_path = \"{}\"",
            path(&pki.client_key)
        )),
        "{stdout}"
    );
    assert!(stdout.contains("ssl = true"), "{stdout}");
    assert!(!stdout.contains("secret-4711"), "{stdout}");
    for line in key_lines(&pki.client_key_pem) {
        assert!(!stdout.contains(line), "{stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "MQTT: TLS, the broker trusted by the CA in {}",
            path(&pki.ca)
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-4711"), "{stderr}");
}

#[test]
fn config_check_warns_when_a_tls_or_token_path_set_names_no_file() {
    // A mistyped path would otherwise be a silent plain TCP connection
    // without the token (TLS and K8S-SAT are on when their files exist).
    let out = Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .args(["config", "check"])
        .env_clear()
        .env("APP_MQTT_TLS_CERT_PATH", "/nonexistent/certs/ca.crt")
        .env("APP_MQTT_SAT_TOKEN_PATH", "/nonexistent/tokens/broker-sat")
        .output()
        .expect("run microdcs config check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: MQTT without TLS: the CA file /nonexistent/certs/ca.crt"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning: MQTT without K8S-SAT: the token file /nonexistent/tokens/broker-sat"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_reported_as_an_untrusted_server_certificate_naming_the_ca_file() {
    let pki = Pki::new();
    let m = LocalMosquitto::start_tls(&pki.server).expect("mosquitto with TLS");
    let r = LocalRedis::start_tls(&pki.server).expect("redis with TLS");
    let mut env = tls_env(&pki, &m, &r, "wrong-ca");
    with_client_cert(&mut env, &pki.client_cert, &pki.client_key);
    // Both servers are checked against someone else's CA.
    set(&mut env, "APP_MQTT_TLS_CERT_PATH", path(&pki.other_ca));
    set(&mut env, "APP_REDIS_SSL_CA_CERTS", path(&pki.other_ca));
    let station = Station::start(&env);
    let ca = path(&pki.other_ca);
    let mqtt = station.wait_for_line(&[
        "the server certificate of the MQTT broker is not trusted",
        &ca,
    ]);
    let redis = station.wait_for_line(&["the server certificate of Redis is not trusted", &ca]);
    let log = station.stop();
    assert!(mqtt.is_ok(), "{log}");
    assert!(redis.is_ok(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_server_name_is_the_name_the_broker_certificate_must_hold() {
    // The broker's certificate holds `localhost` and `127.0.0.1`; the
    // station connects to 127.0.0.1 in both runs.
    let pki = Pki::new();
    let mut server = pki.server.clone();
    server.require_client_cert = false;
    let m = LocalMosquitto::start_tls(&server).expect("mosquitto with TLS");
    let r = LocalRedis::start().expect("redis");
    let mut env = jobs::env(m.tls_port().expect("TLS listener"), r.port(), "sni");
    set(&mut env, "PATH", std::env::var("PATH").unwrap_or_default());
    set(&mut env, "APP_MQTT_TLS_CERT_PATH", path(&pki.ca));
    set(
        &mut env,
        "APP_MQTT_SAT_TOKEN_PATH",
        "/nonexistent/broker-sat",
    );

    set(&mut env, "APP_MQTT_TLS_SERVER_NAME", "localhost");
    let station = Station::start(&env);
    let connected = station.wait_for_line(&["mqtt connected"]);
    let log = station.stop();
    assert!(connected.is_ok(), "{log}");

    set(
        &mut env,
        "APP_MQTT_TLS_SERVER_NAME",
        "broker.elsewhere.example",
    );
    let station = Station::start(&env);
    let refused = station.wait_for_line(&[
        "the server certificate of the MQTT broker does not hold the name",
        "APP_MQTT_TLS_SERVER_NAME",
    ]);
    let log = station.stop();
    assert!(refused.is_ok(), "{log}");
    assert!(!log.contains("mqtt connected"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_untrusted_client_certificate_is_reported_as_refused() {
    let pki = Pki::new();
    let m = LocalMosquitto::start_tls(&pki.server).expect("mosquitto with TLS");
    let r = LocalRedis::start_tls(&pki.server).expect("redis with TLS");

    // No client certificate at all.
    let station = Station::start(&tls_env(&pki, &m, &r, "no-cert"));
    let mqtt = station
        .wait_for_line(&["the MQTT broker refused the connection without a client certificate"]);
    let redis =
        station.wait_for_line(&["Redis refused the connection without a client certificate"]);
    let log = station.stop();
    assert!(mqtt.is_ok(), "{log}");
    assert!(redis.is_ok(), "{log}");

    // A certificate of a CA the servers do not trust.
    let mut env = tls_env(&pki, &m, &r, "stranger");
    with_client_cert(&mut env, &pki.other_client_cert, &pki.other_client_key);
    let station = Station::start(&env);
    let cert = path(&pki.other_client_cert);
    let mqtt = station.wait_for_line(&["the MQTT broker refused the client certificate", &cert]);
    let redis = station.wait_for_line(&["Redis refused the client certificate", &cert]);
    let log = station.stop();
    assert!(mqtt.is_ok(), "{log}");
    assert!(redis.is_ok(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_acl_user_works_with_its_password_and_a_wrong_one_fails_clearly() {
    let m = LocalMosquitto::start().expect("mosquitto");
    let r = LocalRedis::start_with_user("station", "right-pass").expect("redis with a user");
    let mut env = jobs::env(m.port(), r.port(), "acl");
    set(&mut env, "PATH", std::env::var("PATH").unwrap_or_default());
    set(
        &mut env,
        "APP_MQTT_SAT_TOKEN_PATH",
        "/nonexistent/broker-sat",
    );
    set(&mut env, "APP_REDIS_USERNAME", "station");
    set(&mut env, "APP_REDIS_PASSWORD", "right-pass");
    let station = Station::start(&env);
    let (status, _) = store_and_start(m.port(), "acl-job").await;
    let log = station.stop();
    assert_eq!(status, 1, "{log}");

    set(&mut env, "APP_REDIS_PASSWORD", "wrong-pass");
    let station = Station::start(&env);
    let refused = station.wait_for_line(&[
        "Redis not reachable",
        "refused the credentials of user 'station'",
        "APP_REDIS_PASSWORD",
    ]);
    let log = station.stop();
    assert!(refused.is_ok(), "{log}");
    assert!(
        !log.contains("wrong-pass") && !log.contains("right-pass"),
        "{log}"
    );
}

// K8S-SAT, against a listener that decodes what the station sends.

/// The MQTT fixed header's packet type and the packet's body.
fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let mut len = 0usize;
    for shift in (0..4).map(|i| 7 * i) {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        len |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((first[0] >> 4, body))
}

fn var_int(b: &[u8], at: &mut usize) -> usize {
    let mut v = 0usize;
    for shift in (0..4).map(|i| 7 * i) {
        let byte = b[*at];
        *at += 1;
        v |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

fn two_bytes(b: &[u8], at: &mut usize) -> Vec<u8> {
    let n = usize::from(u16::from_be_bytes([b[*at], b[*at + 1]]));
    let v = b[*at + 2..*at + 2 + n].to_vec();
    *at += 2 + n;
    v
}

/// Authentication Method (0x15) and Data (0x16) of a property list at
/// `at` (its length first).
fn auth_properties(b: &[u8], mut at: usize) -> (Option<String>, Option<Vec<u8>>) {
    let len = var_int(b, &mut at);
    let end = at + len;
    let (mut method, mut data) = (None, None);
    while at < end {
        let id = b[at];
        at += 1;
        match id {
            0x15 => method = Some(String::from_utf8(two_bytes(b, &mut at)).expect("UTF-8")),
            0x16 => data = Some(two_bytes(b, &mut at)),
            // Properties a client puts in CONNECT: four-byte integers
            // (session expiry, maximum packet size), two-byte ones
            // (receive maximum, topic alias maximum), bytes (request
            // response/problem information), user properties.
            0x11 | 0x27 => at += 4,
            0x21 | 0x22 => at += 2,
            0x17 | 0x19 => at += 1,
            0x26 => {
                two_bytes(b, &mut at);
                two_bytes(b, &mut at);
            }
            other => panic!("unexpected CONNECT property {other:#x}"),
        }
    }
    (method, data)
}

/// Accepts the station's next connection and decodes its CONNECT:
/// protocol level 5 and the authentication properties. Answers CONNACK
/// (success) and returns the connection.
fn accept_connect(l: &TcpListener) -> (TcpStream, Option<String>, Option<Vec<u8>>) {
    let (mut s, _) = l.accept().expect("the station connects");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let (kind, body) = read_packet(&mut s).expect("CONNECT");
    assert_eq!(kind, 1, "the first packet is CONNECT");
    let mut at = 0;
    assert_eq!(two_bytes(&body, &mut at), b"MQTT");
    assert_eq!(body[at], 5, "MQTT v5");
    // Level, connect flags, keep alive.
    at += 4;
    let (method, data) = auth_properties(&body, at);
    // CONNACK: no session present, success, no properties.
    s.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00])
        .expect("CONNACK");
    (s, method, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_sat_token_is_sent_in_connect_read_again_on_reconnect_and_on_reauthentication() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("broker-sat");
    let first = "eyJhbGciOi.first-token.sig-11111";
    std::fs::write(&token_file, format!("{first}\n")).expect("token");
    let broker = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = broker.local_addr().expect("addr").port();
    let redis = LocalRedis::start().expect("redis");
    let mut env = jobs::env(port, redis.port(), "sat");
    set(&mut env, "PATH", std::env::var("PATH").unwrap_or_default());
    set(&mut env, "APP_MQTT_SAT_TOKEN_PATH", path(&token_file));
    set(&mut env, "APP_MQTT_TLS_CERT_PATH", "/nonexistent/ca.crt");
    set(&mut env, "APP_LOG_LEVEL", "debug");
    let station = Station::start(&env);

    let (conn, method, data) = accept_connect(&broker);
    assert_eq!(method.as_deref(), Some("K8S-SAT"));
    assert_eq!(
        data.as_deref(),
        Some(first.as_bytes()),
        "the token, trimmed"
    );

    // Kubernetes rotates the token; the connection drops; the reconnect
    // carries the new one.
    let second = "eyJhbGciOi.second-token.sig-22222";
    std::fs::write(&token_file, second).expect("rotate");
    drop(conn);
    let (mut conn, method, data) = accept_connect(&broker);
    assert_eq!(method.as_deref(), Some("K8S-SAT"));
    assert_eq!(data.as_deref(), Some(second.as_bytes()));

    // The broker asks for re-authentication (AUTH, reason 0x19, method
    // K8S-SAT) after another rotation: the station answers with the
    // current token. rumqttc 0.25 cannot send AUTH, so the answer is a new
    // CONNECT carrying it (the session is resumed).
    let third = "eyJhbGciOi.third-token.sig-33333";
    std::fs::write(&token_file, third).expect("rotate again");
    let mut auth = vec![0xF0, 0x00, 0x19];
    let method_prop = [&[0x15, 0x00, 0x07][..], b"K8S-SAT"].concat();
    auth.push(method_prop.len() as u8);
    auth.extend_from_slice(&method_prop);
    auth[1] = (auth.len() - 2) as u8;
    conn.write_all(&auth).expect("AUTH");
    let (_conn, method, data) = accept_connect(&broker);
    assert_eq!(method.as_deref(), Some("K8S-SAT"));
    assert_eq!(data.as_deref(), Some(third.as_bytes()));

    let log = station.stop();
    for token in [first, second, third] {
        assert!(!log.contains(token), "the log contains a token:\n{log}");
    }
    assert!(!log.contains("sig-"), "{log}");
}

// Configuration.

#[test]
fn tls_is_on_only_when_the_ca_file_exists_and_rediss_when_redis_ssl_is_set() {
    use microdcs::config::Config;
    let pki = Pki::new();
    let ca = path(&pki.ca);
    let env = [
        ("APP_MQTT_TLS_CERT_PATH", ca.as_str()),
        ("APP_MQTT_TLS_SERVER_NAME", "broker.plant.example"),
        ("APP_MQTT_SAT_TOKEN_PATH", "/run/token"),
        ("APP_REDIS_SSL", "yes"),
        ("APP_REDIS_SSL_CA_CERTS", ca.as_str()),
        ("APP_REDIS_PASSWORD", "pw"),
    ];
    let c = Config::from_sources(None, env).expect("valid");
    let s = c.mqtt_settings();
    let tls = s.tls.expect("TLS: the CA file exists");
    assert_eq!(tls.ca_file, pki.ca);
    assert_eq!(tls.server_name.as_deref(), Some("broker.plant.example"));
    assert_eq!(s.sat_token_path.as_deref(), Some(Path::new("/run/token")));
    assert!(c.redis_url().starts_with("rediss://:pw@"), "rediss");
    assert_eq!(c.redis_tls().and_then(|t| t.ca_file), Some(pki.ca));

    // No CA file: plain TCP, as MicroDCS.
    let c = Config::from_sources(None, [("APP_MQTT_TLS_CERT_PATH", "/nonexistent/ca.crt")])
        .expect("valid");
    assert!(c.mqtt_settings().tls.is_none());
    assert!(c.redis_url().starts_with("redis://"));
    assert!(c.redis_tls().is_none());
}

#[test]
fn a_client_certificate_without_its_key_or_redis_files_without_ssl_are_rejected() {
    use microdcs::config::Config;
    let err = Config::from_sources(None, [("APP_MQTT_TLS_CLIENT_CERT_PATH", "/c/tls.crt")])
        .expect_err("no key");
    assert!(
        err.to_string()
            .contains("`mqtt.tls_client_key_path` is not set"),
        "{err}"
    );
    let err =
        Config::from_sources(None, [("APP_REDIS_SSL_CA_CERTS", "/c/ca.crt")]).expect_err("ssl off");
    assert!(err.to_string().contains("APP_REDIS_SSL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_runs_a_job_on_a_redis_cluster_over_mutual_tls() {
    use microdcs::testkit::devenv::LocalRedisCluster;
    let pki = Pki::new();
    let m = LocalMosquitto::start().expect("mosquitto");
    let cluster = LocalRedisCluster::start_tls(&pki.server).expect("Redis Cluster with TLS");
    let mut env = jobs::env(m.port(), 1, "tls-cluster");
    set(&mut env, "PATH", std::env::var("PATH").unwrap_or_default());
    set(
        &mut env,
        "APP_MQTT_SAT_TOKEN_PATH",
        "/nonexistent/broker-sat",
    );
    set(&mut env, "APP_MQTT_TLS_CERT_PATH", "/nonexistent/ca.crt");
    set(&mut env, "APP_REDIS_CLUSTER_NODES", cluster.nodes());
    set(&mut env, "APP_REDIS_SSL", "true");
    set(&mut env, "APP_REDIS_SSL_CA_CERTS", path(&pki.ca));
    set(&mut env, "APP_REDIS_SSL_CERTFILE", path(&pki.client_cert));
    set(&mut env, "APP_REDIS_SSL_KEYFILE", path(&pki.client_key));
    let station = Station::start(&env);
    let (status, states) = store_and_start(m.port(), "cluster-job").await;
    let log = station.stop();
    assert_eq!(status, 1, "{log}");
    assert_eq!(states, ["AllowedToStart", "Ready"], "{log}");
    // The shared connection and the stream readers (publisher, SFC
    // engine) all reached their nodes over TLS.
    for failure in [
        "Redis not reachable",
        "invalid peer certificate",
        "received fatal alert",
        "Connection reset",
        "InvalidClientConfig",
    ] {
        assert!(!log.contains(failure), "{failure}:\n{log}");
    }
}

/// Everything a listener standing where the broker would be receives:
/// the first bytes of each connection, until `stop` is set.
fn record_connections(l: TcpListener, stop: Arc<Mutex<bool>>) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !*stop.lock().unwrap() {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).unwrap_or(0);
                    buf.truncate(n);
                    out.lock().unwrap().push(buf);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_never_send_the_connect_in_the_clear_not_even_at_shutdown() {
    // A CA file that exists (so TLS is on) but holds no certificate, and a
    // password: no attempt, in the run or in the shutdown's drain, may
    // reach the "broker" as plain MQTT.
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("ca.crt");
    std::fs::write(&garbage, "this is not a certificate\n").expect("write");
    let broker = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = broker.local_addr().expect("addr").port();
    let stop = Arc::new(Mutex::new(false));
    let seen = record_connections(broker, stop.clone());
    let redis = LocalRedis::start().expect("redis");
    let mut env = jobs::env(port, redis.port(), "garbage-ca");
    set(&mut env, "APP_MQTT_TLS_CERT_PATH", path(&garbage));
    set(&mut env, "APP_MQTT_USERNAME", "station");
    set(&mut env, "APP_MQTT_PASSWORD", "secret-never-in-clear");
    let station = Station::start(&env);
    let said = station.wait_for_line(&["holds no PEM certificate", &path(&garbage)]);
    // A few more attempts, then the shutdown (its drain polls the
    // connection once more).
    std::thread::sleep(Duration::from_secs(2));
    let log = station.stop();
    std::thread::sleep(Duration::from_millis(600));
    *stop.lock().unwrap() = true;
    assert!(said.is_ok(), "{log}");
    for first in seen.lock().unwrap().iter() {
        assert_ne!(
            first.first(),
            Some(&0x10),
            "a CONNECT went out in the clear: {first:?}\n{log}"
        );
        assert!(
            !first
                .windows(b"secret-never-in-clear".len())
                .any(|w| w == b"secret-never-in-clear"),
            "the password went out in the clear\n{log}"
        );
    }
}
