//! The gate in front of every locald object: [`Guarded`] wraps an interface
//! and admits a caller before zbus runs any of its code.
//!
//! zbus answers `org.freedesktop.DBus.Properties` and
//! `org.freedesktop.DBus.ObjectManager` itself, outside the interfaces'
//! methods, so a check inside each method would leave property reads and
//! `GetManagedObjects` open to every connection on the bus. The wrapper sits
//! where zbus calls in:
//!
//! - `call`: every method (and `GetManagedObjects`, since zbus's
//!   `ObjectManager` is wrapped too) checks the caller's uid ([`Access`]),
//!   then the signature of the arguments, then runs the inner method;
//! - `get`/`get_all` with a header: `Properties.Get`/`GetAll` from a client,
//!   checked the same way. zbus passes no header when it gathers properties
//!   for itself (`GetManagedObjects` after the check above, the
//!   `InterfacesAdded` it emits), and those pass through.
//!
//! A refused caller gets `org.freedesktop.DBus.Error.AccessDenied`; arguments
//! of the wrong type get `org.freedesktop.DBus.Error.InvalidArgs` naming the
//! expected and the received signature (zbus's own answer would be its
//! generic `org.freedesktop.zbus.Error`). The expected signatures are read
//! once per object from the inner interface's introspection XML, so they
//! cannot drift from the methods.
//!
//! This implements zbus's `Interface` trait by hand, which zbus calls an
//! unstable API: a zbus upgrade may need this file adjusted, and the tests
//! in `tests/tests/dbus_access.rs` say when.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use zbus::message::Header;
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult2, Interface, SignalEmitter};
use zbus::zvariant::{OwnedValue, Signature, Value};
use zbus::{fdo, Connection, Message, ObjectServer};

use super::access::Access;

/// The arguments a method takes: as introspected, and parsed for comparing.
struct Inputs {
    text: String,
    parsed: Signature,
}

/// An interface whose every call and property read is admitted first.
pub(crate) struct Guarded<I> {
    inner: I,
    access: Arc<Access>,
    /// Method name → its arguments.
    inputs: HashMap<String, Inputs>,
}

impl<I: Interface> Guarded<I> {
    pub(crate) fn new(inner: I, access: Arc<Access>) -> Self {
        let mut xml = String::new();
        inner.introspect_to_writer(&mut xml, 0);
        let inputs = method_inputs(&xml)
            .into_iter()
            .filter_map(|(method, text)| {
                // zbus wrote these types itself; one it cannot parse back
                // is left unchecked rather than made unreachable.
                let parsed = Signature::from_str(&text).ok()?;
                Some((method, Inputs { text, parsed }))
            })
            .collect();
        Self {
            inner,
            access,
            inputs,
        }
    }
}

/// Each method of the interfaces in `xml` with the concatenated types of its
/// `in` arguments, read with zbus's own introspection parser. `xml` is a
/// document (`<node>…`), or the interface elements alone that zbus's
/// `introspect_to_writer` writes.
fn method_inputs(xml: &str) -> HashMap<String, String> {
    let doc = if xml.contains("<node") {
        xml.to_owned()
    } else {
        format!("<node>{xml}</node>")
    };
    let Ok(node) = zbus_xml::Node::from_reader(doc.as_bytes()) else {
        return HashMap::new();
    };
    node.interfaces()
        .iter()
        .flat_map(|i| i.methods())
        .map(|m| {
            // A method's arguments are `in` unless they say otherwise.
            let inputs: String = m
                .args()
                .iter()
                .filter(|a| {
                    a.direction()
                        .is_none_or(|d| d == zbus_xml::ArgDirection::In)
                })
                .map(|a| a.ty().to_string())
                .collect();
            (m.name().to_string(), inputs)
        })
        .collect()
}

/// A signature for a message: quoted, or "no arguments".
fn shown(text: &str) -> String {
    if text.is_empty() {
        "no arguments".to_owned()
    } else {
        format!("'{text}'")
    }
}

/// Admits a method call: the caller's uid first (so a stranger learns
/// nothing from the signature check), then the arguments' types.
async fn admit(
    access: &Access,
    inputs: &HashMap<String, Inputs>,
    msg: &Message,
    method: &str,
) -> fdo::Result<()> {
    let header = msg.header();
    access.check(&header).await?;
    let Some(expected) = inputs.get(method) else {
        return Ok(());
    };
    let body = msg.body();
    let got = body.signature();
    // zvariant parses a body of several values and a body of one struct of
    // the same values alike; their bytes coincide too (a struct at the
    // body's start needs no padding), so the method reads either correctly.
    if *got == expected.parsed {
        return Ok(());
    }
    let interface = header
        .interface()
        .map(|i| i.to_string())
        .unwrap_or_default();
    Err(fdo::Error::InvalidArgs(format!(
        "{interface}.{method} takes {}, got {}",
        shown(&expected.text),
        shown(&got.to_string_no_parens())
    )))
}

