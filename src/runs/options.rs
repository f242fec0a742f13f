//! The machinery behind [`declare_options!`]: what an option is ([`OptionSpec`]), the values it
//! may take ([`Range`], [`OptionValue`]), and how a set of options becomes a command-line
//! flag set. The options themselves are declared in `runs/mod.rs`.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::str::FromStr;

/// The kind of value an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number.
    Integer,
    /// A real number.
    Number,
    /// One of a few names.
    Choice,
    /// `true` or `false`.
    Boolean,
    /// A short name ([`Name`]).
    Name,
}

impl Kind {
    /// `integer`, `number`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::Choice => "choice",
            Kind::Boolean => "boolean",
            Kind::Name => "name",
        }
    }

    /// `an integer`, `a number`, for messages.
    pub fn phrase(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            Kind::Number => "a number",
            Kind::Choice => "one of the names",
            Kind::Boolean => "`true` or `false`",
            Kind::Name => "a name of 1 to 32 letters, digits and `_-.:+`",
        }
    }

    /// What an HTML input of this kind takes (`inputmode`).
    pub fn input_mode(self) -> &'static str {
        match self {
            Kind::Integer => "numeric",
            Kind::Number => "decimal",
            Kind::Choice | Kind::Boolean | Kind::Name => "text",
        }
    }
}

/// One end of a range of numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The end itself is allowed.
    Closed(f64),
    /// Only values beyond the end are allowed.
    Open(f64),
}

/// The values an option allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// Any value of its type.
    Any,
    /// Whole numbers from `min` to `max`, both included.
    Integers { min: i128, max: i128 },
    /// Finite real numbers between two bounds.
    Numbers { min: Bound, max: Bound },
    /// One of these names.
    OneOf(&'static [&'static str]),
}

impl Range {
    /// Whole numbers from `min` to `max`, both included.
    pub const fn integers(min: i128, max: i128) -> Range {
        Range::Integers { min, max }
    }

    /// Finite real numbers between `min` and `max`.
    pub const fn numbers(min: Bound, max: Bound) -> Range {
        Range::Numbers { min, max }
    }

    /// `between 1 and 1000`, `a number in (0, 1]`; empty for [`Range::Any`].
    pub fn phrase(&self) -> String {
        match self {
            Range::Any => String::new(),
            Range::Integers { .. } => self.allowed(),
            Range::Numbers { .. } => format!("a number in {}", self.allowed()),
            Range::OneOf(_) => format!("one of {}", self.allowed()),
        }
    }

