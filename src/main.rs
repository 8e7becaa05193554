//! The `agentline` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    agentline::cli::main()
}
