//! Watching the plugins folder: file-system events for speed, a periodic re-scan for
//! the file systems and moments that send none (the folder created after start, a
//! network mount, a full event queue).

use std::collections::BTreeSet;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Plugins;

/// The running watch; dropping it stops the watch.
#[derive(Debug)]
pub struct WatchHandle(JoinHandle<()>);

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn spawn(plugins: Plugins) -> WatchHandle {
    WatchHandle(tokio::spawn(run(plugins)))
}

async fn run(plugins: Plugins) {
    let dir = plugins.options().dir.clone();
    let (sender, mut events) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut watch_error_logged = false;
    let mut rescan = tokio::time::interval(plugins.options().rescan);
    rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
    rescan.tick().await; // The first tick is immediate; `start` has just looked.
    loop {
        if !dir.is_dir() {
            // The watch died with the folder; watch the new one when it appears.
            watcher = None;
        } else if watcher.is_none() {
            match attach(&dir, sender.clone()) {
                Ok(w) => {
                    tracing::debug!("plugins: watching {}", dir.display());
                    watcher = Some(w);
                    watch_error_logged = false;
                }
                Err(e) if !watch_error_logged => {
                    tracing::warn!(
                        "plugins: cannot watch {} ({e}); looking every {:?} instead",
                        dir.display(),
                        plugins.options().rescan
                    );
                    watch_error_logged = true;
                }
                Err(_) => {}
            }
        }
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut all = false;
        tokio::select! {
            received = events.recv() => {
                let Some(first) = received else { return };
                let mut next = Some(first);
                // Take the whole burst: one file copy is several events.
                while let Some(event) = next {
                    match event {
                        Ok(event) => {
                            for path in &event.paths {
                                if let Some(t) = plugins.backend_type_of(path) {
                                    dirty.insert(t.to_owned());
                                }
                            }
                            // An overflowed queue or a rescan hint: look at everything.
                            if event.need_rescan() {
                                all = true;
                            }
                        }
                        Err(e) => {
                            tracing::debug!("plugins: watch error: {e}");
                            all = true;
                        }
                    }
                    next = events.try_recv().ok();
                }
            }
            _ = rescan.tick() => all = true,
        }
        if all {
            plugins.rescan().await;
        } else {
            for backend_type in dirty {
                plugins.sync(&backend_type).await;
            }
        }
    }
}

fn attach(
    dir: &std::path::Path,
    sender: mpsc::UnboundedSender<notify::Result<notify::Event>>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = sender.send(event);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
