//! The sweep's results: data model, resume logic and the JSON / CSV / Markdown files.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::methods::QuantMethod;

pub use burn_quant_mnist_protocol::{LrSchedule, Method as Mode, ModeResult, OptimizerKind};

/// The published numbers of the seed article (MNIST test accuracy, %, bits 1..=8).
pub const SEED_PTQ: [f64; 8] = [10.0, 47.0, 83.0, 96.0, 98.0, 98.0, 98.0, 98.0];
/// See [`SEED_PTQ`].
pub const SEED_QAT: [f64; 8] = [10.0, 63.0, 90.0, 97.0, 98.0, 98.0, 98.0, 98.0];

/// Everything that changes the numbers (bit widths excluded: a sweep can be extended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepConfig {
    /// The method whose defaults these settings started from.
    #[serde(default = "seed_method")]
    pub method: QuantMethod,
    /// Model name.
    pub model: String,
    /// Backend (cargo feature) of the worker.
    pub backend: String,
    /// Float training epochs.
    pub epochs: usize,
    /// Float learning rate.
    pub lr: f64,
    /// Float learning-rate schedule.
    #[serde(default = "constant")]
    pub schedule: LrSchedule,
    /// QAT epochs.
    pub qat_epochs: usize,
    /// QAT learning rate.
    pub qat_lr: f64,
    /// QAT learning rate from a bit width on (`None`: `qat_lr` at every width).
    #[serde(default)]
    pub qat_lr_from: Option<LrFromBits>,
    /// SGD momentum.
    pub momentum: f64,
    /// PTQ calibration batches.
    pub calib_batches: usize,
    /// Seed.
    pub seed: u64,
    /// Training images used (all when `None`).
    pub train_limit: Option<usize>,
    /// The last N training images held out and evaluated on instead of the test set.
    #[serde(default)]
    pub validation: Option<usize>,
    /// Test images used (all when `None`).
    pub test_limit: Option<usize>,
    /// Bias kept in float in the fake-quantized model.
    pub float_bias: bool,
    /// EMA momentum of the observers (`None`: the seed's running min/max).
    #[serde(default)]
    pub ema_momentum: Option<f64>,
    /// LSQ: QAT learns the step sizes.
    #[serde(default)]
    pub lsq: bool,
    /// Symmetric narrow-range per-channel weights (from 2 bits).
    #[serde(default)]
    pub symmetric_weights: bool,
    /// Integer logits (the classifier's accumulator is the output).
    #[serde(default)]
    pub integer_logits: bool,
    /// QAT optimizer.
    #[serde(default = "sgd")]
    pub qat_optimizer: OptimizerKind,
    /// QAT learning-rate schedule.
    #[serde(default = "constant")]
    pub qat_schedule: LrSchedule,
    /// QAT weight decay.
    #[serde(default)]
    pub qat_weight_decay: f64,
    /// QAT: observers stop observing after this many steps.
    #[serde(default)]
    pub freeze_observers_after: Option<usize>,
    /// QAT: BatchNorm statistics frozen after this many steps.
    #[serde(default)]
    pub freeze_bn_after: Option<usize>,
    /// How a batch of weights gives a range (`minmax`, `mse`, `percentile:P`).
    #[serde(default = "minmax")]
    pub weight_range: String,
    /// How a batch of activations gives a range.
    #[serde(default = "minmax")]
    pub activation_range: String,
    /// LSQ: what `N` of an activation step's gradient scale counts (`all`, `per-example`).
    #[serde(default = "all")]
    pub activation_step_grad: String,
    /// QAT: weight of the float model's term in the distillation loss (0: labels only).
    #[serde(default)]
    pub distill_weight: f64,
    /// QAT: temperature of the distillation's softmaxes.
    #[serde(default = "default_distill_temperature")]
    pub distill_temperature: f64,
    /// Bias correction from the calibration's input means (PTQ, and LSQ's calibration).
    #[serde(default)]
    pub bias_correction: bool,
}

/// The distillation temperature when none is given (the worker's default too).
pub const DISTILL_TEMPERATURE: f64 = 4.0;

fn default_distill_temperature() -> f64 {
    DISTILL_TEMPERATURE
}

/// A QAT learning rate for the bit widths from `bits` on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrFromBits {
    /// The narrowest bit width it applies to.
    pub bits: u32,
    /// The learning rate.
    pub lr: f64,
}

