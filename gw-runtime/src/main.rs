//! `gw-runtime`: the data plane binary. See `gw-runtime --help`.

use gw_core::policy::PolicyRegistry;

/// mimalloc: measurably faster than the system allocator on the proxy's small, short-lived
/// allocations (see docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gw_runtime::cli::exit(gw_runtime::cli::main_with(PolicyRegistry::builtin()))
}
