//! The broker connection: MQTT over TLS with the worker's client certificate
//! and token, subscribed to its tenant's topics. rumqttc reconnects by itself
//! but without pause, so errors are followed by a growing back-off (the
//! runner's); a CONNACK without a session means the subscription is gone and
//! is made again.

use std::time::Duration;

use hangar_runner::{BackgroundWorker, RunnerOptions, Step};
use hangar_types::worker::{Notification, worker_tenant};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{WorkerConfig, endpoint};
use crate::identity::Identity;

/// What the broker connection tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerEvent {
    /// (Re)connected and subscribed: notifications may have been missed.
    Connected,
    Notification(Notification),
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// MQTT options for this worker.
pub fn options(cfg: &WorkerConfig, identity: &Identity) -> Result<MqttOptions, String> {
    let url = cfg
        .broker_url
        .as_deref()
        .ok_or("the configuration names no broker_url")?;
    let (host, port) = endpoint(url, "mqtts", 1984)?;
    let tenant = worker_tenant(cfg.worker_id);
    let mut opts = MqttOptions::new(tenant.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, 64 * 1024)
        .set_credentials(tenant, identity.token.to_string())
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            identity.tls.clone(),
        )));
    Ok(opts)
}

/// The topic filter of everything addressed to this worker.
pub fn topic_filter(worker_id: i64) -> String {
    format!("/tenants/{}/#", worker_tenant(worker_id))
}

/// The broker connection as a background loop: each unit polls the MQTT event
/// loop once; an error (connection lost or refused) is a failed unit, so the
/// runner pauses with a growing back-off before the next poll reconnects.
pub struct BrokerLink {
    client: AsyncClient,
    eventloop: EventLoop,
    filter: String,
    events: mpsc::UnboundedSender<BrokerEvent>,
}

impl BrokerLink {
    pub fn new(
        opts: MqttOptions,
        worker_id: i64,
        events: mpsc::UnboundedSender<BrokerEvent>,
    ) -> BrokerLink {
        let (client, eventloop) = AsyncClient::new(opts, 16);
        BrokerLink {
            client,
            eventloop,
            filter: topic_filter(worker_id),
            events,
        }
    }

    /// How the runner drives it: back-off up to [`MAX_BACKOFF`], and a poll in
    /// progress is simply dropped at a stop.
    pub fn runner_options() -> RunnerOptions {
        RunnerOptions {
            exit_deadline: Duration::from_millis(200),
            max_error_backoff: MAX_BACKOFF,
        }
    }

    fn handle(&self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(c)) => {
                info!(
                    session_present = c.session_present,
                    "connected to the broker"
                );
                if !c.session_present {
                    // try_: the event loop that would drain a full request
                    // queue is this very loop.
                    if let Err(e) = self
                        .client
                        .try_subscribe(self.filter.clone(), QoS::AtLeastOnce)
                    {
                        warn!(error = %e, "cannot subscribe");
                    }
                }
            }
            Event::Incoming(Packet::SubAck(s)) => {
                if s.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    warn!(topic = %self.filter, "the broker refused the subscription");
                } else {
                    let _ = self.events.send(BrokerEvent::Connected);
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                match serde_json::from_slice::<Notification>(&p.payload) {
                    Ok(n) => {
                        debug!(topic = %p.topic, ?n, "notification");
                        let _ = self.events.send(BrokerEvent::Notification(n));
                    }
                    Err(_) => {
                        warn!(topic = %p.topic, bytes = p.payload.len(), "ignoring an unreadable notification")
                    }
                }
            }
            _ => {}
        }
    }
}

impl BackgroundWorker for BrokerLink {
    fn name(&self) -> String {
        "broker".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        match self.eventloop.poll().await {
            Ok(ev) => {
                self.handle(ev);
                Ok(Step::Busy)
            }
            Err(e) => Err(format!("broker connection: {e}")),
        }
    }

    async fn wait_for_work(&mut self) {}

    async fn finish(&mut self) {
        let _ = self.client.try_disconnect();
    }
}

/// Connects once and waits for the broker's answer: `Ok` when it admitted us.
pub async fn probe(opts: MqttOptions, timeout: Duration) -> Result<(), String> {
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    let r = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
    let _ = client.try_disconnect();
    r
}
