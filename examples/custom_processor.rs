//! A custom processor step in a user's crate: `UrlHost` adds the host of the record's `url` as the
//! field `host`, which the config's mappings can then write (declare it in `custom_fields`).
//!
//!   cargo run --release --example custom_processor -- tuning/custom.toml
//!
//! The binary is the same as `shardline run`, with the step handed to every shard's chain.

use std::sync::Arc;

use futures::future::LocalBoxFuture;
use shardline::codec::Value;
use shardline::config::Config;
use shardline::pipeline::{Processor, Record, StepError, StepOutcome};
use shardline::runtime::{self, RunOptions};

/// Adds `host` from `url`; a record without a URL keeps `host` null.
pub struct UrlHost;

/// The host part of an absolute URL.
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..end)?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(host.split(':').next().unwrap_or(host)).filter(|h| !h.is_empty())
}

impl Processor for UrlHost {
    fn name(&self) -> &str {
        "url_host"
    }

    fn outputs(&self) -> Vec<String> {
        vec!["host".to_string()]
    }

    fn process<'a>(
        &'a self,
        record: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        let host = match record.get("url") {
            Some(Value::Str(u)) => host_of(u.as_str()).map(|h| Value::Str(h.into())),
            _ => None,
        };
        if let Some(h) = host {
            record.set("host", h);
        }
        Box::pin(std::future::ready(Ok(StepOutcome::Passed)))
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: custom_processor CONFIG"))?;
    let config = Config::load(std::path::Path::new(&path))?;
    shardline::check::check_live(&config)?;
    let running = runtime::start_with(
        Arc::new(config),
        RunOptions::default(),
        Some(Arc::new(|_shard| {
            vec![Box::new(UrlHost) as Box<dyn Processor>]
        })),
    )?;
    let rx = runtime::stop_requests_on_signals()?;
    running.supervise(&rx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn extracts_hosts() {
        assert_eq!(
            host_of("https://shop.example.com/cart?x=1"),
            Some("shop.example.com")
        );
        assert_eq!(host_of("http://user@h.example:8080"), Some("h.example"));
        assert_eq!(host_of("not a url"), None);
        assert_eq!(host_of("https:///path"), None);
    }

    #[test]
    fn the_step_fills_its_declared_output() {
        let fields: Rc<[String]> = vec!["url".to_string(), "host".to_string()].into();
        let mut rec = Record {
            fields,
            values: vec![Value::Str("https://a.example/x".into()), Value::Null],
            kafka_ts_ms: None,
            offset: 0,
            key: None,
            consumed: std::time::Instant::now(),
        };
        let out = futures::executor::block_on(UrlHost.process(&mut rec)).expect("never fails");
        assert_eq!(out, StepOutcome::Passed);
        assert_eq!(rec.get("host"), Some(&Value::Str("a.example".into())));
        rec.values[0] = Value::Null;
        rec.values[1] = Value::Null;
        futures::executor::block_on(UrlHost.process(&mut rec)).expect("never fails");
        assert_eq!(rec.get("host"), Some(&Value::Null));
    }
}