    /// The names a choice allows; empty for other ranges.
    pub fn choices(&self) -> &'static [&'static str] {
        match *self {
            Range::OneOf(names) => names,
            _ => &[],
        }
    }

    /// `any`, `between 1 and 1000`, `(0, 1]`.
    pub fn allowed(&self) -> String {
        match *self {
            Range::Any => "any".into(),
            Range::Integers { min, max } => format!("between {min} and {max}"),
            Range::Numbers { min, max } => {
                let (open, lo) = match min {
                    Bound::Closed(v) => ('[', v),
                    Bound::Open(v) => ('(', v),
                };
                let (close, hi) = match max {
                    Bound::Closed(v) => (']', v),
                    Bound::Open(v) => (')', v),
                };
                format!("{open}{lo}, {hi}{close}")
            }
            Range::OneOf(names) => names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn contains_integer(&self, v: i128) -> bool {
        match *self {
            Range::Any => true,
            Range::Integers { min, max } => (min..=max).contains(&v),
            Range::Numbers { .. } => self.contains_number(v as f64),
            Range::OneOf(_) => false,
        }
    }

    fn contains_number(&self, v: f64) -> bool {
        if !v.is_finite() {
            return false;
        }
        match *self {
            Range::Any => true,
            Range::Integers { min, max } => v.fract() == 0.0 && v >= min as f64 && v <= max as f64,
            Range::Numbers { min, max } => {
                let above = match min {
                    Bound::Closed(m) => v >= m,
                    Bound::Open(m) => v > m,
                };
                let below = match max {
                    Bound::Closed(m) => v <= m,
                    Bound::Open(m) => v < m,
                };
                above && below
            }
            Range::OneOf(_) => false,
        }
    }
}

/// One option as users meet it: the form's field, the command-line flag, the row of a run's
/// configuration table, and the checks on its value. Made by [`declare_options!`] from the
/// option's declaration.
#[derive(Debug)]
pub struct OptionSpec {
    /// The field name (JSON key, form field, `--flag-name` with dashes).
    pub name: &'static str,
    /// The declaration's doc comment.
    pub doc: &'static str,
    pub kind: Kind,
    /// Whether the option may be left unset (its value is then `None`).
    pub optional: bool,
    pub range: Range,
    /// The whole numbers the value's type can hold (integers only).
    pub limits: Option<(i128, i128)>,
    /// Unit of the value, if it has one (`tokens`, `examples`).
    pub unit: &'static str,
    /// What leaving an optional option unset means (`all epochs`).
    pub unset: &'static str,
}

impl OptionSpec {
    /// The help text: the doc comment on one line.
    pub fn help(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// `--batch-size`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }

    /// The error for a value outside the range.
    pub fn out_of_range(&self, value: impl Display) -> OptionError {
        OptionError {
            field: self.name,
            message: format!(
                "`{}` must be {}, got {value}",
                self.name,
                self.range.phrase()
            ),
        }
    }

    /// The error for text that does not read as this option's kind of value.
    pub fn unreadable(&self, text: &str) -> OptionError {
        OptionError {
            field: self.name,
            message: format!(
                "`{}` must be {}, got `{text}`",
                self.name,
                self.kind.phrase()
            ),
        }
    }
}

/// What an option's JSON Schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaUse {
    /// A request: the option may be left out or `null`, both meaning its default.
    Request,
    /// A stored configuration (a run's `config`): the option is always there, `null` only
    /// when an optional option is unset.
    Config,
}

impl OptionSpec {
    /// The JSON Schema of the option's value, for the API's OpenAPI document: its kind, its
    /// range (within what its type can hold), its names, its help, its default. Made from the
    /// declaration, so that the document accepts what the service accepts.
    pub fn schema(
        &self,
        default: Option<serde_json::Value>,
        usage: SchemaUse,
    ) -> utoipa::openapi::schema::Schema {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, SchemaType, Type};
        let nullable = usage == SchemaUse::Request || self.optional;
        let ty = match self.kind {
            Kind::Integer => Type::Integer,
            Kind::Number => Type::Number,
            Kind::Choice | Kind::Name => Type::String,
            Kind::Boolean => Type::Boolean,
        };
        let ty = if nullable {
            SchemaType::from_iter([ty, Type::Null])
        } else {
            SchemaType::new(ty)
        };
        let mut description = self.help();
        if !self.unit.is_empty() {
            description.push_str(&format!(" Unit: {}.", self.unit));
        }
        match (self.optional, usage) {
            (true, _) => description.push_str(&format!(" `null`: {}.", self.unset)),
            (false, SchemaUse::Request) => description.push_str(" `null`: the default."),
            (false, SchemaUse::Config) => {}
        }
        let mut b = ObjectBuilder::new()
            .schema_type(ty)
            .description(Some(description))
            .default(default);
        match (self.kind, self.range) {
            (Kind::Integer, range) => {
                let (mut lo, mut hi) = self.limits.unwrap_or((i128::MIN, i128::MAX));
                if let Range::Integers { min, max } = range {
                    (lo, hi) = (lo.max(min), hi.min(max));
                }
                b = b.minimum(Some(number(lo))).maximum(Some(number(hi)));
            }
            (Kind::Number, range) => {
                b = b.format(Some(SchemaFormat::KnownFormat(
                    utoipa::openapi::schema::KnownFormat::Double,
                )));
                if let Range::Numbers { min, max } = range {
                    b = match min {
                        Bound::Closed(v) => b.minimum(Some(v)),
                        Bound::Open(v) => b.exclusive_minimum(Some(v)),
                    };
                    b = match max {
                        Bound::Closed(v) => b.maximum(Some(v)),
                        Bound::Open(v) => b.exclusive_maximum(Some(v)),
                    };
                }
            }
            (Kind::Choice, range) => {
                let mut names: Vec<serde_json::Value> =
                    range.choices().iter().map(|&n| n.into()).collect();
                if nullable {
                    names.push(serde_json::Value::Null);
                }
                b = b.enum_values(Some(names));
            }
            (Kind::Boolean, _) => {}
            (Kind::Name, _) => {
                b = b
                    .pattern(Some(Name::PATTERN))
                    .min_length(Some(1))
                    .max_length(Some(Name::MAX));
            }
        }
        b.build().into()
    }
}

