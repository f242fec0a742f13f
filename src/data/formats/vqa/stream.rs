//! Reading a VQA file's one big list entry by entry.

use crate::data::formats::relative;
use anyhow::{Context, Result, bail};
use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::path::Path;

/// Streams the entries of the array `key` of the JSON object in `file` to `each` (entry index,
/// entry), without holding the whole document as values: VQA's train annotations are 330 MB.
/// Returns the object's `data_subtype`. A file that is not such an object is an error.
pub fn read_array(
    root: &Path,
    file: &Path,
    key: &'static str,
    each: &mut dyn FnMut(usize, Value),
) -> Result<Option<String>> {
    let name = relative(root, file);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut crate::data::paths::open(root, file).with_context(|| format!("opening {name}"))?,
        &mut bytes,
    )
    .with_context(|| format!("reading {name}"))?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let (found, subtype) = de
        .deserialize_map(Object { key, each })
        .and_then(|v| de.end().map(|()| v))
        .with_context(|| format!("{name}: not a VQA {key} file"))?;
    if !found {
        bail!("{name}: no `{key}` list");
    }
    Ok(subtype)
}

struct Object<'a> {
    key: &'static str,
    each: &'a mut dyn FnMut(usize, Value),
}

impl<'de> Visitor<'de> for Object<'_> {
    type Value = (bool, Option<String>);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a JSON object with a `{}` list", self.key)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut found, mut subtype) = (false, None);
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key {
                map.next_value_seed(Entries(&mut *self.each))?;
                found = true;
            } else if k == "data_subtype" {
                subtype = map.next_value::<Value>()?.as_str().map(str::to_string);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((found, subtype))
    }
}

struct Entries<'a>(&'a mut dyn FnMut(usize, Value));

impl<'de> DeserializeSeed<'de> for Entries<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            (self.0)(i, v);
            i += 1;
        }
        Ok(())
    }
}