#[zbus::export::async_trait::async_trait]
impl<I: Interface> Interface for Guarded<I> {
    fn name() -> InterfaceName<'static>
    where
        Self: Sized,
    {
        I::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.inner.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<OwnedValue>> {
        if let Some(header) = header {
            if let Err(e) = self.access.check(header).await {
                return Some(Err(e));
            }
        }
        self.inner
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> fdo::Result<HashMap<String, OwnedValue>> {
        if let Some(header) = header {
            self.access.check(header).await?;
        }
        self.inner
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Value<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult2<'call> {
        let result = self
            .inner
            .set(property_name, value, server, connection, header, emitter);
        match (result, header) {
            (DispatchResult2::Async(set), Some(header)) => {
                let access = &self.access;
                DispatchResult2::Async(Box::pin(async move {
                    access.check(header).await?;
                    set.await
                }))
            }
            (other, _) => other,
        }
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Value<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<fdo::Result<()>> {
        if let Some(header) = header {
            if let Err(e) = self.access.check(header).await {
                return Some(Err(e));
            }
        }
        self.inner
            .set_mut(property_name, value, server, connection, header, emitter)
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        // The inner future does nothing until polled: not even reading the
        // arguments. Unknown methods stay `NotFound` (UnknownMethod).
        match self.inner.call(server, connection, msg, name.clone()) {
            DispatchResult2::Async(call) => {
                let (access, inputs) = (&self.access, &self.inputs);
                DispatchResult2::Async(Box::pin(async move {
                    admit(access, inputs, msg, name.as_str()).await?;
                    call.await
                }))
            }
            other => other,
        }
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult2<'call> {
        let Self {
            inner,
            access,
            inputs,
        } = self;
        match inner.call_mut(server, connection, msg, name.clone()) {
            DispatchResult2::Async(call) => DispatchResult2::Async(Box::pin(async move {
                admit(access, inputs, msg, name.as_str()).await?;
                call.await
            })),
            other => other,
        }
    }

    fn introspect_to_writer(&self, writer: &mut dyn std::fmt::Write, level: usize) {
        self.inner.introspect_to_writer(writer, level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe;

    #[zbus::interface(name = "dev.locald.Probe1")]
    impl Probe {
        /// Documentation that looks like a tag: <method name="Fake">
        /// <arg type="x" direction="in"/> </method>
        async fn two(&self, _a: String, _b: u32) -> String {
            String::new()
        }

        async fn none(&self) {}

        async fn with_header(&self, _on: bool, #[zbus(header)] _header: Header<'_>) {}

        async fn nested(&self, _m: HashMap<String, Vec<(u8, String)>>) {}

        #[zbus(signal)]
        async fn said(emitter: &SignalEmitter<'_>, word: &str) -> zbus::Result<()>;

        #[zbus(property)]
        async fn count(&self) -> u32 {
            1
        }
    }

    #[test]
    fn reads_each_methods_input_signature() {
        let mut xml = String::new();
        Probe.introspect_to_writer(&mut xml, 0);
        let inputs = method_inputs(&xml);
        let mut got: Vec<(&str, &str)> = inputs
            .iter()
            .map(|(m, s)| (m.as_str(), s.as_str()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("Nested", "a{sa(ys)}"),
                ("None", ""),
                ("Two", "su"),
                ("WithHeader", "b"),
            ],
            "{xml}"
        );
    }

    #[test]
    fn reads_the_published_manager_interface() {
        let xml = include_str!("../../../docs/dbus/dev.locald.Manager1.xml");
        let inputs = method_inputs(xml);
        assert_eq!(inputs.get("Up").map(String::as_str), Some("s"));
        assert_eq!(inputs.get("Build").map(String::as_str), Some("ssb"));
        assert_eq!(inputs.get("ListProjects").map(String::as_str), Some(""));
        assert_eq!(inputs.get("Pull").map(String::as_str), Some("ssb"));
        assert_eq!(inputs.get("ListImages").map(String::as_str), Some(""));
        assert_eq!(inputs.get("Prune").map(String::as_str), Some(""));
        assert!(!inputs.contains_key("BuildProgress"), "a signal");
        assert!(!inputs.contains_key("PullProgress"), "a signal");
    }

    #[test]
    fn signatures_compare_as_zbus_parses_them() {
        let parse = |s: &str| Signature::from_str(s).expect("valid");
        assert_eq!(parse("ss"), parse("ss"));
        assert_ne!(parse("s"), parse("i"));
        assert_ne!(parse("ss"), parse("s"));
        assert_eq!(parse(""), Signature::Unit);
        assert_eq!(parse("ssb").to_string_no_parens(), "ssb");
    }
}
