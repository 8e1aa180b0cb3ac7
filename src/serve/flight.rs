//! The lake from a notebook: an Arrow Flight SQL endpoint (arrow-flight's `FlightSqlService`)
//! over the session `saerl sql` uses — every table, view, function and table function, on a
//! local lake, an `s3://` lake or a Ballista cluster. ADBC, JDBC and the other Flight SQL
//! clients run statements and prepared statements (DataFusion placeholders, `$chain` or `$1`),
//! list catalogs, schemas and tables, and receive results as a stream of Arrow record batches.
//!
//! - Each connection (a client's address and port) gets its own session; all share one memory
//!   pool (`--memory-limit`), so a statement past it fails alone.
//! - Read-only: DDL, DML, `COPY` and `SET` are refused, as in the SQL box.
//! - A query stops when its client goes away: dropping the response stream drops the plan.
//! - With a token, every call carries `authorization: Bearer T`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementSubstraitPlan, CommandStatementUpdate, DoPutPreparedStatementResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use datafusion::common::ScalarValue;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::lake::Lake;
use crate::sql::exec::{plan_statement, read_only_statement, READ_ONLY};

/// A connection's session is dropped after this long without a call.
const IDLE: Duration = Duration::from_secs(600);

/// The Flight SQL service over one lake.
pub struct FlightSql {
    lake: Lake,
    /// What runs the statements (a cluster), or None for this process.
    engine: Option<Arc<dyn crate::sql::session::Engine>>,
    /// Shared by every session: one memory pool for the whole server.
    runtime: Arc<RuntimeEnv>,
    sessions: tokio::sync::Mutex<HashMap<SocketAddr, (Arc<SessionContext>, Instant)>>,
    prepared: std::sync::Mutex<HashMap<u64, Prepared>>,
    next: AtomicU64,
    info: SqlInfoData,
}

/// A prepared statement: its text and the values bound to its placeholders.
#[derive(Clone)]
struct Prepared {
    sql: String,
    /// Placeholder names (without `$`) in the order they first appear.
    names: Vec<String>,
    values: Option<HashMap<String, ScalarValue>>,
}

/// An error as the client sees it: saerl's message, first cause first.
fn failed(e: anyhow::Error) -> Status {
    let text = crate::error_text(&e);
    if text.contains("Resources exhausted") {
        return Status::resource_exhausted(format!(
            "the statement needs more memory than this server allows (saerl serve --memory-limit): {text}"
        ));
    }
    Status::invalid_argument(text)
}

fn ipc_schema(schema: &Schema) -> Result<prost::bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| {
            Status::internal(format!("encoding a schema: {e}"))
        })?;
    Ok(bytes)
}

/// `$name` / `$1` placeholders of `sql` in the order they first appear (outside quotes).
fn placeholder_names(sql: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let (mut quote, mut chars) = (None, sql.char_indices().peekable());
    while let Some((_, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '$') => {
                let mut name = String::new();
                while let Some(&(_, n)) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if !name.is_empty() && !names.contains(&name) {
                    names.push(name);
                }
            }
            _ => {}
        }
    }
    names
}

/// The values of the first row of `batch` for the placeholders `names`: a column named like a
/// placeholder (with or without `$`) binds it, the others bind by position.
fn bind(
    names: &[String],
    batch: &arrow::array::RecordBatch,
) -> Result<HashMap<String, ScalarValue>, Status> {
    if batch.num_rows() == 0 {
        return Err(Status::invalid_argument("the parameter batch has no row"));
    }
    if batch.num_columns() != names.len() {
        return Err(Status::invalid_argument(format!(
            "the statement has {} parameter(s) ({}), but {} value(s) were bound",
            names.len(),
            names
                .iter()
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", "),
            batch.num_columns()
        )));
    }
    let mut out = HashMap::new();
    for (i, field) in batch.schema().fields().iter().enumerate() {
        let by_name = field.name().trim_start_matches('$');
        let name = match names.iter().find(|n| n.as_str() == by_name) {
            Some(n) => n.clone(),
            None => names[i].clone(),
        };
        let v = ScalarValue::try_from_array(batch.column(i), 0)
            .map_err(|e| Status::invalid_argument(format!("parameter ${name}: {e}")))?;
        out.insert(name, v);
    }
    Ok(out)
}

