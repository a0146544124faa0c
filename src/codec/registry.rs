//! The Confluent-compatible schema registry API: writer schemas by id, the latest version of a
//! subject, and registration (for the load generator).
//!
//! Guarantee: a 404 is [`CodecError::UnknownSchema`] (the decoder asks again for a grace before its
//! records are dead-lettered); a connection failure, a 5xx, 401/403 (credentials being rotated),
//! 408 and 429 (rate limit) are [`CodecError::RegistryUnavailable`] (retryable, never
//! dead-lettered); any other 4xx is [`CodecError::Resolution`]. Errors never carry the URL (it may
//! hold credentials) or the body the registry sent.
//! Precondition: blocking I/O. Never on a shard's thread: the decoder calls [`SchemaResolver`] on its
//! own fetch thread, once per schema id (again only after a failed ask), never per message.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::CodecError;
use crate::config::SchemaConfig;

/// The I/O seam for writer schemas, so unit tests can use a stand-in. A decoder moves its resolver
/// to its fetch thread, so [`crate::codec::Decoder`] needs it `Send + Sync + 'static`.
pub trait SchemaResolver {
    /// The writer schema JSON of a registry id.
    fn schema_by_id(&self, id: u32) -> Result<String, CodecError>;
    /// The id and schema JSON of the latest version of `subject`.
    fn latest(&self, subject: &str) -> Result<(u32, String), CodecError>;
}

/// A blocking client of `<base>/schemas/ids/{id}` and `<base>/subjects/{s}/versions`.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    agent: ureq::Agent,
    /// The `Authorization` header value (basic or bearer), if any. Never printed.
    auth: Option<String>,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[derive(Deserialize)]
struct VersionBody {
    id: u32,
    schema: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

impl RegistryClient {
    /// `base` is the API root, for Apicurio `http://host:8081/apis/ccompat/v7`.
    pub fn new(base: &str, timeout: Duration) -> Self {
        RegistryClient {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
            auth: None,
        }
    }

