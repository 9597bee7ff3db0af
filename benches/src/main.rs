//! `weft-bench`: starts real Weft nodes as processes on 127.0.0.1, drives them, measures the
//! same workloads with samod, prints a table and writes `target/bench/<mode>.json`.

mod cluster;
#[allow(dead_code)] // used as the scenarios land
mod report;
mod weft;

use std::path::PathBuf;

use clap::Parser;
use report::Figure;

/// Benchmarks Weft side by side with samod (see README "Benchmarks").
#[derive(Parser, Debug)]
#[command(name = "weft-bench", version)]
struct Args {
    /// Small sizes (N = 1,000 sections) for a smoke test; figures are not comparable with a
    /// full run.
    #[arg(long)]
    quick: bool,
    /// Sections at the school in scenarios 1-2 (default 100,000; 1,000 with --quick).
    #[arg(long)]
    docs: Option<u64>,
    /// Run only these scenarios (numbers 1-7, comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Keep the work directory (data, configs) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn wants(&self, n: u32) -> bool {
        self.only.is_empty() || self.only.contains(&n)
    }
}

fn opt(v: f64) -> Option<f64> {
    Some(v)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env = report::Environment::read();
    let mode = if args.quick { "quick" } else { "full" };
    let docs = args
        .docs
        .unwrap_or(if args.quick { 1_000 } else { 100_000 });
    let work = tempfile::Builder::new().prefix("weft-bench-").tempdir()?;
    eprintln!("work directory: {}", work.path().display());
    let mut figures: Vec<Figure> = Vec::new();

    if args.wants(1) || args.wants(2) {
        let sizes = weft::Sizes {
            plans: docs.div_ceil(4),
        };
        let (mut fed, cold) = weft::cold_replication(&work.path().join("s1"), sizes).await?;
        eprintln!("scenario 1: {cold:?}");
        let s = "1 cold replication";
        figures.push(
            Figure::new(
                s,
                "docs/s durable on B",
                opt(cold.docs_per_s),
                None,
                ">= 1500",
            )
            .note(format!("N={} in {:.2} s", cold.docs, cold.seconds)),
        );
        figures.push(
            Figure::new(
                s,
                "wire bytes / saved bytes",
                opt(cold.wire_bytes as f64 / cold.saved_bytes as f64),
                None,
                "<= 1.3",
            )
            .note(format!(
                "{} B on the wire, {} B saved",
                cold.wire_bytes, cold.saved_bytes
            )),
        );
        if args.wants(2) {
            let s = "2 one-edit propagation";
            for l in weft::one_edit(&fed, args.quick).await? {
                eprintln!("scenario 2: {l:?}");
                let note = format!(
                    "{} edits at {}/s, {} lost, N={}",
                    l.count, l.rate, l.lost, cold.docs
                );
                let (t50, t99) = if l.rate <= 10.0 {
                    ("<= 1", "<= 5")
                } else {
                    ("", "<= 20")
                };
                figures.push(
                    Figure::new(s, &format!("p50 ms at {}/s", l.rate), l.p50, None, t50)
                        .note(note.clone()),
                );
                figures.push(
                    Figure::new(s, &format!("p99 ms at {}/s", l.rate), l.p99, None, t99)
                        .note(note.clone()),
                );
                figures.push(
                    Figure::new(s, &format!("p99.9 ms at {}/s", l.rate), l.p999, None, "")
                        .note(note),
                );
            }
        }
        for a in &mut fed.agencies {
            a.stop()?;
        }
    }

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
    if args.keep {
        let kept = work.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}
