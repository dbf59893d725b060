//! Compression and SHA-256 while streaming: the dump passes through in fixed-size chunks and is
//! never held whole in memory. zstd compresses on its own worker threads (one per core, at most
//! [`ZSTD_MAX_WORKERS`]), so reading the dump, hashing and writing the compressed bytes on the
//! task's thread overlap with the compression; peak memory stays flat (a few MB per worker).

use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder, ZstdDecoder, ZstdEncoder};
use async_compression::zstd::CParameter;
use async_compression::Level;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};

use crate::api::backup::Compression;

/// Size of the chunks the stream moves in.
pub const CHUNK: usize = 256 * 1024;

/// The most zstd worker threads one backup uses.
pub const ZSTD_MAX_WORKERS: usize = 4;

/// zstd's worker threads: `BERTH_ZSTD_WORKERS` when set (0: compress on the task's own thread,
/// as before; at most 16), else the machine's cores, at most [`ZSTD_MAX_WORKERS`], at least 1
/// (compression then still runs off the thread that reads, hashes and writes).
pub fn zstd_workers() -> u32 {
    if let Some(n) = std::env::var("BERTH_ZSTD_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    {
        return n.min(16);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, ZSTD_MAX_WORKERS) as u32
}

/// What passed through a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub sha256: String,
}

/// Hex of a SHA-256 digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `src` compressed with `compression`, as a reader.
pub fn compressor<'a, R: AsyncRead + Send + Unpin + 'a>(
    src: R,
    compression: Compression,
) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
    let buffered = BufReader::with_capacity(CHUNK, src);
    match compression {
        // Level 3 (zstd's default, as `zstd -3`), multi-threaded.
        Compression::Zstd => match zstd_workers() {
            0 => Box::pin(ZstdEncoder::new(buffered)),
            n => Box::pin(ZstdEncoder::with_quality_and_params(
                buffered,
                Level::Default,
                &[CParameter::nb_workers(n)],
            )),
        },
        Compression::Gzip => Box::pin(GzipEncoder::new(buffered)),
        Compression::None => Box::pin(buffered),
    }
}

/// `src` decompressed with `compression`, as a reader.
pub fn decompressor<'a, R: AsyncRead + Send + Unpin + 'a>(
    src: R,
    compression: Compression,
) -> Pin<Box<dyn AsyncRead + Send + 'a>> {
    let buffered = BufReader::with_capacity(CHUNK, src);
    match compression {
        Compression::Zstd => {
            let mut d = ZstdDecoder::new(buffered);
            d.multiple_members(true);
            Box::pin(d)
        }
        Compression::Gzip => {
            let mut d = GzipDecoder::new(buffered);
            d.multiple_members(true);
            Box::pin(d)
        }
        Compression::None => Box::pin(buffered),
    }
}

/// Copies `src` compressed into `dst`, hashing and counting what is written. Does not shut
/// `dst` down: publishing is the caller's decision.
pub async fn compress_into<R, W>(
    src: R,
    compression: Compression,
    dst: &mut W,
) -> std::io::Result<Written>
where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut reader = compressor(src, compression);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).await?;
        bytes += n as u64;
    }
    Ok(Written {
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// A reader that hashes and counts what passes through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// Bytes read so far and their SHA-256.
    pub fn finish(self) -> Written {
        Written {
            bytes: self.bytes,
            sha256: hex(&self.hasher.finalize()),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashing<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            this.hasher.update(new);
            this.bytes += new.len() as u64;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_every_compression() {
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let mut out = Vec::new();
            let w = compress_into(&data[..], c, &mut out).await.unwrap();
            assert_eq!(w.bytes as usize, out.len());
            assert_eq!(w.sha256, hex(&Sha256::digest(&out)));
            if c != Compression::None {
                assert!(out.len() < data.len() / 4, "{c:?} compresses");
            }
            let mut hashing = Hashing::new(&out[..]);
            let mut back = Vec::new();
            decompressor(&mut hashing, c)
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, data, "{c:?}");
            assert_eq!(hashing.finish(), w);
        }
    }
}
