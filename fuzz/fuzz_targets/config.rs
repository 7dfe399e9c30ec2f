//! The serve config parser on arbitrary text: it never panics; a refused config has at least
//! one issue, each with a message (and a 1-based line and column when located); an accepted
//! config passes its own validation, converts to the server's options without panicking, and
//! survives `to_yaml` (what `ferroserve config` prints) unchanged.
#![no_main]

use ferroserve::__fuzz::locate;
use ferroserve::config::{ConfigError, ServeConfig};
use ferroserve::DeploymentOptions;
use libfuzzer_sys::fuzz_target;

fn explains(e: &ConfigError) {
    assert!(!e.issues.is_empty(), "a refusal without issues");
    for issue in &e.issues {
        assert!(!issue.message.is_empty(), "{issue:?}");
        assert!(issue.line.is_none_or(|l| l >= 1), "{issue:?}");
        assert!(issue.column.is_none_or(|c| c >= 1), "{issue:?}");
    }
    assert!(e.to_string().starts_with("fuzz.yaml"), "{e}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match ServeConfig::parse(text, "fuzz.yaml") {
        Ok(config) => config,
        Err(mut e) => {
            explains(&e);
            for issue in &mut e.issues {
                issue.line = None;
                issue.column = None;
            }
            locate(text, &mut e.issues);
            return;
        }
    };
    assert!(config.validate().is_empty());
    let _ = config.http_options.to_options();
    for app in &config.applications {
        for d in &app.deployments {
            let _ = d.apply_to(&DeploymentOptions::default());
            if let Some(a) = &d.autoscaling_config {
                let _ = a.to_options();
            }
        }
    }
    let yaml = config.to_yaml();
    match ServeConfig::parse(&yaml, "fuzz.yaml") {
        Ok(again) => assert_eq!(again, config, "to_yaml changed the config:\n{yaml}"),
        Err(e) => panic!("to_yaml printed a config that does not parse:\n{yaml}\n{e}"),
    }
});
