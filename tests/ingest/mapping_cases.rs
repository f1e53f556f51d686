//! Table-driven: every `[[test]]` case of every file under `mappings/` runs through the
//! shipped connector (signature skipped) and the whole mapping set, exactly as
//! `postgate check` runs them.

use postgate::connector::{Env, LoadOptions};
use postgate::mapping::check::check;

#[test]
fn every_mapping_test_case_passes() {
    let opts = LoadOptions {
        env: Env::ProcessOrPlaceholder,
        ..Default::default()
    };
    let root = crate::common::root();
    let report = check(&postgate::mapping::check::Dirs::under(&root), &opts);
    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors.is_empty(),
        "{} problem(s):\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(
        report.cases_run >= 20,
        "only {} cases ran",
        report.cases_run
    );
    assert_eq!(report.cases_run, report.cases_passed);
    eprintln!(
        "check: {} connectors, {} mappings, {}/{} cases passed",
        report.connectors, report.mappings, report.cases_passed, report.cases_run
    );
}
