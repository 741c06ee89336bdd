//! vecfs: a shared POSIX file system for vector databases. Metadata lives in
//! Redis (one atomic Lua step per operation), file data in object storage as
//! immutable, checksummed, optionally compressed blocks.
//!
//! Layers, top to bottom: `fuse` (thin kernel adapter) -> `vfs` (kernel-free
//! file system) -> `meta` (Redis engine) and `data` (writer/reader) -> `cache`
//! (memory + disk, single-flight; block buffers from `pool`) -> `object` (object_store backends) with
//! `codec` (block envelope). `session` keeps the mount's session alive, `maintenance` does
//! background upkeep (deferred deletion, compaction, dead-session cleanup, gc); `trash` keeps
//! deleted files for a while; `metrics` counts traffic and
//! times requests (Prometheus endpoint and the `.stats` file, `statsfile`);
//! `error` is the data path's one error type (errno + transient or not).

pub mod cache;
pub mod codec;
pub mod data;
pub mod error;
pub mod fuse;
pub mod logfile;
pub mod maintenance;
pub mod meta;
pub mod metacache;
pub mod metrics;
pub mod object;
pub mod pool;
pub mod prefetch;
pub mod session;
pub mod statsfile;
pub mod trash;
pub mod util;
pub mod vfs;
