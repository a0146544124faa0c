//! A shard's database session: connect (TLS, credentials), read a table's live column types, prepare
//! its INSERT, and [`ScyllaWriter`], the writer every insert sink uses.
//!
//! Guarantee: every table goes through one preparation path ([`prepare_insert`]): columns read from
//! `system_schema`, binder built and checked against them, statement prepared, so the primary `[table]`
//! and the chain's insert tables are held to the same rules.
//! Precondition: the functions that talk to the database run inside the shard's tokio bridge
//! ([`super::bridge`]); [`ScyllaWriter`] wraps its own futures.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::cluster::metadata::{ColumnType, Strategy};
use scylla::cluster::{ClusterState, NodeRef};
use scylla::errors::RequestAttemptError;
use scylla::frame::response::result::TableSpec;
use scylla::policies::load_balancing::{
    DefaultPolicy, FallbackPlan, LoadBalancingPolicy, RoutingInfo,
};
use scylla::routing::partitioner::{Partitioner, PartitionerHasher, PartitionerName};
use scylla::routing::{Shard, Token};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::CellWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;

use super::bridge::{BridgeHandle, InTokio};
use super::{
    Binder, BoundRow, Cell, CqlType, DeleteBinder, Owner, RowWriter, StartError, WriteError,
};
use crate::config::{Config, TableConfig};

/// The driver's token-aware policy, preferring `scylla.local_datacenter`: the session's default.
fn default_policy(config: &Config) -> Arc<dyn LoadBalancingPolicy> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.scylla.local_datacenter {
        policy = policy.prefer_datacenter(dc.clone());
    }
    policy.build()
}

/// An execution profile with the configured consistency and request timeout.
fn profile(config: &Config, policy: Arc<dyn LoadBalancingPolicy>) -> ExecutionProfile {
    ExecutionProfile::builder()
        .consistency(config.scylla.consistency.to_driver())
        .request_timeout(Some(config.scylla.request_timeout))
        .load_balancing_policy(policy)
        .build()
}

/// The profile of every [`ScyllaWriter`]'s statements and batches: the session's, routed by
/// [`FirstReplica`]. Lookups and schema reads keep the session's default profile.
pub fn write_profile(config: &Config) -> ExecutionProfileHandle {
    let policy = FirstReplica {
        inner: default_policy(config),
        local_dc: config.scylla.local_datacenter.clone(),
    };
    profile(config, Arc::new(policy)).into_handle()
}

/// Builds a session from config. Runs inside the bridge.
pub async fn connect(config: &Config) -> Result<Session, StartError> {
    let s = &config.scylla;
    let profile = profile(config, default_policy(config));
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
    builder.build().await.map_err(|e| {
        let message = e.to_string();
        StartError::Connect {
            nodes: s.nodes.join(","),
            message: format!(
                "{message}{}",
                connect_hint(&message, s.tls_ca_file.is_some())
            ),
        }
    })
}

/// The setting to check for the usual reasons a node refuses a session. The driver's message names the
/// failed step (TLS, AUTH_RESPONSE) in words an operator may not map to a key of the config file.
/// A node that refuses the client's certificate ends the TLS session: the driver reports either the
/// TLS alert or, depending on which of its tasks notices first, only a broken connection.
fn connect_hint(message: &str, tls: bool) -> &'static str {
    let broken_in_setup =
        message.contains("connection setup request") && message.contains("Connection broken");
    if message.contains("certificate verify failed") {
        " (the node's certificate is not from scylla.tls_ca_file's CA, has expired, or does not name \
         the node's IP address, which the driver checks)"
    } else if message.contains("SSL alert")
        || message.contains("alert handshake failure")
        || (tls && broken_in_setup)
    {
        " (the node ended the TLS handshake: it may require a client certificate \
         (scylla.tls_cert_file) or not trust its issuer)"
    } else if message.contains("Authentication failed") || message.contains("AUTH_RESPONSE") {
        " (check scylla.username and SHARDLINE_SCYLLA_PASSWORD)"
    } else {
        ""
    }
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

