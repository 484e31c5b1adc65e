//! runtime-core: a `no_std` int8 engine for quantised ResNet backbones exported by host-trainer.
#![no_std]

extern crate alloc;
