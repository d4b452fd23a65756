//! Attention kernels for the CPU as candle custom ops: the scores are made one tile at a time by
//! the same `gemm` kernels candle's matmul uses and consumed at once (online softmax), so no
//! score matrix is ever held; the text probabilities of the foreground mask are one product and
//! one softmax pass per row tile. f32 only: callers widen other dtypes first.

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::vexp::{divide_columns, online_softmax_columns, softmax_rows};
use crate::cpu_slices::written_in_full;

/// Query rows per work item: large enough to reuse each key and value tile many times.
const TILE_Q: usize = 128;
/// Keys per score tile: a TILE_Q x TILE_K tile (512 KiB) stays in a Zen 4 core's L2 cache, and
/// FLUX's text and a 256x256 image's tokens (768 keys) take one tile.
const TILE_K: usize = 1024;

/// Query rows per work item: [`TILE_Q`], or fewer so that a short sequence still gives every
/// core two items; a multiple of 64 where it can be, the rows of gemm's widest kernel (96
/// rows ran a third of the products in its half-width one). Two items a core rather than four
/// keep a 256x256 image's 768 queries in tiles of 128 on two cores as on one (0.993x the wall
/// time of 64-row tiles, and the same latents at one thread and two).
fn query_tile(batch: usize, len_q: usize) -> usize {
    let items = 2 * rayon::current_num_threads();
    let rows = (batch * len_q).div_ceil(items);
    match rows >= 64 {
        true => (rows / 64 * 64).min(TILE_Q),
        false => rows.next_multiple_of(16),
    }
    .max(16)
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

/// `dst = beta * lhs rhs`, or `dst += beta * lhs rhs` when `accumulate`, on one thread: the
/// kernels already run one work item per core. Strides are (row, column) in elements.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
    accumulate: bool,
) {
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1) * dst_cs);
    // SAFETY: the callers pass pointers into live slices whose strides cover m x k and k x n
    // elements (checked by the shapes in `cpu_fwd`); dst is checked above.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
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

/// An additive mask (1 or b, 1, len_q, len_k) in the model's dtype, read through its strides:
/// query-major (rows of keys, as the plain computation adds it) or key-major (a key's entries
/// for consecutive queries side by side, as the score tiles hold them, so a tile reads its
/// mask in place).
struct Mask<'a> {
    values: MaskValues<'a>,
    /// Strides of the batch (0 when one mask serves every image), query and key dimensions.
    batch: usize,
    query: usize,
    key: usize,
}

enum MaskValues<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
    F16(&'a [half::f16]),
}

impl<'a> Mask<'a> {
    fn new(storage: &'a Storage, layout: &Layout) -> Result<Self> {
        let start = layout.start_offset();
        let values = match storage {
            Storage::Cpu(CpuStorage::F32(m)) => MaskValues::F32(&m[start..]),
            Storage::Cpu(CpuStorage::BF16(m)) => MaskValues::Bf16(&m[start..]),
            Storage::Cpu(CpuStorage::F16(m)) => MaskValues::F16(&m[start..]),
            _ => bail!("the attention mask must be a float tensor on the CPU"),
        };
        let (&[batches, _, _, _], &[batch, _, query, key]) = (layout.dims(), layout.stride())
        else {
            bail!(
                "the attention mask must be (b, 1, queries, keys), got {:?}",
                layout.shape()
            );
        };
        Ok(Self {
            values,
            batch: if batches == 1 { 0 } else { batch },
            query,
            key,
        })
    }

    /// Entry (query `q`, key `j`) of image `b`, widened.
    fn at(&self, b: usize, q: usize, j: usize) -> f32 {
        let i = b * self.batch + q * self.query + j * self.key;
        match self.values {
            MaskValues::F32(m) => m[i],
            MaskValues::Bf16(m) => m[i].to_f32(),
            MaskValues::F16(m) => m[i].to_f32(),
        }
    }

    fn is_open(&self, b: usize, q: usize, j: usize) -> bool {
        self.at(b, q, j) != f32::NEG_INFINITY
    }

    /// The leading keys that queries `q0..q0 + rows` of image `b` must read: up to the last key
    /// any of them may see. CharaConsist's borrowed keys come after the joint ones and are
    /// closed to the text queries, so a tile of text rows reads only the joint keys; the keys
    /// skipped would weigh exactly 0.
    fn open_keys(&self, b: usize, (q0, rows): (usize, usize), len_k: usize) -> usize {
        let queries = q0..q0 + rows;
        if self.query == 1 {
            // Key-major: a key's entries for the tile's queries are side by side; scan whole
            // keys from the last, each in one vectorised pass.
            let first = b * self.batch + q0;
            let open = |j: usize| {
                let at = first + j * self.key;
                match self.values {
                    MaskValues::F32(m) => any_open(&m[at..][..rows], |x| x),
                    MaskValues::Bf16(m) => any_open(&m[at..][..rows], half::bf16::to_f32),
                    MaskValues::F16(m) => any_open(&m[at..][..rows], half::f16::to_f32),
                }
            };
            return (0..len_k)
                .rev()
                .find(|&j| open(j))
                .map_or(0, |last| last + 1);
        }
        let mut keys = 0;
        for q in queries {
            if let Some(last) = (keys..len_k).rev().find(|&j| self.is_open(b, q, j)) {
                keys = last + 1;
                if keys == len_k {
                    break;
                }
            }
        }
        keys
    }

