//! The cargo that runs this task runner, for the nested builds of the sweep and the benchmarks.

use std::process::Command;

/// A `cargo` command (the one in `CARGO`, else from `PATH`) without the variables that
/// `cargo run` set for this task runner (`CARGO_PKG_NAME` and the like): some build scripts
/// (ring's) rerun when they differ, which would recompile part of the test build (the MNIST
/// crate's TLS stack and the crate itself) on every nested build.
pub fn cargo() -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            cargo.env_remove(name);
        }
    }
    cargo
}

/// Whether `cargo run` sets the environment variable `name` for the program it runs (package
/// metadata of the runner, not settings of the user's).
fn set_by_cargo_run(name: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || matches!(name, "CARGO_PRIMARY_PACKAGE" | "CARGO_RUSTC_CURRENT_DIR")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_runners_own_cargo_variables_are_removed() {
        assert!(set_by_cargo_run("CARGO_PKG_NAME"));
        assert!(set_by_cargo_run("CARGO_MANIFEST_DIR"));
        assert!(set_by_cargo_run("CARGO_PRIMARY_PACKAGE"));
        assert!(!set_by_cargo_run("CARGO_TARGET_DIR"));
        assert!(!set_by_cargo_run("CARGO_HOME"));
        assert!(!set_by_cargo_run("CARGO"));
        assert!(!set_by_cargo_run("RUSTFLAGS"));
    }
}