impl LrFromBits {
    /// Parses `BITS:LR`, e.g. `5:0.003`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (bits, lr) = s
            .split_once(':')
            .ok_or_else(|| format!("expected BITS:LR, e.g. 5:0.003, got `{s}`"))?;
        let bits = bits
            .trim()
            .parse()
            .map_err(|e| format!("bits `{bits}`: {e}"))?;
        let lr: f64 = lr.trim().parse().map_err(|e| format!("lr `{lr}`: {e}"))?;
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("the learning rate must be positive, got {lr}"));
        }
        Ok(Self { bits, lr })
    }
}

fn all() -> String {
    "all".into()
}

fn minmax() -> String {
    "minmax".into()
}

fn seed_method() -> QuantMethod {
    QuantMethod::Seed
}

fn sgd() -> OptimizerKind {
    OptimizerKind::Sgd
}

fn constant() -> LrSchedule {
    LrSchedule::Constant
}

impl SweepConfig {
    /// The QAT learning rate at `bits`.
    pub fn qat_lr_at(&self, bits: u32) -> f64 {
        match self.qat_lr_from {
            Some(from) if bits >= from.bits => from.lr,
            _ => self.qat_lr,
        }
    }

    /// The part of the configuration the float model depends on, and the version of the
    /// checkpoint's layout (2: the models written with burn-quant's one-forward layers; the
    /// observers' learned steps are optional in it).
    pub fn float_key(&self) -> serde_json::Value {
        let mut key = serde_json::json!({
            "layout": 2,
            "model": self.model, "epochs": self.epochs, "lr": self.lr,
            "momentum": self.momentum, "seed": self.seed, "train_limit": self.train_limit,
        });
        // Only when set, so that the checkpoints of earlier runs stay valid.
        if let Some(n) = self.validation {
            key["validation"] = n.into();
        }
        if self.schedule != LrSchedule::Constant {
            key["schedule"] = self.schedule.name().into();
        }
        key
    }
}

/// One bit width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Bit width.
    pub bits: u32,
    /// Post-training quantization.
    pub ptq: Option<ModeResult>,
    /// Quantization-aware training.
    pub qat: Option<ModeResult>,
}

/// Wall time per phase, seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WallSeconds {
    /// Float training (0 when loaded from the checkpoint).
    pub float: f64,
    /// PTQ per bit width.
    pub ptq: BTreeMap<u32, f64>,
    /// QAT per bit width.
    pub qat: BTreeMap<u32, f64>,
}

/// The whole `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Model name.
    pub model: String,
    /// Float test accuracy.
    pub float_accuracy: Option<f64>,
    /// Per bit width, sorted.
    pub rows: Vec<Row>,
    /// Wall time per phase.
    pub wall_seconds: WallSeconds,
    /// The configuration.
    pub config: SweepConfig,
    /// Backend.
    pub backend: String,
    /// Seed.
    pub seed: u64,
    /// UTC date of the last update.
    pub date: String,
    /// Git commit of the code.
    pub git_commit: String,
    /// The command that produced the results.
    pub command: String,
}

impl Results {
    /// Empty results for `config`.
    pub fn new(config: SweepConfig, git_commit: String, command: String) -> Self {
        Self {
            model: config.model.clone(),
            float_accuracy: None,
            rows: Vec::new(),
            wall_seconds: WallSeconds::default(),
            backend: config.backend.clone(),
            seed: config.seed,
            config,
            date: String::new(),
            git_commit,
            command,
        }
    }

    /// The results of a previous run to resume: kept only when its configuration matches.
    pub fn resume(previous: Option<Results>, config: &SweepConfig, force: bool) -> Option<Results> {
        previous.filter(|p| !force && &p.config == config)
    }

    /// The modes still missing at each of `bits`, in order, and those for which `also` holds
    /// (e.g. an exported model that is missing).
    pub fn pending(&self, bits: &[u32], also: impl Fn(u32, Mode) -> bool) -> Vec<(u32, Vec<Mode>)> {
        bits.iter()
            .filter_map(|&b| {
                let row = self.rows.iter().find(|r| r.bits == b);
                let missing: Vec<Mode> = Mode::BOTH
                    .into_iter()
                    .filter(|&m| row.and_then(|r| r.get(m)).is_none() || also(b, m))
                    .collect();
                (!missing.is_empty()).then_some((b, missing))
            })
            .collect()
    }

