//! Fetching MNIST into the download cache: one HTTP GET per missing file, a progress bar,
//! a SHA-256 check of the decompressed data, and write-then-rename, so that an interrupted or
//! corrupt download never leaves a file behind that looks complete.
//!
//! The files land where Burn's own `MnistDataset` keeps them (`<cache>/train/` and
//! `<cache>/test/`, uncompressed), so either program finds the other's copy.

use std::io::Read;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::data::DataError;

/// Where Burn's `MnistDataset` downloads MNIST from.
pub const MNIST_URL: &str = "https://storage.googleapis.com/cvdf-datasets/mnist/";

/// One file to fetch: the cache sub-directory, its name (fetched as `<name>.gz`) and the
/// SHA-256 of its decompressed content.
#[derive(Debug, Clone, Copy)]
pub struct RemoteFile {
    /// Sub-directory of the cache (`train` or `test`).
    pub subdir: &'static str,
    /// File name, without `.gz`.
    pub name: &'static str,
    /// Lower-case hex SHA-256 of the decompressed file.
    pub sha256: &'static str,
}

/// The four MNIST files.
pub const MNIST_FILES: [RemoteFile; 4] = [
    RemoteFile {
        subdir: "train",
        name: "train-images-idx3-ubyte",
        sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    },
    RemoteFile {
        subdir: "train",
        name: "train-labels-idx1-ubyte",
        sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    },
    RemoteFile {
        subdir: "test",
        name: "t10k-images-idx3-ubyte",
        sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    },
    RemoteFile {
        subdir: "test",
        name: "t10k-labels-idx1-ubyte",
        sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
];

/// Downloads the missing MNIST files from `base_url` into `cache`, gunzipped and checked.
pub fn download_mnist(cache: &Path, base_url: &str) -> Result<(), DataError> {
    download_files(cache, base_url, &MNIST_FILES)
}

/// Downloads every file of `files` missing from `cache`.
pub fn download_files(cache: &Path, base_url: &str, files: &[RemoteFile]) -> Result<(), DataError> {
    for file in files {
        let dir = cache.join(file.subdir);
        let target = dir.join(file.name);
        if target.is_file() {
            continue;
        }
        let url = format!("{base_url}{}.gz", file.name);
        let failed = |reason: String| DataError::Download {
            url: url.clone(),
            cache: cache.display().to_string(),
            reason,
        };
        let gz = fetch(&url).map_err(failed)?;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_to_end(&mut bytes)
            .map_err(|e| failed(format!("not a gzip file: {e}")))?;
        let digest = hex(&Sha256::digest(&bytes));
        if digest != file.sha256 {
            return Err(failed(format!(
                "checksum mismatch: SHA-256 {digest}, expected {}",
                file.sha256
            )));
        }
        let io = |e: std::io::Error| failed(format!("cannot write {}: {e}", target.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let partial = dir.join(format!("{}.partial", file.name));
        std::fs::write(&partial, &bytes).map_err(io)?;
        std::fs::rename(&partial, &target).map_err(io)?;
    }
    Ok(())
}

/// The body at `url`, with a progress bar on standard error (hidden when it is no terminal).
fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let mut response = ureq::get(url)
        .call()
        .map_err(|e| format!("the request failed ({e}); no network?"))?;
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = match length {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    let mut body = Vec::new();
    bar.wrap_read(response.body_mut().as_reader())
        .read_to_end(&mut body)
        .map_err(|e| format!("the transfer broke off: {e}"))?;
    bar.finish_and_clear();
    Ok(body)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A local HTTP server answering `requests` requests from `files` (path → body), 404
    /// otherwise. Returns its base URL.
    fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut request = String::new();
                BufReader::new(&stream).read_line(&mut request).unwrap();
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let body = files.iter().find(|(p, _)| p == path).map(|(_, b)| b);
                let (status, body) = match body {
                    Some(b) => ("200 OK", b.clone()),
                    None => ("404 Not Found", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body).unwrap();
            }
        });
        base
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn temp_cache(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("burn-quant-dl-{tag}-{}", std::process::id()))
    }

    const CONTENT: &[u8] = b"not really an IDX file";

    fn file(sha256: &'static str) -> RemoteFile {
        RemoteFile {
            subdir: "train",
            name: "labels",
            sha256,
        }
    }

    #[test]
    fn a_served_file_is_gunzipped_checked_and_stored() {
        let sha: &'static str = Box::leak(hex(&Sha256::digest(CONTENT)).into_boxed_str());
        let base = serve(vec![("/labels.gz".into(), gzip(CONTENT))], 1);
        let cache = temp_cache("ok");
        download_files(&cache, &base, &[file(sha)]).unwrap();
        assert_eq!(std::fs::read(cache.join("train/labels")).unwrap(), CONTENT);
        assert!(!cache.join("train/labels.partial").exists());
        // Present files are not fetched again (the server would refuse a second request).
        download_files(&cache, &base, &[file(sha)]).unwrap();
        std::fs::remove_dir_all(cache).ok();
    }

    #[test]
    fn a_checksum_mismatch_is_an_error_and_leaves_nothing() {
        let base = serve(vec![("/labels.gz".into(), gzip(CONTENT))], 1);
        let cache = temp_cache("sha");
        let err = download_files(&cache, &base, &[file("00")]).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert!(!cache.join("train/labels").exists());
        std::fs::remove_dir_all(cache).ok();
    }

    #[test]
    fn missing_and_non_gzip_files_are_errors() {
        let base = serve(vec![("/labels.gz".into(), CONTENT.to_vec())], 2);
        let cache = temp_cache("bad");
        let err = download_files(&cache, &base, &[file("00")]).unwrap_err();
        assert!(err.to_string().contains("not a gzip file"), "{err}");
        let missing = RemoteFile {
            name: "absent",
            ..file("00")
        };
        let err = download_files(&cache, &base, &[missing]).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        std::fs::remove_dir_all(cache).ok();
    }

    #[test]
    fn an_unreachable_server_gives_an_error_naming_flag_and_variable() {
        let cache = temp_cache("down");
        // Port 9 (discard) on the loopback interface: the connection is refused at once.
        let err = download_mnist(&cache, "http://127.0.0.1:9/").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::Download { .. }), "{message}");
        assert!(
            message.contains("--data-dir") && message.contains(crate::data::MNIST_DIR_ENV),
            "{message}"
        );
        assert!(!cache.join("train/train-images-idx3-ubyte").exists());
        std::fs::remove_dir_all(cache).ok();
    }
}