/// Routes a write to the first replica of its token (in `local_dc` where one is set): the owner
/// [`ScyllaWriter::owner`] groups rows by, computed by the same [`first_replica`]. The driver routes
/// a batch by its first statement's token (`Session::batch` computes it from the first row's values
/// and the prepared statement's partition key) through the request's load-balancing policy; the
/// driver's own [`DefaultPolicy`] picks a *random* replica of that token for a non-LWT request
/// (scylla 1.9, `DefaultPolicy::pick_replica`), which with a replication factor above 1 would send
/// a group to a node that owns only its first row. A first replica that is down, a request without
/// a token or table, and LWTs (which the default policy already sends to the first replica) go as
/// the default policy says; so does every retry and speculative attempt (`fallback`). Not covered:
/// the driver's routing of strongly consistent tablet keyspaces (an experimental ScyllaDB mode) to a
/// tablet's Raft leader, which it does not expose; there a write takes one hop more, as any
/// write that reaches a replica other than the leader does.
#[derive(Debug)]
struct FirstReplica {
    inner: Arc<dyn LoadBalancingPolicy>,
    local_dc: Option<String>,
}

impl LoadBalancingPolicy for FirstReplica {
    fn pick<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> Option<(NodeRef<'a>, Option<Shard>)> {
        let owner = match (request.token, request.table) {
            (Some(token), Some(table)) if !request.should_route_as_lwt() => {
                cluster.get_keyspace(table.ks_name()).and_then(|ks| {
                    first_replica(
                        cluster,
                        token,
                        &ks.strategy,
                        self.local_dc.as_deref(),
                        table,
                    )
                })
            }
            _ => None,
        };
        match owner {
            // The shard as the replica locator gives it (0 on a node without shards), as the
            // default policy's fallback lists it: the driver leaves the picked target out of the
            // fallback only when node and shard both match, so a retry goes to another replica.
            Some((node, shard)) if node.is_connected() => Some((node, Some(shard))),
            _ => self.inner.pick(request, cluster),
        }
    }

    fn fallback<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> FallbackPlan<'a> {
        self.inner.fallback(request, cluster)
    }

    fn on_request_success(&self, request: &RoutingInfo, latency: Duration, node: NodeRef<'_>) {
        self.inner.on_request_success(request, latency, node);
    }

    fn on_request_failure(
        &self,
        request: &RoutingInfo,
        latency: Duration,
        node: NodeRef<'_>,
        error: &RequestAttemptError,
    ) {
        self.inner.on_request_failure(request, latency, node, error);
    }

    fn name(&self) -> String {
        FIRST_REPLICA.to_string()
    }
}

/// [`FirstReplica`]'s name, as the driver reports it.
pub const FIRST_REPLICA: &str = "shardline::FirstReplica";

/// The first replica of `token` for `table` (in `dc`'s replicas where one is given), in the
/// replica set's order: the one owner both the grouping and the routing of writes use.
pub fn first_replica<'a>(
    cluster: &'a ClusterState,
    token: Token,
    strategy: &'a Strategy,
    dc: Option<&'a str>,
    table: &TableSpec,
) -> Option<(NodeRef<'a>, Shard)> {
    cluster
        .replica_locator()
        .replicas_for_token(token, strategy, dc, table)
        .into_iter()
        .next()
}

/// A table as the database has it: each column's type, and the primary key (partition key, then
/// clustering columns, each in order).
pub struct TableSchema {
    pub types: HashMap<String, CqlType>,
    pub keys: Vec<String>,
}

