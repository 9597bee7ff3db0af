//! Weft's wire types: generated from `proto/weft/v1/*.proto`, nothing else.
//!
//! *Architecture invariant:* this crate holds generated code only. Conversions into domain
//! types live in `weft_node::api::convert`.

#![allow(clippy::all, missing_docs)]

/// Version 1 of the Weft client API.
pub mod v1 {
    tonic::include_proto!("weft.v1");

    /// The encoded `FileDescriptorSet` of every Weft proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));
}
