//! Background maintenance of a volume, in one place: deferred deletion of
//! unreferenced objects (`deleter`), compaction of fragmented chunks
//! (`compaction`) and cleanup after dead sessions (`sessions`).
//!
//! The mount starts the background loops (deleter, session cleaner) and
//! the writer triggers compaction.

pub mod compaction;
pub mod deleter;
pub mod sessions;
