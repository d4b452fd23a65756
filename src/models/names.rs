//! Where each tensor our models ask for (BFL names, as candle-transformers uses them) lives in a
//! diffusers checkpoint. The table is ../shared/flux-tensor-names.md, checked numerically there.
//! The same rules run backwards when the tiny-model writer exports diffusers files.

/// How one BFL tensor is made from diffusers tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The same tensor under another name.
    Same(String),
    /// These tensors concatenated along dim 0, each with the given number of rows.
    Rows(Vec<(String, usize)>),
    /// The two halves along dim 0 in the other order (adaLN shift/scale vs scale/shift).
    SwappedHalves(String),
    /// A (C, C) matrix stored where BFL keeps a (C, C, 1, 1) 1x1 convolution.
    Squeezed(String),
}

impl Source {
    pub fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Source::Same(n) | Source::SwappedHalves(n) | Source::Squeezed(n) => {
                Box::new(std::iter::once(n.as_str()))
            }
            Source::Rows(parts) => Box::new(parts.iter().map(|(n, _)| n.as_str())),
        }
    }
}

/// Sizes the fused transformer tensors are split by.
#[derive(Debug, Clone, Copy)]
pub struct TransformerDims {
    pub hidden: usize,
    pub mlp: usize,
}

/// Splits "prefix.N.rest" into (N, rest).
fn indexed<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (idx, rest) = rest.split_once('.')?;
    Some((idx.parse().ok()?, rest))
}

