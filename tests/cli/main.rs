//! The command line and what ships with it: `cli` (check-config, default-config, running,
//! SIGTERM), `replay` (`spanlens replay` against a golden table), `deploy_files` (deploy/
//! checked with promtool, amtool and spanlens check-config).

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod deploy_files;
mod replay;
