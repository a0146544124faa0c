//! A shard's database session: connect (TLS, credentials), read a table's live column types, prepare
//! its INSERT, and [`ScyllaWriter`], the writer every insert sink uses.
//!
//! Guarantee: every table goes through one preparation path ([`prepare_insert`]): columns read from
//! `system_schema`, binder built and checked against them, statement prepared, so the primary `[table]`
//! and the chain's insert tables are held to the same rules.
//! Precondition: the functions that talk to the database run inside the shard's tokio bridge
//! ([`super::bridge`]); [`ScyllaWriter`] wraps its own futures.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::prepared::PreparedStatement;

use super::bridge::{InTokio, TokioBridge};
use super::{Binder, BoundRow, CqlType, RowWriter, StartError, WriteError};
use crate::config::{Config, TableConfig};

/// Builds a session from config. Runs inside the bridge.
pub async fn connect(config: &Config) -> Result<Session, StartError> {
    let s = &config.scylla;
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &s.local_datacenter {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let profile = ExecutionProfile::builder()
        .consistency(s.consistency.to_driver())
        .request_timeout(Some(s.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&s.nodes)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(ca) = &s.tls_ca_file {
        builder = builder.tls_context(Some(tls_context(
            ca,
            s.tls_cert_file.as_deref(),
            s.tls_key_file.as_deref(),
        )?));
    }
    if let Some(user) = &s.username {
        builder = builder.user(user.clone(), s.password.clone().unwrap_or_default());
    }
    builder.build().await.map_err(|e| StartError::Connect {
        nodes: s.nodes.join(","),
        message: e.to_string(),
    })
}

/// An OpenSSL context that verifies the nodes against `ca` and, with both given, presents a client cert.
pub(crate) fn tls_context(
    ca: &str,
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<openssl::ssl::SslContext, StartError> {
    use openssl::ssl::{SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode};
    let err = |what: String, e: openssl::error::ErrorStack| StartError::Tls {
        what,
        message: e.to_string(),
    };
    let mut b = SslContextBuilder::new(SslMethod::tls()).map_err(|e| err("context".into(), e))?;
    b.set_ca_file(ca)
        .map_err(|e| err(format!("CA file {ca}"), e))?;
    b.set_verify(SslVerifyMode::PEER);
    if let (Some(c), Some(k)) = (cert, key) {
        b.set_certificate_file(c, SslFiletype::PEM)
            .map_err(|e| err(format!("certificate {c}"), e))?;
        b.set_private_key_file(k, SslFiletype::PEM)
            .map_err(|e| err(format!("key {k}"), e))?;
    }
    Ok(b.build())
}

/// The live column types of a table.
pub async fn table_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<HashMap<String, CqlType>, StartError> {
    let columns_err = |e: &dyn std::fmt::Display| StartError::Columns {
        table: format!("{keyspace}.{table}"),
        message: e.to_string(),
    };
    let res = session
        .query_unpaged(
            "SELECT column_name, type FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(|e| columns_err(&e))?;
    let rows = res.into_rows_result().map_err(|e| columns_err(&e))?;
    let mut out = HashMap::new();
    for r in rows
        .rows::<(String, String)>()
        .map_err(|e| columns_err(&e))?
    {
        let (name, ty) = r.map_err(|e| columns_err(&e))?;
        // A non-frozen list appends cells keyed by a fresh timeuuid on every write, so a replay with the
        // same write timestamp duplicates its elements (measured in the replay test). Frozen lists and
        // sets are single cells or idempotent.
        if ty.starts_with("list<") {
            tracing::warn!(
                column = %name, r#type = %ty,
                "non-frozen list column: replays duplicate its elements; use frozen<list<..>> or set<..> for idempotent writes"
            );
        }
        out.insert(name, CqlType::parse(&ty));
    }
    if out.is_empty() {
        return Err(StartError::NoTable(format!("{keyspace}.{table}")));
    }
    Ok(out)
}

/// The one preparation path of every table: live columns → checked binder → prepared INSERT.
pub async fn prepare_insert(
    session: &Session,
    table: &TableConfig,
    fields: &[String],
) -> Result<(Binder, PreparedStatement), StartError> {
    let types = table_columns(session, &table.keyspace, &table.table).await?;
    let binder = Binder::for_table(table, fields, &types)?;
    let cql = binder.insert_cql(&table.keyspace, &table.table);
    let insert = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| StartError::Prepare {
            cql: cql.clone(),
            message: e.to_string(),
        })?;
    Ok((binder, insert))
}

/// A shard's Scylla session with one table's prepared INSERT. Clones share the session.
#[derive(Clone)]
pub struct ScyllaWriter {
    session: Arc<Session>,
    insert: PreparedStatement,
    handle: tokio::runtime::Handle,
}

impl ScyllaWriter {
    /// Connects and prepares the primary `[table]`. Runs on the shard; the tokio part in the bridge.
    pub async fn connect(
        config: &Config,
        fields: &[String],
        bridge: &TokioBridge,
    ) -> Result<(ScyllaWriter, Binder), StartError> {
        let session = Arc::new(bridge.wrap(connect(config)).await?);
        let s = session.clone();
        let (binder, insert) = bridge
            .wrap(async move { prepare_insert(&s, &config.table, fields).await })
            .await?;
        Ok((
            ScyllaWriter {
                session,
                insert,
                handle: bridge.handle().clone(),
            },
            binder,
        ))
    }

    /// Another writer on the same session (the chain's insert tables).
    pub async fn for_table(
        &self,
        table: &TableConfig,
        fields: &[String],
    ) -> Result<(ScyllaWriter, Binder), StartError> {
        let session = self.session.clone();
        let (binder, insert) = InTokio::new(self.handle.clone(), async move {
            prepare_insert(&session, table, fields).await
        })
        .await?;
        Ok((
            ScyllaWriter {
                session: self.session.clone(),
                insert,
                handle: self.handle.clone(),
            },
            binder,
        ))
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl RowWriter for ScyllaWriter {
    fn write(&self, values: Rc<BoundRow>) -> LocalBoxFuture<'static, Result<(), WriteError>> {
        let session = self.session.clone();
        let insert = self.insert.clone();
        let fut = async move {
            session
                .execute_unpaged(&insert, &*values)
                .await
                .map(|_| ())
                .map_err(WriteError::from_execution)
        };
        Box::pin(InTokio::new(self.handle.clone(), fut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_context_reports_a_missing_ca_file() {
        let e = tls_context("/nonexistent/ca.pem", None, None).expect_err("no such CA file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
