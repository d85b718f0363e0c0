//! The stock `gw-runtime`, with `require-header` registered.

fn main() -> anyhow::Result<()> {
    gw_runtime::cli::main_with(custom_policy::registry())
}
