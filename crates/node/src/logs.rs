//! Container logs on disk, as kubelet and a CRI runtime keep them, and reading them back the way
//! `kubectl logs` shows them.
//!
//! Files live at `<root>/pods/<namespace>_<name>_<uid>/<container>/<restart_count>.log`. Each
//! line is in the CRI log format (`<RFC3339Nano timestamp> stdout|stderr F|P <text>`; `P` marks
//! a partial line split at [`MAX_LINE`] bytes, `F` the end of one; see
//! <https://github.com/kubernetes/design-proposals-archive/blob/main/node/kubelet-cri-logging.md>).
//! A file rotates at [`MAX_FILE_SIZE`] to `N.log.1` (one rotated file kept), so logs are bounded.
//!
//! Must never: block a container on a slow disk reader (the writer owns the file; readers poll).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// A log file rotates when it would grow beyond this (kubelet's `containerLogMaxSize` default).
pub const MAX_FILE_SIZE: u64 = 10 * 1024 * 1024;
/// Lines longer than this are split into partial (`P`) records (as CRI-O and containerd do).
pub const MAX_LINE: usize = 16 * 1024;
/// How often a following reader looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// `<root>/pods/<namespace>_<name>_<uid>/<container>/<restart_count>.log` (as kubelet lays it out).
pub fn container_log_path(
    root_dir: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
    restart_count: u32,
) -> PathBuf {
    root_dir
        .join("pods")
        .join(format!("{namespace}_{name}_{uid}"))
        .join(container)
        .join(format!("{restart_count}.log"))
}

/// The rotated file kept next to `path`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Created next to a log file once the container's output has ended (the process exited and
/// every line is in the file): a following reader then stops, as `kubectl logs -f` does for a
/// terminated container.
pub fn finished_marker_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".finished");
    PathBuf::from(p)
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Appends CRI-format lines to a container's log file, rotating it at a size bound.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: tokio::fs::File,
    size: u64,
    max_size: u64,
}

impl LogWriter {
    /// Open (append to) the log file at `path`, creating its directory.
    pub async fn open(path: &Path) -> std::io::Result<LogWriter> {
        Self::with_max_size(path, MAX_FILE_SIZE).await
    }

    /// As [`LogWriter::open`] with another rotation size (tests).
    pub async fn with_max_size(path: &Path, max_size: u64) -> std::io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let size = file.metadata().await?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
        })
    }

    /// Write one line of output (without its newline; `complete` false for a partial line).
    pub async fn write_line(
        &mut self,
        stream: LogStream,
        text: &[u8],
        complete: bool,
    ) -> std::io::Result<()> {
        let mut record = format!(
            "{} {} {} ",
            jiff::Timestamp::now(),
            stream.as_str(),
            if complete { "F" } else { "P" }
        )
        .into_bytes();
        record.extend_from_slice(text);
        record.push(b'\n');
        if self.size > 0 && self.size + record.len() as u64 > self.max_size {
            self.rotate().await?;
        }
        self.file.write_all(&record).await?;
        self.size += record.len() as u64;
        Ok(())
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        tokio::fs::rename(&self.path, rotated_path(&self.path)).await?;
        self.file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        self.size = 0;
        Ok(())
    }
}

/// Copy a process's stdout and stderr into the log file at `path` until both end, then mark
/// the log finished ([`finished_marker_path`]).
pub fn spawn_log_copier(
    path: PathBuf,
    stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut writer = match LogWriter::open(&path).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the log file");
                return;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(LogStream, Vec<u8>, bool)>(64);
        if let Some(out) = stdout {
            tokio::spawn(split_lines(out, LogStream::Stdout, tx.clone()));
        }
        if let Some(err) = stderr {
            tokio::spawn(split_lines(err, LogStream::Stderr, tx.clone()));
        }
        drop(tx);
        while let Some((stream, line, complete)) = rx.recv().await {
            if let Err(e) = writer.write_line(stream, &line, complete).await {
                tracing::warn!(path = %path.display(), error = %e, "cannot write a log line");
            }
        }
        let _ = writer.file.flush().await;
        if let Err(e) = tokio::fs::write(finished_marker_path(&path), b"").await {
            tracing::warn!(path = %path.display(), error = %e, "cannot mark the log finished");
        }
    })
}

