//! Components the server hosts beside its HTTPS listener (the MQTT broker on
//! 1984 is the first). Each is started before the server is, answers the
//! server's `/ready` under its name, and is stopped after the HTTPS listener
//! has drained.

use futures::future::BoxFuture;

/// The name under which `/ready` reports the MQTT broker. The entry is always
/// present: "not configured" while no hosted component carries this name, which
/// does not make the server unready.
pub const BROKER: &str = "broker";

/// What a serving component adds to its entry in `/ready` beside
/// `"status": "ok"` (the broker: its connected workers, which is how an
/// operator sees the fleet spread over the servers behind a balancer).
pub type Facts = serde_json::Map<String, serde_json::Value>;

/// Something that runs inside the server process.
pub trait HostedComponent: Send + Sync + 'static {
    /// The key of this component in `/ready`.
    fn name(&self) -> &'static str;
    /// Its facts when the component is serving; otherwise one line saying why not.
    fn ready(&self) -> BoxFuture<'_, Result<Facts, String>>;
    /// Stops the component (called once, after the HTTPS listener drained).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
