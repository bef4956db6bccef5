//! Shared helpers for loopback integration tests.
#![allow(dead_code)]

pub mod fake_kube;
pub mod kube_test;
