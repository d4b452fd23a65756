//! The text encoders' options moved to [`crate::text`]; this path stays only until main.rs
//! imports `charaboard::text::TextOptions`.

pub use crate::text::TextOptions;
