//! A gw runtime built with only the policies it needs: `api-key`, `rate-limit` and `cors`
//! (see Cargo.toml), and those that every build has (`access-log`, `acl`, `correlation-id`,
//! `ip-filter`, `request-size-limit`, `timeout`). The command line is the stock runtime's
//! (`--config FILE` for standalone mode, `--controller ADDRESSES`); a configuration that
//! names a policy this build left out, such as `jwt`, is refused with an error that says so.
//!
//! Without gw-core's `yaml` feature the configuration file is JSON: a document, or an array
//! of documents.
//!
//! ```text
//! cargo run -p custom-binary -- --config apis.json
//! ```

use gw_core::policy::PolicyRegistry;

fn main() -> std::process::ExitCode {
    // the built-in policies that were compiled in; register your own next to them
    let policies = PolicyRegistry::builtin();
    gw_runtime::cli::exit(gw_runtime::cli::main_with(policies))
}
