//! Server-Sent Events: an incremental decoder that follows the WHATWG
//! "interpreting an event stream" algorithm exactly, and a canonical encoder.

mod decoder;
mod encoder;

pub use decoder::{DecodeError, Decoder, Event, EventRef, DEFAULT_LIMIT};
pub use encoder::{EncodeError, Frame};