/// The diffusers source of a BFL-named FLUX transformer tensor.
pub fn transformer_source(bfl: &str, dims: TransformerDims) -> Source {
    let same = |s: String| Source::Same(s);
    let (h, m) = (dims.hidden, dims.mlp);
    if let Some((i, rest)) = indexed(bfl, "double_blocks") {
        let p = format!("transformer_blocks.{i}");
        let (head, leaf) = rest.rsplit_once('.').unwrap_or((rest, ""));
        let rows = |names: [&str; 3]| {
            Source::Rows(
                names
                    .iter()
                    .map(|n| (format!("{p}.attn.{n}.{leaf}"), h))
                    .collect(),
            )
        };
        return match head {
            "img_mod.lin" => same(format!("{p}.norm1.linear.{leaf}")),
            "txt_mod.lin" => same(format!("{p}.norm1_context.linear.{leaf}")),
            "img_attn.qkv" => rows(["to_q", "to_k", "to_v"]),
            "txt_attn.qkv" => rows(["add_q_proj", "add_k_proj", "add_v_proj"]),
            "img_attn.norm.query_norm" => same(format!("{p}.attn.norm_q.weight")),
            "img_attn.norm.key_norm" => same(format!("{p}.attn.norm_k.weight")),
            "txt_attn.norm.query_norm" => same(format!("{p}.attn.norm_added_q.weight")),
            "txt_attn.norm.key_norm" => same(format!("{p}.attn.norm_added_k.weight")),
            "img_attn.proj" => same(format!("{p}.attn.to_out.0.{leaf}")),
            "txt_attn.proj" => same(format!("{p}.attn.to_add_out.{leaf}")),
            "img_mlp.0" => same(format!("{p}.ff.net.0.proj.{leaf}")),
            "img_mlp.2" => same(format!("{p}.ff.net.2.{leaf}")),
            "txt_mlp.0" => same(format!("{p}.ff_context.net.0.proj.{leaf}")),
            "txt_mlp.2" => same(format!("{p}.ff_context.net.2.{leaf}")),
            _ => same(bfl.to_string()),
        };
    }
    if let Some((i, rest)) = indexed(bfl, "single_blocks") {
        let p = format!("single_transformer_blocks.{i}");
        let (head, leaf) = rest.rsplit_once('.').unwrap_or((rest, ""));
        return match head {
            "modulation.lin" => same(format!("{p}.norm.linear.{leaf}")),
            "linear1" => Source::Rows(vec![
                (format!("{p}.attn.to_q.{leaf}"), h),
                (format!("{p}.attn.to_k.{leaf}"), h),
                (format!("{p}.attn.to_v.{leaf}"), h),
                (format!("{p}.proj_mlp.{leaf}"), m),
            ]),
            "linear2" => same(format!("{p}.proj_out.{leaf}")),
            "norm.query_norm" => same(format!("{p}.attn.norm_q.weight")),
            "norm.key_norm" => same(format!("{p}.attn.norm_k.weight")),
            _ => same(bfl.to_string()),
        };
    }
    let (head, leaf) = bfl.rsplit_once('.').unwrap_or((bfl, ""));
    let top = |s: &str| same(format!("{s}.{leaf}"));
    match head {
        "img_in" => top("x_embedder"),
        "txt_in" => top("context_embedder"),
        "time_in.in_layer" => top("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer" => top("time_text_embed.timestep_embedder.linear_2"),
        "vector_in.in_layer" => top("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer" => top("time_text_embed.text_embedder.linear_2"),
        "guidance_in.in_layer" => top("time_text_embed.guidance_embedder.linear_1"),
        "guidance_in.out_layer" => top("time_text_embed.guidance_embedder.linear_2"),
        "final_layer.linear" => top("proj_out"),
        "final_layer.adaLN_modulation.1" => {
            Source::SwappedHalves(format!("norm_out.linear.{leaf}"))
        }
        _ => same(bfl.to_string()),
    }
}

fn resnet_part(rest: &str) -> String {
    match rest.strip_prefix("nin_shortcut") {
        Some(tail) => format!("conv_shortcut{tail}"),
        None => rest.to_string(),
    }
}

/// The diffusers `AutoencoderKL` source of a BFL-named FLUX VAE tensor; `levels` is the number
/// of resolution levels (`block_out_channels.len()`), needed because diffusers numbers the
/// decoder's up blocks in the opposite order.
pub fn vae_source(bfl: &str, levels: usize) -> Source {
    let Some((side, rest)) = bfl.split_once('.') else {
        return Source::Same(bfl.to_string());
    };
    let name = |s: String| format!("{side}.{s}");
    if let Some(tail) = rest.strip_prefix("norm_out") {
        return Source::Same(name(format!("conv_norm_out{tail}")));
    }
    if let Some(tail) = rest.strip_prefix("mid.block_1.") {
        return Source::Same(name(format!("mid_block.resnets.0.{}", resnet_part(tail))));
    }
    if let Some(tail) = rest.strip_prefix("mid.block_2.") {
        return Source::Same(name(format!("mid_block.resnets.1.{}", resnet_part(tail))));
    }
    if let Some(tail) = rest.strip_prefix("mid.attn_1.") {
        let (layer, leaf) = tail.split_once('.').unwrap_or((tail, ""));
        let target = match layer {
            "norm" => "group_norm",
            "q" => "to_q",
            "k" => "to_k",
            "v" => "to_v",
            "proj_out" => "to_out.0",
            _ => return Source::Same(bfl.to_string()),
        };
        let full = name(format!("mid_block.attentions.0.{target}.{leaf}"));
        return match (layer, leaf) {
            ("norm", _) | (_, "bias") => Source::Same(full),
            _ => Source::Squeezed(full),
        };
    }
    if let Some((i, tail)) = indexed(rest, "down") {
        return Source::Same(name(match indexed(tail, "block") {
            Some((j, r)) => format!("down_blocks.{i}.resnets.{j}.{}", resnet_part(r)),
            None => format!(
                "down_blocks.{i}.{}",
                tail.replacen("downsample", "downsamplers.0", 1)
            ),
        }));
    }
    if let Some((i, tail)) = indexed(rest, "up") {
        let i = levels.saturating_sub(1 + i);
        return Source::Same(name(match indexed(tail, "block") {
            Some((j, r)) => format!("up_blocks.{i}.resnets.{j}.{}", resnet_part(r)),
            None => format!(
                "up_blocks.{i}.{}",
                tail.replacen("upsample", "upsamplers.0", 1)
            ),
        }));
    }
    Source::Same(bfl.to_string())
}
