//! `-tags`: tags added to every service, as in Go Registrator: a
//! comma-separated list (`\,` is a literal comma), which may be a Go
//! template evaluated over each container's data, with Go Registrator's
//! template functions (`strSlice`, `sIndex`, `mIndex`, `toUpper`, `toLower`,
//! `replace`, `join`, `split`, `splitIndex`, `matchFirstElement`,
//! `matchAllElements`). `httpGet` and `jsonParse` are left out on purpose:
//! no request leaves registrator to decide a tag.
//!
//! The data is the container as `docker inspect` names it: `.ID`, `.Name`
//! (with Docker's leading `/`), `.Image` (the image ID), `.Config.Hostname`,
//! `.Config.Image`, `.Config.Env` (`KEY=value` strings), `.Config.Labels`,
//! `.NetworkSettings.IPAddress`, `.NetworkSettings.Networks.<name>.IPAddress`,
//! `.HostConfig.NetworkMode`, `.State.Running`.

use std::collections::HashMap;

use gtmpl::{Context, Template, Value};
use gtmpl_value::{FromValue, FuncError};

use crate::container::Container;
use crate::service::split_tags;

/// The parsed `-tags` value.
pub struct ForceTags {
    raw: String,
    template: Option<Template>,
}

impl std::fmt::Debug for ForceTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForceTags").field("raw", &self.raw).field("template", &self.template.is_some()).finish()
    }
}

impl ForceTags {
    /// Parses `-tags`; a template that does not parse is refused (at start,
    /// as Go Registrator refuses it) with the parser's reason.
    pub fn parse(raw: &str) -> Result<ForceTags, String> {
        if !raw.contains("{{") {
            return Ok(ForceTags { raw: raw.to_owned(), template: None });
        }
        let mut template = Template::default();
        template.add_funcs(FUNCS);
        template.parse(raw).map_err(|e| format!("-tags template {raw:?} does not parse: {e}"))?;
        Ok(ForceTags { raw: raw.to_owned(), template: Some(template) })
    }

    /// The tags for `c`: the list, or the template rendered over `c`, split
    /// on unescaped commas. A template that fails on this container is its
    /// problem, not registrator's: the reason is returned.
    pub fn render(&self, c: &Container) -> Result<Vec<String>, String> {
        match &self.template {
            None => Ok(split_tags(&self.raw)),
            Some(t) => {
                let text = t.render(&Context::from(data(c))).map_err(|e| format!("-tags template failed: {e}"))?;
                Ok(split_tags(&text))
            }
        }
    }
}

fn object(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn string_map<'a>(m: impl IntoIterator<Item = (&'a String, &'a String)>) -> Value {
    Value::Map(m.into_iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect())
}

/// `c` as the template sees it, in `docker inspect`'s names.
fn data(c: &Container) -> Value {
    let env: Vec<Value> = c.env.iter().map(|(k, v)| Value::from(format!("{k}={v}"))).collect();
    let ip = |n: Option<&crate::container::NetworkAddress>| {
        Value::from(n.and_then(|a| a.ip()).map(|ip| ip.to_string()).unwrap_or_default())
    };
    let networks: HashMap<String, Value> = c
        .networks
        .iter()
        .map(|(name, a)| {
            let gateway = a.gateway.map(|g| g.to_string()).unwrap_or_default();
            (name.clone(), object([("IPAddress", ip(Some(a))), ("Gateway", Value::from(gateway))]))
        })
        .collect();
    let mode = c.network_mode.clone();
    object([
        ("ID", Value::from(c.id.as_str())),
        ("Name", Value::from(format!("/{}", c.name))),
        ("Image", Value::from(c.image_id.as_str())),
        (
            "Config",
            object([
                ("Hostname", Value::from(c.hostname.as_str())),
                ("Image", Value::from(c.image.as_str())),
                ("Env", Value::Array(env)),
                ("Labels", string_map(&c.labels)),
            ]),
        ),
        ("NetworkSettings", object([("IPAddress", ip(c.networks.get("bridge"))), ("Networks", Value::Map(networks))])),
        ("HostConfig", object([("NetworkMode", Value::from(mode))])),
        ("State", object([("Running", Value::from(c.running))])),
    ])
}

