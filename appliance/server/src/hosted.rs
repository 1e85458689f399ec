//! Components the server hosts beside its HTTPS listener (the MQTT broker on
//! 1984 is the first). Each is started before the server is, answers the
//! server's `/ready` under its name, and is stopped after the HTTPS listener
//! has drained.

use futures::future::BoxFuture;

/// The name under which `/ready` reports the MQTT broker. The entry is always
/// present: "not configured" while no hosted component carries this name, which
/// does not make the server unready.
pub const BROKER: &str = "broker";

/// Something that runs inside the server process.
pub trait HostedComponent: Send + Sync + 'static {
    /// The key of this component in `/ready`.
    fn name(&self) -> &'static str;
    /// `Ok` when the component is serving; otherwise one line saying why not.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>>;
    /// Stops the component (called once, after the HTTPS listener drained).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
