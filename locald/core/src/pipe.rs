//! Reads a child's stdout or stderr and hands lines to a [`LogSink`].
//!
//! Lines are split on `\n`; a line longer than [`MAX_LINE`] is cut and marked
//! partial so memory stays bounded whatever the child prints; the last line
//! is flushed (marked partial) when the pipe closes without a newline. Bytes
//! are passed through untouched: no UTF-8 decoding, colour codes kept.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::event::{LogLine, Phase, Stream};
use crate::output::LogSink;

/// Longest line kept in one piece; longer lines arrive in pieces marked
/// `continues`. A multiple of journald's default line limit (48 KiB), so the
/// journal's own split points fall where ours do.
pub const MAX_LINE: usize = 21 * 48 * 1024;

/// Who is writing into a pipe.
#[derive(Clone)]
pub struct PipeOwner {
    /// Project name.
    pub project: Arc<str>,
    /// Service name.
    pub service: Arc<str>,
    /// Build or run.
    pub phase: Phase,
    /// The process.
    pub pid: Option<u32>,
    /// Build id for build output.
    pub build_id: Option<Arc<str>>,
    /// The image digest, for a container service.
    pub image: Option<Arc<str>>,
}

impl PipeOwner {
    fn line(&self, stream: Stream, line: Vec<u8>, partial: bool, continues: bool) -> LogLine {
        LogLine {
            project: self.project.clone(),
            service: self.service.clone(),
            phase: self.phase,
            stream,
            pid: self.pid,
            build_id: self.build_id.clone(),
            image: self.image.clone(),
            line,
            partial,
            continues,
        }
    }
}

/// Copies `pipe` into `sink` line by line until EOF.
pub async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    owner: PipeOwner,
    stream: Stream,
    sink: Arc<dyn LogSink>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while let Some(i) = memchr(b'\n', chunk) {
            pending.extend_from_slice(&chunk[..i]);
            chunk = &chunk[i + 1..];
            let line = std::mem::take(&mut pending);
            sink.write(&owner.line(stream, line, false, false)).await;
        }
        pending.extend_from_slice(chunk);
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            let line = std::mem::replace(&mut pending, rest);
            sink.write(&owner.line(stream, line, false, true)).await;
        }
    }
    if !pending.is_empty() {
        sink.write(&owner.line(stream, pending, true, false)).await;
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::BoxFuture;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(Vec<u8>, bool)>>);
    impl LogSink for Collect {
        fn write<'a>(&'a self, line: &'a LogLine) -> BoxFuture<'a, ()> {
            self.0
                .lock()
                .unwrap()
                .push((line.line.clone(), line.partial));
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn splits_lines_and_flushes_partial_tail() {
        let sink = Arc::new(Collect::default());
        let owner = PipeOwner {
            project: "p".into(),
            service: "s".into(),
            phase: Phase::Run,
            pid: None,
            build_id: None,
            image: None,
        };
        let data: &[u8] = b"one\n\xff\xfe bin\n\x1b[31mred\x1b[0m\ntail";
        pump(data, owner, Stream::Stdout, sink.clone()).await;
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                (b"one".to_vec(), false),
                (b"\xff\xfe bin".to_vec(), false),
                (b"\x1b[31mred\x1b[0m".to_vec(), false),
                (b"tail".to_vec(), true)
            ]
        );
    }
}
