//! Reading DWDI answers one row at a time.
//!
//! An answer is `{"<top key>": [row, row, …]}` and can be tens of megabytes. Rather
//! than build a `serde_json::Value` of the whole document (several times its size in
//! memory, and slow inside a component), the rows are streamed: each is read into a
//! small [`Json`] tree whose strings borrow from the body, handed to a callback, and
//! dropped. The tree keeps wrong types instead of rejecting them, so the callback can
//! name the exact JSON path of a problem (`compute[3].users[1].cpuHours: missing`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::model::{BackendError, bad};

/// A JSON value whose strings borrow from the input when they have no escapes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Keys in document order; rows are small, so a linear lookup beats hashing.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// The type name used in messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// The first value under `key`, when `self` is an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl<'de> de::Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        // A DWDI user row has four fields: one allocation, no regrowth.
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(key) = map.next_key::<Key<'de>>()? {
            fields.push((key.0, map.next_value()?));
        }
        Ok(Json::Object(fields))
    }
}

/// An object key, borrowed when possible (serde's `Cow` impl always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The callback's verdict on one row travels beside serde's error type, which can only
/// carry text with a position appended.
type RowFn<'f, 'a> = dyn FnMut(usize, Json<'a>) -> Result<(), BackendError> + 'f;

/// Calls `row(index, value)` for each element of the array under `top_key` of the
/// top-level object of `body`, in order. Other top-level keys are skipped unread.
/// Fails when the body is not JSON, the top level is not an object, `top_key` is
/// missing or not an array, or `row` fails (its error is returned as is).
pub(crate) fn for_each_row<'a>(body: &'a [u8], top_key: &str, row: &mut RowFn<'_, 'a>) -> Result<(), BackendError> {
    let mut state = State { top_key, row, failure: None, seen: false };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = (&mut de).deserialize_any(TopVisitor { state: &mut state }).and_then(|()| de.end());
    if let Some(failure) = state.failure {
        return Err(failure);
    }
    if let Err(e) = parsed {
        return Err(bad(format!("the answer is not valid JSON: {e}")));
    }
    if !state.seen {
        return Err(bad(format!("{top_key}: missing")));
    }
    Ok(())
}

struct State<'s, 'f, 'a> {
    top_key: &'s str,
    row: &'s mut RowFn<'f, 'a>,
    /// Set when a row or the shape is wrong; serde then only unwinds.
    failure: Option<BackendError>,
    seen: bool,
}

impl State<'_, '_, '_> {
    fn fail<E: de::Error>(&mut self, error: BackendError) -> E {
        self.failure = Some(error);
        E::custom("rejected")
    }
}

struct TopVisitor<'v, 's, 'f, 'a> {
    state: &'v mut State<'s, 'f, 'a>,
}

impl<'de, 'v, 's, 'f> Visitor<'de> for TopVisitor<'v, 's, 'f, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == self.state.top_key {
                self.state.seen = true;
                map.next_value_seed(RowsSeed { state: &mut *self.state })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.state.fail(bad("expected a JSON object at the top level, found an array")))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.state.fail(bad("expected a JSON object at the top level, found a string")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.state.fail(bad("expected a JSON object at the top level, found a number")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_f64(v as f64)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.state.fail(bad("expected a JSON object at the top level, found a boolean")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.state.fail(bad("expected a JSON object at the top level, found null")))
    }
}

struct RowsSeed<'v, 's, 'f, 'a> {
    state: &'v mut State<'s, 'f, 'a>,
}

impl<'de, 'v, 's, 'f> DeserializeSeed<'de> for RowsSeed<'v, 's, 'f, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // Read the value whole when it is not an array: it is small or wrong anyway,
        // and its type is what the message needs.
        deserializer.deserialize_any(RowsVisitor { state: self.state })
    }
}

struct RowsVisitor<'v, 's, 'f, 'a> {
    state: &'v mut State<'s, 'f, 'a>,
}

