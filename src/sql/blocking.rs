//! SQL for synchronous callers (tests, programs embedding saerl): the session of
//! `open_session` and the statements of `run_sql`, driven on a runtime of this module's own.
//! Nothing here is generic, so a caller's crate compiles none of the async query path: an
//! `.await` on `run_sql` instantiates DataFusion's planner and executor in the awaiting crate
//! (minutes of build for each test binary that did).

use std::sync::OnceLock;

use anyhow::Result;
use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

use crate::lake::Lake;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for blocking SQL")
    })
}

/// `sql::open_session`, waited for. Not from inside an async runtime (it would block it).
pub fn open_session(lake: &Lake) -> Result<SessionContext> {
    runtime().block_on(super::open_session(lake))
}

/// `sql::run_sql` (every statement of `sql`, the last one's rows), waited for.
pub fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    runtime().block_on(super::run_sql(ctx, sql))
}
