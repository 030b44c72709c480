//! Raft storage on sled with explicit durability: the log and vote (`LogStore`) and the state
//! machine with its snapshots (`StateMachineStore`). Nothing is reported durable to openraft
//! before `Durable::sync` (sled flush + fdatasync of sled's data file) returned.

mod archive_segment;
mod durable;
mod ledger_archive;
mod log_store;
mod recent;
mod sm_store;
mod snap_data;
mod snapshot_file;

pub use durable::{Durable, ENTRY_BYTES_MAX, LogMeter, sync_count};
pub use ledger_archive::LedgerArchive;
pub use log_store::LogStore;
pub use sm_store::{SmData, SmHandle, StateMachineStore, snapshot_worth_it};
pub use snap_data::{SnapData, TransferFile};
