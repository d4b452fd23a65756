//! File dialogs off the UI thread: a dialog runs on its own thread and its answer arrives over a
//! channel, so the window keeps painting. Tests use [`Dialogs::scripted`] instead.

use crossbeam_channel::{unbounded, Receiver, Sender};
use std::collections::VecDeque;
use std::path::PathBuf;

/// What a dialog was opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    OpenProject,
    SaveProjectAs,
    ModelFolder,
    ExportFolder,
    /// Character `k`'s identity picture.
    IdentityPicture(usize),
}

pub struct Dialogs {
    tx: Sender<(Purpose, Option<PathBuf>)>,
    rx: Receiver<(Purpose, Option<PathBuf>)>,
    /// Answers given in order instead of showing dialogs (tests).
    scripted: Option<VecDeque<Option<PathBuf>>>,
    open: bool,
}

impl Dialogs {
    pub fn native() -> Self {
        let (tx, rx) = unbounded();
        Self {
            tx,
            rx,
            scripted: None,
            open: false,
        }
    }

    pub fn scripted(answers: Vec<Option<PathBuf>>) -> Self {
        Self {
            scripted: Some(answers.into()),
            ..Self::native()
        }
    }

    /// Opens a dialog unless one is already open.
    pub fn ask(&mut self, purpose: Purpose, suggested_name: &str) {
        if self.open {
            return;
        }
        if let Some(answers) = &mut self.scripted {
            let _ = self.tx.send((purpose, answers.pop_front().flatten()));
            return;
        }
        self.open = true;
        let tx = self.tx.clone();
        let name = suggested_name.to_string();
        std::thread::spawn(move || {
            let ron = ["ron"];
            let answer = match purpose {
                Purpose::OpenProject => rfd::FileDialog::new()
                    .add_filter("storyboard", &ron)
                    .pick_file(),
                Purpose::SaveProjectAs => rfd::FileDialog::new()
                    .add_filter("storyboard", &ron)
                    .set_file_name(name)
                    .save_file(),
                Purpose::ModelFolder => rfd::FileDialog::new()
                    .set_title("FLUX.1 model folder")
                    .pick_folder(),
                Purpose::ExportFolder => {
                    rfd::FileDialog::new().set_title("Export to").pick_folder()
                }
                Purpose::IdentityPicture(_) => rfd::FileDialog::new()
                    .set_title("The identity's picture")
                    .add_filter("picture", &["png", "jpg", "jpeg", "webp"])
                    .pick_file(),
            };
            let _ = tx.send((purpose, answer));
        });
    }

    /// Answers that arrived since the last call.
    pub fn answers(&mut self) -> Vec<(Purpose, PathBuf)> {
        let answers: Vec<_> = self.rx.try_iter().collect();
        if !answers.is_empty() {
            self.open = false;
        }
        answers
            .into_iter()
            .filter_map(|(p, a)| a.map(|a| (p, a)))
            .collect()
    }
}