    /// The client `[schema]` asks for: its URL and timeout, TLS with its CA and client identity
    /// (files read here, once), basic auth or a bearer token from the environment.
    pub fn from_config(schema: &SchemaConfig) -> Result<Self, CodecError> {
        let base = schema
            .registry_url
            .as_deref()
            .ok_or_else(|| CodecError::RegistryClient("no schema.registry_url".into()))?;
        let mut agent = ureq::AgentBuilder::new().timeout(schema.registry_timeout);
        if base.starts_with("https://") {
            agent = agent.tls_connector(Arc::new(tls_connector(schema)?));
        }
        let auth = match (&schema.username, &schema.password, &schema.bearer_token) {
            (Some(user), Some(password), _) => {
                use base64::Engine;
                let pair = format!("{user}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, _, Some(token)) => Some(format!("Bearer {token}")),
            _ => None,
        };
        Ok(RegistryClient {
            base: base.trim_end_matches('/').to_string(),
            agent: agent.build(),
            auth,
        })
    }

    fn get(&self, url: &str) -> ureq::Request {
        self.authorized(self.agent.get(url))
    }

    fn authorized(&self, r: ureq::Request) -> ureq::Request {
        match &self.auth {
            Some(a) => r.set("Authorization", a),
            None => r,
        }
    }

    /// Registers `schema_json` under `subject` (idempotent in the registry) and returns its id.
    pub fn register(&self, subject: &str, schema_json: &str) -> Result<u32, CodecError> {
        let url = format!("{}/subjects/{}/versions", self.base, subject);
        let body = serde_json::json!({ "schema": schema_json });
        let resp = self
            .authorized(self.agent.post(&url))
            .set("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send_json(body)
            .map_err(|e| classify(e, Ask::Subject))?;
        let id: IdBody = resp
            .into_json()
            .map_err(|e| CodecError::RegistryUnavailable(format!("bad registry answer: {e}")))?;
        Ok(id.id)
    }
}

/// What a request asked the registry, which decides what a refusal says.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ask {
    /// A writer schema by its id, for a record: only a 404 says anything about the id.
    ById(u32),
    /// A subject's latest schema, or registering one: a 4xx may be a verdict on the schema (409
    /// incompatible, 422 invalid).
    Subject,
}

/// Registry errors name the status or the transport failure, never the URL (it may carry
/// `user:password@`) or the body the registry sent back. Refusals that pass (credentials being
/// rotated, a rate limit, a timeout) are outages, not verdicts on the schema id; so is any refusal of
/// a fetch by id other than a 404 (a proxy's 407, a gateway's 400 or 421 while it is redeployed):
/// it says nothing about the record, which waits for the registry instead of being dead-lettered.
fn classify(e: ureq::Error, ask: Ask) -> CodecError {
    let id = match ask {
        Ask::ById(id) => id,
        Ask::Subject => 0,
    };
    match e {
        ureq::Error::Status(404, _) => CodecError::UnknownSchema(id),
        ureq::Error::Status(code @ (401 | 403), _) => CodecError::RegistryUnavailable(format!(
            "registry refused the request ({code}): check schema.username and \
             SHARDLINE_REGISTRY_PASSWORD, or SHARDLINE_REGISTRY_TOKEN"
        )),
        ureq::Error::Status(code @ (408 | 429), _) => {
            CodecError::RegistryUnavailable(format!("registry refused the request ({code})"))
        }
        ureq::Error::Status(code, _) if (400..500).contains(&code) && ask == Ask::Subject => {
            CodecError::Resolution(format!("registry refused the request ({code})"))
        }
        ureq::Error::Status(code, _) if (400..500).contains(&code) => {
            CodecError::RegistryUnavailable(format!(
                "registry refused the request ({code}), which says nothing about the schema id"
            ))
        }
        ureq::Error::Status(code, _) => {
            CodecError::RegistryUnavailable(format!("registry answered {code}"))
        }
        // Its message quotes the header, value included: say which setting instead.
        ureq::Error::Transport(t) if t.kind() == ureq::ErrorKind::BadHeader => {
            CodecError::RegistryClient(
                "a request header is not valid HTTP (check SHARDLINE_REGISTRY_TOKEN)".into(),
            )
        }
        ureq::Error::Transport(t) => {
            // The message and its sources say what failed (OpenSSL's "certificate verify
            // failed"); the transport's own Display would add the URL, which may carry credentials,
            // and the sources name none.
            let mut parts: Vec<String> = t.message().map(str::to_string).into_iter().collect();
            let mut source = std::error::Error::source(&t);
            while let Some(e) = source {
                // Wrappers repeat their source's text: keep each text once.
                let text = e.to_string();
                if !parts.iter().any(|p| p.contains(text.as_str())) {
                    parts.retain(|p| !text.contains(p.as_str()));
                    parts.push(text);
                }
                source = e.source();
            }
            let detail = parts.join(": ");
            let detail = detail.replace(|c: char| c.is_control(), " ");
            let hint = if detail.contains("tls") || detail.contains("SSL") {
                "; check schema.tls_ca_file, tls_cert_file and tls_key_file"
            } else {
                ""
            };
            CodecError::RegistryUnavailable(format!(
                "registry unreachable ({}: {detail}){hint}",
                t.kind()
            ))
        }
    }
}

/// The TLS connector of an `https://` registry: the configured CA (else the system's trust store)
/// and, for mutual TLS, the client certificate and key.
fn tls_connector(schema: &SchemaConfig) -> Result<native_tls::TlsConnector, CodecError> {
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| {
            CodecError::RegistryClient(format!("schema.{key} '{path}' cannot be read: {e}"))
        })
    };
    let mut b = native_tls::TlsConnector::builder();
    if let Some(path) = &schema.tls_ca_file {
        let pem = read("tls_ca_file", path)?;
        let ca = native_tls::Certificate::from_pem(&pem).map_err(|e| {
            CodecError::RegistryClient(format!(
                "schema.tls_ca_file '{path}' is not a PEM certificate: {e}"
            ))
        })?;
        b.add_root_certificate(ca);
    }
    if let (Some(cert), Some(key)) = (&schema.tls_cert_file, &schema.tls_key_file) {
        let identity = native_tls::Identity::from_pkcs8(
            &read("tls_cert_file", cert)?,
            &read("tls_key_file", key)?,
        )
        .map_err(|e| {
            CodecError::RegistryClient(format!(
                "schema.tls_cert_file '{cert}' with schema.tls_key_file '{key}' is not a PEM \
                         certificate and PKCS#8 key: {e}"
            ))
        })?;
        b.identity(identity);
    }
    b.build()
        .map_err(|e| CodecError::RegistryClient(format!("TLS set-up: {e}")))
}

impl SchemaResolver for RegistryClient {
    fn schema_by_id(&self, id: u32) -> Result<String, CodecError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let resp = self
            .get(&url)
            .call()
            .map_err(|e| classify(e, Ask::ById(id)))?;
        let body: SchemaBody = resp
            .into_json()
            .map_err(|e| CodecError::RegistryUnavailable(format!("bad registry answer: {e}")))?;
        Ok(body.schema)
    }