/// A whole number as a schema's bound.
fn number(v: i128) -> utoipa::Number {
    match usize::try_from(v) {
        Ok(u) => utoipa::Number::UInt(u),
        Err(_) => utoipa::Number::Int(isize::try_from(v).unwrap_or(isize::MIN)),
    }
}

/// The JSON Schema of a set of options as an object of `properties`: a request's (unknown
/// fields refused, none required) or a stored configuration's (all of them there).
pub fn object_schema(
    properties: Vec<(&'static str, utoipa::openapi::schema::Schema)>,
    usage: SchemaUse,
) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder};
    let mut b = ObjectBuilder::new();
    for (name, schema) in properties {
        b = b.property(name, schema);
        if usage == SchemaUse::Config {
            b = b.required(name);
        }
    }
    if usage == SchemaUse::Request {
        b = b.additional_properties(Some(AdditionalProperties::FreeForm(false)));
    }
    b.build()
}

/// A value an option does not allow; names the option.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    /// The option at fault.
    pub field: &'static str,
    pub message: String,
}

/// A type an option's value can have.
pub trait OptionValue:
    Copy + Display + FromStr + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Its kind.
    const KIND: Kind;
    /// The whole numbers the type can hold (`None` for other kinds): a value outside them is
    /// refused before any range is checked, so the schema of the option says so too.
    const LIMITS: Option<(i128, i128)> = None;
    /// Whether `range` allows it.
    fn within(self, range: &Range) -> bool;
    /// As a form field and the configuration table show it (and as it reads back).
    fn show(self) -> String;
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl OptionValue for $t {
            const KIND: Kind = Kind::Integer;
            const LIMITS: Option<(i128, i128)> = Some((<$t>::MIN as i128, <$t>::MAX as i128));
            fn within(self, range: &Range) -> bool {
                range.contains_integer(self as i128)
            }
            fn show(self) -> String {
                self.to_string()
            }
        }
    )*};
}
integer_values!(u32, u64, i64);

impl OptionValue for f64 {
    const KIND: Kind = Kind::Number;
    fn within(self, range: &Range) -> bool {
        range.contains_number(self)
    }
    /// `2e-5` for small and large values, `0.1` otherwise.
    fn show(self) -> String {
        let a = self.abs();
        if a != 0.0 && !(1e-2..1e5).contains(&a) {
            format!("{self:e}")
        } else {
            format!("{self}")
        }
    }
}

impl OptionValue for bool {
    const KIND: Kind = Kind::Boolean;
    fn within(self, _: &Range) -> bool {
        true
    }
    fn show(self) -> String {
        self.to_string()
    }
}

/// A short name an option may take, such as a Slurm partition, account or QoS: 1 to
/// [`Name::MAX`] ASCII letters, digits and `_ - . : +`. Nothing else can reach a command line
/// through it. Kept inline, so that it is `Copy` like the other option values.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name {
    len: u8,
    bytes: [u8; Name::MAX],
}

impl Name {
    /// The longest name.
    pub const MAX: usize = 32;
    /// The names allowed, as a regular expression (for the API's schema).
    pub const PATTERN: &'static str = "^[A-Za-z0-9_.:+-]{1,32}$";

    /// Whether a character may stand in a name: one that reaches a command line as part of
    /// one argument and means nothing to a shell or to Slurm's option parser.
    pub fn allows(c: char) -> bool {
        c.is_ascii_alphanumeric() || "_-.:+".contains(c)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("names are ASCII")
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Name, String> {
        let ok = !s.is_empty() && s.len() <= Name::MAX && s.chars().all(Name::allows);
        if !ok {
            return Err(format!(
                "`{}` is not a name of 1 to {} letters, digits and `_-.:+`",
                s.chars().take(40).collect::<String>(),
                Name::MAX
            ));
        }
        let mut bytes = [0u8; Name::MAX];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Name {
            len: s.len() as u8,
            bytes,
        })
    }
}

