"""The issue-15 anchor: the authors' CharaConsist pipeline (PyTorch, diffusers 0.32.2) rendering
the storyboard of a reference prompt file on the CPU in f32, timed in process.

    python pytorch_anchor.py AUTHORS_CHECKOUT MODEL_DIR PROMPTS.txt --size 256 [--steps 50]

AUTHORS_CHECKOUT is a clone of the authors' repository; its `models/` is read, patched as the
issue says (`cuda:0` -> `cpu`, bf16 -> f32) and imported from a temporary folder, so the clone
stays as it is. The prompt file is parsed as their inference.py parses it (`bg#fg#act` lines,
the first line of a group the identity), and the images are generated in their order: the
identity, then each frame's pre-run and main run, all from the same seed. Prints one line
`anchor: cpu_s=... wall_s=... load_cpu_s=... load_wall_s=... forwards=...`, the storyboard's
CPU seconds of the whole process (all threads) and wall seconds, model loading excluded.
"""

import argparse
import importlib
import os
import sys
import tempfile
import time

PATCHES = [
    ('"cuda:0"', '"cpu"'),
    ("torch.bfloat16", "torch.float32"),
    # diffusers 0.32.2 cannot reshape an empty key set (a panel that borrows no token, as a
    # random pipeline's can at 50 steps): an empty set has nothing to rotate.
    (
        "from diffusers.models.embeddings import apply_rotary_emb\n",
        "from diffusers.models.embeddings import apply_rotary_emb as _rotary\n"
        "apply_rotary_emb = lambda x, f: x if x.numel() == 0 else _rotary(x, f)\n",
    ),
]


def patched_models(checkout, into):
    """Copies the authors' models/ package into `into` with the run-time patches applied."""
    src = os.path.join(checkout, "models")
    dst = os.path.join(into, "models")
    os.makedirs(dst)
    for name in os.listdir(src):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(src, name)) as f:
            text = f.read()
        for old, new in PATCHES:
            text = text.replace(old, new)
        with open(os.path.join(dst, name), "w") as f:
            f.write(text)
    open(os.path.join(dst, "__init__.py"), "a").close()
    sys.path.insert(0, into)


def token_len(pipe, text):
    """Their get_text_tokens_length: T5 tokens of `text` without the end token."""
    mask = pipe.tokenizer_2(
        text, padding="max_length", max_length=512, truncation=True, return_tensors="pt"
    ).attention_mask
    return mask.sum().item() - 1


def groups(pipe, path):
    """Their load_prompt_file: (prompts, bg_lens, real_lens) per blank-line separated group."""
    out, cur = [], ([], [], [])
    with open(path) as f:
        lines = [line.strip() for line in f] + [""]
    for line in lines:
        if line:
            bg, fg, act = line.split("#")
            bg, fg = bg + " ", fg + " "
            prompt = bg + fg + act
            for part, value in zip(cur, (prompt, token_len(pipe, bg), token_len(pipe, prompt))):
                part.append(value)
        elif cur[0]:
            out.append(cur)
            cur = ([], [], [])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout")
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--share-bg", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="folder for the images (default: not saved)")
    args = ap.parse_args()

    t0, c0 = time.perf_counter(), time.process_time()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    patched_models(args.checkout, tmp.name)
    attn = importlib.import_module("models.attention_processor_characonsist")
    pipeline = importlib.import_module("models.pipeline_characonsist")
    pipe = pipeline.CharaConsistPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    side = args.size
    attn.reset_attn_processor(pipe, size=(side // 16, side // 16))
    forwards = 0

    def count(*_):
        nonlocal forwards
        forwards += 1

    pipe.transformer.register_forward_hook(count)
    load_wall, load_cpu = time.perf_counter() - t0, time.process_time() - c0

    t1, c1 = time.perf_counter(), time.process_time()
    # charaboard's recipe by default merges tokens (their use_interpolate).
    kw = dict(height=side, width=side, num_inference_steps=args.steps,
              use_interpolate=True, share_bg=args.share_bg)
    gen = lambda: torch.Generator("cpu").manual_seed(args.seed)
    images = []
    for prompts, bg_lens, real_lens in groups(pipe, args.prompts):
        attn.set_text_len(pipe, bg_lens[0], real_lens[0])
        ids, id_kwargs = pipe(prompts[0], is_id=True, generator=gen(), **kw)
        images.append(ids[0])
        fg = id_kwargs["curr_fg_mask"]
        spatial = dict(id_fg_mask=fg, id_bg_mask=~fg)
        for prompt, bg_len, real_len in zip(prompts[1:], bg_lens[1:], real_lens[1:]):
            attn.set_text_len(pipe, bg_len, real_len)
            _, spatial = pipe(prompt, is_pre_run=True, generator=gen(),
                              spatial_kwargs=spatial, **kw)
            frame, spatial = pipe(prompt, generator=gen(), spatial_kwargs=spatial, **kw)
            images.append(frame[0])
        attn.reset_id_bank(pipe)
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for i, im in enumerate(images):
            im.save(os.path.join(args.out, f"{i}.png"))
    print(f"anchor: cpu_s={cpu:.2f} wall_s={wall:.2f} load_cpu_s={load_cpu:.2f} "
          f"load_wall_s={load_wall:.2f} forwards={forwards} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")


if __name__ == "__main__":
    main()
