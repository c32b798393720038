//! The `runtimeuse` binary. Everything lives in the library (see
//! `runtimeuse::cli`), so the binary and an embedding program run the same
//! code.

fn main() -> std::process::ExitCode {
    runtimeuse::cli::main()
}
