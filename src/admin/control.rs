//! The console's control commands (PAUSE, RESUME, DISABLE, ENABLE, KILL, KILL_CLIENT,
//! RECONNECT, RELOAD, SET, SHUTDOWN) and the configuration reload shared with SIGHUP.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::{format_duration, Config};
use crate::pool::Pool;

use super::commands::AdminError;
use super::settings;

/// What a successful command reports: its command tag and notices for the operator.
pub struct Done {
    pub tag: &'static str,
    pub notices: Vec<String>,
}

impl Done {
    fn tag(tag: &'static str) -> Done {
        Done {
            tag,
            notices: Vec::new(),
        }
    }
}

/// How often PAUSE looks at the active server count.
const PAUSE_POLL: Duration = Duration::from_millis(10);

/// The database `name` names (configured, or known to the console state for RESUME/ENABLE of
/// a database a reload removed).
fn database(app: &App, name: &str) -> Result<String, AdminError> {
    let cfg = app.config();
    if let Some(d) = cfg.database(name) {
        return Ok(d.name.clone());
    }
    // Unquoted names as typed in other case.
    if let Some(d) = cfg
        .databases
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
    {
        return Ok(d.name.clone());
    }
    Err(AdminError::new(
        "3D000",
        format!("database \"{name}\" does not exist (SHOW DATABASES lists them)"),
    ))
}

fn targets(app: &App, db: Option<&str>) -> Result<Vec<String>, AdminError> {
    match db {
        Some(d) => Ok(vec![database(app, d)?]),
        None => Ok(app
            .config()
            .databases
            .iter()
            .map(|d| d.name.clone())
            .collect()),
    }
}

fn pools_of(app: &App, dbs: &[String]) -> Vec<Arc<Pool>> {
    app.all_pools()
        .into_iter()
        .filter(|p| dbs.contains(&p.key.database))
        .collect()
}

/// PAUSE [db]: new checkouts wait; returns once no server of those databases is in use (or
/// after `shutdown_timeout`, with a notice naming how many still are).
pub async fn pause(app: &App, db: Option<&str>) -> Result<Done, AdminError> {
    let dbs = targets(app, db)?;
    for d in &dbs {
        app.admin.set_paused(d, true);
    }
    let timeout = app
        .config()
        .general
        .shutdown_timeout
        .max(Duration::from_secs(1));
    let deadline = Instant::now() + timeout;
    loop {
        // Pools created meanwhile (a new user's first login) are paused too.
        let pools = pools_of(app, &dbs);
        for p in &pools {
            if !p.is_paused() && app.admin.is_paused(&p.key.database) {
                p.pause();
            }
        }
        let active: usize = pools
            .iter()
            .map(|p| p.stats.active.load(Ordering::Relaxed))
            .sum();
        if active == 0 {
            return Ok(Done::tag("PAUSE"));
        }
        if Instant::now() >= deadline {
            return Ok(Done {
                tag: "PAUSE",
                notices: vec![format!(
                    "paused, but {active} server connection(s) are still in use after {}: their clients keep them until their transactions end",
                    format_duration(timeout)
                )],
            });
        }
        tokio::time::sleep(PAUSE_POLL).await;
    }
}

pub fn resume(app: &App, db: Option<&str>) -> Result<Done, AdminError> {
    let dbs = match db {
        Some(d) => vec![database(app, d).or_else(|e| {
            if app.admin.is_paused(d) {
                Ok(d.to_string())
            } else {
                Err(e)
            }
        })?],
        None => {
            let mut all = targets(app, None)?;
            all.extend(app.admin.paused_databases());
            all
        }
    };
    for d in &dbs {
        app.admin.set_paused(d, false);
    }
    let pools = if db.is_some() {
        pools_of(app, &dbs)
    } else {
        app.all_pools()
    };
    for p in pools {
        p.resume();
    }
    Ok(Done::tag("RESUME"))
}

pub fn disable(app: &App, db: &str, disabled: bool) -> Result<Done, AdminError> {
    let name = match database(app, db) {
        Ok(n) => n,
        Err(_) if !disabled && app.is_disabled(db) => db.to_string(),
        Err(e) => return Err(e),
    };
    app.set_disabled(&name, disabled);
    Ok(Done::tag(if disabled { "DISABLE" } else { "ENABLE" }))
}

