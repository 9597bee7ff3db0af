//! The `weft` binary: a thin shell over `weft_node::cli`.

fn main() -> std::process::ExitCode {
    weft_node::cli::main()
}
