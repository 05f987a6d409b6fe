//! Fused Adam (Kingma & Ba 2015, Alg. 1) + EMA update of one parameter, in place on f32 CPU
//! tensors ([`adam_ema_in_place`]); the trainer ([`crate::train`]) falls back to candle's ops
//! elsewhere.

use candle_core::{Result, Tensor, Var};

/// Step constants of Adam (Kingma & Ba 2015, Alg. 1) and the EMA.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamCoefs {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `1 / (1 - beta1^t)`.
    pub inv_bc1: f64,
    /// `1 / (1 - beta2^t)`.
    pub inv_bc2: f64,
    pub lr: f64,
    pub ema_decay: f64,
}

/// Which in-place pass of the update.
#[derive(Debug, Clone, Copy)]
enum AdamPass {
    /// `m <- beta1 m + (1 - beta1) g`.
    M,
    /// `v <- beta2 v + (1 - beta2) g^2`.
    V,
    /// `p <- p - lr (m / bc1) / (sqrt(v / bc2) + eps)`.
    P,
    /// `ema <- d ema + (1 - d) p`.
    Ema,
}

struct AdamOp {
    pass: AdamPass,
    co: AdamCoefs,
}

fn cpu_f32_mut<'a>(
    s: &'a mut candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'a mut [f32]> {
    match (l.contiguous_offsets(), s) {
        (Some((a, b)), candle_core::CpuStorage::F32(v)) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("adam: contiguous f32 tensors expected"),
    }
}

// The scalar arithmetic mirrors candle's ops on f32 tensors (`t * c` is `affine(c as f32)`,
// `t / c` is `affine(1 / c)`), so the fused path reproduces the op-by-op one.
impl candle_core::InplaceOp2 for AdamOp {
    fn name(&self) -> &'static str {
        "diffpost-adam"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let dst = cpu_f32_mut(s1, l1)?;
        let src = super::slice(s2, l2, "adam")?;
        if dst.len() != src.len() {
            candle_core::bail!("adam: sizes differ")
        }
        let c = &self.co;
        match self.pass {
            AdamPass::M => {
                let (a, b) = (c.beta1 as f32, (1.0 - c.beta1) as f32);
                for (m, &g) in dst.iter_mut().zip(src) {
                    *m = *m * a + g * b;
                }
            }
            AdamPass::V => {
                let (a, b) = (c.beta2 as f32, (1.0 - c.beta2) as f32);
                for (v, &g) in dst.iter_mut().zip(src) {
                    *v = *v * a + (g * g) * b;
                }
            }
            AdamPass::Ema => {
                let (a, b) = (c.ema_decay as f32, (1.0 - c.ema_decay) as f32);
                for (e, &p) in dst.iter_mut().zip(src) {
                    *e = *e * a + p * b;
                }
            }
            AdamPass::P => candle_core::bail!("adam: the parameter pass has three inputs"),
        }
        Ok(())
    }
}

impl candle_core::InplaceOp3 for AdamOp {
    fn name(&self) -> &'static str {
        "diffpost-adam-param"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let p = cpu_f32_mut(s1, l1)?;
        let m = super::slice(s2, l2, "adam m")?;
        let v = super::slice(s3, l3, "adam v")?;
        if p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!("adam: sizes differ")
        }
        let c = &self.co;
        let (ib1, ib2, eps, lr) = (
            c.inv_bc1 as f32,
            c.inv_bc2 as f32,
            c.eps as f32,
            c.lr as f32,
        );
        for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
            *p -= ((m * ib1) / ((v * ib2).sqrt() + eps)) * lr;
        }
        Ok(())
    }
}

/// One parameter's Adam + EMA update, in place (four passes over data that stays in cache). All
/// five tensors must be contiguous f32 CPU tensors of one size, `m`, `v` and `ema` owning their
/// storage (the caller checks).
pub(crate) fn adam_ema_in_place(
    var: &Var,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    ema: &Tensor,
    co: &AdamCoefs,
) -> Result<()> {
    let op = |pass| AdamOp { pass, co: *co };
    m.inplace_op2(g, &op(AdamPass::M))?;
    v.inplace_op2(g, &op(AdamPass::V))?;
    var.as_tensor().inplace_op3(m, v, &op(AdamPass::P))?;
    ema.inplace_op2(var.as_tensor(), &op(AdamPass::Ema))?;
    Ok(())
}