    /// Stores one finished (bits, mode).
    pub fn record(&mut self, bits: u32, mode: Mode, result: ModeResult, seconds: f64) {
        let index = match self.rows.iter().position(|r| r.bits == bits) {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    bits,
                    ptq: None,
                    qat: None,
                });
                self.rows.sort_by_key(|r| r.bits);
                self.rows
                    .iter()
                    .position(|r| r.bits == bits)
                    .expect("just added")
            }
        };
        let row = &mut self.rows[index];
        match mode {
            Mode::Ptq => row.ptq = Some(result),
            Mode::Qat => row.qat = Some(result),
        }
        let times = match mode {
            Mode::Ptq => &mut self.wall_seconds.ptq,
            Mode::Qat => &mut self.wall_seconds.qat,
        };
        times.insert(bits, seconds);
    }

    /// Reads `results.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes `results.json`, `results.csv` and `results.md` into `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(
            &dir.join("results.json"),
            &serde_json::to_string_pretty(self)?,
        )?;
        write_atomic(&dir.join("results.csv"), &self.csv())?;
        write_atomic(&dir.join("results.md"), &self.markdown())
    }

    /// One line per (bits, mode).
    pub fn csv(&self) -> String {
        let mut out = String::from("bits,mode,fake_quant,integer,agreement,seconds\n");
        for row in &self.rows {
            for mode in Mode::BOTH {
                if let Some(r) = row.get(mode) {
                    let secs = self.seconds(row.bits, mode).unwrap_or(f64::NAN);
                    out += &format!(
                        "{},{},{:.4},{:.4},{:.4},{secs:.1}\n",
                        row.bits,
                        mode.name(),
                        r.fake_quant,
                        r.integer,
                        r.agreement
                    );
                }
            }
        }
        out
    }

    fn seconds(&self, bits: u32, mode: Mode) -> Option<f64> {
        match mode {
            Mode::Ptq => self.wall_seconds.ptq.get(&bits).copied(),
            Mode::Qat => self.wall_seconds.qat.get(&bits).copied(),
        }
    }

    /// The seed's table (integer-engine accuracy, %) plus details and provenance.
    pub fn markdown(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2}", 100.0 * v));
        let bits: Vec<u32> = self.rows.iter().map(|r| r.bits).collect();
        let header: String = bits.iter().map(|b| format!(" {b} |")).collect();
        let rule: String = bits.iter().map(|_| "---|").collect();
        let line = |name: &str, f: &dyn Fn(&Row) -> Option<f64>| -> String {
            let cells: String = self
                .rows
                .iter()
                .map(|r| format!(" {} |", pct(f(r))))
                .collect();
            format!("| {name} |{cells}\n")
        };
        let seed = |table: &[f64; 8], b: u32| table.get(b as usize - 1).map(|v| v / 100.0);
        let mut out = format!(
            "# {} on MNIST: test accuracy (%) vs bits\n\nFloat model: {} %.\n\n",
            self.model,
            pct(self.float_accuracy)
        );
        out += &format!("| bit |{header}\n|---|{rule}\n");
        out += &line("PTQ", &|r| r.ptq.map(|m| m.integer));
        out += &line("QAT", &|r| r.qat.map(|m| m.integer));
        out += &line("PTQ (seed)", &|r| seed(&SEED_PTQ, r.bits));
        out += &line("QAT (seed)", &|r| seed(&SEED_QAT, r.bits));
        out += "\nPTQ and QAT rows: integer engine. Details (fake-quant / integer / agreement, %):\n\n";
        out += "| bits | PTQ fake-quant | PTQ integer | PTQ agreement | QAT fake-quant | QAT integer | QAT agreement |\n|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            let cells = |m: Option<ModeResult>| {
                format!(
                    "{} | {} | {}",
                    pct(m.map(|m| m.fake_quant)),
                    pct(m.map(|m| m.integer)),
                    pct(m.map(|m| m.agreement))
                )
            };
            out += &format!("| {} | {} | {} |\n", r.bits, cells(r.ptq), cells(r.qat));
        }
        out += &format!(
            "\nProduced by `{}` (backend {}, seed {}, commit {}, {}).\n\nConfiguration: `{}`\n",
            self.command,
            self.backend,
            self.seed,
            self.git_commit,
            self.date,
            serde_json::to_string(&self.config).unwrap_or_default()
        );
        out
    }
}

impl Row {
    /// The result of `mode`, if done.
    pub fn get(&self, mode: Mode) -> Option<ModeResult> {
        match mode {
            Mode::Ptq => self.ptq,
            Mode::Qat => self.qat,
        }
    }
}