/// A table's live columns and primary key, from one read of `system_schema.columns`.
pub async fn table_schema(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<TableSchema, StartError> {
    let columns_err = |e: &dyn std::fmt::Display| StartError::Columns {
        table: format!("{keyspace}.{table}"),
        message: e.to_string(),
    };
    let res = session
        .query_unpaged(
            "SELECT column_name, type, kind, position FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ?",
            (keyspace, table),
        )
        .await
        .map_err(|e| columns_err(&e))?;
    let rows = res.into_rows_result().map_err(|e| columns_err(&e))?;
    let udts = keyspace_types(session, keyspace)
        .await
        .map_err(|e| columns_err(&e))?;
    let mut types = HashMap::new();
    let mut keys: Vec<(u8, i32, String)> = Vec::new();
    for r in rows
        .rows::<(String, String, String, i32)>()
        .map_err(|e| columns_err(&e))?
    {
        let (name, ty, kind, position) = r.map_err(|e| columns_err(&e))?;
        // A non-frozen list appends cells keyed by a fresh timeuuid on every write, so a replay with the
        // same write timestamp duplicates its elements (measured in the replay test). Frozen lists and
        // sets are single cells or idempotent.
        if ty.starts_with("list<") {
            tracing::warn!(
                column = %name, r#type = %ty,
                "non-frozen list column: replays duplicate its elements; use frozen<list<..>> or set<..> for idempotent writes"
            );
        }
        match kind.as_str() {
            "partition_key" => keys.push((0, position, name.clone())),
            "clustering" => keys.push((1, position, name.clone())),
            _ => {}
        }
        types.insert(name, CqlType::parse(&ty).resolve_udts(keyspace, &udts));
    }
    if types.is_empty() {
        return Err(StartError::NoTable(format!("{keyspace}.{table}")));
    }
    keys.sort();
    Ok(TableSchema {
        types,
        keys: keys.into_iter().map(|(_, _, name)| name).collect(),
    })
}

/// The live column types of a table.
pub async fn table_columns(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<HashMap<String, CqlType>, StartError> {
    Ok(table_schema(session, keyspace, table).await?.types)
}

/// A table's binder over `fields`, checked against its live columns, with its primary key: the one
/// builder of `run` (through [`prepare_insert`]) and `check`.
pub async fn table_binder(
    session: &Session,
    table: &TableConfig,
    fields: &[String],
) -> Result<Binder, StartError> {
    let schema = table_schema(session, &table.keyspace, &table.table).await?;
    Ok(Binder::for_table(table, fields, &schema.types)?.with_keys(schema.keys))
}

/// The user-defined types of `keyspace`: name → (field name, field type text), in field order.
async fn keyspace_types(
    session: &Session,
    keyspace: &str,
) -> Result<HashMap<String, Vec<(String, String)>>, Box<dyn std::error::Error>> {
    let res = session
        .query_unpaged(
            "SELECT type_name, field_names, field_types FROM system_schema.types WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?;
    let rows = res.into_rows_result()?;
    let mut out = HashMap::new();
    for r in rows.rows::<(String, Vec<String>, Vec<String>)>()? {
        let (name, names, types) = r?;
        out.insert(name, names.into_iter().zip(types).collect());
    }
    Ok(out)
}

/// The one preparation path of every table: live columns → checked binder → prepared INSERT.
pub async fn prepare_insert(
    session: &Session,
    table: &TableConfig,
    fields: &[String],
) -> Result<(Binder, PreparedStatement), StartError> {
    let binder = table_binder(session, table, fields).await?;
    let insert = prepare_write(
        session,
        binder.insert_cql(&table.keyspace, &table.table),
        table,
    )
    .await?;
    Ok((binder, insert))
}

/// The DELETE of a table's tombstones: its primary key, each column bound as `insert` binds it.
pub async fn prepare_delete(
    session: &Session,
    table: &TableConfig,
    insert: &Binder,
) -> Result<(DeleteBinder, PreparedStatement), StartError> {
    let name = format!("{}.{}", table.keyspace, table.table);
    let binder = insert.delete_binder(&name, insert.keys())?;
    let delete = prepare_write(
        session,
        binder.delete_cql(&table.keyspace, &table.table),
        table,
    )
    .await?;
    Ok((binder, delete))
}

/// Prepares one of a table's writes (its INSERT or DELETE) with the table's consistency. Both are
/// idempotent: fixed values at a write timestamp fixed by the record (by default) land the same
/// however often they run, so the driver may retry and speculate, as it does their batches.
async fn prepare_write(
    session: &Session,
    cql: String,
    table: &TableConfig,
) -> Result<PreparedStatement, StartError> {
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| StartError::Prepare {
            cql: cql.clone(),
            message: e.to_string(),
        })?;
    statement.set_is_idempotent(true);
    if let Some(c) = table.consistency {
        statement.set_consistency(c.to_driver());
    }
    Ok(statement)
}

/// A shard's Scylla session with one table's prepared INSERT. Clones share the session and the batch
/// statements.
#[derive(Clone)]
pub struct ScyllaWriter {
    session: Arc<Session>,
    /// The table's prepared INSERT, or its DELETE for a tombstone writer.
    statement: PreparedStatement,
    handle: BridgeHandle,
    /// Where the partition key's values sit in a bound row, in partition-key order.
    pk_slots: Rc<[usize]>,
    /// `scylla.local_datacenter`: the owner of a row is its first replica there.
    local_dc: Option<Rc<str>>,
    /// [`write_profile`]: the statement's and its batches' routing to that owner.
    profile: ExecutionProfileHandle,
    /// `UNLOGGED` batches of the INSERT by row count, built on first use: a batch of n rows needs n
    /// statements, and building them per request would cost more than the rows.
    batches: Rc<RefCell<Vec<Option<Arc<Batch>>>>>,
    /// What [`RowWriter::owner`] needs of the cluster state, kept while the state is the same one
    /// (the driver makes a new one at each metadata refresh, about once a minute, and at topology
    /// or schema changes), and its buffer for partition-key values. Without it each row cost three
    /// hash lookups, two allocations and a parse of the partitioner's name in the driver
    /// (`ClusterState::compute_token`, `get_keyspace`).
    routing: Rc<RefCell<Routing>>,
}

/// The keyspace's replication strategy in one cluster state, and a scratch buffer. The state is
/// held weakly: only compared by address (its allocation stays reserved while a `Weak` lives, so
/// the address is not reused), never kept alive with its metadata and the pools of removed nodes
/// by an idle writer.
#[derive(Default)]
struct Routing {
    state: Option<(Weak<ClusterState>, Strategy)>,
    pk_buf: Vec<u8>,
}

impl ScyllaWriter {
    fn new(
        session: Arc<Session>,
        mut statement: PreparedStatement,
        handle: BridgeHandle,
        local_dc: Option<&str>,
        profile: ExecutionProfileHandle,
    ) -> ScyllaWriter {
        statement.set_execution_profile_handle(Some(profile.clone()));
        ScyllaWriter {
            pk_slots: key_slots(&statement),
            session,
            statement,
            handle,
            local_dc: local_dc.map(Rc::from),
            profile,
            batches: Rc::default(),
            routing: Rc::default(),
        }
    }

    /// Connects and prepares the primary `[table]`. Runs on the shard; the tokio part in the bridge.
    pub async fn connect(
        config: &Config,
        fields: &[String],
        bridge: &BridgeHandle,
    ) -> Result<(ScyllaWriter, Binder), StartError> {
        let session = Arc::new(bridge.wrap(connect(config)).await?);
        let s = session.clone();
        let (binder, insert) = bridge
            .wrap(async move { prepare_insert(&s, &config.table, fields).await })
            .await?;
        let writer = ScyllaWriter::with_statement(session, insert, bridge, config);
        Ok((writer, binder))
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
        Ok((self.sibling(insert), binder))
    }

    /// A writer of `table`'s deletes on the same session, for tombstones: the DELETE prepared from
    /// `insert`'s binder (see [`Binder::delete_binder`]).
    pub async fn for_delete(
        &self,
        table: &TableConfig,
        insert: &Binder,
    ) -> Result<(ScyllaWriter, DeleteBinder), StartError> {
        let session = self.session.clone();
        let (binder, delete) = InTokio::new(self.handle.clone(), async move {
            prepare_delete(&session, table, insert).await
        })
        .await?;
        Ok((self.sibling(delete), binder))
    }

    /// A writer of `statement` on this one's session, bridge and routing.
    fn sibling(&self, statement: PreparedStatement) -> ScyllaWriter {
        let dc = self.local_dc.as_deref();
        let profile = self.profile.clone();
        ScyllaWriter::new(
            self.session.clone(),
            statement,
            self.handle.clone(),
            dc,
            profile,
        )
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    pub fn handle(&self) -> &BridgeHandle {
        &self.handle
    }

    /// The `UNLOGGED` batch of `n` INSERTs. Idempotent like the INSERT itself (see
    /// [`prepare_insert`]), so the driver may retry it.
    fn batch(&self, n: usize) -> Arc<Batch> {
        let mut cache = self.batches.borrow_mut();
        if cache.len() <= n {
            cache.resize(n + 1, None);
        }
        let slot = &mut cache[n];
        slot.get_or_insert_with(|| {
            let mut b = Batch::new(BatchType::Unlogged);
            for _ in 0..n {
                b.append_statement(self.statement.clone());
            }
            b.set_is_idempotent(true);
            // And its own profile: the statement's is not consulted for a batch.
            b.set_execution_profile_handle(Some(self.profile.clone()));
            // A batch has its own consistency: the table's, where it overrides the session's.
            if let Some(c) = self.statement.get_consistency() {
                b.set_consistency(c);
            }
            Arc::new(b)
        })
        .clone()
    }

    /// The execution profiles a request of this writer goes with: its statement's and a batch's
    /// (for tests: both are [`write_profile`]'s).
    #[doc(hidden)]
    pub fn profiles(&self) -> [Option<ExecutionProfileHandle>; 2] {
        [
            self.statement.get_execution_profile_handle().cloned(),
            self.batch(2).get_execution_profile_handle().cloned(),
        ]
    }

    /// A writer of `statement` on `session`, routed as `config` says: what [`ScyllaWriter::connect`]
    /// builds after preparing the table's INSERT.
    pub fn with_statement(
        session: Arc<Session>,
        statement: PreparedStatement,
        bridge: &BridgeHandle,
        config: &Config,
    ) -> ScyllaWriter {
        let dc = config.scylla.local_datacenter.as_deref();
        ScyllaWriter::new(
            session,
            statement,
            bridge.clone(),
            dc,
            write_profile(config),
        )
    }

    /// The row's token (see [`row_token`]).
    fn token(&self, row: &BoundRow, buf: &mut Vec<u8>) -> Option<Token> {
        row_token(&self.statement, &self.pk_slots, row, buf)
    }
}

/// Where a prepared statement's partition key sits in its bound values, in partition-key order
/// (the order the token hashes them in, which need not be the statement's column order).
pub fn key_slots(statement: &PreparedStatement) -> Rc<[usize]> {
    let mut pk: Vec<(u16, usize)> = statement
        .get_variable_pk_indexes()
        .iter()
        .map(|i| (i.sequence, usize::from(i.index)))
        .collect();
    pk.sort_unstable();
    pk.into_iter().map(|(_, slot)| slot).collect()
}

/// The token a writer of `statement` groups `row` by, `pk_slots` from [`key_slots`] of the same
/// statement; None when a key value is missing, null or unset, or as [`partition_token`] says. The
/// driver routes a single row's request by `PreparedStatement::calculate_token`, and a batch by its
/// first row's: they must agree (integration test `batching::partition_tokens_are_the_databases_own`).
pub fn row_token(
    statement: &PreparedStatement,
    pk_slots: &[usize],
    row: &BoundRow,
    buf: &mut Vec<u8>,
) -> Option<Token> {
    let specs = statement.get_variable_col_specs();
    let key = pk_slots.iter().map(|&slot| match row.get(slot) {
        Some(MaybeUnset::Set(Some(cell))) => specs.get_by_index(slot).map(|s| (cell, s.typ())),
        _ => None,
    });
    partition_token(statement.get_partitioner_name(), key, buf)
}

/// The token of a partition key, as the driver computes it (`calculate_token_for_partition_key`):
/// the partitioner over the key's serialised values; each component of a composite key as its u16
/// length, its bytes and a zero byte. `buf` is scratch space, kept by the caller between rows. None
/// when a component is None, does not serialise, or (in a composite key) is longer than u16::MAX
/// bytes, as the driver refuses it: its write then fails on its own merits. A key of no components
/// (a statement without one, which the driver does not route) hashes nothing.
pub fn partition_token<'c>(
    partitioner: &PartitionerName,
    key: impl ExactSizeIterator<Item = Option<(&'c Cell, &'c ColumnType<'static>)>>,
    buf: &mut Vec<u8>,
) -> Option<Token> {
    let mut hasher = partitioner.build_hasher();
    let composite = key.len() > 1;
    for component in key {
        let (cell, typ) = component?;
        buf.clear();
        cell.serialize(typ, CellWriter::new(buf)).ok()?;
        // A cell is written as its i32 length, then its bytes.
        let value = buf.get(4..)?;
        if composite {
            let len = u16::try_from(value.len()).ok()?;
            hasher.write(&len.to_be_bytes());
            hasher.write(value);
            hasher.write(&[0]);
        } else {
            hasher.write(value);
        }
    }
    Some(hasher.finish())
}

impl RowWriter for ScyllaWriter {
    fn write(&self, rows: Rc<Vec<BoundRow>>) -> LocalBoxFuture<'static, Result<(), WriteError>> {
        let session = self.session.clone();
        if rows.len() == 1 {
            let statement = self.statement.clone();
            let fut = async move {
                let row = rows.first().map(Vec::as_slice).unwrap_or_default();
                session
                    .execute_unpaged(&statement, row)
                    .await
                    .map(|_| ())
                    .map_err(WriteError::from_execution)
            };
            return Box::pin(InTokio::new(self.handle.clone(), fut));
        }
        // The driver routes a batch by its first statement's token and the batch's profile: the
        // writer's [`FirstReplica`], so the group goes to the owner its rows were grouped by.
        let batch = self.batch(rows.len());
        let fut = async move {
            session
                .batch(&batch, rows.as_slice())
                .await
                .map(|_| ())
                .map_err(WriteError::from_execution)
        };
        Box::pin(InTokio::new(self.handle.clone(), fut))
    }

    fn owner(&self, row: &BoundRow) -> Owner {
        let state = self.session.get_cluster_state();
        // One node without shards (a single Cassandra node): every row has the same owner, and the
        // token is not worth computing.
        if let [only] = state.get_nodes_info() {
            if only.sharder().is_none() {
                return Owner::ANY;
            }
        }
        let Some(table) = self.statement.get_table_spec() else {
            return Owner::ANY;
        };
        let mut routing = self.routing.borrow_mut();
        let Routing {
            state: kept,
            pk_buf,
        } = &mut *routing;
        let Some(token) = self.token(row, pk_buf) else {
            return Owner::ANY;
        };
        if !kept
            .as_ref()
            .is_some_and(|(s, _)| std::ptr::eq(s.as_ptr(), Arc::as_ptr(&state)))
        {
            let Some(keyspace) = state.get_keyspace(table.ks_name()) else {
                return Owner::ANY;
            };
            *kept = Some((Arc::downgrade(&state), keyspace.strategy.clone()));
        }
        let Some((_, strategy)) = kept.as_ref() else {
            return Owner::ANY;
        };
        first_replica(&state, token, strategy, self.local_dc.as_deref(), table)
            .map_or(Owner::ANY, |(node, shard)| {
                Owner::new(node.host_id, node.sharder().map(|_| shard))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_sessions_name_the_setting_to_check() {
        let hint = |m: &str| connect_hint(m, true);
        assert!(hint("error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed")
            .contains("scylla.tls_ca_file"));
        assert!(
            hint("ssl3_read_bytes:tlsv1 alert internal error:..:SSL alert number 80")
                .contains("scylla.tls_cert_file")
        );
        assert!(hint("Request: AUTH_RESPONSE, reason: Database returned an error: Authentication failed - bad credentials")
            .contains("SHARDLINE_SCYLLA_PASSWORD"));
        assert_eq!(hint("Connection refused (os error 111)"), "");
        let broken = "Failed to perform a connection setup request. Request: OPTIONS, reason: \
                      Connection broken, reason: Failed to send/receive data";
        assert!(hint(broken).contains("scylla.tls_cert_file"), "with TLS on");
        assert_eq!(
            connect_hint(broken, false),
            "",
            "without TLS it says nothing of certificates"
        );
    }

    #[test]
    fn tls_context_reports_a_missing_ca_file() {
        let e = tls_context("/nonexistent/ca.pem", None, None).expect_err("no such CA file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
