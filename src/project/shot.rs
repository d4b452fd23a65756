//! The shot list's vocabulary: how a panel is framed (shot size) and seen (camera angle), with
//! the names a storyboard shows and the words a prompt uses.

use serde::{Deserialize, Serialize};

/// How much of the scene the frame takes in, widest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShotSize {
    ExtremeWide,
    Wide,
    Medium,
    CloseUp,
    ExtremeCloseUp,
}

/// Where the camera looks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CameraAngle {
    EyeLevel,
    High,
    Low,
    BirdsEye,
    OverTheShoulder,
}

impl ShotSize {
    pub const ALL: [ShotSize; 5] = [
        Self::ExtremeWide,
        Self::Wide,
        Self::Medium,
        Self::CloseUp,
        Self::ExtremeCloseUp,
    ];

    /// As a storyboard sheet names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::ExtremeWide => "Extreme wide (EWS)",
            Self::Wide => "Wide (WS)",
            Self::Medium => "Medium (MS)",
            Self::CloseUp => "Close-up (CU)",
            Self::ExtremeCloseUp => "Extreme close-up (ECU)",
        }
    }

    /// As a prompt asks for it.
    pub fn prompt_words(self) -> &'static str {
        match self {
            Self::ExtremeWide => "extreme wide shot",
            Self::Wide => "wide shot",
            Self::Medium => "medium shot",
            Self::CloseUp => "close-up shot",
            Self::ExtremeCloseUp => "extreme close-up shot",
        }
    }
}

impl CameraAngle {
    pub const ALL: [CameraAngle; 5] = [
        Self::EyeLevel,
        Self::High,
        Self::Low,
        Self::BirdsEye,
        Self::OverTheShoulder,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::EyeLevel => "Eye level",
            Self::High => "High angle",
            Self::Low => "Low angle",
            Self::BirdsEye => "Bird's eye",
            Self::OverTheShoulder => "Over the shoulder",
        }
    }

    pub fn prompt_words(self) -> &'static str {
        match self {
            Self::EyeLevel => "eye-level view",
            Self::High => "high-angle view",
            Self::Low => "low-angle view",
            Self::BirdsEye => "bird's-eye view",
            Self::OverTheShoulder => "over-the-shoulder view",
        }
    }
}
