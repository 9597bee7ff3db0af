//! `weft-bench`: starts real Weft nodes as processes on 127.0.0.1, drives them, measures the
//! same workloads with samod, prints a table and writes `target/bench/<mode>.json`.

mod engines;
#[allow(dead_code)] // used as the scenarios land
mod report;

use std::path::PathBuf;

use clap::Parser;

/// Benchmarks Weft side by side with samod (see README "Benchmarks").
#[derive(Parser, Debug)]
#[command(name = "weft-bench", version)]
struct Args {
    /// Small sizes (N = 1,000) for a smoke test; figures are not comparable with a full run.
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (numbers 1-7, comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Temporary: run only scenario 6's storage engine comparison and print its table.
    #[arg(long)]
    engines_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.engines_only {
        let figures = engines::run(args.quick, &args.out.join("storage-work"))?;
        println!("{}", report::table(&figures));
        return Ok(());
    }
    let env = report::Environment::read();
    let figures: Vec<report::Figure> = Vec::new();
    let mode = if args.quick { "quick" } else { "full" };
    println!("{}", report::table(&figures));
    let path = report::write_json(
        &args.out,
        mode,
        &report::Run {
            environment: &env,
            mode: mode.into(),
            figures: &figures,
        },
    )?;
    println!("\nwrote {}", path.display());
    Ok(())
}
