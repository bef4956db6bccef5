//! source status (work in progress)