    fn latest(&self, subject: &str) -> Result<(u32, String), CodecError> {
        let url = format!("{}/subjects/{subject}/versions/latest", self.base);
        let resp = self
            .get(&url)
            .call()
            .map_err(|e| classify(e, Ask::Subject))?;
        let body: VersionBody = resp
            .into_json()
            .map_err(|e| CodecError::RegistryUnavailable(format!("bad registry answer: {e}")))?;
        Ok((body.id, body.schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Retryable;

    #[test]
    fn registry_errors_never_carry_the_url_or_its_credentials() {
        // Port 1 on loopback refuses at once: a transport error whose ureq text includes the URL.
        let r = RegistryClient::new(
            "http://svc-user:marker-secret-4711@127.0.0.1:1/apis/ccompat/v7",
            Duration::from_secs(2),
        );
        let e = r.schema_by_id(7).expect_err("nothing listens on port 1");
        let text = format!("{e} {e:?}");
        assert!(e.is_retryable(), "{text}");
        assert!(!text.contains("marker-secret-4711"), "{text}");
        assert!(!text.contains("svc-user"), "{text}");
    }

    #[test]
    fn a_fetch_by_id_refused_for_any_reason_but_a_404_waits_and_a_404_is_unknown() {
        let status = |code: u16| {
            let resp = ureq::Response::new(code, "status", "body with marker-secret-4711")
                .expect("a response");
            ureq::Error::Status(code, resp)
        };
        // Fails on the old code for 400, 405, 407 and 421: a fetch by id refused for a reason other
        // than the id dead-lettered the record (schema_resolution, permanent).
        for code in [400, 401, 403, 405, 407, 408, 421, 429, 500, 503] {
            let e = classify(status(code), Ask::ById(7));
            let text = format!("{e} {e:?}");
            assert_eq!(
                (e.class(), e.is_retryable()),
                ("registry_unavailable", true),
                "{code}"
            );
            assert!(!text.contains("marker-secret-4711"), "{text}");
        }
        assert_eq!(
            classify(status(404), Ask::ById(7)),
            CodecError::UnknownSchema(7)
        );
        // Registering a schema or reading a subject: a 4xx may be about the schema itself.
        for code in [400, 409, 422] {
            let e = classify(status(code), Ask::Subject);
            assert_eq!(
                (e.class(), e.is_retryable()),
                ("schema_resolution", false),
                "{code}"
            );
        }
        let e = classify(status(503), Ask::Subject);
        assert_eq!(
            (e.class(), e.is_retryable()),
            ("registry_unavailable", true)
        );
    }
}
