//! The document turned into a storyboard plan: the one place that reads a [`Project`] for
//! rendering. Everything after this sees only the plan.

use anyhow::Result;
use std::path::Path;

use super::model::{IdentitySource, PictureIdentity, Project};
use crate::consist::plan::{
    PanelShot, PictureKey, Plan, PlanModel, PlanSettings, PlannedPicture, Shot,
};
use crate::picture;
use crate::pipeline::NoiseSource;

/// Plans every image of `project` for `model`. `noise_file` replaces the project's seed for the
/// identity and every panel without a seed of its own (`charaboard render --noise`). A picture
/// identity's relative path is taken from the current folder; see [`plan_at`].
pub fn plan(project: &Project, model: &PlanModel, noise_file: Option<&Path>) -> Result<Plan> {
    plan_at(project, None, model, noise_file)
}

/// [`plan`] for a project saved in `folder`, against which a picture's relative path is read.
pub fn plan_at(
    project: &Project,
    folder: Option<&Path>,
    model: &PlanModel,
    noise_file: Option<&Path>,
) -> Result<Plan> {
    project.validate()?;
    let s = &project.settings;
    let noise = |own_seed: Option<u64>| match (own_seed, noise_file) {
        (Some(seed), _) => NoiseSource::Seed(seed),
        (None, Some(path)) => NoiseSource::File(path.to_path_buf()),
        (None, None) => NoiseSource::Seed(s.seed),
    };
    let identity = Shot {
        prompt: project.identity_prompt(),
        environment: project.identity.environment.clone(),
        environment_field: "identity.environment".into(),
        width: s.width,
        height: s.height,
        noise: noise(None),
        picture: match &project.identity.source {
            IdentitySource::Generated => None,
            IdentitySource::Picture(p) => Some(planned_picture(p, folder, s.width, s.height)?),
        },
    };
    let panels = (0..project.panels.len())
        .map(|i| {
            let panel = &project.panels[i];
            let scene = &project.scenes[panel.scene];
            let (width, height) = project.panel_size(i);
            PanelShot {
                shot: Shot {
                    prompt: project.panel_prompt(i),
                    environment: scene.environment.clone(),
                    environment_field: format!("scenes[{}].environment", panel.scene),
                    width,
                    height,
                    noise: noise(panel.seed),
                    picture: None,
                },
                scene: panel.scene,
                lock_background: scene.lock_background,
            }
        })
        .collect();
    let settings = PlanSettings {
        model: model.key.clone(),
        steps: s.steps.unwrap_or(model.default_steps),
        guidance: s.guidance,
        recipe: s.recipe.clone(),
    };
    Plan::new(settings, identity, panels)
}

/// The identity's picture read, checked and fitted, and its key.
fn planned_picture(
    p: &PictureIdentity,
    folder: Option<&Path>,
    width: usize,
    height: usize,
) -> Result<PlannedPicture> {
    let path = match folder {
        Some(folder) if p.path.is_relative() => folder.join(&p.path),
        _ => p.path.clone(),
    };
    let image = picture::load(&path, width, height, p.fit)?;
    Ok(PlannedPicture {
        key: PictureKey {
            fnv64: picture::digest(&path)?,
            fit: p.fit,
            inverter: p.inverter,
        },
        path,
        image,
    })
}
