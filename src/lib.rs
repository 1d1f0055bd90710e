#![doc = include_str!("../README.md")]
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
pub mod build;
pub mod config;
pub mod error;
#[cfg(feature = "std")]
pub mod file;
pub mod forward;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod parallel;
pub mod quant;
pub mod sampler;
pub mod state;
pub mod tile;
pub mod tokenizer;

pub use config::Config;
pub use error::{Error, Result, TokenError};
pub use forward::{forward, forward_batch, forward_on, Exec, Steps};
pub use kernels::Isa;
pub use model::Model;
pub use state::{AlignedBuffer, KvType, Shape, State, StateOptions};
