//! The stock `gw-controller`, which then accepts APIs that use `require-header` (and, with
//! `--all-in-one`, runs a runtime that applies them).

fn main() -> anyhow::Result<()> {
    gw_controller::cli::main_with(custom_policy::registry())
}
