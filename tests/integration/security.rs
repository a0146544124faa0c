//! Security against real services, both started by `scripts/services.sh`: the broker's SASL_SSL listener
//! (SCRAM-SHA-512 over TLS, user `shardline`) and the `cassandra-tls` node (TLS only, a client
//! certificate from the test CA required, PasswordAuthenticator). The CA, certificates and passwords
//! are the ones `services.sh` made under `.services/secrets`; the passwords reach shardline only through
//! `SHARDLINE_KAFKA_SASL_PASSWORD` and `SHARDLINE_SCYLLA_PASSWORD`, as an operator would pass them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use crate::utils::*;

const SASL_BROKERS: &str = "127.0.0.1:9094";
const TLS_CQL: &str = "127.0.0.1:9142";
const ROLE: &str = "shardline";

/// The test PKI and passwords of `scripts/services.sh` (`$SHARDLINE_STATE/secrets`).
struct Secrets {
    dir: PathBuf,
    kafka_password: String,
    cassandra_password: String,
}

impl Secrets {
    fn load() -> Result<Secrets> {
        let state = std::env::var_os("SHARDLINE_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".services"));
        let dir = state.join("secrets");
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).with_context(|| {
                format!("{f} in {} (scripts/services.sh up makes it)", dir.display())
            })
        };
        Ok(Secrets {
            kafka_password: read("kafka-password")?,
            cassandra_password: read("cassandra-password")?,
            dir,
        })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Fails if `text` (named `what`) holds either password.
    fn assert_absent(&self, what: &str, text: &str) {
        for (name, p) in [
            ("SCRAM", &self.kafka_password),
            ("database", &self.cassandra_password),
        ] {
            assert!(
                !text.contains(p.as_str()),
                "the {name} password is in {what}"
            );
        }
    }
}

fn tls_context(s: &Secrets, client: &str) -> Result<openssl::ssl::SslContext> {
    use openssl::ssl::{SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode};
    let mut b = SslContextBuilder::new(SslMethod::tls())?;
    b.set_ca_file(s.file("ca.crt"))?;
    b.set_verify(SslVerifyMode::PEER);
    b.set_certificate_file(s.file(&format!("{client}.crt")), SslFiletype::PEM)?;
    b.set_private_key_file(s.file(&format!("{client}.key")), SslFiletype::PEM)?;
    Ok(b.build())
}

/// The default superuser over mutual TLS: it makes the test's keyspace and the `shardline` role.
async fn superuser(s: &Secrets) -> Result<Session> {
    Ok(SessionBuilder::new()
        .known_node(TLS_CQL)
        .tls_context(Some(tls_context(s, "client")?))
        .user("cassandra", "cassandra")
        .build()
        .await?)
}

/// A topic on the broker (created and filled over its plaintext listener), a keyspace on `cassandra-tls`
/// written by role `shardline` (password from the secrets), and a config reaching both through their
/// secured ports.
struct Secure {
    secrets: Secrets,
    topic: String,
    ks: String,
    group: String,
    dir: PathBuf,
}

impl Secure {
    fn new(name: &str) -> Result<Secure> {
        let secrets = Secrets::load()?;
        let topic = unique(name);
        let ks = unique(name);
        create_topic(&topic, 2)?;
        create_topic(&format!("{topic}.dlq"), 1)?;
        tokio().block_on(async {
            let su = superuser(&secrets).await?;
            create_keyspace(&su, &ks).await?;
            // The role's password follows the secrets file (services.sh may have made new ones).
            let pw = &secrets.cassandra_password;
            su.query_unpaged(
                format!("CREATE ROLE IF NOT EXISTS {ROLE} WITH PASSWORD = '{pw}' AND LOGIN = true"),
                &[],
            )
            .await?;
            su.query_unpaged(format!("ALTER ROLE {ROLE} WITH PASSWORD = '{pw}'"), &[])
                .await?;
            anyhow::Ok(())
        })?;
        Ok(Secure {
            secrets,
            topic,
            ks,
            group: unique("grp"),
            dir: temp_dir(name)?,
        })
    }

