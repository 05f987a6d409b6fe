//! The exact-posterior benchmark suite (`diffpost bench posterior`): every sampler, at its
//! defaults and at an equal budget of score evaluations, on a fixed set of problems whose
//! posterior (and evidence) is known in closed form: Gaussian compressed sensing, overlapping and
//! well-separated mixtures, a stiff case, and 8x8 digits under a fitted mixture with inpainting
//! and super-resolution. Each row: sliced W2 over its noise floor, mode-weight TV against its
//! floor, mean and covariance errors, the evidence error (SMC), evaluations and wall time.
//! [`study`] runs it as `diffpost bench posterior` does: the table, `bench.md`, `bench.json` and
//! `bench.png` (sliced W2 / floor per problem and sampler).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use plotters::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::metrics::{exact_reference, mode_weight_tv_with_floor};
use crate::operator::image::ImageOperatorSpec;
use crate::operator::{Dense, LinearOperator};
use crate::prior::GaussianMixture;
use crate::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use crate::sampler::spec::SamplerSpec;
use crate::{Error, Result};

use super::{image_operator, plot_err, shipped, spec};

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
    let spec: ImageOperatorSpec = image_operator(op)?;
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
/// evaluations per sample (the SMCs keep their adaptive defaults: their counts are reported);
/// `integrator` (`"euler"`, `"exact-likelihood"`, ...) for those with one (annealed, ula, smc).
pub fn samplers(
    budget: Option<u64>,
    integrator: Option<&str>,
) -> Result<Vec<(String, SamplerSpec)>> {
    let kinds = [
        "exact",
        "annealed",
        "ula",
        "mala",
        "dps",
        "daps",
        "ald",
        "smc",
        "smc-gibbs",
    ];
    let mut v = Vec::new();
    for k in kinds {
        let mut t = json!({ "kind": k });
        if let Some(b) = budget {
            let b = b as usize;
            let init = 500usize.min(b / 4);
            let extra = match k {
                // 500-step diffusion start + 19 stages.
                "annealed" => {
                    json!({"init_steps": init, "steps_per_stage": ((b - init) / 19).max(1)})
                }
                "ula" => json!({"init_steps": init, "steps": b - init}),
                "mala" => json!({"init_steps": init, "steps": b - init - 1}),
                "dps" => json!({"steps": (b / 2).min(1000)}),
                "daps" => json!({"stages": 100, "ode_steps": (b / 100).max(1)}),
                "ald" => json!({"stages": 50, "steps_per_stage": (b / 50).max(1)}),
                _ => json!({}),
            };
            t.as_object_mut()
                .expect("an object")
                .extend(extra.as_object().expect("an object").clone());
        }
        if let (Some(i), true) = (integrator, ["annealed", "ula", "smc"].contains(&k)) {
            t["integrator"] = json!(i);
        }
        v.push((k.to_string(), spec(t)?));
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

impl BenchRow {
    /// The row as `diffpost bench posterior` prints it (under [`TABLE_HEADER`]).
    pub fn line(&self) -> String {
        match &self.error {
            Some(e) => format!(
                "{:<15} {:<9} {:<12} failed: {e}",
                self.problem, self.sampler, self.setting
            ),
            None => format!(
                "{:<15} {:<9} {:<12} {:>7.0} {:>7.1} {:>9.2} {:>8.3} ({:.3} ± {:.3}) {:>9.3} {:>9.3} {:>9}",
                self.problem,
                self.sampler,
                self.setting,
                self.evals,
                self.wall_s,
                self.sw2_ratio,
                self.mode_tv,
                self.mode_tv_floor,
                self.mode_tv_floor_sd,
                self.mean_err,
                self.cov_err,
                self.evidence_error
                    .map(|e| format!("{e:+.3}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// The printed table's header.
pub fn table_header() -> String {
    format!(
        "{:<15} {:<9} {:<12} {:>7} {:>7} {:>9} {:>22} {:>9} {:>9} {:>9}",
        "problem",
        "sampler",
        "setting",
        "evals",
        "wall s",
        "sW2/floor",
        "mode TV (floor ± sd)",
        "mean err",
        "cov err",
        "evid err"
    )
}

/// Which problems `diffpost bench posterior` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    /// Small problems (d <= 64): every sampler at its defaults and at an equal budget.
    #[default]
    Small,
    /// The exact 28x28 suite ([`super::bench_images`]): multimodal posteriors at image scale.
    Images,
}

/// `diffpost bench posterior`'s options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub suite: Suite,
    /// Three problems, defaults only.
    pub quick: bool,
    /// Samples per sampler (default 1000; 500 with `quick`).
    pub n: Option<usize>,
    /// The equal budget of score evaluations per sample of the second table.
    pub budget: u64,
    pub out: PathBuf,
    /// Folder with `digits_gmm.npz` and `digits_test100.npy`.
    pub data: PathBuf,
    /// Integrator of annealed, ula and smc: "euler", "exact-likelihood" or
    /// "exact-likelihood-strang" (default: theirs).
    pub integrator: Option<String>,
}

/// The suite's result.
pub struct Bench {
    pub n: usize,
    pub rows: Vec<BenchRow>,
    /// `bench.md`.
    pub markdown: String,
}

/// Runs the suite as `diffpost bench posterior` does and writes `bench.{md,json,png}` into
/// `out`; `log` gets the printed lines as they come (every row as it is done).
pub fn study(o: &Opts, log: &mut dyn FnMut(&str)) -> Result<Bench> {
    let t0 = Instant::now();
    let integrator = o.integrator.as_deref();
    if let Some(i) = integrator {
        spec(json!({ "kind": "ula", "integrator": i })).map_err(|_| {
            Error::param(
                "--integrator",
                format!("{i}: expected euler or exact-likelihood"),
            )
        })?;
    }
    let data = shipped(&o.data);
    if o.suite == Suite::Images {
        return images_study(o, &data, log);
    }
    let problems = problems(&data, o.quick)?;
    let n = o.n.unwrap_or(if o.quick { 500 } else { 1000 });
    let quick = if o.quick { " --quick" } else { "" };
    log(&format!(
        "diffpost bench posterior{quick}: {} problems, n = {n} samples per sampler, seed 1; exact posteriors in closed form",
        problems.len()
    ));
    for p in &problems {
        log(&format!("  {:<15} {}", p.name, p.note));
    }
    log(&format!("\n{}", table_header()));
    let mut print = |r: &BenchRow| log(&r.line());
    let mut rows = run(
        &problems,
        &samplers(None, integrator)?,
        "defaults",
        n,
        &mut print,
    )?;
    if !o.quick {
        let setting = format!("budget {}", o.budget);
        rows.extend(run(
            &problems,
            &samplers(Some(o.budget), integrator)?,
            &setting,
            n,
            &mut print,
        )?);
    }
    let md = format!(
        "`diffpost bench posterior{quick}{}` (n = {n}, seed 1; {:.0} s)\n\n{}",
        integrator
            .map(|i| format!(" --integrator {i}"))
            .unwrap_or_default(),
        t0.elapsed().as_secs_f64(),
        markdown(&rows)
    );
    super::write_text(&o.out, "bench.md", &md)?;
    super::write_json(
        &o.out,
        "bench.json",
        &json!({
            "n": n, "quick": o.quick, "budget": o.budget,
            "problems": problems.iter().map(|p| json!({"name": p.name, "note": p.note})).collect::<Vec<_>>(),
            "rows": rows,
        }),
    )?;
    plot(&o.out.join("bench.png"), &rows, "defaults")?;
    log(&format!(
        "\n{:.0} s; table, JSON and plot in {}",
        t0.elapsed().as_secs_f64(),
        o.out.display()
    ));
    Ok(Bench {
        n,
        rows,
        markdown: md,
    })
}

/// The image suite: its problems, SMC with Gibbs moves at its defaults and the others at the
/// budget `o.budget`; the same outputs as the small suite.
fn images_study(o: &Opts, data: &Path, log: &mut dyn FnMut(&str)) -> Result<Bench> {
    let t0 = Instant::now();
    let problems = super::bench_images::problems(data)?;
    let n = o.n.unwrap_or(1000);
    log(&format!(
        "diffpost bench posterior --suite images: {} problems (d = 784), n = {n} samples per sampler, seed 1; exact posteriors in closed form",
        problems.len()
    ));
    for p in &problems {
        log(&format!("  {:<15} {}", p.name, p.note));
    }
    log(&format!("\n{}", table_header()));
    let mut print = |r: &BenchRow| log(&r.line());
    let setting = format!("budget {}", o.budget);
    let rows = run(
        &problems,
        &super::bench_images::samplers(o.budget)?,
        &setting,
        n,
        &mut print,
    )?;
    let md = format!(
        "`diffpost bench posterior --suite images --budget {}` (n = {n}, seed 1; smc-gibbs, smc and exact at their defaults, the others at the budget; {:.0} s)\n\n{}",
        o.budget,
        t0.elapsed().as_secs_f64(),
        markdown(&rows)
    );
    super::write_text(&o.out, "bench.md", &md)?;
    super::write_json(
        &o.out,
        "bench.json",
        &json!({
            "suite": "images", "n": n, "budget": o.budget,
            "problems": problems.iter().map(|p| json!({"name": p.name, "note": p.note})).collect::<Vec<_>>(),
            "rows": rows,
        }),
    )?;
    plot(&o.out.join("bench.png"), &rows, &setting)?;
    log(&format!(
        "\n{:.0} s; table, JSON and plot in {}",
        t0.elapsed().as_secs_f64(),
        o.out.display()
    ));
    Ok(Bench {
        n,
        rows,
        markdown: md,
    })
}

/// Sliced W2 / floor (log scale) per problem, one marker series per sampler, at the defaults.
fn plot(path: &Path, rows: &[BenchRow], setting: &str) -> Result<()> {
    let labels = super::register_font();
    let err = |e: &dyn std::fmt::Display| plot_err(path, e);
    let rows: Vec<&BenchRow> = rows
        .iter()
        .filter(|r| r.setting == setting && r.error.is_none())
        .collect();
    let mut problems: Vec<&str> = vec![];
    let mut samplers: Vec<&str> = vec![];
    for r in &rows {
        if !problems.contains(&r.problem.as_str()) {
            problems.push(&r.problem);
        }
        if !samplers.contains(&r.sampler.as_str()) {
            samplers.push(&r.sampler);
        }
    }
    let hi = rows.iter().map(|r| r.sw2_ratio).fold(2.0, f64::max) * 1.3;
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut b = ChartBuilder::on(&root);
        b.margin(12)
            .x_label_area_size(if labels { 40 } else { 5 })
            .y_label_area_size(if labels { 60 } else { 5 })
            .right_y_label_area_size(if labels { 10 } else { 0 });
        if labels {
            b.caption(
                format!("sliced W2 / noise floor, {setting} (1 = exact sampling)"),
                ("sans-serif", 18),
            );
        }
        let np = problems.len().max(1) as f64;
        let mut chart = b
            .build_cartesian_2d(-0.5..np + 0.6, (0.5f64..hi).log_scale())
            .map_err(|e| err(&e))?;
        let names = problems.clone();
        let fmt = move |v: &f64| {
            let i = v.round() as usize;
            if (v - v.round()).abs() < 1e-6 && i < names.len() {
                names[i].to_string()
            } else {
                String::new()
            }
        };
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_labels(problems.len())
                .x_label_formatter(&fmt)
                .y_desc("sliced W2 / floor");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| err(&e))?;
        for (si, s) in samplers.iter().enumerate() {
            let color = Palette99::pick(si).to_rgba();
            let off = (si as f64 - samplers.len() as f64 / 2.0) * 0.06;
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.sampler == *s)
                .filter_map(|r| {
                    problems
                        .iter()
                        .position(|p| *p == r.problem)
                        .map(|i| (i as f64 + off, r.sw2_ratio.max(0.5)))
                })
                .collect();
            let series = chart
                .draw_series(
                    pts.iter()
                        .map(|&(x, y)| Circle::new((x, y), 5, color.filled())),
                )
                .map_err(|e| err(&e))?;
            if labels {
                series
                    .label(s.to_string())
                    .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
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
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
