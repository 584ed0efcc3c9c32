//! The quantization methods a sweep compares, each a named set of default settings, and the
//! comparison of their results (table with wall times, one plot).

use std::path::Path;

use anyhow::{Result, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::plot::plot_methods;
use crate::results::{
    LrFromBits, LrSchedule, Mode, OptimizerKind, Results, SEED_PTQ, SEED_QAT, write_atomic,
};

/// A quantization method: its observers, schemes, protocol and QAT recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMethod {
    /// The seed's: running min/max observers, affine per-tensor weights, logits at the bit
    /// width, QAT with SGD at lr 0.001 (for comparison with the seed's table).
    Seed,
    /// The seed's with exponential-moving-average observers (momentum 0.01).
    Ema,
    /// Learned step sizes (LSQ) after a PTQ calibration (MSE ranges for weights and
    /// activations); weights symmetric narrow-range per output channel (ternary at 2
    /// bits, binary at 1); integer logits; SGD with a cosine schedule from lr 0.05 (0.01 from
    /// 7 bits on) and the paper's per-example gradient scale of activation steps; the recipe
    /// chosen on a validation split (docs/results.md).
    Lsq,
}

/// The settings a method chooses; the command line overrides them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodDefaults {
    /// EMA momentum of the observers.
    pub ema_momentum: Option<f64>,
    /// Learned step sizes.
    pub lsq: bool,
    /// Symmetric per-channel weights.
    pub symmetric_weights: bool,
    /// Integer logits.
    pub integer_logits: bool,
    /// QAT optimizer.
    pub qat_optimizer: OptimizerKind,
    /// QAT learning-rate schedule.
    pub qat_schedule: LrSchedule,
    /// QAT learning rate (full or quick sweep).
    pub qat_lr: f64,
    /// QAT learning rate from a bit width on.
    pub qat_lr_from: Option<LrFromBits>,
    /// Range of a batch of weights.
    pub weight_range: &'static str,
    /// Range of a batch of activations.
    pub activation_range: &'static str,
    /// LSQ: what `N` of an activation step's gradient scale counts.
    pub activation_step_grad: &'static str,
    /// QAT: weight of the float model's term in the distillation loss.
    pub distill_weight: f64,
    /// Bias correction from the calibration's input means.
    pub bias_correction: bool,
}

impl QuantMethod {
    /// Every method, in the order a default sweep runs them.
    pub const ALL: [QuantMethod; 3] = [QuantMethod::Seed, QuantMethod::Ema, QuantMethod::Lsq];

    /// Lower-case name (also the method's output folder).
    pub fn name(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Ema => "ema",
            Self::Lsq => "lsq",
        }
    }

    /// The method's default settings (`quick`: the quick preset's learning rate).
    pub fn defaults(self, quick: bool) -> MethodDefaults {
        let seed = MethodDefaults {
            ema_momentum: None,
            lsq: false,
            symmetric_weights: false,
            integer_logits: false,
            qat_optimizer: OptimizerKind::Sgd,
            qat_schedule: LrSchedule::Constant,
            qat_lr: if quick { 0.01 } else { 0.001 },
            qat_lr_from: None,
            weight_range: "minmax",
            activation_range: "minmax",
            activation_step_grad: "all",
            distill_weight: 0.0,
            bias_correction: false,
        };
        match self {
            Self::Seed => seed,
            Self::Ema => MethodDefaults {
                ema_momentum: Some(0.01),
                ..seed
            },
            // Chosen on the validation split (docs/validation/): MSE ranges for weights and
            // activations (the best PTQ accuracy at 2, 3 and 4 bits of the four calibrations
            // tried; also the start of QAT); SGD with a cosine schedule from lr 0.05 (at 2 bits
            // above 0.01 and 0.02 cosine, 0.003 constant, Adam 0.001 cosine; distilling the
            // float model did not add to it); lr 0.01 from 7 bits on (0.05 fell below it at 7
            // and 8 bits, level at 4-6); activation steps' gradient scale per example.
            Self::Lsq => MethodDefaults {
                lsq: true,
                symmetric_weights: true,
                integer_logits: true,
                qat_lr: 0.05,
                qat_lr_from: Some(LrFromBits { bits: 7, lr: 0.01 }),
                qat_schedule: LrSchedule::Cosine,
                weight_range: "mse",
                activation_range: "mse",
                activation_step_grad: "per-example",
                ..seed
            },
        }
    }
}

/// Writes `methods.md`, `methods.svg` and `methods.png` into `dir`: every method's PTQ and QAT
/// integer-engine accuracy per bit width, the seed's published numbers, and wall times.
pub fn write_comparison(methods: &[(QuantMethod, Results)], dir: &Path) -> Result<()> {
    let named: Vec<(&str, &Results)> = methods.iter().map(|(m, r)| (m.name(), r)).collect();
    plot_methods(&named, dir)?;
    write_atomic(&dir.join("methods.md"), &comparison_markdown(methods))
}

