//! `cargo xtask sweep`: runs the MNIST worker (the `burn-quant-mnist` package) for every bit width and
//! mode still missing, records each result as soon as it arrives, and draws the plots.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cargo::cargo;
use crate::plot::plot;
use burn_quant_mnist_protocol::WorkerMessage;

use crate::results::{Mode, ModeResult, Results, SweepConfig, write_atomic};

/// What to run.
pub struct Sweep {
    /// Everything that changes the numbers.
    pub config: SweepConfig,
    /// Bit widths.
    pub bits: Vec<u32>,
    /// MNIST directory passed to the worker.
    pub data_dir: Option<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
    /// Directory of the float checkpoint (`float.bpk`, `float.json`), shared by the methods of
    /// one sweep.
    pub float_dir: PathBuf,
    /// Recompute every result.
    pub force: bool,
    /// Retrain the float model even when its checkpoint matches.
    pub retrain_float: bool,
    /// Write each quantized model as ONNX next to the results (`ptq-4bit.onnx`); a model
    /// whose file is missing is recomputed.
    pub export_onnx: bool,
    /// The command line, recorded in the results.
    pub command: String,
}

impl Sweep {
    /// Runs the sweep.
    pub fn run(&self) -> Result<Results> {
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let json = self.out.join("results.json");
        let previous = json.exists().then(|| Results::load(&json)).transpose()?;
        let mut results = match Results::resume(previous, &self.config, self.force) {
            Some(previous) => {
                eprintln!("resuming {} (same configuration)", json.display());
                previous
            }
            None => Results::new(self.config.clone(), git_commit(), self.command.clone()),
        };
        self.prepare_checkpoint()?;
        let pending = results.pending(&self.bits, |bits, mode| {
            self.export_onnx && !self.out.join(mode.onnx_file(bits)).exists()
        });
        let computes = !pending.is_empty();
        if !computes {
            eprintln!(
                "nothing to do: every bit width asked is in {}",
                json.display()
            );
        } else {
            // Provenance of the run that computes something (a resume that computes nothing
            // keeps the command, commit and date of the results it holds).
            results.command = self.command.clone();
            results.git_commit = git_commit();
        }
        let worker = match pending.is_empty() {
            true => PathBuf::new(),
            false => build_worker(worker_features(&self.config.backend))?,
        };
        for (bits, modes) in pending {
            self.run_worker(&worker, bits, &modes, &mut results)?;
            print_summary(&results, bits);
        }
        if computes {
            results.date = utc_now();
        }
        results.save(&self.out)?;
        plot(&results, &self.out)?;
        eprintln!("results and plots in {}", self.out.display());
        Ok(results)
    }

    /// Keeps the float checkpoint only if it was trained with the same float settings.
    fn prepare_checkpoint(&self) -> Result<()> {
        let key = self.config.float_key().to_string();
        std::fs::create_dir_all(&self.float_dir)
            .with_context(|| format!("creating {}", self.float_dir.display()))?;
        let key_path = self.float_dir.join("float.json");
        let same = std::fs::read_to_string(&key_path).is_ok_and(|k| k == key);
        if self.retrain_float || !same {
            let _ = std::fs::remove_file(self.checkpoint());
        }
        write_atomic(&key_path, &key)
    }

    fn checkpoint(&self) -> PathBuf {
        self.float_dir.join("float.bpk")
    }