impl<'de, 'v, 's, 'f> RowsVisitor<'v, 's, 'f, 'de> {
    fn wrong<E: de::Error>(self, found: &str) -> Result<(), E> {
        let message = format!("{}: expected an array, found {found}", self.state.top_key);
        Err(self.state.fail(bad(message)))
    }
}

impl<'de, 'v, 's, 'f> Visitor<'de> for RowsVisitor<'v, 's, 'f, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(value) = seq.next_element::<Json<'de>>()? {
            if let Err(error) = (self.state.row)(index, value) {
                return Err(self.state.fail(error));
            }
            index += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.wrong("an object")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.wrong("a string")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.wrong("a number")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.wrong("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.wrong("a number")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.wrong("a boolean")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.wrong("null")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(body: &str) -> Result<Vec<String>, BackendError> {
        let mut seen = Vec::new();
        for_each_row(body.as_bytes(), "rows", &mut |i, v| {
            seen.push(format!("{i}:{v:?}"));
            Ok(())
        })?;
        Ok(seen)
    }

    fn bad_message(body: &str) -> String {
        match rows(body) {
            Err(BackendError::BadResponse(m)) => m,
            other => panic!("expected BadResponse for {body}, got {other:?}"),
        }
    }

    #[test]
    fn rows_are_streamed_in_order_and_other_keys_skipped() {
        let got = rows(r#"{"meta":{"x":[1,2]},"rows":[{"a":"b","n":1},2,"s\"q",null,true,[]]}"#).expect("parses");
        assert_eq!(
            got,
            [
                r#"0:Object([("a", String("b")), ("n", Number(1.0))])"#,
                "1:Number(2.0)",
                r#"2:String("s\"q")"#,
                "3:Null",
                "4:Bool(true)",
                "5:Array([])",
            ]
        );
        assert_eq!(rows(r#"{"rows":[]}"#).expect("parses"), Vec::<String>::new());
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let body = br#"{"rows":[{"account":"plain","esc\u0061ped":"x\ty"}]}"#;
        for_each_row(body, "rows", &mut |_, v| {
            let Json::Object(fields) = &v else { panic!("object") };
            assert!(matches!(fields[0].0, Cow::Borrowed("account")));
            assert!(matches!(fields[0].1, Json::String(Cow::Borrowed("plain"))));
            assert_eq!(fields[1].0, "escaped");
            assert_eq!(v.get("escaped"), Some(&Json::String(Cow::Owned("x\ty".into()))));
            Ok(())
        })
        .expect("parses");
    }

    #[test]
    fn shape_errors_are_named() {
        assert_eq!(bad_message(r#"{"other":[]}"#), "rows: missing");
        assert_eq!(bad_message(r#"{"rows":{"a":1}}"#), "rows: expected an array, found an object");
        assert_eq!(bad_message(r#"{"rows":null}"#), "rows: expected an array, found null");
        assert_eq!(bad_message(r#"{"rows":"x"}"#), "rows: expected an array, found a string");
        assert_eq!(bad_message(r#"{"rows":7}"#), "rows: expected an array, found a number");
        assert_eq!(bad_message(r#"[{"rows":[]}]"#), "expected a JSON object at the top level, found an array");
        assert_eq!(bad_message("null"), "expected a JSON object at the top level, found null");
        assert!(bad_message(r#"{"rows":[1,"#).starts_with("the answer is not valid JSON: "));
        assert!(bad_message("").starts_with("the answer is not valid JSON: "));
        assert!(bad_message(r#"{"rows":[]} x"#).starts_with("the answer is not valid JSON: "));
        assert!(bad_message(r#"{"rows":[1e999]}"#).starts_with("the answer is not valid JSON: "));
    }

    #[test]
    fn a_row_error_stops_the_stream_and_is_returned() {
        let mut calls = 0;
        let result = for_each_row(br#"{"rows":[1,2,3]}"#, "rows", &mut |i, _| {
            calls += 1;
            if i == 1 { Err(bad("rows[1]: no")) } else { Ok(()) }
        });
        assert_eq!(result, Err(bad("rows[1]: no")));
        assert_eq!(calls, 2);
    }
}