/// The comparison table (integer-engine accuracy, %) and wall times, in Markdown.
pub fn comparison_markdown(methods: &[(QuantMethod, Results)]) -> String {
    let mut bits: Vec<u32> = methods
        .iter()
        .flat_map(|(_, r)| r.rows.iter().map(|row| row.bits))
        .collect();
    bits.sort_unstable();
    bits.dedup();
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2}", 100.0 * v));
    let header: String = bits.iter().map(|b| format!(" {b} |")).collect();
    let rule: String = bits.iter().map(|_| "---|").collect();
    let first = methods.first().map(|(_, r)| r);
    let mut out = format!(
        "# {} on MNIST by method: integer-engine accuracy (%) vs bits\n\nFloat model: {} %.\n\n| method |{header}\n|---|{rule}\n",
        first.map_or("", |r| r.model.as_str()),
        pct(first.and_then(|r| r.float_accuracy)),
    );
    for (method, results) in methods {
        for mode in Mode::BOTH {
            let cells: String = bits
                .iter()
                .map(|&b| {
                    let row = results.rows.iter().find(|r| r.bits == b);
                    format!(
                        " {} |",
                        pct(row.and_then(|r| r.get(mode)).map(|m| m.integer))
                    )
                })
                .collect();
            out += &format!(
                "| {} {} |{cells}\n",
                method.name(),
                mode.name().to_uppercase()
            );
        }
    }
    for (name, table) in [
        ("seed article PTQ", SEED_PTQ),
        ("seed article QAT", SEED_QAT),
    ] {
        let cells: String = bits
            .iter()
            .map(|&b| match table.get(b as usize - 1) {
                Some(v) => format!(" {v:.0} |"),
                None => " – |".into(),
            })
            .collect();
        out += &format!("| {name} |{cells}\n");
    }
    out += "\nWall time (seconds; float training once, shared by the methods):\n\n| method | PTQ | QAT | total | lowest agreement |\n|---|---|---|---|---|\n";
    let mut total = first.map_or(0.0, |r| r.wall_seconds.float);
    for (method, results) in methods {
        let ptq: f64 = results.wall_seconds.ptq.values().sum();
        let qat: f64 = results.wall_seconds.qat.values().sum();
        total += ptq + qat;
        let agreement = results
            .rows
            .iter()
            .flat_map(|r| [r.ptq, r.qat])
            .flatten()
            .map(|m| m.agreement)
            .fold(None, |acc: Option<f64>, a| {
                Some(acc.map_or(a, |v| v.min(a)))
            });
        out += &format!(
            "| {} | {ptq:.0} | {qat:.0} | {:.0} | {} |\n",
            method.name(),
            ptq + qat,
            pct(agreement)
        );
    }
    out += &format!(
        "\nFloat training: {:.0} s. Whole sweep: {total:.0} s.\n",
        first.map_or(0.0, |r| r.wall_seconds.float)
    );
    for (method, results) in methods {
        out += &format!(
            "\n- `{}`: produced by `{}` (backend {}, seed {}, commit {}, {}); configuration `{}`\n",
            method.name(),
            results.command,
            results.backend,
            results.seed,
            results.git_commit,
            results.date,
            serde_json::to_string(&results.config).unwrap_or_default()
        );
    }
    out
}

/// Checks a multi-method sweep directory: the comparison files and every method's folder
/// (with `check_one`); returns how many methods it holds.
pub fn check_methods(dir: &Path, check_one: impl Fn(&Path) -> Result<Results>) -> Result<usize> {
    for name in ["methods.md", "methods.svg", "methods.png"] {
        if !dir.join(name).is_file() {
            bail!("{} is missing", dir.join(name).display());
        }
    }
    let mut found = 0;
    for method in QuantMethod::ALL {
        let sub = dir.join(method.name());
        if sub.is_dir() {
            check_one(&sub)?;
            found += 1;
        }
    }
    if found == 0 {
        bail!("{} holds no method folder", dir.display());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{config, result};

    #[test]
    fn the_comparison_lists_every_method_and_mode_with_wall_times() {
        let mut methods = Vec::new();
        for (i, method) in [QuantMethod::Seed, QuantMethod::Lsq]
            .into_iter()
            .enumerate()
        {
            let mut r = Results::new(config(), "abc".into(), "cmd".into());
            r.float_accuracy = Some(0.98);
            r.wall_seconds.float = 100.0;
            r.record(2, Mode::Ptq, result(0.5 + 0.1 * i as f64), 10.0);
            r.record(2, Mode::Qat, result(0.6 + 0.1 * i as f64), 20.0);
            methods.push((method, r));
        }
        let md = comparison_markdown(&methods);
        assert!(md.contains("| seed PTQ | 50.00 |"), "{md}");
        assert!(md.contains("| lsq QAT | 70.00 |"), "{md}");
        assert!(md.contains("| seed article QAT | 63 |"), "{md}");
        assert!(md.contains("| lsq | 10 | 20 | 30 | 100.00 |"), "{md}");
        assert!(md.contains("Whole sweep: 160 s."), "{md}");
    }

    #[test]
    fn lsq_differs_from_the_seed_only_where_it_says() {
        let (seed, lsq) = (
            QuantMethod::Seed.defaults(false),
            QuantMethod::Lsq.defaults(false),
        );
        assert!(lsq.lsq && lsq.symmetric_weights && lsq.integer_logits);
        assert!(!seed.lsq && !seed.integer_logits && seed.ema_momentum.is_none());
        assert_eq!(QuantMethod::Ema.defaults(false).ema_momentum, Some(0.01));
        assert_eq!(seed.qat_lr_from, None);
        assert_eq!(lsq.qat_lr_from.map(|r| r.bits), Some(7));
    }
}
