//! Kafka: the per-shard consumer (its context, its glommio async runtime), offset tracking and the
//! dead-letter producer.
//!
//! Guarantee (at least once): offsets are stored only for the contiguous done prefix of each
//! partition (`enable.auto.offset.store=false`), and librdkafka commits stored offsets on its timer,
//! before a revoke and on close. A record is done when written, or when its dead letter is acked.
//! Precondition: the eager assignment protocol (shardline sets it): on every rebalance all partitions
//! are revoked, so a shard drops its per-partition state and resumes from committed offsets.

pub mod context;
pub mod dead_letter;
pub mod partitions;
pub mod tracker;

use std::time::Duration;

use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use rdkafka::util::AsyncRuntime;
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::retry::{Retryable, Scope};

/// Errors of the Kafka boundary.
#[derive(Debug, Error)]
pub enum KafkaError {
    /// Creating, configuring or subscribing a client failed (start-up). A refused setting's value
    /// is redacted (see the `From` impl): it may be a secret.
    #[error("kafka client: {0}")]
    Client(rdkafka::error::KafkaError),
    /// Producing one record (a dead letter, the produce step) failed; see [`KafkaError::scope`].
    #[error("produce failed: {0}")]
    Produce(rdkafka::error::KafkaError),
    /// A start-up request to the brokers failed, and the client had said why: `reason` is librdkafka's
    /// own account of its last connection error (a TLS handshake that failed, SASL credentials that
    /// were refused, no broker answering), which names the broker and the mechanism, never a secret.
    /// Not retryable when the brokers refused the credentials or the TLS handshake; retryable
    /// otherwise (no broker answering, a name that did not resolve: those may heal, and a restart
    /// with backoff is what a supervisor does).
    #[error("kafka brokers {brokers} refused or did not answer ({code:?}): {reason}{hint}")]
    Unreachable {
        brokers: String,
        code: rdkafka::types::RDKafkaErrorCode,
        reason: String,
        hint: &'static str,
    },
}

impl From<rdkafka::error::KafkaError> for KafkaError {
    /// librdkafka refuses a passthrough setting with its value in both the error's fields and its
    /// own message (`Invalid value "…" for configuration property "…"`), and rdkafka prints both:
    /// a secret under a key this build does not know (`sasl.oauthbearer.client.secret` without
    /// OIDC, a pasted Java `sasl.jaas.config`) reached stderr. The key is kept; the value is not.
    fn from(e: rdkafka::error::KafkaError) -> KafkaError {
        use rdkafka::error::KafkaError as K;
        KafkaError::Client(match e {
            K::ClientConfig(code, description, key, value) => {
                let description = if value.is_empty() {
                    description
                } else {
                    description.replace(&value, REDACTED)
                };
                K::ClientConfig(code, description, key, REDACTED.into())
            }
            other => other,
        })
    }
}

/// What a refused setting's value reads as in errors.
const REDACTED: &str = "<redacted>";

/// A file the client needs (a CA, a certificate, a key) is not there. librdkafka's own message
/// ("ssl.ca.location failed: x509 certificate routines::system lib") names neither the file nor why.
#[derive(Debug, Error)]
#[error("kafka.librdkafka.\"{key}\" = {path}: {reason}")]
pub struct MissingFile {
    pub key: String,
    pub path: String,
    pub reason: String,
}