/// Placeholder values cast to the types the plan infers for them.
fn typed(
    plan: &datafusion::logical_expr::LogicalPlan,
    mut values: HashMap<String, ScalarValue>,
) -> anyhow::Result<HashMap<String, ScalarValue>> {
    for (id, ty) in plan.get_parameter_types()? {
        let name = id.trim_start_matches('$');
        if let (Some(v), Some(ty)) = (values.get_mut(name), ty) {
            if v.data_type() != ty {
                *v = v.cast_to(&ty)?;
            }
        }
    }
    Ok(values)
}

impl FlightSql {
    pub fn new(
        lake: Lake,
        engine: Option<Arc<dyn crate::sql::session::Engine>>,
        runtime: Arc<RuntimeEnv>,
    ) -> anyhow::Result<Self> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "saerl");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let info = info
            .build()
            .map_err(|e| anyhow::anyhow!("building the server's SqlInfo: {e}"))?;
        Ok(Self {
            lake,
            engine,
            runtime,
            sessions: Default::default(),
            prepared: Default::default(),
            next: AtomicU64::new(1),
            info,
        })
    }

    /// The gRPC service, with the token rule in front of every call.
    pub fn service(
        self,
        token: Option<String>,
    ) -> tonic::service::interceptor::InterceptedService<
        FlightServiceServer<FlightSql>,
        impl tonic::service::Interceptor + Clone,
    > {
        let check = move |req: Request<()>| -> Result<Request<()>, Status> {
            let Some(token) = token.as_deref() else {
                return Ok(req);
            };
            let shown = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match shown {
                Some(t) if super::same_secret(t, token) => Ok(req),
                _ => Err(Status::unauthenticated(
                    "this saerl server needs its token: send the header `authorization: Bearer T` (ADBC: the option adbc.flight.sql.authorization_header)",
                )),
            }
        };
        FlightServiceServer::with_interceptor(self, check)
    }

    /// The session of the connection `request` came on (opened on its first call).
    async fn session<T>(&self, request: &Request<T>) -> Result<Arc<SessionContext>, Status> {
        let open = || async {
            crate::sql::session::open(&self.lake, self.runtime.clone(), self.engine.as_deref())
                .await
                .map(Arc::new)
                .map_err(failed)
        };
        let Some(peer) = request.remote_addr() else {
            return open().await;
        };
        let mut sessions = self.sessions.lock().await;
        let now = Instant::now();
        sessions.retain(|_, (_, used)| now.duration_since(*used) < IDLE);
        if let Some((ctx, used)) = sessions.get_mut(&peer) {
            *used = now;
            return Ok(ctx.clone());
        }
        let ctx = open().await?;
        sessions.insert(peer, (ctx.clone(), now));
        Ok(ctx)
    }

    /// The result schema of a read-only statement.
    async fn schema_of<T>(&self, request: &Request<T>, sql: &str) -> Result<SchemaRef, Status> {
        let ctx = self.session(request).await?;
        let statement = read_only_statement(sql).map_err(refused)?;
        let (plan, _snapshot) = plan_statement(&ctx, statement, None)
            .await
            .map_err(failed)?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }

    /// Runs a read-only statement, streaming its batches to the client.
    async fn execute<T>(
        &self,
        request: &Request<T>,
        sql: &str,
        values: Option<HashMap<String, ScalarValue>>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let ctx = self.session(request).await?;
        let statement = read_only_statement(sql).map_err(refused)?;
        let run = async {
            let (plan, snapshot) = plan_statement(&ctx, statement, None).await?;
            let plan = match values {
                Some(v) => {
                    let v = typed(&plan, v)?;
                    plan.with_param_values(v)?
                }
                None => plan,
            };
            let stream = ctx
                .execute_logical_plan(plan)
                .await?
                .execute_stream()
                .await?;
            anyhow::Ok((stream, snapshot))
        };
        let (stream, snapshot) = run.await.map_err(failed)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let watched = Watched {
            inner: stream,
            id,
            batches: 0,
            done: false,
            _snapshot: snapshot,
        };
        let schema = watched.inner.schema();
        let flights = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(watched.map_err(|e| FlightError::Tonic(Box::new(failed(e.into())))))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flights)))
    }

    fn info_for(
        descriptor: FlightDescriptor,
        schema: &Schema,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("encoding a schema: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    fn one_batch(
        batch: Result<arrow::array::RecordBatch, FlightError>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
        let flights = FlightDataEncoderBuilder::new()
            .with_schema(batch.schema())
            .build(futures::stream::once(async { Ok::<_, FlightError>(batch) }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flights)))
    }

    /// Every (catalog, schema, table, type, schema) of a connection's session.
    async fn tables<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Vec<(String, String, String, &'static str, SchemaRef)>, Status> {
        let ctx = self.session(request).await?;
        crate::sql::session::begin_statement(&ctx)
            .await
            .map_err(failed)?;
        let mut out = Vec::new();
        for catalog in ctx.catalog_names() {
            let Some(c) = ctx.catalog(&catalog) else {
                continue;
            };
            for schema in c.schema_names() {
                let Some(s) = c.schema(&schema) else { continue };
                for table in s.table_names() {
                    if let Ok(Some(t)) = s.table(&table).await {
                        let kind = match t.table_type() {
                            datafusion::logical_expr::TableType::View => "VIEW",
                            _ => "TABLE",
                        };
                        out.push((catalog.clone(), schema.clone(), table, kind, t.schema()));
                    }
                }
            }
        }
        Ok(out)
    }

    fn prepared(&self, handle: &[u8]) -> Result<(u64, Prepared), Status> {
        let id = <[u8; 8]>::try_from(handle)
            .map(u64::from_le_bytes)
            .map_err(|_| {
                Status::invalid_argument("not a prepared statement handle of this server")
            })?;
        let p = self.prepared.lock().unwrap().get(&id).cloned();
        p.map(|p| (id, p)).ok_or_else(|| {
            Status::not_found("no such prepared statement (closed, or made by another server)")
        })
    }
}

