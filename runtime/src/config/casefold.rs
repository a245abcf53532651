//! Keys of configuration structs matched without regard to case, as zot
//! (viper) reads them: its own YAML example writes `basedn`,
//! `subtreesearch`, `userattribute` where its JSON writes `baseDN`,
//! `subtreeSearch`, `userAttribute`.
//!
//! [`Folded`] is a deserializer over a JSON value that, whenever a struct is
//! asked for, renames each key that matches one of the struct's field names
//! only when case is ignored to that field name, at every depth reached
//! through structs, options, sequences and maps. Keys of maps (repository
//! globs, group names, annotations) are data and stay as written; an exact
//! match always wins over a case-folded one. Structs inside untagged enums
//! or `#[serde(flatten)]` fields are buffered by serde and not folded (the
//! configuration has none today).

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Value};

/// A JSON value to deserialize with struct keys matched case-insensitively.
pub struct Folded(pub Value);

/// Rename the keys of `map` that name one of `fields` in another case.
fn fold_keys(map: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    if map.keys().all(|k| fields.contains(&k.as_str())) {
        return map;
    }
    let mut out = Map::new();
    let mut pending = Vec::new();
    for (k, v) in map {
        if fields.contains(&k.as_str()) {
            out.insert(k, v);
        } else {
            pending.push((k, v));
        }
    }
    for (k, v) in pending {
        let canonical = fields
            .iter()
            .find(|f| f.eq_ignore_ascii_case(&k))
            .filter(|f| !out.contains_key(**f));
        match canonical {
            Some(f) => out.insert((*f).to_string(), v),
            None => out.insert(k, v),
        };
    }
    out
}

struct FoldedMap {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for FoldedMap {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value asked for before its key"))?;
        seed.deserialize(Folded(v))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct FoldedSeq {
    iter: std::vec::IntoIter<Value>,
}

impl<'de> SeqAccess<'de> for FoldedSeq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.iter.next() {
            Some(v) => seed.deserialize(Folded(v)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

impl<'de> Deserializer<'de> for Folded {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(FoldedMap {
                iter: map.into_iter(),
                value: None,
            }),
            Value::Array(items) => visitor.visit_seq(FoldedSeq {
                iter: items.into_iter(),
            }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => {
                Folded(Value::Object(fold_keys(map, fields))).deserialize_any(visitor)
            }
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Folded(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_bytes(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_byte_buf(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit seq tuple tuple_struct map identifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        root_directory: String,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        globs: BTreeMap<String, Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        #[serde(rename = "baseDN")]
        base_dn: String,
        #[serde(default, rename = "subtreeSearch")]
        subtree_search: bool,
    }

    fn read(v: Value) -> Result<Outer, serde_json::Error> {
        Outer::deserialize(Folded(v))
    }

    #[test]
    fn struct_keys_match_in_any_case_at_every_depth() {
        let got = read(serde_json::json!({
            "rootdirectory": "/r",
            "INNER": {"basedn": "dc=x", "SubtreeSearch": true},
            "list": [{"BASEDN": "dc=y"}],
            "globs": {"Team/**": {"baseDn": "dc=z"}}
        }))
        .unwrap();
        assert_eq!(got.root_directory, "/r");
        assert_eq!(
            got.inner,
            Some(Inner {
                base_dn: "dc=x".into(),
                subtree_search: true
            })
        );
        assert_eq!(got.list[0].base_dn, "dc=y");
        // Map keys are data: kept as written.
        assert_eq!(got.globs["Team/**"].base_dn, "dc=z");
        assert!(!got.globs.contains_key("team/**"));
    }

    #[test]
    fn an_exact_key_wins_and_unknown_keys_stay_unknown() {
        let mut unknown = Vec::new();
        let v = serde_json::json!({"rootDirectory": "/exact", "rootdirectory": "/folded",
            "inner": {"baseDN": "dc=x", "bogus": 1}});
        let got: Outer = serde_ignored::deserialize(Folded(v), |p| {
            unknown.push(p.to_string().replace("?.", ""))
        })
        .unwrap();
        assert_eq!(got.root_directory, "/exact");
        unknown.sort();
        assert_eq!(unknown, ["inner.bogus", "rootdirectory"]);
    }

    #[test]
    fn a_missing_field_is_still_missing() {
        let e =
            read(serde_json::json!({"rootDirectory": "/r", "inner": {"base": "x"}})).unwrap_err();
        assert!(e.to_string().contains("missing field `baseDN`"), "{e}");
    }
}
