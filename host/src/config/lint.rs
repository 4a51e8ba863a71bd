//! What a config holds that the agent will not use as written: keys it does not know
//! (misspelt, or meant for another program) and keys given twice. The Python agent
//! reads such a file, so this one does too, but every finding is a warning naming the
//! key's path — with the nearest known key when one is close, and both lines of a
//! repeated key.
//!
//! The known keys are the fields of the config structs: `serde_ignored` reports every
//! key the derived `Deserialize` impls skip, and the "did you mean" candidates are the
//! field lists those impls hand to the deserializer ([`fields_of`]). A field added to a
//! struct is known at once; nothing here lists key names.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// Where a key sits: `offerings[0].backend_components.nodeHours.unit_factr`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub(crate) Vec<Step>);

impl KeyPath {
    /// The path `serde_ignored` reports.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        fn walk(path: &serde_ignored::Path<'_>, steps: &mut Vec<Step>) {
            use serde_ignored::Path;
            match path {
                Path::Root => {}
                Path::Seq { parent, index } => {
                    walk(parent, steps);
                    steps.push(Step::Index(*index));
                }
                Path::Map { parent, key } => {
                    walk(parent, steps);
                    steps.push(Step::Key(key.clone()));
                }
                Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
                    walk(parent, steps)
                }
            }
        }
        let mut steps = Vec::new();
        walk(path, &mut steps);
        KeyPath(steps)
    }

    /// The last key of the path.
    pub(crate) fn key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Step::Key(key)) => Some(key),
            _ => None,
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if at == 0 => f.write_str(key)?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The field names `T`'s derived `Deserialize` asks for, as it hands them to
/// `deserialize_struct`; empty when `T` is not a struct.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A deserializer that only records the field list it is asked for.
    struct Fields<'a>(&'a std::cell::Cell<&'static [&'static str]>);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let fields = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(Fields(&fields));
    fields.get()
}

/// The known key nearest to `key`, if one is close enough to be a likely misspelling.
pub(crate) fn nearest<'k>(key: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    known
        .into_iter()
        .map(|candidate| (strsim::normalized_damerau_levenshtein(&key, &candidate.to_ascii_lowercase()), candidate))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// ` (did you mean nodeHours?)`, or nothing.
pub(crate) fn did_you_mean(near: Option<&str>) -> String {
    near.map(|key| format!("; did you mean {key}?")).unwrap_or_default()
}

/// A key given twice in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Repeated {
    pub(crate) path: KeyPath,
    pub(crate) first_line: usize,
    pub(crate) line: usize,
}

impl fmt::Display for Repeated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: given twice, at lines {} and {}; the one at line {} is used (as the Python agent reads it), remove the other",
            self.path, self.first_line, self.line, self.line
        )
    }
}