    /// The secured config; `edit` changes one thing of it (a refusal case).
    fn config(&self, name: &str, edit: impl Fn(String) -> String) -> Result<PathBuf> {
        let s = &self.secrets;
        let table = format!(
            "table = \"navigation_events\"\nttl_seconds = 2592000\n\n[table.columns]\n{ALL_COLUMNS}"
        );
        let kafka_security = format!(
            "[kafka.librdkafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
             \"sasl.username\" = \"{ROLE}\"\n\"ssl.ca.location\" = \"{}\"\n",
            s.file("ca.crt")
        );
        let text = config_text(
            &self.topic,
            &self.group,
            &self.ks,
            512,
            &table,
            &kafka_security,
        )
        .replace(
            &format!("brokers = \"{BROKERS}\""),
            &format!("brokers = \"{SASL_BROKERS}\""),
        )
        .replace(
            &format!("nodes = [\"{CQL}\"]"),
            &format!(
                "nodes = [\"{TLS_CQL}\"]\nusername = \"{ROLE}\"\ntls_ca_file = \"{}\"\n\
                     tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
                s.file("ca.crt"),
                s.file("client.crt"),
                s.file("client.key")
            ),
        );
        let text = edit(text);
        let p = self.dir.join(format!("{name}.toml"));
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// The passwords as an operator passes them: environment only.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "SHARDLINE_KAFKA_SASL_PASSWORD",
                self.secrets.kafka_password.clone(),
            ),
            (
                "SHARDLINE_SCYLLA_PASSWORD",
                self.secrets.cassandra_password.clone(),
            ),
        ]
    }

    fn rows(&self) -> Result<std::collections::HashMap<String, NavRow>> {
        tokio().block_on(async { read_rows(&superuser(&self.secrets).await?, &self.ks).await })
    }
}

#[test]
fn a_pipeline_over_sasl_ssl_and_mutual_tls_writes_every_row_and_shows_no_secret() -> Result<()> {
    let t = Secure::new("secure")?;
    let seed = 71;
    let sent = produce(&t.topic, 400, seed, 40)?;
    ensure!(sent.poison == 10, "{} poison records produced", sent.poison);
    // Logs at their most talkative, librdkafka's security, broker and config debug included: the
    // places a secret would leak first.
    let config = t.config("run", |c| {
        c.replacen(
            "\"sasl.username\"",
            "\"debug\" = \"security,broker,conf\"\n\"sasl.username\"",
            1,
        )
    })?;
    let port = free_port()?;
    with_metrics_port(&config, port)?;
    let summary = config.with_extension("summary.json");
    let mut env = t.env();
    env.push(("RUST_LOG", "debug".to_string()));
    let mut run = Proc::spawn_env(
        &config,
        &[
            "--drain",
            "--drain-idle-ms",
            "2000",
            "--summary",
            &summary.display().to_string(),
        ],
        &env,
    )?;
    // Scrape while it runs, keeping the last answer (the secrets are looked for in it): until the
    // rows are counted, or the run ended (a scrape may miss its last seconds; the rows, read back
    // below, are what counts).
    let mut metrics = String::new();
    wait_until(Duration::from_secs(90), || {
        let now = scrape(port);
        if !now.is_empty() {
            metrics = now;
        }
        let written = metric_sum(&metrics, "shardline_messages_total", &["stage=\"written\""]);
        Ok(written >= 390.0 || !run.alive())
    })?;
    let status = run.wait_for(Duration::from_secs(90))?;
    let log = run.log_text();
    ensure!(
        status.is_some_and(|s| s.success()),
        "the run did not end well ({status:?}); log:\n{log}"
    );

    let rows = t.rows()?;
    assert_eq!(rows.len(), 390, "every good record is a row");
    for row in rows.values() {
        assert_row_matches(row, seed);
    }
    let letters = dead_letters(&t.topic)?;
    assert_eq!(letters.len(), 10, "each poison record is dead-lettered");
    assert_eq!(
        committed(&t.group, &t.topic, 2)?,
        end_offsets(&t.topic, 2)?,
        "every offset is committed"
    );

    // No secret in the log, the metrics, the run summary or any dead letter's headers.
    let summary_text = std::fs::read_to_string(&summary).context("the run summary")?;
    assert!(
        metrics.contains("shardline_messages_total"),
        "metrics scraped"
    );
    assert!(
        log.contains("SASL") && log.contains("DEBUG"),
        "the log is the debug log, librdkafka's security lines included"
    );
    t.secrets.assert_absent("the log", &log);
    t.secrets.assert_absent("/metrics", &metrics);
    t.secrets.assert_absent("the run summary", &summary_text);
    for l in &letters {
        assert!(!l.headers.is_empty(), "dead letters carry headers");
        for (k, v) in &l.headers {
            t.secrets
                .assert_absent("a dead-letter header", &format!("{k}={v}"));
        }
    }
    Ok(())
}

