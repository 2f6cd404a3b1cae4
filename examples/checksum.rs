//! Checksums (BLAKE3) every file under a directory with at most N files in flight: real I/O
//! through a `Limiter`, a read buffer per worker ID instead of one per file, and tokio's own count
//! of live tasks staying at the limit plus the manager while thousands of files wait in the queue.
//!
//! ```text
//! cargo run --release --example checksum                     # the current directory
//! cargo run --release --example checksum -- --limit 4 /usr/lib
//! ```
//!
//! `--limit` defaults to the number of cores. Directories named `target` or `.git` are skipped,
//! symbolic links are not followed and only regular files are read, so the walk cannot loop. An
//! unreadable file or directory is reported and counted, never fatal.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use task_limiter::Limiter;

const USAGE: &str = "usage: checksum [--limit N] [DIR]";
const SKIPPED_DIRS: [&str; 2] = ["target", ".git"];
const BUFFER_SIZE: usize = 256 * 1024;
/// Error lines printed before the rest are only counted.
const ERRORS_SHOWN: usize = 20;

fn main() -> ExitCode {
    let (limit, dir) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("checksum: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !dir.is_dir() {
        eprintln!("checksum: {} is not a directory\n{USAGE}", dir.display());
        return ExitCode::from(2);
    }

    let errors = Errors::default();
    let scan_started = Instant::now();
    let scan = scan(&dir, &errors);
    let scan_time = scan_started.elapsed();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("failed to build the tokio runtime");
    let run = runtime.block_on(checksum_all(&dir, &scan.files, limit, &errors));
    drop(runtime);

    print_summary(&dir, limit, &scan, scan_time, &run, &errors);
    ExitCode::SUCCESS
}

/// Hand-parsed `[--limit N] [DIR]`.
fn parse_args() -> Result<(usize, PathBuf), String> {
    let mut limit = None;
    let mut dir = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_str().unwrap_or("");
        let value = if text == "--limit" {
            Some(args.next().ok_or("--limit needs a number")?)
        } else {
            text.strip_prefix("--limit=").map(Into::into)
        };
        if let Some(value) = value {
            let n = value
                .to_str()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("--limit takes a number >= 1, not {value:?}"))?;
            limit = Some(n);
        } else if text == "-h" || text == "--help" {
            println!("{USAGE}\n\nChecksums every file under DIR (default: .) with at most N files in flight (default: the number of cores).");
            std::process::exit(0);
        } else if text.starts_with('-') {
            return Err(format!("unknown option {text}"));
        } else if dir.replace(PathBuf::from(arg)).is_some() {
            return Err("only one DIR".into());
        }
    }
    let limit = limit.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    Ok((limit, dir.unwrap_or_else(|| PathBuf::from("."))))
}

// === scanning ===

struct Scan {
    /// Regular files and their sizes, in path order.
    files: Vec<(PathBuf, u64)>,
    /// Symbolic links and special files (sockets, FIFOs, devices): never read.
    not_regular: u64,
    skipped_dirs: u64,
}

/// Walks `dir` without following symbolic links.
fn scan(dir: &Path, errors: &Errors) -> Scan {
    let spinner = ProgressBar::new_spinner().with_message(format!("scanning {}", dir.display()));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let mut scan = Scan {
        files: Vec::new(),
        not_regular: 0,
        skipped_dirs: 0,
    };
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) => {
                errors.report(&spinner, &dir, &err);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    errors.report(&spinner, &dir, &err);
                    continue;
                }
            };
            let path = entry.path();
            // `DirEntry::file_type` and `metadata` do not follow symbolic links.
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(err) => {
                    errors.report(&spinner, &path, &err);
                    continue;
                }
            };
            if file_type.is_dir() {
                if SKIPPED_DIRS.iter().any(|skip| entry.file_name() == *skip) {
                    scan.skipped_dirs += 1;
                } else {
                    dirs.push(path);
                }
            } else if file_type.is_file() {
                match entry.metadata() {
                    Ok(metadata) => scan.files.push((path, metadata.len())),
                    Err(err) => errors.report(&spinner, &path, &err),
                }
            } else {
                scan.not_regular += 1;
            }
        }
    }
    scan.files.sort_unstable();
    spinner.finish_and_clear();
    scan
}

// === checksumming ===

struct Run {
    elapsed: Duration,
    hashed_files: u64,
    bytes: u64,
    /// BLAKE3 over every hashed file's relative path and hash, in path order.
    digest: blake3::Hash,
    most_tasks_alive: usize,
    buffers_allocated: usize,
}

