//! `cargo xtask bench`: runs the criterion benchmarks and turns each measured pair into the
//! ratios users compare (`bench.json`, `bench.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cargo::cargo;
use crate::results::write_atomic;
use crate::sweep::{utc_now, worker_features};

/// Batches of 64 in one MNIST training epoch.
const BATCHES_PER_EPOCH: f64 = 938.0;

/// Runs `cargo bench --bench quant` for `backends` (unless `summarize_only`: then the last
/// criterion measurements are summarized again) and writes the summary into `out`.
pub fn run(backends: &[String], quick: bool, summarize_only: bool, out: &Path) -> Result<()> {
    if !summarize_only {
        run_criterion(backends, quick)?;
    }
    let times = read_criterion(&criterion_dir())?;
    let summary = summarize(&times, backends);
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(&summary)?;
    write_atomic(&out.join("bench.json"), &json)?;
    write_atomic(&out.join("bench.md"), &markdown(&summary))?;
    println!("{}", markdown(&summary));
    eprintln!("bench.json and bench.md in {}", out.display());
    Ok(())
}

fn run_criterion(backends: &[String], quick: bool) -> Result<()> {
    let features = if backends.iter().any(|b| b == "vulkan") {
        "vulkan"
    } else {
        worker_features("flex")
    };
    let mut cmd = cargo();
    cmd.args([
        "bench",
        "--package",
        "burn-quant-mnist",
        "--bench",
        "quant",
        "--features",
        features,
        "--",
    ])
    .env("BURN_QUANT_BENCH_BACKENDS", backends.join(","));
    if quick {
        cmd.args(["--warm-up-time", "1", "--measurement-time", "3"]);
    }
    let status = cmd.status().context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }
    Ok(())
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("criterion")
}

/// Mean time (seconds) of every benchmark under `dir`, by its full id
/// (`group/backend/function[/parameter]`).
pub fn read_criterion(dir: &Path) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.ends_with("new/benchmark.json") {
                let meta: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
                let estimates = path.with_file_name("estimates.json");
                let est: Value = serde_json::from_str(&std::fs::read_to_string(&estimates)?)?;
                let id = meta["full_id"].as_str().unwrap_or_default().to_string();
                let ns = est["mean"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
                out.insert(id, ns * 1e-9);
            }
        }
    }
    Ok(out)
}

/// The ratios per backend.
pub fn summarize(times: &BTreeMap<String, f64>, backends: &[String]) -> Value {
    let mut per_backend = serde_json::Map::new();
    for backend in backends {
        let t = |group: &str, name: &str| times.get(&format!("{group}/{backend}/{name}")).copied();
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let (float_step, qat_step) = (t("train_step", "float"), t("train_step", "qat"));
        per_backend.insert(
            backend.clone(),
            json!({
                "fake_quant_over_elementwise": ratio(t("elementwise", "fake_quant"), t("elementwise", "mul_scalar")),
                "fake_quant_backward_over_elementwise": ratio(t("elementwise", "fake_quant_backward"), t("elementwise", "mul_scalar_backward")),
                "fake_quant_elements_per_s": t("elementwise", "fake_quant").map(|s| (1u64 << 20) as f64 / s),
                "qat_over_float_step": ratio(qat_step, float_step),
                "lsq_over_float_step": ratio(t("train_step", "qat_lsq"), float_step),
                "float_step_s": float_step,
                "qat_step_s": qat_step,
                "float_epoch_s": float_step.map(|s| s * BATCHES_PER_EPOCH),
                "qat_epoch_s": qat_step.map(|s| s * BATCHES_PER_EPOCH),
                "float_images_per_s": float_step.map(|s| 64.0 / s),
                "qat_images_per_s": qat_step.map(|s| 64.0 / s),
                "learner_over_loop_epoch": ratio(t("epoch", "learner"), t("epoch", "loop")),
                "int_over_float_images_per_s_b1": ratio(t("inference", "float/1"), t("inference", "integer/1")),
                "int_over_float_images_per_s_b256": ratio(t("inference", "float/256"), t("inference", "integer/256")),
                "int_images_per_s_b256": t("inference", "integer/256").map(|s| 256.0 / s),
                "float_images_per_s_b256": t("inference", "float/256").map(|s| 256.0 / s),
            }),
        );
    }
    json!({ "date": utc_now(), "backends": per_backend, "torch_reference": torch_reference() })
}

/// What PyTorch takes on this project's 2-core CI kind of machine for the same epochs (the
/// performance issue's side-by-side run), and how to measure it again.
fn torch_reference() -> Value {
    json!({
        "float_epoch_s": 8.5,
        "qat_epoch_s": 11.0,
        "setup": "PyTorch 2.15, 2 threads, plain loop over tensors in memory, identity-STE fake-quant in Python, 2-core CI machine",
        "reproduce": "python3 examples/mnist/benches/torch_reference.py --threads 2",
    })
}

fn markdown(summary: &Value) -> String {
    let mut out = String::from("| backend | metric | value |\n|---|---|---|\n");
    if let Some(map) = summary["backends"].as_object() {
        for (backend, metrics) in map {
            for (name, value) in metrics.as_object().into_iter().flatten() {
                let shown = value.as_f64().map_or("–".into(), |v| format!("{v:.3}"));
                out += &format!("| {backend} | {name} | {shown} |\n");
            }
        }
    }
    out += &comparison(summary);
    out + &format!(
        "\nSummarized {} from criterion's latest measurements.\n",
        summary["date"].as_str().unwrap_or("")
    )
}

/// How much faster flex is than ndarray, when both were measured.
fn comparison(summary: &Value) -> String {
    let metric = |backend: &str, name: &str| summary["backends"][backend][name].as_f64();
    let mut out = String::new();
    for (name, what) in [
        ("float_step_s", "float training step (batch 64)"),
        ("qat_step_s", "QAT training step (batch 64)"),
    ] {
        if let (Some(flex), Some(ndarray)) = (metric("flex", name), metric("ndarray", name)) {
            out += &format!(
                "\n{what}: ndarray takes {:.2} times as long as flex.\n",
                ndarray / flex
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_come_from_pairs_of_the_same_backend() {
        let times: BTreeMap<String, f64> = [
            ("elementwise/flex/mul_scalar", 1.0),
            ("elementwise/flex/fake_quant", 1.5),
            ("train_step/flex/float", 0.02),
            ("train_step/flex/qat", 0.025),
            ("train_step/flex/qat_lsq", 0.03),
            ("inference/flex/float/256", 0.2),
            ("inference/flex/integer/256", 0.1),
            ("train_step/ndarray/float", 1.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let s = summarize(&times, &["flex".into(), "ndarray".into()]);
        let flex = &s["backends"]["flex"];
        assert_eq!(flex["fake_quant_over_elementwise"], 1.5);
        assert_eq!(flex["qat_over_float_step"], 1.25);
        assert!((flex["lsq_over_float_step"].as_f64().unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(flex["int_over_float_images_per_s_b256"], 2.0);
        assert!((flex["float_epoch_s"].as_f64().unwrap() - 18.76).abs() < 1e-9);
        assert!(s["backends"]["ndarray"]["qat_over_float_step"].is_null());
        assert!(comparison(&s).contains("ndarray takes 50.00 times as long as flex"));
    }
}
