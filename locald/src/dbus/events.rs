//! The task that follows the engine's events and mirrors them on the bus:
//! objects come and go with projects and services, property changes become
//! `PropertiesChanged`, build steps and results and pull progress become
//! Manager1 signals.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use zbus::object_server::SignalEmitter;

use locald_api::MANAGER_PATH;

use super::manager::Manager1;
use super::{service, Shared};
use crate::event::Event;

/// Runs until the engine's event channel closes.
pub(crate) async fn follow(shared: Arc<Shared>, mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Err(e) = apply(&shared, event).await {
                    tracing::warn!("cannot mirror an engine event on D-Bus: {e}");
                }
            }
            // Missed events: the snapshots are the truth, re-read them all.
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "D-Bus layer lagged; resynchronizing");
                shared.reconcile_all().await;
            }
            Err(RecvError::Closed) => break,
        }
    }
}

async fn apply(shared: &Shared, event: Event) -> zbus::Result<()> {
    match event {
        Event::ProjectAdded { project }
        | Event::ProjectRemoved { project }
        | Event::ServiceAdded { project, .. }
        | Event::ServiceRemoved { project, .. } => shared.reconcile(&project).await,
        Event::ServiceChanged { project, service } => {
            if !service::apply_change(shared, &project, service).await? {
                shared.reconcile(&project).await;
            }
        }
        Event::BuildProgress {
            project,
            service,
            build_id,
            step,
            total,
            label,
        } => {
            let emitter = SignalEmitter::new(&shared.conn, MANAGER_PATH)?;
            Manager1::build_progress(&emitter, &project, &service, &build_id, step, total, &label)
                .await?;
        }
        Event::PullProgress {
            project,
            service,
            reference,
            layer,
            index,
            layers,
            done,
            total,
            cached,
        } => {
            let emitter = SignalEmitter::new(&shared.conn, MANAGER_PATH)?;
            Manager1::pull_progress(
                &emitter, &project, &service, &reference, &layer, index, layers, done, total,
                cached,
            )
            .await?;
        }
        Event::BuildFinished {
            project,
            service,
            record,
        } => {
            let emitter = SignalEmitter::new(&shared.conn, MANAGER_PATH)?;
            Manager1::build_finished(
                &emitter,
                &project,
                &service,
                service::build_info(Some(&record)),
            )
            .await?;
        }
    }
    Ok(())
}
