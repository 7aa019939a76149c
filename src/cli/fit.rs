//! `iot-sim fit FILE --time COL [--device COL] [--field F ...] --out fleet.toml`: reads one
//! recorded series with the replay's trace reader, fits every model of `crate::fit` to each
//! field, prints each candidate's parameters (95% CI), log-likelihood, AIC, BIC and KS test,
//! and writes a fleet file whose profile has the lowest-BIC generator per field. Bad input (the
//! trace's problems, a field that cannot be fitted) exits 2 and writes nothing.

use crate::fit::{self, Candidate};
use crate::trace::{RowReader, open_layout, parse_number, parse_time};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct FitArgs {
    /// The recorded trace: CSV with a header, or JSON Lines (the file sink's output too).
    pub file: PathBuf,
    /// The time column (RFC 3339, epoch seconds or milliseconds).
    #[arg(long, value_name = "COL")]
    pub time: String,
    /// The device column: one device's series is fitted (the first one seen, or --series).
    #[arg(long, value_name = "COL")]
    pub device: Option<String>,
    /// With --device: the device whose series is fitted.
    #[arg(long, value_name = "NAME", requires = "device")]
    pub series: Option<String>,
    /// A column to fit (repeatable; default: every other column).
    #[arg(long = "field", value_name = "F")]
    pub fields: Vec<String>,
    /// The fleet file to write (a null-sink fleet of one device of the fitted profile).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The fitted profile's name.
    #[arg(long, default_value = "fitted")]
    pub name: String,
}

fn bad(msg: impl std::fmt::Display) -> anyhow::Result<i32> {
    eprintln!("error: {msg}");
    Ok(super::exit::BAD_CONFIG)
}

pub fn main(a: &FitArgs) -> anyhow::Result<i32> {
    if let Err(e) = crate::limits::check_name("profile name", &a.name) {
        return bad(format!("--name {:?}: {e}", a.name));
    }
    let fields = (!a.fields.is_empty()).then_some(a.fields.as_slice());
    let shown = a.file.display();
    let (layout, published) = match open_layout(&a.file, &a.time, a.device.as_deref(), fields) {
        Ok(x) => x,
        Err(e) => return bad(format!("{shown}: {e}")),
    };
    let mut reader = match RowReader::open(&layout) {
        Ok(r) => r,
        Err(e) => return bad(format!("{shown}: {e}")),
    };
    let first = 1 + layout.has_device as usize;
    let mut series = a.series.clone();
    let mut times: Vec<u64> = vec![];
    let mut cols: Vec<Vec<String>> = vec![vec![]; published.len()];
    let mut prev: Option<(u64, u64)> = None;
    loop {
        match reader.next_row() {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return bad(format!("{shown}: {e}")),
        }
        let t = match parse_time(&reader.cells[0]) {
            Ok(t) => t,
            Err(e) => {
                return bad(format!("{shown}: line {}, column {:?}: {e}", reader.line, a.time));
            }
        };
        if let Some((pt, pl)) = prev
            && t < pt
        {
            return bad(format!(
                "{shown}: line {}, column {:?}: time goes backwards: {:?} is before line {pl}'s; \
                 the trace must be sorted by time",
                reader.line, a.time, reader.cells[0]
            ));
        }
        prev = Some((t, reader.line));
        if layout.has_device {
            let d = &reader.cells[1];
            match &series {
                None => series = Some(d.clone()),
                Some(s) if s != d => continue,
                Some(_) => {}
            }
        }
        times.push(t);
        for (i, c) in cols.iter_mut().enumerate() {
            c.push(reader.cells[first + i].clone());
        }
    }
    if times.is_empty() {
        return bad(match &series {
            Some(s) if a.series.is_some() => format!("{shown}: no row of device {s:?}"),
            _ => format!("{shown}: the trace has no data rows"),
        });
    }
    let mut steps: Vec<u64> = times.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    steps.sort_unstable();
    let interval_ms = steps.get(steps.len() / 2).copied().unwrap_or(1000).max(1);
    println!(
        "{shown}{}: {} samples from {} to {}, median step {} ms",
        series.as_ref().map(|s| format!(" (device {s:?})")).unwrap_or_default(),
        times.len(),
        crate::sim::time::rfc3339_ms(times[0]),
        crate::sim::time::rfc3339_ms(*times.last().unwrap_or(&0)),
        interval_ms
    );
    let mut chosen: Vec<(String, Candidate)> = vec![];
    let mut problems = vec![];
    for ((name, column), values) in published.iter().zip(&cols) {
        let numeric = values.first().is_some_and(|v| v.parse::<f64>().is_ok());
        println!("\nfield {name:?} ({}):", if numeric { "numeric" } else { "text" });
        if numeric {
            let mut x = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                match parse_number(v) {
                    Ok(v) => x.push(v),
                    Err(e) => {
                        problems.push(format!(
                            "field {name:?} (column {column:?}), sample {}: {e}",
                            i + 1
                        ));
                        break;
                    }
                }
            }
            if x.len() < values.len() {
                continue;
            }
            match fit::fit_numeric(&times, &x) {
                Ok(f) => {
                    for (i, c) in f.candidates.iter().enumerate() {
                        match c {
                            Ok(c) => print_candidate(c, i == f.best),
                            Err((model, why)) => println!("    {model:<18} not fitted: {why}"),
                        }
                    }
                    if let Some(Ok(c)) = f.candidates.get(f.best) {
                        println!("  chosen: {} (lowest BIC)", c.model);
                        chosen.push((name.clone(), c.clone()));
                    }
                }
                Err(e) => problems.push(format!("field {name:?}: {e}")),
            }
        } else {
            match fit::check_times(&times).and_then(|()| fit::markov(values)) {
                Ok(c) => {
                    print_candidate(&c, true);
                    chosen.push((name.clone(), c));
                }
                Err(e) => problems.push(format!("field {name:?}: {e}")),
            }
        }
    }
    if !problems.is_empty() {
        eprintln!("error: cannot fit {shown}; nothing written:");
        for p in &problems {
            eprintln!("  - {p}");
        }
        return Ok(super::exit::BAD_CONFIG);
    }
    let text = fleet_text(a, &series, times.len(), interval_ms, &chosen);
    let tmp = a.out.with_extension("toml.partial");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &a.out))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.out.display()))?;
    println!(
        "\nwrote {} (check it: iot-sim validate --config {})",
        a.out.display(),
        a.out.display()
    );
    Ok(super::exit::OK)
}

