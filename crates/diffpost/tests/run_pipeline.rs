//! The run pipeline: sampler specs as data (round trip, aliases, errors), diagnostics aggregated
//! over batches weighted by sample count, and sharded runs that equal the unsharded run.

use candle_core::{Device, Tensor};
use diffpost::operator::Dense;
use diffpost::run::summary::{merge, RunSummary};
use diffpost::run::{Layout, NoProgress, ProblemParts, RunContext, RunPlan, Shard};
use diffpost::sampler::spec::{SamplerSpec, KINDS};

fn table(s: &str) -> serde_json::Map<String, serde_json::Value> {
    let t: toml::Table = toml::from_str(s).unwrap();
    match serde_json::to_value(t).unwrap() {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn spec(s: &str) -> diffpost::Result<SamplerSpec> {
    SamplerSpec::from_map(table(s))
}

#[test]
fn every_kind_round_trips_through_its_table() {
    for &kind in KINDS {
        let extra = if kind == "local" { "sigma = 0.3\n" } else { "" };
        let s = spec(&format!("kind = \"{kind}\"\n{extra}")).unwrap();
        assert_eq!(s.name(), kind);
        // The written table (summary.json `params`) parses back to the same spec.
        let back = SamplerSpec::from_table(&s.to_table()).unwrap();
        assert_eq!(back, s, "{kind}: {}", s.to_table());
    }
    // A spec with non-default settings survives too.
    let s = spec("kind = \"ula\"\nsteps = 7\nh = 0.01\ninit = \"noise\"\nl_prior = 3.0").unwrap();
    assert_eq!(SamplerSpec::from_table(&s.to_table()).unwrap(), s);
    let s =
        spec("kind = \"cs\"\nestimator = \"lasso\"\nlambda = 0.5\nstages = 4\nsteps_per_stage = 9")
            .unwrap();
    assert_eq!(SamplerSpec::from_table(&s.to_table()).unwrap(), s);
    // No kind: Algorithm 1 at its defaults.
    assert_eq!(spec("").unwrap(), SamplerSpec::default());
}

#[test]
fn old_key_names_are_aliases_of_the_new_vocabulary() {
    let new = spec("kind = \"daps\"\nstages = 7\nsteps_per_stage = 3\nh_rel = 0.1").unwrap();
    let old =
        spec("kind = \"daps\"\nannealing_steps = 7\nlangevin_steps = 3\nlr_rel = 0.1").unwrap();
    assert_eq!(new, old);
    let new = spec("kind = \"ald\"\nstages = 6\nsteps_per_stage = 2").unwrap();
    let old = spec("kind = \"ald\"\nlevels = 6\nsteps_per_level = 2").unwrap();
    assert_eq!(new, old);
    assert_ne!(new, spec("kind = \"ald\"").unwrap());
    let dep = diffpost::sampler::table::deprecated_keys("ald", ["levels", "h_rel"]);
    assert_eq!(dep, vec![("levels", "stages")]);
}

#[test]
fn bad_sampler_tables_are_refused_with_the_field() {
    let cases: &[(&str, &[&str])] = &[
        ("kind = \"magic\"", &["unknown sampler kind `magic`"]),
        (
            "kind = \"dps\"\nsteps_per_stage = 3",
            &["steps_per_stage", "dps"],
        ),
        ("kind = \"annealed\"\nstagez = 3", &["stagez"]),
        ("kind = \"ula\"\nh = 0.1\nh_rel = 0.2", &["h_rel", "h"]),
        ("kind = \"ula\"\nsteps = 0", &["steps"]),
        ("kind = \"annealed\"\nstages = 1", &["stages"]),
        (
            "kind = \"annealed\"\nsteps_per_stage = 0",
            &["steps_per_stage"],
        ),
        ("kind = \"local\"", &["sigma"]),
        (
            "kind = \"local\"\nsigma = 0.1\nwarm_start = \"lasso\"\nwarm_steps = 3",
            &["warm_steps"],
        ),
        ("kind = \"cs\"\nlambda = -1.0", &["lambda"]),
        (
            "kind = \"ula\"\ninit = \"noise\"\ninit_steps = 3",
            &["init_steps"],
        ),
        ("kind = \"annealed\"\neps = 0.3", &["eps", "admissible"]),
        ("kind = \"exact\"\nsteps = 3", &["steps"]),
        ("kind = \"dps\"\nzeta = -1.0", &["zeta"]),
        ("kind = 3", &["kind"]),
    ];
    for (t, needles) in cases {
        let e = spec(t).expect_err(t).to_string();
        for n in *needles {
            assert!(e.contains(n), "{t}: error should mention `{n}`: {e}");
        }
    }
}

/// A d = 6 instance with a 2-component mixture prior.
fn instance() -> diffpost::problem::Instance {
    diffpost::problem::random_gmm_instance(6, 3, 2, 0.3, 11).unwrap()
}

fn run_with(
    inst: &diffpost::problem::Instance,
    spec: &SamplerSpec,
    plan: RunPlan,
) -> diffpost::run::RunOutput {
    let op = Dense::new(inst.a.clone()).unwrap();
    let y = Tensor::from_vec(inst.y.as_slice().to_vec(), inst.y.len(), &Device::Cpu).unwrap();
    let parts = ProblemParts::mixture(&inst.prior, &op, &y, inst.eta);
    RunContext::new(parts, spec)
        .unwrap()
        .run(&plan, &NoProgress)
        .unwrap()
}

#[test]
fn mala_acceptance_is_weighted_by_samples_over_all_batches() {
    let inst = instance();
    // A large step, so acceptance varies from sample to sample and from batch to batch.
    let s = spec("kind = \"mala\"\nsteps = 40\nh_rel = 1.5\ninit = \"exact-prior\"").unwrap();
    let n = 10;
    let by_batch = |batch: usize| {
        let o = run_with(
            &inst,
            &s,
            RunPlan {
                batch: Some(batch),
                ..RunPlan::new(n, 5)
            },
        );
        // `info.acceptance` (summary.json's) is the aggregate too.
        assert_eq!(
            o.info.acceptance,
            Some(o.diagnostics.acceptance.unwrap().mean)
        );
        o.diagnostics.acceptance.unwrap()
    };
    // One sample per batch: the mean over the 10 per-sample rates.
    let per_sample = by_batch(1);
    // Batches 3, 3, 3, 1 (4 batches of different sizes and different acceptance).
    let uneven = by_batch(3);
    let one_batch = by_batch(10);
    // The first batch alone (samples 0..3), what summary.json used to report.
    let first_batch = {
        let op = Dense::new(inst.a.clone()).unwrap();
        let y = Tensor::from_vec(inst.y.as_slice().to_vec(), inst.y.len(), &Device::Cpu).unwrap();
        let parts = ProblemParts::mixture(&inst.prior, &op, &y, inst.eta);
        let ctx = RunContext::new(parts, &s).unwrap();
        let mut streams = diffpost::rng::SampleStreams::new(5, 0..3);
        let o = ctx
            .sample_batch(&mut streams, &diffpost::sampler::Silent)
            .unwrap();
        o.info.acceptance.unwrap()
    };
    assert_eq!(per_sample.samples, 10);
    assert_eq!(uneven.samples, 10);
    assert!(
        (uneven.mean - per_sample.mean).abs() < 1e-12,
        "{uneven:?} vs {per_sample:?}"
    );
    assert!((one_batch.mean - per_sample.mean).abs() < 1e-12);
    // The first batch alone (what summary.json used to report) is a different number here, and
    // an unweighted mean of the 4 batch means would be too.
    assert!(
        (first_batch - per_sample.mean).abs() > 1e-3,
        "{first_batch} vs {}",
        per_sample.mean
    );
    let accs: Vec<f64> = (0..4)
        .map(|b| {
            let o = run_with(
                &inst,
                &s,
                RunPlan {
                    batch: Some(3),
                    shard: Shard::new(b, 4).unwrap(),
                    ..RunPlan::new(n, 5)
                },
            );
            o.diagnostics.acceptance.unwrap().mean
        })
        .collect();
    let unweighted = accs.iter().sum::<f64>() / 4.0;
    assert!((unweighted - per_sample.mean).abs() > 1e-4, "{unweighted}");
}

#[test]
fn shards_reassemble_the_unsharded_run() {
    let inst = instance();
    let s = spec("kind = \"ula\"\nsteps = 30\ninit = \"noise\"").unwrap();
    let n = 11;
    let whole = run_with(&inst, &s, RunPlan::new(n, 9));
    let summary = |o: &diffpost::run::RunOutput, seed: u64, fp: &str| RunSummary {
        sampler: "ula".into(),
        params: s.to_table(),
        info: o.info.clone(),
        prior: serde_json::Value::Null,
        operator: "dense".into(),
        eta: inst.eta,
        n,
        d: 6,
        seed,
        score_evals_per_sample: o.diagnostics.score_evals_per_sample.max,
        diagnostics: o.diagnostics.clone(),
        log_evidence: None,
        run: o.layout,
        fingerprint: fp.into(),
        wall_s: 1.0,
        warnings: vec![],
        health_warnings: vec![],
        extra: Default::default(),
    };
    let parts: Vec<_> = (0..3)
        .map(|k| {
            let o = run_with(
                &inst,
                &s,
                RunPlan {
                    batch: Some(2),
                    shard: Shard::new(k, 3).unwrap(),
                    ..RunPlan::new(n, 9)
                },
            );
            (summary(&o, 9, "abc"), o.samples, format!("shard{k}"))
        })
        .collect();
    let (merged, x) = merge(vec![parts[2].clone(), parts[0].clone(), parts[1].clone()]).unwrap();
    let a: Vec<f64> = whole.samples.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a, b);
    assert_eq!(merged.diagnostics, whole.diagnostics);
    let l: Layout = merged.run;
    assert_eq!((l.shard, l.sample_range), (Shard::WHOLE, [0, n as u64]));

    let err = |p: Vec<(RunSummary, Tensor, String)>| merge(p).unwrap_err().to_string();
    assert!(err(vec![parts[0].clone(), parts[2].clone()]).contains("missing shard(s) 1/3"));
    assert!(err(vec![parts[0].clone(), parts[1].clone(), parts[1].clone()]).contains("twice"));
    let mut other_seed = parts[1].clone();
    other_seed.0.seed = 10;
    assert!(err(vec![parts[0].clone(), other_seed, parts[2].clone()]).contains("seed"));
    let mut other_cfg = parts[1].clone();
    other_cfg.0.fingerprint = "def".into();
    assert!(err(vec![parts[0].clone(), other_cfg, parts[2].clone()]).contains("fingerprint"));
    // A shard whose samples do not match its range.
    let mut short = parts[1].clone();
    short.1 = short.1.narrow(0, 0, 1).unwrap();
    assert!(err(vec![parts[0].clone(), short, parts[2].clone()]).contains("shard 1/3"));
}

/// Every float key of every sampler kind refuses NaN and the infinities with the key's name,
/// whether written in the TOML table or set in a config built in code. The float keys are found
/// from the registry, not listed: a key is a float key when `key = 1.5` parses as a number.
#[test]
fn non_finite_floats_are_refused_in_every_key_of_every_kind() {
    let base = |kind: &str| -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("kind".into(), toml::Value::String(kind.into()));
        if kind == "local" {
            t.insert("sigma".into(), toml::Value::Float(0.3));
        }
        t
    };
    let field = |e: diffpost::Error| match e {
        diffpost::Error::InvalidParam { field, reason } => (field, reason),
        other => panic!("not a parameter error: {other}"),
    };
    let mut float_keys = 0;
    for &kind in KINDS {
        for key in SamplerSpec::keys(kind).unwrap() {
            let mut t = base(kind);
            t.insert(key.clone(), toml::Value::Float(1.5));
            let typed_ok = match SamplerSpec::from_toml(&t) {
                Ok(_) => true,
                Err(e) => !field(e).1.contains("invalid type"),
            };
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let mut t = base(kind);
                t.insert(key.clone(), toml::Value::Float(bad));
                let (f, reason) = field(
                    SamplerSpec::from_toml(&t)
                        .expect_err(&format!("{kind}.{key} = {bad} was accepted")),
                );
                assert_eq!(
                    f,
                    format!("sampler.{key}"),
                    "{kind}.{key} = {bad}: {reason}"
                );
                if typed_ok {
                    assert!(reason.contains("finite"), "{kind}.{key} = {bad}: {reason}");
                }
            }
            float_keys += typed_ok as usize;
        }
    }
    // Each kind has float keys (h_rel, sigma_max, eta_max, ess_target, zeta, ...): at least 60.
    assert!(float_keys >= 60, "only {float_keys} float keys found");
    // An array of floats (`clip`) is checked element by element.
    let mut t = base("local");
    t.insert(
        "clip".into(),
        toml::Value::Array(vec![toml::Value::Float(f64::NAN), toml::Value::Float(1.0)]),
    );
    assert_eq!(
        field(SamplerSpec::from_toml(&t).unwrap_err()).0,
        "sampler.clip"
    );
    // Configs built in code go through the same check.
    let s = SamplerSpec::Ula(diffpost::sampler::ula::UlaConfig {
        step: diffpost::sampler::settings::Step::relative(f64::NAN),
        ..Default::default()
    });
    assert_eq!(field(s.validate().unwrap_err()).0, "sampler.h_rel");
    let s = SamplerSpec::Smc(diffpost::sampler::smc::SmcConfig {
        ess_target: f64::INFINITY,
        ..Default::default()
    });
    assert_eq!(field(s.validate().unwrap_err()).0, "sampler.ess_target");
}

/// `params` records the schedule as it ran: the admissible schedule chooses its own number of
/// levels, which replaces the `stages` of the table (ignored under it), and `eta_max`.
#[test]
fn params_record_the_admissible_schedule_as_it_ran() {
    let inst = instance();
    let s = spec(
        "kind = \"annealed\"\nschedule = \"admissible\"\nstages = 5\nsteps_per_stage = 1\ninit = \"noise\"",
    )
    .unwrap();
    let out = run_with(&inst, &s, RunPlan::new(2, 1));
    let levels = out.info.etas.as_ref().unwrap().len();
    assert_ne!(levels, 5);
    let mut params = s.to_table().as_object().unwrap().clone();
    s.method().record_resolved(&out.info, &mut params);
    assert_eq!(params["stages"], serde_json::json!(levels));
    assert_eq!(
        params["eta_max"],
        serde_json::json!(out.info.etas.as_ref().unwrap()[0])
    );
    // It is still a valid table, for the same run.
    let back = SamplerSpec::from_map(params).unwrap();
    assert_eq!(
        run_with(&inst, &back, RunPlan::new(2, 1))
            .samples
            .to_vec2::<f64>()
            .unwrap(),
        out.samples.to_vec2::<f64>().unwrap()
    );
}
