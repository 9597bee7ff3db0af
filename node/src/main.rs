//! The `weft` binary: a thin shell over `weft_node::cli`.

/// jemalloc instead of glibc's malloc. A busy node allocates and frees on many threads (sled
/// copies a tree node on each insert; tonic, h2 and Automerge allocate per message), and
/// glibc's malloc was a fifth of its CPU. With jemalloc the three nodes of scenario 3 spent
/// ~7% less CPU per edit, with about the same resident memory (scenario 5); mimalloc was
/// faster still but held 3-4 times the memory (`benches/results/history.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    weft_node::cli::main()
}
