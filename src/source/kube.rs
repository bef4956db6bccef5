//! source kube (work in progress)
