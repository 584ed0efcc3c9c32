//! Fetching MNIST into Burn's dataset cache with Burn's downloader (feature `download`).
//!
//! The files land where Burn's own `MnistDataset` keeps them (`<cache>/train/` and
//! `<cache>/test/`, uncompressed), so either program finds the other's copy.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use burn::data::network::downloader::download_file_as_bytes;

use crate::mnist::DataError;

/// Where Burn's `MnistDataset` downloads MNIST from.
pub const MNIST_URL: &str = "https://storage.googleapis.com/cvdf-datasets/mnist/";

/// The four files and the cache sub-directory of each.
const FILES: [(&str, &str); 4] = [
    ("train", "train-images-idx3-ubyte"),
    ("train", "train-labels-idx1-ubyte"),
    ("test", "t10k-images-idx3-ubyte"),
    ("test", "t10k-labels-idx1-ubyte"),
];

/// Downloads the missing MNIST files from `base_url` into `cache`, gunzipped.
///
/// Burn's downloader panics on network errors; the panic is caught (its message silenced)
/// and reported as [`DataError::Download`], which names the flag and the variable.
pub fn download_mnist(cache: &Path, base_url: &str) -> Result<(), DataError> {
    for (subdir, name) in FILES {
        let dir = cache.join(subdir);
        let target = dir.join(name);
        if target.is_file() {
            continue;
        }
        let url = format!("{base_url}{name}.gz");
        let failed = |reason: String| DataError::Download {
            url: url.clone(),
            cache: cache.display().to_string(),
            reason,
        };
        let gz = fetch(&url).ok_or_else(|| failed("the download failed (no network?)".into()))?;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut bytes)
            .map_err(|e| failed(format!("not a gzip file: {e}")))?;
        let io = |e: std::io::Error| failed(format!("cannot write {}: {e}", target.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        // Write-then-rename: an interrupted download leaves no truncated file behind.
        let partial = dir.join(format!("{name}.partial"));
        std::fs::write(&partial, &bytes).map_err(io)?;
        std::fs::rename(&partial, &target).map_err(io)?;
    }
    Ok(())
}

/// The bytes at `url`, or `None` when Burn's downloader panicked.
fn fetch(url: &str) -> Option<Vec<u8>> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let bytes = catch_unwind(AssertUnwindSafe(|| {
        download_file_as_bytes(url, &format!("downloading {url}"))
    }));
    std::panic::set_hook(hook);
    bytes.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_gives_an_error_naming_flag_and_variable() {
        let cache = std::env::temp_dir().join(format!("burn-quant-dl-{}", std::process::id()));
        // Port 9 (discard) on the loopback interface: the connection is refused at once.
        let err = download_mnist(&cache, "http://127.0.0.1:9/").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::Download { .. }), "{message}");
        assert!(
            message.contains("--data-dir") && message.contains(crate::mnist::MNIST_DIR_ENV),
            "{message}"
        );
        assert!(!cache.join("train/train-images-idx3-ubyte").exists());
        std::fs::remove_dir_all(cache).ok();
    }
}
