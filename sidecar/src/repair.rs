//! The repair protocol `/openmatch/repair/1.0.0`: one stream per request, carrying a
//! [`RepairRequest`] then a [`RepairResponse`] (wire.proto), each framed as a 4-byte
//! big-endian length then the protobuf bytes, requests capped at [`MAX_REQUEST_BYTES`] and
//! responses at [`MAX_REPAIR_BYTES`]. A node asks with libp2p request-response and this
//! codec, and serves with its own handler (`node::repair_server`), which bounds the streams
//! one peer may hold open.
//!
//! Reading is bounded by what the frame may allocate, not only by its length: the body is
//! read as it arrives (a peer announcing 64 MiB and sending nothing costs nothing), and its
//! element counts and sizes are checked before decoding ([`crate::decode_limits`]).
//!
//! A node whose batch lost to a quorum-certified hash asks a member holding that batch for
//! its digest set, then fetches the orders it lacks from that member: any holder, since
//! each order is proven by the certified digest set and by its origin's bundle signature,
//! which the answer carries ([`crate::bundle`]). See [`crate::consensus`] for when it is
//! used, and `node::recovery` for a restarted node's requests.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;

use crate::decode_limits::{self, Field};
use crate::proto::{RepairRequest, RepairResponse};

/// Protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/openmatch/repair/1.0.0");

/// Largest repair response, bytes (64 MiB: a digest set of ~880,000 orders).
pub(crate) const MAX_REPAIR_BYTES: usize = 64 << 20;

/// Largest repair request, bytes: a `FetchOrders` of
/// [`crate::decode_limits::MAX_FETCH_DIGESTS`] digests is ~560 KB.
pub(crate) const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Repair streams one peer may have open towards a node at once, over all its connections:
/// 16. Each holds at most a request ([`MAX_REQUEST_BYTES`]) while being read, so a peer can
/// make a node hold at most 16 MiB of requests; a stream past the bound is reset unread.
/// A member keeps at most half as many requests outstanding to one peer.
pub const MAX_INBOUND_STREAMS_PER_PEER: usize = 16;

/// Length-prefixed protobuf codec for the repair protocol.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepairCodec;

/// Reads one frame of at most `cap` bytes whose body has the shape `fields`, then decodes
/// it.
///
/// Errors: `InvalidData` for a length over `cap`, a body of the wrong shape or not
/// protobuf; `UnexpectedEof` for a body shorter than its length.
async fn read_frame<M: prost::Message + Default, T: AsyncRead + Unpin + Send>(
    io: &mut T,
    cap: usize,
    fields: &[Field],
) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("repair message of {len} bytes exceeds {cap}")));
    }
    // Grown as bytes arrive, not allocated from the announced length.
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("repair message ended after {} of {len} bytes", buf.len()),
        ));
    }
    decode_limits::check(&buf, fields).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    M::decode(buf.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<M: prost::Message, T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    msg: &M,
    cap: usize,
) -> io::Result<()> {
    let bytes = msg.encode_to_vec();
    if bytes.len() > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("repair message of {} bytes exceeds {cap}", bytes.len()),
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

/// Reads one repair request frame (at most [`MAX_REQUEST_BYTES`], shape-checked).
///
/// Errors: as [`read_frame`]; `InvalidData` for anything malformed.
pub(crate) async fn read_request<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<RepairRequest> {
    read_frame(io, MAX_REQUEST_BYTES, decode_limits::REPAIR_REQUEST).await
}

/// Writes one repair response frame (at most [`MAX_REPAIR_BYTES`]) and closes the stream.
///
/// Errors: `InvalidInput` for a response over the cap; the stream's I/O errors.
pub(crate) async fn write_response<T: AsyncWrite + Unpin + Send>(io: &mut T, res: &RepairResponse) -> io::Result<()> {
    write_frame(io, res, MAX_REPAIR_BYTES).await
}

impl libp2p::request_response::Codec for RepairCodec {
    type Protocol = StreamProtocol;
    type Request = RepairRequest;
    type Response = RepairResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<RepairRequest> {
        read_request(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<RepairResponse> {
        read_frame(io, MAX_REPAIR_BYTES, decode_limits::REPAIR_RESPONSE).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RepairRequest,
    ) -> io::Result<()> {
        write_frame(io, &req, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: RepairResponse,
    ) -> io::Result<()> {
        write_response(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BatchId, FetchOrders, repair_request};
    use libp2p::request_response::Codec as _;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_lengths_are_refused() {
        let req = RepairRequest {
            kind: Some(repair_request::Kind::Fetch(FetchOrders {
                batch_id: Some(BatchId { market: "M".into(), epoch: 3 }),
                digests: vec![vec![1; 32]],
            })),
        };
        let mut buf = futures::io::Cursor::new(Vec::new());
        RepairCodec.write_request(&PROTOCOL, &mut buf, req.clone()).await.unwrap();
        let mut rd = futures::io::Cursor::new(buf.into_inner());
        assert_eq!(RepairCodec.read_request(&PROTOCOL, &mut rd).await.unwrap(), req);

        let mut huge = futures::io::Cursor::new(((MAX_REQUEST_BYTES + 1) as u32).to_be_bytes().to_vec());
        let err = RepairCodec.read_request(&PROTOCOL, &mut huge).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// A frame announcing 64 MiB that sends 3 bytes ends with an error after allocating
    /// what arrived, not what was announced; a frame of empty digests is refused by shape.
    #[tokio::test]
    async fn short_and_misshapen_frames_are_refused() {
        let mut short = (MAX_REPAIR_BYTES as u32).to_be_bytes().to_vec();
        short.extend([1, 2, 3]);
        let err = RepairCodec.read_response(&PROTOCOL, &mut futures::io::Cursor::new(short)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        let empties = RepairRequest {
            kind: Some(repair_request::Kind::Fetch(FetchOrders { batch_id: None, digests: vec![vec![]; 1000] })),
        };
        let mut buf = futures::io::Cursor::new(Vec::new());
        write_frame(&mut buf, &empties, MAX_REQUEST_BYTES).await.unwrap();
        let mut rd = futures::io::Cursor::new(buf.into_inner());
        let err = RepairCodec.read_request(&PROTOCOL, &mut rd).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("FetchOrders.digests"), "{err}");
    }
}