impl Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl clap::builder::ValueParserFactory for Name {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> clap::builder::ValueParser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<Name>())
    }
}

impl OptionValue for Name {
    const KIND: Kind = Kind::Name;
    fn within(self, _: &Range) -> bool {
        true
    }
    fn show(self) -> String {
        self.as_str().to_string()
    }
}

/// Declares an enum whose values are names (`"no"`, `"fp16"`, `"bf16"`), for an option of
/// [`Kind::Choice`]: it reads from and writes as its names (in JSON, forms and flags) and lists
/// them in `NAMES`, for the option's `Range::OneOf(<Enum>::NAMES)`.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident { $( $(#[doc = $doc:literal])* $Variant:ident = $name:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $Enum { $( $(#[doc = $doc])* $Variant, )* }

        impl $Enum {
            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// The name of the value.
            pub fn name(self) -> &'static str {
                match self { $( $Enum::$Variant => $name, )* }
            }
        }

        impl std::fmt::Display for $Enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.name())
            }
        }

        impl std::str::FromStr for $Enum {
            type Err = String;
            fn from_str(s: &str) -> Result<$Enum, String> {
                match s {
                    $( $name => Ok($Enum::$Variant), )*
                    _ => Err(format!(
                        "unknown value `{s}`, expected one of {}",
                        $crate::runs::options::Range::OneOf(Self::NAMES).allowed()
                    )),
                }
            }
        }

        impl serde::Serialize for $Enum {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $Enum {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$Enum, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl clap::builder::ValueParserFactory for $Enum {
            type Parser = clap::builder::ValueParser;
            fn value_parser() -> clap::builder::ValueParser {
                clap::builder::ValueParser::new(|s: &str| s.parse::<$Enum>())
            }
        }

        impl $crate::runs::options::OptionValue for $Enum {
            const KIND: $crate::runs::options::Kind = $crate::runs::options::Kind::Choice;
            fn within(self, _: &$crate::runs::options::Range) -> bool {
                true
            }
            fn show(self) -> String {
                self.name().to_string()
            }
        }

        impl $crate::runs::options::OptionField for $Enum {
            type Value = $Enum;
            const OPTIONAL: bool = false;
            fn given_or(default: Self, given: Option<$Enum>) -> Self {
                given.unwrap_or(default)
            }
            fn value(&self) -> Option<$Enum> {
                Some(*self)
            }
        }
    };
}

pub(crate) use choice;

/// The type of an option's field: a value, or an optional value (`None`: unset).
pub trait OptionField: Clone {
    /// The value inside.
    type Value: OptionValue;
    /// Whether the field may be unset.
    const OPTIONAL: bool;
    /// `given` if there is one, else `default`.
    fn given_or(default: Self, given: Option<Self::Value>) -> Self;
    /// The value, if set.
    fn value(&self) -> Option<Self::Value>;
}

macro_rules! option_fields {
    ($($t:ty),*) => {$(
        impl OptionField for $t {
            type Value = $t;
            const OPTIONAL: bool = false;
            fn given_or(default: Self, given: Option<$t>) -> Self {
                given.unwrap_or(default)
            }
            fn value(&self) -> Option<$t> {
                Some(*self)
            }
        }
        impl OptionField for Option<$t> {
            type Value = $t;
            const OPTIONAL: bool = true;
            fn given_or(default: Self, given: Option<$t>) -> Self {
                given.or(default)
            }
            fn value(&self) -> Option<$t> {
                *self
            }
        }
    )*};
}
option_fields!(u32, u64, i64, f64, bool, Name);

/// Checks a field's value against its option's range.
pub fn check<F: OptionField>(spec: &OptionSpec, field: &F) -> Result<(), OptionError> {
    match field.value() {
        Some(v) if !v.within(&spec.range) => Err(spec.out_of_range(v)),
        _ => Ok(()),
    }
}

