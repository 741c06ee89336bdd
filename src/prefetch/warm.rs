//! Warm-on-commit: when another node commits a file whose name matches
//! `--warm-on-commit`, its blocks are fetched into this node's cache at
//! once, and (within `--warm-page-cache`) read through the mount so the
//! kernel's page cache holds it before the application's first read.
