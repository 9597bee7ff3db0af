//! `weft-bench`: starts real Weft nodes as processes on 127.0.0.1, drives them, measures the
//! same workloads with samod, prints a table and writes `target/bench/<mode>.json`.

#[allow(dead_code)] // used as the scenarios land
mod report;
mod samod;

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
    /// Temporary: run only the samod baseline (work files in `<out>/samod-work`).
    #[arg(long)]
    samod_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.samod_only {
        let figures = samod::run(args.quick, &args.out.join("samod-work"))?;
        println!("{}", report::table(&figures.figures()));
        for n in &figures.notes {
            println!("- {n}");
        }
        let mode = if args.quick {
            "samod-quick"
        } else {
            "samod-full"
        };
        std::fs::create_dir_all(&args.out)?;
        let path = args.out.join(format!("{mode}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)?;
        println!("\nwrote {}", path.display());
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
