//! source file (work in progress)