const FUNCS: &[(&str, gtmpl::Func)] = &[
    ("strSlice", str_slice),
    ("sIndex", s_index),
    ("mIndex", m_index),
    ("toUpper", to_upper),
    ("toLower", to_lower),
    ("replace", replace),
    ("join", join),
    ("split", split),
    ("splitIndex", split_index),
    ("matchFirstElement", match_first_element),
    ("matchAllElements", match_all_elements),
];

fn arg<T: FromValue<T>>(args: &[Value], i: usize, func: &str) -> Result<T, FuncError> {
    args.get(i)
        .and_then(T::from_value)
        .ok_or_else(|| FuncError::Generic(format!("{func}: argument {} is missing or of the wrong type", i + 1)))
}

fn strings(args: &[Value], i: usize, func: &str) -> Result<Vec<String>, FuncError> {
    match args.get(i) {
        Some(Value::Array(items)) => Ok(items.iter().filter_map(String::from_value).collect()),
        Some(Value::NoValue | Value::Nil) => Ok(Vec::new()),
        _ => Err(FuncError::Generic(format!("{func}: argument {} is not a list of strings", i + 1))),
    }
}

fn int(args: &[Value], i: usize, func: &str) -> Result<i64, FuncError> {
    arg::<i64>(args, i, func)
}

/// Go Registrator's index rule: a negative index counts from the end, and an
/// index past either end gives the element at that end.
fn pick(items: &[String], i: i64) -> String {
    let Some(last) = items.len().checked_sub(1) else { return String::new() };
    let at = if i < 0 {
        let back = usize::try_from(i.unsigned_abs()).unwrap_or(usize::MAX);
        items.len().checked_sub(back).filter(|_| back <= last).unwrap_or(0)
    } else {
        usize::try_from(i).unwrap_or(usize::MAX).min(last)
    };
    items[at].clone()
}

fn str_slice(args: &[Value]) -> Result<Value, FuncError> {
    let v: String = arg(args, 0, "strSlice")?;
    let chars: Vec<char> = v.chars().collect();
    let n = chars.len();
    let idx = |i: usize| -> Result<usize, FuncError> {
        usize::try_from(int(args, i, "strSlice")?).map_err(|_| FuncError::Generic("strSlice: negative index".into()))
    };
    let out: String = match args.len() {
        2 => {
            let a = idx(1)?;
            if n >= a { chars[a..].iter().collect() } else { v }
        }
        3 => {
            let (a, b) = (idx(1)?, idx(2)?);
            if n >= a && n >= b {
                if b < a { chars[a..].iter().collect() } else { chars[a..b].iter().collect() }
            } else {
                v
            }
        }
        _ => v,
    };
    Ok(Value::from(out))
}

fn s_index(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::from(pick(&strings(args, 1, "sIndex")?, int(args, 0, "sIndex")?)))
}

fn m_index(args: &[Value]) -> Result<Value, FuncError> {
    let key: String = arg(args, 0, "mIndex")?;
    match args.get(1) {
        Some(Value::Map(m) | Value::Object(m)) => {
            Ok(Value::from(m.get(&key).and_then(String::from_value).unwrap_or_default()))
        }
        _ => Err(FuncError::Generic("mIndex: argument 2 is not a map".into())),
    }
}

fn to_upper(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::from(arg::<String>(args, 0, "toUpper")?.to_uppercase()))
}

fn to_lower(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::from(arg::<String>(args, 0, "toLower")?.to_lowercase()))
}

/// `replace N OLD NEW S`: the first N occurrences (all when N < 0), as Go's `strings.Replace`.
fn replace(args: &[Value]) -> Result<Value, FuncError> {
    let n = int(args, 0, "replace")?;
    let (old, new, v): (String, String, String) =
        (arg(args, 1, "replace")?, arg(args, 2, "replace")?, arg(args, 3, "replace")?);
    let out = match usize::try_from(n) {
        Ok(n) => v.replacen(&old, &new, n),
        Err(_) => v.replace(&old, &new),
    };
    Ok(Value::from(out))
}

fn join(args: &[Value]) -> Result<Value, FuncError> {
    let sep: String = arg(args, 0, "join")?;
    Ok(Value::from(strings(args, 1, "join")?.join(&sep)))
}

fn split(args: &[Value]) -> Result<Value, FuncError> {
    let (sep, v): (String, String) = (arg(args, 0, "split")?, arg(args, 1, "split")?);
    Ok(Value::Array(v.split(sep.as_str()).map(Value::from).collect()))
}