    /// Keys `0..keys` of queries `q0..q0 + rows` of image `b` as a score tile reads them: key
    /// j's entries from `j * stride`, `stride` apart. Read in place where the mask is f32,
    /// key-major and the tile's lanes are all queries; otherwise copied (and widened) into
    /// `scratch`, grown as needed.
    fn tile<'s>(
        &'s self,
        b: usize,
        (q0, rows): (usize, usize),
        (keys, stride): (usize, usize),
        scratch: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize) {
        let first = b * self.batch + q0 * self.query;
        if let (MaskValues::F32(m), 1, true) = (&self.values, self.query, rows == stride) {
            return (&m[first..], self.key);
        }
        if scratch.len() < keys * stride {
            scratch.resize(keys * stride, 0.0);
        }
        let out = &mut scratch[..keys * stride];
        let at = (first, rows, keys, stride);
        match self.values {
            MaskValues::F32(m) => self.copy_tile(m, |x| x, out, at),
            MaskValues::Bf16(m) => self.copy_tile(m, half::bf16::to_f32, out, at),
            MaskValues::F16(m) => self.copy_tile(m, half::f16::to_f32, out, at),
        }
        (out, stride)
    }

    /// [`Self::tile`]'s copy, from entry `first`, in the order the mask is stored.
    fn copy_tile<T: Copy>(
        &self,
        values: &[T],
        widen: impl Fn(T) -> f32,
        out: &mut [f32],
        (first, rows, keys, stride): (usize, usize, usize, usize),
    ) {
        let (qs, ks) = (self.query, self.key);
        if qs == 1 {
            for (j, column) in out.chunks_exact_mut(stride).enumerate() {
                let from = &values[first + j * ks..][..rows];
                column[..rows]
                    .iter_mut()
                    .zip(from)
                    .for_each(|(x, &m)| *x = widen(m));
            }
        } else {
            for r in 0..rows {
                let row = first + r * qs;
                for (j, x) in out[r..].iter_mut().step_by(stride).take(keys).enumerate() {
                    *x = widen(values[row + j * ks]);
                }
            }
        }
    }
}

/// Whether any of `values` is not -inf; no early exit, so that the pass vectorises.
fn any_open<T: Copy>(values: &[T], widen: impl Fn(T) -> f32) -> bool {
    values
        .iter()
        .fold(false, |open, &m| open | (widen(m) != f32::NEG_INFINITY))
}

/// A work item's buffers, kept by each thread from one attention call to the next (a fresh
/// score tile per item cost an allocation and a zeroing pass the product overwrites anyway).
/// The tiles are column-major, one column per key and the queries down it, so that both
/// products run without repacking an operand (gemm packs a row-major key tile, and a row-major
/// score tile as the left operand of the value product) and the softmax reduces down columns.
#[derive(Default)]
struct TileScratch {
    scores: Vec<f32>,
    mask: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    rescale: Vec<f32>,
}

impl TileScratch {
    /// The buffers cut to `stride` query lanes, `cols` keys per score tile and `dim_v` values
    /// (the mask's, only used for a mask not read in place, as [`Mask::tile`] needs it); each
    /// item initialises what it reads.
    fn sized(&mut self, stride: usize, cols: usize, dim_v: usize) -> TileView<'_> {
        fn cut(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            &mut buf[..len]
        }
        TileView {
            scores: cut(&mut self.scores, stride * cols),
            mask: &mut self.mask,
            acc: cut(&mut self.acc, stride * dim_v),
            max: cut(&mut self.max, stride),
            sum: cut(&mut self.sum, stride),
            rescale: cut(&mut self.rescale, stride),
        }
    }
}

struct TileView<'a> {
    scores: &'a mut [f32],
    mask: &'a mut Vec<f32>,
    acc: &'a mut [f32],
    max: &'a mut [f32],
    sum: &'a mut [f32],
    rescale: &'a mut [f32],
}

thread_local! {
    static TILE_SCRATCH: std::cell::RefCell<TileScratch> = Default::default();
}

