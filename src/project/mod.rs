//! The storyboard document: a RON file beside the images rendered for it.