/// KILL [db]: disconnect the clients of db (or all) and close its servers (idle ones now,
/// busy ones when they come back).
pub fn kill(app: &App, db: Option<&str>) -> Result<Done, AdminError> {
    let dbs = targets(app, db)?;
    let mut n = 0;
    for c in app.clients_snapshot() {
        if db.is_none() || dbs.contains(&c.database) {
            c.kill();
            n += 1;
        }
    }
    let pools = if db.is_some() {
        pools_of(app, &dbs)
    } else {
        app.all_pools()
    };
    for p in pools {
        p.reconnect();
    }
    Ok(Done {
        tag: "KILL",
        notices: vec![format!("{n} client(s) disconnected")],
    })
}

pub fn kill_client(app: &App, id: u64) -> Result<Done, AdminError> {
    match app.clients_snapshot().into_iter().find(|c| c.id == id) {
        Some(c) => {
            c.kill();
            Ok(Done::tag("KILL_CLIENT"))
        }
        None => Err(AdminError::new(
            "42704",
            format!("no client with id {id} (SHOW CLIENTS lists them)"),
        )),
    }
}

pub fn reconnect(app: &App, db: Option<&str>) -> Result<Done, AdminError> {
    let dbs = targets(app, db)?;
    let pools = if db.is_some() {
        pools_of(app, &dbs)
    } else {
        app.all_pools()
    };
    for p in pools {
        p.reconnect();
    }
    Ok(Done::tag("RECONNECT"))
}

/// Apply a validated configuration; returns notices about keys that need a restart.
fn apply(app: &App, new: Config) -> Vec<String> {
    let old = app.config();
    let mut notices = Vec::new();
    let (o, n) = (
        settings::entries(&old.general),
        settings::entries(&new.general),
    );
    for key in settings::RESTART_ONLY {
        let get = |e: &[(&str, String)]| e.iter().find(|(k, _)| k == key).map(|x| x.1.clone());
        if get(&o) != get(&n) {
            notices.push(format!(
                "{key} changed from \"{}\" to \"{}\": takes effect after a restart",
                get(&o).unwrap_or_default(),
                get(&n).unwrap_or_default()
            ));
        }
    }
    app.reload(new);
    // Pools of paused databases that the reload created or kept stay paused.
    for p in app.all_pools() {
        if app.admin.is_paused(&p.key.database) && !p.is_paused() {
            p.pause();
        }
    }
    crate::metrics::count_reload(true);
    notices
}

/// Re-read the configuration file and apply it (RELOAD, SIGHUP). An invalid file is
/// rejected whole; the running configuration stays.
pub fn reload_from_file(app: &App) -> Result<Vec<String>, AdminError> {
    let Some(path) = app.admin.config_path() else {
        crate::metrics::count_reload(false);
        return Err(AdminError::new(
            "F0000",
            "no configuration file is known to this process; nothing to reload",
        ));
    };
    match Config::load(&path) {
        Ok(cfg) => Ok(apply(app, cfg)),
        Err(e) => {
            crate::metrics::count_reload(false);
            Err(AdminError::new(
                "F0000",
                format!(
                    "configuration not reloaded, the running one stays in effect: {}",
                    e.0
                ),
            ))
        }
    }
}

/// SET key = value: the running configuration with one `[general]` key changed, validated
/// and applied like a reload.
pub fn set(app: &App, key: &str, value: &str) -> Result<Done, AdminError> {
    let mut cfg = (*app.config()).clone();
    settings::set(&mut cfg.general, key, value)?;
    if let Err(e) = cfg.validate() {
        crate::metrics::count_reload(false);
        return Err(AdminError::new(
            "22023",
            format!(
                "SET {key} rejected, the running configuration stays in effect: {}",
                e.0
            ),
        ));
    }
    Ok(Done {
        tag: "SET",
        notices: apply(app, cfg),
    })
}

/// SHUTDOWN: the same drain as SIGTERM.
pub fn shutdown(app: &App) -> Done {
    let _ = app.shutdown_tx.send(true);
    Done::tag("SHUTDOWN")
}