/// Every key given more than once in the same mapping, in the order of the repeats.
/// The text has already been read as YAML, so a parse error here only ends the walk.
pub(crate) fn repeated_keys(text: &str) -> Vec<Repeated> {
    use serde_saphyr::granit_parser::{Event, Parser};

    /// A collection being walked.
    enum Open {
        Map {
            /// Key → the line it was first given on.
            seen: HashMap<String, usize>,
            /// The key whose value comes next; `None` while a key is expected.
            key: Option<Step>,
        },
        Seq(usize),
    }

    let mut found = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    // The path of every open collection but the innermost's own position.
    let mut path: Vec<Step> = Vec::new();
    // Called for every node: a scalar, an alias, or the start of a collection. Returns
    // the step to the node when it is a value, or `None` when it was a mapping key.
    let mut node = |open: &mut Vec<Open>, scalar_key: Option<&str>, line: usize, path: &[Step]| -> Option<Step> {
        match open.last_mut() {
            None => Some(Step::Key(String::new())),
            Some(Open::Seq(index)) => {
                let step = Step::Index(*index);
                *index += 1;
                Some(step)
            }
            Some(Open::Map { seen, key }) => match key.take() {
                Some(step) => Some(step),
                None => {
                    // A key. Merge keys (`<<`) and keys that are not scalars are not
                    // compared.
                    let name = scalar_key.filter(|name| *name != "<<").unwrap_or_default().to_owned();
                    if !name.is_empty()
                        && let Some(first) = seen.insert(name.clone(), line)
                    {
                        let mut at = path.to_vec();
                        at.push(Step::Key(name.clone()));
                        found.push(Repeated { path: KeyPath(at), first_line: first, line });
                    }
                    *key = Some(Step::Key(name));
                    None
                }
            },
        }
    };
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        let line = span.start.line();
        match event {
            Event::Scalar(value, ..) => {
                node(&mut open, Some(&value), line, &path);
            }
            Event::Alias(_) => {
                node(&mut open, None, line, &path);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let step = node(&mut open, None, line, &path);
                if open.is_empty() {
                    // The document's root.
                } else if let Some(step) = step {
                    path.push(step);
                } else {
                    // A collection as a key: its contents are not config keys.
                    path.push(Step::Key(String::from("?")));
                }
                open.push(if matches!(event, Event::MappingStart(..)) {
                    Open::Map { seen: HashMap::new(), key: None }
                } else {
                    Open::Seq(0)
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                open.pop();
                if !open.is_empty() {
                    path.pop();
                }
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_the_config_is_written() {
        let path = KeyPath(vec![
            Step::Key("offerings".into()),
            Step::Index(0),
            Step::Key("backend_components".into()),
            Step::Key("nodeHours".into()),
        ]);
        assert_eq!(path.to_string(), "offerings[0].backend_components.nodeHours");
        assert_eq!(path.key(), Some("nodeHours"));
    }

    #[test]
    fn nearest_keys_are_likely_misspellings_only() {
        let known = ["socks_proxy", "ca_bundle", "cscs_dwdi_api_url"];
        assert_eq!(nearest("socks_proxi", known), Some("socks_proxy"));
        assert_eq!(nearest("SOCKS_PROXY", known), Some("socks_proxy"));
        assert_eq!(nearest("ca_bundel", known), Some("ca_bundle"));
        assert_eq!(nearest("my_site_instance", known), None);
        assert_eq!(did_you_mean(Some("x")), "; did you mean x?");
    }

    #[test]
    fn repeated_keys_are_found_with_both_lines_at_any_depth() {
        let text = "\
reporting_periods: 1
offerings:
  - name: a
    backend_settings:
      socks_proxy: x
      socks_proxy: y
    backend_components: {nodeHours: {unit_factor: 1, unit_factor: 2}}
  - name: b
    name: c
reporting_periods: 2
";
        let shown: Vec<String> = repeated_keys(text).iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "offerings[0].backend_settings.socks_proxy: given twice, at lines 5 and 6; the one at line 6 is used (as the Python agent reads it), remove the other",
                "offerings[0].backend_components.nodeHours.unit_factor: given twice, at lines 7 and 7; the one at line 7 is used (as the Python agent reads it), remove the other",
                "offerings[1].name: given twice, at lines 8 and 9; the one at line 9 is used (as the Python agent reads it), remove the other",
                "reporting_periods: given twice, at lines 1 and 10; the one at line 10 is used (as the Python agent reads it), remove the other",
            ]
        );
        // The same key in two mappings is not a repeat; nor are merge keys.
        let text = "a: {x: 1}\nb: {x: 2}\nbase: &b {y: 1}\nc:\n  <<: *b\n  <<: *b\n  y: 2\n";
        assert_eq!(repeated_keys(text), []);
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        alpha: u32,
        #[serde(default)]
        beta: Option<String>,
    }

    #[test]
    fn the_fields_come_from_the_derived_impl() {
        assert_eq!(fields_of::<Sample>(), ["alpha", "beta"]);
        assert!(fields_of::<u32>().is_empty());
    }
}
