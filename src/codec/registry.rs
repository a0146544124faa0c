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

use std::time::Duration;

use serde::Deserialize;

use super::CodecError;

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
        }
    }

    /// Registers `schema_json` under `subject` (idempotent in the registry) and returns its id.
    pub fn register(&self, subject: &str, schema_json: &str) -> Result<u32, CodecError> {
        let url = format!("{}/subjects/{}/versions", self.base, subject);
        let body = serde_json::json!({ "schema": schema_json });
        let resp = self
            .agent
            .post(&url)
            .set("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send_json(body)
            .map_err(|e| classify(e, 0))?;
        let id: IdBody = resp
            .into_json()
            .map_err(|e| CodecError::RegistryUnavailable(format!("bad registry answer: {e}")))?;
        Ok(id.id)
    }
}

/// Registry errors name the status or the transport failure, never the URL (it may carry
/// `user:password@`) or the body the registry sent back. Refusals that pass (credentials being
/// rotated, a rate limit, a timeout) are outages, not verdicts on the schema id.
fn classify(e: ureq::Error, id: u32) -> CodecError {
    match e {
        ureq::Error::Status(404, _) => CodecError::UnknownSchema(id),
        ureq::Error::Status(code @ (401 | 403 | 408 | 429), _) => {
            CodecError::RegistryUnavailable(format!("registry refused the request ({code})"))
        }
        ureq::Error::Status(code, _) if (400..500).contains(&code) => {
            CodecError::Resolution(format!("registry refused the request ({code})"))
        }
        ureq::Error::Status(code, _) => {
            CodecError::RegistryUnavailable(format!("registry answered {code}"))
        }
        ureq::Error::Transport(t) => {
            CodecError::RegistryUnavailable(format!("registry unreachable ({})", t.kind()))
        }
    }
}

impl SchemaResolver for RegistryClient {
    fn schema_by_id(&self, id: u32) -> Result<String, CodecError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let resp = self.agent.get(&url).call().map_err(|e| classify(e, id))?;
        let body: SchemaBody = resp
            .into_json()
            .map_err(|e| CodecError::RegistryUnavailable(format!("bad registry answer: {e}")))?;
        Ok(body.schema)
    }

    fn latest(&self, subject: &str) -> Result<(u32, String), CodecError> {
        let url = format!("{}/subjects/{subject}/versions/latest", self.base);
        let resp = self.agent.get(&url).call().map_err(|e| classify(e, 0))?;
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
    fn auth_and_rate_limit_refusals_are_outages_and_a_404_is_unknown() {
        let status = |code: u16| {
            let resp = ureq::Response::new(code, "status", "body with marker-secret-4711")
                .expect("a response");
            ureq::Error::Status(code, resp)
        };
        for code in [401, 403, 408, 429, 500, 503] {
            let e = classify(status(code), 7);
            let text = format!("{e} {e:?}");
            assert_eq!(
                (e.class(), e.is_retryable()),
                ("registry_unavailable", true),
                "{code}"
            );
            assert!(!text.contains("marker-secret-4711"), "{text}");
        }
        assert_eq!(classify(status(404), 7), CodecError::UnknownSchema(7));
        let e = classify(status(400), 7);
        assert_eq!((e.class(), e.is_retryable()), ("schema_resolution", false));
    }
}
