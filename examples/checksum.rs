//! Checksums (BLAKE3) every file under a directory with at most N files in flight: real I/O
//! through a `Limiter`, a read buffer per worker ID instead of one per file, and tokio's own count
//! of live tasks staying at the limit plus the manager while thousands of files wait in the queue.
//!
//! ```text
//! cargo run --release --example checksum                     # the current directory
//! cargo run --release --example checksum -- --limit 4 /usr/lib
//! cargo run --release --example checksum -- --timeout 50 /usr/lib  # 50 ms per file at most
//! ```
//!
//! `--limit` defaults to the number of cores. `--timeout <ms>` limits the time each file may
//! take once it starts (`TaskBuilder::timeout`); files that run out of time are listed, not
//! counted in the digest. Directories named `target` or `.git` are skipped,
//! symbolic links are not followed and only regular files are read, so the walk cannot loop. An
//! unreadable file or directory is reported and counted, never fatal.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use task_limiter::Limiter;
use walkdir::WalkDir;

const SKIPPED_DIRS: [&str; 2] = ["target", ".git"];
const BUFFER_SIZE: usize = 256 * 1024;
/// Error lines printed before the rest are only counted.
const ERRORS_SHOWN: usize = 20;

/// Checksums every file under DIR with at most N files in flight.
#[derive(Parser)]
#[command(name = "checksum")]
struct Args {
    /// Files in flight at once [default: the number of cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// The most time one file may take once it starts, in milliseconds
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// The directory to walk
    #[arg(default_value = ".")]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let limit = args.limit.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        |n| n as usize,
    );
    let timeout = args.timeout.map(Duration::from_millis);
    let dir = args.dir;
    if !dir.is_dir() {
        eprintln!("checksum: {} is not a directory", dir.display());
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
    let run = runtime.block_on(checksum_all(&dir, &scan.files, limit, timeout, &errors));
    drop(runtime);

    print_summary(&dir, limit, &scan, scan_time, &run, &errors);
    ExitCode::SUCCESS
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
    let skipped = std::cell::Cell::new(0);
    // `follow_links(false)` is walkdir's default: a link is an entry of its own, never entered.
    let walk = WalkDir::new(dir).into_iter().filter_entry(|entry| {
        let skip = entry.depth() > 0
            && entry.file_type().is_dir()
            && SKIPPED_DIRS.iter().any(|skip| entry.file_name() == *skip);
        if skip {
            skipped.set(skipped.get() + 1);
        }
        !skip
    });
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                let path = err.path().unwrap_or(dir).to_path_buf();
                errors.report(&spinner, &path, &io::Error::other(err));
                continue;
            }
        };
        let file_type = entry.file_type();
        if file_type.is_file() {
            match entry.metadata() {
                Ok(metadata) => scan.files.push((entry.into_path(), metadata.len())),
                Err(err) => errors.report(&spinner, entry.path(), &io::Error::other(err)),
            }
        } else if !file_type.is_dir() {
            scan.not_regular += 1;
        }
    }
    scan.skipped_dirs = skipped.get();
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
    /// Files that ran out of `--timeout`, in path order.
    timed_out: Vec<PathBuf>,
    most_tasks_alive: usize,
    buffers_allocated: usize,
}

async fn checksum_all(
    dir: &Path,
    files: &[(PathBuf, u64)],
    limit: usize,
    timeout: Option<Duration>,
    errors: &Errors,
) -> Run {
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
            let task = limiter.build_task();
            let task = match timeout {
                Some(timeout) => task.timeout(timeout),
                None => task,
            };
            task.spawn_with(move |worker| async move {
                let slot = &buffers[worker.index()];
                // An item that timed out left its buffer with its closure on the blocking pool
                // (which cannot be stopped); the next item on its ID makes a new one.
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
    let mut timed_out = Vec::new();
    for ((path, _), handle) in files.iter().zip(handles) {
        let result = match handle.await {
            Ok(result) => result,
            Err(err) if err.is_timeout() => {
                timed_out.push(path.clone());
                continue;
            }
            Err(err) => panic!("items neither panic nor get cancelled: {err}"),
        };
        match result {
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
        timed_out,
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
    println!("  timed out   {}", run.timed_out.len());
    for path in run.timed_out.iter().take(ERRORS_SHOWN) {
        println!("    {}", path.display());
    }
    if run.timed_out.len() > ERRORS_SHOWN {
        println!("    (and {} more)", run.timed_out.len() - ERRORS_SHOWN);
    }
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
