//! The protobuf codec for tim's own services.
//!
//! `tonic_prost::ProstCodec` with two differences:
//! - a frame that does not decode is the caller's fault and says so: `INVALID_ARGUMENT` rather
//!   than prost's `INTERNAL`, which reads like a server bug to whoever is debugging their client;
//! - each stream starts with 1 KiB encode and decode buffers instead of 8 KiB each. Chat frames
//!   are small and a node holds one stream per device, so the default buffers were a third of
//!   an idle device's memory; a larger frame grows its buffer as before.
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

/// Initial encode and decode buffer of a stream (tonic's default is 8 KiB). The yield threshold
/// (bytes encoded before a chunk is handed to HTTP/2) stays tonic's.
fn buffer_settings() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

/// A [`Codec`] for `application/grpc+proto` that reports undecodable input as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ImCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ImCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ImCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = ImDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ImDecoder(PhantomData)
    }
}

/// Decodes one protobuf message; see [`ImCodec`].
#[derive(Debug)]
pub struct ImDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ImDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
