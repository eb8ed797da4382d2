//! The ports a service declares (`port`, `ports`) and how their numbers reach
//! the places that use them.
//!
//! The config parser records each port as written: a number, or "auto" with
//! number 0. The engine assigns the auto ones (`ports`, remembered per
//! project and service) and then calls [`Config::apply_ports`], which puts
//! the numbers where they are used: `PORT`/`PORT_NAME` in the service's
//! environment, the service's own port in `health = { tcp = "auto" }` and
//! `health = { http = "/path" }`, and `${services.NAME.port}` /
//! `${services.NAME.ports.PORTNAME}` in any `env` value. Doing it once, on
//! the config, keeps the supervisor unaware of ports and lets a reload
//! compare configs as before: a service whose port did not change is left
//! alone.

use std::collections::HashMap;
use std::ops::Range;

use super::{BuildSpec, Config, HealthKind};

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// `None` for `port`, the key for an entry of `ports`.
    pub name: Option<String>,
    /// Chosen by locald ("auto") rather than written in the file.
    pub auto: bool,
    /// The number; for an auto port, 0 until the engine assigns it.
    pub number: u16,
}

impl Port {
    /// The environment variable that carries it: `PORT`, or `PORT_` and the
    /// name in upper case with `-` as `_`.
    pub fn var(&self) -> String {
        match &self.name {
            None => "PORT".into(),
            Some(n) => format!("PORT_{}", n.to_ascii_uppercase().replace('-', "_")),
        }
    }

    /// The key under which the engine remembers it: `port` or the name.
    pub fn key(&self) -> &str {
        self.name.as_deref().unwrap_or("port")
    }
}

/// A `${services.NAME.port}` or `${services.NAME.ports.PORT}` found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortRef {
    /// Byte range of the whole `${...}` in the value.
    pub range: Range<usize>,
    /// The service named.
    pub service: String,
    /// `None` for `.port` (the service's main port), else the port's name.
    pub port: Option<String>,
}

const OPEN: &str = "${services.";

/// Finds the port references in `value`; anything else in `${...}` is left
/// alone (the value is passed as written). A malformed reference is an
/// error naming it.
pub(crate) fn find_refs(value: &str) -> Result<Vec<PortRef>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = value[at..].find(OPEN) {
        let start = at + i;
        let body_start = start + OPEN.len();
        let Some(len) = value[body_start..].find('}') else {
            return Err(format!(
                "`{}` is not closed with `}}`",
                &value[start..value.len().min(start + 40)]
            ));
        };
        let body = &value[body_start..body_start + len];
        let end = body_start + len + 1;
        let parts: Vec<&str> = body.split('.').collect();
        let (service, port) = match parts.as_slice() {
            [s, "port"] if !s.is_empty() => (*s, None),
            [s, "ports", p] if !s.is_empty() && !p.is_empty() => (*s, Some((*p).to_owned())),
            _ => return Err(format!("`{}` is not a port reference", &value[start..end])),
        };
        out.push(PortRef {
            range: start..end,
            service: service.to_owned(),
            port,
        });
        at = end;
    }
    Ok(out)
}

/// Replaces every port reference in `value` through `lookup`; a reference
/// `lookup` cannot answer is left as written (the config check has already
/// refused those).
fn substitute(value: &str, lookup: &dyn Fn(&PortRef) -> Option<u16>) -> String {
    let Ok(refs) = find_refs(value) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(value.len());
    let mut last = 0;
    for r in refs {
        out.push_str(&value[last..r.range.start]);
        match lookup(&r) {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str(&value[r.range.clone()]),
        }
        last = r.range.end;
    }
    out.push_str(&value[last..]);
    out
}

impl super::ServiceConfig {
    /// Its numbered ports by environment variable, with `PORT` for the main
    /// one (as the service sees them, before any `env` override).
    pub fn ports_by_var(&self) -> std::collections::BTreeMap<String, u16> {
        let mut out: std::collections::BTreeMap<String, u16> = self
            .ports
            .iter()
            .filter(|p| p.number != 0)
            .map(|p| (p.var(), p.number))
            .collect();
        if let Some(main) = self.ports.first().filter(|p| p.number != 0) {
            out.insert("PORT".into(), main.number);
        }
        out
    }
}

impl Config {
    /// Puts the services' port numbers where they are used (see the module
    /// documentation). Call once, after every auto port was assigned.
    pub fn apply_ports(&mut self) {
        let table: HashMap<String, Vec<Port>> = self
            .services
            .iter()
            .map(|(n, s)| (n.clone(), s.ports.clone()))
            .collect();
        let lookup = |r: &PortRef| -> Option<u16> {
            let ports = table.get(&r.service)?;
            let p = match &r.port {
                None => ports.first(),
                Some(name) => ports.iter().find(|p| p.name.as_deref() == Some(name)),
            }?;
            (p.number != 0).then_some(p.number)
        };
        let subst_all = |env: &mut Vec<(String, String)>| {
            for (_, v) in env.iter_mut() {
                if v.contains(OPEN) {
                    *v = substitute(v, &lookup);
                }
            }
        };
        for svc in self.services.values_mut() {
            subst_all(&mut svc.env);
            match &mut svc.build {
                Some(BuildSpec::Host(h)) => subst_all(&mut h.env),
                Some(BuildSpec::Cnb(c)) => subst_all(&mut c.env),
                None => {}
            }
            // The service's own ports come first, so an explicit `env`
            // entry of the same name (later in the list) wins.
            let own: Vec<(String, String)> = svc
                .ports
                .iter()
                .filter(|p| p.number != 0)
                .map(|p| (p.var(), p.number.to_string()))
                .chain(
                    svc.ports
                        .first()
                        .filter(|p| p.name.is_some() && p.number != 0)
                        .map(|p| ("PORT".to_owned(), p.number.to_string())),
                )
                .filter(|(k, _)| !svc.env.iter().any(|(e, _)| e == k))
                .collect();
            svc.env.splice(0..0, own);
            let main = svc.ports.first().map_or(0, |p| p.number);
            if let Some(h) = &mut svc.health {
                match &mut h.kind {
                    HealthKind::Tcp(p) if *p == 0 => *p = main,
                    HealthKind::Http(u) if u.port == 0 => u.port = main,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_and_others_left_alone() {
        let r =
            find_refs("http://127.0.0.1:${services.api.port}/${HOME}${services.db.ports.admin}")
                .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].service, "api");
        assert_eq!(r[0].port, None);
        assert_eq!(r[1].port.as_deref(), Some("admin"));
        assert!(find_refs("${services.api}").is_err());
        assert!(find_refs("${services.api.port").is_err());
        assert!(find_refs("${services..port}").is_err());
        assert!(find_refs("${HOME}").unwrap().is_empty());
    }

    #[test]
    fn substitution_keeps_the_rest() {
        let v = substitute("a${services.x.port}b${services.y.port}", &|r| {
            (r.service == "x").then_some(5000)
        });
        assert_eq!(v, "a5000b${services.y.port}");
    }
}