async fn split_lines(
    reader: impl AsyncRead + Unpin,
    stream: LogStream,
    tx: tokio::sync::mpsc::Sender<(LogStream, Vec<u8>, bool)>,
) {
    let mut reader = tokio::io::BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let room = MAX_LINE - line.len();
        let (take, end) = match buf.iter().take(room).position(|b| *b == b'\n') {
            Some(i) => (i + 1, Some(true)),
            None if buf.len() >= room => (room, Some(false)),
            None => (buf.len(), None),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if let Some(complete) = end {
            if complete {
                line.pop();
            }
            if tx
                .send((stream, std::mem::take(&mut line), complete))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    if !line.is_empty() {
        let _ = tx.send((stream, line, true)).await;
    }
}

/// What to read (the query parameters of `GET .../pods/NAME/log`).
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

/// One parsed CRI record.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    timestamp: &'a str,
    text: &'a [u8],
    complete: bool,
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Record {
        timestamp,
        text,
        complete: tag != b"P",
    })
}

/// Renders records as `kubectl logs` prints them: joined partial lines, the timestamp first only
/// when asked; filters by `since`.
struct Renderer {
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    /// Inside a partial line: its first record decided whether it is shown.
    in_partial: Option<bool>,
}

impl Renderer {
    fn render(&mut self, record: &Record<'_>, out: &mut Vec<u8>) {
        let show = match self.in_partial {
            Some(show) => show,
            None => {
                let show = match self.since {
                    None => true,
                    Some(since) => record
                        .timestamp
                        .parse::<jiff::Timestamp>()
                        .map(|t| t >= since)
                        .unwrap_or(true),
                };
                if show && self.timestamps {
                    out.extend_from_slice(record.timestamp.as_bytes());
                    out.push(b' ');
                }
                show
            }
        };
        if show {
            out.extend_from_slice(record.text);
            if record.complete {
                out.push(b'\n');
            }
        }
        self.in_partial = if record.complete { None } else { Some(show) };
    }
}