async fn checksum_all(dir: &Path, files: &[(PathBuf, u64)], limit: usize, errors: &Errors) -> Run {
    let total_bytes = files.iter().map(|(_, len)| len).sum();
    let bar = ProgressBar::new(total_bytes).with_style(
        ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));

    let started = Instant::now();
    let limiter = Limiter::builder().limit(limit).name("checksum").build();
    // One read buffer per worker ID, allocated on first use. The limiter runs at most one item
    // per ID at a time, so an item takes its worker's buffer without ever finding it in use.
    let buffers: Arc<[Mutex<Vec<u8>>]> = (0..limit).map(|_| Mutex::default()).collect();
    let buffers_allocated = Arc::new(AtomicUsize::new(0));
    let files_done = Arc::new(AtomicU64::new(0));

    // Watches the runtime from a plain thread, so the watcher is not itself a task.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let runtime = tokio::runtime::Handle::current();
        let (stop, bar, files_done) = (stop.clone(), bar.clone(), files_done.clone());
        let files = files.len();
        std::thread::spawn(move || {
            let mut most = 0;
            let mut ticks = 0u64;
            while !stop.load(Ordering::Acquire) {
                let alive = runtime.metrics().num_alive_tasks();
                most = most.max(alive);
                if ticks % 100 == 0 {
                    let done = files_done.load(Ordering::Relaxed);
                    bar.set_message(format!(
                        "{done}/{files} files, {alive} tasks alive (limit {limit})"
                    ));
                }
                ticks += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            most
        })
    };

    let handles: Vec<_> = files
        .iter()
        .map(|(path, len)| {
            let path = path.clone();
            let len = *len;
            let (buffers, allocated) = (buffers.clone(), buffers_allocated.clone());
            let (bar, files_done) = (bar.clone(), files_done.clone());
            limiter.spawn_with(move |worker| async move {
                let slot = &buffers[worker.index()];
                let mut buffer = std::mem::take(
                    &mut *slot
                        .try_lock()
                        .expect("a worker ID is held by one running item at a time"),
                );
                if buffer.is_empty() {
                    buffer = vec![0; BUFFER_SIZE];
                    allocated.fetch_add(1, Ordering::Relaxed);
                }
                // Reading and hashing block: they run on tokio's blocking pool, one hop per
                // file, with the worker's buffer moved there and back.
                let (buffer, result) = tokio::task::spawn_blocking(move || {
                    let result = hash_file(&path, &mut buffer).map_err(|err| (path, err));
                    (buffer, result)
                })
                .await
                .expect("hashing does not panic");
                *slot.try_lock().expect("still this item's worker ID") = buffer;
                bar.inc(len);
                files_done.fetch_add(1, Ordering::Relaxed);
                result
            })
        })
        .collect();
    limiter.close();

    let mut run_digest = blake3::Hasher::new();
    let (mut hashed_files, mut bytes) = (0, 0);
    for handle in handles {
        match handle.await.expect("items neither panic nor get cancelled") {
            Ok((path, len, hash)) => {
                let relative = path.strip_prefix(dir).unwrap_or(&path);
                run_digest.update(relative.as_os_str().as_encoded_bytes());
                run_digest.update(&[0]);
                run_digest.update(hash.as_bytes());
                hashed_files += 1;
                bytes += len;
            }
            Err((path, err)) => errors.report(&bar, &path, &err),
        }
    }
    limiter.wait().await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    let most_tasks_alive = watcher.join().expect("the watcher does not panic");
    bar.finish_and_clear();

    Run {
        elapsed,
        hashed_files,
        bytes,
        digest: run_digest.finalize(),
        most_tasks_alive,
        buffers_allocated: buffers_allocated.load(Ordering::Relaxed),
    }
}

/// Reads `path` through `buffer`; returns the path back with the bytes read and their hash.
fn hash_file(path: &Path, buffer: &mut [u8]) -> io::Result<(PathBuf, u64, blake3::Hash)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut len = 0;
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        hasher.update(&buffer[..n]);
        len += n as u64;
    }
    Ok((path.to_path_buf(), len, hasher.finalize()))
}

// === reporting ===

#[derive(Default)]
struct Errors {
    count: AtomicU64,
}

impl Errors {
    /// Counts an error and prints the first few (to stderr, above the progress bar).
    fn report(&self, bar: &ProgressBar, path: &Path, err: &io::Error) {
        let seen = self.count.fetch_add(1, Ordering::Relaxed) as usize;
        if seen < ERRORS_SHOWN {
            bar.suspend(|| eprintln!("error: {}: {err}", path.display()));
        } else if seen == ERRORS_SHOWN {
            bar.suspend(|| eprintln!("error: (more errors are counted, not shown)"));
        }
    }
}

fn print_summary(
    dir: &Path,
    limit: usize,
    scan: &Scan,
    scan_time: Duration,
    run: &Run,
    errors: &Errors,
) {
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    let files = scan.files.len();
    println!("checksum (BLAKE3) of {}", dir.display());
    println!(
        "  files       {} hashed of {files} found (skipped: {} target/.git dirs, {} links or special files)",
        run.hashed_files, scan.skipped_dirs, scan.not_regular
    );
    println!("  bytes       {}", megabytes(run.bytes));
    println!(
        "  elapsed     {} (after {} scanning)",
        seconds(run.elapsed),
        seconds(scan_time)
    );
    println!(
        "  throughput  {:.1} MB/s, {:.0} files/s",
        run.bytes as f64 / 1e6 / secs,
        run.hashed_files as f64 / secs
    );
    println!("  errors      {}", errors.count.load(Ordering::Relaxed));
    let workers = if limit == 1 { "worker" } else { "workers" };
    println!(
        "  live tasks  at most {} (tokio runtime metrics); limit {limit} {workers} + 1 manager = {}",
        run.most_tasks_alive,
        limit + 1,
    );
    println!(
        "  buffers     {} x {} KiB: one per worker ID, reused for every file",
        run.buffers_allocated,
        BUFFER_SIZE / 1024
    );
    println!("  digest      {}", run.digest);
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB ({bytes} bytes)", bytes as f64 / 1e6)
}

fn seconds(time: Duration) -> String {
    match time.as_secs_f64() {
        secs if secs < 1.0 => format!("{:.1} ms", secs * 1e3),
        secs => format!("{secs:.2} s"),
    }
}
