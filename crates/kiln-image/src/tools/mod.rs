//! External programs, one module each (being written).