/// The command-line flag of an option: `--batch-size <EXAMPLES>`, its help with the allowed
/// values and the default, under `heading`.
pub fn cli_arg(
    spec: &'static OptionSpec,
    default: Option<String>,
    heading: &'static str,
    parser: impl Into<clap::builder::ValueParser>,
) -> clap::Arg {
    let mut help = spec.help().trim_end_matches('.').to_string();
    let range = spec.range.phrase();
    match (range.is_empty(), spec.unit.is_empty()) {
        (false, false) => help = format!("{help} ({range} {})", spec.unit),
        (false, true) => help = format!("{help} ({range})"),
        (true, false) => help = format!("{help} ({})", spec.unit),
        (true, true) => {}
    }
    let value_name = spec.name.to_uppercase();
    let shown = match default {
        Some(d) => format!(" [default: {d}]"),
        None if !spec.unset.is_empty() => format!(" [default: unset, {}]", spec.unset),
        None => String::new(),
    };
    let mut arg = clap::Arg::new(spec.name)
        .long(spec.name.replace('_', "-"))
        .value_name(value_name);
    if spec.name.contains('_') {
        // `--batch_size`, as Hugging Face's scripts spell their flags
        arg = arg.alias(spec.name);
    }
    if spec.kind == Kind::Boolean {
        // `--gradient-checkpointing` alone means `true`
        arg = arg.num_args(0..=1).default_missing_value("true");
    }
    arg.help(format!("{help}{shown}"))
        .help_heading(heading)
        // `--priority -3`: values are numbers, never flags
        .allow_negative_numbers(true)
        .value_parser(parser.into())
}

