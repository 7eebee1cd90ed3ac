//! The OPC UA server face (issue #13): its configuration, and a real
//! server driven by a real OPC UA client (Python `asyncua`, installed by
//! `scripts/setup.sh`).

use microdcs::config::{Config, ConfigError};

fn load(toml: Option<&str>, env: &[(&str, &str)]) -> Config {
    match Config::from_sources(toml, env.iter().copied()) {
        Ok(c) => c,
        Err(e) => panic!("configuration should load: {e}"),
    }
}

fn error(env: &[(&str, &str)]) -> ConfigError {
    match Config::from_sources(None, env.iter().copied()) {
        Ok(c) => panic!("configuration should be rejected:\n{}", c.redacted_toml()),
        Err(e) => e,
    }
}

fn has_problem(err: &ConfigError, origin: &str, needle: &str) -> bool {
    err.problems()
        .iter()
        .any(|p| p.origin.to_string().contains(origin) && p.message.contains(needle))
}

#[test]
fn opcua_is_off_by_default_and_secure_when_on() {
    let c = load(None, &[]);
    let o = &c.opcua;
    assert_eq!(o.port, 0, "no OPC UA server unless a port is set");
    assert!(!o.anonymous);
    assert_eq!(
        o.security_policies,
        [
            "Basic256Sha256",
            "Aes128-Sha256-RsaOaep",
            "Aes256-Sha256-RsaPss"
        ]
    );
    assert_eq!(o.security_modes, ["SignAndEncrypt"]);
    assert_eq!(o.bind, "0.0.0.0");
    assert_eq!(o.pki_dir, std::path::Path::new("./pki"));
    assert!(o.username.is_none() && o.password.is_none());
    assert!(o.hostname.is_none() && o.application_uri.is_none());
    assert!(!o.trust_all_clients);
}

#[test]
fn opcua_settings_come_from_the_file_and_the_environment() {
    let file = r#"
        [opcua]
        port = 4840
        scopes = ["line-1", "line-2"]
        security_policies = ["None", "Basic256Sha256"]
    "#;
    let env = [
        ("APP_OPCUA_HOSTNAME", "station.example"),
        ("APP_OPCUA_BIND", "127.0.0.1"),
        ("APP_OPCUA_ANONYMOUS", "yes"),
        ("APP_OPCUA_SECURITY_MODES", "Sign,SignAndEncrypt"),
        ("APP_OPCUA_USERNAME", "operator"),
        ("APP_OPCUA_PASSWORD", "s3cret-pw"),
        ("APP_OPCUA_PKI_DIR", "/var/lib/microdcs/pki"),
        ("APP_OPCUA_APPLICATION_URI", "urn:plant:station-1"),
        ("APP_OPCUA_TRUST_ALL_CLIENTS", "true"),
    ];
    let c = load(Some(file), &env);
    let o = &c.opcua;
    assert_eq!(o.port, 4840);
    assert_eq!(o.scopes, ["line-1", "line-2"]);
    assert_eq!(o.security_policies, ["None", "Basic256Sha256"]);
    assert_eq!(o.security_modes, ["Sign", "SignAndEncrypt"]);
    assert_eq!(o.hostname.as_deref(), Some("station.example"));
    assert_eq!(o.bind, "127.0.0.1");
    assert!(o.anonymous && o.trust_all_clients);
    assert_eq!(o.username.as_deref(), Some("operator"));
    assert_eq!(o.password.as_ref().map(|p| p.expose()), Some("s3cret-pw"));
    assert_eq!(o.pki_dir, std::path::Path::new("/var/lib/microdcs/pki"));
    assert_eq!(o.application_uri.as_deref(), Some("urn:plant:station-1"));

    // `config check` shows the section, the password hidden.
    let shown = c.redacted_toml();
    assert!(shown.contains("[opcua]"), "{shown}");
    assert!(shown.contains("port = 4840"), "{shown}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(shown.contains("password = \"***\""), "{shown}");
}

#[test]
fn opcua_settings_that_cannot_work_are_refused_with_their_reason() {
    let e = error(&[(
        "APP_OPCUA_SECURITY_POLICIES",
        "Basic256Sha256,Basic128Rsa15",
    )]);
    assert!(
        has_problem(&e, "APP_OPCUA_SECURITY_POLICIES", "Basic128Rsa15"),
        "{e}"
    );
    let e = error(&[("APP_OPCUA_SECURITY_MODES", "None")]);
    assert!(
        has_problem(&e, "APP_OPCUA_SECURITY_MODES", "unknown security mode"),
        "{e}"
    );
    let e = error(&[("APP_OPCUA_PORT", "65536")]);
    assert!(has_problem(&e, "APP_OPCUA_PORT", ""), "{e}");
    let e = error(&[
        ("APP_OPCUA_PASSWORD", "pw"),
        ("APP_OPCUA_ANONYMOUS", "true"),
    ]);
    assert!(has_problem(&e, "APP_OPCUA_PASSWORD", "user name"), "{e}");
    // A server nobody can log in to.
    let e = error(&[("APP_OPCUA_PORT", "4840")]);
    assert!(
        has_problem(&e, "APP_OPCUA_PORT", "nobody could log in"),
        "{e}"
    );
    // The face needs the job manager.
    let e = error(&[
        ("APP_OPCUA_PORT", "4840"),
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_IS_PROCESSOR_INSTANCE", "false"),
    ]);
    assert!(
        has_problem(&e, "APP_OPCUA_PORT", "processor instance"),
        "{e}"
    );
}
