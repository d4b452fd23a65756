//! CharaConsist (ICCV 2025): consistent characters across panels without training.
//! characonsist-spec.md describes the reference behaviour these modules reproduce.

pub mod bank;
pub mod bank_file;
pub mod look;
pub mod mask;
pub mod matching;
pub mod plan;
pub mod recipe;
pub mod reference;
pub mod score;
pub mod session;
pub mod steer;