/// Writes `contents` to a temporary file beside `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config() -> SweepConfig {
        SweepConfig {
            method: QuantMethod::Seed,
            model: "net".into(),
            backend: "flex".into(),
            epochs: 1,
            lr: 0.01,
            schedule: LrSchedule::Constant,
            qat_epochs: 1,
            qat_lr: 0.001,
            qat_lr_from: None,
            momentum: 0.5,
            calib_batches: 20,
            seed: 1,
            train_limit: Some(1000),
            validation: None,
            test_limit: None,
            float_bias: false,
            ema_momentum: None,
            lsq: false,
            symmetric_weights: false,
            integer_logits: false,
            qat_optimizer: OptimizerKind::Sgd,
            qat_schedule: LrSchedule::Constant,
            qat_weight_decay: 0.0,
            freeze_observers_after: None,
            freeze_bn_after: None,
            weight_range: "minmax".into(),
            activation_range: "minmax".into(),
            activation_step_grad: "all".into(),
            distill_weight: 0.0,
            distill_temperature: DISTILL_TEMPERATURE,
            bias_correction: false,
        }
    }

    pub(crate) fn result(v: f64) -> ModeResult {
        ModeResult {
            fake_quant: v,
            integer: v,
            agreement: 1.0,
        }
    }

    #[test]
    fn the_float_key_names_a_schedule_only_when_it_is_not_the_reference() {
        let mut c = config();
        let reference = c.float_key();
        assert!(reference.get("schedule").is_none());
        c.schedule = LrSchedule::Cosine;
        assert_eq!(c.float_key()["schedule"], "cosine");
        assert_ne!(c.float_key(), reference);
    }

    #[test]
    fn a_learning_rate_from_a_bit_width_on() {
        let mut c = config();
        assert_eq!(c.qat_lr_at(8), c.qat_lr);
        c.qat_lr_from = Some(LrFromBits::parse("5:0.003").unwrap());
        assert_eq!((c.qat_lr_at(4), c.qat_lr_at(5)), (c.qat_lr, 0.003));
        for bad in ["5", "x:0.1", "5:-1", "5:nan"] {
            assert!(LrFromBits::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resume_only_with_the_same_config() {
        let previous = Results::new(config(), "abc".into(), "cmd".into());
        assert!(Results::resume(Some(previous.clone()), &config(), false).is_some());
        assert!(Results::resume(Some(previous.clone()), &config(), true).is_none());
        let other = SweepConfig {
            seed: 2,
            ..config()
        };
        assert!(Results::resume(Some(previous.clone()), &other, false).is_none());
        let ema = SweepConfig {
            ema_momentum: Some(0.01),
            ..config()
        };
        assert!(Results::resume(Some(previous), &ema, false).is_none());
    }

    #[test]
    fn configs_written_before_the_ema_option_still_parse() {
        let mut json = serde_json::to_value(config()).unwrap();
        json.as_object_mut().unwrap().remove("ema_momentum");
        let parsed: SweepConfig = serde_json::from_value(json).unwrap();
        assert_eq!(parsed, config());
    }

    #[test]
    fn pending_lists_what_is_missing() {
        let mut r = Results::new(config(), "abc".into(), "cmd".into());
        r.record(4, Mode::Ptq, result(0.9), 1.0);
        r.record(2, Mode::Ptq, result(0.5), 1.0);
        r.record(2, Mode::Qat, result(0.6), 2.0);
        assert_eq!(
            r.pending(&[1, 2, 4], |_, _| false),
            vec![(1, vec![Mode::Ptq, Mode::Qat]), (4, vec![Mode::Qat])]
        );
        assert_eq!(
            r.pending(&[2, 4], |b, m| b == 2 && m == Mode::Ptq),
            vec![(2, vec![Mode::Ptq]), (4, vec![Mode::Qat])]
        );
        assert_eq!(
            r.rows.iter().map(|r| r.bits).collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert_eq!(r.wall_seconds.qat[&2], 2.0);
    }

    #[test]
    fn files_round_trip_and_are_written_atomically() {
        let dir = std::env::temp_dir().join(format!("xtask-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Results::new(config(), "abc".into(), "cargo xtask sweep".into());
        r.float_accuracy = Some(0.98);
        r.record(8, Mode::Ptq, result(0.97), 3.0);
        r.save(&dir).unwrap();
        assert_eq!(Results::load(&dir.join("results.json")).unwrap(), r);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "8,ptq,0.9700,0.9700,1.0000,3.0"
        );
        let md = std::fs::read_to_string(dir.join("results.md")).unwrap();
        assert!(
            md.contains("| bit | 8 |") && md.contains("| PTQ | 97.00 |"),
            "{md}"
        );
        assert!(md.contains("| QAT | – |") && md.contains("| PTQ (seed) | 98.00 |"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
