//! What the MNIST worker (`burn-quant-mnist`) tells `cargo xtask sweep`: one typed message per
//! line on its standard output, and the bit-width list both parse the same way.
//!
//! This crate has no Burn dependency, so that `xtask` stays light.

use serde::{Deserialize, Serialize};

/// Every message line starts with this prefix; other lines are for people.
pub const PREFIX: &str = "BURN_QUANT_MNIST ";

/// The models the worker trains (`--model`).
pub const MODELS: [&str; 3] = ["net", "netbn", "resnet"];

/// Post-training quantization or quantization-aware training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Post-training quantization.
    Ptq,
    /// Quantization-aware training.
    Qat,
}

impl Method {
    /// Both methods, in the order they run.
    pub const BOTH: [Method; 2] = [Method::Ptq, Method::Qat];

    /// Lower-case name (`ptq`, `qat`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Ptq => "ptq",
            Method::Qat => "qat",
        }
    }

    /// Parses [`Method::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::BOTH.into_iter().find(|m| m.name() == name)
    }

    /// The file the worker exports this method's model at `bits` to (`qat-4bit.onnx`).
    pub fn onnx_file(self, bits: u32) -> String {
        format!("{}-{bits}bit.onnx", self.name())
    }
}

/// Accuracies (fractions in `[0, 1]`) of one method at one bit width.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModeResult {
    /// Fake-quantized model.
    pub fake_quant: f64,
    /// Integer engine.
    pub integer: f64,
    /// Fraction of test images with the same prediction on both.
    pub agreement: f64,
}

/// One message of the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// `done` of `total` batches of a phase (`float`, `ptq`, `qat`) are finished.
    Progress {
        /// The phase.
        phase: String,
        /// Batches done.
        done: u64,
        /// Batches in the phase.
        total: u64,
    },
    /// The float model is ready.
    Float {
        /// Test accuracy.
        accuracy: f64,
        /// Seconds spent training or loading it.
        seconds: f64,
        /// Whether it was trained in this run (else loaded from the checkpoint).
        trained: bool,
    },
    /// One method at one bit width is finished.
    Quantized {
        /// Bit width.
        bits: u32,
        /// PTQ or QAT.
        method: Method,
        /// Its accuracies.
        result: ModeResult,
        /// Wall time of this step.
        seconds: f64,
    },
}

impl WorkerMessage {
    /// The message as one line, with [`PREFIX`].
    pub fn to_line(&self) -> String {
        format!(
            "{PREFIX}{}",
            serde_json::to_string(self).expect("messages serialize")
        )
    }

    /// Parses a line written by [`WorkerMessage::to_line`]; `None` for other lines, an error
    /// for a prefixed line that does not parse.
    pub fn from_line(line: &str) -> Option<Result<Self, serde_json::Error>> {
        line.strip_prefix(PREFIX).map(serde_json::from_str)
    }
}

/// The optimizer of a training loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (PyTorch semantics: no dampening).
    Sgd,
    /// Adam (β = 0.9, 0.999); `momentum` is not used.
    Adam,
}

impl OptimizerKind {
    /// Parses `sgd` or `adam`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            _ => Err(format!("optimizer must be `sgd` or `adam`, got `{name}`")),
        }
    }

    /// Lower-case name, as [`OptimizerKind::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Adam => "adam",
        }
    }
}

/// How the learning rate changes over a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same learning rate at every step.
    Constant,
    /// Cosine annealing from the learning rate to 0 over all steps (no restarts).
    Cosine,
}

impl LrSchedule {
    /// Parses `constant` or `cosine`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            _ => Err(format!(
                "learning-rate schedule must be `constant` or `cosine`, got `{name}`"
            )),
        }
    }

    /// Lower-case name, as [`LrSchedule::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
        }
    }

    /// The learning rate at step `step` of `total` for a base rate `lr`.
    ///
    /// ```
    /// use burn_quant_mnist_protocol::LrSchedule;
    /// assert_eq!(LrSchedule::Constant.lr_at(0.1, 5, 10), 0.1);
    /// assert_eq!(LrSchedule::Cosine.lr_at(0.1, 0, 10), 0.1);
    /// assert!((LrSchedule::Cosine.lr_at(0.1, 5, 10) - 0.05).abs() < 1e-12);
    /// ```
    pub fn lr_at(self, lr: f64, step: usize, total: usize) -> f64 {
        match self {
            Self::Constant => lr,
            Self::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                0.5 * lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Parses an EMA momentum, the weight of each new batch, in `(0, 1]` (the worker's and
/// `cargo xtask sweep`'s `--ema-momentum`).
pub fn parse_momentum(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(m) if m > 0.0 && m <= 1.0 => Ok(m),
        _ => Err(format!(
            "EMA momentum must be a number in (0, 1], got `{s}`"
        )),
    }
}

/// Parses bit widths: a range `1..8`, `1..=8` or `1-8`, a list `2,4,8`, or both (`1-3,8`);
/// sorted, without duplicates, each in `1..=16`.
///
/// ```
/// use burn_quant_mnist_protocol::parse_bits;
/// assert_eq!(parse_bits("1..3,8").unwrap(), vec![1, 2, 3, 8]);
/// assert_eq!(parse_bits("4-2").is_err(), true);
/// ```
pub fn parse_bits(s: &str) -> Result<Vec<u32>, String> {
    let mut bits = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once("..").or_else(|| part.split_once('-')) {
            Some((lo, hi)) => (lo, hi.trim_start_matches('=')),
            None => (part, part),
        };
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("bad bit width `{part}`"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo == 0 || hi > 16 || lo > hi {
            return Err(format!("bit widths must lie in 1..=16, got `{part}`"));
        }
        bits.extend(lo..=hi);
    }
    bits.sort_unstable();
    bits.dedup();
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_a_line() {
        let messages = [
            WorkerMessage::Progress {
                phase: "qat".into(),
                done: 3,
                total: 10,
            },
            WorkerMessage::Float {
                accuracy: 0.98,
                seconds: 1.5,
                trained: true,
            },
            WorkerMessage::Quantized {
                bits: 4,
                method: Method::Qat,
                result: ModeResult {
                    fake_quant: 0.97,
                    integer: 0.97,
                    agreement: 1.0,
                },
                seconds: 2.0,
            },
        ];
        for m in messages {
            let line = m.to_line();
            assert_eq!(WorkerMessage::from_line(&line).unwrap().unwrap(), m);
        }
        assert!(WorkerMessage::from_line("float accuracy: 98 %").is_none());
        assert!(
            WorkerMessage::from_line(&format!("{PREFIX}{{bad"))
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn bit_lists() {
        assert_eq!(parse_bits("1..8").unwrap(), (1..=8).collect::<Vec<_>>());
        assert_eq!(parse_bits("1..=2, 8,2").unwrap(), vec![1, 2, 8]);
        assert_eq!(parse_bits("3-4").unwrap(), vec![3, 4]);
        for bad in ["0", "17", "x", "5..2", ""] {
            assert!(parse_bits(bad).is_err(), "{bad}");
        }
    }
}
