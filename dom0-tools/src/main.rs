//! `fv`: Ferrovisor's dom0 control tool. Its commands arrive with the control-tool issue;
//! today it only reports the control-interface version it speaks.
use std::process::ExitCode;

use ferrovisor_abi::version::FV_CONTROL_INTERFACE_VERSION;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") | Some("-V") => {
            println!(
                "fv {} (control interface v{})",
                env!("CARGO_PKG_VERSION"),
                FV_CONTROL_INTERFACE_VERSION
            );
            ExitCode::SUCCESS
        }
        Some("--help") | Some("-h") | None => {
            println!(
                "fv {}: Ferrovisor's dom0 control tool",
                env!("CARGO_PKG_VERSION")
            );
            println!();
            println!("Usage: fv --version");
            println!();
            println!("No domain commands exist yet: they come with the control-tool work.");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("fv: unknown command '{other}'; run 'fv --help'");
            ExitCode::from(2)
        }
    }
}
