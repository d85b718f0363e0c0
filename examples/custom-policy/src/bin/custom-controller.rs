//! The stock `gw-controller`, which then accepts APIs that use `require-header` (and, with
//! `--all-in-one`, runs a runtime that applies them).

/// The allocator of the stock binary (see docs/PERFORMANCE.md): a custom build chooses its
/// own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gw_controller::cli::exit(gw_controller::cli::main_with(custom_policy::registry()))
}
