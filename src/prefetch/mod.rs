//! Getting bytes to a reader before it asks: read-ahead windows kept per
//! inode (a second handle on a segment starts where the first one's window
//! ended), warm-on-commit (blocks of files other nodes just committed are
//! fetched into this node's cache before anything opens them) and the push
//! of warmed files into the kernel's page cache. The data path (`data`)
//! fetches; this module decides what and when.

pub mod readahead;
pub mod warm;
