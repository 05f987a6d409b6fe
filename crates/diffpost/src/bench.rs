//! The exact-posterior benchmark suite (`diffpost bench posterior`): every sampler, at its
//! defaults and at an equal budget of score evaluations, on a fixed set of problems whose
//! posterior (and evidence) is known in closed form: Gaussian compressed sensing, overlapping and
//! well-separated mixtures, a stiff case, and 8x8 digits under a fitted mixture with inpainting
//! and super-resolution. Each row: sliced W2 over its noise floor, mode-weight TV against its
//! floor, mean and covariance errors, the evidence error (SMC), evaluations and wall time.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::metrics::{exact_reference, mode_weight_tv_with_floor};
use crate::operator::image::ImageOperatorSpec;
use crate::operator::{Dense, LinearOperator};
use crate::prior::GaussianMixture;
use crate::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use crate::sampler::spec::SamplerSpec;
use crate::{Error, Result};

/// A problem of the suite.
pub struct BenchProblem {
    pub name: String,
    pub note: String,
    pub prior: GaussianMixture,
    pub op: Box<dyn LinearOperator>,
    pub y: Vec<f64>,
    pub eta: f64,
}

fn dense(inst: crate::problem::Instance, name: &str, note: &str) -> Result<BenchProblem> {
    Ok(BenchProblem {
        name: name.into(),
        note: note.into(),
        op: Box::new(Dense::new(inst.a.clone())?),
        y: inst.y.as_slice().to_vec(),
        eta: inst.eta,
        prior: inst.prior,
    })
}

fn digits(
    data: &Path,
    index: usize,
    op: &str,
    eta: f64,
    name: &str,
    note: &str,
) -> Result<BenchProblem> {
    let prior = GaussianMixture::from_npz(data.join("digits_gmm.npz"))?;
    let spec: ImageOperatorSpec = toml_op(op)?;
    let i = crate::problem::digits_instance(
        prior,
        &data.join("digits_test100.npy"),
        index,
        &spec,
        eta,
        0,
    )?;
    Ok(BenchProblem {
        name: name.into(),
        note: note.into(),
        prior: i.prior,
        op: i.op,
        y: i.y,
        eta: i.eta,
    })
}

fn toml_op(s: &str) -> Result<ImageOperatorSpec> {
    let v: toml::Value = toml::from_str(s).map_err(|e| Error::param("bench", e.to_string()))?;
    v.try_into()
        .map_err(|e: toml::de::Error| Error::param("bench", e.to_string()))
}

/// The suite's problems; `data` holds `digits_gmm.npz` and `digits_test100.npy`. `quick`: three
/// of them (Gaussian, separated mixture, half-hidden digit).
pub fn problems(data: &Path, quick: bool) -> Result<Vec<BenchProblem>> {
    use crate::problem::{random_gmm_instance, separated_gmm_instance};
    let mut v = vec![
        dense(
            random_gmm_instance(20, 10, 1, 0.1, 2024)?,
            "gaussian-cs",
            "Gaussian prior, d = 20, m = 10, eta = 0.1 (log-concave; the demo)",
        )?,
        dense(
            separated_gmm_instance(10, 3, 0.3, 1)?,
            "separated-d10",
            "3 components 8 sd apart, d = 10, m = 3, eta = 0.3; prior weights 0.6/0.3/0.1, posterior 0.31/0.69/0",
        )?,
        digits(
            data,
            2,
            "kind = \"box\"\ntop = 0\nleft = 0\nheight = 8\nwidth = 5",
            0.3,
            "digits-inpaint",
            "8x8 digit, left 5 columns hidden, eta = 0.3; posterior 0.34/0.39/0.25 on classes 3/4/5",
        )?,
    ];
    if !quick {
        v.insert(
            1,
            dense(
                random_gmm_instance(10, 5, 3, 0.2, 0)?,
                "overlap-d10",
                "3 overlapping components, d = 10, m = 5, eta = 0.2",
            )?,
        );
        v.insert(
            3,
            dense(
                separated_gmm_instance(50, 15, 0.3, 1)?,
                "separated-d50",
                "as separated-d10 in d = 50, m = 15",
            )?,
        );
        v.insert(
            4,
            dense(
                random_gmm_instance(20, 10, 1, 0.01, 0)?,
                "stiff",
                "Gaussian prior, d = 20, m = 10, eta = 0.01 (stiff likelihood)",
            )?,
        );
        v.push(digits(
            data,
            3,
            "kind = \"superres\"\nfactor = 4",
            0.1,
            "digits-sr4",
            "8x8 digit, 4x super-resolution (2x2 measured), eta = 0.1",
        )?);
    }
    Ok(v)
}

