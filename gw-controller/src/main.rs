//! `gw-controller`: the control plane binary. See `gw-controller --help`.

use gw_core::policy::PolicyRegistry;

fn main() -> std::process::ExitCode {
    gw_controller::cli::exit(gw_controller::cli::main_with(PolicyRegistry::builtin()))
}