/// softmax(q k^T * scale + mask) v over f32 (b, heads, len, dim) inputs, returned as
/// (b, len_q, heads * dim_v) like `scaled_dot_product`.
pub struct FusedAttention {
    pub scale: f32,
    /// (1 or b, 1, len_q, len_k), query- or key-major (see [`mask_is_readable`]); its shape is
    /// checked by the caller.
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
            Some((storage, layout)) => Some(Mask::new(storage, layout)?),
            None => None,
        };
        let call = Call {
            q,
            k,
            v,
            mask,
            scale: self.scale,
        };
        let out_row = heads * dim_v;
        let tile_q = query_tile(b, len_q);
        // SAFETY: the items cover the output's rows; each writes every head of its rows.
        let out = unsafe {
            written_in_full(b * len_q * out_row, |out| {
                if out.is_empty() {
                    return;
                }
                out.par_chunks_mut(len_q * out_row)
                    .enumerate()
                    .for_each(|(bi, batch_out)| {
                        batch_out
                            .par_chunks_mut(tile_q * out_row)
                            .enumerate()
                            .for_each(|(t, tile_out)| {
                                TILE_SCRATCH.with_borrow_mut(|scratch| {
                                    call.attend_tile(bi, t * tile_q, tile_out, scratch)
                                })
                            });
                    })
            })
        };
        Ok((CpuStorage::F32(out), Shape::from((b, len_q, out_row))))
    }
}

/// One call's inputs, read by every work item.
struct Call<'a> {
    q: Heads<'a>,
    k: Heads<'a>,
    v: Heads<'a>,
    mask: Option<Mask<'a>>,
    scale: f32,
}

impl Call<'_> {
    /// The output rows of queries `q0..` of image `bi`, all heads: `out` holds whole rows of
    /// (heads * dim_v), all written (they may start uninitialised).
    fn attend_tile(
        &self,
        bi: usize,
        q0: usize,
        out: &mut [MaybeUninit<f32>],
        scratch: &mut TileScratch,
    ) {
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let [_, heads, _, dim] = q.dims;
        let [_, _, len_k, dim_v] = v.dims;
        let out_row = heads * dim_v;
        let rows = out.len() / out_row;
        // Query lanes: the softmax runs whole registers; lanes past `rows` are never read out.
        let stride = rows.next_multiple_of(16);
        let queries = (q0, rows);
        let keys = self
            .mask
            .as_ref()
            .map_or(len_k, |m| m.open_keys(bi, queries, len_k));
        let TileView {
            scores,
            mask,
            acc,
            max,
            sum,
            rescale,
        } = scratch.sized(stride, TILE_K.min(len_k), dim_v);
        // Once for every head.
        let mask = self
            .mask
            .as_ref()
            .map(|m| m.tile(bi, queries, (keys, stride), mask));
        if keys == 0 {
            // No key open to any of these queries: 0 / 0 as the plain computation gives.
            acc.fill(0.0);
        }
        let column_major = (1, stride);
        for h in 0..heads {
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            for k0 in (0..keys).step_by(TILE_K) {
                let cols = TILE_K.min(keys - k0);
                let tile = &mut scores[..stride * cols];
                product(
                    (rows, cols, dim),
                    tile,
                    column_major,
                    (q.at(bi, h, q0), q.row_stride(), q.col_stride()),
                    // k^T: rows are k's columns.
                    (k.at(bi, h, k0), k.col_stride(), k.row_stride()),
                    self.scale,
                    false,
                );
                let tile_mask = mask.map(|(m, key_stride)| (&m[k0 * key_stride..], key_stride));
                online_softmax_columns(tile, stride, tile_mask, max, sum, rescale);
                if k0 > 0 {
                    for column in acc.chunks_exact_mut(stride) {
                        column.iter_mut().zip(&*rescale).for_each(|(x, f)| *x *= f);
                    }
                }
                product(
                    (rows, dim_v, cols),
                    acc,
                    column_major,
                    (tile.as_ptr(), 1, stride as isize),
                    (v.at(bi, h, k0), v.row_stride(), v.col_stride()),
                    1.0,
                    k0 > 0,
                );
            }
            // Divided down the columns, whole registers of queries at a time, then turned into
            // the output's rows (a division per element in the row-major order ran scalar).
            divide_columns(acc, sum);
            for (r, row) in out.chunks_exact_mut(out_row).enumerate() {
                let dst = &mut row[h * dim_v..][..dim_v];
                for (d, column) in dst.iter_mut().zip(acc.chunks_exact(stride)) {
                    d.write(column[r]);
                }
            }
        }
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
                        (len_k, 1),
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

/// Whether [`FusedAttention`] reads `mask` as it is laid out: one of its last two dimensions
/// contiguous. Others are made contiguous first.
pub fn mask_is_readable(mask: &Tensor) -> bool {
    matches!(mask.stride(), [_, _, 1, _] | [_, _, _, 1])
}

/// Whether the fused CPU kernels take tensors of this dtype (widened to f32 on the way in).
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}
