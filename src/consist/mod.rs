//! CharaConsist (ICCV 2025): consistent characters across panels without training.
//! characonsist-spec.md describes the reference behaviour these modules reproduce.

pub mod recipe;