/// The log text as `kubectl logs` shows it (without CRI prefixes unless `timestamps`), as a stream
/// that ends at EOF unless `follow`; a following stream ends when dropped or once the
/// container's output has ended (the log is marked finished).
pub fn read_logs(
    path: &Path,
    opts: LogOptions,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
    let path = path.to_path_buf();
    tokio::spawn(async move {
        if let Err(e) = pump_logs(&path, &opts, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Sends at most the remaining `limit_bytes`; returns false when the reader is gone or the limit
/// is reached.
async fn send_limited(
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    mut chunk: Vec<u8>,
    remaining: &mut Option<u64>,
) -> bool {
    if let Some(left) = remaining {
        if chunk.len() as u64 >= *left {
            chunk.truncate(*left as usize);
            *left = 0;
        } else {
            *left -= chunk.len() as u64;
        }
    }
    if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
        return false;
    }
    *remaining != Some(0)
}

async fn pump_logs(
    path: &Path,
    opts: &LogOptions,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut renderer = Renderer {
        timestamps: opts.timestamps,
        since: opts.since_seconds.map(|s| {
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(s as i64))
                .unwrap_or(jiff::Timestamp::MIN)
        }),
        in_partial: None,
    };
    let mut remaining = opts.limit_bytes;
    // What is there now: the rotated file, then the current one.
    let mut existing = Vec::new();
    match tokio::fs::read(rotated_path(path)).await {
        Ok(bytes) => existing.extend_from_slice(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let (mut file, mut offset) = match tokio::fs::File::open(path).await {
        Ok(mut f) => {
            f.read_to_end(&mut existing).await?;
            let len = f.stream_position().await?;
            (Some(f), len)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.follow => (None, 0),
        Err(e) => return Err(e),
    };
    // Only whole lines now; a trailing half-written line is read again when following.
    let whole = existing
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    if file.is_some() {
        offset -= (existing.len() - whole) as u64;
    }
    let records: Vec<Record<'_>> = existing[..whole]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(parse_record)
        .collect();
    let start = match opts.tail_lines {
        None => 0,
        Some(n) => {
            // Count complete lines from the end; a line made of partial records counts once.
            let mut lines = 0u64;
            let mut start = records.len();
            for (i, r) in records.iter().enumerate().rev() {
                if r.complete {
                    if lines == n {
                        break;
                    }
                    lines += 1;
                }
                start = i;
            }
            start
        }
    };
    let mut out = Vec::new();
    for r in &records[start..] {
        renderer.render(r, &mut out);
    }
    if !send_limited(tx, out, &mut remaining).await || !opts.follow {
        return Ok(());
    }
    // Follow: poll for growth; a rotation (the file shrank or was replaced) starts over at the
    // new file's beginning.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if tx.is_closed() {
            return Ok(());
        }
        // Checked before reading: a marker seen now means everything is in the file already.
        let finished = tokio::fs::try_exists(finished_marker_path(path))
            .await
            .unwrap_or(false);
        let mut grew = false;
        if let Some(f) = &mut file {
            f.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut buf = Vec::new();
            let n = f.read_to_end(&mut buf).await?;
            if n > 0 {
                grew = true;
                offset += n as u64;
                pending.extend_from_slice(&buf);
                let whole = pending
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1);
                let mut out = Vec::new();
                for line in pending[..whole].split(|b| *b == b'\n') {
                    if let Some(r) = parse_record(line) {
                        renderer.render(&r, &mut out);
                    }
                }
                pending.drain(..whole);
                if !send_limited(tx, out, &mut remaining).await {
                    return Ok(());
                }
            }
        }
        if grew {
            continue;
        }
        if finished {
            return Ok(());
        }
        // Drained what the open file has: a rotation (the file was renamed away or truncated)
        // moves on to the new file from its beginning.
        let current_len = tokio::fs::metadata(path).await.map(|m| m.len()).ok();
        let reopen = match (&file, current_len) {
            (None, Some(_)) => true,
            (Some(f), Some(len)) => len < offset || replaced(path, f).await,
            _ => false,
        };
        if reopen {
            file = tokio::fs::File::open(path).await.ok();
            offset = 0;
            pending.clear();
        } else {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

/// Whether the file at `path` is no longer the one `open` reads (renamed away by a rotation).
async fn replaced(path: &Path, open: &tokio::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(now) = tokio::fs::metadata(path).await else {
        return false;
    };
    match open.metadata().await {
        Ok(m) => m.ino() != now.ino() || m.dev() != now.dev(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn collect(path: &Path, opts: LogOptions) -> String {
        let chunks: Vec<std::io::Result<Bytes>> = read_logs(path, opts).collect().await;
        let mut text = Vec::new();
        for c in chunks {
            text.extend_from_slice(&c.expect("read"));
        }
        String::from_utf8(text).expect("utf8")
    }

    #[test]
    fn log_paths_follow_kubelets_layout() {
        assert_eq!(
            container_log_path(Path::new("/var/lib/sy"), "default", "web", "u1", "app", 2),
            PathBuf::from("/var/lib/sy/pods/default_web_u1/app/2.log")
        );
    }

    #[tokio::test]
    async fn lines_are_written_in_cri_format_and_read_back_plain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&path).await.expect("open");
        w.write_line(LogStream::Stdout, b"hello", true)
            .await
            .expect("write");
        w.write_line(LogStream::Stderr, b"par", false)
            .await
            .expect("write");
        w.write_line(LogStream::Stderr, b"tial", true)
            .await
            .expect("write");
        drop(w);
        let raw = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = raw.lines().collect();
        assert_eq!(lines.len(), 3);
        let first: Vec<&str> = lines[0].splitn(4, ' ').collect();
        assert!(first[0].parse::<jiff::Timestamp>().is_ok(), "{raw}");
        assert_eq!(&first[1..], ["stdout", "F", "hello"]);
        assert!(lines[1].ends_with(" stderr P par"), "{raw}");
        assert_eq!(
            collect(&path, LogOptions::default()).await,
            "hello\npartial\n"
        );
        let with_ts = collect(
            &path,
            LogOptions {
                timestamps: true,
                ..Default::default()
            },
        )
        .await;
        assert!(
            with_ts.starts_with(first[0]) && with_ts.ends_with(" partial\n"),
            "{with_ts}"
        );
    }

    #[tokio::test]
    async fn tail_since_and_limit_select_what_kubectl_asks_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        // An old line (written by hand with an old timestamp), then fresh ones.
        std::fs::write(&path, "2020-01-01T00:00:00.5Z stdout F ancient\n").expect("write");
        let mut w = LogWriter::open(&path).await.expect("open");
        for i in 1..=5 {
            w.write_line(LogStream::Stdout, format!("line {i}").as_bytes(), true)
                .await
                .expect("write");
        }
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        };
        assert_eq!(collect(&path, tail(2)).await, "line 4\nline 5\n");
        assert_eq!(collect(&path, tail(0)).await, "");
        assert_eq!(collect(&path, tail(100)).await.lines().count(), 6);
        let since = LogOptions {
            since_seconds: Some(60),
            ..Default::default()
        };
        assert!(!collect(&path, since).await.contains("ancient"));
        let limit = LogOptions {
            limit_bytes: Some(10),
            ..Default::default()
        };
        assert_eq!(collect(&path, limit).await, "ancient\nli");
    }

    #[tokio::test]
    async fn files_rotate_at_the_bound_keeping_one_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut w = LogWriter::with_max_size(&path, 200).await.expect("open");
        for i in 0..20 {
            w.write_line(LogStream::Stdout, format!("line {i:02}").as_bytes(), true)
                .await
                .expect("write");
        }
        assert!(std::fs::metadata(&path).expect("current").len() <= 200);
        assert!(
            std::fs::metadata(rotated_path(&path))
                .expect("rotated")
                .len()
                <= 200
        );
        let text = collect(&path, LogOptions::default()).await;
        assert!(text.ends_with("line 19\n"), "{text}");
        assert!(
            !text.contains("line 00"),
            "older rotations are dropped: {text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let numbers: Vec<u32> = lines
            .iter()
            .map(|l| l[5..].parse().expect("number"))
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{text}");
    }

    #[tokio::test]
    async fn follow_streams_new_lines_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut w = LogWriter::with_max_size(&path, 300).await.expect("open");
        w.write_line(LogStream::Stdout, b"before", true)
            .await
            .expect("write");
        let mut stream = Box::pin(read_logs(
            &path,
            LogOptions {
                follow: true,
                ..Default::default()
            },
        ));
        let mut seen = String::new();
        let mut i = 0;
        // Keep writing (through rotations) until 30 lines arrive.
        while !seen.contains("after 29\n") {
            if i < 30 {
                w.write_line(LogStream::Stdout, format!("after {i}").as_bytes(), true)
                    .await
                    .expect("write");
                i += 1;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("a chunk within 5s")
                .expect("not ended")
                .expect("read");
            seen.push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
        assert!(seen.starts_with("before\nafter 0\n"), "{seen}");
        drop(stream);
    }

    #[tokio::test]
    async fn following_ends_once_the_container_output_has_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let (mut feed, out) = tokio::io::duplex(1024);
        let copier = spawn_log_copier(path.clone(), Some(out), None::<std::io::Cursor<Vec<u8>>>);
        feed.write_all(b"first\n").await.expect("write");
        let reader = tokio::spawn(async move {
            wait_for_file(&path).await;
            collect(
                &path,
                LogOptions {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        feed.write_all(b"second\n").await.expect("write");
        drop(feed); // the container exits
        copier.await.expect("copier");
        let text = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the follow ends")
            .expect("join");
        assert_eq!(text, "first\nsecond\n");
    }

    async fn wait_for_file(path: &Path) {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_copier_turns_output_into_lines_and_splits_long_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let long = "x".repeat(MAX_LINE + 10);
        let stdout = format!("one\ntwo\n{long}\nlast-without-newline");
        let copier = spawn_log_copier(
            path.clone(),
            Some(std::io::Cursor::new(stdout.into_bytes())),
            Some(std::io::Cursor::new(b"oops\n".to_vec())),
        );
        copier.await.expect("copier");
        let raw = std::fs::read_to_string(&path).expect("read");
        assert!(raw.contains(" stderr F oops\n"), "{raw}");
        assert!(raw.contains(" stdout P x"), "long lines are split");
        let text = collect(&path, LogOptions::default()).await;
        assert!(text.contains(&format!("{long}\n")));
        assert!(text.contains("one\ntwo\n") && text.contains("last-without-newline\n"));
    }
}