    fn worker_args(&self, bits: u32, modes: &[Mode]) -> Vec<String> {
        let c = &self.config;
        let number = |v: Option<usize>| v.map(|n| n.to_string());
        let mut args: Vec<String> = vec![
            "--model".into(),
            c.model.clone(),
            "--bits".into(),
            bits.to_string(),
            "--epochs".into(),
            c.epochs.to_string(),
            "--lr".into(),
            c.lr.to_string(),
            "--schedule".into(),
            c.schedule.name().into(),
            "--qat-epochs".into(),
            c.qat_epochs.to_string(),
            "--qat-lr".into(),
            c.qat_lr_at(bits).to_string(),
            "--momentum".into(),
            c.momentum.to_string(),
            "--calib-batches".into(),
            c.calib_batches.to_string(),
            "--seed".into(),
            c.seed.to_string(),
            "--checkpoint".into(),
            self.checkpoint().display().to_string(),
            "--messages".into(),
            "--qat-optimizer".into(),
            c.qat_optimizer.name().into(),
            "--qat-schedule".into(),
            c.qat_schedule.name().into(),
            "--qat-weight-decay".into(),
            c.qat_weight_decay.to_string(),
            "--weight-range".into(),
            c.weight_range.clone(),
            "--activation-range".into(),
            c.activation_range.clone(),
            "--activation-step-grad".into(),
            c.activation_step_grad.clone(),
            "--distill-weight".into(),
            c.distill_weight.to_string(),
            "--distill-temperature".into(),
            c.distill_temperature.to_string(),
        ];
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v);
            }
        };
        push("--train-limit", number(c.train_limit));
        push("--validation", number(c.validation));
        push("--test-limit", number(c.test_limit));
        push("--freeze-observers-after", number(c.freeze_observers_after));
        push("--freeze-bn-after", number(c.freeze_bn_after));
        push(
            "--data-dir",
            self.data_dir.as_ref().map(|d| d.display().to_string()),
        );
        if modes.len() == 1 {
            push("--only", Some(modes[0].name().into()));
        }
        push("--ema-momentum", c.ema_momentum.map(|m| m.to_string()));
        if c.lsq {
            args.push("--lsq".into());
        }
        if c.symmetric_weights {
            args.push("--symmetric-weights".into());
        }
        if c.integer_logits {
            args.push("--integer-logits".into());
        }
        if c.float_bias {
            args.push("--float-bias".into());
        }
        if c.bias_correction {
            args.push("--bias-correction".into());
        }
        if self.export_onnx {
            args.push("--export-onnx".into());
            args.push(self.out.display().to_string());
        }
        args
    }

    fn run_worker(
        &self,
        worker: &Path,
        bits: u32,
        modes: &[Mode],
        results: &mut Results,
    ) -> Result<()> {
        let mut child = Command::new(worker)
            .args(self.worker_args(bits, modes))
            .env("BURN_QUANT_DEVICE", &self.config.backend)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the worker {}", worker.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = std::thread::spawn(move || last_lines(stderr));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut progress = Progress::new(bits);
        let start = Instant::now();
        for line in stdout.lines() {
            let Some(message) = WorkerMessage::from_line(&line?) else {
                continue;
            };
            match message.context("a malformed message from the worker")? {
                WorkerMessage::Progress { phase, done, total } => {
                    progress.show(&phase, done, total)
                }
                message => self.record(message, results, start.elapsed().as_secs_f64())?,
            }
        }
        let status = child.wait()?;
        let tail = tail.join().unwrap_or_default();
        if !status.success() {
            bail!("the worker failed at {bits} bits ({status}); its last messages:\n{tail}");
        }
        Ok(())
    }

    fn record(&self, message: WorkerMessage, results: &mut Results, elapsed: f64) -> Result<()> {
        match message {
            WorkerMessage::Float {
                accuracy,
                seconds,
                trained,
            } => {
                results.float_accuracy = Some(accuracy);
                if trained {
                    results.wall_seconds.float = seconds;
                }
            }
            WorkerMessage::Quantized {
                bits,
                method,
                result,
                seconds,
            } => {
                let seconds = if seconds > 0.0 { seconds } else { elapsed };
                results.record(bits, method, result, seconds);
            }
            WorkerMessage::Progress { .. } => return Ok(()),
        }
        results.date = utc_now();
        results.save(&self.out)
    }
}

/// The MNIST worker's binary target (package `burn-quant-mnist`).
const WORKER_BIN: &str = "mnist";

/// Builds the worker and returns its executable.
///
/// It is built with the same package selection and targets as the README's test command
/// (`--workspace`, tests included), so that cargo resolves the same features and the sweep
/// reuses the test build instead of compiling Burn a second time.
pub fn build_worker(features: &str) -> Result<PathBuf> {
    let output = cargo()
        .args(["build", "--release", "--workspace", "--bins", "--tests"])
        .args([
            "--features",
            features,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build for the worker")?;
    if !output.status.success() {
        bail!("building the worker failed ({})", output.status);
    }
    worker_executable(&String::from_utf8_lossy(&output.stdout))
        .context("cargo built no `mnist` executable")
}

/// The executable of the worker among cargo's JSON build messages (the binary itself, not
/// its test harness, which `--tests` builds too).
fn worker_executable(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == WORKER_BIN)
        .filter(|m| m["profile"]["test"] == false)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Cargo features of the worker for `backend`: the CPU and wgpu backends share one build
/// (the one the tests use); `vulkan` must not be compiled next to the others on lavapipe.
pub fn worker_features(backend: &str) -> &'static str {
    match backend {
        "vulkan" => "vulkan",
        _ => "ndarray,wgpu",
    }
}

/// One progress bar per phase of the worker.
struct Progress {
    bits: u32,
    bars: MultiProgress,
    phases: HashMap<String, ProgressBar>,
    style: ProgressStyle,
}

impl Progress {
    fn new(bits: u32) -> Self {
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} batches, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        Self {
            bits,
            bars: MultiProgress::new(),
            phases: HashMap::new(),
            style,
        }
    }

    fn show(&mut self, phase: &str, done: u64, total: u64) {
        let bar = self.phases.entry(phase.to_string()).or_insert_with(|| {
            let bar = self.bars.add(ProgressBar::new(total));
            bar.set_style(self.style.clone());
            bar.set_prefix(if phase == "float" {
                "float".into()
            } else {
                format!("{}b {phase}", self.bits)
            });
            bar
        });
        bar.set_position(done);
        if done == total {
            bar.finish();
        }
    }
}

