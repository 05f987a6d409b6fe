use candle_core::{Device, Tensor};
use diffpost::metrics::{exact_reference, mode_weight_tv_with_floor};
use diffpost::operator::Dense;
use diffpost::prior::Denoiser;
use diffpost::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use diffpost::sampler::spec::SamplerSpec;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seed: u64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(0);
    let eta: f64 = std::env::var("ETA")
        .ok()
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.3);
    let inst = match std::env::var("INST").as_deref() {
        Ok("demo") => diffpost::problem::random_gmm_instance(20, 10, 1, 0.1, 2024).unwrap(),
        Ok("cs") => diffpost::problem::random_gmm_instance(30, 15, 1, 0.1, seed).unwrap(),
        Ok("stiff") => diffpost::problem::random_gmm_instance(20, 10, 1, 0.01, seed).unwrap(),
        Ok("overlap") => diffpost::problem::random_gmm_instance(10, 5, 3, 0.2, seed).unwrap(),
        _ => diffpost::problem::separated_gmm_instance(10, 3, eta, seed).unwrap(),
    };
    let eta = inst.eta;
    let (prior, a, y, m) = (
        inst.prior.clone(),
        inst.a.clone(),
        inst.y.clone(),
        inst.a.nrows(),
    );
    let op = Dense::new(a.clone()).unwrap();
    let (prior, op, y, m, eta): (
        diffpost::prior::GaussianMixture,
        Box<dyn diffpost::operator::LinearOperator>,
        nalgebra::DVector<f64>,
        usize,
        f64,
    ) = if let Ok(task) = std::env::var("DIGITS") {
        let g = diffpost::prior::GaussianMixture::from_npz("data/digits_gmm.npz").unwrap();
        let spec: diffpost::operator::image::ImageOperatorSpec =
            toml::from_str(&task.replace(';', "\n")).unwrap();
        let e: f64 = std::env::var("ETA")
            .ok()
            .map(|v| v.parse().unwrap())
            .unwrap_or(0.1);
        let di = diffpost::problem::digits_instance(
            g,
            "data/digits_test100.npy".as_ref(),
            seed as usize,
            &spec,
            e,
            0,
        )
        .unwrap();
        let m = di.y.len();
        (di.prior, di.op, nalgebra::DVector::from_vec(di.y), m, e)
    } else {
        (prior, Box::new(op), y, m, eta)
    };
    let op = &*op;
    let (post, lz) = prior.posterior_and_evidence(op, y.as_slice(), eta).unwrap();
    println!(
        "seed {seed}: posterior weights {:?} log p(y) {lz:.4}",
        post.weights()
    );
    let yt = Tensor::from_vec(y.as_slice().to_vec(), m, &Device::Cpu).unwrap();
    let parts = ProblemParts {
        prior: &prior as &dyn Denoiser,
        analytic: Some(&prior),
        perturbed: false,
        op,
        y: &yt,
        eta,
    };
    let n = 2000;
    let (reference, floors) = exact_reference(&post, n, 20000).unwrap();
    for spec in args.iter().skip(2) {
        let t: toml::Table = toml::from_str(&spec.replace(';', "\n")).unwrap();
        let sp = SamplerSpec::from_table(&t).unwrap();
        let t0 = std::time::Instant::now();
        let seeds: u64 = std::env::var("SEEDS")
            .ok()
            .map(|v| v.parse().unwrap())
            .unwrap_or(1);
        let mut lzs = vec![];
        for rs in 1..seeds {
            let o = RunContext::new(parts, &sp)
                .unwrap()
                .run(&RunPlan::new(n, rs + 1), &NoProgress)
                .unwrap();
            lzs.push(o.diagnostics.log_evidence().unwrap_or(f64::NAN));
        }
        let out = RunContext::new(parts, &sp)
            .unwrap()
            .run(&RunPlan::new(n, 1), &NoProgress)
            .unwrap();
        lzs.push(out.diagnostics.log_evidence().unwrap_or(f64::NAN));
        let mu = lzs.iter().sum::<f64>() / lzs.len() as f64;
        let sd = (lzs.iter().map(|v| (v - mu).powi(2)).sum::<f64>()
            / (lzs.len().max(2) - 1) as f64)
            .sqrt();
        println!(
            "  logZ over {} seeds: mean {mu:.4} sd {sd:.4} exact {lz:.4}",
            lzs.len()
        );
        let met = reference
            .evaluate(&out.samples.flatten_all().unwrap().to_vec1().unwrap())
            .unwrap()
            .with_floor(&floors);
        let tv = mode_weight_tv_with_floor(&post, &out.samples, 10).unwrap();
        println!("{spec}: {:.1}s evals {} sw2/floor {:.2} tv {:.4} (floor {:.4} ± {:.4}) logZ {:?} stages {:?}",
            t0.elapsed().as_secs_f64(), out.diagnostics.score_evals_per_sample.max,
            met.sw2.value / met.sw2.floor_mean, tv.value, tv.floor_mean, tv.floor_sd,
            out.diagnostics.log_evidence(), out.info.smc.as_ref().map(|t| t[0].lambdas.len()));
    }
}
