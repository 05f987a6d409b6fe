//! `diffpost bench posterior`: runs the library's exact-posterior suite (`diffpost::bench`),
//! prints the table as it goes and writes `bench.md`, `bench.json` and `bench.png`.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use diffpost::bench::{self, BenchRow};
use plotters::prelude::*;

pub struct Opts<'a> {
    pub quick: bool,
    pub n: Option<usize>,
    pub budget: u64,
    pub out: &'a Path,
    pub data: &'a Path,
    /// For annealed, ula and smc (default: each sampler's own default, Euler).
    pub integrator: Option<diffpost::sampler::integrator::Integrator>,
}

pub fn run(o: &Opts) -> Result<()> {
    let t0 = Instant::now();
    let data = crate::demo_images::shipped(o.data);
    let problems = bench::problems(&data, o.quick)?;
    let n = o.n.unwrap_or(if o.quick { 500 } else { 1000 });
    println!(
        "diffpost bench posterior{}: {} problems, n = {n} samples per sampler, seed 1; exact posteriors in closed form",
        if o.quick { " --quick" } else { "" },
        problems.len()
    );
    for p in &problems {
        println!("  {:<15} {}", p.name, p.note);
    }
    println!(
        "\n{:<15} {:<9} {:<12} {:>7} {:>7} {:>9} {:>22} {:>9} {:>9} {:>9}",
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
    );
    let print = |r: &BenchRow| {
        match &r.error {
        Some(e) => println!("{:<15} {:<9} {:<12} failed: {e}", r.problem, r.sampler, r.setting),
        None => println!(
            "{:<15} {:<9} {:<12} {:>7.0} {:>7.1} {:>9.2} {:>8.3} ({:.3} ± {:.3}) {:>9.3} {:>9.3} {:>9}",
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
        ),
    }
    };
    let mut rows = bench::run(
        &problems,
        &bench::samplers(None, o.integrator)?,
        "defaults",
        n,
        print,
    )?;
    if !o.quick {
        let setting = format!("budget {}", o.budget);
        rows.extend(bench::run(
            &problems,
            &bench::samplers(Some(o.budget), o.integrator)?,
            &setting,
            n,
            print,
        )?);
    }
    std::fs::create_dir_all(o.out)?;
    let md = format!(
        "`diffpost bench posterior{}{}` (n = {n}, seed 1; {:.0} s)\n\n{}",
        if o.quick { " --quick" } else { "" },
        match o.integrator {
            Some(diffpost::sampler::integrator::Integrator::ExactLikelihood) => {
                " --integrator exact-likelihood"
            }
            Some(diffpost::sampler::integrator::Integrator::ExactLikelihoodStrang) => {
                " --integrator exact-likelihood-strang"
            }
            Some(diffpost::sampler::integrator::Integrator::Euler) => " --integrator euler",
            None => "",
        },
        t0.elapsed().as_secs_f64(),
        bench::markdown(&rows)
    );
    diffpost::io::write_bytes(&o.out.join("bench.md"), md.as_bytes())?;
    diffpost::io::write_bytes(
        &o.out.join("bench.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "n": n, "quick": o.quick, "budget": o.budget,
            "problems": problems.iter().map(|p| serde_json::json!({"name": p.name, "note": p.note})).collect::<Vec<_>>(),
            "rows": rows,
        }))?
        .as_bytes(),
    )?;
    plot(&o.out.join("bench.png"), &rows)?;
    println!(
        "\n{:.0} s; table, JSON and plot in {}",
        t0.elapsed().as_secs_f64(),
        o.out.display()
    );
    Ok(())
}

/// Sliced W2 / floor (log scale) per problem, one marker series per sampler, at the defaults.
fn plot(path: &Path, rows: &[BenchRow]) -> Result<()> {
    let labels = crate::tradeoff::register_font();
    let rows: Vec<&BenchRow> = rows
        .iter()
        .filter(|r| r.setting == "defaults" && r.error.is_none())
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
        root.fill(&WHITE)?;
        let mut b = ChartBuilder::on(&root);
        b.margin(12)
            .x_label_area_size(if labels { 40 } else { 5 })
            .y_label_area_size(if labels { 60 } else { 5 })
            .right_y_label_area_size(if labels { 10 } else { 0 });
        if labels {
            b.caption(
                "sliced W2 / noise floor at the defaults (1 = exact sampling)",
                ("sans-serif", 18),
            );
        }
        let np = problems.len().max(1) as f64;
        let mut chart = b.build_cartesian_2d(-0.5..np + 0.6, (0.5f64..hi).log_scale())?;
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
        mesh.draw()?;
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
            let series = chart.draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 5, color.filled())),
            )?;
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
                .draw()?;
        }
        root.present()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
