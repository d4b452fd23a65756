//! The document turned into a storyboard plan: the one place that reads a [`Project`] for
//! rendering. Everything after this sees only the plan.

use anyhow::Result;
use std::path::Path;

use super::model::{IdentitySource, PictureIdentity, Project};
use crate::consist::mask::Grid;
use crate::consist::plan::{
    PanelShot, PictureKey, Plan, PlanModel, PlanSettings, PlannedPicture, Quality, Shot,
    ShotCharacter,
};
use crate::picture;
use crate::pipeline::NoiseSource;

/// Plans every image of `project` for `model`, as drafts or finals as its settings say.
/// `noise_file` replaces the project's seed for the
/// identity and every panel without a seed of its own (`charaboard render --noise`). A picture
/// identity's picture is read and checked here, so a bad one fails before any work.
pub fn plan(project: &Project, model: &PlanModel, noise_file: Option<&Path>) -> Result<Plan> {
    plan_at(project, model, noise_file, project.settings.quality())
}

/// [`plan`] at a chosen quality: what a take of that quality is judged against.
pub fn plan_at(
    project: &Project,
    model: &PlanModel,
    noise_file: Option<&Path>,
    quality: Quality,
) -> Result<Plan> {
    project.validate()?;
    let s = &project.settings;
    let noise = |own_seed: Option<u64>| match (own_seed, noise_file) {
        (Some(seed), _) => NoiseSource::Seed(seed),
        (None, Some(path)) => NoiseSource::File(path.to_path_buf()),
        (None, None) => NoiseSource::Seed(s.seed),
    };
    let shows = |characters: &[usize]| -> Vec<ShotCharacter> {
        characters
            .iter()
            .map(|&index| ShotCharacter {
                index,
                prompt: project.characters[index].prompt.clone(),
            })
            .collect()
    };
    let identity_size = s.identity_size(quality);
    let identities = (0..project.characters.len())
        .map(|k| {
            let identity = &project.characters[k].identity;
            Ok(Shot {
                prompt: project.identity_prompt_of(k),
                environment: identity.environment.clone(),
                environment_field: format!("characters[{k}].identity.environment"),
                characters: shows(&[k]),
                characters_field: format!("characters[{k}].prompt"),
                width: identity_size.0,
                height: identity_size.1,
                noise: noise(identity.seed),
                picture: match &identity.source {
                    IdentitySource::Generated => None,
                    IdentitySource::Picture(p) => {
                        Some(planned_picture(p, identity_size.0, identity_size.1)?)
                    }
                },
                painted_mask: identity
                    .painted_mask
                    .as_ref()
                    .map(|m| m.at(Grid::of_size(identity_size.0, identity_size.1))),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let panels = (0..project.panels.len())
        .map(|i| {
            let panel = &project.panels[i];
            let scene = &project.scenes[panel.scene];
            let (width, height) = s.sized(quality, project.panel_size(i));
            PanelShot {
                shot: Shot {
                    prompt: project.panel_prompt(i),
                    environment: scene.environment.clone(),
                    environment_field: format!("scenes[{}].environment", panel.scene),
                    characters: shows(&project.panel_characters(i)),
                    characters_field: format!("panels[{i}].characters"),
                    width,
                    height,
                    noise: noise(panel.seed),
                    picture: None,
                    painted_mask: None,
                },
                scene: panel.scene,
                lock_background: scene.lock_background,
            }
        })
        .collect();
    let settings = PlanSettings {
        model: model.key.clone(),
        model_steps: model.default_steps,
        quality,
        steps: s.steps_at(quality, s.steps.unwrap_or(model.default_steps)),
        guidance: s.guidance,
        recipe: s.recipe.clone(),
    };
    Plan::with_identities(settings, identities, panels)
}

/// Reads and checks every picture identity's picture at the size the project renders it now
/// (a draft's when drafts are on), so that a command can refuse a bad one before it loads a
/// model (the plan checks it again, as it reads it).
pub fn check_picture(project: &Project) -> Result<()> {
    let (width, height) = project.settings.identity_size(project.settings.quality());
    for character in &project.characters {
        if let IdentitySource::Picture(p) = &character.identity.source {
            picture::load(&p.resolved(), width, height, p.fit)?;
        }
    }
    Ok(())
}

/// The identity's picture read, checked and fitted, and its key.
fn planned_picture(p: &PictureIdentity, width: usize, height: usize) -> Result<PlannedPicture> {
    let path = p.resolved();
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