/// One refusal: the config edited by `edit`, run with `env`; the run must fail at start-up (before any
/// shard starts: no row written) with an error holding every `expect`, and no password anywhere.
fn refused(
    t: &Secure,
    name: &str,
    edit: impl Fn(String) -> String,
    env: &[(&str, String)],
    expect: &[&str],
) -> Result<()> {
    let config = t.config(name, edit)?;
    let out = run_drain_env(&config, Duration::from_secs(90), &[], env)?;
    ensure!(
        !out.ok,
        "{name}: the run was not refused; log:\n{}",
        out.stderr
    );
    // The error itself: from the line shardline prints it on to the end (a driver message may span lines).
    let last = out
        .stderr
        .rfind("shardline: ")
        .map(|i| out.stderr[i..].to_string())
        .unwrap_or_default();
    // The error, not librdkafka's or the driver's log lines, must say it.
    for e in expect {
        ensure!(
            last.to_lowercase().contains(&e.to_lowercase()),
            "{name}: the error does not say '{e}'; log:\n{}",
            out.stderr
        );
    }
    ensure!(
        !out.stderr.contains("shard started") && row_count_tls(t)? == 0,
        "{name}: a shard started or wrote; log:\n{}",
        out.stderr
    );
    t.secrets.assert_absent(name, &out.stderr);
    for (_, wrong) in env {
        assert!(
            !out.stderr.contains(wrong.as_str()),
            "{name}: a given password is in the log"
        );
    }
    eprintln!("{name}: {}", last.lines().next().unwrap_or_default());
    Ok(())
}

fn row_count_tls(t: &Secure) -> Result<usize> {
    Ok(t.rows()?.len())
}

