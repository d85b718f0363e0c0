//! `gw-controller`: the control plane binary. See `gw-controller --help`.

use gw_core::policy::PolicyRegistry;

fn main() -> anyhow::Result<()> {
    gw_controller::cli::main_with(PolicyRegistry::builtin())
}