/// The samplers: every method at its defaults, or at an equal budget of `budget` score
/// evaluations per sample (SMC keeps its adaptive defaults: its count is reported).
pub fn samplers(
    budget: Option<u64>,
    integrator: Option<crate::sampler::integrator::Integrator>,
) -> Result<Vec<(String, SamplerSpec)>> {
    // The Langevin samplers with an integrator (annealed, ula, smc) get it.
    let with = match integrator {
        Some(i) => format!(
            "\nintegrator = {}",
            serde_json::to_string(&i).map_err(|e| Error::param("bench", e.to_string()))?
        ),
        None => String::new(),
    };
    let t = |s: &str| -> Result<SamplerSpec> {
        let s = if ["annealed", "ula", "smc"]
            .iter()
            .any(|k| s.starts_with(&format!("kind = \"{k}\"")))
        {
            format!("{s}{with}")
        } else {
            s.to_string()
        };
        let t: toml::Table =
            toml::from_str(&s).map_err(|e| Error::param("bench", e.to_string()))?;
        SamplerSpec::from_table(&t)
    };
    let kinds = [
        "exact", "annealed", "ula", "mala", "dps", "daps", "ald", "smc",
    ];
    let mut v = Vec::new();
    for k in kinds {
        let spec = match budget {
            None => t(&format!("kind = \"{k}\""))?,
            Some(b) => {
                let b = b as usize;
                let init = 500usize.min(b / 4);
                match k {
                    // 500-step diffusion start + 19 stages.
                    "annealed" => t(&format!(
                        "kind = \"annealed\"\ninit_steps = {init}\nsteps_per_stage = {}",
                        ((b - init) / 19).max(1)
                    ))?,
                    "ula" => t(&format!(
                        "kind = \"ula\"\ninit_steps = {init}\nsteps = {}",
                        b - init
                    ))?,
                    "mala" => t(&format!(
                        "kind = \"mala\"\ninit_steps = {init}\nsteps = {}",
                        b - init - 1
                    ))?,
                    "dps" => t(&format!("kind = \"dps\"\nsteps = {}", (b / 2).min(1000)))?,
                    "daps" => t(&format!(
                        "kind = \"daps\"\nstages = 100\node_steps = {}",
                        (b / 100).max(1)
                    ))?,
                    "ald" => t(&format!(
                        "kind = \"ald\"\nstages = 50\nsteps_per_stage = {}",
                        (b / 50).max(1)
                    ))?,
                    other => t(&format!("kind = \"{other}\""))?,
                }
            }
        };
        v.push((k.to_string(), spec));
    }
    Ok(v)
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub problem: String,
    pub sampler: String,
    /// "defaults" or "budget N".
    pub setting: String,
    pub evals: f64,
    pub wall_s: f64,
    /// Sliced W2 over its noise-floor mean (1 = as good as exact sampling at this n).
    pub sw2_ratio: f64,
    /// Mode-weight TV and its floor (mixtures; 0 for one component).
    pub mode_tv: f64,
    pub mode_tv_floor: f64,
    pub mode_tv_floor_sd: f64,
    pub mean_err: f64,
    pub cov_err: f64,
    /// `estimate - exact` of `log p(y)` (SMC).
    pub evidence_error: Option<f64>,
    /// The sampler failed (message) on this problem.
    pub error: Option<String>,
}

/// Runs `samplers` on every problem at `n` samples (seed 1); `on_row` sees each row as it comes.
pub fn run(
    problems: &[BenchProblem],
    samplers: &[(String, SamplerSpec)],
    setting: &str,
    n: usize,
    mut on_row: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for p in problems {
        let (post, log_z) = p.prior.posterior_and_evidence(p.op.as_ref(), &p.y, p.eta)?;
        let (reference, floors) = exact_reference(&post, n, 20_000)?;
        let y = Tensor::from_vec(p.y.clone(), p.y.len(), &Device::Cpu)?;
        let parts = ProblemParts::mixture(&p.prior, p.op.as_ref(), &y, p.eta);
        for (name, spec) in samplers {
            let t = Instant::now();
            let res =
                RunContext::new(parts, spec).and_then(|c| c.run(&RunPlan::new(n, 1), &NoProgress));
            let wall = t.elapsed().as_secs_f64();
            let row = match res {
                Ok(out) => {
                    let x = out.samples.to_dtype(candle_core::DType::F64)?;
                    let m = reference
                        .evaluate(&x.flatten_all()?.to_vec1()?)?
                        .with_floor(&floors);
                    let tv = mode_weight_tv_with_floor(&post, &x, 10)?;
                    BenchRow {
                        problem: p.name.clone(),
                        sampler: name.clone(),
                        setting: setting.into(),
                        evals: out.diagnostics.score_evals_per_sample.mean,
                        wall_s: wall,
                        sw2_ratio: m.sw2.value / m.sw2.floor_mean,
                        mode_tv: tv.value,
                        mode_tv_floor: tv.floor_mean,
                        mode_tv_floor_sd: tv.floor_sd,
                        mean_err: m.mean_err.value,
                        cov_err: m.cov_err.value,
                        evidence_error: out.diagnostics.log_evidence().map(|l| l - log_z),
                        error: None,
                    }
                }
                Err(e) => BenchRow {
                    problem: p.name.clone(),
                    sampler: name.clone(),
                    setting: setting.into(),
                    evals: f64::NAN,
                    wall_s: wall,
                    sw2_ratio: f64::NAN,
                    mode_tv: f64::NAN,
                    mode_tv_floor: f64::NAN,
                    mode_tv_floor_sd: f64::NAN,
                    mean_err: f64::NAN,
                    cov_err: f64::NAN,
                    evidence_error: None,
                    error: Some(e.to_string()),
                },
            };
            on_row(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The table as Markdown.
pub fn markdown(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "| problem | sampler | setting | evals | wall s | sliced W2 / floor | mode TV (floor ± sd) | mean err | cov err | evidence err |\n|---|---|---|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            s += &format!(
                "| {} | {} | {} | | {:.1} | failed: {} | | | | |\n",
                r.problem,
                r.sampler,
                r.setting,
                r.wall_s,
                e.replace('|', "/")
            );
            continue;
        }
        s += &format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.3} ({:.3} ± {:.3}) | {:.3} | {:.3} | {} |\n",
            r.problem,
            r.sampler,
            r.setting,
            r.evals,
            r.wall_s,
            r.sw2_ratio,
            r.mode_tv,
            r.mode_tv_floor,
            r.mode_tv_floor_sd,
            r.mean_err,
            r.cov_err,
            r.evidence_error.map(|e| format!("{e:+.3}")).unwrap_or_default()
        );
    }
    s
}
