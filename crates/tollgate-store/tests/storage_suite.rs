//! openraft's own storage conformance suite, run against the sled log store and the state
//! machine store, each test on a fresh data dir.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tollgate_store::storage::{Durable, LogStore, StateMachineStore};
use tollgate_store::types::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        })?;
        let io = |e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        };
        let durable = Durable::open(dir.path()).map_err(io)?;
        let sm = StateMachineStore::open(dir.path(), durable.log_meter()).map_err(io)?;
        let log = LogStore::open(durable).map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() -> Result<(), StorageError<TypeConfig>> {
    Suite::<TypeConfig, LogStore, StateMachineStore, SledBuilder, tempfile::TempDir>::test_all(
        SledBuilder,
    )
    .await
}
