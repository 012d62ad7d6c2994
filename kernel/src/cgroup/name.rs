//! Which names may become a cgroup directory: the only guard between a step or plugin name and
//! a path outside hm's tree.

use super::CgroupError;

/// Accepts the names hm's config accepts for steps and plugins (ASCII letters, digits, `.`,
/// `_`, `-`, not starting with `.` or `-`). Config validation already enforces this; it is
/// checked again here because a name that slipped through would otherwise become a path:
/// `/`, `.` and `..` are impossible by construction.
pub(crate) fn check(name: &str) -> Result<(), CgroupError> {
    let refuse = |why| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > 200 {
        return refuse("it is longer than 200 bytes");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return refuse("it starts with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return refuse("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}
