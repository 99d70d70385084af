//! overlay mounts
