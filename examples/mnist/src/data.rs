//! MNIST from the standard IDX files (gzipped or raw), normalised as the reference does.
//!
//! The directory comes from a flag (programs pass it to [`Mnist::load`]), else from the
//! `BURN_QUANT_MNIST_DIR` environment variable, else from Burn's dataset cache
//! (`$XDG_CACHE_HOME/burn-dataset/mnist` or `~/.cache/burn-dataset/mnist`), where Burn's
//! `MnistDataset` downloader stores the files. With the `download` feature (on by default),
//! missing files are fetched into that cache (`crate::download`).

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use thiserror::Error;

/// Environment variable naming the directory with the MNIST IDX files.
pub const MNIST_DIR_ENV: &str = "BURN_QUANT_MNIST_DIR";
/// Mean used to normalise pixels (after scaling to [0, 1]).
pub const MNIST_MEAN: f32 = 0.1307;
/// Standard deviation used to normalise pixels.
pub const MNIST_STD: f32 = 0.3081;
/// Pixels per image.
pub const IMAGE_PIXELS: usize = 28 * 28;

/// Errors while locating or reading MNIST.
#[derive(Debug, Error)]
pub enum DataError {
    /// No directory was given and none was found in the cache.
    #[error(
        "MNIST not found: pass --data-dir DIR or set {MNIST_DIR_ENV}=DIR to a directory holding the \
         four IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], \
         t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]); the download cache {cache} \
         has no copy (build with the `download` feature to fetch it there)"
    )]
    NotFound {
        /// The cache directory that was searched.
        cache: String,
    },
    /// Downloading into the cache failed.
    #[error(
        "MNIST could not be downloaded from {url} into {cache}: {reason}; without network, pass \
         --data-dir DIR or set {MNIST_DIR_ENV}=DIR to a directory holding the four IDX files"
    )]
    Download {
        /// The file's address.
        url: String,
        /// The cache directory.
        cache: String,
        /// What went wrong.
        reason: String,
    },
    /// A file is missing from the given directory.
    #[error("MNIST file {name} (or {name}.gz) not found in {dir}")]
    MissingFile {
        /// Directory searched.
        dir: PathBuf,
        /// File name searched.
        name: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a valid IDX file of the expected kind.
    #[error("{path} is corrupt or truncated: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One split (train or test): raw pixels and labels.
#[derive(Debug, Clone)]
pub struct MnistSplit {
    /// `len * 784` pixels in 0..=255, row-major.
    pub pixels: Vec<u8>,
    /// Labels in 0..=9.
    pub labels: Vec<u8>,
}

impl MnistSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` images only (all when `n >= len`).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            pixels: self.pixels[..n * IMAGE_PIXELS].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }

    /// The split cut before its last `n` images: `(first len − n, last n)` (a held-out
    /// validation set from the training images; `n` is capped at `len`).
    pub fn split_last(&self, n: usize) -> (Self, Self) {
        let keep = self.len() - n.min(self.len());
        let (pixels, labels) = (keep * IMAGE_PIXELS, keep);
        (
            Self {
                pixels: self.pixels[..pixels].to_vec(),
                labels: self.labels[..labels].to_vec(),
            },
            Self {
                pixels: self.pixels[pixels..].to_vec(),
                labels: self.labels[labels..].to_vec(),
            },
        )
    }

    /// All images as one normalised tensor `[len, 1, 28, 28]` and labels `[len]` on `device`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let pixels: Vec<f32> = self
            .pixels
            .iter()
            .map(|&p| (p as f32 / 255.0 - MNIST_MEAN) / MNIST_STD)
            .collect();
        let images = Tensor::from_data(TensorData::new(pixels, [self.len(), 1, 28, 28]), device);
        let labels: Vec<i32> = self.labels.iter().map(|&l| l as i32).collect();
        let labels = Tensor::from_data(TensorData::new(labels, [self.len()]), device);
        (images, labels)
    }
}

/// The MNIST train and test splits.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// 60,000 training images.
    pub train: MnistSplit,
    /// 10,000 test images.
    pub test: MnistSplit,
}

impl Mnist {
    /// Loads MNIST from `dir`, else `BURN_QUANT_MNIST_DIR`, else Burn's download cache.
    pub fn load(dir: Option<&Path>) -> Result<Self, DataError> {
        let dir = resolve_dir(dir)?;
        Ok(Self {
            train: read_split(&dir, "train")?,
            test: read_split(&dir, "t10k")?,
        })
    }
}

/// The directory MNIST is read from: the flag, the variable, or the cache when it holds a copy
/// (with the `download` feature, after fetching the missing files into it).
pub fn resolve_dir(flag: Option<&Path>) -> Result<PathBuf, DataError> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os(MNIST_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let cache = cache_dir();
    #[cfg(feature = "download")]
    crate::download::download_mnist(&cache, crate::download::MNIST_URL)?;
    if find_file(&cache, "train-images-idx3-ubyte").is_some() {
        return Ok(cache);
    }
    Err(DataError::NotFound {
        cache: cache.display().to_string(),
    })
}

/// Burn's MNIST cache directory.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("burn-dataset").join("mnist")
}

/// Finds `name` or `name.gz` in `dir` or in Burn's `train/` and `test/` cache sub-directories.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let subdirs = [dir.to_path_buf(), dir.join("train"), dir.join("test")];
    subdirs.iter().find_map(|d| {
        [d.join(name), d.join(format!("{name}.gz"))]
            .into_iter()
            .find(|p| p.is_file())
    })
}

fn read_split(dir: &Path, prefix: &str) -> Result<MnistSplit, DataError> {
    let images = read_idx(dir, &format!("{prefix}-images-idx3-ubyte"), 2051)?;
    let labels = read_idx(dir, &format!("{prefix}-labels-idx1-ubyte"), 2049)?;
    if images.dims[1..] != [28, 28] {
        return Err(images.corrupt(format!(
            "images are {:?}, expected 28x28",
            &images.dims[1..]
        )));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(labels.corrupt(format!(
            "{} labels for {} images",
            labels.dims[0], images.dims[0]
        )));
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l > 9) {
        return Err(labels.corrupt(format!("label {bad} is not a digit")));
    }
    Ok(MnistSplit {
        pixels: images.data,
        labels: labels.data,
    })
}

struct Idx {
    path: PathBuf,
    dims: Vec<usize>,
    data: Vec<u8>,
}

impl Idx {
    fn corrupt(&self, reason: String) -> DataError {
        DataError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

/// Reads an unsigned-byte IDX file (optionally gzipped) and checks its magic number and size.
fn read_idx(dir: &Path, name: &str, magic: u32) -> Result<Idx, DataError> {
    let path = find_file(dir, name).ok_or_else(|| DataError::MissingFile {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    })?;
    let io = |source| DataError::Io {
        path: path.clone(),
        source,
    };
    let raw = std::fs::read(&path).map_err(io)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::Corrupt {
                path: path.clone(),
                reason: format!("gzip stream: {e}"),
            })?;
        out
    } else {
        raw
    };
    parse_idx(path, &bytes, magic)
}

fn parse_idx(path: PathBuf, bytes: &[u8], magic: u32) -> Result<Idx, DataError> {
    let corrupt = |reason: String| DataError::Corrupt {
        path: path.clone(),
        reason,
    };
    let word = |i: usize| -> Option<u32> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let found = word(0).ok_or_else(|| corrupt("shorter than an IDX header".into()))?;
    if found != magic {
        return Err(corrupt(format!("magic number {found} (expected {magic})")));
    }
    let rank = (magic & 0xff) as usize;
    let dims: Vec<usize> = (1..=rank)
        .map(|i| word(i).map(|d| d as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| corrupt("header is truncated".into()))?;
    let header = 4 * (rank + 1);
    let expected: usize = dims.iter().product();
    let actual = bytes.len() - header;
    if actual != expected {
        return Err(corrupt(format!(
            "{actual} data bytes for dimensions {dims:?} (expected {expected})"
        )));
    }
    Ok(Idx {
        path,
        dims,
        data: bytes[header..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend(d.to_be_bytes());
        }
        out.extend(data);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) {
        use std::io::Write;
        if gz {
            let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn tiny_dir(tag: &str, gz: bool) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("burn-quant-mnist-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (prefix, n) in [("train", 3u32), ("t10k", 2)] {
            let pixels: Vec<u8> = (0..n as usize * IMAGE_PIXELS)
                .map(|i| (i % 256) as u8)
                .collect();
            let labels: Vec<u8> = (0..n as u8).collect();
            write(
                &dir,
                &format!("{prefix}-images-idx3-ubyte"),
                &idx(2051, &[n, 28, 28], &pixels),
                gz,
            );
            write(
                &dir,
                &format!("{prefix}-labels-idx1-ubyte"),
                &idx(2049, &[n], &labels),
                gz,
            );
        }
        dir
    }

    #[test]
    fn reads_raw_and_gzipped_files() {
        for gz in [false, true] {
            let dir = tiny_dir(if gz { "gz" } else { "raw" }, gz);
            let mnist = Mnist::load(Some(&dir)).unwrap();
            assert_eq!((mnist.train.len(), mnist.test.len()), (3, 2));
            assert_eq!(mnist.train.labels, vec![0, 1, 2]);
            assert_eq!(mnist.train.pixels[300], (300 % 256) as u8);
            std::fs::remove_dir_all(dir).ok();
        }
    }

    #[test]
    fn split_last_holds_out_the_tail() {
        let split = MnistSplit {
            pixels: (0..3 * IMAGE_PIXELS)
                .map(|i| (i / IMAGE_PIXELS) as u8)
                .collect(),
            labels: vec![7, 8, 9],
        };
        let (train, validation) = split.split_last(1);
        assert_eq!(
            (train.labels, validation.labels.clone()),
            (vec![7, 8], vec![9])
        );
        assert_eq!(validation.pixels, vec![2; IMAGE_PIXELS]);
        assert_eq!(train.pixels.len(), 2 * IMAGE_PIXELS);
        let (none, all) = split.split_last(10);
        assert_eq!((none.len(), all.len()), (0, 3));
    }

    #[test]
    fn normalises_like_the_reference() {
        let dir = tiny_dir("norm", false);
        let mnist = Mnist::load(Some(&dir)).unwrap();
        let (images, labels) = mnist
            .test
            .to_tensors(&burn_quant::default_device().unwrap());
        assert_eq!(images.dims(), [2, 1, 28, 28]);
        assert_eq!(labels.dims(), [2]);
        let v = images.into_data().try_to_vec::<f32>().unwrap();
        assert!((v[0] - (0.0 - MNIST_MEAN) / MNIST_STD).abs() < 1e-6);
        assert!((v[255] - (1.0 - MNIST_MEAN) / MNIST_STD).abs() < 1e-6);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn corrupt_and_truncated_files_name_the_file() {
        let dir = tiny_dir("bad", false);
        let labels = dir.join("train-labels-idx1-ubyte");
        // Truncated data.
        std::fs::write(&labels, idx(2049, &[3], &[0, 1])).unwrap();
        let err = Mnist::load(Some(&dir)).unwrap_err().to_string();
        assert!(
            err.contains("train-labels-idx1-ubyte") && err.contains("truncated"),
            "{err}"
        );
        // Wrong magic.
        std::fs::write(&labels, idx(2051, &[3], &[0, 1, 2])).unwrap();
        let err = Mnist::load(Some(&dir)).unwrap_err().to_string();
        assert!(err.contains("magic number"), "{err}");
        // Truncated header.
        std::fs::write(&labels, [0u8, 0, 8]).unwrap();
        assert!(
            Mnist::load(Some(&dir))
                .unwrap_err()
                .to_string()
                .contains("header")
        );
        // Broken gzip.
        std::fs::remove_file(&labels).unwrap();
        std::fs::write(
            dir.join("train-labels-idx1-ubyte.gz"),
            [0x1f, 0x8b, 1, 2, 3],
        )
        .unwrap();
        let err = Mnist::load(Some(&dir)).unwrap_err().to_string();
        assert!(
            err.contains("gzip") && err.contains("train-labels-idx1-ubyte.gz"),
            "{err}"
        );
        // Missing file.
        std::fs::remove_file(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
        assert!(matches!(
            Mnist::load(Some(&dir)),
            Err(DataError::MissingFile { .. })
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn without_flag_variable_or_cache_the_error_names_both() {
        let err = DataError::NotFound {
            cache: "/nowhere".into(),
        }
        .to_string();
        assert!(
            err.contains("--data-dir") && err.contains(MNIST_DIR_ENV),
            "{err}"
        );
    }
}
