//! safetensors reader
