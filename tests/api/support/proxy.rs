//! A TCP proxy in front of the real broker that a test can cut and restore: the daemon sees a
//! real connection loss without the shared broker being stopped.

use super::{broker_addr, broker_url_via};

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    /// `true` while traffic flows. Cutting drops every open connection and refuses new ones.
    up: watch::Sender<bool>,
}

impl Proxy {
    /// A proxy in front of the broker under test ([`super::broker_url`]).
    pub async fn to_broker() -> Proxy {
        Proxy::start(broker_addr()).await
    }

    pub async fn start(target: impl Into<String>) -> Proxy {
        let target: std::sync::Arc<str> = target.into().into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let states = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = states.subscribe();
                let target = target.clone();
                if !*state.borrow() {
                    continue; // dropped: the broker is "unreachable"
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&*target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { addr, up }
    }

    pub fn url(&self) -> String {
        broker_url_via(&self.addr.to_string())
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}
