//! The fused CPU attention and the query-chunked attention against the plain computation, on
//! random inputs with CharaConsist's additive mask (text queries see no borrowed key, foreground
//! queries only the foreground ones, background queries only the background ones).

mod common;

use candle_core::{DType, Device, Tensor};
use charaboard::flux::attention::{
    attention_in_query_chunks, fused_attention, scaled_dot_product, text_probs,
};
use common::{max_abs, max_abs_diff};

const HEADS: usize = 3;
const DIM: usize = 16;
/// Enough text rows that a query tile holds text rows only (they read no borrowed key).
const TXT: usize = 100;
/// Not a multiple of any tile, and over one query tile.
const IMG: usize = 281;
/// With these, the keys take over one score tile (1024), so a tile's mask starts mid-row.
const BG: usize = 450;
const FG: usize = 370;

/// q, k, v of a batch of `b` over `[text | image | bg keys | fg keys]`; v is a strided view.
fn inputs(b: usize) -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let (seq, keys) = (TXT + IMG, TXT + IMG + BG + FG);
    let q = Tensor::randn(0f32, 1.5, (b, HEADS, seq, DIM), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.5, (b, HEADS, keys, DIM), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (b, keys, HEADS, DIM), &dev)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    (q, k, v)
}

/// The additive mask in the block structure of steer.rs: every third image token is foreground.
fn consist_mask(dtype: DType) -> Tensor {
    let (seq, keys) = (TXT + IMG, TXT + IMG + BG + FG);
    let values: Vec<f32> = (0..seq)
        .flat_map(|q| {
            (0..keys).map(move |k| {
                let allowed = match k {
                    k if k < seq => true,
                    _ if q < TXT => false,
                    k => (q - TXT).is_multiple_of(3) == (k >= seq + BG),
                };
                if allowed {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (1, 1, seq, keys), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The same mask stored key by key (a key's entries for consecutive queries side by side), as
/// steer.rs makes it on the CPU: the fused kernel reads it in place.
fn key_major(mask: &Tensor) -> Tensor {
    let stored = mask.transpose(2, 3).unwrap().contiguous().unwrap();
    stored.transpose(2, 3).unwrap()
}

fn plain(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    attention_in_query_chunks(q, k, v, mask, q.dim(2).unwrap()).unwrap()
}

#[test]
fn fused_attention_equals_the_plain_one_in_f32_with_and_without_the_mask() {
    for b in [1, 2] {
        let (q, k, v) = inputs(b);
        let mask = consist_mask(DType::F32);
        let by_key = key_major(&mask);
        for mask in [None, Some(&mask), Some(&by_key)] {
            let want = plain(&q, &k, &v, mask);
            let got = fused_attention(&q, &k, &v, mask).unwrap();
            assert_eq!(got.dims(), &[b, TXT + IMG, HEADS * DIM]);
            let (diff, size) = (max_abs_diff(&got, &want), max_abs(&want));
            println!(
                "f32, batch {b}, mask {}: max |diff| {diff:.2e} of outputs up to {size:.2}",
                mask.is_some()
            );
            // f32 rounding: the plain path rounds q / sqrt(d) before the product, the fused one
            // scales the product, so logits near 10 differ by an ulp (1e-6), and so do weights.
            assert!(diff <= 4e-6 * size, "batch {b}: max |diff| {diff}");
            assert!(size > 0.5, "degenerate output");
        }
    }
}

#[test]
fn the_mask_decides_which_keys_a_query_reads() {
    let (q, k, v) = inputs(1);
    let mask = consist_mask(DType::F32);
    let masked = fused_attention(&q, &k, &v, Some(&mask)).unwrap();
    let open = fused_attention(&q, &k, &v, None).unwrap();
    assert!(max_abs_diff(&masked, &open) > 0.05);
    // Read in place or copied, the mask's layout changes no bit (the last query tile, 381 rows
    // not being a multiple of 16, is copied either way).
    let by_key = fused_attention(&q, &k, &v, Some(&key_major(&mask))).unwrap();
    assert_eq!(max_abs_diff(&masked, &by_key), 0.0);
    // Text queries see exactly `[text | image]`.
    let seq = TXT + IMG;
    let own = fused_attention(
        &q.narrow(2, 0, TXT).unwrap(),
        &k.narrow(2, 0, seq).unwrap(),
        &v.narrow(2, 0, seq).unwrap(),
        None,
    )
    .unwrap();
    assert!(max_abs_diff(&masked.narrow(1, 0, TXT).unwrap(), &own) < 4e-6 * max_abs(&own));
}

#[test]
fn bf16_inputs_are_accumulated_in_f32() {
    let (q, k, v) = inputs(2);
    let to = |t: &Tensor, d: DType| t.to_dtype(d).unwrap();
    let (qb, kb, vb) = (
        to(&q, DType::BF16),
        to(&k, DType::BF16),
        to(&v, DType::BF16),
    );
    let mask = consist_mask(DType::BF16);
    // The exact answer for the bf16 inputs, in f32.
    let want = plain(
        &to(&qb, DType::F32),
        &to(&kb, DType::F32),
        &to(&vb, DType::F32),
        Some(&to(&mask, DType::F32)),
    );
    let fused = fused_attention(&qb, &kb, &vb, Some(&mask)).unwrap();
    assert_eq!(fused.dtype(), DType::BF16);
    let fused_diff = max_abs_diff(&to(&fused, DType::F32), &want);
    let plain_diff = max_abs_diff(&to(&plain(&qb, &kb, &vb, Some(&mask)), DType::F32), &want);
    println!("bf16: fused max |diff| {fused_diff:.2e}, plain bf16 {plain_diff:.2e}");
    // One bf16 rounding of outputs under 4: 2^-7 relative.
    assert!(fused_diff <= 4.0 / 128.0, "{fused_diff}");
    assert!(fused_diff <= plain_diff, "{fused_diff} > {plain_diff}");
}

#[test]
fn query_chunks_give_the_same_result_as_one_pass() {
    let (q, k, v) = inputs(2);
    let mask = consist_mask(DType::F32);
    let whole = plain(&q, &k, &v, Some(&mask));
    for rows in [1, 37, 128] {
        let chunked = attention_in_query_chunks(&q, &k, &v, Some(&mask), rows).unwrap();
        let diff = max_abs_diff(&chunked, &whole);
        println!("{rows} rows a chunk: max |diff| {diff:.2e}");
        // Rows are independent; only the matrix kernel's blocking (a chunk's row count picks
        // other tile kernels) changes the order of the sums over the keys. A sum of n terms in
        // another order moves by at most n ulps of its largest partial sum: here, the
        // softmax weights summing to 1, n eps max|v| (measured up to 2.6e-6 under load).
        let keys = k.dim(2).unwrap() as f32;
        let bound = keys * f32::EPSILON * max_abs(&v);
        assert!(
            diff <= bound,
            "{rows} rows a chunk: max |diff| {diff} over {bound}"
        );
    }
}

#[test]
fn a_mask_of_another_shape_is_refused() {
    let (q, k, v) = inputs(1);
    let mask = consist_mask(DType::F32).narrow(3, 0, 10).unwrap();
    let err = scaled_dot_product(&q, &k, &v, Some(&mask)).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn fused_text_probabilities_equal_candles_softmax() {
    let (q, k, _) = inputs(2);
    let q_img = q.narrow(2, TXT, IMG).unwrap();
    let k_text = k.narrow(2, 0, TXT).unwrap();
    let want = candle_nn::ops::softmax_last_dim(
        &q_img
            .contiguous()
            .unwrap()
            .matmul(&k_text.contiguous().unwrap().t().unwrap())
            .unwrap(),
    )
    .unwrap();
    let got = text_probs(&q_img, &k_text).unwrap();
    let diff = max_abs_diff(&got, &want);
    println!("text probabilities: max |diff| {diff:.2e}");
    assert!(diff < 1e-6, "{diff}");
}