fn print_candidate(c: &Candidate, best: bool) {
    let ks =
        c.ks.map_or("KS n/a (categorical)".to_string(), |(d, p)| format!("KS D={d:.4} p={p:.3}"));
    println!(
        "  {} {:<18} AIC {:<13.2} BIC {:<13.2} loglik {:<13.2} {ks}",
        if best { "*" } else { " " },
        c.model,
        c.aic,
        c.bic,
        c.loglik
    );
    if c.model == "markov" {
        println!("      transition matrix {}", c.toml);
        return;
    }
    for p in &c.params {
        println!("      {:<15} {:<12.6} 95% CI [{:.6}, {:.6}]", p.name, p.value, p.lo, p.hi);
    }
}

fn fleet_text(
    a: &FitArgs,
    series: &Option<String>,
    samples: usize,
    interval_ms: u64,
    chosen: &[(String, Candidate)],
) -> String {
    let mut s = format!(
        "# Fitted by `iot-sim fit` from {}{}: {samples} samples, median step {interval_ms} ms.\n\
         # One device of the fitted profile on the null sink: change the protocol, topic and count.\n\n\
         [sink.null]\n\n[profiles.{}]\nprotocol = \"null\"\ninterval = \"{interval_ms}ms\"\n\n[profiles.{}.fields]\n",
        a.file.display(),
        series.as_ref().map(|s| format!(" (device {s:?})")).unwrap_or_default(),
        a.name,
        a.name
    );
    for (name, c) in chosen {
        s.push_str(&format!(
            "# {} (AIC {:.2}, BIC {:.2})\n{name:?} = {}\n",
            c.model, c.aic, c.bic, c.toml
        ));
    }
    s.push_str(&format!("\n[[fleet]]\nprofile = \"{}\"\ncount = 1\n", a.name));
    s
}