fn split_index(args: &[Value]) -> Result<Value, FuncError> {
    let i = int(args, 0, "splitIndex")?;
    let (sep, v): (String, String) = (arg(args, 1, "splitIndex")?, arg(args, 2, "splitIndex")?);
    let parts: Vec<String> = v.split(sep.as_str()).map(str::to_owned).collect();
    Ok(Value::from(pick(&parts, i)))
}

fn regex(args: &[Value], func: &str) -> Result<regex::Regex, FuncError> {
    let re: String = arg(args, 0, func)?;
    regex::Regex::new(&re).map_err(|e| FuncError::Generic(format!("{func}: {e}")))
}

fn match_first_element(args: &[Value]) -> Result<Value, FuncError> {
    let re = regex(args, "matchFirstElement")?;
    let found = strings(args, 1, "matchFirstElement")?.into_iter().find(|e| re.is_match(e));
    Ok(Value::from(found.unwrap_or_default()))
}

fn match_all_elements(args: &[Value]) -> Result<Value, FuncError> {
    let re = regex(args, "matchAllElements")?;
    let found = strings(args, 1, "matchAllElements")?.into_iter().filter(|e| re.is_match(e));
    Ok(Value::Array(found.map(Value::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::container;

    fn c() -> Container {
        let mut c = container("0123456789abcdef", "hello");
        c.name = "proj-hello-1".into();
        c.hostname = "hello1".into();
        c.image = "registry.example/team/hello:1.2".into();
        c.env.insert("DEPLOY_ENV".into(), "staging".into());
        c.labels.insert("com.example.team".into(), "Payments".into());
        c
    }

    fn tags(raw: &str) -> Vec<String> {
        ForceTags::parse(raw).unwrap().render(&c()).unwrap()
    }

    #[test]
    fn a_plain_list_splits_on_unescaped_commas() {
        assert_eq!(tags(r"a, b\,c ,,d"), ["a", "b,c", "d"]);
    }

    #[test]
    fn templates_see_the_container_as_docker_inspect_names_it() {
        assert_eq!(tags("{{.Config.Hostname}},x"), ["hello1", "x"]);
        assert_eq!(tags("{{.Name}}"), ["/proj-hello-1"]);
        assert_eq!(tags(r#"{{strSlice .ID 0 12}}"#), ["0123456789ab"]);
        assert_eq!(tags(r#"team-{{toLower (mIndex "com.example.team" .Config.Labels)}}"#), ["team-payments"]);
        assert_eq!(tags(r#"{{splitIndex 1 "=" (matchFirstElement "^DEPLOY_ENV=" .Config.Env)}}"#), ["staging"]);
        assert_eq!(tags(r#"{{splitIndex -1 "/" .Config.Image}}"#), ["hello:1.2"]);
        assert_eq!(tags(r#"{{join "," (matchAllElements "^SERVICE_" .Config.Env)}}"#), ["SERVICE_NAME=hello"]);
        assert_eq!(tags(r#"{{replace -1 "." "-" "a.b.c"}},{{toUpper "x"}}"#), ["a-b-c", "X"]);
        assert_eq!(tags(r#"{{sIndex 9 (split ":" "a:b:c")}}"#), ["c"], "past the end: the last");
        assert_eq!(tags(r#"{{sIndex -9 (split ":" "a:b:c")}}"#), ["a"], "before the start: the first");
        assert_eq!(tags(r#"{{if .State.Running}}up{{end}}"#), ["up"]);
        assert_eq!(tags(r#"{{.NetworkSettings.Networks.proj_default.IPAddress}}"#), ["172.20.0.5"]);
    }

    #[test]
    fn a_template_that_does_not_parse_is_refused_and_one_that_fails_is_the_containers_problem() {
        assert!(ForceTags::parse("{{.Config.Hostname").unwrap_err().contains("does not parse"));
        let t = ForceTags::parse("{{.Config.NoSuchField}}").unwrap();
        assert!(t.render(&c()).unwrap_err().contains("-tags template failed"));
        let t = ForceTags::parse(r#"{{matchFirstElement "(" .Config.Env}}"#).unwrap();
        assert!(t.render(&c()).is_err());
    }
}
