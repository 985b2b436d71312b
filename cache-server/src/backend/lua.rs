//! Lua scripts sent as ordinary, auto-pipelined commands.
//!
//! fred sends its own `EVAL`/`EVALSHA` with `can_pipeline = false`: each one holds its connection until the
//! answer is back, so a pool of four connections runs at most four scripts at a time and every Set (one
//! script) waited for a whole round trip of the Sets ahead of it on its connection. Sent as a custom
//! command, `EVALSHA` queues on the connection like `GET` and `SET` do.
//!
//! The hazard fred avoids is Redis' own caveat on pipelining `EVALSHA`: if the script cache is empty (a
//! restarted Redis, `SCRIPT FLUSH`), every queued call answers `NOSCRIPT`. A `NOSCRIPT` call did not run,
//! so [`Lua::run`] loads the script and sends the call once more.

use fred::error::Error;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, FromValue, Value};

/// `EVALSHA sha numkeys key... arg...`: routed by the first key (offset 2), never blocking.
const EVALSHA: CustomCommand = CustomCommand {
    cmd: fred::bytes_utils::Str::from_static("EVALSHA"),
    cluster_hash: ClusterHash::Offset(2),
    blocking: false,
};

/// A Lua script, run by its SHA-1 and loaded whenever Redis answers that it does not know it (first use,
/// a restarted Redis, `SCRIPT FLUSH`).
pub struct Lua {
    script: Script,
}

impl Lua {
    /// Wraps the script's source.
    pub fn new(source: impl Into<fred::bytes_utils::Str>) -> Self {
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
