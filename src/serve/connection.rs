//! One stream connection's bytes, in the mini-redis shape: frames read into a buffer (a cheap
//! completeness check first, then the frame, then the buffer advances), and answers queued and
//! written as the peer takes them. Each await here is one read or one write, and cancel-safe,
//! so the connection's task can wait on its peer, its answers and its clocks in one `select!`
//! (see [`crate::serve::unix`]).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::{Duration, Instant};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::wire::frame::{self, FrameError, Framed};

/// Bytes read per system call at most, and the buffer's spare room before each.
const READ_CHUNK: usize = 8 * 1024;

/// A connection, split so that reading and writing can wait at the same time.
pub(crate) struct Connection {
    pub reader: Reader,
    pub writer: Writer,
}

impl Connection {
    pub fn new(stream: UnixStream, max_frame: usize) -> Self {
        let (read, write) = stream.into_split();
        Connection {
            reader: Reader {
                read,
                codec: frame::codec(max_frame),
                max_frame,
                buf: BytesMut::with_capacity(READ_CHUNK),
                framed: false,
            },
            writer: Writer {
                write,
                out: VecDeque::new(),
                written: 0,
                front_since: Instant::now(),
            },
        }
    }
}

pub(crate) struct Reader {
    read: OwnedReadHalf,
    codec: LengthDelimitedCodec,
    max_frame: usize,
    buf: BytesMut,
    /// Whether a frame has been read: only a connection's first bytes can be an HTTP request.
    framed: bool,
}

/// Why no further frame can be read from a connection.
#[derive(Debug)]
pub(crate) enum Unframed {
    /// The peer declared a frame longer than the limit: the stream cannot be resynchronised.
    TooLong { max: usize },
    /// Anything else the codec reports (it fails on nothing but the limit today).
    Broken(FrameError),
    /// The connection opened with an HTTP request instead of a frame.
    Http,
}

impl Reader {
    /// The next whole frame already read, if there is one; "not yet" is `Ok(None)`.
    pub fn frame(&mut self) -> Result<Option<Bytes>, Unframed> {
        if !self.framed && frame::looks_like_http(&self.buf) {
            return Err(Unframed::Http);
        }
        match self.codec.decode(&mut self.buf) {
            Ok(Some(frame)) => {
                self.framed = true;
                Ok(Some(frame.freeze()))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(match frame::classify_io_error(e, self.max_frame, None) {
                FrameError::TooLong { max, .. } => Unframed::TooLong { max },
                e => Unframed::Broken(e),
            }),
        }
    }

    /// Whether part of a frame has been read.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// One read into the buffer; 0 at the peer's EOF. Room for a whole frame is reserved by the
    /// codec once it has read the length prefix, so the buffer grows to one frame and no
    /// further. Cancel-safe: a read that has not completed has taken no bytes.
    pub async fn read_some(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() == self.buf.len() {
            self.buf.reserve(READ_CHUNK);
        }
        self.read.read_buf(&mut self.buf).await
    }
}

/// The answers a peer has not taken yet, oldest first.
pub(crate) struct Writer {
    write: OwnedWriteHalf,
    out: VecDeque<Framed>,
    /// Bytes of the oldest answer already written.
    written: usize,
    /// When the oldest answer began to be written: each answer has its own time to be taken,
    /// so a long backlog read steadily is not mistaken for a peer that reads nothing.
    front_since: Instant,
}

impl Writer {
    pub fn queue(&mut self, frame: Framed) {
        if self.out.is_empty() {
            self.front_since = Instant::now();
        }
        self.out.push_back(frame);
    }

    /// Answers queued and not wholly written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// When the answer being written has taken `limit` without being wholly taken: a peer that
    /// stops reading is dropped then, instead of holding its answers, and its in-flight slots,
    /// for as long as it stays connected.
    pub fn overdue_at(&self, limit: Duration) -> Option<Instant> {
        (!self.out.is_empty()).then(|| self.front_since + limit)
    }

    /// Writes what the socket takes of the oldest answer. Cancel-safe: a write that has not
    /// completed has written nothing.
    pub async fn write_some(&mut self) -> std::io::Result<()> {
        let Some(front) = self.out.front() else {
            return Ok(());
        };
        let n = self.write.write(&front.as_bytes()[self.written..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.written += n;
        if self.written == front.as_bytes().len() {
            self.out.pop_front();
            self.written = 0;
            self.front_since = Instant::now();
        }
        Ok(())
    }

    /// Closes the write side: the peer reads EOF after the last answer.
    pub async fn shutdown(&mut self) {
        let _ = self.write.shutdown().await;
    }
}
