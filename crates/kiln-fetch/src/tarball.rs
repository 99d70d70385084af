//! tar
