//! `fv`, Ferrovisor's dom0 control tool, as a library: everything but `main` lives here
//! so the host tests reach it.
//!
//! - [`config`]: xl.cfg domain configs and command-line overrides.
//! - [`cli`]: the command line (clap).
//! - [`table`]: `xl`-style output (list, info, uptime, vcpu-list) and JSON.
//! - [`size`]: memory sizes (`256m`, `1g`).
//! - [`hypervisor`]: the transport to the hypervisor (Linux privcmd, or an in-memory fake).
//! - [`commands`]: the commands over that transport.
pub mod cli;
pub mod commands;
pub mod config;
pub mod hypervisor;
pub mod run;
pub mod size;
pub mod table;
