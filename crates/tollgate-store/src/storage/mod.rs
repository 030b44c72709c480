//! Raft storage with explicit durability: the log in segment files of its own and the vote in
//! sled (`LogStore`), the state machine with its snapshots and ledger archive
//! (`StateMachineStore`). Nothing is reported durable to openraft before the `fdatasync` that
//! covers it returned (DU-1).

mod archive_segment;
mod durable;
mod group_commit;
mod ledger_archive;
mod log_files;
mod log_store;
mod recent;
mod sm_store;
mod snap_data;
mod snapshot_file;

pub use durable::{Durable, LogMeter};
pub use group_commit::sync_count;
pub use ledger_archive::LedgerArchive;
pub use log_files::{ENTRY_BYTES_MAX, disk_bytes as log_disk_bytes};
pub use log_store::LogStore;
pub use sm_store::{SmData, SmHandle, StateMachineStore, snapshot_worth_it};
pub use snap_data::{SnapData, TransferFile};
