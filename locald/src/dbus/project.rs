//! `dev.locald.Project1`: one object per project that is up, at
//! `/dev/locald/Locald1/project/<escaped name>`.

use std::sync::Arc;

use zbus::interface;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

use locald_api::{project_path, service_path, PROJECT_INTERFACE};

use super::{emit_changed, lock, ProjectCell};

/// A project object.
pub struct Project1 {
    cell: Arc<ProjectCell>,
}

impl Project1 {
    pub(crate) fn new(cell: Arc<ProjectCell>) -> Self {
        Self { cell }
    }
}

fn services(cell: &ProjectCell) -> Vec<OwnedObjectPath> {
    lock(&cell.services)
        .keys()
        .map(|s| service_path(&cell.name, s))
        .collect()
}

/// Emits `PropertiesChanged` for what changed of a project.
pub(crate) async fn emit_changes(
    conn: &Connection,
    cell: &ProjectCell,
    services_changed: bool,
    state_changed: bool,
) -> zbus::Result<()> {
    let mut changed = Vec::new();
    if services_changed {
        changed.push(("Services", Value::from(services(cell))));
    }
    if state_changed {
        changed.push(("State", Value::from(cell.state())));
    }
    emit_changed(
        conn,
        project_path(&cell.name).as_str(),
        PROJECT_INTERFACE,
        changed,
    )
    .await
}

#[interface(name = "dev.locald.Project1")]
impl Project1 {
    /// Project name (`[project] name`, or the directory's name).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.cell.name.clone()
    }

    /// The project directory, absolute and canonical.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn path(&self) -> String {
        self.cell.path.clone()
    }

    /// The service objects, in the order of the file.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn services(&self) -> Vec<OwnedObjectPath> {
        services(&self.cell)
    }

    /// Summary state: `degraded` while any service is failing (failed, in
    /// error, backing off), else `running` while any is up, else `starting`
    /// while any is on its way up, else `stopping` or `stopped`.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn state(&self) -> String {
        self.cell.state().to_owned()
    }
}
