//! Figures, the table printed at the end of a run, and the JSON written beside it.

use std::path::Path;

use serde::Serialize;

/// One measured figure of one scenario, for Weft and (where it applies) samod.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// The scenario number and name, e.g. `1 cold replication`.
    pub scenario: String,
    /// What is measured, e.g. `docs/s durable on B`.
    pub metric: String,
    /// Weft's value.
    pub weft: Option<f64>,
    /// samod's value, measured in the same run.
    pub samod: Option<f64>,
    /// The target from the issue, as text (`>= 1500`).
    pub target: String,
    /// Whether Weft meets the target (`None` when there is no target).
    pub met: Option<bool>,
    /// Notes: sizes, counts, conditions.
    pub note: String,
}

impl Figure {
    /// A figure; `met` is computed from `target` when it reads `>= x` or `<= x`.
    pub fn new(
        scenario: &str,
        metric: &str,
        weft: Option<f64>,
        samod: Option<f64>,
        target: &str,
    ) -> Self {
        let met = weft.and_then(|w| {
            let t = target.trim();
            if let Some(x) = t.strip_prefix(">=") {
                x.trim()
                    .replace(',', "")
                    .parse::<f64>()
                    .ok()
                    .map(|x| w >= x)
            } else if let Some(x) = t.strip_prefix("<=") {
                x.trim()
                    .replace(',', "")
                    .parse::<f64>()
                    .ok()
                    .map(|x| w <= x)
            } else {
                None
            }
        });
        Self {
            scenario: scenario.into(),
            metric: metric.into(),
            weft,
            samod,
            target: target.into(),
            met,
            note: String::new(),
        }
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Weft ÷ samod.
    pub fn ratio(&self) -> Option<f64> {
        match (self.weft, self.samod) {
            (Some(w), Some(s)) if s != 0.0 => Some(w / s),
            _ => None,
        }
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The table, one row per figure.
pub fn table(figures: &[Figure]) -> String {
    let rows: Vec<[String; 8]> = figures
        .iter()
        .map(|f| {
            [
                f.scenario.clone(),
                f.metric.clone(),
                num(f.weft),
                num(f.samod),
                f.ratio().map_or("-".into(), |r| format!("{r:.2}x")),
                f.target.clone(),
                match f.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
                f.note.clone(),
            ]
        })
        .collect();
    let head = [
        "scenario",
        "metric",
        "weft",
        "samod",
        "weft/samod",
        "target",
        "met",
        "note",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(head.to_vec())];
    out.push(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    for r in &rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// The machine and commit a run was made on.
#[derive(Debug, Serialize)]
pub struct Environment {
    /// `git rev-parse HEAD` (with `-dirty` when the tree has changes).
    pub commit: String,
    /// CPU model from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory in KiB.
    pub memory_kib: u64,
    /// Kernel release.
    pub kernel: String,
    /// When the run started (RFC 3339, UTC).
    pub started: String,
}

fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Environment {
    /// Reads this machine.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mut commit = command("git", &["rev-parse", "--short=12", "HEAD"]);
        if !command("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str("-dirty");
        }
        Self {
            commit,
            cpu: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("unknown")
                .trim()
                .to_string(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            kernel: command("uname", &["-r"]),
            started: command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        }
    }
}

/// Everything one run wrote.
#[derive(Debug, Serialize)]
pub struct Run<'a> {
    /// The machine and commit.
    pub environment: &'a Environment,
    /// `quick` or `full`, and the sizes used.
    pub mode: String,
    /// Every figure.
    pub figures: &'a [Figure],
    /// How the samod baseline ran (sizes, conditions, failures).
    pub samod_notes: &'a [String],
}

/// Writes `dir/<name>.json`.
pub fn write_json(dir: &Path, name: &str, run: &Run<'_>) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(run)?)?;
    Ok(path)
}

/// Percentile (0..=100) of a sorted slice.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)])
}

/// The median of `values` (the upper one of an even count), `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied()
}

/// Resident memory of a process in KiB (VmRSS), 0 when unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time a process has used so far (user and system), in seconds; `None` when unknown.
/// `/proc` counts it in USER_HZ, which is 100 on Linux.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where `state` is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let mut rest = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
