//! Euler-Maruyama against the exact-likelihood integrator (issue 12; docs/algorithms.md,
//! "Exact-likelihood integrator"): score evaluations per sample needed to reach 1.2x the
//! sliced-W2 noise floor, for Algorithm 1 (10 stages) and ULA, on log-concave problems with exact
//! posteriors: compressed sensing (Gaussian prior, d = 64, m = 32, dense A) and inpainting
//! (Gaussian prior, d = 256, every other coordinate observed), eta = 0.1, 0.01, 0.001. Budgets
//! double from 45 until the target is met or 11,520 fails; n = 1000 samples, exact-prior start,
//! seed 7. [`study`] runs it as `diffpost bench integrator` does: the table, `integrator.md`,
//! `integrator.json` and `integrator.png` (sliced W2 / floor against evaluations, log-log).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use plotters::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::metrics::{exact_reference, MetricFloors, Reference};
use crate::operator::{Dense, LinearOperator, Mask};
use crate::prior::{ExactSample, GaussianMixture};
use crate::problem::random_gmm_instance;
use crate::rng::SampleStreams;
use crate::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use crate::Result;

use super::{plot_err, spec};

/// The target: sliced W2 at most this times its noise floor.
pub const TARGET: f64 = 1.2;
const N: usize = 1000;
const BUDGETS: usize = 9;

/// One (problem, eta, sampler, integrator): its budget sweep up to the first budget that meets the
/// target.
#[derive(Debug, Clone, Serialize)]
pub struct IntegratorRow {
    pub problem: String,
    pub eta: f64,
    pub sampler: String,
    pub integrator: String,
    /// `(evaluations per sample, sliced W2 / floor)` for each budget tried.
    pub curve: Vec<(u64, f64)>,
    /// The first budget that met the target, if any.
    pub evals_to_target: Option<u64>,
}

impl IntegratorRow {
    /// "1440 (1.14x)" or "> 11520 (4.05x there)".
    pub fn cell(&self) -> String {
        let (e, r) = self.curve.last().copied().unwrap_or((0, f64::NAN));
        match self.evals_to_target {
            Some(_) => format!("{e} ({r:.2}x)"),
            None => format!("> {e} ({r:.2}x there)"),
        }
    }
}

struct Case {
    name: &'static str,
    prior: GaussianMixture,
    op: Box<dyn LinearOperator>,
    y: Vec<f64>,
    eta: f64,
    reference: Reference,
    floors: MetricFloors,
}

fn case(name: &'static str, eta: f64) -> Result<Case> {
    let (prior, op, y): (GaussianMixture, Box<dyn LinearOperator>, Vec<f64>) =
        if name.starts_with("cs") {
            let inst = random_gmm_instance(64, 32, 1, eta, 3)?;
            (
                inst.prior,
                Box::new(Dense::new(inst.a)?),
                inst.y.as_slice().to_vec(),
            )
        } else {
            let inst = random_gmm_instance(256, 1, 1, eta, 4)?;
            let ind: Vec<f64> = (0..256).map(|i| ((i * 7) % 2) as f64).collect();
            let op = Mask::from_indicator(&ind)?;
            let mut s = SampleStreams::new(11, [0]);
            let x = inst.prior.sample_exact(&mut s)?;
            let ax: Vec<f64> = op.apply(&x)?.flatten_all()?.to_vec1()?;
            let noise = s.normal_vec(ax.len());
            let y = ax.iter().zip(&noise).map(|(a, z)| a + eta * z).collect();
            (inst.prior, Box::new(op), y)
        };
    let (post, _) = prior.posterior_and_evidence(op.as_ref(), &y, eta)?;
    let (reference, floors) = exact_reference(&post, N, 20_000)?;
    Ok(Case {
        name,
        prior,
        op,
        y,
        eta,
        reference,
        floors,
    })
}

/// `(sliced W2 / floor, evaluations per sample)`; a diverged run counts as missing the target.
fn ratio(c: &Case, table: serde_json::Value) -> Result<(f64, u64)> {
    let yt = Tensor::from_vec(c.y.clone(), c.y.len(), &Device::Cpu)?;
    let parts = ProblemParts::mixture(&c.prior, c.op.as_ref(), &yt, c.eta);
    let ctx = RunContext::new(parts, &spec(table)?)?;
    Ok(match ctx.run(&RunPlan::new(N, 7), &NoProgress) {
        Ok(out) => {
            let x: Vec<f64> = out.samples.flatten_all()?.to_vec1()?;
            let m = c.reference.evaluate(&x)?.with_floor(&c.floors);
            (
                m.sw2.value / m.sw2.floor_mean,
                out.diagnostics.score_evals_per_sample.max,
            )
        }
        Err(crate::Error::Diverged { .. }) => (f64::INFINITY, 0),
        Err(e) => return Err(e),
    })
}

