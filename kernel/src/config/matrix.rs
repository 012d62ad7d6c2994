//! `matrix`: one step run once per combination of values. Reading the table (axes, `include`,
//! `exclude`) and expanding it into instances by GitHub's rules: the cartesian product of the
//! axes in file order (the first axis varies slowest), minus every combination an `exclude`
//! row matches, then each `include` row either adds its keys to every original combination it
//! agrees with on the axes, or, agreeing with none, becomes a combination of its own.

use std::ops::Range;

use toml_edit::{Item, TableLike, Value};

use super::expr::is_identifier;
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, Field, backticked};

/// More instances than this in one step is an error: a typo in an axis, not a build farm.
pub const MAX_INSTANCES: usize = 256;

/// One instance's keys and values: the axes in file order, then keys `include` added.
pub type MatrixValues = Vec<(String, String)>;

/// `matrix` as written, checked.
#[derive(Debug, Clone)]
pub(crate) struct MatrixDraft {
    pub(crate) axes: Vec<(String, Vec<String>)>,
    include: Vec<MatrixValues>,
    exclude: Vec<(MatrixValues, Option<Range<usize>>)>,
    span: Option<Range<usize>>,
}

impl MatrixDraft {
    pub(crate) fn axis_names(&self) -> impl Iterator<Item = &str> {
        self.axes.iter().map(|(name, _)| name.as_str())
    }

    /// What an instance is named by: its axis values in file order; for an `include` row
    /// with no axis at all, all its values.
    pub(crate) fn naming(&self, values: &MatrixValues) -> MatrixValues {
        let axes: Vec<(String, String)> = self
            .axis_names()
            .filter_map(|axis| lookup(values, axis).map(|v| (axis.to_owned(), v.clone())))
            .collect();
        if axes.is_empty() {
            values.clone()
        } else {
            axes
        }
    }

    /// The name of one of its instances.
    pub(crate) fn instance_name(&self, step: &str, values: &MatrixValues) -> String {
        instance_name(step, &self.naming(values))
    }

    /// Every key an instance may have: the axes, then the keys only `include` rows add.
    pub(crate) fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.axis_names().collect();
        for row in &self.include {
            for (key, _) in row {
                if !keys.contains(&key.as_str()) {
                    keys.push(key);
                }
            }
        }
        keys
    }
}

/// The environment variable a matrix key sets in its instances: the key upper-cased.
pub fn variable(key: &str) -> String {
    key.to_ascii_uppercase()
}

/// Variables a matrix key may not set: the step could not work without them.
fn reserved(variable: &str) -> bool {
    matches!(variable, "PATH" | "HOME" | "CI") || variable.starts_with("HM_")
}

/// `name[k=v,...]`: how an instance is named in events, logs and on the command line (the
/// axes only: keys an `include` row adds are in `step_end.matrix`, not in the name).
pub fn instance_name(step: &str, values: &MatrixValues) -> String {
    let pairs: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{step}[{}]", pairs.join(","))
}

