//! Validation of a report against `tests/junit.xsd` with `xmllint`, shared by the tests of this
//! crate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The schema every report must satisfy.
pub fn schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/junit.xsd")
}

/// `xmllint --noout --schema tests/junit.xsd FILE`: `Err` with what xmllint said when the file
/// does not validate. A missing xmllint fails the test: the schema check is part of what these
/// tests promise, not an extra.
pub fn validate(file: &Path) -> Result<(), String> {
    let output = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema())
        .arg(file)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "xmllint is not installed, and the JUnit schema tests need it: \
             apt-get install libxml2-utils"
        ),
        Err(e) => panic!("cannot run xmllint: {e}"),
    };
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "xmllint: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Fails the test, with the document, unless `file` validates.
pub fn assert_valid(file: &Path) {
    if let Err(why) = validate(file) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        panic!(
            "{} does not validate against the schema: {why}\n{text}",
            file.display()
        );
    }
}