/// Runs the sweep (`quick`: compressed sensing at eta = 0.01 only), calling `each` on every row.
pub fn run(quick: bool, mut each: impl FnMut(&IntegratorRow)) -> Result<Vec<IntegratorRow>> {
    let etas: &[f64] = if quick { &[0.01] } else { &[0.1, 0.01, 0.001] };
    let problems: &[&'static str] = if quick {
        &["cs d=64 m=32"]
    } else {
        &["cs d=64 m=32", "inpaint d=256 m=128"]
    };
    let mut rows = Vec::new();
    for &eta in etas {
        for &problem in problems {
            let c = case(problem, eta)?;
            for sampler in ["annealed", "ula"] {
                for integrator in ["euler", "exact-likelihood"] {
                    let mut curve = Vec::new();
                    let mut hit = None;
                    for k in 0..BUDGETS {
                        let table = if sampler == "annealed" {
                            json!({"kind": "annealed", "init": "exact-prior", "stages": 10, "steps_per_stage": 5usize << k, "integrator": integrator})
                        } else {
                            json!({"kind": "ula", "init": "exact-prior", "steps": 45usize << k, "integrator": integrator})
                        };
                        let (r, e) = ratio(&c, table)?;
                        let e = if e == 0 { 45u64 << k } else { e };
                        curve.push((e, r));
                        if r <= TARGET {
                            hit = Some(e);
                            break;
                        }
                    }
                    let row = IntegratorRow {
                        problem: c.name.into(),
                        eta,
                        sampler: if sampler == "annealed" {
                            "Alg. 1 (10 stages)".into()
                        } else {
                            "ULA".into()
                        },
                        integrator: integrator.into(),
                        curve,
                        evals_to_target: hit,
                    };
                    each(&row);
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}

/// The markdown table: one line per (problem, eta, sampler), Euler and exact-likelihood side by
/// side.
pub fn markdown(rows: &[IntegratorRow]) -> String {
    let mut s = String::from(
        "| problem | eta | sampler | Euler: evaluations to 1.2x (ratio there) | exact-likelihood: evaluations to 1.2x (ratio there) |\n|---|---:|---|---:|---:|\n",
    );
    for pair in rows.chunks(2) {
        if let [e, x] = pair {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                e.problem,
                e.eta,
                e.sampler,
                e.cell(),
                x.cell()
            ));
        }
    }
    s
}

/// What `diffpost bench integrator` writes into its output folder.
pub const OUTPUTS: crate::commit::Replace<'static> = crate::commit::Replace::Outputs {
    names: &["integrator.md", "integrator.json", "integrator.png"],
    suffixes: &[],
};

/// The sweep as `diffpost bench integrator` runs it: writes `integrator.{md,json,png}` into
/// `dir`; `log` gets the printed lines as they come. Returns the rows and the Markdown.
pub fn study(
    quick: bool,
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(Vec<IntegratorRow>, String)> {
    let t0 = Instant::now();
    let flag = if quick { " --quick" } else { "" };
    log(&format!(
        "diffpost bench integrator{flag}: evaluations per sample to {TARGET}x the sliced-W2 floor, n = 1000, seed 7"
    ));
    let rows = run(quick, |r: &IntegratorRow| {
        log(&format!(
            "  {:<20} eta {:<6} {:<19} {:<17} {}",
            r.problem,
            r.eta,
            r.sampler,
            r.integrator,
            r.cell()
        ))
    })?;
    let md = format!(
        "{}\n`diffpost bench integrator{flag}`, {:.0} s.\n",
        markdown(&rows),
        t0.elapsed().as_secs_f64()
    );
    super::log_text(log, &format!("\n{md}"));
    super::write_text(dir, "integrator.md", &md)?;
    super::write_json(dir, "integrator.json", &rows)?;
    plot(&dir.join("integrator.png"), &rows)?;
    Ok((rows, md))
}

fn plot(path: &Path, rows: &[IntegratorRow]) -> Result<()> {
    let labels = super::register_font();
    let err = |e: &dyn std::fmt::Display| plot_err(path, e);
    let hi = rows
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.1))
        .filter(|v| v.is_finite())
        .fold(2.0, f64::max)
        * 1.3;
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut b = ChartBuilder::on(&root);
    b.margin(12)
        .x_label_area_size(if labels { 40 } else { 5 })
        .y_label_area_size(if labels { 60 } else { 5 });
    if labels {
        b.caption(
            "sliced W2 / floor against score evaluations per sample (each line stops at 1.2x)",
            ("sans-serif", 17),
        );
    }
    let mut chart = b
        .build_cartesian_2d((30f64..15000.0).log_scale(), (0.8f64..hi).log_scale())
        .map_err(|e| err(&e))?;
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_desc("evaluations per sample")
            .y_desc("sliced W2 / floor");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            [(30.0, TARGET), (15000.0, TARGET)],
            BLACK.mix(0.4),
        ))
        .map_err(|e| err(&e))?;
    let mut labelled = [false, false];
    for r in rows {
        let k = usize::from(r.integrator != "euler");
        let color = if k == 0 { RED } else { BLUE };
        let pts: Vec<(f64, f64)> = r
            .curve
            .iter()
            .map(|&(e, v)| (e as f64, if v.is_finite() { v.max(0.8) } else { hi }))
            .collect();
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
        let series = chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if labels && !labelled[k] {
            labelled[k] = true;
            series
                .label(r.integrator.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