impl Checker<'_> {
    /// `matrix = { AXIS = [values], include = [{..}], exclude = [{..}] }`.
    pub(crate) fn matrix(&mut self, field: &Field<'_>, path: &str) -> Option<MatrixDraft> {
        let Some(table) = field.item.as_table_like() else {
            self.wrong_type(
                field,
                "a table",
                Some("write `[steps.NAME.matrix]` followed by `AXIS = [\"a\", \"b\"]`".to_owned()),
            );
            return None;
        };
        let path = format!("{path}.matrix");
        let mut ok = true;
        let mut draft = MatrixDraft {
            axes: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            span: self.report.global(field.span()),
        };
        for (name, item) in table.iter() {
            let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
            match name {
                "include" => match self.matrix_rows(item, &path, name) {
                    Some(rows) => draft.include = rows.into_iter().map(|(row, _)| row).collect(),
                    None => ok = false,
                },
                "exclude" => match self.matrix_rows(item, &path, name) {
                    Some(rows) => {
                        draft.exclude = rows
                            .into_iter()
                            .map(|(row, span)| (row, self.report.global(span)))
                            .collect();
                    }
                    None => ok = false,
                },
                _ => {
                    ok &= self.matrix_key(name, key_span.clone(), &path);
                    match self.axis(item, name, &path, key_span) {
                        Some(values) => draft.axes.push((name.to_owned(), values)),
                        None => ok = false,
                    }
                }
            }
        }
        if ok && draft.axes.is_empty() && draft.include.is_empty() {
            self.report.error_at(
                draft.span.clone(),
                format!("[{path}] has no axes"),
                Some("add one: `rust = [\"stable\", \"1.85\"]`".to_owned()),
            );
            return None;
        }
        if ok {
            ok &= self.check_exclude(&draft, &path);
        }
        ok.then_some(draft)
    }

    /// A matrix key: an identifier whose variable is not one hm or the step relies on.
    fn matrix_key(&mut self, name: &str, span: Option<Range<usize>>, path: &str) -> bool {
        if !is_identifier(name, false) {
            self.report.error(
                span,
                format!("invalid matrix key `{}` in [{path}]", name.escape_default()),
                Some(
                    "matrix keys use ASCII letters, digits and `_`, and do not start with a digit: \
                     each becomes a variable of the same name, upper-cased"
                        .to_owned(),
                ),
            );
            return false;
        }
        let var = variable(name);
        if reserved(&var) {
            self.report.error(
                span,
                format!("matrix key `{name}` in [{path}] would set `{var}`, which the step needs"),
                Some(
                    "rename the key: PATH, HOME, CI and HM_* are not for matrix values".to_owned(),
                ),
            );
            return false;
        }
        true
    }

    /// An axis: a non-empty array of distinct scalar values.
    fn axis(
        &mut self,
        item: &Item,
        name: &str,
        path: &str,
        key_span: Option<Range<usize>>,
    ) -> Option<Vec<String>> {
        let label = format!("`{name}` in [{path}]");
        let Some(array) = item.as_array() else {
            let found = self.found(item);
            self.report.error(
                item.span().or(key_span),
                format!("{label} must be an array of values, found {found}"),
                Some(format!("write `{name} = [\"a\", \"b\"]`")),
            );
            return None;
        };
        if array.is_empty() {
            self.report.error(
                item.span(),
                format!("{label} is empty, so the step would never run"),
                Some("list its values, or remove the axis".to_owned()),
            );
            return None;
        }
        let mut values = Vec::with_capacity(array.len());
        let mut ok = true;
        for element in array.iter() {
            match self.matrix_value(element, &label) {
                Some(value) if values.contains(&value) => {
                    self.report.error(
                        element.span(),
                        format!("{label} lists `{value}` twice"),
                        None,
                    );
                    ok = false;
                }
                Some(value) => values.push(value),
                None => ok = false,
            }
        }
        ok.then_some(values)
    }

    /// A value: a string, integer, float or boolean, as text. It ends up in the instance's
    /// name, so the characters that name uses to separate are refused.
    fn matrix_value(&mut self, value: &Value, label: &str) -> Option<String> {
        let text = match value {
            Value::String(s) => s.value().clone(),
            Value::Integer(i) => i.value().to_string(),
            Value::Float(f) => f.value().to_string(),
            Value::Boolean(b) => b.value().to_string(),
            _ => {
                let found = self.found_value(value);
                self.report.error(
                    value.span(),
                    format!("{label} must hold strings, numbers or booleans, found {found}"),
                    None,
                );
                return None;
            }
        };
        if text.is_empty() || text.contains(['[', ']', ',', '=']) || text.contains(char::is_control)
        {
            self.report.error(
                value.span(),
                format!(
                    "{label} has the value `{}`, which cannot name an instance",
                    text.escape_default()
                ),
                Some(
                    "matrix values are not empty and hold no `[`, `]`, `,`, `=` or control \
                     characters: they become part of the instance's name, `step[key=value]`"
                        .to_owned(),
                ),
            );
            return None;
        }
        Some(text)
    }

    /// `include` or `exclude`: an array of tables of scalar values.
    fn matrix_rows(
        &mut self,
        item: &Item,
        path: &str,
        which: &str,
    ) -> Option<Vec<(MatrixValues, Option<Range<usize>>)>> {
        let label = format!("`{which}` in [{path}]");
        let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> =
            if let Some(array) = item.as_array() {
                let mut tables = Vec::new();
                for element in array.iter() {
                    match element.as_inline_table() {
                        Some(table) => tables.push((table as &dyn TableLike, element.span())),
                        None => {
                            let found = self.found_value(element);
                            self.report.error(
                                element.span(),
                                format!("{label} must list tables, found {found}"),
                                Some(format!("write `{which} = [{{ rust = \"nightly\" }}]`")),
                            );
                            return None;
                        }
                    }
                }
                tables
            } else if let Some(array) = item.as_array_of_tables() {
                array
                    .iter()
                    .map(|t| (t as &dyn TableLike, t.span()))
                    .collect()
            } else {
                let found = self.found(item);
                self.report.error(
                    item.span(),
                    format!("{label} must be an array of tables, found {found}"),
                    Some(format!("write `{which} = [{{ rust = \"nightly\" }}]`")),
                );
                return None;
            };
        let mut rows = Vec::with_capacity(tables.len());
        let mut ok = true;
        for (table, span) in tables {
            if table.is_empty() {
                self.report.error(
                    span,
                    format!("{label} has an empty row"),
                    Some("give each row the keys and values it is about".to_owned()),
                );
                ok = false;
                continue;
            }
            let mut row = Vec::new();
            for (name, value) in table.iter() {
                let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
                ok &= self.matrix_key(name, key_span.clone(), path);
                match value.as_value() {
                    Some(value) => match self.matrix_value(value, &label) {
                        Some(text) => row.push((name.to_owned(), text)),
                        None => ok = false,
                    },
                    None => {
                        let found = self.found(value);
                        self.report.error(
                            value.span().or(key_span),
                            format!(
                                "{label} must hold strings, numbers or booleans, found {found}"
                            ),
                            None,
                        );
                        ok = false;
                    }
                }
            }
            rows.push((row, span));
        }
        ok.then_some(rows)
    }

    /// Each `exclude` row names axes and their values (so it removes at least one
    /// combination: a row that removes nothing is a typo).
    fn check_exclude(&mut self, draft: &MatrixDraft, path: &str) -> bool {
        let mut ok = true;
        let axes: Vec<&str> = draft.axis_names().collect();
        for (row, span) in &draft.exclude {
            for (key, value) in row {
                match draft.axes.iter().find(|(axis, _)| axis == key) {
                    None => {
                        let hint = match did_you_mean(key, axes.iter().copied()) {
                            Some(axis) => format!("did you mean `{axis}`?"),
                            None => format!("the axes are {}", backticked(&axes)),
                        };
                        self.report.error_at(
                            span.clone(),
                            format!("`exclude` in [{path}] names `{key}`, which is not an axis"),
                            Some(hint),
                        );
                        ok = false;
                    }
                    Some((_, values)) if !values.contains(value) => {
                        let listed: Vec<&str> = values.iter().map(String::as_str).collect();
                        let hint = match did_you_mean(value, listed.iter().copied()) {
                            Some(v) => format!("did you mean `{v}`?"),
                            None => format!("`{key}` has {}", backticked(&listed)),
                        };
                        self.report.error_at(
                            span.clone(),
                            format!("`exclude` in [{path}] has `{key} = {value}`, which is not a value of `{key}`"),
                            Some(hint),
                        );
                        ok = false;
                    }
                    Some(_) => {}
                }
            }
        }
        ok
    }

    /// Every instance of the matrix, or an error (at the matrix) when it makes none, makes one
    /// twice, or makes too many.
    pub(crate) fn expand_matrix(
        &mut self,
        draft: &MatrixDraft,
        step: &str,
    ) -> Option<Vec<MatrixValues>> {
        let (instances, duplicate) = expand(draft);
        let mut names: Vec<String> = instances
            .iter()
            .map(|v| draft.instance_name(step, v))
            .collect();
        names.sort();
        let named_twice = names
            .windows(2)
            .find(|w| w[0] == w[1])
            .map(|w| w[0].clone());
        if let Some(name) = duplicate
            .map(|values| draft.instance_name(step, &values))
            .or(named_twice)
        {
            self.report.error_at(
                draft.span.clone(),
                format!("the matrix of step `{step}` makes instance `{name}` twice"),
                Some(
                    "two `include` rows make the same combination of axis values; remove or \
                     change one"
                        .to_owned(),
                ),
            );
            return None;
        }
        if instances.is_empty() {
            self.report.error_at(
                draft.span.clone(),
                format!("the matrix of step `{step}` excludes every combination"),
                Some("remove an `exclude` row, or the step".to_owned()),
            );
            return None;
        }
        if instances.len() > MAX_INSTANCES {
            self.report.error_at(
                draft.span.clone(),
                format!(
                    "the matrix of step `{step}` makes {} instances, more than {MAX_INSTANCES}",
                    instances.len()
                ),
                Some(
                    "a matrix this large is usually a typo in an axis; split the step if it is not"
                        .to_owned(),
                ),
            );
            return None;
        }
        Some(instances)
    }
}