/// The last 20 lines of the worker's standard error (for error messages).
fn last_lines(stderr: impl std::io::Read) -> String {
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("XDG_RUNTIME_DIR") {
            continue;
        }
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    tail.join("\n")
}

fn print_summary(results: &Results, bits: u32) {
    let Some(row) = results.rows.iter().find(|r| r.bits == bits) else {
        return;
    };
    let show = |m: Option<ModeResult>| {
        m.map_or("–".into(), |m| {
            format!(
                "{:.2} % (fake-quant {:.2} %, agreement {:.2} %)",
                100.0 * m.integer,
                100.0 * m.fake_quant,
                100.0 * m.agreement
            )
        })
    };
    println!("{bits} bits: PTQ {}; QAT {}", show(row.ptq), show(row.qat));
}

/// The current commit, `unknown` outside a git checkout.
fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `YYYY-MM-DDTHH:MM:SSZ` now.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Checks a sweep's output directory: every file exists, the JSON parses, accuracies are
/// fractions in [0, 1], the PNG has a valid signature.
pub fn check_outputs(dir: &Path) -> Result<Results> {
    for name in [
        "results.json",
        "results.csv",
        "results.md",
        "accuracy.svg",
        "accuracy.png",
    ] {
        let path = dir.join(name);
        if !path.is_file() {
            bail!("{} is missing", path.display());
        }
    }
    let results = Results::load(&dir.join("results.json"))?;
    if results.rows.is_empty() {
        bail!("results.json has no rows");
    }
    let fractions = results
        .rows
        .iter()
        .flat_map(|r| [r.ptq, r.qat])
        .flatten()
        .flat_map(|m| [m.fake_quant, m.integer, m.agreement])
        .chain(results.float_accuracy);
    for v in fractions {
        if !(0.0..=1.0).contains(&v) {
            bail!("accuracy {v} is not a fraction in [0, 1]");
        }
    }
    let png = std::fs::read(dir.join("accuracy.png"))?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        bail!("accuracy.png is not a PNG");
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_is_well_formed() {
        let now = utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'));
    }

    #[test]
    fn the_worker_executable_is_found_among_build_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"burn_quant"},"executable":null}"#,
            "not json",
            r#"{"reason":"compiler-artifact","target":{"name":"mnist"},"profile":{"test":true},"executable":"/t/deps/mnist-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"mnist"},"profile":{"test":false},"executable":"/t/mnist"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            worker_executable(&messages),
            Some(PathBuf::from("/t/mnist"))
        );
        assert_eq!(worker_executable("{}"), None);
    }

    #[test]
    fn worker_gets_every_setting() {
        let sweep = Sweep {
            config: crate::results::tests::config(),
            bits: vec![4],
            data_dir: Some(PathBuf::from("/data")),
            out: PathBuf::from("/out"),
            float_dir: PathBuf::from("/out"),
            force: false,
            retrain_float: false,
            export_onnx: true,
            command: "cmd".into(),
        };
        let args = sweep.worker_args(4, &[Mode::Qat]).join(" ");
        for expected in [
            "--bits 4",
            "--only qat",
            "--train-limit 1000",
            "--data-dir /data",
            "--messages",
            "--qat-optimizer sgd",
            "--qat-schedule constant",
            "--weight-range minmax",
            "--activation-range minmax",
            "--activation-step-grad all",
            "--distill-weight 0",
            "--distill-temperature 4",
            "--export-onnx /out",
        ] {
            assert!(args.contains(expected), "{args}");
        }
        assert!(
            !sweep
                .worker_args(4, &Mode::BOTH)
                .join(" ")
                .contains("--only")
        );
    }

    #[test]
    fn checkpoint_is_dropped_when_float_settings_change() {
        let dir = std::env::temp_dir().join(format!("xtask-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut sweep = Sweep {
            config: crate::results::tests::config(),
            bits: vec![4],
            data_dir: None,
            out: dir.clone(),
            float_dir: dir.clone(),
            force: false,
            retrain_float: false,
            export_onnx: false,
            command: "cmd".into(),
        };
        sweep.prepare_checkpoint().unwrap();
        std::fs::write(sweep.checkpoint(), b"weights").unwrap();
        // Same float settings (QAT settings may differ): kept.
        sweep.config.qat_lr = 0.5;
        sweep.prepare_checkpoint().unwrap();
        assert!(sweep.checkpoint().exists());
        // Other float settings: dropped.
        sweep.config.epochs = 3;
        sweep.prepare_checkpoint().unwrap();
        assert!(!sweep.checkpoint().exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
