//! The repair protocol `/openmatch/repair/1.0.0`: libp2p request-response carrying
//! [`RepairRequest`] / [`RepairResponse`] (wire.proto), each framed as a 4-byte big-endian
//! length then the protobuf bytes, capped at [`MAX_REPAIR_BYTES`].
//!
//! A node whose batch lost to a quorum-certified hash asks a member holding that batch for
//! its digest set, then fetches the orders it lacks from that member: any holder, since
//! each order is proven by the certified digest set and by its origin's bundle signature,
//! which the answer carries ([`crate::bundle`]). See [`crate::consensus`] for when it is
//! used, and `node::recovery` for a restarted node's requests.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;

use crate::proto::{RepairRequest, RepairResponse};

/// Protocol name.
pub(crate) const PROTOCOL: StreamProtocol = StreamProtocol::new("/openmatch/repair/1.0.0");

/// Largest repair message, bytes (64 MiB: a digest set of ~900,000 orders).
pub(crate) const MAX_REPAIR_BYTES: usize = 64 << 20;

/// Length-prefixed protobuf codec for the repair protocol.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RepairCodec;

async fn read_frame<M: prost::Message + Default, T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_REPAIR_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("repair message of {len} bytes exceeds {MAX_REPAIR_BYTES}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    M::decode(buf.as_slice()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<M: prost::Message, T: AsyncWrite + Unpin + Send>(io: &mut T, msg: &M) -> io::Result<()> {
    let bytes = msg.encode_to_vec();
    if bytes.len() > MAX_REPAIR_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("repair message of {} bytes exceeds {MAX_REPAIR_BYTES}", bytes.len()),
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
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
        read_frame(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<RepairResponse> {
        read_frame(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RepairRequest,
    ) -> io::Result<()> {
        write_frame(io, &req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: RepairResponse,
    ) -> io::Result<()> {
        write_frame(io, &res).await
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

        let mut huge = futures::io::Cursor::new(((MAX_REPAIR_BYTES + 1) as u32).to_be_bytes().to_vec());
        let err = RepairCodec.read_request(&PROTOCOL, &mut huge).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
