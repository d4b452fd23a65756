//! Attention kernels for the CPU as candle custom ops: the scores are made one tile at a time by
//! the same `gemm` kernels candle's matmul uses and consumed at once (online softmax), so no
//! score matrix is ever held; the text probabilities of the foreground mask are one product and
//! one softmax pass per row tile. f32 only: callers widen other dtypes first.

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::vexp::{online_softmax_tile, softmax_rows};

/// Query rows per work item: large enough to reuse each key and value tile many times.
const TILE_Q: usize = 128;
/// Keys per score tile: a TILE_Q x TILE_K tile (512 KiB) stays in a Zen 4 core's L2 cache, and
/// FLUX's text and a 256x256 image's tokens (768 keys) take one tile.
const TILE_K: usize = 1024;

/// Query rows per work item: [`TILE_Q`], or fewer so that a short sequence still gives every
/// core a few items.
fn query_tile(batch: usize, len_q: usize) -> usize {
    let items = 4 * rayon::current_num_threads();
    (batch * len_q)
        .div_ceil(items)
        .next_multiple_of(16)
        .clamp(16, TILE_Q)
}

/// An f32 (b, heads, len, dim) tensor read through its layout, any strides.
struct Heads<'a> {
    data: &'a [f32],
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a> Heads<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<Self> {
        let CpuStorage::F32(data) = storage else {
            bail!("{what}: the fused attention kernels read f32 only");
        };
        let (Ok(dims), Ok(strides)) = (
            <[usize; 4]>::try_from(layout.dims()),
            <[usize; 4]>::try_from(layout.stride()),
        ) else {
            bail!(
                "{what}: expected (b, heads, len, dim), got {:?}",
                layout.shape()
            );
        };
        Ok(Self {
            data: &data[layout.start_offset()..],
            dims,
            strides,
        })
    }

    /// Pointer to element (b, h, row, 0).
    fn at(&self, b: usize, h: usize, row: usize) -> *const f32 {
        let [sb, sh, sl, _] = self.strides;
        self.data[b * sb + h * sh + row * sl..].as_ptr()
    }

    fn row_stride(&self) -> isize {
        self.strides[2] as isize
    }

    fn col_stride(&self) -> isize {
        self.strides[3] as isize
    }
}

/// `dst = beta * lhs rhs`, or `dst += lhs rhs` when `accumulate`, on one thread: the kernels
/// already run one work item per core. Strides are (row, column) in elements.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
) {
    debug_assert!(dst.len() >= (m - 1) * dst_rs + n);
    // SAFETY: the callers pass pointers into live slices whose strides cover m x k and k x n
    // elements (checked by the shapes in `cpu_fwd`); dst is checked above.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// An additive mask (1 or b, 1, len_q, len_k), contiguous, in the model's dtype.
enum MaskRows<'a> {
    /// Added to the scores inside the softmax's first pass.
    F32(&'a [f32]),
    /// Widened and added to each score row before the softmax.
    Half(HalfMask<'a>),
}

enum HalfMask<'a> {
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

impl MaskRows<'_> {
    /// Whether entry `i` lets its query see its key.
    fn is_open(&self, i: usize) -> bool {
        let value = match self {
            MaskRows::F32(m) => m[i],
            MaskRows::Half(HalfMask::Bf16(m)) => m[i].to_f32(),
            MaskRows::Half(HalfMask::F16(m)) => m[i].to_f32(),
        };
        value != f32::NEG_INFINITY
    }

    /// The leading keys that `rows` query rows (from entry `first`, rows `len_k` apart) must
    /// read: up to the last key any of them may see. CharaConsist's borrowed keys come after
    /// the joint ones and are closed to the text queries, so a tile of text rows reads only
    /// the joint keys; the keys skipped would weigh exactly 0.
    fn open_keys(&self, first: usize, rows: usize, len_k: usize) -> usize {
        let mut keys = 0;
        for r in 0..rows {
            let row = first + r * len_k;
            if let Some(last) = (keys..len_k).rev().find(|&c| self.is_open(row + c)) {
                keys = last + 1;
                if keys == len_k {
                    break;
                }
            }
        }
        keys
    }
}

impl HalfMask<'_> {
    /// Adds `len` mask entries from `start` to `row`.
    fn add_to(&self, row: &mut [f32], start: usize) {
        let len = row.len();
        match self {
            HalfMask::Bf16(m) => row
                .iter_mut()
                .zip(&m[start..start + len])
                .for_each(|(x, m)| *x += m.to_f32()),
            HalfMask::F16(m) => row
                .iter_mut()
                .zip(&m[start..start + len])
                .for_each(|(x, m)| *x += m.to_f32()),
        }
    }
}