/// Declares a set of run options, each once: its doc comment (the help text), name, type,
/// default, range, unit and (for an optional one) what unset means. Generates
///
/// - `$Config`, the options with their values (stored with a run, sent to its worker), whose
///   `Default` holds the defaults, with `check` and `values`;
/// - `$Options`, the same options as a request gives them, each may be left out: deserialized
///   from JSON and from forms (through [`crate::runs::RunRequest`]), parsed from command-line
///   flags (`clap::Args`), resolved into a `$Config` by `resolve`, and listed in `SPECS`.
///
/// A field's type is a value type ([`OptionValue`]: `u32`, `u64`, `i64`, `f64`) or an
/// `Option` of one, for options that may be unset (their default is `None`).
macro_rules! declare_options {
    (
        $(#[$cmeta:meta])*
        pub struct $Config:ident;
        $(#[$ometa:meta])*
        pub struct $Options:ident;
        heading $heading:literal;
        $(
            $(#[doc = $doc:literal])*
            $name:ident : $ty:ty = $default:expr, range $range:expr, unit $unit:literal
                $(, unset $unset:literal)? ;
        )*
    ) => {
        $(#[$cmeta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for $Config {
            fn default() -> Self {
                $Config { $( $name: $default, )* }
            }
        }

        impl $Config {
            /// Checks every value against its option's range; the error names the first
            /// option at fault.
            pub fn check(&self) -> Result<(), $crate::runs::options::OptionError> {
                let mut specs = $Options::SPECS.iter();
                $( $crate::runs::options::check(
                    specs.next().expect("one spec per option"),
                    &self.$name,
                )?; )*
                Ok(())
            }

            /// Every option with its value as shown (`None`: unset), in declaration order.
            pub fn values(
                &self,
            ) -> Vec<(&'static $crate::runs::options::OptionSpec, Option<String>)> {
                use $crate::runs::options::{OptionField, OptionValue};
                let mut specs = $Options::SPECS.iter();
                vec![ $( (
                    specs.next().expect("one spec per option"),
                    OptionField::value(&self.$name).map(OptionValue::show),
                ), )* ]
            }
        }

        impl $Config {
            /// Every option's JSON Schema, in declaration order, with its default.
            pub fn schema_properties(
                usage: $crate::runs::options::SchemaUse,
            ) -> Vec<(&'static str, utoipa::openapi::schema::Schema)> {
                let defaults = serde_json::to_value(Self::default()).unwrap_or_default();
                $Options::SPECS
                    .iter()
                    .map(|s| (s.name, s.schema(defaults.get(s.name).cloned(), usage)))
                    .collect()
            }
        }

        impl utoipa::PartialSchema for $Config {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let usage = $crate::runs::options::SchemaUse::Config;
                $crate::runs::options::object_schema(Self::schema_properties(usage), usage).into()
            }
        }

        impl utoipa::ToSchema for $Config {}

        impl utoipa::PartialSchema for $Options {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let usage = $crate::runs::options::SchemaUse::Request;
                $crate::runs::options::object_schema($Config::schema_properties(usage), usage)
                    .into()
            }
        }

        impl utoipa::ToSchema for $Options {}

        $(#[$ometa])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $Options {
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<<$ty as $crate::runs::options::OptionField>::Value>,
            )*
        }

        impl $Options {
            /// Every option, in declaration order.
            pub const SPECS: &'static [$crate::runs::options::OptionSpec] = &[ $(
                $crate::runs::options::OptionSpec {
                    name: stringify!($name),
                    doc: concat!($($doc, "\n",)*),
                    kind: <<$ty as $crate::runs::options::OptionField>::Value
                        as $crate::runs::options::OptionValue>::KIND,
                    optional: <$ty as $crate::runs::options::OptionField>::OPTIONAL,
                    range: $range,
                    limits: <<$ty as $crate::runs::options::OptionField>::Value
                        as $crate::runs::options::OptionValue>::LIMITS,
                    unit: $unit,
                    unset: [$($unset,)? ""][0],
                },
            )* ];

            /// The option called `name`.
            pub fn spec(name: &str) -> Option<&'static $crate::runs::options::OptionSpec> {
                Self::SPECS.iter().find(|s| s.name == name)
            }

            /// The values: those given, the defaults for the rest, each checked against its
            /// range.
            pub fn resolve(self) -> Result<$Config, $crate::runs::options::OptionError> {
                use $crate::runs::options::OptionField;
                let d = $Config::default();
                let c = $Config { $( $name: OptionField::given_or(d.$name, self.$name), )* };
                c.check()?;
                Ok(c)
            }

            /// The options that give `config` back.
            pub fn of(config: &$Config) -> Self {
                use $crate::runs::options::OptionField;
                $Options { $( $name: OptionField::value(&config.$name), )* }
            }

            /// Reads the value of the option `key` from a map being deserialized; `false` if
            /// no option is called that (the value is then still to be read).
            pub fn deserialize_field<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<bool, A::Error> {
                match key {
                    $( stringify!($name) => {
                        self.$name = map.next_value()?;
                        Ok(true)
                    } )*
                    _ => Ok(false),
                }
            }
        }

        impl clap::FromArgMatches for $Options {
            fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
                let mut options = Self::default();
                options.update_from_arg_matches(m)?;
                Ok(options)
            }

            fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
                $(
                    if let Some(v) = m.get_one::<
                        <$ty as $crate::runs::options::OptionField>::Value
                    >(stringify!($name)) {
                        self.$name = Some(*v);
                    }
                )*
                Ok(())
            }
        }

        impl clap::Args for $Options {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                let mut defaults = $Config::default().values().into_iter();
                let mut cmd = cmd;
                $(
                    let (spec, default) = defaults.next().expect("one value per option");
                    cmd = cmd.arg($crate::runs::options::cli_arg(
                        spec,
                        default,
                        $heading,
                        clap::value_parser!(<$ty as $crate::runs::options::OptionField>::Value),
                    ));
                )*
                cmd
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
}

pub(crate) use declare_options;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_say_what_they_allow_and_check_it() {
        let r = Range::numbers(Bound::Open(0.0), Bound::Closed(1.0));
        assert_eq!(r.phrase(), "a number in (0, 1]");
        assert!(1.0f64.within(&r) && 0.5f64.within(&r));
        assert!(!0.0f64.within(&r) && !f64::NAN.within(&r) && !f64::INFINITY.within(&r));
        let r = Range::integers(1, 1000);
        assert_eq!(r.phrase(), "between 1 and 1000");
        assert!(1u32.within(&r) && 1000u32.within(&r) && !0u32.within(&r));
        assert!(!(-3i64).within(&r) && !u64::MAX.within(&r));
        assert!(u64::MAX.within(&Range::Any));
    }

    #[test]
    fn numbers_show_in_a_form_that_reads_back() {
        for (v, shown) in [(2e-5, "2e-5"), (0.1, "0.1"), (0.01, "0.01"), (1e-3, "1e-3")] {
            assert_eq!(v.show(), shown);
            assert_eq!(shown.parse::<f64>().unwrap(), v);
        }
    }
}