/// A refused or unparsable statement.
fn refused(e: anyhow::Error) -> Status {
    let text = crate::error_text(&e);
    match text.contains(READ_ONLY) {
        true => Status::permission_denied(format!("this saerl server is {text}")),
        false => Status::invalid_argument(text),
    }
}

/// A statement's batches on their way to the client; says so when the client went away first.
struct Watched {
    inner: SendableRecordBatchStream,
    id: u64,
    batches: u64,
    done: bool,
    /// The lake's shared lock: the statement sees one commit until it ends.
    _snapshot: Option<crate::lake::Snapshot>,
}

impl Stream for Watched {
    type Item = datafusion::error::Result<arrow::array::RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Ok(_))) => self.batches += 1,
            Poll::Ready(_) => self.done = true,
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.done {
            eprintln!(
                "flight: statement {} stopped after {} batch(es): its client went away",
                self.id, self.batches
            );
        }
    }
}

fn read_only_put() -> Status {
    Status::permission_denied(format!("this saerl server is {READ_ONLY}"))
}

type HandshakeStream = Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    /// The token was checked in front of the service; a handshake only confirms it.
    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<HandshakeStream>, Status> {
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(reply)
        }))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.schema_of(&request, &query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        Self::info_for(
            request.into_inner(),
            &schema,
            ticket.as_any().encode_to_vec(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec()).map_err(|_| {
            Status::invalid_argument("the ticket is not a statement of this server")
        })?;
        self.execute(&request, &sql, None).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let ctx = self.session(&request).await?;
        let statement = read_only_statement(&query.query).map_err(refused)?;
        let (plan, _snapshot) = plan_statement(&ctx, statement, None)
            .await
            .map_err(failed)?;
        let names = placeholder_names(&query.query);
        let types = plan.get_parameter_types().map_err(|e| failed(e.into()))?;
        let params = Schema::new(
            names
                .iter()
                .map(|n| {
                    let ty = types
                        .get(&format!("${n}"))
                        .cloned()
                        .flatten()
                        .unwrap_or(DataType::Null);
                    Field::new(n, ty, true)
                })
                .collect::<Vec<_>>(),
        );
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.prepared.lock().unwrap().insert(
            id,
            Prepared {
                sql: query.query,
                names,
                values: None,
            },
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: id.to_le_bytes().to_vec().into(),
            dataset_schema: ipc_schema(plan.schema().as_arrow())?,
            parameter_schema: ipc_schema(&params)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let (id, p) = self.prepared(&query.prepared_statement_handle)?;
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        );
        let mut values = None;
        while let Some(batch) = batches.next().await {
            let batch =
                batch.map_err(|e| Status::invalid_argument(format!("the parameters: {e}")))?;
            if batch.num_rows() > 0 && values.is_none() {
                values = Some(bind(&p.names, &batch)?);
            }
        }
        if let Some(stored) = self.prepared.lock().unwrap().get_mut(&id) {
            stored.values = values;
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (_, p) = self.prepared(&query.prepared_statement_handle)?;
        let schema = self.schema_of(&request, &p.sql).await?;
        Self::info_for(
            request.into_inner(),
            &schema,
            query.as_any().encode_to_vec(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (_, p) = self.prepared(&query.prepared_statement_handle)?;
        if !p.names.is_empty() && p.values.is_none() {
            return Err(Status::invalid_argument(format!(
                "bind a value to each parameter first ({})",
                p.names
                    .iter()
                    .map(|n| format!("${n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.execute(&request, &p.sql, p.values).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        if let Ok((id, _)) = self.prepared(&query.prepared_statement_handle) {
            self.prepared.lock().unwrap().remove(&id);
        }
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::info_for(
            request.into_inner(),
            &schema,
            query.as_any().encode_to_vec(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        let mut seen = Vec::new();
        for (catalog, ..) in self.tables(&request).await? {
            if !seen.contains(&catalog) {
                b.append(&catalog);
                seen.push(catalog);
            }
        }
        Self::one_batch(b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::info_for(
            request.into_inner(),
            &schema,
            query.as_any().encode_to_vec(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        let mut seen = Vec::new();
        for (catalog, schema, ..) in self.tables(&request).await? {
            if !seen.contains(&(catalog.clone(), schema.clone())) {
                b.append(&catalog, &schema);
                seen.push((catalog, schema));
            }
        }
        Self::one_batch(b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        Self::info_for(
            request.into_inner(),
            &schema,
            query.as_any().encode_to_vec(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        for (catalog, schema, table, kind, columns) in self.tables(&request).await? {
            b.append(catalog, schema, table, kind, &columns)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Self::one_batch(b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        Self::info_for(
            request.into_inner(),
            &schema,
            query.as_any().encode_to_vec(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        Self::one_batch(b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        Self::info_for(
            request.into_inner(),
            &schema,
            query.as_any().encode_to_vec(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Self::one_batch(query.into_builder(&self.info).build())
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only_put())
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only_put())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only_put())
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only_put())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "saerl's Flight SQL server does not answer {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serves Flight SQL on `listener` until the process stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: FlightSql,
    token: Option<String>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(service.service(token))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| anyhow::anyhow!("serving Flight SQL: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_named_in_order_outside_quotes() {
        let names = super::placeholder_names(
            "SELECT '$no', $chain AS c FROM t WHERE layer = $layer AND chain = $chain OR x = $1",
        );
        assert_eq!(names, ["chain", "layer", "1"]);
    }
}
