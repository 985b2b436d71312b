//! The Lua scripts of the Redis tier (their sources are the `lua/*.lua` files), sent as ordinary,
//! auto-pipelined commands.
//!
//! fred sends its own `EVAL`/`EVALSHA` with `can_pipeline = false`: each one holds its connection until the
//! answer is back, so a pool of four connections would run at most four scripts at a time. Sent as a custom
//! command, `EVALSHA` queues on the connection like `GET` and `SET` do. The hazard fred avoids is Redis' own
//! caveat on pipelining `EVALSHA`: if the script cache is empty (a restarted Redis, `SCRIPT FLUSH`), every
//! queued call answers `NOSCRIPT`. A `NOSCRIPT` call did not run, so [`Lua::run`] loads the script and sends
//! the call once more.

use fred::error::Error;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, FromValue, Value};

/// `EVALSHA sha numkeys key... arg...`: routed by the first key (offset 2), never blocking.
pub(super) const EVALSHA: CustomCommand = CustomCommand {
    cmd: fred::bytes_utils::Str::from_static("EVALSHA"),
    cluster_hash: ClusterHash::Offset(2),
    blocking: false,
};

macro_rules! lua {
    ($($file:literal),+) => {
        concat!(include_str!("lua/common.lua"), $(include_str!(concat!("lua/", $file))),+)
    };
}

/// A batch of Sets after the `SET`s of its values and metas (see `lua/set.lua`).
pub(super) const SET: &str = lua!("set_common.lua", "set.lua");
/// The deadline check that ends a batch's transaction (see `lua/late.lua`).
pub(super) const LATE: &str = include_str!("lua/late.lua");
/// An only-if-absent Set (see `lua/set_nx.lua`).
pub(super) const SET_NX: &str = lua!("set_common.lua", "set_nx.lua");
/// A large Set after its staging `SET` (see `lua/set_large.lua`).
pub(super) const SET_LARGE: &str = lua!("set_common.lua", "set_large.lua");
/// Entries removed by name (see `lua/delete.lua`).
pub(super) const DELETE: &str = lua!("remove.lua", "delete.lua");
/// Dimensions invalidated and their indexes drained (see `lua/drain.lua`).
pub(super) const DRAIN: &str = lua!("remove.lua", "drain.lua");
/// Entries a multi-field selector matched (see `lua/filter.lua`).
pub(super) const FILTER: &str = lua!("remove.lua", "filter.lua");
/// Read counts added to metas (see `lua/flush.lua`).
pub(super) const FLUSH: &str = lua!("flush.lua");

/// A Lua script, run by its SHA-1 and loaded whenever Redis answers that it does not know it (first use,
/// a restarted Redis, `SCRIPT FLUSH`).
pub(super) struct Lua {
    script: Script,
}

impl Lua {
    /// Wraps the script's source.
    pub fn new(source: &'static str) -> Self {
        Self {
            script: Script::from_lua(source),
        }
    }

    /// Runs the script with the keys and arguments `argv` gives, with `options` (timeout and the like).
    /// `argv` is called again only to repeat a call that found the script not loaded (so the happy path
    /// copies nothing).
    pub async fn run<R, K, F>(&self, client: &Client, options: Options, argv: F) -> Result<R, Error>
    where
        R: FromValue,
        K: Into<Value>,
        F: Fn() -> (Vec<K>, Vec<Value>),
    {
        let with = client.with_options(&options);
        match with.custom(EVALSHA, self.command(argv())).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                self.script.load(client).await?;
                with.custom(EVALSHA, self.command(argv())).await
            }
            result => result,
        }
    }

    /// The script's SHA-1, as `EVALSHA` names it.
    pub fn sha1(&self) -> &str {
        self.script.sha1()
    }

    fn command<K: Into<Value>>(&self, (keys, args): (Vec<K>, Vec<Value>)) -> Vec<Value> {
        let mut command = Vec::with_capacity(2 + keys.len() + args.len());
        command.push(Value::String(self.script.sha1().clone()));
        command.push(Value::Integer(keys.len() as i64));
        command.extend(keys.into_iter().map(Into::into));
        command.extend(args);
        command
    }
}

/// Every script of the tier.
pub(super) struct Scripts {
    pub set: Lua,
    pub set_nx: Lua,
    pub delete: Lua,
    pub drain: Lua,
    pub filter: Lua,
    pub flush: Lua,
}

impl Scripts {
    /// Loads every script into Redis' script cache, so that the first calls after a (re)connection do not
    /// all answer `NOSCRIPT` and go twice.
    pub async fn load_all(&self, client: &Client) -> Result<(), Error> {
        for lua in [
            &self.set,
            &self.set_nx,
            &self.delete,
            &self.drain,
            &self.filter,
            &self.flush,
        ] {
            lua.script.load(client).await?;
        }
        Ok(())
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            set: Lua::new(SET),
            set_nx: Lua::new(SET_NX),
            delete: Lua::new(DELETE),
            drain: Lua::new(DRAIN),
            filter: Lua::new(FILTER),
            flush: Lua::new(FLUSH),
        }
    }
}
