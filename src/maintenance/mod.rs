//! Background maintenance of a volume, in one place: deferred deletion of
//! unreferenced objects (`deleter`), compaction of fragmented chunks
//! (`compaction`), cleanup after dead sessions (`sessions`), and the
//! whole-volume scans behind `vecfs gc` (`gc`) and `vecfs fsck` (`fsck`),
//! which share `scan`.
//!
//! The mount starts the background loops (deleter, session cleaner) and
//! the writer triggers compaction.

pub mod compaction;
pub mod deleter;
pub mod fsck;
pub mod gc;
pub mod scan;
pub mod sessions;
