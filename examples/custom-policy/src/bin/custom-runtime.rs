//! The stock `gw-runtime`, with `require-header` registered.

/// The allocator of the stock binary (see docs/PERFORMANCE.md): a custom build chooses its
/// own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gw_runtime::cli::exit(gw_runtime::cli::main_with(custom_policy::registry()))
}