/// softmax(q k^T * scale + mask) v over f32 (b, heads, len, dim) inputs, returned as
/// (b, len_q, heads * dim_v) like `scaled_dot_product`.
pub struct FusedAttention {
    pub scale: f32,
    /// (1 or b, 1, len_q, len_k), contiguous; checked by the caller.
    pub mask: Option<Tensor>,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            Heads::new(q, q_l, "q")?,
            Heads::new(k, k_l, "k")?,
            Heads::new(v, v_l, "v")?,
        );
        let [b, heads, len_q, dim] = q.dims;
        let [_, _, len_k, dim_v] = v.dims;
        if k.dims != [b, heads, len_k, dim] || v.dims[..2] != [b, heads] {
            bail!(
                "attention shapes differ: q {:?}, k {:?}, v {:?}",
                q.dims,
                k.dims,
                v.dims
            );
        }
        let guard = self.mask.as_ref().map(|m| m.storage_and_layout());
        let mask = match &guard {
            None => None,
            Some((storage, layout)) => {
                let start = layout.start_offset();
                Some(match &**storage {
                    Storage::Cpu(CpuStorage::F32(m)) => MaskRows::F32(&m[start..]),
                    Storage::Cpu(CpuStorage::BF16(m)) => {
                        MaskRows::Half(HalfMask::Bf16(&m[start..]))
                    }
                    Storage::Cpu(CpuStorage::F16(m)) => MaskRows::Half(HalfMask::F16(&m[start..])),
                    _ => bail!("the attention mask must be a float tensor on the CPU"),
                })
            }
        };
        let mask_batches = self.mask.as_ref().map_or(1, |m| m.dims()[0]);
        let out_row = heads * dim_v;
        let tile_q = query_tile(b, len_q);
        let mut out = vec![0f32; b * len_q * out_row];
        out.par_chunks_mut(len_q * out_row)
            .enumerate()
            .for_each(|(bi, batch_out)| {
                batch_out
                    .par_chunks_mut(tile_q * out_row)
                    .enumerate()
                    .for_each(|(t, tile_out)| {
                        let rows = tile_out.len() / out_row;
                        let mut scores = vec![0f32; rows * TILE_K.min(len_k)];
                        let mut acc = vec![0f32; rows * dim_v];
                        let (mut max, mut sum, mut rescale) =
                            (vec![0f32; rows], vec![0f32; rows], vec![0f32; rows]);
                        let q0 = t * tile_q;
                        let mask_base = (bi % mask_batches) * len_q * len_k;
                        let keys = mask
                            .as_ref()
                            .map_or(len_k, |m| m.open_keys(mask_base + q0 * len_k, rows, len_k));
                        for h in 0..heads {
                            max.fill(f32::NEG_INFINITY);
                            sum.fill(0.0);
                            acc.fill(0.0);
                            for k0 in (0..keys).step_by(TILE_K) {
                                let cols = TILE_K.min(keys - k0);
                                let tile = &mut scores[..rows * cols];
                                product(
                                    (rows, cols, dim),
                                    tile,
                                    cols,
                                    (q.at(bi, h, q0), q.row_stride(), q.col_stride()),
                                    // k^T: rows are k's columns.
                                    (k.at(bi, h, k0), k.col_stride(), k.row_stride()),
                                    self.scale,
                                    false,
                                );
                                let tile_mask = match &mask {
                                    Some(MaskRows::F32(m)) => {
                                        Some((&m[mask_base + q0 * len_k + k0..], len_k))
                                    }
                                    Some(MaskRows::Half(m)) => {
                                        for (r, row) in tile.chunks_exact_mut(cols).enumerate() {
                                            m.add_to(row, mask_base + (q0 + r) * len_k + k0);
                                        }
                                        None
                                    }
                                    None => None,
                                };
                                online_softmax_tile(
                                    tile,
                                    cols,
                                    tile_mask,
                                    &mut max,
                                    &mut sum,
                                    &mut rescale,
                                );
                                for (row, &f) in acc.chunks_exact_mut(dim_v).zip(&rescale) {
                                    if f != 1.0 {
                                        row.iter_mut().for_each(|x| *x *= f);
                                    }
                                }
                                product(
                                    (rows, dim_v, cols),
                                    &mut acc,
                                    dim_v,
                                    (tile.as_ptr(), cols as isize, 1),
                                    (v.at(bi, h, k0), v.row_stride(), v.col_stride()),
                                    1.0,
                                    true,
                                );
                            }
                            for (r, row) in acc.chunks_exact(dim_v).enumerate() {
                                let dst = &mut tile_out[r * out_row + h * dim_v..][..dim_v];
                                dst.iter_mut().zip(row).for_each(|(d, x)| *d = x / sum[r]);
                            }
                        }
                    });
            });
        Ok((CpuStorage::F32(out), Shape::from((b, len_q, out_row))))
    }
}

/// softmax(q k^T) over f32 (b, heads, len, dim) inputs, unscaled, as (b, heads, len_q, len_k).
pub struct FusedTextProbs;

impl CustomOp2 for FusedTextProbs {
    fn name(&self) -> &'static str {
        "fused-text-probs"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k) = (Heads::new(q, q_l, "q")?, Heads::new(k, k_l, "k")?);
        let [b, heads, len_q, dim] = q.dims;
        let len_k = k.dims[2];
        if k.dims != [b, heads, len_k, dim] {
            bail!(
                "text attention shapes differ: q {:?}, k {:?}",
                q.dims,
                k.dims
            );
        }
        let mut out = vec![0f32; b * heads * len_q * len_k];
        out.par_chunks_mut(len_q * len_k)
            .enumerate()
            .for_each(|(bh, head_out)| {
                let (bi, h) = (bh / heads, bh % heads);
                for (t, tile) in head_out.chunks_mut(TILE_Q * len_k).enumerate() {
                    let rows = tile.len() / len_k;
                    product(
                        (rows, len_k, dim),
                        tile,
                        len_k,
                        (q.at(bi, h, t * TILE_Q), q.row_stride(), q.col_stride()),
                        (k.at(bi, h, 0), k.col_stride(), k.row_stride()),
                        1.0,
                        false,
                    );
                    softmax_rows(tile, len_k);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, heads, len_q, len_k))))
    }
}

/// Whether the fused CPU kernels take tensors of this dtype (widened to f32 on the way in).
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}