#[test]
fn wrong_credentials_and_certificates_are_refused_at_start_up_without_a_secret() -> Result<()> {
    let t = Secure::new("refusals")?;
    produce(&t.topic, 20, 3, 0)?;
    let good = t.env();
    let with = |key: &str, value: &str| -> Vec<(&'static str, String)> {
        good.iter()
            .map(|(k, v)| {
                (
                    *k,
                    if *k == key {
                        value.to_string()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };
    let other_ca = t.secrets.file("other-ca.crt");
    let ca = t.secrets.file("ca.crt");
    refused(
        &t,
        "wrong-scram-password",
        |c| c,
        &with("SHARDLINE_KAFKA_SASL_PASSWORD", "wrong-scram-7f3a9c"),
        &[
            "kafka brokers 127.0.0.1:9094",
            "SASL authentication error",
            "SHARDLINE_KAFKA_SASL_PASSWORD",
        ],
    )?;
    refused(
        &t,
        "broker-from-another-ca",
        |c| {
            c.replacen(
                &format!("\"ssl.ca.location\" = \"{ca}\""),
                &format!("\"ssl.ca.location\" = \"{other_ca}\""),
                1,
            )
        },
        &good,
        &[
            "kafka brokers 127.0.0.1:9094",
            "certificate verify failed",
            "check ssl.ca.location",
        ],
    )?;
    refused(
        &t,
        "wrong-database-password",
        |c| c,
        &with("SHARDLINE_SCYLLA_PASSWORD", "wrong-db-5e81d2"),
        &[
            TLS_CQL,
            "Authentication failed",
            "check scylla.username and SHARDLINE_SCYLLA_PASSWORD",
        ],
    )?;
    refused(
        &t,
        "database-from-another-ca",
        |c| {
            c.replacen(
                &format!("tls_ca_file = \"{ca}\""),
                &format!("tls_ca_file = \"{other_ca}\""),
                1,
            )
        },
        &good,
        &[
            TLS_CQL,
            "certificate verify failed",
            "not from scylla.tls_ca_file's CA",
        ],
    )?;
    let client = t.secrets.file("client");
    let other_client = t.secrets.file("other-client");
    refused(
        &t,
        "client-certificate-from-another-ca",
        |c| c.replace(&client, &other_client),
        &good,
        &[TLS_CQL, "ended the TLS handshake"],
    )?;
    refused(
        &t,
        "no-client-certificate",
        |c| {
            c.lines()
                .filter(|l| !l.starts_with("tls_cert_file") && !l.starts_with("tls_key_file"))
                .collect::<Vec<_>>()
                .join("\n")
        },
        &good,
        &[TLS_CQL, "ended the TLS handshake"],
    )?;
    refused(
        &t,
        "missing-kafka-ca-file",
        |c| {
            c.replacen(
                &format!("\"ssl.ca.location\" = \"{ca}\""),
                "\"ssl.ca.location\" = \"/nonexistent/kafka-ca.pem\"",
                1,
            )
        },
        &good,
        &[
            "kafka.librdkafka.\"ssl.ca.location\" = /nonexistent/kafka-ca.pem",
            "no such file",
        ],
    )?;
    refused(
        &t,
        "missing-ca-file",
        |c| {
            c.replacen(
                &format!("tls_ca_file = \"{ca}\""),
                "tls_ca_file = \"/nonexistent/ca.pem\"",
                1,
            )
        },
        &good,
        &["TLS CA file /nonexistent/ca.pem", "no such file"],
    )?;
    Ok(())
}

/// The registry behind `scripts/registry-proxy.py`: HTTPS with the test server certificate, a client
/// certificate from the test CA required, and the given credential check. Stopped when dropped.
struct RegistryProxy {
    child: std::process::Child,
    port: u16,
}

impl RegistryProxy {
    fn start(s: &Secrets, auth: &[&str]) -> Result<RegistryProxy> {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/registry-proxy.py");
        let upstream = REGISTRY.trim_end_matches("/apis/ccompat/v7");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .args(["--port", "0", "--upstream", upstream])
            .args([
                "--cert",
                &s.file("server.crt"),
                "--key",
                &s.file("server.key"),
            ])
            .args(["--client-ca", &s.file("ca.crt")])
            .args(auth)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("python3 scripts/registry-proxy.py")?;
        let mut line = String::new();
        let out = child.stdout.take().context("the proxy's stdout")?;
        std::io::BufReader::new(out).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("the proxy did not start: {line:?}"))?;
        Ok(RegistryProxy { child, port })
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A refusal case of the secured registry: name, `[schema]`, environment, words the error holds.
type RegistryRefusal = (
    &'static str,
    String,
    Vec<(&'static str, String)>,
    &'static [&'static str],
);

/// A plaintext pipeline whose `[schema]` is `schema` (the registry's URL and security).
fn registry_config(dir: &Path, name: &str, topic: &str, ks: &str, schema: &str) -> Result<PathBuf> {
    let table = format!(
        "table = \"navigation_events\"\nttl_seconds = 2592000\n\n[table.columns]\n{ALL_COLUMNS}"
    );
    let text = config_text(topic, &unique("grp"), ks, 512, &table, "")
        .replace(&format!("registry_url = \"{REGISTRY}\""), schema);
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text)?;
    Ok(p)
}

// Fails on the old code: the registry client spoke plain HTTP only, without credentials.
#[test]
fn schemas_come_from_an_https_registry_with_mutual_tls_and_basic_auth_or_a_token() -> Result<()> {
    let s = Secrets::load()?;
    let dir = temp_dir("registry")?;
    let password = format!("reg-pw-{}", unique("p"));
    let token = format!("reg-token-{}", unique("t"));
    let pw_file = dir.join("registry-password");
    let token_file = dir.join("registry-token");
    std::fs::write(&pw_file, &password)?;
    std::fs::write(&token_file, &token)?;
    let basic = RegistryProxy::start(
        &s,
        &[
            "--user",
            "reg-user",
            "--password-file",
            &pw_file.display().to_string(),
        ],
    )?;
    let bearer = RegistryProxy::start(&s, &["--token-file", &token_file.display().to_string()])?;
    let topic = unique("regtls");
    let ks = unique("regtls");
    create_topic(&topic, 2)?;
    create_topic(&format!("{topic}.dlq"), 1)?;
    tokio().block_on(async { create_keyspace(&session().await?, &ks).await })?;
    let seed = 17;
    produce(&topic, 200, seed, 0)?;
    let tls = |url: &str, client: &str, ca: &str| {
        format!(
            "registry_url = \"{url}\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            s.file(ca),
            s.file(&format!("{client}.crt")),
            s.file(&format!("{client}.key"))
        )
    };
    let basic_schema = format!(
        "{}\nusername = \"reg-user\"",
        tls(&basic.url(), "client", "ca.crt")
    );
    let debug = ("RUST_LOG", "debug".to_string());

    // Mutual TLS and basic auth: every record decoded with the schema from the HTTPS registry.
    let config = registry_config(&dir, "basic", &topic, &ks, &basic_schema)?;
    let out = run_drain_env(
        &config,
        Duration::from_secs(120),
        &[],
        &[
            ("SHARDLINE_REGISTRY_PASSWORD", password.clone()),
            debug.clone(),
        ],
    )?;
    ensure!(out.ok, "the run failed; log:\n{}", out.stderr);
    let summary = out.summary.context("a summary")?;
    assert_eq!(summary["written"], 200);
    let rows = tokio().block_on(async { read_rows(&session().await?, &ks).await })?;
    assert_eq!(rows.len(), 200);
    for row in rows.values() {
        assert_row_matches(row, seed);
    }
    assert!(out.stderr.contains("DEBUG"), "the debug log");
    assert!(
        !out.stderr.contains(&password),
        "the registry password is in the log"
    );
    assert!(!summary.to_string().contains(&password));

    // A bearer token instead (no username): the same records, through the token-checking proxy.
    let bearer_schema = tls(&bearer.url(), "client", "ca.crt");
    let config = registry_config(&dir, "bearer", &topic, &ks, &bearer_schema)?;
    let out = run_drain_env(
        &config,
        Duration::from_secs(120),
        &[],
        &[("SHARDLINE_REGISTRY_TOKEN", token.clone()), debug.clone()],
    )?;
    ensure!(out.ok, "the bearer run failed; log:\n{}", out.stderr);
    assert_eq!(out.summary.context("a summary")?["written"], 200);
    assert!(!out.stderr.contains(&token), "the token is in the log");

    // Refusals, each before any shard starts, each naming what to check, none showing a secret.
    let wrong = "wrong-reg-pw-3c9e";
    let cases: [RegistryRefusal; 4] = [
        (
            "wrong-password",
            basic_schema.clone(),
            vec![("SHARDLINE_REGISTRY_PASSWORD", wrong.to_string())],
            &["401", "SHARDLINE_REGISTRY_PASSWORD"],
        ),
        (
            "no-token",
            bearer_schema.clone(),
            vec![],
            &["401", "SHARDLINE_REGISTRY_TOKEN"],
        ),
        (
            "registry-from-another-ca",
            format!(
                "{}\nusername = \"reg-user\"",
                tls(&basic.url(), "client", "other-ca.crt")
            ),
            vec![("SHARDLINE_REGISTRY_PASSWORD", password.clone())],
            &["registry unreachable", "certificate verify failed"],
        ),
        (
            "client-certificate-from-another-ca",
            format!(
                "{}\nusername = \"reg-user\"",
                tls(&basic.url(), "other-client", "ca.crt")
            ),
            vec![("SHARDLINE_REGISTRY_PASSWORD", password.clone())],
            &["registry unreachable"],
        ),
    ];
    for (name, schema, env, expect) in cases {
        let config = registry_config(&dir, name, &topic, &ks, &schema)?;
        let out = run_drain_env(&config, Duration::from_secs(90), &[], &env)?;
        ensure!(!out.ok, "{name}: not refused; log:\n{}", out.stderr);
        let last = out
            .stderr
            .rfind("shardline: ")
            .map(|i| out.stderr[i..].to_string())
            .unwrap_or_default();
        for e in expect {
            ensure!(
                last.contains(e),
                "{name}: the error does not say '{e}':\n{}",
                out.stderr
            );
        }
        ensure!(
            !out.stderr.contains("shard started"),
            "{name}: a shard started"
        );
        for secret in [password.as_str(), token.as_str(), wrong] {
            ensure!(
                !out.stderr.contains(secret),
                "{name}: a secret is in the log"
            );
        }
        eprintln!("{name}: {}", last.lines().next().unwrap_or_default());
    }
    Ok(())
}
