//! The operator's integration tests, one binary (one link step): each module is one
//! scenario family, most against a scripted mock Kubernetes API server ([`common`]).

mod cli;
mod common;
mod controller;
mod leader;
mod lifecycle;
mod reconcile;
mod webhook;
