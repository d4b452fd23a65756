//! The document turned into a storyboard plan: the one place that reads a [`Project`] for
//! rendering. Everything after this sees only the plan.

use anyhow::Result;
use std::path::Path;

use super::model::Project;
use crate::consist::plan::{PanelShot, Plan, PlanModel, PlanSettings, Quality, Shot};
use crate::pipeline::NoiseSource;

/// Plans every image of `project` for `model`, as drafts or finals as its settings say.
/// `noise_file` replaces the project's seed for the identity and every panel without a seed of
/// its own (`charaboard render --noise`).
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
    let identity = Shot {
        prompt: project.identity_prompt(),
        environment: project.identity.environment.clone(),
        environment_field: "identity.environment".into(),
        width: s.sized(quality, (s.width, s.height)).0,
        height: s.sized(quality, (s.width, s.height)).1,
        noise: noise(project.identity.seed),
    };
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
                    width,
                    height,
                    noise: noise(panel.seed),
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
    Plan::new(settings, identity, panels)
}