/// The instances, and the first instance made twice, if any.
fn expand(draft: &MatrixDraft) -> (Vec<MatrixValues>, Option<MatrixValues>) {
    let mut original: Vec<MatrixValues> = product(&draft.axes)
        .into_iter()
        .filter(|combination| {
            !draft
                .exclude
                .iter()
                .any(|(row, _)| matches(combination, row))
        })
        .collect();
    let axes: Vec<&str> = draft.axis_names().collect();
    let mut added: Vec<MatrixValues> = Vec::new();
    for row in &draft.include {
        let mut agreed = false;
        for combination in &mut original {
            let agrees = row
                .iter()
                .filter(|(key, _)| axes.contains(&key.as_str()))
                .all(|(key, value)| lookup(combination, key) == Some(value));
            if !agrees {
                continue;
            }
            agreed = true;
            for (key, value) in row {
                if axes.contains(&key.as_str()) {
                    continue;
                }
                match combination.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = value.clone(),
                    None => combination.push((key.clone(), value.clone())),
                }
            }
        }
        if !agreed {
            if added.contains(row) {
                return (Vec::new(), Some(row.clone()));
            }
            added.push(row.clone());
        }
    }
    original.extend(added);
    (original, None)
}

/// The cartesian product of the axes, the first varying slowest.
fn product(axes: &[(String, Vec<String>)]) -> Vec<MatrixValues> {
    let mut combinations: Vec<MatrixValues> = if axes.is_empty() {
        Vec::new()
    } else {
        vec![Vec::new()]
    };
    for (name, values) in axes {
        combinations = combinations
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut next = c.clone();
                    next.push((name.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    combinations
}

/// Whether a combination has every key and value of `row`.
fn matches(combination: &MatrixValues, row: &MatrixValues) -> bool {
    row.iter()
        .all(|(key, value)| lookup(combination, key) == Some(value))
}

pub(crate) fn lookup<'a>(values: &'a MatrixValues, key: &str) -> Option<&'a String> {
    values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> MatrixValues {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn names(instances: &[MatrixValues]) -> Vec<String> {
        instances.iter().map(|v| instance_name("s", v)).collect()
    }

    fn draft(
        axes: &[(&str, &[&str])],
        include: &[&[(&str, &str)]],
        exclude: &[&[(&str, &str)]],
    ) -> MatrixDraft {
        MatrixDraft {
            axes: axes
                .iter()
                .map(|(k, vs)| {
                    (
                        (*k).to_owned(),
                        vs.iter().map(|v| (*v).to_owned()).collect(),
                    )
                })
                .collect(),
            include: include.iter().map(|row| values(row)).collect(),
            exclude: exclude.iter().map(|row| (values(row), None)).collect(),
            span: None,
        }
    }

    #[test]
    fn the_product_varies_the_first_axis_slowest_and_exclude_removes_matches() {
        let d = draft(
            &[("os", &["linux", "mac"]), ("v", &["1", "2", "3"])],
            &[],
            &[&[("os", "mac"), ("v", "3")], &[("v", "1")]],
        );
        assert_eq!(
            names(&expand(&d).0),
            ["s[os=linux,v=2]", "s[os=linux,v=3]", "s[os=mac,v=2]"]
        );
    }

    /// The example of GitHub's documentation for `include`.
    #[test]
    fn include_adds_keys_where_it_agrees_and_adds_combinations_where_it_does_not() {
        let d = draft(
            &[("fruit", &["apple", "pear"]), ("animal", &["cat", "dog"])],
            &[
                &[("color", "green")],
                &[("color", "pink"), ("animal", "cat")],
                &[("fruit", "apple"), ("shape", "circle")],
                &[("fruit", "banana")],
                &[("fruit", "banana"), ("animal", "cat")],
            ],
            &[],
        );
        assert_eq!(
            names(&expand(&d).0),
            [
                "s[fruit=apple,animal=cat,color=pink,shape=circle]",
                "s[fruit=apple,animal=dog,color=green,shape=circle]",
                "s[fruit=pear,animal=cat,color=pink]",
                "s[fruit=pear,animal=dog,color=green]",
                "s[fruit=banana]",
                "s[fruit=banana,animal=cat]",
            ]
        );
    }

    #[test]
    fn include_alone_makes_its_rows_and_a_repeated_row_is_found() {
        let d = draft(&[], &[&[("a", "1")], &[("a", "2")]], &[]);
        assert_eq!(names(&expand(&d).0), ["s[a=1]", "s[a=2]"]);
        let d = draft(&[], &[&[("a", "1")], &[("a", "1")]], &[]);
        assert_eq!(expand(&d).1, Some(values(&[("a", "1")])));
    }

    #[test]
    fn matrix_keys_become_upper_case_variables_and_some_are_reserved() {
        assert_eq!(variable("rust_version"), "RUST_VERSION");
        for name in ["PATH", "HOME", "CI", "HM_STEP", "HM_ANYTHING"] {
            assert!(reserved(name), "{name}");
        }
        for name in ["RUST", "HOMEBREW", "CIRCLE", "HMM"] {
            assert!(!reserved(name), "{name}");
        }
    }
}