/// Checks that every file the passthrough settings name (`*.location` keys) can be read by this
/// process (a key owned by another user is the usual mistake); `probe` (librdkafka's "find the
/// system's CA") is not a file, and a CA location may be a directory.
pub fn check_client_files(k: &KafkaConfig) -> Result<(), MissingFile> {
    for (key, path) in &k.librdkafka {
        if !key.ends_with(".location") || path == "probe" {
            continue;
        }
        let readable = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => std::fs::read_dir(path).map(drop),
            _ => std::fs::File::open(path).map(drop),
        };
        if let Err(e) = readable {
            return Err(MissingFile {
                key: key.clone(),
                path: path.clone(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

impl KafkaError {
    /// What the error is about: the record (too large, invalid), the client or topic (authorization,
    /// configuration, a fatal producer state), or neither (timeouts, a full queue, leader changes).
    pub fn scope(&self) -> Scope {
        use rdkafka::types::RDKafkaErrorCode as C;
        let code = match self {
            KafkaError::Client(e) | KafkaError::Produce(e) => e.rdkafka_error_code(),
            KafkaError::Unreachable { code, .. } => Some(*code),
        };
        match code {
            Some(
                C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord,
            ) => Scope::Record,
            Some(
                C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::SSL
                | C::InvalidConfig
                | C::Fatal
                | C::UnknownTopic
                | C::InvalidTopic
                | C::PolicyViolation
                | C::UnsupportedForMessageFormat,
            ) => Scope::Systemic,
            // A client error without a librdkafka code (a bad config value at creation) never heals.
            None => Scope::Systemic,
            Some(_) => Scope::Transient,
        }
    }
}

impl Retryable for KafkaError {
    fn is_retryable(&self) -> bool {
        self.scope() == Scope::Transient
    }

    fn class(&self) -> &'static str {
        match self.scope() {
            Scope::Record => "kafka_record",
            Scope::Systemic => "kafka_client",
            Scope::Transient => "kafka_transient",
        }
    }
}

/// A client context that keeps the client's last connection error. librdkafka reports a refused TLS
/// handshake or SASL login only as an error event; the request that needed the connection fails with a
/// bare "broker transport failure". [`LastError::explain`] puts the two together, for start-up errors
/// that say what failed.
#[derive(Default)]
pub struct LastError(std::sync::Mutex<Option<(rdkafka::types::RDKafkaErrorCode, String)>>);

impl rdkafka::ClientContext for LastError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, "kafka client: {reason}");
        let Some(code) = error.rdkafka_error_code() else {
            return;
        };
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The most telling event wins (the latest among equals): a refused login or handshake over
        // the transport failure librdkafka reports for the same connection (sometimes first) and the
        // "all brokers down" that follows both.
        if last.as_ref().is_none_or(|(c, _)| rank(code) >= rank(*c)) {
            *last = Some((code, reason.to_string()));
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// How much an error event says about why a connection failed.
fn rank(code: rdkafka::types::RDKafkaErrorCode) -> u8 {
    use rdkafka::types::RDKafkaErrorCode as C;
    match code {
        C::Authentication | C::SaslAuthenticationFailed | C::SSL => 3,
        C::AllBrokersDown => 1,
        _ => 2,
    }
}

/// The error of a failed start-up request of `consumer` (see [`LastError::explain`]). librdkafka queues
/// error events for the next poll, so they are served first; a record polled here is dropped, which is
/// harmless because start-up consumers never subscribe.
pub fn start_up_error(
    consumer: &rdkafka::consumer::BaseConsumer<LastError>,
    brokers: &str,
    request: rdkafka::error::KafkaError,
) -> KafkaError {
    // A poll returns after one error event: poll until the queue is empty (bounded).
    for _ in 0..20 {
        if consumer
            .poll(std::time::Duration::from_millis(20))
            .is_none()
        {
            break;
        }
    }
    rdkafka::consumer::Consumer::context(consumer).explain(brokers, request)
}

/// The topics of the cluster, for `[[routes]] topic_regex` (see
/// [`crate::config::Config::resolve_topic_regexes`]). A start-up request: its error names the
/// connection failure, as the start-up check's do.
pub fn list_topics(k: &KafkaConfig) -> Result<Vec<String>, KafkaError> {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer<LastError> =
        consumer_config(k, "shardline-topics").create_with_context(LastError::default())?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| start_up_error(&consumer, &k.brokers, e))?;
    Ok(md.topics().iter().map(|t| t.name().to_string()).collect())
}

impl LastError {
    /// The error of a failed start-up request: the client's last connection error when it had one
    /// (with a hint at the setting to check), else the request's own.
    pub fn explain(&self, brokers: &str, request: rdkafka::error::KafkaError) -> KafkaError {
        use rdkafka::types::RDKafkaErrorCode as C;
        let last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some((code, reason)) = last else {
            return KafkaError::Client(request);
        };
        let hint = match code {
            C::Authentication | C::SaslAuthenticationFailed => {
                " (check sasl.mechanism, sasl.username and SHARDLINE_KAFKA_SASL_PASSWORD)"
            }
            C::SSL => " (check ssl.ca.location and, for mutual TLS, ssl.certificate.location)",
            _ => "",
        };
        KafkaError::Unreachable {
            brokers: brokers.to_string(),
            code,
            reason,
            hint,
        }
    }
}

/// rdkafka's async hooks on glommio. Must be used from inside a glommio executor (shards are).
pub struct GlommioRuntime;

impl AsyncRuntime for GlommioRuntime {
    type Delay = futures::future::Map<
        futures::channel::oneshot::Receiver<()>,
        fn(Result<(), futures::channel::oneshot::Canceled>),
    >;

    fn spawn<T>(task: T)
    where
        T: std::future::Future<Output = ()> + Send + 'static,
    {
        glommio::spawn_local(task).detach();
    }

    fn delay_for(duration: Duration) -> Self::Delay {
        use futures::FutureExt;
        // rdkafka wants a Send delay; glommio timers are thread-local, so a local task sleeps and
        // completes a (Send) oneshot.
        let (tx, rx) = futures::channel::oneshot::channel();
        glommio::spawn_local(async move {
            glommio::timer::sleep(duration).await;
            let _ = tx.send(());
        })
        .detach();
        fn ignore(_: Result<(), futures::channel::oneshot::Canceled>) {}
        rx.map(ignore as fn(_))
    }
}

/// The consumer configuration of every shard: passthrough first, then the keys shardline owns.
pub fn consumer_config(k: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (key, v) in &k.librdkafka {
        c.set(key, v);
    }
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.commit.interval.ms",
            k.commit_interval.as_millis().to_string(),
        )
        .set("auto.offset.reset", k.offset_reset.as_str())
        .set(
            "session.timeout.ms",
            k.session_timeout.as_millis().to_string(),
        )
        .set("partition.assignment.strategy", "range,roundrobin");
    // librdkafka prefetches up to 100k records per partition by default, so one partition's backlog
    // queues ahead of its siblings'; a smaller prefetch interleaves partitions. But above that threshold
    // librdkafka postpones the partition's next fetch by fetch.queue.backoff.ms (default 1000 ms): with
    // the default, a shard read ~1 fetch per partition per second (measured: 70k msg/s null sink), so
    // the backoff comes down with it. Both can be overridden through the passthrough map.
    // Statistics feed the lag gauges and drain mode's fallback (`FetchView`): every 5 s by default,
    // a third of a usual 15 s scrape interval. Each emission is a wake-up and a JSON document (about
    // a million instructions to emit and parse with 8 partitions, under callgrind) per consumer:
    // every second, they were about a fifth of an idle process's CPU (2.6 against 2.0 ms/s).
    for (key, value) in [
        ("queued.min.messages", "10000"),
        ("fetch.queue.backoff.ms", "5"),
        ("statistics.interval.ms", "5000"),
    ] {
        if !k.librdkafka.contains_key(key) {
            c.set(key, value);
        }
    }
    c
}

/// The producer configuration (dead letters, load generator).
pub fn producer_config(k: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (key, v) in &k.librdkafka {
        // Consumer-only keys in the shared passthrough map would make the producer warn on every start.
        // Statistics too: only the consumers read them.
        if !key.starts_with("fetch.")
            && !key.starts_with("queued.")
            && key != "auto.offset.reset"
            && key != "statistics.interval.ms"
        {
            c.set(key, v);
        }
    }
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    c
}

/// A shard's producer whose sends resolve only when every in-sync replica has the record (acks=all,
/// idempotent): the one producer builder of the dead letters and the produce step.
pub fn acked_producer(
    k: &KafkaConfig,
    client_id: &str,
) -> Result<FutureProducer<DefaultClientContext, GlommioRuntime>, KafkaError> {
    let mut c = producer_config(k, client_id);
    c.set("acks", "all");
    Ok(c.create()?)
}

/// Topic administration for scripts and tests.
pub mod admin {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    /// Creates `topic` with `partitions` partitions; an existing topic is fine.
    pub async fn create_topic(
        brokers: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<(), super::KafkaError> {
        create_topic_with(brokers, topic, partitions, &[]).await
    }

    /// [`create_topic`] with topic configs (for example `message.timestamp.type=LogAppendTime`,
    /// which the benchmark uses to split a record's latency at the broker's append).
    pub async fn create_topic_with(
        brokers: &str,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), super::KafkaError> {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        let res = admin
            .create_topics(
                &[configs.iter().fold(
                    NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
                    |t, (k, v)| t.set(k, v),
                )],
                &AdminOptions::new(),
            )
            .await?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    tracing::error!(topic = %t, %code, "create topic failed");
                    return Err(super::KafkaError::Client(
                        rdkafka::error::KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError as Rd;
    use rdkafka::types::RDKafkaErrorCode as C;
    use rdkafka::ClientContext;

    fn request_failed() -> Rd {
        Rd::MetadataFetch(C::BrokerTransportFailure)
    }

    // Fails on the old code: rdkafka's error printed the refused setting's value, a secret here.
    #[test]
    fn a_refused_setting_keeps_its_key_and_loses_its_value_in_the_error() {
        let secret = "hunter2-oidc-client-secret";
        let mut c = rdkafka::ClientConfig::new();
        // This build has no OIDC: librdkafka refuses the key; and an invalid value of a known key,
        // which librdkafka's message repeats.
        for (key, value) in [
            ("sasl.oauthbearer.client.secret", secret),
            ("security.protocol", secret),
        ] {
            c.set("bootstrap.servers", "127.0.0.1:1").set(key, value);
            let e = match c.create::<rdkafka::consumer::BaseConsumer>() {
                Ok(_) => panic!("{key} is refused"),
                Err(e) => KafkaError::from(e),
            };
            let (shown, debug) = (e.to_string(), format!("{e:?}"));
            assert!(shown.contains(key), "{shown}");
            assert!(
                !shown.contains(secret) && !debug.contains(secret),
                "{shown} / {debug}"
            );
            c = rdkafka::ClientConfig::new();
        }
        // The message's copy of the value goes too.
        let e = KafkaError::from(Rd::ClientConfig(
            rdkafka_sys::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            format!("Invalid value \"{secret}\" for configuration property \"sasl.mechanism\""),
            "sasl.mechanism".into(),
            secret.into(),
        ));
        assert!(!e.to_string().contains(secret) && !format!("{e:?}").contains(secret));
        assert!(e.to_string().contains("sasl.mechanism"), "{e}");
    }

    #[test]
    fn a_start_up_failure_names_the_connection_error_that_caused_it() {
        let ctx = LastError::default();
        ctx.error(
            Rd::Global(C::Authentication),
            "sasl_ssl://b:9094/bootstrap: SASL authentication error: invalid credentials",
        );
        // librdkafka follows the cause with "all brokers down"; the cause is kept.
        ctx.error(Rd::Global(C::AllBrokersDown), "1/1 brokers are down");
        ctx.error(
            Rd::Global(C::BrokerTransportFailure),
            "b:9094/bootstrap: Disconnected",
        );
        let e = ctx.explain("b:9094", request_failed());
        let text = e.to_string();
        assert!(
            matches!(
                e,
                KafkaError::Unreachable {
                    code: C::Authentication,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(text.contains("kafka brokers b:9094"), "{text}");
        assert!(text.contains("SASL authentication error"), "{text}");
        assert!(
            text.contains("SHARDLINE_KAFKA_SASL_PASSWORD"),
            "the hint names the setting: {text}"
        );
        assert_eq!(
            e.scope(),
            Scope::Systemic,
            "wrong credentials never heal by retrying"
        );

        // librdkafka sometimes reports the failed handshake as a transport failure first.
        let tls = LastError::default();
        tls.error(
            Rd::Global(C::BrokerTransportFailure),
            "certificate verify failed",
        );
        tls.error(Rd::Global(C::AllBrokersDown), "1/1 brokers are down");
        tls.error(
            Rd::Global(C::SSL),
            "SSL handshake failed: certificate verify failed",
        );
        let e = tls.explain("b:9094", request_failed());
        assert!(e.to_string().contains("check ssl.ca.location"), "{e}");
        assert_eq!(e.scope(), Scope::Systemic);

        let down = LastError::default();
        down.error(Rd::Global(C::AllBrokersDown), "1/1 brokers are down");
        let e = down.explain("b:9094", request_failed());
        assert!(matches!(
            e,
            KafkaError::Unreachable {
                code: C::AllBrokersDown,
                hint: "",
                ..
            }
        ));
        assert_eq!(e.scope(), Scope::Transient, "no broker answering may heal");

        let silent = LastError::default();
        assert!(matches!(
            silent.explain("b:9094", request_failed()),
            KafkaError::Client(_)
        ));
    }

    #[test]
    fn a_missing_client_file_is_named_with_its_key() {
        let mut k: KafkaConfig = toml::from_str(
            "brokers = \"b:9094\"\ngroup_id = \"g\"\ntopics = [\"t\"]\ndead_letter_topic = \"t.dlq\"",
        )
        .expect("a minimal kafka section parses");
        k.librdkafka
            .insert("ssl.ca.location".into(), "probe".into());
        check_client_files(&k).expect("probe is not a file");
        k.librdkafka
            .insert("ssl.key.location".into(), "/nonexistent/key.pem".into());
        let e = check_client_files(&k)
            .expect_err("no such key file")
            .to_string();
        assert!(
            e.contains("ssl.key.location") && e.contains("/nonexistent/key.pem"),
            "{e}"
        );
    }

    #[test]
    fn produce_errors_are_scoped_record_client_or_transient() {
        let scope = |c| KafkaError::Produce(Rd::MessageProduction(c)).scope();
        assert_eq!(scope(C::MessageSizeTooLarge), Scope::Record);
        assert_eq!(scope(C::TopicAuthorizationFailed), Scope::Systemic);
        assert_eq!(scope(C::MessageTimedOut), Scope::Transient);
        assert_eq!(scope(C::QueueFull), Scope::Transient);
        // A dead letter whose producer cannot pass the TLS handshake stops the shard uncommitted.
        assert_eq!(scope(C::SSL), Scope::Systemic);
        assert!(!KafkaError::Produce(Rd::MessageProduction(C::MessageSizeTooLarge)).is_retryable());
    }
}
