//! The results as JUnit XML, which CI systems read (one suite per test
//! file, one test case per case).

use super::FileResult;
use anyhow::{Context, Result};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::path::Path;

pub(crate) fn write(path: &Path, results: &[FileResult]) -> Result<()> {
    let mut report = Report::new("wasmhooks test");
    for file in results {
        let mut suite = TestSuite::new(super::shown(&file.file).display().to_string());
        if let Some(error) = &file.error {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(error.as_str());
            suite.add_test_case(TestCase::new("(the test file)", status));
        }
        for case in &file.cases {
            let status = match case.differences.first() {
                None => TestCaseStatus::success(),
                Some(first) => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(first.as_str());
                    status.set_description(case.differences.join("\n"));
                    status
                }
            };
            let mut test_case = TestCase::new(case.name.as_str(), status);
            test_case.set_time(case.took);
            suite.add_test_case(test_case);
        }
        report.add_test_suite(suite);
    }
    let xml = report.to_string().context("writing the JUnit report")?;
    std::fs::write(path, xml).with_context(|| format!("cannot write {}", path.display()))
}
